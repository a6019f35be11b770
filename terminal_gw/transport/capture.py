"""Capture files: what crossed a port, both directions, with timestamps.

The format (version 1) is text, so `less` shows it, yet binary-safe:

    # terminal-gw capture v1 start=2026-11-25T17:52:37.123456Z
    # fields: seconds-since-start port direction bytes ...
    0.000000 gnss < $GNGGA,074150.799,,,,,0,00,,,M,0.0,M,,0000,*64\\r\\n
    0.012345 modem > AT+CSQ\\r
    0.210000 modem < \\r\\n+CSQ: 17,99\\r\\n\\r\\nOK\\r\\n

* The first line is the magic header; `start` is the wall-clock (UTC) time of the first line's
  zero. A rotated file starts with a header of its own.
* Then one line per chunk, four fields separated by one space: seconds since `start` (six
  decimals; monotonic within a file when the writer stamps the chunks itself), the port name
  (printable ASCII, no spaces, not starting with `#`; the daemon uses `gnss`, `modem`,
  `rdss`), the direction (`<` read from the device, `>` written to it) and the bytes.
* Bytes: printable ASCII (0x20-0x7E) as-is except the backslash; `\\r`, `\\n`, `\\t`, `\\\\`,
  and `\\xHH` (two hex digits) for every other byte. A line therefore never holds a raw CR or LF.
* Lines starting with `#` are comments; blank lines are ignored.
* A chunk longer than 64 KiB is written as several lines (several chunks when read back), so
  a reader never needs more than about 256 KiB for a line.

The reader also reads RAW captures (the bytes as read from a port, like gpsd's regression logs):
a file that does not start with the header is raw. Its lines starting with `#` are comments and
skipped; every other byte is kept, binary included, and reported as read from port `gnss`
without timestamps.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Final, Literal, NamedTuple, Self, TextIO

from terminal_gw.errors import TransportError

MAGIC: Final = "# terminal-gw capture v"
VERSION: Final = 1
RAW_PORT: Final = "gnss"

Direction = Literal["<", ">"]
Kind = Literal["capture", "raw"]

FROM_DEVICE: Final = "<"
TO_DEVICE: Final = ">"

#: The writer puts longer chunks on several lines, so every line stays under MAX_LINE bytes.
MAX_CHUNK: Final = 64 * 1024
#: Longest line the reader accepts in an own-format capture (a MAX_CHUNK of escaped binary).
MAX_LINE: Final = 4 * MAX_CHUNK + 256
#: Raw captures are read in lines of at most this many bytes.
RAW_PIECE: Final = 64 * 1024
#: `CaptureReader.raw_blocks` reads this many bytes at a time: a run of lines small enough for
#: its sentences to stay in the CPU's cache while a replay goes through them.
RAW_BLOCK: Final = 8 * 1024

_PORT_RE = re.compile(r"[!-~]+")
_HASH = 0x23


class Chunk(NamedTuple):
    """One chunk of bytes that crossed a port; `ts` is unix time, None in raw captures."""

    ts: float | None
    port: str
    direction: Direction
    data: bytes


# -- escaping ---------------------------------------------------------------------------------

_ESCAPES: Final = {0x0D: "\\r", 0x0A: "\\n", 0x09: "\\t", 0x5C: "\\\\"}
_ESCAPE_TABLE: Final = tuple(
    _ESCAPES.get(b, chr(b) if 0x20 <= b <= 0x7E else f"\\x{b:02x}") for b in range(256)
)
# Everything that is not printable ASCII, plus the backslash, needs an escape.
_NEEDS_ESCAPE = re.compile(r"[^\x20-\x5b\x5d-\x7e]")
_ESCAPE_SEQ = re.compile(r"\\(x[0-9A-Fa-f]{2}|[rnt\\])")
_UNESCAPES: Final = {"r": "\r", "n": "\n", "t": "\t", "\\": "\\"}


def escape(data: bytes) -> str:
    """The bytes as one line of printable ASCII (see the module docstring)."""
    text = data.decode("latin-1")
    return _NEEDS_ESCAPE.sub(lambda m: _ESCAPE_TABLE[ord(m.group())], text)


def _unescape_one(m: re.Match[str]) -> str:
    seq = m.group(1)
    return chr(int(seq[1:], 16)) if seq[0] == "x" else _UNESCAPES[seq]


def unescape(text: str) -> bytes:
    """The bytes an escaped line stands for; ValueError when it is not a valid escaping."""
    if "\\" not in text:
        if not text.isascii() or not text.isprintable():
            raise ValueError("unescaped byte outside printable ASCII")
        return text.encode("ascii")
    # Any backslash left after the valid sequences are taken out is a broken escape.
    if "\\" in _ESCAPE_SEQ.sub("", text):
        raise ValueError("bad escape sequence")
    if not text.isascii() or not text.isprintable():
        raise ValueError("unescaped byte outside printable ASCII")
    return _ESCAPE_SEQ.sub(_unescape_one, text).encode("latin-1")


def _iso(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_iso(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def header_line(start: float) -> str:
    """The first line of a version 1 capture that starts at unix time `start`."""
    return f"{MAGIC}{VERSION} start={_iso(start)}\n"


_FIELDS_LINE: Final = (
    "# fields: seconds-since-start port direction(< from device, > to device) "
    "bytes(printable ASCII; \\r \\n \\t \\\\ \\xHH)\n"
)


# -- writer -----------------------------------------------------------------------------------


class CaptureWriter:
    """Appends chunks to a capture file, optionally rotating it by size.

    With `max_bytes`, a chunk that would take the file past that size first rotates it:
    `path` becomes `path.1`, `path.1` becomes `path.2`, ..., and only `keep` old files are
    kept (0: old data is dropped). Every line is flushed so that a crash loses nothing written.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        max_bytes: int | None = None,
        keep: int = 3,
        start: float | None = None,
    ) -> None:
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if keep < 0:
            raise ValueError("keep must not be negative")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self._file: TextIO | None = None
        self._size = 0
        self._chunks_in_file = 0
        self._open(time.time() if start is None else start)

    def _open(self, start: float) -> None:
        self._start = start
        self._mono_start = time.monotonic()
        try:
            self._file = self.path.open("w", encoding="ascii", newline="\n")
        except OSError as exc:
            raise TransportError(
                f"cannot write capture {self.path}: {exc.strerror}", reason=exc.strerror
            ) from exc
        head = header_line(start) + _FIELDS_LINE
        self._file.write(head)
        self._size = len(head)
        self._chunks_in_file = 0

    def _rotate(self, start: float) -> None:
        assert self._file is not None
        self._file.close()
        if self.keep == 0:
            self.path.unlink(missing_ok=True)
        else:
            oldest = self.path.with_name(f"{self.path.name}.{self.keep}")
            oldest.unlink(missing_ok=True)
            for n in range(self.keep - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{n}")
                if src.exists():
                    src.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._open(start)

    @property
    def start(self) -> float:
        """Unix time of the current file's zero."""
        return self._start

    def write(self, port: str, direction: Direction, data: bytes, ts: float | None = None) -> None:
        """Append one chunk; `ts` is unix time, default: now on a monotonic clock."""
        if self._file is None:
            raise TransportError(f"capture {self.path} is closed")
        if not _PORT_RE.fullmatch(port) or port.startswith("#"):
            raise ValueError(f"bad port name {port!r}: printable ASCII, no spaces, no leading #")
        if direction not in (FROM_DEVICE, TO_DEVICE):
            raise ValueError(f"direction is '<' or '>', not {direction!r}")
        if len(data) > MAX_CHUNK:
            for i in range(0, len(data), MAX_CHUNK):
                self.write(port, direction, data[i : i + MAX_CHUNK], ts)
            return
        line = self._line(port, direction, data, ts)
        if (
            self.max_bytes is not None
            and self._chunks_in_file > 0
            and self._size + len(line) > self.max_bytes
        ):
            # The new file starts at this chunk, so a replay sees the set as one stream.
            self._rotate(time.time() if ts is None else ts)
            line = self._line(port, direction, data, ts)
        assert self._file is not None
        try:
            self._file.write(line)
            self._file.flush()
        except OSError as exc:
            raise TransportError(
                f"cannot write capture {self.path}: {exc.strerror}", reason=exc.strerror
            ) from exc
        self._size += len(line)
        self._chunks_in_file += 1

    def _line(self, port: str, direction: str, data: bytes, ts: float | None) -> str:
        # Without an explicit time the offset comes from the monotonic clock, so a wall-clock
        # step (NTP after boot on a Pi without RTC) cannot make offsets run backwards.
        offset = time.monotonic() - self._mono_start if ts is None else ts - self._start
        return f"{offset:.6f} {port} {direction} {escape(data)}\n"

    def close(self) -> None:
        """Flush and close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- reader -----------------------------------------------------------------------------------


def _is_text(piece: bytes) -> bool:
    """True for UTF-8 text without control characters other than tab, CR and LF."""
    try:
        text = piece.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return text.rstrip("\r\n").replace("\t", " ").isprintable()


class CaptureReader:
    """Iterates the chunks of a capture file, own format or raw (detected by the header).

    Bad lines of an own-format capture are counted in `bad_lines` and skipped. Raw captures
    give one chunk per line (comments left out) with `ts` None and port `gnss`.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.kind: Kind = "raw"
        self.version: int | None = None
        self.start: float | None = None
        self.bad_lines = 0
        self.comment_lines = 0
        self.bytes_read = 0
        try:
            self.size = self.path.stat().st_size
            with self.path.open("rb") as f:
                first = f.readline()
        except OSError as exc:
            raise TransportError(
                f"cannot read capture {self.path}: {exc.strerror}", reason=exc.strerror
            ) from exc
        if first.startswith(MAGIC.encode()):
            self._parse_header(first)

    def _parse_header(self, line: bytes) -> None:
        text = line.decode("ascii", "replace").strip()
        version_text, _, rest = text[len(MAGIC) :].partition(" ")
        if not version_text.isdigit() or int(version_text) != VERSION:
            raise TransportError(
                f"{self.path}: capture format version {version_text!r} is not supported "
                f"(this version reads v{VERSION})",
                reason="unsupported version",
            )
        self.kind = "capture"
        self.version = VERSION
        for field in rest.split():
            key, _, value = field.partition("=")
            if key == "start":
                try:
                    self.start = _parse_iso(value)
                except ValueError as exc:
                    raise TransportError(
                        f"{self.path}: bad start time in the header: {value!r}",
                        reason="bad header",
                    ) from exc
        if self.start is None:
            raise TransportError(f"{self.path}: header has no start time", reason="bad header")

    def __iter__(self) -> Iterator[Chunk]:
        try:
            with self.path.open("rb") as f:
                if self.kind == "raw":
                    yield from self._raw(f)
                else:
                    yield from self._own(f)
        except OSError as exc:
            raise TransportError(
                f"cannot read capture {self.path}: {exc.strerror}", reason=exc.strerror
            ) from exc

    def _raw(self, f: BinaryIO) -> Iterator[Chunk]:
        # Pieces of at most RAW_PIECE bytes: binary data without line ends (or with CR only)
        # must not be read into memory whole. Only a piece that starts a line can be a comment.
        at_line_start = True
        in_comment = False
        while piece := f.readline(RAW_PIECE):
            self.bytes_read += len(piece)
            if at_line_start:
                # A `#` line is a comment when it is text: binary frames (UBX, CASIC) hold
                # `\n#` too, and cutting them would lose whole messages.
                in_comment = piece.startswith(b"#") and _is_text(piece)
                if in_comment:
                    self.comment_lines += 1
            at_line_start = piece.endswith(b"\n")
            if not in_comment:
                yield Chunk(None, RAW_PORT, FROM_DEVICE, piece)

    def raw_blocks(self) -> Iterator[tuple[bytes, bool]]:
        """A raw capture's chunks as iterating gives them, grouped where they are whole lines:
        `(data, True)` is a run of lines each of which iteration gives as a chunk of its own
        (LF-terminated, at most RAW_PIECE bytes, no comment among them), `(data, False)` one
        chunk. For a reader that takes many lines at once (replay: one call a run, not one a
        line); the same bytes, comments and counts as iterating."""
        if self.kind != "raw":
            raise TransportError(f"{self.path}: not a raw capture", reason="not raw")
        try:
            with self.path.open("rb") as f:
                yield from self._raw_blocks(f)
        except OSError as exc:
            raise TransportError(
                f"cannot read capture {self.path}: {exc.strerror}", reason=exc.strerror
            ) from exc

    def _raw_blocks(self, f: BinaryIO) -> Iterator[tuple[bytes, bool]]:
        # The pieces of `_raw` (each what `readline(RAW_PIECE)` gives), found in blocks read
        # whole: at most RAW_PIECE + a block are held.
        at_line_start = True
        in_comment = False
        buf = b""
        eof = False
        size = min(RAW_BLOCK, RAW_PIECE)  # no longer than a piece (see below)
        while not eof:
            more = f.read(size)
            eof = not more
            buf = buf + more if buf else more
            n = len(buf)
            cut = buf.rfind(b"\n") + 1  # the end of the last whole line
            pos = 0
            while pos < n:
                if at_line_start and pos < cut and buf[pos] != _HASH:
                    # Whole lines up to the next that may be a comment. Only the first can
                    # be longer than a piece (it began in the block before).
                    hash_at = buf.find(b"\n#", pos, cut)
                    stop = cut if hash_at < 0 else hash_at + 1
                    if buf.find(b"\n", pos, stop) + 1 - pos <= RAW_PIECE:
                        self.bytes_read += stop - pos
                        yield buf[pos:stop], True
                        pos = stop
                        continue
                lf = buf.find(b"\n", pos, pos + RAW_PIECE)
                if lf >= 0:
                    end = lf + 1
                elif n - pos >= RAW_PIECE:
                    end = pos + RAW_PIECE
                elif eof:
                    end = n
                else:
                    break  # the rest of a line: with the next block
                piece = buf[pos:end]
                pos = end
                self.bytes_read += len(piece)
                if at_line_start:
                    in_comment = piece.startswith(b"#") and _is_text(piece)
                    if in_comment:
                        self.comment_lines += 1
                at_line_start = piece.endswith(b"\n")
                if not in_comment:
                    yield piece, False
            buf = buf[pos:]

    def _own(self, f: BinaryIO) -> Iterator[Chunk]:
        start = self.start
        assert start is not None
        while raw := f.readline(MAX_LINE):
            self.bytes_read += len(raw)
            if not raw.endswith(b"\n") and len(raw) == MAX_LINE:
                # Longer than any line the writer makes: skip the rest of it.
                while (rest := f.readline(MAX_LINE)) and not rest.endswith(b"\n"):
                    self.bytes_read += len(rest)
                self.bytes_read += len(rest)
                self.bad_lines += 1
                continue
            line = raw.rstrip(b"\r\n")
            if not line:
                continue
            if line.startswith(b"#"):
                self.comment_lines += 1
                continue
            chunk = self._parse_line(line, start)
            if chunk is None:
                self.bad_lines += 1
                continue
            yield chunk

    @staticmethod
    def _parse_line(line: bytes, start: float) -> Chunk | None:
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            return None
        parts = text.split(" ", 3)
        if len(parts) == 3:
            parts.append("")  # an empty chunk whose trailing space an editor removed
        if len(parts) != 4:
            return None
        offset_text, port, direction, body = parts
        if direction not in (FROM_DEVICE, TO_DEVICE) or not _PORT_RE.fullmatch(port):
            return None
        try:
            offset = float(offset_text)
            data = unescape(body)
        except ValueError:
            return None
        if not math.isfinite(offset):
            return None
        d: Direction = FROM_DEVICE if direction == FROM_DEVICE else TO_DEVICE
        return Chunk(start + offset, port, d, data)


def read_capture(path: Path | str) -> Iterator[Chunk]:
    """The chunks of a capture file (own format or raw)."""
    return iter(CaptureReader(path))


def rotated_files(path: Path | str) -> list[Path]:
    """A rotated capture set, oldest first: path.N ... path.1, path (those that exist)."""
    base = Path(path)
    numbered: list[tuple[int, Path]] = []
    for p in base.parent.glob(f"{base.name}.*"):
        suffix = p.name[len(base.name) + 1 :]
        if suffix.isdigit():
            numbered.append((int(suffix), p))
    files = [p for _, p in sorted(numbered, reverse=True)]
    if base.exists():
        files.append(base)
    return files


__all__ = [
    "FROM_DEVICE",
    "MAGIC",
    "RAW_PORT",
    "TO_DEVICE",
    "VERSION",
    "CaptureReader",
    "CaptureWriter",
    "Chunk",
    "Direction",
    "escape",
    "header_line",
    "read_capture",
    "rotated_files",
    "unescape",
]
