"""Short-message content: the three transfer modes, decoding what arrives, and the capacity check.

Chinese mode carries GB2312 double-byte characters written as hex; code mode carries hex
digits (4 bits each on the air: BCD where the content is decimal digits); mixed mode carries
an `A4` lead byte and then GB2312 bytes (ASCII and Chinese together). BDS-3 names the same
modes code types 1-3 and adds 4 and 5, compressed Chinese and compressed code, whose
compression is the terminal's: their content is published as data, not decoded here.

The longest message is set by the card: its comm level (2.1: 110, 408, 628, 848 bits, or 140,
360, 580, 1680 encrypted; an express message 188 bits) or, on BDS-3, the service (regional
14,000 bits, global 560). Chinese mode spends 14 bits a character, code mode 4 bits a hex
digit, mixed mode 8 bits a byte after the lead byte. A message that does not fit is refused
with the limit in the error, never cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from terminal_gw.errors import CommandError
from terminal_gw.rdss.sentences import Dialect

__all__ = [
    "BITS_21",
    "BITS_21_ENCRYPTED",
    "BITS_BDS3",
    "EXPRESS_BITS",
    "MODE_CODES_21",
    "MODE_CODES_BDS3",
    "Decoded",
    "Mode",
    "Planned",
    "air_bits",
    "capacity_bits",
    "decode_content",
    "encode_text",
    "mode_of",
    "plan",
]

Mode = Literal["chinese", "code", "mixed", "compressed_chinese", "compressed_code"]
RequestMode = Literal["auto", "chinese", "code", "mixed"]
Scope = Literal["regional", "global"]

MIXED_LEAD = 0xA4
#: Transfer mode field of CCTXA/BDTXR (2.1).
MODE_CODES_21: dict[Mode, int] = {"chinese": 0, "code": 1, "mixed": 2}
#: Code type field of CCTCQ/BDTCI (BDS-3).
MODE_CODES_BDS3: dict[Mode, int] = {
    "chinese": 1,
    "code": 2,
    "mixed": 3,
    "compressed_chinese": 4,
    "compressed_code": 5,
}
#: Bits per message by comm level (2.1), unencrypted and encrypted cards.
BITS_21: dict[int, int] = {1: 110, 2: 408, 3: 628, 4: 848}
BITS_21_ENCRYPTED: dict[int, int] = {1: 140, 2: 360, 3: 580, 4: 1680}
#: An express message (2.1), whatever the level.
EXPRESS_BITS = 188
#: Bits per message on BDS-3, by service.
BITS_BDS3: dict[Scope, int] = {"regional": 14000, "global": 560}
#: Bits on the air per unit of content.
CHINESE_BITS_PER_CHAR = 14
CODE_BITS_PER_DIGIT = 4
MIXED_BITS_PER_BYTE = 8


def mode_of(dialect: Dialect, code: int) -> Mode | None:
    """The mode a sentence's mode/code-type field names; None for an unknown number."""
    table = MODE_CODES_21 if dialect == "2.1" else MODE_CODES_BDS3
    for mode, value in table.items():
        if value == code:
            return mode
    return None


def mode_code(dialect: Dialect, mode: Mode) -> int:
    """The mode/code-type field value of `mode` in `dialect`."""
    table = MODE_CODES_21 if dialect == "2.1" else MODE_CODES_BDS3
    if mode not in table:
        raise CommandError(f"mode {mode!r} does not exist in dialect {dialect}", code="invalid")
    return table[mode]


# ---------------------------------------------------------------------------
# Decoding received content.


@dataclass(frozen=True, slots=True)
class Decoded:
    """Received content: `text` when it decodes as its mode says, else `data` (hex) and why."""

    text: str | None
    data: str | None
    reason: str | None = None


def decode_content(hex_content: str, mode: Mode | None) -> Decoded:
    """Decode received hex content by its mode; never raises."""
    try:
        raw = bytes.fromhex(hex_content)
    except ValueError:
        return Decoded(None, hex_content, "content is not hex")
    upper = raw.hex().upper()
    if mode is None:
        return Decoded(None, upper, "unknown transfer mode")
    if mode == "code":
        return Decoded(None, upper)
    if mode in ("compressed_chinese", "compressed_code"):
        return Decoded(None, upper, f"{mode.replace('_', ' ')}: decompressed by the terminal only")
    body = raw
    if mode == "mixed":
        if not raw or raw[0] != MIXED_LEAD:
            return Decoded(None, upper, "mixed mode content without the A4 lead byte")
        body = raw[1:]
    try:
        text = body.decode("gb2312")
    except UnicodeDecodeError as exc:
        return Decoded(None, upper, f"not GB2312 at byte {exc.start + (mode == 'mixed')}")
    if mode == "chinese" and any(ord(c) < 0x80 for c in text):
        return Decoded(None, upper, "Chinese mode content with single-byte characters")
    if not text.isprintable() and any(c not in "\r\n\t" and not c.isprintable() for c in text):
        return Decoded(None, upper, "decodes to control characters")
    return Decoded(text, None)


# ---------------------------------------------------------------------------
# Encoding and sizing what is sent.


def encode_text(text: str, mode: Literal["chinese", "mixed"]) -> bytes:
    """The bytes of `text` in Chinese mode (double-byte GB2312 only) or mixed mode (A4 + GB2312).
    CommandError (code not_encodable) naming the first character that does not fit."""
    out = bytearray()
    for i, ch in enumerate(text):
        try:
            b = ch.encode("gb2312")
        except UnicodeEncodeError:
            raise CommandError(
                f"character {ch!r} (position {i}) is not in GB2312: it cannot be sent",
                code="not_encodable",
            ) from None
        if mode == "chinese" and len(b) != 2:
            raise CommandError(
                f"character {ch!r} (position {i}) is single-byte: Chinese mode carries only"
                " double-byte GB2312 characters; use mode mixed (or auto)",
                code="not_encodable",
            )
        out += b
    return bytes(out if mode == "chinese" else bytes([MIXED_LEAD]) + out)


def air_bits(mode: Mode, content: bytes) -> int:
    """Bits `content` (as written in the sentence) takes on the air in `mode`."""
    if mode in ("chinese", "compressed_chinese"):
        return CHINESE_BITS_PER_CHAR * (len(content) // 2)
    if mode in ("code", "compressed_code"):
        return CODE_BITS_PER_DIGIT * 2 * len(content)
    return MIXED_BITS_PER_BYTE * max(0, len(content) - 1)


def capacity_bits(
    dialect: Dialect,
    *,
    level: int | None,
    encrypted: bool = False,
    express: bool = False,
    scope: Scope = "regional",
) -> int:
    """The longest message the card allows, in bits (level None: the most any card allows)."""
    if dialect == "bds3":
        return BITS_BDS3[scope]
    if express:
        return EXPRESS_BITS
    table = BITS_21_ENCRYPTED if encrypted else BITS_21
    if level is None:
        return max(table.values())
    return table.get(level, table[min(table, key=lambda k: abs(k - level))])


@dataclass(frozen=True, slots=True)
class Planned:
    """What goes into the send sentence: the mode, the content (hex), its size and the limit."""

    mode: Mode
    content: str
    bits: int
    limit: int


def plan(
    *,
    text: str | None,
    data: str | None,
    mode: RequestMode,
    limit: int,
    card_note: str,
) -> Planned:
    """Choose the mode (auto: the smallest that carries the content) and check the size;
    CommandError (too_long, not_encodable, invalid) says what does not fit and the limit."""
    if (text is None) == (data is None):
        raise CommandError("give exactly one of text and data", code="invalid")
    candidates: list[tuple[Mode, bytes]] = []
    if data is not None:
        try:
            raw = bytes.fromhex(data) if len(data) % 2 == 0 and data.isascii() else None
        except ValueError:
            raw = None
        if raw is None or not raw:
            raise CommandError("data must be non-empty hex (pairs of 0-9, A-F)", code="invalid")
        if mode in {"auto", "code"}:
            candidates.append(("code", raw))
        elif mode == "mixed":
            body = raw if raw[0] == MIXED_LEAD else bytes([MIXED_LEAD]) + raw
            candidates.append(("mixed", body))
        else:
            candidates.append(("chinese", raw))
            if len(raw) % 2:
                raise CommandError("Chinese mode data is whole 2-byte characters", code="invalid")
    else:
        assert text is not None
        if not text:
            raise CommandError("text is empty", code="invalid")
        if mode == "code":
            raise CommandError("mode code carries data (hex), not text", code="invalid")
        wanted: tuple[Literal["chinese", "mixed"], ...] = (
            ("chinese", "mixed") if mode == "auto" else (mode,)
        )
        errors: list[CommandError] = []
        for m in wanted:
            try:
                candidates.append((m, encode_text(text, m)))
            except CommandError as exc:
                errors.append(exc)
        if not candidates:
            raise errors[-1]
    sized = sorted(((air_bits(m, c), m, c) for m, c in candidates), key=lambda t: t[0])
    bits, chosen, content = sized[0]
    if bits > limit:
        raise CommandError(
            f"the message takes {bits} bits in {chosen} mode; {card_note} carries at most"
            f" {limit} bits",
            code="too_long",
        )
    return Planned(chosen, content.hex().upper(), bits, limit)
