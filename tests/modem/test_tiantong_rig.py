"""The rig of the Tiantong driver tests (no tests here): the driver against the simulator over a
real pty, and a sink recording what it stores."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from terminal_gw.config import ModemConfig
from terminal_gw.errors import StoreError
from terminal_gw.models import Event, ModemStatus, Payload, SmsReceived
from terminal_gw.modem.tiantong import ModemState, TiantongModem
from terminal_gw.sim.modem import ModemSimulator
from terminal_gw.topics import Topics
from terminal_gw.transport.pty import PtyDevice
from tests import waiting

TOPICS = Topics("tgw", "dev1")
BASE = "tgw/dev1"

#: Short timings so every ladder step happens within a test's few seconds.
FAST: dict[str, Any] = {
    "command_timeout_s": 0.5,
    "send_timeout_s": 2.0,
    "ping_timeout_s": 0.3,
    "poll_signal_s": 0.2,
    "poll_registration_s": 0.2,
    "poll_operator_s": 0.5,
    "status_interval_s": 30.0,
    "sweep_interval_s": 30.0,
    "sms_reassembly_timeout_s": 30.0,
    "reset_wait_s": 0.3,
    "recovery_backoff_s": 0.5,
    "reopen_backoff_s": 0.1,
}


@dataclass
class Sink:
    """Records what the driver stores; refuses with StoreError while `failing`."""

    records: list[tuple[str, Payload, bool]] = field(default_factory=list)
    failing: bool = False
    puts: int = 0

    async def put(
        self, topic: str, payload: Payload, *, retain: bool = False, sync: bool | None = None
    ) -> None:
        """Accept (or refuse) a record."""
        self.puts += 1
        await asyncio.sleep(0)
        if self.failing:
            raise StoreError("disk full (test)", reason="full")
        if isinstance(payload, SmsReceived):
            assert sync is True, "an SMS must be stored synchronously"
        self.records.append((topic, payload, retain))

    def sms(self) -> list[SmsReceived]:
        """The SMS payloads stored, in order."""
        return [p for _, p, _ in self.records if isinstance(p, SmsReceived)]

    def statuses(self) -> list[ModemStatus]:
        """The modem status payloads stored, in order."""
        return [p for _, p, _ in self.records if isinstance(p, ModemStatus)]


@dataclass
class Rig:
    """The simulator, the driver, what it stored and the events it raised."""

    sim: ModemSimulator
    device: PtyDevice
    modem: TiantongModem
    sink: Sink
    events: list[Event]
    progress: list[float]  # monotonic times the driver reported progress

    def steps(self) -> list[str]:
        """The recovery steps reported, in order."""
        return [e.data["step"] for e in self.events if e.kind == "modem_recovery"]


async def wait_until(cond: Callable[[], bool], within: float = waiting.TIMEOUT_S) -> None:
    """Poll `cond` until true; fail the test after `within` seconds."""
    await waiting.wait_until(cond, within, what="modem condition")


async def ready(rig: Rig) -> None:
    """The driver is up and its start-up sweep (AT+CMGL=4) is over: a message delivered from
    now on is read through its notification (AT+CMGR), not taken by that sweep."""

    def swept() -> bool:
        cmds = rig.sim.commands
        return "AT+CMGL=4" in cmds and cmds[-1] != "AT+CMGL=4"

    await waiting.wait_until(lambda: rig.modem.state is ModemState.OK, what="modem ready")
    await waiting.wait_until(swept, what="start-up sweep over")


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path,
    *,
    sink: Sink | None = None,
    sim: Callable[[PtyDevice], ModemSimulator] | None = None,
    before: Callable[[ModemSimulator], None] | None = None,
    parts_path: Path | None = None,
    **options: Any,
) -> AsyncIterator[Rig]:
    """Simulator and driver running in one TaskGroup; both stopped on exit."""
    with PtyDevice(tmp_path / "tiantong0") as device:
        simulator = sim(device) if sim else ModemSimulator(device)
        if before is not None:
            before(simulator)
        config = ModemConfig(port=device.path, **{**FAST, **options})
        events: list[Event] = []
        sink = sink or Sink()
        progress: list[float] = []
        modem = TiantongModem(
            config,
            sink,
            topics=TOPICS,
            events=events.append,
            on_progress=lambda: progress.append(time.monotonic()),
            parts_path=parts_path,
        )
        async with asyncio.TaskGroup() as tg:
            sim_task = tg.create_task(simulator.run(), name="sim")
            modem_task = tg.create_task(modem.run(), name="modem")
            try:
                yield Rig(simulator, device, modem, sink, events, progress)
            finally:
                modem_task.cancel()
                sim_task.cancel()
