"""Bytes on the wire per position while the uplink drains a backlog, compact vs JSON profile.

Used by `bench/wire.py --drain`. A real mosquitto (tests/broker.py), a counting TCP relay in
front of it (tests/byte_proxy.py: payload bytes both ways plus 52 B of IP/TCP headers for
every segment the kernel counted on the relay's client-side socket), and the Uplink in-process
with a real Outbox filled beforehand. Everything the connection carries counts: CONNECT with
its will, CONNACK, the birth status, SUBSCRIBE, every PUBLISH and PUBACK, the offline status
and DISCONNECT at the end.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from terminal_gw.config import load_config_data
from terminal_gw.models import Payload
from terminal_gw.outbox import Outbox
from terminal_gw.uplink import Uplink
from tests.broker import Broker
from tests.byte_proxy import ByteProxy

DEVICE = "vessel-042"


@dataclass(frozen=True)
class Stored:
    """A record to put in the outbox before the drain, with its time of storing."""

    payload: Payload
    created: float
    retain: bool = False


@dataclass
class Drain:
    profile: str
    positions: int
    messages: int
    up: int
    down: int
    segments: int
    seconds: float

    @property
    def wire(self) -> int:
        return self.up + self.down + self.segments * 52

    @property
    def per_position(self) -> float:
        return self.wire / self.positions


async def _drain(
    work: Path, profile: dict[str, Any], records: Sequence[Stored], health: dict[str, Any]
) -> Drain:
    broker = Broker(work / "broker")
    (work / "broker").mkdir(parents=True)
    broker.start()
    try:
        async with ByteProxy(broker.port) as proxy:
            config = load_config_data(
                {
                    "device": {"id": DEVICE},
                    "mqtt": {
                        "host": "127.0.0.1",
                        "port": proxy.port,
                        "rate_msgs_per_s": 100000.0,
                        "rate_bytes_per_s": "1GB",
                        "inflight": 100,
                    },
                    "outbox": {"path": str(work / "outbox.db"), "live_window_s": 0.0},
                    "links": [profile],
                },
                environ={},
            )
            now = [0.0]
            async with Outbox(config.outbox, clock=lambda: now[0] or time.time()) as outbox:
                base = f"{config.mqtt.prefix}/{DEVICE}/"
                # Stored as if the last record came a second ago (the fixes keep their times).
                shift = time.time() - 1.0 - max(r.created for r in records)
                for r in records:
                    now[0] = r.created + shift
                    await outbox.put(base + r.payload.topic_path(), r.payload, retain=r.retain)
                now[0] = 0.0
                await outbox.flush()
                uplink = Uplink(config, outbox, events=lambda e: None, health=lambda: health)
                start = time.monotonic()
                async with asyncio.TaskGroup() as tg:
                    run = tg.create_task(uplink.run())
                    duties = tg.create_task(outbox.run())
                    while outbox.depth > 0:  # noqa: ASYNC110 - the outbox has no such event
                        await asyncio.sleep(0.05)
                    seconds = time.monotonic() - start
                    await uplink.stop(5.0)
                    await run
                    duties.cancel()
            for _ in range(200):
                if not proxy.connections_open:
                    break
                await asyncio.sleep(0.01)
            positions = sum(1 for r in records if r.payload.record_class == "fix")
            return Drain(
                profile["name"],
                positions,
                uplink.counters.published,
                proxy.count.up,
                proxy.count.down,
                proxy.count.segments,
                seconds,
            )
    finally:
        broker.stop()


def drain(profile: dict[str, Any], records: Sequence[Stored], health: dict[str, Any]) -> Drain:
    """Drain `records` over one connection under `profile`; what the wire carried."""
    with tempfile.TemporaryDirectory(prefix="wire-drain-") as tmp:
        return asyncio.run(_drain(Path(tmp), profile, records, health))
