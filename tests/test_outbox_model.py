"""Random workloads (hypothesis): the counts the outbox keeps in memory always match what is
on disk, nothing accepted goes missing without being counted, and the drain order holds."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from terminal_gw.config import OutboxConfig
from terminal_gw.errors import OutboxFullError
from terminal_gw.models import Event, Fix, Payload, Sky, Status, make_event
from terminal_gw.outbox import CLASS_PRIORITY, Outbox, id_from_db
from tests.outbox_child import Bds, CommandResult, Sms
from tests.test_outbox import Clock

CLASSES = ["sms", "bds", "command", "event", "status", "fix", "sky"]

put = st.tuples(st.just("put"), st.sampled_from(CLASSES), st.integers(0, 400))
op = st.one_of(
    put,
    put,
    put,
    put,
    st.tuples(st.just("drain"), st.integers(1, 20), st.booleans()),
    st.tuples(st.just("flush"), st.just(0), st.just(0)),
    st.tuples(st.just("tick"), st.integers(1, 4000), st.just(0)),
    st.tuples(st.just("reopen"), st.just(0), st.just(0)),
)


def payload(cls: str, pad: int, now: float) -> Payload:
    text = "x" * pad
    if cls == "sms":
        return Sms(text=text)
    if cls == "bds":
        return Bds(text=text)
    if cls == "command":
        return CommandResult(result=text or "ok")
    if cls == "event":
        return make_event("test", text or "e", now=now)
    if cls == "status":
        return Status(time="2026-01-01T00:00:00.000Z", state="online", health={"p": text})
    if cls == "fix":
        return Fix(mode=3, lat=1.0, lon=2.0, time=text[:20] or None)
    return Sky(time=text[:20] or None)


def on_disk(path: Path) -> tuple[dict[str, tuple[int, int]], set[str]]:
    conn = sqlite3.connect(str(path))
    try:
        counts = {
            c: (n, b)
            for c, n, b in conn.execute("SELECT cls, COUNT(*), SUM(size) FROM outbox GROUP BY cls")
        }
        ids = {id_from_db(r[0]) for r in conn.execute("SELECT id FROM outbox")}
        return counts, ids
    finally:
        conn.close()


async def workload(path: Path, ops: list[tuple[str, int | str, int | bool]]) -> None:
    clock = Clock()
    events: list[Event] = []
    cfg = OutboxConfig(
        path=path,
        max_bytes=1_500,
        commit_records=7,
        max_age_s={"fix": 20_000, "event": 50_000},
        live_window_s=100,
        event_interval_s=0,
    )
    accepted: Counter[str] = Counter()
    delivered: Counter[str] = Counter()
    alive: set[str] = set()
    outbox = Outbox(cfg, clock=clock, events=events.append)
    await outbox.open()
    try:
        for name, a, b in ops:
            if name == "put":
                assert isinstance(a, str)
                p = payload(a, int(b), clock.now)
                try:
                    await outbox.put("t", p)
                except OutboxFullError:
                    continue
                accepted[a] += 1
                alive.add(p.id)
            elif name == "drain":
                batch = await outbox.next_batch(int(a))
                prios = [r.priority for r in batch]
                assert prios == sorted(prios)
                for level in set(prios):
                    # Committed records (seq > 0) first, then those not yet committed (seq < 0,
                    # growing with arrival): FIFO where no live record goes first.
                    keys = [
                        (r.seq < 0, r.seq)
                        for r in batch
                        if r.priority == level and r.cls not in {"fix", "sky"}
                    ]
                    assert keys == sorted(keys)
                if b:
                    await outbox.ack_seqs(r.seq for r in batch)
                    delivered.update(r.cls for r in batch)
                    alive -= {r.id for r in batch}
            elif name == "flush":
                await outbox.flush()
            elif name == "tick":
                clock.now += int(a)
                await outbox.flush()
                await outbox.expire()
            else:
                await outbox.close()
                outbox = Outbox(cfg, clock=clock, events=events.append)
                await outbox.open()
            # The kept counts match the disk once the batch is committed.
            if name in {"flush", "reopen", "tick"}:
                counts, ids = on_disk(path)
                stats = await outbox.stats()
                assert {c: (s.count, s.bytes) for c, s in stats.items()} == counts
                assert outbox.depth == sum(n for n, _ in counts.values())
                assert sum(b for _, b in counts.values()) <= cfg.max_bytes
        await outbox.flush()
        counts, ids = on_disk(path)
    finally:
        await outbox.close()
    # Every record accepted is on disk, delivered, or counted as evicted.
    lost: Counter[str] = Counter()
    for e in events:
        if e.kind == "evicted":
            for cls, reasons in e.data["counts"].items():
                lost[cls] += sum(reasons.values())
    for cls in CLASSES:
        stored = counts.get(cls, (0, 0))[0]
        assert accepted[cls] == stored + delivered[cls] + lost[cls], cls
    event(f"evictions: {'some' if lost else 'none'}")
    event(f"refused: {'some' if any(e.kind == 'outbox_full' for e in events) else 'none'}")
    # Messages and command results are never pushed out.
    assert not {c for c in lost if CLASS_PRIORITY[c] == 0}
    assert ids <= alive


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, min_size=25, max_size=80))
def test_random_workloads_keep_counts_and_lose_nothing_uncounted(
    ops: list[tuple[str, int | str, int | bool]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(workload(Path(tmp) / "outbox.db", ops))
