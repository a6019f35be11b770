"""The daemon serving a corpus capture on a real pty, for tests of the local servers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from terminal_gw.daemon import Daemon
from terminal_gw.gnss.framer import Framer
from terminal_gw.gnss.pipeline import GnssPipeline
from terminal_gw.models import Fix, Sky
from terminal_gw.sim.gnss import Step, load_capture
from terminal_gw.transport.pty import PtyDevice
from terminal_gw.transport.serial import PortState
from tests.broker import free_port
from tests.conftest import GNSS_CORPUS
from tests.test_daemon import make_config
from tests.waiting import wait_until

M9N = GNSS_CORPUS / "ublox-neo-m9n-nmea.log"


@dataclass
class Expected:
    """What the pipeline makes of a capture fed in steps (no end-of-stream flush)."""

    steps: list[Step]
    good_after: list[int] = field(default_factory=list)
    """Checksum-valid sentences framed once each step is read."""
    sentences: list[bytes] = field(default_factory=list)
    tpv: int = 0
    sky: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, path: Path) -> Expected:
        """Run the capture through a pipeline of its own."""
        exp = cls(load_capture(path))
        framer = Framer()
        pipeline = GnssPipeline()
        for step in exp.steps:
            exp.sentences += [s.raw for s in framer.feed(step.data) if s.checked]
            exp.good_after.append(framer.counters["good"])
            for payload in pipeline.feed(step.data, 0.0):
                if isinstance(payload, Fix):
                    exp.tpv += 1
                elif isinstance(payload, Sky):
                    exp.sky += 1
                else:
                    continue
                exp.records.append(payload.model_dump(mode="json", by_alias=True))
        return exp


@dataclass
class Served:
    """A running daemon with its local servers on, and the pty its receiver is on."""

    daemon: Daemon
    device: PtyDevice
    udp_port: int

    @property
    def gpsd_port(self) -> int:
        assert self.daemon.serving.gpsd is not None
        return self.daemon.serving.gpsd.port

    @property
    def nmea_port(self) -> int:
        assert self.daemon.serving.nmea_tcp is not None
        return self.daemon.serving.nmea_tcp.port

    async def feed(self, exp: Expected) -> None:
        """Write the capture step by step, each once the daemon has read the one before (a
        pty drops what nobody reads, as a UART does)."""
        framer = self.daemon.gnss.pipeline.framer
        base = framer.counters["good"]
        for step, good in zip(exp.steps, exp.good_after, strict=True):
            self.device.write(step.data)
            await wait_until(
                lambda g=good: framer.counters["good"] - base >= g,  # type: ignore[misc]
                what="the daemon reads the step",
            )


@asynccontextmanager
async def serving(
    tmp_path: Path, mqtt_port: int, *, udp_port: int = 0, **extra: Any
) -> AsyncIterator[Served]:
    """The daemon on a pty with [gpsd_server] and [nmea_out] on free ports."""
    device = PtyDevice(tmp_path / "dev" / "gnss0")
    sections: dict[str, Any] = {
        "gpsd_server": {"enabled": True, "port": 0},
        "nmea_out": {"tcp_port": free_port()},
        # Thin MQTT hard: the local servers must still get every epoch.
        "gnss": {
            "port": device.path,
            "baud": 9600,
            "reporting": {"min_interval_s": 30, "max_interval_s": 60, "sky_interval_s": 60},
        },
    }
    if udp_port:
        sections["nmea_out"].update(udp_host="127.0.0.1", udp_port=udp_port)
    for name, values in extra.items():
        sections.setdefault(name, {}).update(values)
    config = make_config(tmp_path, device.path, mqtt_port, **sections)
    daemon = Daemon(config)
    try:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(daemon.run(handle_signals=False), name="daemon")
            served = Served(daemon, device, udp_port)
            await wait_until(
                lambda: daemon.gnss.port is not None and daemon.gnss.port.state is PortState.OPEN,
                what="the daemon opens the receiver's port",
            )
            await wait_until(lambda: served.gpsd_port != 0, what="the gpsd server listens")
            yield served
            daemon.supervisor.stop_requested.set()
            await task
    finally:
        device.close()


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects of a client's output, one a line (other lines left out)."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]
