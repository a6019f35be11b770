"""Framer: raw receiver bytes in, checksum-checked NMEA sentences and binary frames out.

Works on chunks of any size (a sentence or frame split at any byte frames the same),
resynchronises on the next `$` or binary sync after garbage, and keeps at most
`max_sentence_len` bytes of a sentence (`max_binary_len` of a binary frame) buffered however
long a stream runs without a line end. Binary frames of the u-blox UBX (`B5 62`, Fletcher-8
checksum) and CASIC (`BA CE`, 32-bit word sum) protocols come out as `BinaryFrame`s beside the
sentences, in stream order; other binary protocols (RTCM3, ...) count as garbage.
Every byte ends up in exactly one outcome counter.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import Literal, NamedTuple, cast

_DOLLAR = 0x24
_CR = 0x0D
#: Sync bytes of the binary protocols framed beside NMEA.
UBX_SYNC = b"\xb5\x62"
CASIC_SYNC = b"\xba\xce"
_UBX0 = 0xB5
_CASIC0 = 0xBA
#: Bytes around the payload: UBX sync 2 + class, id 2 + length 2 + checksum 2;
#: CASIC sync 2 + length 2 + class, id 2 + checksum 4.
UBX_OVERHEAD = 8
CASIC_OVERHEAD = 10
#: Default longest binary payload kept (a NAV-SAT of 120 satellites is 1448 bytes); a frame
#: whose length field says more is taken for a false sync.
MAX_BINARY_LEN = 4096
_HEX = b"0123456789ABCDEFabcdef"
#: Printable ASCII but `$`: what a plain sentence line holds after its `$`.
_PLAIN = bytes(b for b in range(0x20, 0x7F) if b != _DOLLAR)
#: The two checksum digits after `*` (either case) -> their value.
_HEX_PAIRS = {bytes((a, b)): int(bytes((a, b)), 16) for a in _HEX for b in _HEX}

#: Framer outcomes: each is a key of `Framer.counters`, always present (0 until seen).
FRAMER_COUNTERS = (
    "good",  # checksum present and right
    "bad_checksum",  # checksum wrong, or `*` not followed by two hex digits
    "no_checksum",  # no `*hh`: rejected unless allowed
    "overlong",  # longer than max_sentence_len without a line end: dropped
    "truncated",  # a `$` came before the line end: the partial sentence is dropped
    "malformed",  # not printable ASCII or no address field
    "garbage_bytes",  # bytes outside any sentence or frame (RTCM3, noise); CR/LF not counted
    "ubx_good",  # UBX frame with a right checksum
    "ubx_bad_checksum",  # UBX sync and length, wrong checksum: its sync is skipped
    "casic_good",  # CASIC frame with a right checksum
    "casic_bad_checksum",  # CASIC sync and length, wrong checksum: its sync is skipped
    "binary_overlong",  # a sync whose length field exceeds max_binary_len: taken for noise
    "binary_truncated",  # a binary frame cut short by the end of the stream
)


class Sentence(NamedTuple):
    """One framed NMEA sentence: `$` + address + fields, without checksum and line end."""

    address: str
    """Talker + type, e.g. `GPGGA`, or the proprietary address, e.g. `PQGSV`."""
    fields: tuple[str, ...]
    """The comma-separated fields after the address (empty fields are empty strings)."""
    raw: bytes
    """The sentence as received, from `$` up to (not including) the line end."""
    checked: bool
    """True when a valid checksum was present; False when accepted without one."""


@dataclass(frozen=True, slots=True)
class BinaryFrame:
    """One checksum-checked binary frame (UBX or CASIC)."""

    protocol: Literal["ubx", "casic"]
    msg_class: int
    msg_id: int
    payload: bytes
    raw: bytes
    """The whole frame as received, sync bytes and checksum included."""

    @property
    def address(self) -> str:
        """A name for counters and cycle learning, e.g. `UBX-01-07`."""
        return f"{self.protocol.upper()}-{self.msg_class:02X}-{self.msg_id:02X}"


Frame = Sentence | BinaryFrame
#: A Sentence built from its values without the Python-level NamedTuple `__new__`.
_new_sentence = tuple.__new__


def ubx_checksum(body: bytes) -> bytes:
    """The two Fletcher-8 bytes of a UBX frame over class, id, length and payload."""
    # ck_a is the byte sum; ck_b the sum of the running sums (both mod 256), in C loops.
    return bytes((sum(body) & 0xFF, sum(accumulate(body)) & 0xFF))


def casic_checksum(body: bytes) -> int | None:
    """The 32-bit sum of little-endian words over length, class, id and payload (CASIC);
    None when `body` is not a whole number of words (no CASIC frame is)."""
    if len(body) % 4:
        return None
    words: tuple[int, ...] = struct.unpack(f"<{len(body) // 4}I", body)
    return sum(words) & 0xFFFFFFFF


_LOW_64 = (1 << 512) - 1
_LOW_32 = (1 << 256) - 1
_LOW_16 = (1 << 128) - 1
_LOW_128 = (1 << 1024) - 1


def nmea_checksum(body: bytes) -> int:
    """XOR of all bytes of `body` (the text between `$` and `*`)."""
    # Fold halves of one big integer: O(log n) C-level operations instead of a byte loop.
    n = len(body)
    x = int.from_bytes(body, "little")
    if n <= 256:
        # Unrolled for what a sentence can be (each step XORs the upper half onto the lower;
        # a step over bytes that are not there is left out).
        if n > 64:
            if n > 128:
                x = (x >> 1024) ^ (x & _LOW_128)
            x = (x >> 512) ^ (x & _LOW_64)
        if n > 32:
            x = (x >> 256) ^ (x & _LOW_32)
        x = (x >> 128) ^ (x & _LOW_16)
        x = (x >> 64) ^ (x & 0xFFFFFFFFFFFFFFFF)
        x = (x >> 32) ^ (x & 0xFFFFFFFF)
        x = (x >> 16) ^ (x & 0xFFFF)
        return (x >> 8) ^ (x & 0xFF)
    while n > 1:
        half = n // 2
        bits = 8 * half
        x = (x >> bits) ^ (x & ((1 << bits) - 1))
        n -= half
    return x


def _sync_in(data: bytes) -> int:
    """Index of the first UBX or CASIC sync in `data` after its first byte, or -1."""
    cuts = [i for i in (data.find(UBX_SYNC, 1), data.find(CASIC_SYNC, 1)) if i > 0]
    return min(cuts) if cuts else -1


class Framer:
    """Split a byte stream into checked sentences; bounded memory, never raises on input."""

    def __init__(
        self,
        *,
        max_sentence_len: int = 200,
        allow_no_checksum: bool = False,
        max_binary_len: int = MAX_BINARY_LEN,
    ) -> None:
        if max_sentence_len < 8:
            raise ValueError("max_sentence_len must be at least 8")
        if max_binary_len < 0:
            raise ValueError("max_binary_len must not be negative")
        self.max_sentence_len = max_sentence_len
        self.max_binary_len = max_binary_len
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
        """Bytes held waiting for a line end or the rest of a frame (never more than
        max_sentence_len, or a binary frame of max_binary_len)."""
        return len(self._buf)

    def feed(self, chunk: bytes) -> list[Frame]:
        """Sentences and binary frames completed by `chunk`, in stream order."""
        out: list[Frame] = []
        buf = self._buf
        if self._discarding:
            buf += chunk
        else:
            # Whole lines first, straight from the bytes (the bulk of any NMEA stream);
            # the byte scan takes over from the first line that is anything else.
            if buf:
                data = bytes(buf) + chunk
                buf.clear()
            else:
                data = chunk if type(chunk) is bytes else bytes(chunk)  # bytearray, memoryview
            # (`out` takes no None: `each` is off.)
            pos = self._lines(data, cast("list[Sentence | None]", out))
            if pos == len(data):
                return out
            buf += data[pos:] if pos else data
        self._scan(out, final=False)
        return out

    def feed_lines(self, data: bytes, start: int = 0) -> tuple[list[Sentence | None], int]:
        """Frame the lines of `data` from `start` as feeding each line (up to and with its LF)
        as a chunk of its own would, while nothing is buffered: one entry a line (None: it gave
        no sentence) up to the first line the byte scan must see, and where that line starts
        (`len(data)` when every line was taken). Nothing is taken while bytes are buffered."""
        out: list[Sentence | None] = []
        if self._buf or self._discarding:
            return out, start
        return out, self._lines(data, out, start, each=True)

    def _lines(
        self, data: bytes, out: list[Sentence | None], start: int = 0, *, each: bool = False
    ) -> int:
        """Frame the plain sentence lines at the start of `data` (`$`, printable ASCII
        without another `$`, at most max_sentence_len bytes, then CR LF or LF), as `_scan`
        would; returns how many bytes they took. With `each`, a line that gives no sentence
        (blank, bad checksum, malformed) adds None to `out`."""
        pos = start
        max_len = self.max_sentence_len
        find = data.find
        good = 0
        while (nl := find(b"\n", pos)) >= 0:
            end = nl - 1 if nl > pos and data[nl - 1] == _CR else nl
            if end > pos:
                if data[pos] != _DOLLAR or end - pos > max_len:
                    break
                line = data[pos:end]
                # Printable ASCII and no `$` but the first (else: a CR inside, the line ends
                # there; a second `$`, the line is cut short; binary): the byte scan decides.
                if line.translate(None, _PLAIN) != b"$":
                    break
                want = _HEX_PAIRS.get(line[-2:]) if line[-3:-2] == b"*" else None
                if want is None:
                    sentence = self._check(line)  # no checksum, or not two hex digits
                    if sentence is not None:
                        out.append(sentence)
                    elif each:
                        out.append(None)
                elif nmea_checksum(body := line[1:-3]) != want:
                    self._counters["bad_checksum"] += 1
                    if each:
                        out.append(None)
                else:
                    parts = body.decode("ascii").split(",")
                    address = parts[0]
                    if 2 <= len(address) <= 8 and address.isalnum():
                        good += 1
                        out.append(_new_sentence(Sentence, (address, tuple(parts[1:]), line, True)))
                    else:
                        self._counters["malformed"] += 1
                        if each:
                            out.append(None)
            elif each:
                out.append(None)  # a blank line
            pos = nl + 1
        if good:
            self._counters["good"] += good
        return pos

    def flush(self) -> list[Frame]:
        """End of stream: treat buffered bytes as a complete last line."""
        out: list[Frame] = []
        self._scan(out, final=True)
        return out

    def _scan(self, out: list[Frame], *, final: bool) -> None:
        buf = self._buf
        n = len(buf)
        pos = 0
        max_len = self.max_sentence_len
        while pos < n:
            if self._discarding:
                # Rest of an overlong line: drop up to the next `$` or binary sync.
                d = buf.find(b"$", pos)
                stop = n if d < 0 else d
                for sync in (UBX_SYNC, CASIC_SYNC):
                    e = buf.find(sync, pos, stop)
                    if e >= 0:
                        stop = e
                if stop == n:
                    # Keep a last byte that may begin a sync split across chunks.
                    pos = n - 1 if not final and buf[n - 1] in (_UBX0, _CASIC0) else n
                    break
                self._discarding = False
                pos = stop
            first = buf[pos]
            if first in (_UBX0, _CASIC0):
                if pos + 1 >= n:
                    if not final:
                        break  # is the next byte a sync's second?
                elif buf[pos + 1] == (0x62 if first == _UBX0 else 0xCE):
                    took = self._binary(out, pos, final=final)
                    if took == 0:
                        break  # wait for the rest of the frame
                    pos += took
                    continue
                self._counters["garbage_bytes"] += 1
                pos += 1
                continue
            if first != _DOLLAR:
                d = buf.find(b"$", pos)
                stop = n if d < 0 else d
                seg = buf[pos:stop]
                if not seg.isascii():
                    # A binary frame may come before the next `$`: stop at its sync.
                    for sync in (UBX_SYNC, CASIC_SYNC):
                        e = buf.find(sync, pos, stop)
                        if e >= 0:
                            stop = e
                    if stop == n and buf[n - 1] in (_UBX0, _CASIC0) and not final:
                        stop = n - 1  # maybe the first byte of a sync: decide with the next chunk
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
            line = bytes(buf[pos:end])
            if not line.isascii():
                # A binary frame may begin inside the line: the sentence before it was cut
                # short (looked for only here, so that clean NMEA pays one isascii a line).
                cut = _sync_in(line)
                if cut > 0:
                    self._counters["truncated"] += 1
                    pos += cut
                    continue
            if end < n and buf[end] == _DOLLAR:
                self._counters["truncated"] += 1
                pos = end
                continue
            pos = end + 1 if end < n else end
            sentence = self._check(line)
            if sentence is not None:
                out.append(sentence)
        del buf[:pos]

    def _binary(self, out: list[Frame], pos: int, *, final: bool) -> int:
        """Frame the binary message whose sync is at `pos`: bytes consumed, 0 to wait."""
        buf = self._buf
        n = len(buf)
        ubx = buf[pos] == _UBX0
        overhead = UBX_OVERHEAD if ubx else CASIC_OVERHEAD
        if pos + 6 > n:
            if not final:
                return 0
            self._counters["binary_truncated"] += 1
            self._counters["garbage_bytes"] += n - pos
            return n - pos
        # UBX: sync, class, id, length; CASIC: sync, length, class, id.
        length = buf[pos + 4] | buf[pos + 5] << 8 if ubx else buf[pos + 2] | buf[pos + 3] << 8
        if length > self.max_binary_len:
            self._counters["binary_overlong"] += 1
            self._counters["garbage_bytes"] += 2
            return 2
        size = overhead + length
        if pos + size > n:
            if not final:
                return 0
            self._counters["binary_truncated"] += 1
            self._counters["garbage_bytes"] += 2
            return 2  # the rest may hold sentences: scan it again
        raw = bytes(buf[pos : pos + size])
        if ubx:
            if raw[-2:] != ubx_checksum(raw[2:-2]):
                self._counters["ubx_bad_checksum"] += 1
                self._counters["garbage_bytes"] += 2
                return 2
            self._counters["ubx_good"] += 1
            out.append(BinaryFrame("ubx", raw[2], raw[3], raw[6:-2], raw))
        else:
            if casic_checksum(raw[2:-4]) != int.from_bytes(raw[-4:], "little"):
                self._counters["casic_bad_checksum"] += 1
                self._counters["garbage_bytes"] += 2
                return 2
            self._counters["casic_good"] += 1
            out.append(BinaryFrame("casic", raw[4], raw[5], raw[6:-4], raw))
        return size

    def _check(self, line: bytes) -> Sentence | None:
        if line[-3:-2] == b"*":
            want = _HEX_PAIRS.get(line[-2:])
            if want is None or nmea_checksum(body := line[1:-3]) != want:
                self._counters["bad_checksum"] += 1
                return None
            checked = True
        elif b"*" in line:
            self._counters["bad_checksum"] += 1  # not two hex digits after the last `*`
            return None
        else:
            self._counters["no_checksum"] += 1
            if not self.allow_no_checksum:
                return None
            body = line[1:]
            checked = False
        # Printable ASCII only: binary that happened to pass (or skip) the checksum is not NMEA.
        if not body.isascii():
            self._counters["malformed"] += 1
            return None
        text = body.decode("ascii")
        if not text.isprintable():
            self._counters["malformed"] += 1
            return None
        address, *fields = text.split(",")
        if not (2 <= len(address) <= 8 and address.isalnum()):
            self._counters["malformed"] += 1
            return None
        if checked:
            self._counters["good"] += 1
        return Sentence(address, tuple(fields), line, checked)
