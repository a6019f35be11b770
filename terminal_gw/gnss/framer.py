"""Framer: raw receiver bytes in, checksum-checked NMEA sentences out.

Works on chunks of any size (a sentence split at any byte frames the same), resynchronises
on the next `$` after garbage or interleaved binary protocols (UBX, RTCM3, CASIC), and
keeps at most `max_sentence_len` bytes buffered however long a stream runs without a line end.
Every byte ends up in exactly one outcome counter.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

_DOLLAR = 0x24
_HEX = frozenset(b"0123456789ABCDEFabcdef")

#: Framer outcomes: each is a key of `Framer.counters`, always present (0 until seen).
FRAMER_COUNTERS = (
    "good",  # checksum present and right
    "bad_checksum",  # checksum wrong, or `*` not followed by two hex digits
    "no_checksum",  # no `*hh`: rejected unless allowed
    "overlong",  # longer than max_sentence_len without a line end: dropped
    "truncated",  # a `$` came before the line end: the partial sentence is dropped
    "malformed",  # not printable ASCII or no address field
    "garbage_bytes",  # bytes outside any sentence (binary protocols, noise); CR/LF not counted
)


@dataclass(frozen=True, slots=True)
class Sentence:
    """One framed NMEA sentence: `$` + address + fields, without checksum and line end."""

    address: str
    """Talker + type, e.g. `GPGGA`, or the proprietary address, e.g. `PQGSV`."""
    fields: tuple[str, ...]
    """The comma-separated fields after the address (empty fields are empty strings)."""
    raw: bytes
    """The sentence as received, from `$` up to (not including) the line end."""
    checked: bool
    """True when a valid checksum was present; False when accepted without one."""


def nmea_checksum(body: bytes) -> int:
    """XOR of all bytes of `body` (the text between `$` and `*`)."""
    # Fold halves of one big integer: O(log n) C-level operations instead of a byte loop.
    n = len(body)
    x = int.from_bytes(body, "big")
    while n > 1:
        half = n // 2
        bits = 8 * half
        x = (x >> bits) ^ (x & ((1 << bits) - 1))
        n -= half
    return x


class Framer:
    """Split a byte stream into checked sentences; bounded memory, never raises on input."""

    def __init__(self, *, max_sentence_len: int = 200, allow_no_checksum: bool = False) -> None:
        if max_sentence_len < 8:
            raise ValueError("max_sentence_len must be at least 8")
        self.max_sentence_len = max_sentence_len
        self.allow_no_checksum = allow_no_checksum
        self._buf = bytearray()
        self._discarding = False
        self._counters: Counter[str] = Counter(dict.fromkeys(FRAMER_COUNTERS, 0))

    @property
    def counters(self) -> Mapping[str, int]:
        """Outcome counts since creation (see FRAMER_COUNTERS)."""
        return self._counters

    @property
    def buffered(self) -> int:
        """Bytes held waiting for a line end (never more than max_sentence_len)."""
        return len(self._buf)

    def feed(self, chunk: bytes) -> list[Sentence]:
        """Sentences completed by `chunk`, in stream order."""
        self._buf += chunk
        out: list[Sentence] = []
        self._scan(out, final=False)
        return out

    def flush(self) -> list[Sentence]:
        """End of stream: treat buffered bytes as a complete last line."""
        out: list[Sentence] = []
        self._scan(out, final=True)
        return out

    def _scan(self, out: list[Sentence], *, final: bool) -> None:
        buf = self._buf
        n = len(buf)
        pos = 0
        max_len = self.max_sentence_len
        while pos < n:
            if self._discarding:
                # Rest of an overlong line: drop up to the next `$`.
                d = buf.find(b"$", pos)
                if d < 0:
                    pos = n
                    break
                self._discarding = False
                pos = d
            if buf[pos] != _DOLLAR:
                d = buf.find(b"$", pos)
                stop = n if d < 0 else d
                seg = buf[pos:stop]
                garbage = len(seg) - seg.count(b"\r") - seg.count(b"\n")
                if garbage:
                    self._counters["garbage_bytes"] += garbage
                pos = stop
                continue
            # At a `$`: the line ends at the first CR, LF or next `$`, within max_len bytes.
            limit = min(n, pos + max_len + 1)
            end = limit
            for marker in (b"\r", b"\n", b"$"):
                e = buf.find(marker, pos + 1, end)
                if e >= 0:
                    end = e
            if end == limit:
                if limit - pos > max_len:
                    self._counters["overlong"] += 1
                    self._discarding = True
                    pos += 1
                    continue
                if not final:
                    break  # wait for more bytes
            if end < n and buf[end] == _DOLLAR:
                self._counters["truncated"] += 1
                pos = end
                continue
            line = bytes(buf[pos:end])
            pos = end + 1 if end < n else end
            sentence = self._check(line)
            if sentence is not None:
                out.append(sentence)
        del buf[:pos]

    def _check(self, line: bytes) -> Sentence | None:
        star = line.rfind(b"*")
        checked = False
        if star >= 0:
            hh = line[star + 1 :]
            if len(hh) != 2 or hh[0] not in _HEX or hh[1] not in _HEX:
                self._counters["bad_checksum"] += 1
                return None
            body = line[1:star]
            if nmea_checksum(body) != int(hh, 16):
                self._counters["bad_checksum"] += 1
                return None
            checked = True
        else:
            self._counters["no_checksum"] += 1
            if not self.allow_no_checksum:
                return None
            body = line[1:]
        # Printable ASCII only: binary that happened to pass (or skip) the checksum is not NMEA.
        if not body.isascii():
            self._counters["malformed"] += 1
            return None
        text = body.decode("ascii")
        if not text.isprintable():
            self._counters["malformed"] += 1
            return None
        parts = text.split(",")
        address = parts[0]
        if not (2 <= len(address) <= 8 and address.isalnum()):
            self._counters["malformed"] += 1
            return None
        if checked:
            self._counters["good"] += 1
        return Sentence(address=address, fields=tuple(parts[1:]), raw=line, checked=checked)
