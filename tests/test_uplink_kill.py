"""A process running outbox + uplink, killed with SIGKILL at random points while it drains:
every record in the outbox at its death is delivered after a restart (duplicates only by id),
order within a class holds, the database stays sound, and the last will says offline."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from terminal_gw.outbox import Outbox, check_database, id_from_db
from tests.broker import Broker
from tests.uplink_support import (
    DEVICE,
    Received,
    Sms,
    event,
    fix,
    make_config,
    subscriber,
    topic_of,
)

REPO = Path(__file__).resolve().parent.parent
STATUS = f"tgw/{DEVICE}/status"


def stored_ids(path: Path) -> set[str]:
    """Ids of the records in the outbox file right now."""
    conn = sqlite3.connect(str(path))
    try:
        return {id_from_db(r[0]) for r in conn.execute("SELECT id FROM outbox")}
    finally:
        conn.close()


def start_child(config_path: Path, produce_per_s: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.uplink_child", str(config_path), str(produce_per_s)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


async def wait_connected(child: subprocess.Popen[bytes]) -> None:
    assert child.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 15)
    assert line.strip() == b"connected", line


def statuses(got: Received) -> list[str]:
    return [str(p["state"]) for p in got.payloads("/status")]


async def kill_while_draining(tmp_path: Path, broker: Broker, cycles: int, seed: int) -> None:
    rng = random.Random(seed)
    config = make_config(
        tmp_path,
        broker.port,
        mqtt={"inflight": 16, "rate_msgs_per_s": 3000.0, "keepalive_s": 5},
        outbox={"commit_interval_s": 0.05, "commit_records": 100},
    )
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config.model_dump(mode="json")))
    db = Path(config.outbox.path)
    prefilled: list[str] = []
    async with Outbox(config.outbox) as outbox:
        for i in range(400 * cycles):
            p = event(i) if i % 7 == 0 else fix(i)
            await outbox.put(topic_of(config, p), p)
            prefilled.append(p.id)
        for i in range(20):
            s = Sms(n=i)
            await outbox.put(topic_of(config, s), s)
            prefilled.append(s.id)
    must_deliver = set(prefilled)
    in_outbox_at_a_death: set[str] = set()
    async with subscriber(broker.port, f"tgw/{DEVICE}/#") as got:
        for cycle in range(cycles):
            child = start_child(config_path, produce_per_s=100.0)
            try:
                await wait_connected(child)
                seen = len(got.messages)
                target = seen + rng.randrange(1, 300)
                await got.wait_for(lambda g, t=target: len(g.messages) >= t, within=15)
            finally:
                child.send_signal(signal.SIGKILL)
                child.wait(10)
            assert check_database(db) is None, f"cycle {cycle}: database damaged"
            at_death = stored_ids(db)
            assert at_death, "killed after the drain, not during it"
            must_deliver |= at_death
            in_outbox_at_a_death |= at_death
            if cycle == 0:
                # The broker noticed the dead client and published its last will.
                await got.wait_for(lambda g: statuses(g)[-1:] == ["offline"])
        child = start_child(config_path, produce_per_s=0.0)
        try:
            await wait_connected(child)
            await got.wait_for(
                lambda g: must_deliver <= {rid for _, rid in g.record_ids()}, within=30
            )
            await got.wait_for(lambda g: not stored_ids(db), within=10)
            child.send_signal(signal.SIGTERM)
            assert child.wait(10) == 0
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(10)
        await got.wait_for(lambda g: statuses(g)[-1:] == ["offline"])
    assert check_database(db) is None
    # Order within each class: the backlog in the order it was put; what the children made,
    # by id (UUIDv7, time ordered within a process, and the children ran one after the
    # other). Not one sort over both: this test process's ids follow its own id clock, which
    # an earlier test may have moved ahead of the children's.
    put_order = {rid: k for k, rid in enumerate(prefilled)}
    for cls, ids in got.first_seen().items():
        backlog = [i for i in ids if i in put_order]
        made = [i for i in ids if i not in put_order]
        assert backlog == sorted(backlog, key=put_order.__getitem__), f"{cls} backlog out of order"
        assert made == sorted(made), f"{cls} delivered out of order"
    delivered = {rid for _, rid in got.record_ids()}
    assert set(prefilled) <= delivered
    # A record is sent twice only if it was still in the outbox when a process died (it was
    # in flight, or its PUBACK had come but its removal was not yet committed).
    counts = Counter(rid for _, rid in got.record_ids())
    duplicated = {rid for rid, n in counts.items() if n > 1}
    assert duplicated <= in_outbox_at_a_death
    assert len(duplicated) <= cycles * 64


async def test_killed_while_draining_loses_nothing(tmp_path: Path, broker: Broker) -> None:
    await kill_while_draining(tmp_path, broker, cycles=4, seed=1)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_killed_while_draining_loses_nothing_many_times(
    tmp_path: Path, broker: Broker
) -> None:
    await kill_while_draining(tmp_path, broker, cycles=50, seed=2)
