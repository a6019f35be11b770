"""The compact batch format, version 1: TPV fixes (and SKY summaries) as per-field delta streams.

Specified in docs/wire-format.md; this module is its reference implementation. It imports the
standard library only (zstandard lazily, for compressed batches), so fleet consumers can use
the decoder without the daemon's dependencies.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from terminal_gw.errors import ParseError

__all__ = [
    "CONTENT_TYPE",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_BODY_BYTES",
    "MAX_RECORDS",
    "TOPIC_SUFFIX",
    "BatchHeader",
    "Columns",
    "WireError",
    "decode_batch",
    "decode_columns",
    "derived_id",
    "encode_batch",
    "read_header",
    "sky_summary",
]

MAGIC = b"TB"
FORMAT_VERSION = 1
#: The MQTT 5 content type of a batch message.
CONTENT_TYPE = "application/vnd.terminal-gw.batch.v1"
#: Below `{prefix}/{device}/`.
TOPIC_SUFFIX = "gnss/batch"

FLAG_ZSTD = 0x01
FLAG_DICT = 0x02
_KNOWN_FLAGS = FLAG_ZSTD | FLAG_DICT

#: Decoder limits: a batch claiming more is refused before anything is allocated for it.
MAX_RECORDS = 1 << 20
MAX_BODY_BYTES = 64 << 20
_MAX_DEVICE_BYTES = 255
#: Every stored integer (and hence every difference of order <= 2) fits a signed 64-bit word.
_VALUE_LIMIT = 1 << 60

_CONSTELLATIONS = ("gps", "sbas", "gal", "bds", "qzss", "glo", "navic")


class WireError(ParseError):
    """A batch could not be encoded or decoded; `reason` says why."""


# --- the field table --------------------------------------------------------------------

INT, FLOAT, TIME, ENUM, GROUP, JSON = "int", "float", "time", "enum", "group", "json"


@dataclass(frozen=True)
class Field:
    """One column: bit number in the field mask, payload key (a group member has a parent),
    kind, unit exponent (floats and time: value = stored integer x 10**exp), enum names."""

    bit: int
    key: str
    kind: str
    exp: int = 0
    parent: str | None = None
    names: tuple[str, ...] = ()


def _table() -> tuple[Field, ...]:
    rows: list[Field] = [
        Field(0, "v", INT),
        Field(1, "class", ENUM, names=("TPV", "SKY")),
        Field(2, "time", TIME, -3),
        Field(3, "mode", INT),
        Field(4, "status", INT),
        Field(5, "lat", FLOAT, -7),
        Field(6, "lon", FLOAT, -7),
    ]
    for key in ("altHAE", "altMSL", "geoidSep", "speed", "track", "climb", "magvar", "eph", "epv"):
        rows.append(Field(len(rows), key, FLOAT, -2))
    for key in ("hdop", "vdop", "pdop"):
        rows.append(Field(len(rows), key, FLOAT, -2))
    rows += [Field(len(rows), "nSat", INT), Field(len(rows) + 1, "uSat", INT)]
    for group in ("used", "seen"):
        rows.append(Field(len(rows), group, GROUP))
        for name in _CONSTELLATIONS:
            rows.append(Field(len(rows), name, INT, parent=group))
    rows.append(Field(len(rows), "clock", ENUM, names=("gnss", "system")))
    rows.append(Field(len(rows), "extra", JSON))
    return tuple(rows)


FIELDS = _table()
_TOP = {f.key: f for f in FIELDS if f.parent is None and f.kind != JSON}
_GROUP_MEMBERS = {
    g.key: tuple(f for f in FIELDS if f.parent == g.key) for g in FIELDS if g.kind == GROUP
}
_EXTRA = FIELDS[-1]

# --- primitives ---------------------------------------------------------------------------


def _zz(n: int) -> int:
    return n << 1 if n >= 0 else (-n << 1) - 1


def _unzz(z: int) -> int:
    return z >> 1 if not z & 1 else -((z + 1) >> 1)


def _put(out: bytearray, n: int) -> None:
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)


def _vsize(n: int) -> int:
    return (n.bit_length() + 6) // 7 or 1


class _Reader:
    """Reads a body; every shortfall or overlong item is a WireError."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def uint(self, what: str) -> int:
        data, pos, shift, n = self.data, self.pos, 0, 0
        while True:
            if pos >= len(data):
                raise WireError(f"batch ends inside a varint ({what})", reason="truncated")
            b = data[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift >= 70:
                raise WireError(f"varint longer than 10 bytes ({what})", reason="bad_varint")
        if n >= 1 << 64:
            raise WireError(f"varint over 64 bits ({what})", reason="bad_varint")
        self.pos = pos
        return n

    def sint(self, what: str) -> int:
        return _unzz(self.uint(what))

    def take(self, n: int, what: str) -> bytes:
        if n > len(self.data) - self.pos:
            raise WireError(f"batch ends inside {what}", reason="truncated")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def text(self, what: str, limit: int = MAX_BODY_BYTES) -> str:
        n = self.uint(what)
        if n > limit:
            raise WireError(f"{what} too long ({n} bytes)", reason="too_long")
        try:
            return self.take(n, what).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WireError(f"{what} is not UTF-8", reason="bad_text") from exc


# --- value streams: coding = order (0 raw, 1 first, 2 second differences) | rle << 2 -------


def _diff(xs: list[int], order: int) -> list[int]:
    if order == 0 or not xs:
        return list(xs)
    if order == 1:
        return [xs[0]] + [b - a for a, b in itertools.pairwise(xs)]
    if len(xs) == 1:
        return [xs[0]]
    return [xs[0], xs[1] - xs[0]] + [
        c - 2 * b + a for a, b, c in zip(xs, xs[1:], xs[2:], strict=False)
    ]


def _undiff(es: list[int], order: int) -> list[int]:
    if order == 0 or not es:
        return es
    out = [es[0]]
    if order == 1:
        x = es[0]
        for e in es[1:]:
            x += e
            out.append(x)
        return out
    if len(es) > 1:
        a, b = es[0], es[0] + es[1]
        out.append(b)
        for e in es[2:]:
            a, b = b, e + 2 * b - a
            out.append(b)
    return out


def _runs(es: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for e in es:
        if out and out[-1][0] == e:
            out[-1] = (e, out[-1][1] + 1)
        else:
            out.append((e, 1))
    return out


def _put_stream(out: bytearray, xs: list[int]) -> None:
    best: tuple[int, int, list[int]] | None = None
    for order in (0, 1, 2):
        es = _diff(xs, order)
        zs = [e << 1 if e >= 0 else (-e << 1) - 1 for e in es]
        plain = sum([(z.bit_length() + 6) // 7 or 1 for z in zs])
        runs = _runs(zs)
        rle = sum([((z.bit_length() + 6) // 7 or 1) + (k.bit_length() + 6) // 7 for z, k in runs])
        if best is None or plain < best[0]:
            best = (plain, order, zs)
        if rle < best[0]:
            best = (rle, order | 4, [v for pair in runs for v in pair])
    assert best is not None
    out.append(best[1])
    for z in best[2]:
        _put(out, z)


def _get_stream(r: _Reader, n: int, what: str) -> list[int]:
    coding = r.uint(f"{what} coding")
    order, rle = coding & 3, coding >> 2
    if order > 2 or rle > 1:
        raise WireError(f"unknown stream coding {coding} ({what})", reason="bad_coding")
    if rle:
        es: list[int] = []
        while len(es) < n:
            value = r.sint(what)
            run = r.uint(f"{what} run")
            if run == 0 or run > n - len(es):
                raise WireError(f"run of {run} does not fit ({what})", reason="bad_run")
            es.extend([value] * run)
    else:
        es = [r.sint(what) for _ in range(n)]
    xs = _undiff(es, order)
    if xs and max(abs(min(xs)), abs(max(xs))) >= 1 << 63:
        raise WireError(f"value outside 64 bits ({what})", reason="bad_value")
    return xs


def _put_presence(out: bytearray, present: list[bool]) -> None:
    runs: list[int] = []
    state = True
    count = 0
    for p in present:
        if p == state:
            count += 1
        else:
            runs.append(count)
            state, count = p, 1
    runs.append(count)
    _put(out, len(runs))
    for n in runs:
        _put(out, n)


def _get_presence(r: _Reader, n: int, what: str) -> list[bool]:
    nruns = r.uint(f"{what} presence")
    if nruns == 0 or nruns > n + 1:
        raise WireError(f"{nruns} presence runs for {n} records ({what})", reason="bad_presence")
    out: list[bool] = []
    state = True
    for _ in range(nruns):
        run = r.uint(f"{what} presence run")
        if run > n - len(out):
            raise WireError(f"presence runs exceed {n} records ({what})", reason="bad_presence")
        out.extend([state] * run)
        state = not state
    if len(out) != n:
        raise WireError(
            f"presence runs cover {len(out)} of {n} records ({what})", reason="bad_presence"
        )
    return out


# --- time and ids -------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


_NAIVE_EPOCH = datetime(1970, 1, 1)  # noqa: DTZ001 - UTC throughout; naive formats faster


def _iso(ms: int) -> str:
    try:
        dt = _NAIVE_EPOCH + timedelta(milliseconds=ms)
    except OverflowError as exc:
        raise WireError(f"time {ms} ms is out of range", reason="bad_value") from exc
    if dt.year >= 1000:
        # The same text as the strftime below, at a quarter of its cost.
        return dt.isoformat(timespec="milliseconds") + "Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _ms(text: object) -> int | None:
    """Milliseconds since 1970 of a canonical ISO time (as the JSON payloads write it)."""
    if not isinstance(text, str) or not _ISO.fullmatch(text):
        return None
    try:
        dt = datetime.fromisoformat(text[:-1] + "+00:00")
    except ValueError:
        return None
    # The pattern fixes every width and fromisoformat checks every range, so a text that
    # parses is the canonical text of its time: formatting it again gives it back.
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _uuid_text(value: int) -> str:
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def derived_id(device: str, cls: str, time_ms: int) -> str:
    """The id a record has when it is derived from its device, class and time (id tag 1):
    a UUIDv7 whose 48-bit time is `time_ms` and whose other bits come from BLAKE2b."""
    # value = time_ms (48 bits) | 0x7 | seq | 0b10 | rand, with seq the digest's top 12 bits
    # and rand its low 62, written from the digest's hex text (a third faster than the
    # 128-bit integer formatted).
    d = hashlib.blake2b(f"tgw/{cls}/{device}/{time_ms}".encode(), digest_size=10).digest()
    h = d.hex()
    t = f"{time_ms & 0xFFFFFFFFFFFF:012x}"
    return f"{t[:8]}-{t[8:]}-7{h[:3]}-{0x80 | d[2] & 0x3F:02x}{h[6:8]}-{h[8:]}"


ID_ABSENT, ID_DERIVED, ID_UUID, ID_TEXT = 0, 1, 2, 3
_ID_MIXED = 4

# --- SKY summaries ------------------------------------------------------------------------

_GNSSID_NAMES = {0: "gps", 1: "sbas", 2: "gal", 3: "bds", 5: "qzss", 6: "glo", 7: "navic"}


def sky_summary(sky: Mapping[str, Any]) -> dict[str, Any]:
    """A SKY payload reduced to what a batch carries: satellites counted per constellation
    (`seen`, and `used` for those used in the fix) instead of the list."""
    out = {k: v for k, v in sky.items() if k != "satellites"}
    seen: dict[str, int] = {}
    used: dict[str, int] = {}
    for sat in sky.get("satellites") or ():
        name = _GNSSID_NAMES.get(sat.get("gnssid"), "other")
        seen[name] = seen.get(name, 0) + 1
        if sat.get("used"):
            used[name] = used.get(name, 0) + 1
    out["seen"] = seen
    out["used"] = used
    return out


# --- encoder ------------------------------------------------------------------------------


def _quantise(value: object, exp: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    k = round(value * 10**-exp) if exp < 0 else round(value / 10**exp)
    return k if abs(k) < _VALUE_LIMIT else None


_SCALE = {e: 10**-e for e in range(-18, 0)}


def _small_int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) >= _VALUE_LIMIT:
        return None
    return value


def _group(value: object) -> dict[str, int] | None:
    if not isinstance(value, dict):
        return None
    out: dict[str, int] = {}
    for k, v in value.items():
        n = _small_int(v)
        if k not in _CONSTELLATIONS or n is None:
            return None
        out[k] = n
    return out


def _split(fix: Mapping[str, Any]) -> tuple[dict[int, int | bool | str], dict[str, Any]]:
    """One payload as {field bit: stored integer, True for a group, JSON text for extras}, and
    the keys carried as extras (anything the table cannot hold exactly)."""
    cols: dict[int, int | bool | str] = {}
    extra: dict[str, Any] = {}
    for key, value in fix.items():
        if key == "id":
            continue
        f = _TOP.get(key)
        stored: int | None = None
        if f is None:
            extra[key] = value
            continue
        if f.kind == GROUP:
            members = _group(value)
            if members is None:
                extra[key] = value
                continue
            cols[f.bit] = True
            for m in _GROUP_MEMBERS[key]:
                if m.key in members:
                    cols[m.bit] = members[m.key]
            continue
        if f.kind == FLOAT:
            if type(value) is float and value - value == 0.0 and f.exp < 0:  # the common case
                k = round(value * _SCALE[f.exp])
                stored = k if -_VALUE_LIMIT < k < _VALUE_LIMIT else None
            else:
                stored = _quantise(value, f.exp)
        elif f.kind == INT:
            stored = _small_int(value)
        elif f.kind == ENUM:
            stored = f.names.index(value) if value in f.names else None
        elif f.kind == TIME:
            stored = _ms(value)
        if stored is None:
            extra[key] = value
        else:
            cols[f.bit] = stored
    return cols, extra


def _body(fixes: Sequence[Mapping[str, Any]], device: str) -> bytes:
    n = len(fixes)
    if n > MAX_RECORDS:
        raise WireError(f"{n} records: a batch holds at most {MAX_RECORDS}", reason="too_many")
    dev = device.encode("utf-8")
    if len(dev) > _MAX_DEVICE_BYTES:
        raise WireError("device id longer than 255 bytes", reason="too_long")
    rows: list[dict[int, int | bool | str]] = []
    tags: list[int] = []
    uuid_offsets: list[int] = []
    uuid_raw = bytearray()
    texts: list[str] = []
    time_bit, class_bit = _TOP["time"].bit, _TOP["class"].bit
    classes = _TOP["class"].names
    for fix in fixes:
        if not isinstance(fix, Mapping):
            raise WireError(
                f"a record is a {type(fix).__name__}, not a mapping", reason="bad_record"
            )
        cols, extra = _split(fix)
        ident = fix.get("id")
        t = cols.get(time_bit)
        t_ms = t if isinstance(t, int) and not isinstance(t, bool) else None
        c = cols.get(class_bit)
        if ident is None and "id" not in fix:
            tags.append(ID_ABSENT)
        elif (
            isinstance(ident, str)
            and t_ms is not None
            and isinstance(c, int)
            and ident == derived_id(device, classes[c], t_ms)
        ):
            tags.append(ID_DERIVED)
        elif isinstance(ident, str) and _UUID.fullmatch(ident):
            tags.append(ID_UUID)
            raw = bytes.fromhex(ident.replace("-", ""))
            uuid_offsets.append(int.from_bytes(raw[:6], "big") - (t_ms or 0))
            uuid_raw += raw[6:]
        elif isinstance(ident, str):
            tags.append(ID_TEXT)
            texts.append(ident)
        else:
            tags.append(ID_ABSENT)
            extra["id"] = ident
        if extra:
            try:
                cols[_EXTRA.bit] = json.dumps(extra, ensure_ascii=False, separators=(",", ":"))
            except (TypeError, ValueError) as exc:
                raise WireError(f"a value cannot be carried: {exc}", reason="bad_value") from exc
        rows.append(cols)
    present = [f for f in FIELDS if any(f.bit in row for row in rows)]
    times = [row[time_bit] for row in rows if time_bit in row]
    base = times[0] if times else 0
    assert isinstance(base, int)
    out = bytearray()
    _put(out, len(dev))
    out += dev
    _put(out, n)
    _put(out, _zz(base))
    _put(out, sum(1 << f.bit for f in present))
    for f in present:
        if f.kind in (FLOAT, TIME):
            _put(out, _zz(f.exp))
    mode = tags[0] if tags and all(t == tags[0] for t in tags) else _ID_MIXED
    _put(out, mode if n else ID_ABSENT)
    if mode == _ID_MIXED:
        out += bytes(tags)
    if uuid_offsets:
        _put_stream(out, uuid_offsets)
        out += uuid_raw
    for text in texts:
        raw_text = text.encode("utf-8")
        _put(out, len(raw_text))
        out += raw_text
    for f in present:
        flags = [f.bit in row for row in rows]
        _put_presence(out, flags)
        values = [row[f.bit] for row in rows if f.bit in row]
        if f.kind == GROUP:
            continue
        if f.kind == JSON:
            for v in values:
                assert isinstance(v, str)
                raw_json = v.encode("utf-8")
                _put(out, len(raw_json))
                out += raw_json
            continue
        ints = [int(v) for v in values]
        if f.kind == TIME:
            ints = [v - base for v in ints]
        _put_stream(out, ints)
    return bytes(out)


def encode_batch(
    fixes: Sequence[Mapping[str, Any]],
    device: str,
    *,
    compress: bool = True,
    dictionary: tuple[int, bytes] | None = None,
) -> bytes:
    """TPV payload dicts (or SKY summaries) as one batch: fixed units, absent fields absent,
    ids kept; zstd over the body when `compress` and it is smaller.

    `dictionary` is (id, zstd dictionary bytes): the decoder must be given the same one."""
    body = _body(fixes, device)
    flags = 0
    tail = bytearray()
    if compress:
        import zstandard

        if dictionary is not None:
            zdict = zstandard.ZstdCompressionDict(dictionary[1])
            cctx = zstandard.ZstdCompressor(level=19, dict_data=zdict, write_dict_id=False)
        else:
            cctx = zstandard.ZstdCompressor(level=19, write_dict_id=False)
        packed = cctx.compress(body)
        extra_len = _vsize(dictionary[0]) if dictionary is not None else 0
        if len(packed) + extra_len < len(body):
            flags |= FLAG_ZSTD
            if dictionary is not None:
                flags |= FLAG_DICT
                _put(tail, dictionary[0])
            body = packed
    return MAGIC + bytes([FORMAT_VERSION, flags]) + bytes(tail) + body


# --- decoder ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchHeader:
    """What a batch says about itself before its records."""

    version: int
    compressed: bool
    dictionary_id: int | None
    device: str
    count: int
    base_time_ms: int
    fields: tuple[str, ...]


def _unpack(data: bytes, dictionaries: Mapping[int, bytes] | None) -> tuple[int, int | None, bytes]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError("a batch is bytes", reason="bad_type")
    data = bytes(data)
    if len(data) < 4 or data[:2] != MAGIC:
        raise WireError("not a terminal-gw batch (no 'TB' magic)", reason="bad_magic")
    version, flags = data[2], data[3]
    if version != FORMAT_VERSION:
        raise WireError(f"batch format version {version} is not known", reason="bad_version")
    if flags & ~_KNOWN_FLAGS or (flags & FLAG_DICT and not flags & FLAG_ZSTD):
        raise WireError(f"unknown batch flags 0x{flags:02x}", reason="bad_flags")
    r = _Reader(data)
    r.pos = 4
    dict_id = r.uint("dictionary id") if flags & FLAG_DICT else None
    rest = data[r.pos :]
    if not flags & FLAG_ZSTD:
        return flags, dict_id, rest
    try:
        import zstandard
    except ImportError as exc:  # pragma: no cover - zstandard is a dependency
        raise WireError("a compressed batch needs the zstandard module", reason="no_zstd") from exc
    zdict = None
    if dict_id is not None:
        raw = (dictionaries or {}).get(dict_id)
        if raw is None:
            raise WireError(f"batch needs zstd dictionary {dict_id}", reason="no_dictionary")
        zdict = zstandard.ZstdCompressionDict(raw)
    try:
        dctx = (
            zstandard.ZstdDecompressor(dict_data=zdict) if zdict else zstandard.ZstdDecompressor()
        )
        with dctx.stream_reader(rest, read_across_frames=False) as reader:
            body = reader.read(MAX_BODY_BYTES + 1)
    except zstandard.ZstdError as exc:
        raise WireError(f"zstd: {exc}", reason="bad_zstd") from exc
    if len(body) > MAX_BODY_BYTES:
        raise WireError("decompressed batch over the size limit", reason="too_large")
    return flags, dict_id, body


def _head(r: _Reader) -> tuple[str, int, int, list[Field], dict[int, int]]:
    device = r.text("device", _MAX_DEVICE_BYTES)
    n = r.uint("count")
    if n > MAX_RECORDS:
        raise WireError(f"batch claims {n} records (limit {MAX_RECORDS})", reason="too_many")
    base = r.sint("base time")
    mask = r.uint("field mask")
    if mask >> len(FIELDS):
        raise WireError(f"field mask 0x{mask:x} names unknown fields", reason="bad_fields")
    present = [f for f in FIELDS if mask >> f.bit & 1]
    exps: dict[int, int] = {}
    for f in present:
        if f.kind in (FLOAT, TIME):
            e = r.sint(f"{f.key} unit")
            if not -18 <= e <= 18 or (f.kind == TIME and e < -3):
                raise WireError(f"unit 10^{e} not supported for {f.key}", reason="bad_unit")
            exps[f.bit] = e
    if n == 0 and present:
        raise WireError("an empty batch names fields", reason="bad_fields")
    return device, n, base, present, exps


def read_header(data: bytes, *, dictionaries: Mapping[int, bytes] | None = None) -> BatchHeader:
    """The header of a batch (decompressing it when needed), without decoding the records."""
    flags, dict_id, body = _unpack(data, dictionaries)
    device, n, base, present, _ = _head(_Reader(body))
    return BatchHeader(
        FORMAT_VERSION,
        bool(flags & FLAG_ZSTD),
        dict_id,
        device,
        n,
        base,
        tuple(f.key if f.parent is None else f"{f.parent}.{f.key}" for f in present),
    )


_ABSENT = object()  # a record without the field
_NEW_GROUP = object()  # a record with the group: a dict of its own


def _records(
    columns: list[tuple[Field, list[bool], list[Any]]], n: int
) -> Iterator[dict[str, Any]] | list[dict[str, Any]]:
    """The records of a batch from its columns, in field order. Column by column (lists
    built by comprehensions) when the batch has no extra JSON and every group comes before
    its members; else record by record."""
    index = {f.key: i for i, (f, _, _) in enumerate(columns) if f.parent is None}
    if any(f.kind == JSON for f, _, _ in columns) or any(
        f.parent is not None and index.get(f.parent, i) >= i for i, (f, _, _) in enumerate(columns)
    ):
        return _records_one_by_one(columns, n)
    top_keys: list[str] = []
    top_cols: list[list[Any]] = []
    members: list[tuple[str, str, list[Any]]] = []
    for f, flags, values in columns:
        col: list[Any]
        if f.kind == GROUP:
            col = [_NEW_GROUP if flag else _ABSENT for flag in flags]
        elif len(values) == n:  # present in every record
            col = values
        else:
            it = iter(values)
            col = [next(it) if flag else _ABSENT for flag in flags]
        if f.parent is None:
            top_keys.append(f.key)
            top_cols.append(col)
        else:
            members.append((f.parent, f.key, col))
    if not top_cols:
        records: list[dict[str, Any]] = [{} for _ in range(n)]
    else:
        records = [
            {
                k: {} if v is _NEW_GROUP else v
                for k, v in zip(top_keys, row, strict=True)
                if v is not _ABSENT
            }
            for row in zip(*top_cols, strict=True)
        ]
    for parent, key, col in members:
        for rec, v in zip(records, col, strict=True):
            if v is not _ABSENT:
                group = rec.get(parent)
                if not isinstance(group, dict):
                    raise WireError(f"{parent}.{key} without {parent}", reason="bad_group")
                group[key] = v
    return records


def _records_one_by_one(
    columns: list[tuple[Field, list[bool], list[Any]]], n: int
) -> Iterator[dict[str, Any]]:
    iters = [(f, iter(flags), iter(values)) for f, flags, values in columns]
    for _ in range(n):
        rec: dict[str, Any] = {}
        for f, flags_it, values_it in iters:
            if not next(flags_it):
                continue
            if f.kind == GROUP:
                rec[f.key] = {}
            elif f.kind == JSON:
                rec.update(next(values_it))
            elif f.parent is not None:
                group = rec.get(f.parent)
                if not isinstance(group, dict):
                    raise WireError(f"{f.parent}.{f.key} without {f.parent}", reason="bad_group")
                group[f.key] = next(values_it)
            else:
                rec[f.key] = next(values_it)
        yield rec


@dataclass(slots=True)
class _Body:
    """A body read up to its records: the header, the ids' raw parts and the field columns
    (each with its presence flags and the values of the records that have it)."""

    device: str
    n: int
    tags: list[int]
    offsets: list[int]
    raw_ids: bytes
    texts: list[str]
    columns: list[tuple[Field, list[bool], list[Any]]]
    ms_of_time: dict[str, int]
    time_exp: int


def _read_body(body: bytes) -> _Body:
    r = _Reader(body)
    device, n, base, present, exps = _head(r)
    mode = r.uint("id mode")
    if mode > _ID_MIXED:
        raise WireError(f"unknown id mode {mode}", reason="bad_ids")
    tags = list(r.take(n, "id tags")) if mode == _ID_MIXED else [mode] * n
    if tags and max(tags) > ID_TEXT:
        raise WireError("unknown id tag", reason="bad_ids")
    n_uuid = tags.count(ID_UUID)
    offsets = _get_stream(r, n_uuid, "id time") if n_uuid else []
    raw_ids = r.take(10 * n_uuid, "ids")
    texts = [r.text("id") for _ in range(tags.count(ID_TEXT))]
    columns: list[tuple[Field, list[bool], list[Any]]] = []
    ms_of_time: dict[str, int] = {}
    for f in present:
        flags = _get_presence(r, n, f.key)
        k = flags.count(True)
        if f.kind == GROUP:
            columns.append((f, flags, []))
            continue
        if f.kind == JSON:
            values: list[Any] = []
            for _ in range(k):
                try:
                    obj = json.loads(r.text("extra"))
                except (json.JSONDecodeError, RecursionError) as exc:  # nested too deep
                    raise WireError(f"extra is not JSON: {exc}", reason="bad_extra") from exc
                if not isinstance(obj, dict):
                    raise WireError("extra is not a JSON object", reason="bad_extra")
                values.append(obj)
            columns.append((f, flags, values))
            continue
        ints = _get_stream(r, k, f.key)
        if f.kind == FLOAT:
            exp = exps[f.bit]
            if exp < 0:  # value = stored integer x 10**exp, no call a value
                div = 10**-exp
                columns.append((f, flags, [v / div for v in ints]))
            else:
                mul = 10**exp
                columns.append((f, flags, [float(v * mul) for v in ints]))
        elif f.kind == TIME:
            mul = 10 ** (exps[f.bit] + 3)
            texts_of = [_iso((v + base) * mul) for v in ints]
            if f.key == "time" and f.parent is None and mul == 1:
                # The derived ids below need each record's time in ms: kept, not parsed again.
                ms_of_time = {
                    text: v + base
                    for text, v in zip(texts_of, ints, strict=True)
                    if len(text) == 24  # canonical (years 1000-9999), as _ms requires
                }
            columns.append((f, flags, texts_of))
        elif f.kind == ENUM:
            if ints and (min(ints) < 0 or max(ints) >= len(f.names)):
                raise WireError(f"{f.key} value outside its table", reason="bad_value")
            columns.append((f, flags, [f.names[v] for v in ints]))
        else:
            columns.append((f, flags, ints))
    if r.pos != len(body):
        raise WireError(f"{len(body) - r.pos} bytes after the last field", reason="trailing")
    time_exp = exps.get(_TOP["time"].bit, -3)
    return _Body(device, n, tags, offsets, raw_ids, texts, columns, ms_of_time, time_exp)


def _decode(body: bytes) -> Iterator[dict[str, Any]]:
    b = _read_body(body)
    device, offsets, raw_ids, texts, ms_of_time = (
        b.device,
        b.offsets,
        b.raw_ids,
        b.texts,
        b.ms_of_time,
    )
    u = t = 0
    for tag, rec in zip(b.tags, _records(b.columns, b.n), strict=True):
        ident: str | None = None
        if tag == ID_DERIVED:
            text = rec.get("time")
            t_ms = ms_of_time.get(text) if isinstance(text, str) else None
            if t_ms is None:
                t_ms = _ms(text)
            cls = rec.get("class")
            if t_ms is None or cls not in _TOP["class"].names or b.time_exp != -3:
                raise WireError("derived id without time and class", reason="bad_ids")
            assert isinstance(cls, str)
            ident = derived_id(device, cls, t_ms)
        elif tag == ID_UUID:
            # The offset is from the record's time when it has a canonical one (else from 0).
            ms = offsets[u] + (_ms(rec.get("time")) or 0)
            if not 0 <= ms < 1 << 48:
                raise WireError("id time outside 48 bits", reason="bad_ids")
            raw = ms.to_bytes(6, "big") + raw_ids[10 * u : 10 * u + 10]
            ident = _uuid_text(int.from_bytes(raw, "big"))
            u += 1
        elif tag == ID_TEXT:
            ident = texts[t]
            t += 1
        yield {"id": ident, **rec} if ident is not None else rec


@dataclass(frozen=True, slots=True)
class Columns:
    """A plain batch's records column by column: what `decode_batch` gives, transposed.

    `values` maps each top-level key present in the batch to one value per record (None
    where the record lacks it; a group's value is its dict of members); `ids` holds each
    record's id (None: it has none) and `time_ms` the ms since 1970 of each record whose
    `time` is canonical ISO text (24 characters), else None.
    """

    device: str
    count: int
    ids: list[str | None]
    values: dict[str, list[Any]]
    time_ms: list[int | None]


def decode_columns(
    data: bytes, *, dictionaries: Mapping[int, bytes] | None = None
) -> Columns | None:
    """The records of a batch as columns, or None when the batch is not a plain one (extra
    JSON fields, a group member without its group, an id that cannot be derived) or is
    malformed: `decode_batch` then gives its records, or the error. A consumer that builds
    rows from columns skips one dict a record."""
    try:
        _, _, body = _unpack(data, dictionaries)
        b = _read_body(body)
    except (WireError, ValueError):
        return None
    n = b.n
    values: dict[str, list[Any]] = {}
    groups: dict[str, list[dict[str, Any] | None]] = {}
    for f, flags, vals in b.columns:
        if f.kind == JSON:
            return None
        if f.kind == GROUP:
            col: list[Any] = [{} if flag else None for flag in flags]
            groups[f.key] = col
            values[f.key] = col
            continue
        if len(vals) == n:
            full = vals
        else:
            it = iter(vals)
            full = [next(it) if flag else None for flag in flags]
        if f.parent is None:
            values[f.key] = full
            continue
        members = groups.get(f.parent)
        if members is None:
            return None
        for group, v in zip(members, full, strict=True):
            if v is not None:
                if group is None:
                    return None
                group[f.key] = v
    times = values.get("time")
    time_ms: list[int | None]
    if times is None:
        time_ms = [None] * n
    else:
        # The ms of a canonical text, as `_ms` gives them (kept by the reader at ms units).
        ms_of = b.ms_of_time
        if b.time_exp != -3:
            ms_of = {text: ms for text in times if (ms := _ms(text)) is not None}
        time_ms = [None if text is None else ms_of.get(text) for text in times]
    ids: list[str | None] = [None] * n
    tags = b.tags
    if all(tag == ID_DERIVED for tag in tags):
        classes = values.get("class")
        if classes is None or None in classes or None in time_ms or b.time_exp != -3:
            return None
        device = b.device
        ids = [derived_id(device, c, ms) for c, ms in zip(classes, time_ms, strict=True)]  # type: ignore[arg-type]  # no None: checked above
    else:
        classes = values.get("class") or [None] * n
        u = t = 0
        for i, tag in enumerate(tags):
            if tag == ID_DERIVED:
                ms_i, cls = time_ms[i], classes[i]
                if ms_i is None or cls is None or b.time_exp != -3:
                    return None
                ids[i] = derived_id(b.device, cls, ms_i)
            elif tag == ID_UUID:
                ms = b.offsets[u] + (time_ms[i] or 0)
                if not 0 <= ms < 1 << 48:
                    return None
                raw = ms.to_bytes(6, "big") + b.raw_ids[10 * u : 10 * u + 10]
                ids[i] = _uuid_text(int.from_bytes(raw, "big"))
                u += 1
            elif tag == ID_TEXT:
                ids[i] = b.texts[t]
                t += 1
    return Columns(b.device, n, ids, values, time_ms)


def decode_batch(
    data: bytes, *, dictionaries: Mapping[int, bytes] | None = None
) -> list[dict[str, Any]]:
    """The payload dicts of a batch, in order, equal to their JSON payloads at the format's
    units. Any malformed input raises WireError."""
    _, _, body = _unpack(data, dictionaries)
    return list(_decode(body))
