"""Helpers for uplink tests: configs, a subscriber that records what the broker delivers, a gate."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import aiomqtt
from pydantic import Field

from terminal_gw.config import Config, load_config_data
from terminal_gw.models import Fix, Payload, iso_utc, make_event, new_id
from terminal_gw.outbox import Outbox
from terminal_gw.uplink import Uplink
from tests.broker import free_port

DEVICE = "dev1"


class Sms(Payload):
    """A stand-in message-class payload (synchronous class, top priority)."""

    record_class: ClassVar[str] = "sms"
    topic_suffix: ClassVar[str] = "sms/rx"

    cls: str = Field(default="SMS", alias="class")
    n: int


def make_config(
    tmp_path: Path,
    port: int,
    *,
    mqtt: dict[str, Any] | None = None,
    outbox: dict[str, Any] | None = None,
    device: str = DEVICE,
) -> Config:
    """A config for one test: fast backoff and commits, the test broker's port."""
    m: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "backoff_min_s": 0.05,
        "backoff_max_s": 0.3,
        "auth_backoff_s": 30.0,
        "publish_timeout_s": 5.0,
        "rate_msgs_per_s": 100000.0,
        "rate_bytes_per_s": "1GB",
        "keepalive_s": 5,
    }
    m.update(mqtt or {})
    o: dict[str, Any] = {
        "path": str(tmp_path / "outbox.db"),
        "commit_interval_s": 0.05,
        "live_window_s": 0.0,
    }
    o.update(outbox or {})
    return load_config_data({"device": {"id": device}, "mqtt": m, "outbox": o}, environ={})


def topic_of(config: Config, payload: Payload) -> str:
    """The topic a payload is published on."""
    return f"{config.mqtt.prefix}/{config.device.id}/{payload.topic_suffix}"


def fix(n: int, t: float | None = None) -> Fix:
    """A distinct fix; `n` is in the latitude so a reader can tell them apart."""
    t = time.time() if t is None else t
    return Fix(id=new_id(), time=iso_utc(t), mode=3, lat=n / 1e6, lon=10.0, speed=1.0)


def event(n: int) -> Payload:
    """A distinct event."""
    return make_event("test", f"event {n}", now=time.time(), n=n)


@dataclass
class Received:
    """What a subscriber got: (topic, payload, retain) in arrival order."""

    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    connects: int = 0

    def payloads(self, topic_part: str = "") -> list[dict[str, Any]]:
        """Decoded payloads whose topic contains `topic_part`, in arrival order."""
        return [json.loads(p) for t, p, _ in self.messages if topic_part in t and p]

    def record_ids(self) -> list[tuple[str, str]]:
        """(class, id) of every record delivered, batches unpacked, in arrival order."""
        out: list[tuple[str, str]] = []
        for t, p, _ in self.messages:
            if not p or t.endswith("/status"):
                continue
            data = json.loads(p)
            if data.get("class") == "TPV_BATCH":
                out += [("TPV", f["id"]) for f in data["fixes"]]
            else:
                out.append((data["class"], data["id"]))
        return out

    def first_seen(self) -> dict[str, list[str]]:
        """Per payload class, ids in the order first seen (duplicates dropped)."""
        seen: set[str] = set()
        order: dict[str, list[str]] = {}
        for cls, rid in self.record_ids():
            if rid not in seen:
                seen.add(rid)
                order.setdefault(cls, []).append(rid)
        return order

    async def wait_for(self, predicate: Callable[[Received], bool], within: float = 8.0) -> None:
        """Wait until `predicate(self)` holds; TimeoutError after `within` seconds."""
        async with asyncio.timeout(within):
            while not predicate(self):
                await asyncio.sleep(0.02)


async def _subscribe_loop(
    *,
    port: int,
    topic: str,
    got: Received,
    client_id: str,
    protocol: aiomqtt.ProtocolVersion,
    qos: int,
) -> None:
    while True:
        try:
            async with aiomqtt.Client(
                "127.0.0.1",
                port,
                identifier=client_id,
                protocol=protocol,
                clean_session=False if protocol != aiomqtt.ProtocolVersion.V5 else None,
                timeout=5,
                keepalive=5,
            ) as client:
                await client.subscribe(topic, qos=qos)
                got.connects += 1
                got.connected.set()
                async for m in client.messages:
                    payload = m.payload if isinstance(m.payload, bytes) else b""
                    got.messages.append((m.topic.value, payload, m.retain))
        except aiomqtt.MqttError:
            got.connected.clear()
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def subscriber(
    port: int,
    topic: str = "#",
    *,
    protocol: aiomqtt.ProtocolVersion = aiomqtt.ProtocolVersion.V311,
    qos: int = 1,
) -> AsyncIterator[Received]:
    """A subscriber that reconnects (and re-subscribes) whenever the broker comes back.

    With qos=0 the broker writes each message to it at once, before its PUBACK to the
    publisher; with qos=1 it may hold messages beyond the subscriber's in-flight window in
    memory, and a broker killed then loses them after acknowledging them.
    """
    got = Received()
    name = f"sub-{new_id()[-12:]}"
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(
            _subscribe_loop(
                port=port, topic=topic, got=got, client_id=name, protocol=protocol, qos=qos
            ),
            name="subscriber",
        )
        try:
            async with asyncio.timeout(10):
                await got.connected.wait()
            yield got
        finally:
            task.cancel()


@contextlib.asynccontextmanager
async def running(uplink: Uplink, outbox: Outbox | None = None) -> AsyncIterator[Uplink]:
    """Run the uplink (and the outbox's duties) for the body; stop cleanly afterwards."""
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(uplink.run(), name="uplink")
        duties = tg.create_task(outbox.run(), name="outbox") if outbox is not None else None
        try:
            yield uplink
        finally:
            await uplink.stop(3.0)
            if not run.done():
                run.cancel()
            if duties is not None:
                duties.cancel()


async def wait_until(predicate: Callable[[], bool], within: float = 8.0) -> None:
    """Poll `predicate` until true; TimeoutError after `within` seconds."""
    async with asyncio.timeout(within):
        while not predicate():
            await asyncio.sleep(0.01)


class Gate:
    """A TCP relay in front of the broker that lets connections through only while open.

    After a broker restart the test's subscriber reconnects first and only then the gate
    opens for the uplink, so nothing is published before someone listens.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.open = True
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Gate:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def cut(self) -> None:
        """Close every relayed connection now."""
        for w in list(self._writers):
            w.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if not self.open:
                writer.transport.abort()
                return
            try:
                up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
            except OSError:
                writer.transport.abort()
                return
            self._writers |= {writer, up_w}
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(_pipe(reader, up_w))
                    tg.create_task(_pipe(up_r, writer))
            except* OSError:
                pass
            finally:
                self._writers -= {writer, up_w}
                writer.transport.abort()
                up_w.transport.abort()
        finally:
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        # Either side gone: close both directions so the peer sees the cut at once.
        writer.transport.abort()
    raise ConnectionResetError("relay closed")
