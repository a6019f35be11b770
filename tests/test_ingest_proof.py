"""The proof: two ingest processes on one shared subscription, three devices publishing, the
broker killed and restarted, one ingest process SIGKILLed mid-batch and started again,
duplicates published on purpose: every record exactly once in PostgreSQL."""

from __future__ import annotations

import random
import threading
from collections import Counter
from pathlib import Path

import pytest

from tests.broker import Broker
from tests.ingest_support import (
    PREFIX,
    IngestProcess,
    Publisher,
    count,
    event_payload,
    fix_messages,
    ids_of,
    migrate,
    query,
    sky_payload,
    write_config,
)
from tests.pg import Postgres
from tests.waiting import wait_until_sync

DEVICES = ("vessel-1", "vessel-2", "station-3")
PER_DEVICE = 600


def _device_stream(device: str, rng: random.Random) -> tuple[list[tuple[str, bytes]], set[str]]:
    """A device's messages (fixes with a sky and an event now and then), with about 10% sent
    twice on purpose; and the set of ids among them."""
    messages: list[tuple[str, bytes]] = []
    for i, fix in enumerate(fix_messages(device, PER_DEVICE)):
        messages.append(fix)
        if i % 100 == 0:
            messages.append((f"{PREFIX}/{device}/gnss/sky", sky_payload().to_json().encode()))
            messages.append((f"{PREFIX}/{device}/event", event_payload().to_json().encode()))
    ids = set(ids_of(messages))
    dupes = rng.sample(messages, len(messages) // 10)
    for dupe in dupes:
        messages.insert(rng.randrange(len(messages) + 1), dupe)
    return messages, ids


@pytest.mark.timeout(300)
def test_two_processes_broker_killed_one_process_killed_every_record_once(
    tmp_path: Path, pg: Postgres
) -> None:
    workdir = tmp_path / "broker"
    workdir.mkdir()
    broker = Broker(workdir)
    broker.start()
    config = write_config(tmp_path / "ingest.toml", broker, pg, batch_max_age_ms=300)
    migrate(config)
    a = IngestProcess(config, "ingest-a")
    b = IngestProcess(config, "ingest-b")
    processes = [a, b]
    rng = random.Random(15)
    streams = [_device_stream(d, rng) for d in DEVICES]
    expected: set[str] = set().union(*(ids for _, ids in streams))
    published = sum(len(m) for m, _ in streams)
    errors: list[BaseException] = []

    def stored() -> int:
        return count(pg, "fixes") + count(pg, "sky_summary") + count(pg, "events")

    def publish(device: str, messages: list[tuple[str, bytes]]) -> None:
        try:
            # Paced a little, so the kill below lands while the stream flows.
            for start in range(0, len(messages), 50):
                Publisher(broker, f"dev-{device}").publish_all(messages[start : start + 50])
        except BaseException as exc:
            errors.append(exc)

    def publish_all(parts: list[list[tuple[str, bytes]]]) -> list[threading.Thread]:
        threads = [
            threading.Thread(target=publish, args=(d, m), daemon=True)
            for d, m in zip(DEVICES, parts, strict=True)
        ]
        for t in threads:
            t.start()
        return threads

    cut = [len(m) // 3 for m, _ in streams]
    first = {i for (m, _), n in zip(streams, cut, strict=True) for i in ids_of(m[:n])}
    try:
        a.wait_event("ingest_subscribed")
        b.wait_event("ingest_subscribed")
        for t in publish_all([m[:n] for (m, _), n in zip(streams, cut, strict=True)]):
            t.join(120)
        wait_until_sync(lambda: stored() >= len(first), 60, "the first third stored")
        # The broker killed (SIGKILL) and started again: both processes reconnect, subscribe
        # again, and go on. (mosquitto acknowledges a PUBLISH before it could save it, and
        # does not restore shared subscriptions from its persistence file: what it held for
        # the group when it died is lost there, so it dies here between two bursts.)
        broker.kill()
        broker.start()
        a.wait_event("ingest_subscribed", count=2)
        b.wait_event("ingest_subscribed", count=2)

        publishers = publish_all([m[n:] for (m, _), n in zip(streams, cut, strict=True)])
        wait_until_sync(lambda: stored() >= len(first) + 200, 60, "the second burst flowing")
        # Mid-batch: with batches of up to 300 ms, a is holding unacknowledged messages.
        a.kill()
        a = IngestProcess(config, "ingest-a")
        processes.append(a)
        for t in publishers:
            t.join(120)
        assert not errors, errors
        assert not any(t.is_alive() for t in publishers)

        try:
            wait_until_sync(lambda: stored() >= len(expected), 90, "every record stored")
        except AssertionError:
            missing = len(expected) - stored()
            logs = "\n\n".join(f"{p.client_id}:\n{p.log()}" for p in processes)
            raise AssertionError(f"{missing} records missing\n{logs}") from None
        rows = [
            str(r[0])
            for table in ("fixes", "sky_summary", "events")
            for r in query(pg, f"SELECT id FROM {table}")  # noqa: S608 - fixed names
        ]
        assert len(rows) == len(expected)  # primary keys: no id twice
        assert set(rows) == expected  # none lost, none invented
        assert count(pg, "rejected") == 0
        by_device = Counter(r[0] for r in query(pg, "SELECT device FROM fixes"))
        assert by_device == dict.fromkeys(DEVICES, PER_DEVICE)
        assert len(query(pg, "SELECT device FROM latest_fix")) == 3
    finally:
        for p in processes:
            if p.proc.poll() is None:
                assert p.terminate() == 0, p.log()
        broker.kill()
    # Both processes did a share of the work (the shared subscription split the stream).
    stored_by = {
        p.client_id: sum(e["totals"]["rows"] for e in p.events("ingest_stopped"))
        for p in processes[1:]
    }
    assert all(n > 0 for n in stored_by.values()), stored_by
    absorbed = sum(e["totals"]["duplicates"] for p in processes for e in p.events("ingest_stopped"))
    assert absorbed > 0
    assert published > len(expected)  # the duplicates were sent
    assert all(p.events("ingest_subscribed") for p in processes)
