"""A driver and a simulated terminal on a real pty, for RDSS tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from terminal_gw.config import RdssConfig
from terminal_gw.models import Event, Payload
from terminal_gw.rdss.driver import RdssDriver
from terminal_gw.rdss.store import RdssStore
from terminal_gw.sim.rdss import RdssSimulator
from terminal_gw.topics import Topics
from terminal_gw.transport.pty import PtyDevice

#: Short timeouts: tests wait on conditions, these only bound the driver's own waits.
FAST: dict[str, Any] = {
    "answer_timeout_s": 1.0,
    "feedback_timeout_s": 5.0,
    "beam_interval_s": 1,
    "suppression_retry_s": 1.0,
    "stale_after_s": 30.0,
}


@dataclass
class Sink:
    """The outbox as the driver sees it: keeps what was put, in order."""

    items: list[tuple[str, Payload, bool]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def put(
        self, topic: str, payload: Payload, *, retain: bool = False, sync: bool | None = None
    ) -> None:
        self.items.append((topic, payload, retain))
        self.changed.set()

    def of(self, suffix: str) -> list[dict[str, Any]]:
        return [p.to_json_dict() for t, p, _ in self.items if t.endswith(suffix)]

    def states(self, bds_id: str) -> list[str]:
        return [p["state"] for p in self.of(f"/bds/tx/{bds_id}")]

    async def wait_for(self, predicate: Any, timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


@dataclass
class Rig:
    sim: RdssSimulator
    driver: RdssDriver
    sink: Sink
    events: list[Event]
    device: PtyDevice


@contextlib.asynccontextmanager
async def rig(
    tmp_path: Path,
    *,
    dialect: str = "2.1",
    config_dialect: str = "auto",
    sim_kwargs: dict[str, Any] | None = None,
    **cfg: Any,
) -> AsyncIterator[Rig]:
    """Run a simulator and a driver until the body ends."""
    device = PtyDevice(tmp_path / "rdss0")
    sim = RdssSimulator(device, dialect=dialect, **(sim_kwargs or {}))  # type: ignore[arg-type]
    config = RdssConfig(port=device.path, dialect=config_dialect, **{**FAST, **cfg})
    sink = Sink()
    events: list[Event] = []
    driver = RdssDriver(
        config,
        sink,
        RdssStore(tmp_path / "rdss.db"),
        topics=Topics("tgw", "dev1"),
        state_dir=tmp_path,
        events=events.append,
    )
    await driver.open()
    try:
        async with asyncio.TaskGroup() as tg:
            sim_task = tg.create_task(sim.run(), name="rdss-sim")
            drv_task = tg.create_task(driver.run(), name="rdss-driver")
            try:
                yield Rig(sim, driver, sink, events, device)
            finally:
                drv_task.cancel()
                sim_task.cancel()
    finally:
        await driver.close()
        device.close()
