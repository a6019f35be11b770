"""Helpers for command tests: a modem on a real pty, a gateway wired as the daemon wires it,
and an MQTT 5 requester that sends commands with a response topic and correlation data."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tty
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from terminal_gw.commands import CommandRunner, CommandStore
from terminal_gw.config import Config, load_config_data
from terminal_gw.modem.at import AtEngine, Urc
from terminal_gw.modem.sms import SubmitPdu
from terminal_gw.outbox import Outbox
from terminal_gw.uplink import LinkState, Uplink
from tests.modem.peer import ModemPeer, PtyPort
from tests.uplink_support import Received, running, subscriber, wait_until

DEVICE = "dev1"
BASE = f"tgw/{DEVICE}"
OK = b"\r\nOK\r\n"
#: A retained command the gateway leaves so that it knows when the daemon hears commands.
READY_TOPIC = f"{BASE}/cmd/ready-probe"


def make_config(
    tmp_path: Path, port: int = 1883, *, mqtt: dict[str, Any] | None = None, **commands: Any
) -> Config:
    """A config for one test: the test broker, fast commits, fast retries."""
    c: dict[str, Any] = {
        "path": str(tmp_path / "commands.db"),
        "retry_backoff_s": 0.05,
        "retry_backoff_max_s": 0.2,
        "send_timeout_s": 5.0,
        "poll_timeout_s": 2.0,
    }
    c.update(commands)
    return load_config_data(
        {
            "device": {"id": DEVICE},
            "mqtt": {
                "host": "127.0.0.1",
                "port": port,
                "backoff_min_s": 0.05,
                "backoff_max_s": 0.3,
                "publish_timeout_s": 5.0,
                "keepalive_s": 5,
                **(mqtt or {}),
            },
            "outbox": {
                "path": str(tmp_path / "outbox.db"),
                "commit_interval_s": 0.05,
                "live_window_s": 0.0,
            },
            "commands": c,
        },
        environ={},
    )


class AtSmsModem:
    """The driver's two methods over a real AtEngine: PDU sends and a poll (AT+CSQ)."""

    def __init__(self, engine: AtEngine, *, send_timeout: float = 1.0) -> None:
        self.engine = engine
        self.send_timeout = send_timeout
        self.polls = 0

    async def send_sms(self, pdus: Sequence[SubmitPdu]) -> list[int]:
        """Each PDU through AT+CMGS, prompt, hex, Ctrl-Z; their message references."""
        return [
            await self.engine.send_pdu(
                p.tpdu_length, p.hex, self.send_timeout, prompt_timeout=self.send_timeout
            )
            for p in pdus
        ]

    async def poll_now(self) -> None:
        """Ask for the signal, as the driver's poll does first."""
        await self.engine.command("AT+CSQ", timeout=1.0, expect="+CSQ")
        self.polls += 1


@dataclass
class Modem:
    """A scripted modem on a pty: answers AT+CMGS with the prompt and each PDU from `replies`
    (then with +CMGS and an increasing reference)."""

    peer: ModemPeer
    port: PtyPort
    engine: AtEngine
    driver: AtSmsModem
    replies: list[bytes | None] = field(default_factory=list)
    next_mr: int = 40
    urcs: list[Urc] = field(default_factory=list)

    def pdu_reply(self, unit: bytes) -> bytes | None:
        """The answer to one PDU: the next scripted reply, else success."""
        if self.replies:
            return self.replies.pop(0)
        self.next_mr += 1
        return b"\r\n+CMGS: %d\r\n" % self.next_mr + OK

    def pdus(self) -> list[str]:
        """The PDU hex of every send that reached the port, in order."""
        return [u[:-1].decode() for u in self.peer.units if u.endswith(b"\x1a")]

    def sends(self) -> int:
        """How many AT+CMGS the port received."""
        return sum(1 for u in self.peer.units if u.startswith(b"AT+CMGS="))


@contextlib.asynccontextmanager
async def modem_on_pty() -> AsyncIterator[Modem]:
    """A running AtEngine on a real pty with the scripted modem at the other end."""
    master, slave = os.openpty()
    tty.setraw(slave)
    port = PtyPort(slave)
    peer = ModemPeer(master)
    urcs: list[Urc] = []
    engine = AtEngine(port, on_urc=urcs.append)
    modem = Modem(peer, port, engine, AtSmsModem(engine), urcs=urcs)
    for n in range(1, 200):
        peer.script[b"AT+CMGS=%d" % n] = b"\r\n> "
    peer.script[b"AT+CSQ"] = b"\r\n+CSQ: 17,99\r\n" + OK
    peer.pdu_reply = modem.pdu_reply  # type: ignore[assignment]  # the peer calls callables
    try:
        async with engine:
            yield modem
    finally:
        peer.hangup()
        await port.close()


@dataclass
class Reply:
    """A message on the requester's response topic."""

    payload: dict[str, Any]
    correlation: bytes | None


@dataclass
class Requester:
    """An MQTT 5 client that sends commands and collects answers on its response topic."""

    client: aiomqtt.Client
    reply_topic: str
    replies: list[Reply] = field(default_factory=list)

    async def send(
        self,
        name: str,
        body: bytes | dict[str, Any],
        *,
        correlation: bytes | None = None,
        respond: bool = True,
        topic: str | None = None,
        response_topic: str | None = None,
    ) -> None:
        """Publish cmd/<name> (QoS 1), with the response topic unless `respond` is off."""
        props = Properties(PacketTypes.PUBLISH)
        if respond:
            props.ResponseTopic = self.reply_topic if response_topic is None else response_topic
        if correlation is not None:
            props.CorrelationData = correlation
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        await self.client.publish(topic or f"{BASE}/cmd/{name}", payload, qos=1, properties=props)

    async def reply(self, correlation: bytes, within: float = 8.0) -> Reply:
        """The answer carrying this correlation data."""
        async with asyncio.timeout(within):
            while True:
                for r in self.replies:
                    if r.correlation == correlation:
                        return r
                await asyncio.sleep(0.01)


async def collect_replies(requester: Requester) -> None:
    """Record the answers arriving on the requester's response topic (a task)."""
    try:
        async for m in requester.client.messages:
            if m.topic.value != requester.reply_topic:
                continue
            corr = getattr(m.properties, "CorrelationData", None) if m.properties else None
            payload = m.payload if isinstance(m.payload, bytes) else b""
            requester.replies.append(Reply(json.loads(payload), bytes(corr) if corr else None))
    except aiomqtt.MqttError:
        return  # the broker went away (a test killed it): no more replies


@dataclass
class Gateway:
    """Outbox, uplink, command store and runner, wired as the daemon does, plus observers."""

    config: Config
    outbox: Outbox
    store: CommandStore
    runner: CommandRunner
    uplink: Uplink
    modem: Modem
    seen: Received  # everything the device published (a subscriber on tgw/dev1/#)
    requester: Requester

    def progress(self, sms_id: str) -> list[dict[str, Any]]:
        """The SMS_TX records published for this SMS, in arrival order."""
        return self.seen.payloads(f"/sms/tx/{sms_id}")

    def states(self, sms_id: str) -> list[str]:
        """The states reported for this SMS, in arrival order."""
        return [p["state"] for p in self.progress(sms_id)]

    def results(self, name: str) -> list[dict[str, Any]]:
        """The CMD_RESULT records published on cmd-result/<name>."""
        return self.seen.payloads(f"{BASE}/cmd-result/{name}")

    async def wait_state(self, sms_id: str, state: str, within: float = 8.0) -> dict[str, Any]:
        """The first progress record with `state`, waiting for it."""
        await self.seen.wait_for(lambda _: state in self.states(sms_id), within)
        return next(p for p in self.progress(sms_id) if p["state"] == state)

    async def wait(self, cond: Callable[[], bool], within: float = 8.0) -> None:
        """Poll `cond` until it holds."""
        await wait_until(cond, within)


@contextlib.asynccontextmanager
async def gateway(
    tmp_path: Path,
    broker_port: int,
    *,
    run_runner: bool = True,
    mqtt: dict[str, Any] | None = None,
    **commands: Any,
) -> AsyncIterator[Gateway]:
    """The whole downlink path against a real broker and a modem on a pty.

    `mqtt` overrides the daemon's [mqtt] settings; the requester speaks MQTT 5 regardless.
    """
    config = make_config(tmp_path, broker_port, mqtt=mqtt, **commands)
    async with (
        Outbox(config.outbox) as outbox,
        CommandStore(config.commands.path) as store,
        modem_on_pty() as modem,
        subscriber(broker_port, f"{BASE}/#", qos=0) as seen,
        aiomqtt.Client(
            "127.0.0.1", broker_port, protocol=aiomqtt.ProtocolVersion.V5, timeout=5
        ) as client,
    ):
        runner = CommandRunner(config, store, outbox, modem.driver)
        uplink = Uplink(config, outbox, events=lambda e: None, on_command=runner.handle)
        runner.responder = uplink
        requester = Requester(client, f"ops/replies/{os.getpid()}-{id(client)}")
        await client.subscribe(requester.reply_topic, qos=1)
        gw = Gateway(config, outbox, store, runner, uplink, modem, seen, requester)
        # The uplink reports CONNECTED before its subscription to cmd/# is in place: a command
        # sent in between is lost. A retained command, left before the uplink connects, comes
        # with the subscription (and is ignored, as retained commands are): once it is counted,
        # the daemon hears commands.
        await client.publish(READY_TOPIC, b"{}", qos=1, retain=True)
        async with running(uplink, outbox), asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(collect_replies(requester), name="requester")]
            if run_runner:
                tasks.append(tg.create_task(runner.run(), name="command-runner"))
            try:
                await wait_until(lambda: uplink.state is LinkState.CONNECTED)
                await wait_until(lambda: uplink.counters.commands_ignored >= 1)
                yield gw
            finally:
                for t in tasks:
                    t.cancel()
