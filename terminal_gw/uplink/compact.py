"""The compact encoding of a link profile: fixes and sky summaries as wire batches.

On a link whose profile says `encoding = "compact"`, the drain groups fix and sky records
into batches of the compact format (`terminal_gw.wire`, docs/wire-format.md), one MQTT message
on `{prefix}/{device}/gnss/batch` with the MQTT 5 content type
`application/vnd.terminal-gw.batch.v1`. A batch holds up to `batch_max_records` records and
waits at most `batch_max_age_s` for more after its oldest record was stored (a backlog goes at
once, in full batches). Every other class goes as JSON, one record a message, as on any link.

Ids: a fix or sky with a GNSS time carries the id derived from its device and time
(`derive_id`, given in the daemon's GNSS stage), which a batch carries in no bytes at all.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from terminal_gw import wire
from terminal_gw.models import Fix, Payload, Sky

__all__ = [
    "BATCH_CLASSES",
    "DEFAULT_MAX_AGE_S",
    "DEFAULT_MAX_RECORDS",
    "STATUS_REFRESH_S",
    "CompactPlan",
    "Stored",
    "compact_health",
    "compact_status",
    "derive_id",
    "plan_compact",
    "status_key",
]

#: Defaults of a compact profile that leaves batch_max_records / batch_max_age_s unset.
DEFAULT_MAX_RECORDS = 600
DEFAULT_MAX_AGE_S = 60.0
#: The outbox classes a compact batch carries.
BATCH_CLASSES = frozenset({"fix", "sky"})


@functools.lru_cache(maxsize=16)  # an epoch's fix and sky carry the same time
def _time_ms(text: str) -> int | None:
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        return None
    return round(t.timestamp() * 1000)


def derive_id(payload: Payload, device: str) -> Payload:
    """A fix or sky with a GNSS time, with the id derived from `device` and that time (the
    same epoch always gives the same id); anything else unchanged (a random UUIDv7)."""
    if not isinstance(payload, Fix | Sky) or payload.time is None or payload.clock != "gnss":
        return payload
    ms = _time_ms(payload.time)
    if ms is None or not 0 <= ms < 1 << 48:
        return payload
    cls = "TPV" if isinstance(payload, Fix) else "SKY"
    return payload.model_copy(update={"id": wire.derived_id(device, cls, ms)})


class Record(Protocol):
    """What the uplink and its planners read of an outbox record (`terminal_gw.outbox.Record`)."""

    @property
    def seq(self) -> int: ...
    @property
    def cls(self) -> str: ...
    @property
    def topic(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def created(self) -> float: ...
    @property
    def retain(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Stored:
    """An outbox record with another payload (a status made small)."""

    seq: int
    cls: str
    topic: str
    payload: bytes
    created: float
    retain: bool = False


class CompactPlan:
    """The messages for one outbox read, and when a batch held back for more is due."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, bool, tuple[int, ...], bool]] = []
        self.due: float | None = None  # unix time the held batch must go by
        self.held = 0  # records held back for a fuller batch
        self.unencodable = 0  # records sent as JSON because the batch could not carry them


def _entry(rec: Record) -> dict[str, Any] | None:
    try:
        data = json.loads(rec.payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    if rec.cls == "sky":
        return wire.sky_summary(data)
    return data


def plan_compact(
    records: Iterable[Record],
    *,
    now: float,
    device: str,
    topic: str,
    batch_max: int = DEFAULT_MAX_RECORDS,
    max_age_s: float = DEFAULT_MAX_AGE_S,
    hold_tail: bool = False,
) -> CompactPlan:
    """Records in drain order as messages: runs of fix and sky records as compact batches on
    `topic` (each at most `batch_max`), every other record alone as it is.

    The trailing run is held back (not in the plan; `due` says until when) while it is not
    full and its oldest record is younger than `max_age_s`, or, with `hold_tail` (the read was
    full: more records wait), while it is not full and other messages go. Runs never reach
    across another record, so each class keeps the outbox's order."""
    plan = CompactPlan()
    run: list[Record] = []
    entries: list[dict[str, Any]] = []

    def single(r: Record) -> None:
        plan.messages.append((r.topic, r.payload, r.retain, (r.seq,), False))

    def flush() -> None:
        if not run:
            return
        try:
            payload = wire.encode_batch(entries, device)
        except wire.WireError:
            # A value the format cannot carry: these go as JSON, never lost.
            plan.unencodable += len(run)
            for r in run:
                single(r)
        else:
            plan.messages.append((topic, payload, False, tuple(r.seq for r in run), True))
        run.clear()
        entries.clear()

    for r in records:
        entry = _entry(r) if r.cls in BATCH_CLASSES and not r.retain else None
        if entry is None:
            flush()
            single(r)
            continue
        if len(run) >= batch_max:
            flush()
        run.append(r)
        entries.append(entry)
    if run and len(run) < batch_max:
        young = now - run[0].created < max_age_s
        if young or (hold_tail and plan.messages):
            plan.held = len(run)
            plan.due = run[0].created + max_age_s if young else None
            run.clear()
            entries.clear()
    flush()
    return plan


# --- the status on a compact link -----------------------------------------------------------

#: A compact status equal to the last one sent (its volatile figures aside) is sent again
#: only after this long.
STATUS_REFRESH_S = 3600.0
_VOLATILE = ("outbox_depth", "uptime_s", "last_fix_age_s")


def compact_health(health: dict[str, Any], profile: str) -> dict[str, Any]:
    """The few health figures a status on a metered link carries instead of the whole board:
    healthy, the problems (when any), uptime, outbox depth, last fix mode and age, the link
    profile. About 150 B of JSON instead of about 1.8 KB."""
    gauges = health.get("gauges")
    gauges = gauges if isinstance(gauges, dict) else {}
    out: dict[str, Any] = {"compact": True, "profile": profile}
    for key in ("healthy", "uptime_s"):
        if key in health:
            out[key] = health[key]
    if health.get("problems"):
        out["problems"] = health["problems"]
    for key in ("outbox_depth", "last_fix_mode", "last_fix_age_s"):
        if gauges.get(key) is not None:
            out[key] = gauges[key]
    return out


def compact_status(payload: bytes, profile: str) -> bytes | None:
    """A stored status payload with its health reduced (`compact_health`); None when it is
    not a status object (it then goes as it is)."""
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("class") != "STATUS":
        return None
    health = data.get("health")
    if isinstance(health, dict) and not health.get("compact"):
        data["health"] = compact_health(health, profile)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def status_key(payload: bytes) -> str:
    """What tells two compact statuses apart: the state and health without id, time and the
    figures that change all the time."""
    data = json.loads(payload)
    health = dict(data.get("health") or {})
    for key in _VOLATILE:
        health.pop(key, None)
    return json.dumps([data.get("state"), health], sort_keys=True)
