"""From one MQTT message to the rows it stores, or the reason it is rejected. Pure: no I/O.

Topics are `{prefix}/{device}/{path}`; what a path holds, and which payload classes it may
carry, is the table `ROUTES`. Payloads are checked with the project's own payload models (the
JSON Schemas in `schemas/` are generated from them), so a payload the device would not have
published is rejected with the validator's words.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError

from terminal_gw.errors import ParseError
from terminal_gw.models import (
    BdsReceived,
    BdsSendProgress,
    CommandResult,
    Event,
    Fix,
    FixBatch,
    ModemStatus,
    Payload,
    RdssStatus,
    Sky,
    SmsReceived,
    SmsSendProgress,
    Status,
)

if TYPE_CHECKING:
    from terminal_gw.wire import Columns

#: Columns of each table, in COPY order (the SQL in schema/ defines them).
COLUMNS: dict[str, tuple[str, ...]] = {
    "fixes": (
        "id",
        "device",
        "time",
        "received",
        "mode",
        "status",
        "lat",
        "lon",
        "alt_hae",
        "alt_msl",
        "geoid_sep",
        "speed",
        "track",
        "climb",
        "magvar",
        "eph",
        "epv",
        "hdop",
        "vdop",
        "pdop",
        "nsat",
        "usat",
        "used",
        "clock",
        "source",
    ),
    "sky_summary": (
        "id",
        "device",
        "time",
        "received",
        "nsat",
        "usat",
        "hdop",
        "vdop",
        "pdop",
        "clock",
        "satellites",
        "seen",
        "used",
    ),
    "messages": (
        "id",
        "device",
        "time",
        "received",
        "channel",
        "direction",
        "class",
        "message_id",
        "peer",
        "state",
        "text",
        "payload",
    ),
    "events": (
        "id",
        "device",
        "time",
        "received",
        "kind",
        "severity",
        "message",
        "data",
        "clock",
    ),
    "device_status": (
        "device",
        "topic",
        "id",
        "time",
        "received",
        "class",
        "state",
        "payload",
    ),
    "command_results": (
        "id",
        "device",
        "time",
        "received",
        "command",
        "command_id",
        "ok",
        "code",
        "reason",
        "result",
    ),
}

Row = tuple[Any, ...]

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class Rejection(Exception):  # noqa: N818 - a verdict, not an error of this program
    """Why a message cannot be stored, in a few words."""


@dataclass(slots=True)
class Parsed:
    """What one message stores: rows by table, and the device times of its fixes (for lag)."""

    rows: dict[str, list[Row]] = field(default_factory=dict)
    fix_times: list[float] = field(default_factory=list)
    skipped: bool = False  # a topic ingest does not store (commands, a cleared retained status)

    def add(self, table: str, row: Row) -> None:
        """One more row for `table`."""
        self.rows.setdefault(table, []).append(row)

    @property
    def count(self) -> int:
        """Rows in all tables."""
        return sum(len(r) for r in self.rows.values())


def rejected_digest(topic: str, payload: bytes) -> bytes:
    """The key of a rejected message: the same message delivered twice is kept once."""
    return hashlib.sha256(topic.encode("utf-8", "surrogatepass") + b"\0" + payload).digest()


def _check_id(value: str) -> str:
    if not _UUID.fullmatch(value):
        raise Rejection(f"id {value[:60]!r} is not a UUID")
    return value


def _time(value: str | None, what: str = "time") -> tuple[str | None, float | None]:
    """The ISO 8601 text for the database and its unix time; Rejection when it is not one."""
    if value is None:
        return None, None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise Rejection(f"{what} {value[:60]!r} is not an ISO 8601 time") from None
    if dt.tzinfo is None:
        raise Rejection(f"{what} {value[:60]!r} has no time zone (expected UTC, ...Z)")
    return value, dt.timestamp()


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), allow_nan=False)


_USED: dict[tuple[tuple[str, int], ...], str] = {}


def _used_json(used: dict[str, int] | None) -> str | None:
    """`used` as JSON text; the few combinations a fleet sends are encoded once each."""
    if used is None:
        return None
    key = tuple(used.items())
    text = _USED.get(key)
    if text is None:
        text = _json(used)
        assert text is not None
        if len(_USED) < 4096:
            _USED[key] = text
    return text


def fix_row(fix: Fix, device: str, received: datetime, source: str, out: Parsed) -> None:
    """Add the row of one fix (a model checked by its schema) to `out`."""
    text, unix = _time(fix.time)
    if unix is not None:
        out.fix_times.append(unix)
    out.add(
        "fixes",
        (
            _check_id(fix.id),
            device,
            text,
            received,
            fix.mode,
            fix.status,
            fix.lat,
            fix.lon,
            fix.altHAE,
            fix.altMSL,
            fix.geoidSep,
            fix.speed,
            fix.track,
            fix.climb,
            fix.magvar,
            fix.eph,
            fix.epv,
            fix.hdop,
            fix.vdop,
            fix.pdop,
            fix.nSat,
            fix.uSat,
            _used_json(fix.used),
            fix.clock,
            source,
        ),
    )


def _fix(data: bytes, device: str, path: str, received: datetime, out: Parsed) -> None:
    fix_row(Fix.model_validate_json(data), device, received, "fix", out)


def _fix_batch(data: bytes, device: str, path: str, received: datetime, out: Parsed) -> None:
    batch = FixBatch.model_validate_json(data)
    for fix in batch.fixes:
        fix_row(fix, device, received, "fix_batch", out)


#: Fix fields a compact batch may carry, in the order of the fixes table's columns from
#: `mode` to `uSat` (the row's 5th to 22nd values).
_FIX_FIELDS = (
    "mode", "status", "lat", "lon", "altHAE", "altMSL", "geoidSep", "speed", "track", "climb",
    "magvar", "eph", "epv", "hdop", "vdop", "pdop", "nSat", "uSat",
)  # fmt: skip
#: Keys of a compact batch's records that the `Fix` model takes as they come (any int, any
#: float); the others are checked by `_plain_fixes`.
_PLAIN_KEYS = frozenset(_FIX_FIELDS) | {"v", "class", "time", "used", "seen", "clock"}
_MODES = frozenset({0, 1, 2, 3})


def _plain_fixes(cols: Columns, device: str, received: datetime, out: Parsed) -> list[int] | None:
    """The rows of a compact batch's fixes built from its columns, with no dict or model a
    record, when every fix is one the `Fix` schema takes as it is (the model's defaults
    filled in the same way); the indexes of its other records (sky views) are returned for
    the record path. None: a fix the schema might refuse or change, or an id that is not a
    UUID: the batch goes the record path, which gives the same rows or the rejection."""
    n: int = cols.count
    values: dict[str, list[Any]] = cols.values
    if not values.keys() <= _PLAIN_KEYS:
        return None
    ids: list[str | None] = cols.ids
    classes = values.get("class") or []
    others = [i for i, c in enumerate(classes) if c == "SKY"]
    if others:
        keep = [i for i, c in enumerate(classes) if c != "SKY"]
        values = {k: [col[i] for i in keep] for k, col in values.items()}
        ids = [ids[i] for i in keep]
        times_ms = [cols.time_ms[i] for i in keep]
        n = len(keep)
    else:
        values = dict(values)
        times_ms = cols.time_ms
    if n == 0:
        return others
    seen = values.get("seen")
    if seen is not None and any(s is not None for s in seen):
        return None  # a fix has no `seen`: the schema refuses it
    if None in ids or not all(_UUID.fullmatch(i) for i in ids):  # type: ignore[arg-type]  # no None
        return None
    modes = values.get("mode")
    if modes is not None:
        if not _MODES.issuperset(modes):
            if not _MODES.issuperset(m for m in modes if m is not None):
                return None
            modes = [1 if m is None else m for m in modes]  # the model's default
        values["mode"] = modes
    times = values.get("time")
    if times is None:
        times = [None] * n
    elif None in times_ms and any(
        t is not None for t, ms in zip(times, times_ms, strict=True) if ms is None
    ):
        return None  # a time that is not canonical text: `_time` decides
    clocks = values.get("clock")
    if clocks is None or None in clocks:
        clocks = ["gnss" if c is None else c for c in clocks or [None] * n]
    used = values.get("used")
    used_json = [None] * n if used is None else [_used_json(u) for u in used]
    none = [None] * n
    fields = [values.get(k) or none for k in _FIX_FIELDS]
    if "mode" not in values:
        fields[0] = [1] * n  # the model's default
    rows = list(
        zip(
            ids,
            itertools.repeat(device, n),
            times,
            itertools.repeat(received, n),
            *fields,
            used_json,
            clocks,
            itertools.repeat("wire", n),
            strict=True,
        )
    )
    out.rows.setdefault("fixes", []).extend(rows)
    out.fix_times.extend(ms / 1000 for ms in times_ms if ms is not None)
    return others


def _wire_batch(data: bytes, device: str, path: str, received: datetime, out: Parsed) -> None:
    # The compact binary format's decoder has no daemon dependencies; loaded on first use.
    from terminal_gw.wire import decode_batch, decode_columns

    cols = decode_columns(data)
    if cols is not None:
        fast = Parsed()
        others = _plain_fixes(cols, device, received, fast)
        if others is not None:
            try:
                for i in others:
                    _wire_sky(_record_of(cols, i), device, received, fast)
            except (ValidationError, Rejection):
                pass  # the record path says which record, in the words it uses
            else:
                for table, rows in fast.rows.items():
                    out.rows.setdefault(table, []).extend(rows)
                out.fix_times.extend(fast.fix_times)
                return
    try:
        items: list[dict[str, Any]] = decode_batch(data)
    except (ParseError, ValueError) as exc:
        raise Rejection(f"not a compact batch: {exc}") from exc
    for i, item in enumerate(items):
        try:
            if item.get("class") == "SKY":
                _wire_sky(item, device, received, out)
            else:
                fix_row(Fix.model_validate(item), device, received, "wire", out)
        except ValidationError as exc:
            raise Rejection(f"item {i} of the batch fails its schema: {_words(exc)}") from exc


def _wire_sky(item: dict[str, Any], device: str, received: datetime, out: Parsed) -> None:
    # A batch carries a sky view as counts per constellation, not the list.
    rest = {k: v for k, v in item.items() if k not in ("seen", "used")}
    counts = _COUNTS.validate_python({k: item.get(k) or {} for k in ("seen", "used")})
    _sky_row(Sky.model_validate(rest), device, received, out, counts=counts)


def _record_of(cols: Columns, i: int) -> dict[str, Any]:
    """Record `i` of a batch's columns as `decode_batch` gives it."""
    rec = {k: col[i] for k, col in cols.values.items() if col[i] is not None}
    ident = cols.ids[i]
    return rec if ident is None else {"id": ident, **rec}


def _sky(data: bytes, device: str, path: str, received: datetime, out: Parsed) -> None:
    _sky_row(Sky.model_validate_json(data), device, received, out)


_COUNTS: TypeAdapter[dict[str, dict[str, int]]] = TypeAdapter(dict[str, dict[str, int]])


def _sky_row(
    sky: Sky,
    device: str,
    received: datetime,
    out: Parsed,
    *,
    counts: dict[str, dict[str, int]] | None = None,
) -> None:
    """A sky view's row: its satellites (absent from a compact batch's summary) and the
    satellites seen and used per constellation (counted here from the list when it came)."""
    text, _ = _time(sky.time)
    sats = [s.model_dump(mode="json", exclude_none=True) for s in sky.satellites]
    if counts is None:
        from terminal_gw.wire import sky_summary

        summary = sky_summary({"satellites": sats})
        counts = {"seen": summary["seen"], "used": summary["used"]}
    out.add(
        "sky_summary",
        (
            _check_id(sky.id),
            device,
            text,
            received,
            sky.nSat,
            sky.uSat,
            sky.hdop,
            sky.vdop,
            sky.pdop,
            sky.clock,
            _json(sats) if sats or not counts["seen"] else None,
            _json(counts["seen"]),
            _json(counts["used"]),
        ),
    )


def _status_of(model: type[Payload]) -> Handler:
    def handle(data: bytes, device: str, path: str, received: datetime, out: Parsed) -> None:
        if not data:
            out.skipped = True  # a retained status cleared with an empty message
            return
        payload = model.model_validate_json(data)
        doc = payload.to_json_dict()
        text, _ = _time(doc.get("time"))
        out.add(
            "device_status",
            (
                device,
                path,
                _check_id(payload.id),
                text,
                received,
                doc["class"],
                doc.get("state"),
                _json(doc),
            ),
        )

    return handle


def _sms_rx(data: bytes, device: str, path: str, received: datetime, out: Parsed) -> None:
    sms = SmsReceived.model_validate_json(data)
    doc = sms.to_json_dict()
    text, _ = _time(sms.time or sms.received)
    out.add(
        "messages",
        (
            _check_id(sms.id),
            device,
            text,
            received,
            "sms",
            "rx",
            doc["class"],
            None,
            sms.sender,
            None,
            sms.text,
            _json(doc),
        ),
    )


def _sms_tx(data: bytes, device: str, path: str, received: datetime, out: Parsed) -> None:
    sms = SmsSendProgress.model_validate_json(data)
    doc = sms.to_json_dict()
    text, _ = _time(sms.time)
    out.add(
        "messages",
        (
            _check_id(sms.id),
            device,
            text,
            received,
            "sms",
            "tx",
            doc["class"],
            sms.sms_id,
            sms.to,
            sms.state,
            None,
            _json(doc),
        ),
    )


def _bds_rx(data: bytes, device: str, path: str, received: datetime, out: Parsed) -> None:
    bds = BdsReceived.model_validate_json(data)
    doc = bds.to_json_dict()
    text, _ = _time(bds.received, "received")
    out.add(
        "messages",
        (_check_id(bds.id), device, text, received, "bds", "rx", doc["class"], None, bds.sender,
         None, bds.text, _json(doc)),
    )  # fmt: skip


def _bds_tx(data: bytes, device: str, path: str, received: datetime, out: Parsed) -> None:
    bds = BdsSendProgress.model_validate_json(data)
    doc = bds.to_json_dict()
    text, _ = _time(bds.time)
    out.add(
        "messages",
        (_check_id(bds.id), device, text, received, "bds", "tx", doc["class"], bds.bds_id, bds.to,
         bds.state, None, _json(doc)),
    )  # fmt: skip


def _event(data: bytes, device: str, path: str, received: datetime, out: Parsed) -> None:
    event = Event.model_validate_json(data)
    text, _ = _time(event.time)
    out.add(
        "events",
        (
            _check_id(event.id),
            device,
            text,
            received,
            event.kind,
            event.severity,
            event.message,
            _json(event.data),
            event.clock,
        ),
    )


def _cmd_result(data: bytes, device: str, path: str, received: datetime, out: Parsed) -> None:
    result = CommandResult.model_validate_json(data)
    text, _ = _time(result.time)
    out.add(
        "command_results",
        (
            _check_id(result.id),
            device,
            text,
            received,
            result.command,
            result.command_id,
            result.ok,
            result.code,
            result.reason,
            _json(result.result),
        ),
    )


def _skip(data: bytes, device: str, path: str, received: datetime, out: Parsed) -> None:
    out.skipped = True


Handler = Callable[[bytes, str, str, datetime, Parsed], None]


@dataclass(frozen=True, slots=True)
class Route:
    """What a topic path holds: the payload classes allowed there (None: any) and its handler."""

    classes: frozenset[str] | None
    handle: Handler
    binary: bool = False  # not JSON: the class check does not apply


def _classes(*names: str) -> frozenset[str]:
    return frozenset(names)


#: Topic path below `{prefix}/{device}/` -> route. `{id}` and `{name}` match one level.
ROUTES: dict[str, Route] = {
    "gnss/fix": Route(_classes("TPV"), _fix),
    "gnss/fix/batch": Route(_classes("TPV_BATCH"), _fix_batch),
    "gnss/batch": Route(None, _wire_batch, binary=True),
    "gnss/sky": Route(_classes("SKY"), _sky),
    "status": Route(_classes("STATUS"), _status_of(Status)),
    "modem/status": Route(_classes("MODEM"), _status_of(ModemStatus)),
    "rdss/status": Route(_classes("RDSS"), _status_of(RdssStatus)),
    "sms/rx": Route(_classes("SMS"), _sms_rx),
    "sms/tx/{id}": Route(_classes("SMS_TX"), _sms_tx),
    "bds/rx": Route(_classes("BDS_RX"), _bds_rx),
    "bds/tx/{id}": Route(_classes("BDS_TX"), _bds_tx),
    "event": Route(_classes("EVENT"), _event),
    "cmd-result/{name}": Route(_classes("CMD_RESULT"), _cmd_result),
}

#: Topic paths ingest reads past without storing: the downlink commands to devices.
SKIPPED_FIRST_LEVEL = frozenset({"cmd"})


def route_for(path: str) -> Route | None:
    """The route of a topic path below the device, or None when nothing is stored there."""
    route = ROUTES.get(path)
    if route is not None:
        return route
    head, sep, tail = path.rpartition("/")
    if sep and tail:
        return ROUTES.get(head + "/{id}") or ROUTES.get(head + "/{name}")
    return None


_CLASS = re.compile(rb'"class"\s*:\s*"([^"\\]{1,64})"')


def _words(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "payload"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def parse_message(prefix: str, topic: str, payload: bytes, received: datetime) -> Parsed:
    """The rows one message stores (or `skipped`); Rejection with the reason when it cannot."""
    levels = topic.split("/", 2 + prefix.count("/"))
    prefix_levels = prefix.count("/") + 1
    if len(levels) < prefix_levels + 2 or "/".join(levels[:prefix_levels]) != prefix:
        raise Rejection(f"topic is not {prefix}/{{device}}/...")
    device = levels[prefix_levels]
    path = levels[prefix_levels + 1]
    out = Parsed()
    if not device:
        raise Rejection("topic has an empty device level")
    if path.split("/", 1)[0] in SKIPPED_FIRST_LEVEL:
        out.skipped = True
        return out
    route = route_for(path)
    if route is None:
        raise Rejection(f"unknown topic {path!r} below the device")
    if not route.binary and payload:
        if payload[:1] != b"{":
            try:
                json.loads(payload)
            except (ValueError, UnicodeDecodeError):
                raise Rejection("not valid JSON") from None
            raise Rejection("the payload is not a JSON object")
        if route.classes is not None:
            m = _CLASS.search(payload)
            found = m.group(1).decode("utf-8", "replace") if m else None
            if found is not None and found not in route.classes:
                expected = ", ".join(sorted(route.classes))
                raise Rejection(f"unknown class {found!r} on {path} (expected {expected})")
    try:
        route.handle(payload, device, path, received, out)
    except ValidationError as exc:
        if any(err["type"] == "json_invalid" for err in exc.errors()):
            raise Rejection("not valid JSON") from None
        raise Rejection(f"fails the schema: {_words(exc)}") from None
    return out


def tables_of(parsed: Iterable[Parsed]) -> dict[str, list[Row]]:
    """The rows of several messages merged by table."""
    merged: dict[str, list[Row]] = {}
    for p in parsed:
        for table, rows in p.rows.items():
            merged.setdefault(table, []).extend(rows)
    return merged
