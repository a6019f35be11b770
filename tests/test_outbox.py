"""The outbox: records come back in drain order, sync records are on disk when put returns,
batches are committed in time. (Records handed out before their commit: test_outbox_live.py.)"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from terminal_gw.config import OutboxConfig
from terminal_gw.errors import StoreError
from terminal_gw.models import Event, Fix, Sky, Status, make_event
from terminal_gw.outbox import Outbox, Record, codec, id_from_db, record_size
from tests.outbox_child import Bds, CommandResult, Sms


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = 1_760_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def config(tmp_path: Path, **kw: Any) -> OutboxConfig:
    return OutboxConfig(path=tmp_path / "outbox.db", **kw)


def stored_ids(path: Path) -> list[str]:
    """What another process sees on disk right now (committed rows only)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [id_from_db(r[0]) for r in conn.execute("SELECT id FROM outbox ORDER BY seq")]
    finally:
        conn.close()


def fix(lat: float = 31.2, lon: float = 121.5) -> Fix:
    return Fix(mode=3, lat=lat, lon=lon)


async def drain_all(outbox: Outbox, limit: int = 50) -> list[Record]:
    got: list[Record] = []
    while batch := await outbox.next_batch(limit):
        got += batch
        await outbox.ack_seqs(r.seq for r in batch)
    return got


async def test_records_round_trip_and_ack_removes(tmp_path: Path) -> None:
    async with Outbox(config(tmp_path)) as outbox:
        f = fix()
        await outbox.put("tgw/d/gnss/fix", f)
        await outbox.put(
            "tgw/d/status", Status(time="2026-01-01T00:00:00.000Z", state="online"), retain=True
        )
        await outbox.flush()
        assert outbox.depth == 2
        batch = await outbox.next_batch(10)
        assert [r.cls for r in batch] == ["status", "fix"]
        status, got = batch
        assert status.retain
        assert status.topic == "tgw/d/status"
        assert got.topic == "tgw/d/gnss/fix"
        assert not got.retain
        assert got.id == f.id
        assert json.loads(got.payload) == json.loads(f.to_json())
        await outbox.ack_seqs([got.seq])
        assert outbox.depth == 1
        assert [r.seq for r in await outbox.next_batch(10)] == [status.seq]


async def test_ack_cancelled_mid_delete_still_updates_depth(tmp_path: Path) -> None:
    async with Outbox(config(tmp_path)) as outbox:
        for _ in range(50):
            await outbox.put("tgw/d/gnss/fix", fix())
        await outbox.flush()
        batch = await outbox.next_batch(50)
        ack = asyncio.ensure_future(outbox.ack_seqs([r.seq for r in batch]))
        await asyncio.sleep(0)  # the delete is under way in its thread
        ack.cancel()
        with pytest.raises(asyncio.CancelledError):
            await ack
        for _ in range(100):
            if outbox.depth == 0:
                break
            await asyncio.sleep(0.01)
        assert outbox.depth == 0
        assert not await outbox.wait_for_records(0.05)
    assert stored_ids(tmp_path / "outbox.db") == []


async def test_drain_order_priority_then_fifo(tmp_path: Path) -> None:
    clock = Clock()
    async with Outbox(config(tmp_path, live_window_s=0), clock=clock) as outbox:
        order: list[tuple[str, str]] = []
        kinds = [
            fix,
            Sky,
            lambda: make_event("antenna", "open", now=clock.now),
            lambda: Sms(text="hi"),
            lambda: Status(time="2026-01-01T00:00:00.000Z", state="online"),
            CommandResult,
            lambda: Bds(text="bd"),
        ]
        for i in range(35):
            p = kinds[i % len(kinds)]()
            clock.now += 1
            await outbox.put("t", p, sync=False)
            order.append((p.record_class, p.id))
        await outbox.flush()
        got = await drain_all(outbox, limit=7)
        rank = {"sms": 0, "bds": 0, "command": 0, "event": 1, "status": 1, "fix": 2, "sky": 3}
        expected = sorted(order, key=lambda t: rank[t[0]])  # stable: FIFO within a priority
        assert [(r.cls, r.id) for r in got] == expected


async def test_live_fix_goes_ahead_of_a_week_of_backlog(tmp_path: Path) -> None:
    clock = Clock()
    async with Outbox(config(tmp_path, live_window_s=120), clock=clock) as outbox:
        backlog = []
        clock.now -= 7 * 86400
        for _ in range(300):
            f = fix()
            await outbox.put("fix", f)
            backlog.append(f.id)
            clock.now += 1800
        clock.now = 1_760_000_000.0
        live = fix(10, 10)
        await outbox.put("fix", live)
        await outbox.put("sky", Sky())
        await outbox.put("ev", make_event("antenna", "ok", now=clock.now))
        await outbox.flush()

        first = await outbox.next_batch(5)
        # The event first (priority), then the live fix, then the backlog from its oldest.
        assert [r.cls for r in first] == ["event", "fix", "fix", "fix", "fix"]
        assert first[1].id == live.id
        assert [r.id for r in first[2:]] == backlog[:3]
        await outbox.ack_seqs(r.seq for r in first)

        # The next batch goes on with the backlog FIFO: no creeping newest-first.
        second = await outbox.next_batch(3)
        assert [r.id for r in second] == backlog[3:6]
        await outbox.ack_seqs(r.seq for r in second)

        # A new live fix jumps the queue again.
        clock.now += 1
        newer = fix(11, 11)
        await outbox.put("fix", newer)
        await outbox.flush()
        third = await outbox.next_batch(2)
        assert [r.id for r in third] == [newer.id, backlog[6]]


async def test_in_flight_records_are_skipped(tmp_path: Path) -> None:
    async with Outbox(config(tmp_path, live_window_s=0)) as outbox:
        for _ in range(6):
            await outbox.put("fix", fix())
        await outbox.flush()
        first = await outbox.next_batch(3)
        second = await outbox.next_batch(3, exclude=[r.seq for r in first])
        assert not {r.seq for r in first} & {r.seq for r in second}
        assert len(second) == 3
        assert await outbox.next_batch(3, exclude=[r.seq for r in first + second]) == []


async def test_sync_record_is_on_disk_when_put_returns(tmp_path: Path) -> None:
    cfg = config(tmp_path, commit_interval_s=60, commit_records=10_000)
    async with Outbox(cfg) as outbox:
        f = fix()
        await outbox.put("fix", f)
        assert stored_ids(cfg.path) == []  # batched: not committed yet
        sms = Sms(text="SIM copy is deleted after this returns")
        await outbox.put("sms", sms)
        # The sync record, and everything queued before it, is committed.
        assert stored_ids(cfg.path) == [f.id, sms.id]
        f2 = fix()
        await outbox.put("fix", f2)
        sms2 = Sms(text="opted out")
        await outbox.put("sms", sms2, sync=False)
        assert stored_ids(cfg.path) == [f.id, sms.id]
        await outbox.put("fix", fix(), sync=True)
        assert stored_ids(cfg.path)[2:4] == [f2.id, sms2.id]


async def test_batch_is_committed_after_commit_interval(tmp_path: Path) -> None:
    cfg = config(tmp_path, commit_interval_s=0.2, commit_records=10_000)
    async with Outbox(cfg) as outbox, asyncio.TaskGroup() as tg:
        runner = tg.create_task(outbox.run(), name="outbox")
        f = fix()
        await outbox.put("fix", f)
        assert stored_ids(cfg.path) == []
        await asyncio.sleep(0.6)
        assert stored_ids(cfg.path) == [f.id]
        runner.cancel()


async def test_batch_is_committed_every_commit_records(tmp_path: Path) -> None:
    cfg = config(tmp_path, commit_interval_s=60, commit_records=10)
    async with Outbox(cfg) as outbox:
        ids = []
        for _ in range(25):
            f = fix()
            await outbox.put("fix", f)
            ids.append(f.id)
        assert stored_ids(cfg.path) == ids[:20]
        assert outbox.depth == 25


async def test_batch_is_committed_once_it_holds_commit_bytes(tmp_path: Path) -> None:
    # Batching by size and time together: a batch is written once it holds commit_bytes,
    # well before its time is up, and the commit counter says how many commits that took.
    # A record's counted size (its stored payload's varies by a few bytes with its id).
    f = fix()
    one = record_size("fix", codec.encode("fix", f.to_json().encode()), f.id)
    cfg = config(tmp_path, commit_interval_s=60, commit_records=10_000, commit_bytes=int(9.5 * one))
    async with Outbox(cfg) as outbox:
        ids = []
        for _ in range(25):
            f = fix()
            await outbox.put("fix", f)
            ids.append(f.id)
        assert stored_ids(cfg.path) == ids[:20]
        assert outbox.commits == 2
        assert outbox.depth == 25


async def test_wait_for_records_times_out_when_empty(tmp_path: Path) -> None:
    async with Outbox(config(tmp_path)) as outbox:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert not await outbox.wait_for_records(0.2)
        assert 0.15 < loop.time() - t0 < 1.0


async def test_wait_for_records_wakes_on_a_put(tmp_path: Path) -> None:
    async with Outbox(config(tmp_path)) as outbox, asyncio.TaskGroup() as tg:
        waiter = tg.create_task(outbox.wait_for_records(5.0), name="wait")
        await asyncio.sleep(0.05)
        await outbox.put("sms", Sms(text="x"))
        async with asyncio.timeout(1.0):
            assert await waiter


async def test_reopen_keeps_records_counts_and_order(tmp_path: Path) -> None:
    clock = Clock()
    cfg = config(tmp_path)
    async with Outbox(cfg, clock=clock) as outbox:
        for _ in range(10):
            await outbox.put("fix", fix())
        await outbox.put("sms", Sms(text="x"))
        before = await outbox.stats()
        first = await outbox.next_batch(100)
    clock.now += 60
    async with Outbox(cfg, clock=clock) as outbox:
        assert outbox.depth == 11
        after = await outbox.stats()
        assert {c: (s.count, s.bytes) for c, s in after.items()} == {
            c: (s.count, s.bytes) for c, s in before.items()
        }
        assert after["sms"].oldest_age_s == pytest.approx(60, abs=1)
        assert outbox.oldest_age_s() == pytest.approx(60, abs=1)
        assert [r.seq for r in await outbox.next_batch(100)] == [r.seq for r in first]


async def test_ack_of_an_evicted_record_never_deletes_a_newer_one(tmp_path: Path) -> None:
    async with Outbox(config(tmp_path)) as outbox:
        await outbox.put("fix", fix())
        await outbox.flush()
        (old,) = await outbox.next_batch(1)
        await outbox.ack_seqs([old.seq])  # gone, as if evicted while in flight
        await outbox.put("sms", Sms(text="new"))
        await outbox.ack_seqs([old.seq])  # a late duplicate ack
        (new,) = await outbox.next_batch(1)
        assert new.seq != old.seq
        assert new.cls == "sms"


async def test_stats_per_class(tmp_path: Path) -> None:
    clock = Clock()
    async with Outbox(config(tmp_path), clock=clock) as outbox:
        await outbox.put("f", fix())
        clock.now += 30
        await outbox.put("f", fix())
        await outbox.put("s", Sms(text="x"))
        clock.now += 10
        stats = await outbox.stats()  # pending records count too
        assert set(stats) == {"fix", "sms"}
        assert stats["fix"].count == 2
        assert stats["fix"].oldest_age_s == pytest.approx(40)
        assert stats["sms"].oldest_age_s == pytest.approx(10)
        assert stats["fix"].bytes > 2 * len(fix().to_json())


async def test_put_before_open_and_unknown_class_are_errors(tmp_path: Path) -> None:
    outbox = Outbox(config(tmp_path))
    with pytest.raises(StoreError):
        await outbox.put("f", fix())

    class Odd(Event):
        record_class = "weird"

    async with outbox:
        with pytest.raises(StoreError, match="unknown record class"):
            await outbox.put("x", Odd(time="t", kind="k", message="m"))


async def test_a_put_cancelled_during_the_commit_it_triggered_is_counted_and_stored(
    tmp_path: Path,
) -> None:
    """A shutdown that cancels a producer while the commit its record triggered runs: the
    record is in, it is committed at close, and the daemon's count of records accepted (the
    health report's "records in") includes it."""
    from collections import Counter

    from terminal_gw.daemon import CountingSink

    counts: Counter[str] = Counter()
    async with Outbox(config(tmp_path, commit_records=1)) as outbox:
        sink = CountingSink(outbox, counts)
        record = fix()
        task = asyncio.create_task(sink.put("tgw/dev1/gnss/fix", record))
        while not outbox.took(record.id):
            await asyncio.sleep(0)
        assert not task.done()  # suspended in the commit its record triggered
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert counts["fix"] == 1
    assert stored_ids(tmp_path / "outbox.db") == [record.id]
