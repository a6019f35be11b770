"""A full outbox: positions thinned then dropped, messages never pushed out and refused only
when even they cannot fit; every loss counted in aggregated events. Age limits."""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from terminal_gw.config import OutboxConfig
from terminal_gw.errors import OutboxFullError
from terminal_gw.models import Event, Fix, Payload, Sky, make_event
from terminal_gw.outbox import Outbox, codec, id_from_db, pressure, record_size, store
from tests.outbox_child import CommandResult, Sms
from tests.test_outbox import Clock


def config(tmp_path: Path, **kw: Any) -> OutboxConfig:
    return OutboxConfig(path=tmp_path / "outbox.db", **kw)


def as_stored(max_bytes: int, sample: Payload, topic: str) -> int:
    """A limit that holds as many records like `sample` as `max_bytes` held with schema 1
    (payloads stored as JSON text, counted with 64 bytes a row and the id's 36)."""
    data = sample.to_json().encode()
    stored = codec.encode(sample.record_class, data)
    schema_1 = len(data) + len(topic) + len(sample.id) + 64
    return max_bytes * record_size(topic, stored, sample.id) // schema_1


def rows(path: Path, cls: str) -> list[tuple[str, float]]:
    conn = sqlite3.connect(str(path))
    try:
        return [
            (id_from_db(r[0]), r[1])
            for r in conn.execute(
                "SELECT id, created FROM outbox WHERE cls = ? ORDER BY created", (cls,)
            )
        ]
    finally:
        conn.close()


def evicted_counts(events: list[Event]) -> Counter[tuple[str, str]]:
    total: Counter[tuple[str, str]] = Counter()
    for e in events:
        if e.kind == "evicted":
            for cls, reasons in e.data["counts"].items():
                for reason, n in reasons.items():
                    total[(cls, reason)] += n
    return total


async def test_positions_are_thinned_oldest_first(tmp_path: Path) -> None:
    clock = Clock()
    events: list[Event] = []
    limit = as_stored(250_000, Fix(mode=3, lat=1.0, lon=2.0), "tgw/d/gnss/fix")
    cfg = config(tmp_path, max_bytes=limit, event_interval_s=3600)
    start = clock.now
    async with Outbox(cfg, clock=clock, events=events.append) as outbox:
        for i in range(3000):  # one fix every 10 s for 8 1/3 hours: far more than fits
            clock.now = start + 10 * i
            await outbox.put("tgw/d/gnss/fix", Fix(mode=3, lat=1.0, lon=2.0))
        await outbox.flush()
        stats = await outbox.stats()
        assert stats["fix"].bytes <= cfg.max_bytes
        kept = rows(cfg.path, "fix")
    now = clock.now
    # The last 10 minutes are untouched: one fix every 10 s.
    recent = [c for _, c in kept if c > now - 600]
    assert len(recent) == 60
    # Older ones were thinned, the oldest most: fixes kept per hour fall with age.
    per_hour = Counter(int((now - c) // 3600) for _, c in kept)
    density = [per_hour[h] for h in range(9)]
    assert density[0] == 360  # the last hour is whole
    assert density == sorted(density, reverse=True)
    assert density[8] < density[2] < 360
    assert kept[0][1] == start  # thinned, not dropped: the track still reaches back
    counts = evicted_counts(events)
    assert counts[("fix", "thinned")] == 3000 - len(kept)
    # Aggregated: the first eviction is reported at once, the rest together at close.
    assert 1 <= sum(e.kind == "evicted" for e in events) <= 2


@pytest.mark.parametrize("span", [2000, 300])
async def test_two_weeks_of_fixes_keep_one_per_growing_interval(
    tmp_path: Path, span: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Thinning works in spans of rows; small spans cut across many intervals.
    monkeypatch.setattr(pressure, "THIN_SPAN", span)
    # Payloads stored as JSON text, so that every record counts the same bytes: where the
    # limit falls between rounds of thinning decides how far the last round got (with
    # schema 1's sizes 240,000 or 260,000 left a day-old stretch thinned at 5 min only).
    monkeypatch.setattr(codec, "encode", lambda cls, payload: payload)
    clock = Clock()
    fix = Fix(mode=3, lat=1.0, lon=2.0)
    limit = (
        250_000
        * record_size("tgw/d/gnss/fix", fix.to_json().encode(), fix.id)
        // (len(fix.to_json()) + len("tgw/d/gnss/fix") + len(fix.id) + 64)
    )  # as many records as 250,000 bytes held with schema 1's sizes
    cfg = config(tmp_path, max_bytes=limit, event_interval_s=3600)
    start = clock.now
    async with Outbox(cfg, clock=clock, events=lambda e: None) as outbox:
        for i in range(20_000):  # one fix a minute for two weeks
            clock.now = start + 60 * i
            await outbox.put("tgw/d/gnss/fix", Fix(mode=3, lat=1.0, lon=2.0))
    now = clock.now
    kept = [c for _, c in rows(cfg.path, "fix")]

    def most_per_bucket(newest: float, oldest: float, interval: float) -> int:
        span = [c for c in kept if now - oldest <= c < now - newest]
        assert span
        return max(Counter(int(c // interval) for c in span).values())

    assert most_per_bucket(0, 5 * 3600, 60) == 1  # recent hours whole: every fix
    assert len([c for c in kept if c > now - 5 * 3600]) == 5 * 60
    assert most_per_bucket(25 * 3600, 6 * 86400, 1800) == 1  # a day to a week: one per 30 min
    assert most_per_bucket(7 * 86400 + 3600, 30 * 86400, 3 * 3600) == 1  # older: one per 3 h
    assert kept[0] == start


async def test_positions_are_dropped_oldest_first_when_thinning_is_not_enough(
    tmp_path: Path,
) -> None:
    clock = Clock()
    events: list[Event] = []
    limit = as_stored(50_000, Fix(mode=3, lat=1.0, lon=2.0), "f")
    cfg = config(tmp_path, max_bytes=limit, event_interval_s=0)
    async with Outbox(cfg, clock=clock, events=events.append) as outbox:
        ids = []
        for _ in range(1000):  # all within one second: nothing to thin
            f = Fix(mode=3, lat=1.0, lon=2.0)
            await outbox.put("f", f)
            ids.append(f.id)
            clock.now += 0.001
        await outbox.flush()
        kept = [i for i, _ in rows(cfg.path, "fix")]
        assert kept == ids[-len(kept) :]  # the newest survive
        assert 100 < len(kept) < 300
        assert evicted_counts(events)[("fix", "dropped")] == 1000 - len(kept)


async def test_sky_goes_before_fix_and_sky_never_pushes_out_fixes(tmp_path: Path) -> None:
    clock = Clock()
    events: list[Event] = []
    limit = as_stored(40_000, Fix(mode=3, lat=1.0, lon=2.0), "f")
    cfg = config(tmp_path, max_bytes=limit, event_interval_s=0)
    async with Outbox(cfg, clock=clock, events=events.append) as outbox:
        for _ in range(60):
            await outbox.put("s", Sky())
            clock.now += 0.001
        for _ in range(150):
            await outbox.put("f", Fix(mode=3, lat=1.0, lon=2.0))
            clock.now += 0.001
        await outbox.flush()
        stats = await outbox.stats()
        assert "sky" not in stats or stats["sky"].count < 60  # sky went first
        fixes = stats["fix"].count
        for _ in range(200):
            await outbox.put("s", Sky())
        await outbox.flush()
        # New sky records replace old ones; they never push out a fix.
        assert (await outbox.stats())["fix"].count == fixes
        assert evicted_counts(events)[("sky", "dropped")] >= 200


async def test_messages_are_never_pushed_out_and_refused_when_they_cannot_fit(
    tmp_path: Path,
) -> None:
    clock = Clock()
    events: list[Event] = []
    limit = as_stored(60_000, Sms(text="sms 0 " + "x" * 200), "sms")
    cfg = config(tmp_path, max_bytes=limit, event_interval_s=0)
    async with Outbox(cfg, clock=clock, events=events.append) as outbox:
        accepted: list[str] = []
        for i in range(50):
            sms = Sms(text=f"sms {i} " + "x" * 200)
            await outbox.put("sms", sms)
            accepted.append(sms.id)
        # Positions fill the rest and push each other out, never a message.
        for _ in range(2000):
            await outbox.put("f", Fix(mode=3, lat=1.0, lon=2.0))
            clock.now += 1
        await outbox.put("e", make_event("antenna", "open", now=clock.now))
        await outbox.flush()
        assert [i for i, _ in rows(cfg.path, "sms")] == accepted
        # Messages and command results push positions and events out, then are refused.
        refused = 0
        for i in range(400):
            msg = Sms(text=f"more {i} " + "y" * 200) if i % 2 else CommandResult()
            try:
                await outbox.put("m", msg)
            except OutboxFullError:
                refused += 1
                continue
            accepted.append(msg.id)
        assert refused > 0
        stored = {i for i, _ in rows(cfg.path, "sms")} | {i for i, _ in rows(cfg.path, "command")}
        assert stored == set(accepted)  # every accepted message is there, none pushed out
        assert rows(cfg.path, "fix") == []
        assert rows(cfg.path, "event") == []
        full = [e for e in events if e.kind == "outbox_full"]
        assert full
        assert sum(sum(e.data["refused"].values()) for e in full) == refused
        assert full[0].severity == "error"
        # A position that cannot fit now is dropped and counted, not raised.
        await outbox.put("f", Fix(mode=3, lat=1.0, lon=2.0))
        await outbox.flush()
        assert evicted_counts(events)[("fix", "full")] >= 1
        assert (await outbox.stats())["sms"].bytes + (await outbox.stats())[
            "command"
        ].bytes <= cfg.max_bytes


async def test_every_loss_is_counted(tmp_path: Path) -> None:
    """Accepted = stored + reported as evicted, for each class."""
    clock = Clock()
    events: list[Event] = []
    cfg = config(tmp_path, max_bytes=30_000, event_interval_s=5)
    put: Counter[str] = Counter()
    async with Outbox(cfg, clock=clock, events=events.append) as outbox:
        for i in range(3000):
            clock.now += 1
            p: Fix | Sky | Event
            if i % 7 == 0:
                p = Sky()
            elif i % 11 == 0:
                p = make_event("clock_skew", "skew", now=clock.now)
            else:
                p = Fix(mode=3, lat=1.0, lon=2.0)
            await outbox.put("x", p)
            put[p.record_class] += 1
    lost = evicted_counts(events)
    for cls in ("fix", "sky", "event"):
        left = len(rows(cfg.path, cls))
        gone = sum(n for (c, _), n in lost.items() if c == cls)
        assert left + gone == put[cls], cls
    assert len([e for e in events if e.kind == "evicted"]) < 3000 / 5 + 2


async def test_age_limits_per_class(tmp_path: Path) -> None:
    clock = Clock()
    events: list[Event] = []
    cfg = config(tmp_path, max_age_s={"fix": 3600, "event": 60}, event_interval_s=0)
    async with Outbox(cfg, clock=clock, events=events.append) as outbox:
        old_fix = Fix(mode=3, lat=1.0, lon=2.0)
        await outbox.put("f", old_fix)
        await outbox.put("e", make_event("antenna", "open", now=clock.now))
        await outbox.put("s", Sms(text="never expires"))
        clock.now += 1800
        mid_fix = Fix(mode=3, lat=1.0, lon=2.0)
        await outbox.put("f", mid_fix)
        clock.now += 1801
        await outbox.flush()
        await outbox.expire()
        assert [i for i, _ in rows(cfg.path, "fix")] == [mid_fix.id]
        assert rows(cfg.path, "event") == []
        assert len(rows(cfg.path, "sms")) == 1
        assert evicted_counts(events) == Counter({("fix", "age"): 1, ("event", "age"): 1})
    # Opening also applies the limits.
    clock.now += 3600
    async with Outbox(cfg, clock=clock, events=events.append) as outbox:
        assert rows(cfg.path, "fix") == []
        assert outbox.depth == 1


@pytest.mark.parametrize("max_bytes", [5_000, 20_000])
async def test_own_events_are_queued_without_a_sink(tmp_path: Path, max_bytes: int) -> None:
    clock = Clock()
    cfg = config(tmp_path, max_bytes=max_bytes, event_interval_s=0)
    async with Outbox(cfg, clock=clock, event_topic="tgw/d/event") as outbox:
        for _ in range(200):
            await outbox.put("f", Fix(mode=3, lat=1.0, lon=2.0))
            clock.now += 1
        await outbox.flush()
        got = [r for r in await outbox.next_batch(500) if r.cls == "event"]
        assert got
        assert all(r.topic == "tgw/d/event" for r in got)
        assert {Event.model_validate_json(r.payload).kind for r in got} == {"evicted"}


async def test_thinning_rolled_back_is_done_again_in_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A make-room transaction that fails after thinning rolls its deletes back; the next one
    must thin those rows again, exactly as on an untouched database."""
    clock = Clock()
    start = clock.now
    cfg = config(tmp_path)
    async with Outbox(cfg, clock=clock) as outbox:
        for i in range(3000):
            clock.now = start + 10 * i
            await outbox.put("tgw/d/gnss/fix", Fix(mode=3, lat=1.0, lon=2.0))
    pristine = tmp_path / "pristine.db"
    pristine.write_bytes(cfg.path.read_bytes())
    need = 10**9  # more than thinning frees: the drop phase runs too

    reference = store._Db(pristine)
    reference.open()
    why_ref, *_ = reference.make_room(need // 10**6, ("fix",), clock.now)
    reference.close()

    db = store._Db(cfg.path)
    db.open()

    def disk_error(seqs: object) -> object:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(db, "_delete", disk_error)
    with pytest.raises(sqlite3.OperationalError):
        db.make_room(need, ("fix",), clock.now)
    monkeypatch.undo()
    assert db.thinned_upto == {}
    why, *_ = db.make_room(need // 10**6, ("fix",), clock.now)
    db.close()
    assert why[("fix", "thinned")] > 0
    assert why == why_ref
