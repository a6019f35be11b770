"""RDSS terminal sentences as data: one field table per sentence, a pure parse and a pure build.

Both dialects frame like NMEA (`$`, comma-separated fields, `*hh` XOR checksum): framing and
checksums are the GNSS framer's (`terminal_gw.gnss.framer`). This module turns a framed
`Sentence` into a typed record and a typed record back into the bytes of a sentence.

Protocol 2.1 (BDS-2 style): CCTXA send, BDTXR received, BDFKI feedback, CCICA -> BDICI card,
BDBSI beams, CCRMO output control. BDS-3: CCTCQ send, BDTCI received, BDFKI with a time and a
reason code, CCICR -> BDICP card, BDPWI beam power. Field meanings: PROTOCOLS.md section 2.
Layouts seen in public device output without a public specification (BDICP, BDPWI, BDTCI)
keep their positions in the tables below, so a vendor's variant is a change of data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

from terminal_gw.errors import ParseError
from terminal_gw.gnss.framer import Framer, Sentence, nmea_checksum

__all__ = [
    "ADDRESSES",
    "Beam",
    "BeamPower",
    "BeamStatus",
    "CardInfo",
    "CardInfo3",
    "CardQuery",
    "CardQuery3",
    "Dialect",
    "Feedback",
    "Feedback3",
    "OutputControl",
    "RdssRecord",
    "Received",
    "Received3",
    "SendRequest",
    "SendRequest3",
    "SentenceError",
    "build",
    "parse",
    "parse_line",
]

Dialect = Literal["2.1", "bds3"]

#: Longest RDSS sentence accepted by the framer: a BDS-3 regional message holds up to
#: 14,000 bits (1,750 bytes, 3,500 hex digits) plus the fields around it.
MAX_SENTENCE_LEN = 4096


class SentenceError(ParseError):
    """A sentence that does not fit its table (or a record that cannot be built)."""


# ---------------------------------------------------------------------------
# Field codecs: text of one field <-> a typed value.


@dataclass(frozen=True, slots=True)
class Codec:
    """How one field is read and written."""

    read: Callable[[str], Any]
    write: Callable[[Any], str]


_DIGITS = re.compile(r"[0-9]+")
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})*")
_TIME = re.compile(r"[0-9]{4,6}(?:\.[0-9]{1,3})?")
_WORD = re.compile(r"[A-Z0-9]{1,8}")


def _bad(what: str, text: str) -> SentenceError:
    return SentenceError(f"expected {what}, got {text[:40]!r}", reason=f"bad field: {what}")


def _digits(text: str) -> str:
    if not _DIGITS.fullmatch(text):
        raise _bad("digits", text)
    return text


def _write_digits(value: Any) -> str:
    if not isinstance(value, str) or not _DIGITS.fullmatch(value):
        raise _bad("digits", str(value))
    return value


def _int(width: int = 1) -> Codec:
    def read(text: str) -> int:
        if not _DIGITS.fullmatch(text) or len(text) > 9:
            raise _bad("a number", text)
        return int(text)

    def write(value: Any) -> str:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 10**9:
            raise _bad("a number 0-999999999", str(value))
        return str(value).zfill(width)

    return Codec(read, write)


def _opt_int(width: int = 1) -> Codec:
    inner = _int(width)
    return Codec(
        lambda t: None if t == "" else inner.read(t),
        lambda v: "" if v is None else inner.write(v),
    )


def _flag(yes: str, no: str) -> Codec:
    def read(text: str) -> bool:
        if text not in (yes, no):
            raise _bad(f"{yes} or {no}", text)
        return text == yes

    def write(value: Any) -> str:
        if not isinstance(value, bool):
            raise _bad(f"{yes} or {no}", str(value))
        return yes if value else no

    return Codec(read, write)


def _hex_read(text: str) -> str:
    if not _HEX.fullmatch(text):
        raise _bad("hex bytes", text)
    return text.upper()


def _hex_write(value: Any) -> str:
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise _bad("hex bytes", str(value))
    return value.upper()


def _time_read(text: str) -> str | None:
    if text == "":
        return None
    if not _TIME.fullmatch(text):
        raise _bad("a time hhmm[ss][.ss]", text)
    return text


def _time_write(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or not _TIME.fullmatch(value):
        raise _bad("a time hhmm[ss][.ss]", str(value))
    return value


def _word_read(text: str) -> str:
    if not _WORD.fullmatch(text):
        raise _bad("a sentence name", text)
    return text


DIGITS = Codec(_digits, _write_digits)
HEX = Codec(_hex_read, _hex_write)
TIME = Codec(_time_read, _time_write)
WORD = Codec(_word_read, lambda v: _word_read(str(v)))
YN = _flag("Y", "N")
EN = _flag("E", "N")  # encryption: E encrypted, N not


# ---------------------------------------------------------------------------
# Records. Each names its address; its field table is in LAYOUTS below.


@dataclass(frozen=True, slots=True)
class SendRequest:
    """`CCTXA` (2.1): send `content` (hex) to user `to`."""

    ADDRESS: ClassVar[str] = "CCTXA"
    to: str
    comm_class: int  # 0/1: express or normal (sources disagree: a config setting)
    mode: int  # 0 Chinese, 1 code, 2 mixed
    content: str


@dataclass(frozen=True, slots=True)
class Received:
    """`BDTXR` (2.1): a received message."""

    ADDRESS: ClassVar[str] = "BDTXR"
    info_class: int  # 1 normal, 2 express, 3 broadcast, 4/5 query result
    sender: str
    mode: int  # 0 Chinese, 1 code, 2 mixed
    sent_at: str | None  # hhmm, for query results
    content: str


@dataclass(frozen=True, slots=True)
class Feedback:
    """`BDFKI` (2.1): the terminal's answer to a command."""

    ADDRESS: ClassVar[str] = "BDFKI"
    command: str  # e.g. TXA
    executed: bool
    frequency_ok: bool
    suppression: int  # 0 none, 1 suppressed, 2 radio silence, 3 both
    wait_s: int  # seconds to wait before the next send


@dataclass(frozen=True, slots=True)
class Feedback3:
    """`BDFKI` (BDS-3): feedback with the terminal's time and a reason code."""

    ADDRESS: ClassVar[str] = "BDFKI"
    time: str | None
    command: str  # e.g. TCQ
    executed: bool
    reason: int  # 0 none; see RdssConfig.reasons for the vendor's numbering
    wait_s: int


@dataclass(frozen=True, slots=True)
class CardQuery:
    """`CCICA` (2.1): ask for the card (kind 0 own card, 1 subordinates)."""

    ADDRESS: ClassVar[str] = "CCICA"
    kind: int = 0
    frame: int = 0


@dataclass(frozen=True, slots=True)
class CardQuery3:
    """`CCICR` (BDS-3): ask for the card."""

    ADDRESS: ClassVar[str] = "CCICR"
    kind: int = 0
    frame: int = 0


@dataclass(frozen=True, slots=True)
class CardInfo:
    """`BDICI` (2.1): the card. All zeros: no card."""

    ADDRESS: ClassVar[str] = "BDICI"
    user_id: str
    serial: str
    broadcast_id: str
    user_class: int
    interval_s: int  # service interval: the shortest time between two sends
    level: int  # comm level 1-4: sets the longest message
    encrypted: bool
    subordinates: int

    @property
    def present(self) -> bool:
        """False for the all-zeros answer of a terminal without a card."""
        return int(self.user_id) != 0


@dataclass(frozen=True, slots=True)
class CardInfo3:
    """`BDICP` (BDS-3): the card, from the field positions in BDICP_POSITIONS."""

    ADDRESS: ClassVar[str] = "BDICP"
    user_id: str
    serial: str
    broadcast_id: str
    encrypted: bool
    interval_s: int
    level: int

    @property
    def present(self) -> bool:
        """False for the all-zeros answer of a terminal without a card."""
        return int(self.user_id) != 0


@dataclass(frozen=True, slots=True)
class BeamStatus:
    """`BDBSI` (2.1): beam status; `powers` holds the 10 beam powers 0-4."""

    ADDRESS: ClassVar[str] = "BDBSI"
    response_beam: int
    timediff_beam: int
    powers: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Beam:
    """One beam of `BDPWI`: its id, two C/N0 values (dB-Hz) and a flag."""

    id: int
    cn0_a: int
    cn0_b: int
    flag: int


@dataclass(frozen=True, slots=True)
class BeamPower:
    """`BDPWI` (BDS-3): beam power per beam."""

    ADDRESS: ClassVar[str] = "BDPWI"
    time: str | None
    bds2_beams: int
    bds3_beams: int
    beams: tuple[Beam, ...]


@dataclass(frozen=True, slots=True)
class OutputControl:
    """`CCRMO`: turn a sentence's periodic output on or off (mode 1 close, 2 open, 3 close
    all, 4 open all) with an interval in seconds."""

    ADDRESS: ClassVar[str] = "CCRMO"
    sentence: str
    mode: int
    interval_s: int | None = None


@dataclass(frozen=True, slots=True)
class SendRequest3:
    """`CCTCQ` (BDS-3): send `content` (hex) to `to`."""

    ADDRESS: ClassVar[str] = "CCTCQ"
    to: str
    frequency_point: int  # 1-5
    ack: int  # inbound acknowledgement: 1 no, 2 yes
    code_type: int  # 1 Chinese, 2 code, 3 mixed, 4 compressed Chinese, 5 compressed code
    content: str
    frequency: int = 0


@dataclass(frozen=True, slots=True)
class Received3:
    """`BDTCI` (BDS-3): a received message."""

    ADDRESS: ClassVar[str] = "BDTCI"
    sender: str  # 8 digits, zero padded
    recipient: str
    frequency_point: int
    time: str | None
    code_type: int
    ack: int
    content: str


RdssRecord = (
    SendRequest
    | Received
    | Feedback
    | Feedback3
    | CardQuery
    | CardQuery3
    | CardInfo
    | CardInfo3
    | BeamStatus
    | BeamPower
    | OutputControl
    | SendRequest3
    | Received3
)


# ---------------------------------------------------------------------------
# The tables.

Field = tuple[str, Codec]

#: The fields of each record in order (records with a fixed layout).
LAYOUTS: dict[type[Any], tuple[Field, ...]] = {
    SendRequest: (("to", DIGITS), ("comm_class", _int()), ("mode", _int()), ("content", HEX)),
    Received: (
        ("info_class", _int()),
        ("sender", DIGITS),
        ("mode", _int()),
        ("sent_at", TIME),
        ("content", HEX),
    ),
    Feedback: (
        ("command", WORD),
        ("executed", YN),
        ("frequency_ok", YN),
        ("suppression", _int()),
        ("wait_s", _int(4)),
    ),
    Feedback3: (
        ("time", TIME),
        ("command", WORD),
        ("executed", YN),
        ("reason", _int()),
        ("wait_s", _int()),
    ),
    CardQuery: (("kind", _int()), ("frame", _int(2))),
    CardQuery3: (("kind", _int()), ("frame", _int(2))),
    CardInfo: (
        ("user_id", DIGITS),
        ("serial", DIGITS),
        ("broadcast_id", DIGITS),
        ("user_class", _int()),
        ("interval_s", _int()),
        ("level", _int()),
        ("encrypted", EN),
        ("subordinates", _int()),
    ),
    OutputControl: (("sentence", WORD), ("mode", _int()), ("interval_s", _opt_int())),
    SendRequest3: (
        ("to", DIGITS),
        ("frequency_point", _int()),
        ("ack", _int()),
        ("code_type", _int()),
        ("content", HEX),
        ("frequency", _int()),
    ),
    Received3: (
        ("sender", DIGITS),
        ("recipient", DIGITS),
        ("frequency_point", _int()),
        ("time", TIME),
        ("code_type", _int()),
        ("ack", _int()),
        ("content", HEX),
    ),
}

#: BDICP: 1-based field position of each value (the rest are written as 0, read and ignored).
BDICP_POSITIONS: dict[str, tuple[int, Codec]] = {
    "user_id": (1, DIGITS),
    "serial": (2, DIGITS),
    "broadcast_id": (3, DIGITS),
    "encrypted": (6, EN),
    "interval_s": (14, _int()),
    "level": (15, _int()),
}
#: BDICP fields written by `build` (as seen in device output).
BDICP_FIELDS = 23
#: BDICP fields written as N rather than 0 (flags at these positions in device output).
_BDICP_FLAGS = frozenset({6, 8})
#: BDBSI: the response beam, the time-difference beam, then this many beam powers.
BSI_BEAMS = 10
#: BDPWI: values per beam after the three header fields.
PWI_PER_BEAM = 4

#: Address -> the records it may parse as (BDFKI has two layouts, told apart by shape).
ADDRESSES: dict[str, tuple[type[Any], ...]] = {
    "CCTXA": (SendRequest,),
    "BDTXR": (Received,),
    "BDFKI": (Feedback, Feedback3),
    "CCICA": (CardQuery,),
    "CCICR": (CardQuery3,),
    "BDICI": (CardInfo,),
    "BDICP": (CardInfo3,),
    "BDBSI": (BeamStatus,),
    "BDPWI": (BeamPower,),
    "CCRMO": (OutputControl,),
    "CCTCQ": (SendRequest3,),
    "BDTCI": (Received3,),
}

#: The dialect each address belongs to (None: both).
DIALECT_OF: dict[str, Dialect | None] = {
    "CCTXA": "2.1",
    "BDTXR": None,  # BDS-3 terminals output it too (seen in public device logs)
    "BDFKI": None,
    "CCICA": "2.1",
    "BDICI": "2.1",
    "BDBSI": "2.1",
    "CCRMO": None,
    "CCICR": "bds3",
    "BDICP": "bds3",
    "BDPWI": "bds3",
    "CCTCQ": "bds3",
    "BDTCI": "bds3",
}


# ---------------------------------------------------------------------------
# Parse.


def _read_layout(cls: type[Any], layout: Sequence[Field], values: Sequence[str]) -> Any:
    if len(values) != len(layout):
        raise SentenceError(
            f"{cls.ADDRESS}: {len(values)} fields, expected {len(layout)}",
            reason="field count",
        )
    return cls(**{name: codec.read(v) for (name, codec), v in zip(layout, values, strict=True)})


def _parse_fki(values: Sequence[str]) -> Feedback | Feedback3:
    # BDS-3 puts the terminal's time first: the command name is then the second field.
    if len(values) == 5 and _WORD.fullmatch(values[0]) and not values[0].isdigit():
        return _read_layout(Feedback, LAYOUTS[Feedback], values)  # type: ignore[no-any-return]
    return _read_layout(Feedback3, LAYOUTS[Feedback3], values)  # type: ignore[no-any-return]


def _parse_icp(values: Sequence[str]) -> CardInfo3:
    last = max(pos for pos, _ in BDICP_POSITIONS.values())
    if len(values) < last:
        raise SentenceError(
            f"BDICP: {len(values)} fields, expected at least {last}", reason="field count"
        )
    return CardInfo3(
        **{name: codec.read(values[pos - 1]) for name, (pos, codec) in BDICP_POSITIONS.items()}
    )


def _parse_bsi(values: Sequence[str]) -> BeamStatus:
    if len(values) != 2 + BSI_BEAMS:
        raise SentenceError(
            f"BDBSI: {len(values)} fields, expected {2 + BSI_BEAMS}", reason="field count"
        )
    n = _int()
    powers = tuple(n.read(v) for v in values[2:])
    if any(p > 4 for p in powers):
        raise SentenceError("BDBSI: a beam power above 4", reason="bad field: beam power")
    return BeamStatus(n.read(values[0]), n.read(values[1]), powers)


def _parse_pwi(values: Sequence[str]) -> BeamPower:
    if len(values) < 3 or (len(values) - 3) % PWI_PER_BEAM:
        raise SentenceError(
            f"BDPWI: {len(values)} fields, expected 3 + {PWI_PER_BEAM} per beam",
            reason="field count",
        )
    n = _int()
    rest = [n.read(v) for v in values[3:]]
    beams = tuple(Beam(*rest[i : i + PWI_PER_BEAM]) for i in range(0, len(rest), PWI_PER_BEAM))
    return BeamPower(TIME.read(values[0]), n.read(values[1]), n.read(values[2]), beams)


_SPECIAL_PARSE: dict[type[Any], Callable[[Sequence[str]], Any]] = {
    CardInfo3: _parse_icp,
    BeamStatus: _parse_bsi,
    BeamPower: _parse_pwi,
}


def parse(sentence: Sentence) -> RdssRecord:
    """The typed record of a framed RDSS sentence; SentenceError when it does not fit."""
    classes = ADDRESSES.get(sentence.address)
    if classes is None:
        raise SentenceError(
            f"not an RDSS sentence: {sentence.address[:8]!r}",
            sentence=sentence.raw,
            reason="unknown sentence",
        )
    try:
        if sentence.address == "BDFKI":
            return _parse_fki(sentence.fields)
        cls = classes[0]
        special = _SPECIAL_PARSE.get(cls)
        if special is not None:
            return special(sentence.fields)  # type: ignore[no-any-return]
        return _read_layout(cls, LAYOUTS[cls], sentence.fields)  # type: ignore[no-any-return]
    except SentenceError as exc:
        raise SentenceError(str(exc), sentence=sentence.raw, reason=exc.reason) from None


def parse_line(line: bytes) -> RdssRecord:
    """Frame (checksum checked) and parse one sentence given as bytes."""
    framer = Framer(max_sentence_len=MAX_SENTENCE_LEN)
    found = framer.feed(line) + framer.flush()
    if len(found) != 1:
        bad = [k for k, v in framer.counters.items() if v and k != "good"]
        raise SentenceError(
            f"not one checked sentence ({', '.join(bad) or 'nothing framed'})",
            sentence=line[:200],
            reason=bad[0] if bad else "empty",
        )
    return parse(found[0])


# ---------------------------------------------------------------------------
# Build.


def _frame(address: str, values: Sequence[str]) -> bytes:
    body = ",".join((address, *values)).encode("ascii")
    return b"$" + body + b"*" + f"{nmea_checksum(body):02X}".encode() + b"\r\n"


def _values(record: Any) -> list[str]:
    cls = type(record)
    if cls is CardInfo3:
        out = ["0"] * BDICP_FIELDS
        for pos in _BDICP_FLAGS:
            out[pos - 1] = "N"
        for name, (pos, codec) in BDICP_POSITIONS.items():
            out[pos - 1] = codec.write(getattr(record, name))
        return out
    n = _int()
    if cls is BeamStatus:
        if len(record.powers) != BSI_BEAMS or any(not 0 <= p <= 4 for p in record.powers):
            raise SentenceError(f"BDBSI: {BSI_BEAMS} beam powers 0-4", reason="bad field")
        w2 = _int(2)
        return [
            w2.write(record.response_beam),
            w2.write(record.timediff_beam),
            *(n.write(p) for p in record.powers),
        ]
    if cls is BeamPower:
        w2 = _int(2)
        out = [TIME.write(record.time), w2.write(record.bds2_beams), w2.write(record.bds3_beams)]
        for beam in record.beams:
            out += [n.write(getattr(beam, f.name)) for f in fields(beam)]
        return out
    return [codec.write(getattr(record, name)) for name, codec in LAYOUTS[cls]]


def build(record: RdssRecord) -> bytes:
    """The sentence for `record`: `$`, fields, checksum, CR LF. SentenceError when a field
    cannot be written (so nothing unchecked reaches a port)."""
    values = _values(record)
    for v in values:
        if any(c in v for c in ",*$\r\n") or not v.isascii() or not v.isprintable():
            raise SentenceError(f"{record.ADDRESS}: unsafe field {v[:20]!r}", reason="unsafe")
    return _frame(record.ADDRESS, values)
