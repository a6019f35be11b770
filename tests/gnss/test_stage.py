"""The GNSS stage on its own: a simulated receiver on a real pty, a record sink in memory."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from terminal_gw.clock import ClockWatch
from terminal_gw.config import GnssConfig, ReportingConfig
from terminal_gw.errors import OutboxFullError
from terminal_gw.gnss.stage import GnssStage
from terminal_gw.models import Event, Fix, Payload
from terminal_gw.sim.gnss import GnssSimulator
from terminal_gw.topics import Topics
from terminal_gw.transport.pty import PtyDevice
from terminal_gw.uplink.compact import derive_id
from tests.waiting import wait_until

TOPICS = Topics("tgw", "vessel-s")
EVERY_EPOCH = ReportingConfig(min_interval_s=0, distance_m=0, sky_interval_s=0)
RARELY = ReportingConfig(min_interval_s=3600, max_interval_s=3600, sky_interval_s=3600)


class Sink:
    """Refuses the first `refuse` records as a full outbox would, then keeps them."""

    def __init__(self, refuse: int = 0) -> None:
        self.refuse = refuse
        self.refused = 0
        self.records: list[tuple[str, Payload]] = []

    async def put(
        self, topic: str, payload: Payload, *, retain: bool = False, sync: bool | None = None
    ) -> None:
        if self.refused < self.refuse:
            self.refused += 1
            raise OutboxFullError("outbox full", reason="full")
        self.records.append((topic, payload))


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[tuple[PtyDevice, GnssSimulator]]:
    device = PtyDevice(tmp_path / "gnss0")
    # The receiver's clock years off this machine's: a skew the stage reports.
    sim = GnssSimulator(device, rate_hz=10, start=datetime(2030, 1, 1, tzinfo=UTC), hangup_s=0.3)
    yield device, sim
    device.close()


async def run_until(stage: GnssStage, sim: GnssSimulator, done: Callable[[], bool]) -> None:
    async with asyncio.TaskGroup() as tg:
        sim_task = tg.create_task(sim.run(), name="sim")
        stage_task = tg.create_task(stage.run(), name="gnss")
        try:
            await wait_until(done, timeout=20, what="records")
        finally:
            stage_task.cancel()
            sim_task.cancel()


async def test_records_reach_the_sink_on_their_topics_and_a_full_outbox_does_not_stop_reading(
    receiver: tuple[PtyDevice, GnssSimulator],
) -> None:
    device, sim = receiver
    sink = Sink(refuse=5)
    events: list[Event] = []
    seen: list[Fix] = []
    stage = GnssStage(
        GnssConfig(port=device.path, reporting=EVERY_EPOCH),
        sink,
        topics=TOPICS,
        clock=ClockWatch(threshold_s=1.0),
        events=events.append,
    )
    stage.fix_observers.append(seen.append)

    def fixes() -> list[Fix]:
        return [p for _, p in sink.records if isinstance(p, Fix)]

    await run_until(stage, sim, lambda: len(fixes()) >= 3)

    assert sink.refused == 5  # refused, logged, and the stage read on
    for topic, payload in sink.records:
        assert topic == TOPICS.of(payload)
    assert {t for t, _ in sink.records} <= {"tgw/vessel-s/gnss/fix", "tgw/vessel-s/gnss/sky"}
    fix = fixes()[0]
    assert fix.clock == "gnss"
    assert derive_id(fix.model_copy(update={"id": "x"}), "vessel-s").id == fix.id
    assert stage.last_fix is not None
    assert stage.fix_age() is not None
    # The fallback's observers see every fix, with its derived id, stored or not.
    assert {f.id for f in fixes()} <= {f.id for f in seen}
    assert [e.kind for e in events if e.kind.startswith("clock")] == ["clock_skew"]
    assert str(stage.port_state()).startswith("closed")  # the stage closed its port as it ended


async def test_the_reporting_policy_thins_and_counts(
    receiver: tuple[PtyDevice, GnssSimulator],
) -> None:
    device, sim = receiver
    sink = Sink()
    counts: Counter[str] = Counter()
    stage = GnssStage(
        GnssConfig(port=device.path, reporting=RARELY),
        sink,
        topics=TOPICS,
        clock=ClockWatch(threshold_s=1e9),
        events=lambda e: None,
        counts=counts,
    )
    await run_until(stage, sim, lambda: counts["fix_thinned_by_policy"] >= 5)
    assert [p.record_class for _, p in sink.records].count("fix") == 1
