"""Records handed out before their commit (the live path): published at once, never written
when their ack comes before the commit, removed on their ack when committed while in flight,
never handed out twice meanwhile, in order within a class; also while the disk refuses writes."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from terminal_gw.config import OutboxConfig
from terminal_gw.errors import StoreError
from terminal_gw.models import Event, Payload, Sky, Status, make_event
from terminal_gw.outbox import CLASS_PRIORITY, Outbox
from terminal_gw.uplink import LinkState, Uplink
from tests.broker import Broker
from tests.outbox_child import Bds, CommandResult, Sms
from tests.test_outbox import config, fix, stored_ids
from tests.test_outbox_disk import fill, small_disk  # noqa: F401 - small_disk is a fixture
from tests.uplink_support import make_config, running, subscriber, topic_of, wait_until


def disk_marks(path: Path) -> tuple[int, ...]:
    """Modification times of the database and its WAL: they move with any write."""
    files = [path, path.with_name(path.name + "-wal")]
    return tuple(f.stat().st_mtime_ns if f.exists() else 0 for f in files)


async def test_a_record_acked_before_its_commit_is_never_written(tmp_path: Path) -> None:
    cfg = config(tmp_path, commit_interval_s=60, commit_records=10_000, live_window_s=0)
    async with Outbox(cfg) as outbox:
        f = fix()
        await outbox.put("fix", f)
        (got,) = await outbox.next_batch(10)
        assert got.id == f.id
        assert got.seq < 0  # not committed: a temporary seq
        assert stored_ids(cfg.path) == []
        await outbox.ack_seqs([got.seq])
        assert outbox.depth == 0
        await outbox.flush()
        assert await outbox.next_batch(10) == []
        assert outbox.delivered_unwritten == 1
    assert stored_ids(cfg.path) == []


async def test_acks_that_land_during_a_commit_do_not_commit_the_next_batch_early(
    tmp_path: Path,
) -> None:
    # A record delivered while its commit runs is deleted by the next round of duties; the
    # records put since then wait for their own commit time (60 s here), not for that delete.
    cfg = config(tmp_path, commit_interval_s=60, commit_records=10_000, live_window_s=0)
    async with Outbox(cfg) as outbox, asyncio.TaskGroup() as tg:
        a = fix(lat=1.0)
        await outbox.put("fix", a)
        (leased,) = await outbox.lease(1)
        commit = asyncio.create_task(outbox.flush())
        await asyncio.sleep(0)  # the commit is under way in its thread
        await outbox.ack([leased])  # delivered meanwhile: its row goes once it is written
        b = fix(lat=2.0)
        await outbox.put("fix", b)
        await commit
        assert stored_ids(cfg.path) == [a.id]
        duties = tg.create_task(outbox.run(), name="outbox")
        await wait_until(lambda: stored_ids(cfg.path) == [], within=10)
        assert outbox.commits == 1  # b is still waiting in memory
        assert outbox.depth == 1
        duties.cancel()
    assert stored_ids(cfg.path) == [b.id]  # the close commits it


async def test_a_live_stream_kept_up_with_writes_nothing(tmp_path: Path) -> None:
    # A commit a second (the default is 30 s: this runs past one) and the outbox's timer
    # running, as in the daemon: records acked within a few milliseconds never reach the disk.
    cfg = config(tmp_path, live_window_s=0, commit_interval_s=1.0)
    async with Outbox(cfg) as outbox, asyncio.TaskGroup() as tg:
        duties = tg.create_task(outbox.run(), name="outbox")
        await asyncio.sleep(0.1)
        before = disk_marks(cfg.path)
        for i in range(60):
            await outbox.put("fix", fix(lat=i / 100))
            await outbox.put("sky", Sky())
            batch = await outbox.next_batch(16)
            assert [r.cls for r in batch] == ["fix", "sky"]
            await outbox.ack_seqs(r.seq for r in batch)
            await asyncio.sleep(0.02)  # 50 Hz for 1.2 s: past a commit interval
        await asyncio.sleep(1.1)
        assert disk_marks(cfg.path) == before
        assert outbox.depth == 0
        assert outbox.delivered_unwritten == 120
        duties.cancel()
    assert stored_ids(cfg.path) == []


async def test_a_record_committed_while_in_flight_is_removed_by_its_ack(tmp_path: Path) -> None:
    cfg = config(tmp_path, commit_interval_s=60, commit_records=10_000, live_window_s=0)
    async with Outbox(cfg) as outbox:
        sent = [fix(lat=i) for i in range(3)]
        for f in sent:
            await outbox.put("fix", f)
        first = await outbox.next_batch(10)
        assert all(r.seq < 0 for r in first)
        await outbox.flush()  # the batch timer fires while they are in flight
        ids = [f.id for f in sent]
        assert stored_ids(cfg.path) == ids
        # Still in flight under their temporary seqs: their rows are not handed out again.
        assert await outbox.next_batch(10, exclude=[r.seq for r in first]) == []
        # A new connection (nothing in flight) sends them again, from their rows.
        again = await outbox.next_batch(10)
        assert [r.id for r in again] == ids
        assert all(r.seq > 0 for r in again)
        # The acks of the first sending remove the rows.
        await outbox.ack_seqs(r.seq for r in first)
        assert stored_ids(cfg.path) == []
        assert outbox.depth == 0
        assert await outbox.next_batch(10) == []
        assert outbox.delivered_unwritten == 0


async def test_an_ack_landing_during_the_commit_still_removes_the_record(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path, commit_interval_s=60, commit_records=10_000, live_window_s=0)
    async with Outbox(cfg) as outbox:
        f = fix()
        await outbox.put("fix", f)
        (got,) = await outbox.next_batch(10)
        # Hold the database so that the commit is under way when the ack comes.
        db_lock = outbox._db.lock
        db_lock.acquire()
        try:
            async with asyncio.TaskGroup() as tg:
                commit = tg.create_task(outbox.flush(), name="commit")
                await asyncio.sleep(0.1)
                assert not commit.done()
                await outbox.ack_seqs([got.seq])
                db_lock.release()
        finally:
            if db_lock.locked():
                db_lock.release()
        assert stored_ids(cfg.path) == [f.id]  # written: the ack came too late to spare it
        assert await outbox.next_batch(10) == []  # but it is not sent again
        assert outbox.depth == 0
        await outbox.flush()  # the next write removes it
        assert stored_ids(cfg.path) == []


async def test_a_row_being_deleted_by_its_ack_is_not_handed_out_again(tmp_path: Path) -> None:
    # The ack of a record committed while in flight maps its temporary seq to its row and
    # deletes the row in a thread. A read while that delete is under way must not hand the
    # row out again: the uplink still counts it in flight, under its temporary seq only.
    cfg = config(tmp_path, commit_interval_s=60, commit_records=10_000, live_window_s=0)
    async with Outbox(cfg) as outbox:
        sent = [fix(lat=i) for i in range(3)]
        for f in sent:
            await outbox.put("fix", f)
        first = await outbox.next_batch(10)
        await outbox.flush()  # committed while in flight
        in_flight = [r.seq for r in first]
        # The delete's thread is slow to reach the database (a busy SD card, a busy core).
        go = threading.Event()
        real_ack = outbox._db.ack

        def slow_ack(seqs: Any) -> Any:
            go.wait(10)
            return real_ack(seqs)

        outbox._db.ack = slow_ack  # type: ignore[method-assign]
        try:
            async with asyncio.TaskGroup() as tg:
                acking = tg.create_task(outbox.ack_seqs(in_flight), name="ack")
                # One step: the ack has handed its delete to a task that has not run yet.
                await asyncio.sleep(0)
                again = await outbox.next_batch(10, exclude=in_flight)
                assert not acking.done()
                go.set()
        finally:
            go.set()
        assert again == []
        assert outbox.depth == 0
        assert await outbox.next_batch(10) == []
    assert stored_ids(cfg.path) == []


async def test_drain_order_holds_across_committed_and_pending_records(tmp_path: Path) -> None:
    cfg = config(tmp_path, commit_interval_s=60, commit_records=10_000, live_window_s=0)
    async with Outbox(cfg) as outbox:
        order: list[tuple[str, str]] = []

        async def put(p: Payload) -> None:
            await outbox.put("t", p)
            order.append((p.record_class, p.id))

        for i in range(4):
            await put(fix(lat=i))
        await put(make_event("test", "one", now=0))
        await put(Sms(text="committed with everything before it"))  # sync
        for i in range(4, 8):
            await put(fix(lat=i))
        await put(make_event("test", "two", now=0))
        await put(Status(time="2026-01-01T00:00:00.000Z", state="online"))
        expected = sorted(order, key=lambda t: CLASS_PRIORITY[t[0]])  # stable: FIFO in a level
        assert [(r.cls, r.id) for r in await outbox.next_batch(100)] == expected

        # Drained in small reads with records in flight and a commit half way: each record
        # once, in the same order.
        got: list[tuple[str, str]] = []
        in_flight: list[int] = []
        for step in range(10):
            batch = await outbox.next_batch(3, exclude=in_flight)
            got += [(r.cls, r.id) for r in batch]
            in_flight += [r.seq for r in batch]
            if step == 1:
                await outbox.flush()
            if step % 2:
                await outbox.ack_seqs(in_flight[:2])
                del in_flight[:2]
        assert got == expected
        await outbox.ack_seqs(in_flight)
        assert outbox.depth == 0
        await outbox.flush()
    assert stored_ids(cfg.path) == []


async def test_live_pending_fix_goes_ahead_of_the_backlog_once(tmp_path: Path) -> None:
    cfg = config(tmp_path, commit_interval_s=60, commit_records=10_000, live_window_s=60)
    async with Outbox(cfg) as outbox:
        backlog = [fix(lat=i) for i in range(5)]
        for f in backlog:
            await outbox.put("fix", f)
        await outbox.flush()
        live = fix(lat=50)
        await outbox.put("fix", live)
        first = await outbox.next_batch(2)
        assert [r.id for r in first] == [live.id, backlog[0].id]
        assert first[0].seq < 0
        await outbox.flush()  # the live fix is committed while in flight
        # It does not go ahead again, nor come twice; the backlog goes on in order.
        rest = await outbox.next_batch(10, exclude=[r.seq for r in first])
        assert [r.id for r in rest] == [f.id for f in backlog[1:]]


async def test_wait_for_records_wakes_at_once_on_a_batched_put(tmp_path: Path) -> None:
    cfg = config(tmp_path, commit_interval_s=60, commit_records=10_000)
    async with Outbox(cfg) as outbox, asyncio.TaskGroup() as tg:
        waiter = tg.create_task(outbox.wait_for_records(5.0), name="wait")
        await asyncio.sleep(0.05)
        await outbox.put("fix", fix())
        async with asyncio.timeout(0.5):
            assert await waiter
        assert stored_ids(cfg.path) == []
        batch = await outbox.next_batch(10)
        # Nothing new while it is in flight.
        assert not await outbox.wait_for_records(0.1)
        await outbox.put("fix", fix())
        assert await outbox.wait_for_records(0.1)
        assert len(await outbox.next_batch(10, exclude=[r.seq for r in batch])) == 1


async def test_records_held_while_the_disk_is_full_are_delivered_from_memory(
    small_disk: Path,  # noqa: F811 - the fixture imported above
) -> None:
    events: list[Event] = []
    cfg = OutboxConfig(
        path=small_disk / "outbox.db",
        max_bytes="100MB",
        memory_buffer_bytes=30_000,
        retry_interval_s=0.1,
        commit_interval_s=0.05,
        event_interval_s=0,
        live_window_s=0,
    )
    async with Outbox(cfg, events=events.append) as outbox:
        stored = []
        for i in range(10):
            sms = Sms(text=f"stored {i}")
            await outbox.put("sms", sms)
            stored.append(sms.id)
        filler = fill(small_disk)
        # Positions would only make way for each other in the outbox's own pages (its
        # headroom); messages are never pushed out, so they fill the last pages.
        for i in range(2000):
            try:
                await outbox.put("sms", Sms(text=f"filling {i} " + "x" * 200))
            except StoreError:
                break
        assert outbox.store_error is not None
        held = [fix(lat=i) for i in range(20)]
        for f in held:
            await outbox.put("fix", f)
        assert outbox.held_bytes > 0
        # The link drains the rows and the records held in memory alike.
        delivered: list[str] = []
        while batch := await outbox.next_batch(50):
            delivered += [r.id for r in batch]
            await outbox.ack_seqs(r.seq for r in batch)
        assert delivered[:10] == stored
        assert delivered[-20:] == [f.id for f in held]
        assert outbox.held_bytes == 0
        assert outbox.depth == 0
        # Space returns: the acks of the rows are written, nothing held ever is.
        filler.unlink()
        async with asyncio.TaskGroup() as tg:
            runner = tg.create_task(outbox.run(), name="outbox")
            await wait_until(lambda: outbox.store_error is None, within=5)
            runner.cancel()
    assert stored_ids(cfg.path) == []
    assert [e.data["state"] for e in events if e.kind == "store"] == ["failing", "recovered"]


async def test_uplink_publishes_before_the_commit_and_the_disk_stays_untouched(
    tmp_path: Path, broker: Broker
) -> None:
    config_ = make_config(tmp_path, broker.port, outbox={"commit_interval_s": 1.0})
    path = Path(config_.outbox.path)
    async with (
        subscriber(broker.port, f"tgw/{config_.device.id}/gnss/#") as got,
        Outbox(config_.outbox) as outbox,
    ):
        uplink = Uplink(config_, outbox, events=lambda e: None)
        async with running(uplink, outbox):
            await wait_until(lambda: uplink.state is LinkState.CONNECTED)
            await asyncio.sleep(0.2)
            before = disk_marks(path)
            sent = []
            for i in range(30):
                f = fix(lat=i)
                await outbox.put(topic_of(config_, f), f)
                sent.append(f.id)
                await asyncio.sleep(0.05)  # 20 Hz for 1.5 s: past a commit interval
            await got.wait_for(lambda g: len(g.messages) >= len(sent))
            await asyncio.sleep(1.2)
            assert disk_marks(path) == before
            assert outbox.delivered_unwritten == len(sent)
        assert [rid for _, rid in got.record_ids()] == sent
    assert stored_ids(path) == []


# --- random workloads against a model of the uplink -------------------------------------

CLASSES = ["sms", "bds", "command", "event", "status", "fix", "sky"]
op = st.one_of(
    st.tuples(st.just("put"), st.sampled_from(CLASSES)),
    st.tuples(st.just("put"), st.sampled_from(["fix", "event", "status", "sky"])),
    st.tuples(st.just("read"), st.integers(1, 12)),
    st.tuples(st.just("ack"), st.integers(0, 2**16)),
    st.tuples(st.just("flush"), st.just(0)),
    st.tuples(st.just("reconnect"), st.just(0)),
)


def payload(cls: str, n: int) -> Payload:
    if cls == "sms":
        return Sms(text=str(n))
    if cls == "bds":
        return Bds(text=str(n))
    if cls == "command":
        return CommandResult(result=str(n))
    if cls == "event":
        return make_event("test", str(n), now=0)
    if cls == "status":
        return Status(time="2026-01-01T00:00:00.000Z", state="online")
    if cls == "fix":
        return fix(lat=n / 1000)
    return Sky()


async def uplink_model(path: Path, ops: list[tuple[str, int | str]]) -> None:
    cfg = OutboxConfig(path=path, commit_records=7, commit_interval_s=60, live_window_s=0)
    waiting: list[tuple[str, str]] = []  # (class, id) accepted and not acked, in arrival order
    in_flight: dict[int, str] = {}  # seq handed out -> id
    async with Outbox(cfg) as outbox:
        for n, (name, arg) in enumerate(ops):
            if name == "put":
                p = payload(str(arg), n)
                await outbox.put("t", p)  # messages are sync: they commit the batch
                waiting.append((p.record_class, p.id))
            elif name == "read":
                limit = int(arg)
                batch = await outbox.next_batch(limit, exclude=in_flight)
                flying = set(in_flight.values())
                assert not {r.id for r in batch} & flying, "handed out twice"
                prios = [r.priority for r in batch]
                assert prios == sorted(prios)
                free = [(c, i) for c, i in waiting if i not in flying]
                for cls in CLASSES:
                    ids = [r.id for r in batch if r.cls == cls]
                    # Each class from its oldest record not in flight, in arrival order.
                    assert ids == [i for c, i in free if c == cls][: len(ids)], cls
                if len(batch) < limit:
                    assert {r.id for r in batch} == {i for _, i in free}
                in_flight.update((r.seq, r.id) for r in batch)
            elif name == "ack":
                seqs = [s for k, s in enumerate(in_flight) if int(arg) >> (k % 16) & 1]
                await outbox.ack_seqs(seqs)
                gone = {in_flight.pop(s) for s in seqs}
                waiting = [(c, i) for c, i in waiting if i not in gone]
            elif name == "flush":
                await outbox.flush()
                assert set(stored_ids(path)) == {i for _, i in waiting}
            else:
                in_flight.clear()  # the connection dropped: nothing in flight any more
            assert outbox.depth == len(waiting)
        await outbox.flush()
    assert set(stored_ids(path)) == {i for _, i in waiting}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, min_size=10, max_size=60))
def test_random_drains_hand_out_each_record_once_in_order_and_lose_none(
    ops: list[tuple[str, int | str]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(uplink_model(Path(tmp) / "outbox.db", ops))


async def test_a_fast_stream_reaches_the_subscriber_once_without_a_reconnect(
    tmp_path: Path, broker: Broker
) -> None:
    # Every epoch published at full speed, with commits landing while records are in flight
    # and their acks deleting rows: with the link never dropping, no fix may arrive twice.
    config_ = make_config(
        tmp_path,
        broker.port,
        mqtt={"inflight": 64},
        outbox={"commit_interval_s": 0.02, "commit_records": 50},
    )
    n = 3000
    async with (
        subscriber(broker.port, f"tgw/{config_.device.id}/gnss/#") as got,
        Outbox(config_.outbox) as outbox,
    ):
        uplink = Uplink(config_, outbox, events=lambda e: None)
        async with running(uplink, outbox):
            await wait_until(lambda: uplink.state is LinkState.CONNECTED)
            sent = []
            for i in range(n):
                f = fix(lat=i / 1e4)
                await outbox.put(topic_of(config_, f), f)
                sent.append(f.id)
                if i % 20 == 0:
                    await asyncio.sleep(0)  # a receiver's bursts: let the uplink run
            await got.wait_for(lambda g: len({rid for _, rid in g.record_ids()}) >= n, 60)
            await wait_until(lambda: outbox.depth == 0, 30)
            assert uplink.counters.reconnects == 0
        ids = [rid for _, rid in got.record_ids()]
        twice = [rid for rid, k in Counter(ids).items() if k > 1]
        assert twice == [], f"{len(twice)} fixes delivered twice without a reconnect"
        assert ids == sent


async def test_a_commit_cancelled_mid_write_is_not_written_twice(tmp_path: Path) -> None:
    # A stop that cancels the commit timer while its insert runs in a thread: the insert
    # still commits there, so the close that follows must not write the same batch again.
    cfg = config(tmp_path, commit_interval_s=60, commit_records=10_000, live_window_s=0)
    sent = [fix(lat=i) for i in range(5)]
    async with Outbox(cfg) as outbox:
        for f in sent:
            await outbox.put("fix", f)
        db_lock = outbox._db.lock
        db_lock.acquire()  # the insert waits in its thread for the database
        try:
            commit = asyncio.create_task(outbox.flush(), name="commit")
            await asyncio.sleep(0.1)
            commit.cancel()
            await asyncio.sleep(0.1)
        finally:
            db_lock.release()
        with contextlib.suppress(asyncio.CancelledError):
            await commit
        assert outbox.depth == len(sent)
    assert sorted(stored_ids(cfg.path)) == sorted(f.id for f in sent)
