"""The MQTT adapter: the only importer of the MQTT library, public API only; persistent session,
empty and oversized commands, the advertised maximum packet size."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import aiomqtt
import pytest
import structlog

from terminal_gw.outbox import Outbox
from terminal_gw.uplink import CommandMeta, LinkState, Uplink
from terminal_gw.uplink.mqtt import LinkError, LinkOptions, MqttLink, Refusal
from tests.broker import Broker
from tests.test_uplink_session import (
    BASE,
    answered,
    first_contact,
    ping,
    until_answered,
    write_config,
)
from tests.uplink_support import DEVICE, make_config, running, subscriber, wait_until

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "terminal_gw"
MQTT_LIBRARIES = ("paho", "aiomqtt")
ADAPTER = PACKAGE / "uplink" / "mqtt.py"


def _imports_mqtt(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        if any(n.split(".")[0] in MQTT_LIBRARIES for n in names):
            return True
    return False


def _private_uses(tree: ast.AST) -> list[str]:
    """`x._name` where x is not the module's own `self`/`cls` (dunders are public protocol)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        attr = node.attr
        if not attr.startswith("_") or (attr.startswith("__") and attr.endswith("__")):
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id in {"self", "cls"}:
            continue
        found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_only_the_adapter_uses_the_mqtt_library_and_no_private_attribute() -> None:
    importers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        if _imports_mqtt(tree):
            importers.append(path.relative_to(REPO).as_posix())
            assert _private_uses(tree) == [], f"{path}: private attributes used"
    assert importers == ["terminal_gw/uplink/mqtt.py"]


def test_the_private_attribute_check_catches_what_the_old_uplink_did() -> None:
    old = "client._client._sock_close()\nmisc = client._misc_task\nself._client.on_publish = f\n"
    found = _private_uses(ast.parse(old))
    assert len(found) == 3, found


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_empty_and_retained_commands_are_ignored(
    tmp_path: Path, broker: Broker, protocol: str
) -> None:
    config = make_config(tmp_path, broker.port, mqtt={"protocol": protocol})
    got: list[tuple[str, bytes]] = []

    async def on_command(name: str, payload: bytes, meta: CommandMeta) -> None:
        got.append((name, payload))

    async with Outbox(config.outbox) as outbox:
        uplink = Uplink(config, outbox, events=lambda e: None, on_command=on_command)
        async with aiomqtt.Client("127.0.0.1", broker.port, timeout=5) as client:
            await client.publish(f"tgw/{DEVICE}/cmd/ping", b'{"id":"stale"}', qos=1, retain=True)
            async with running(uplink, outbox):
                await wait_until(lambda: uplink.state is LinkState.CONNECTED)
                # Clearing the retained command: delivered live as an empty, non-retained message.
                await client.publish(f"tgw/{DEVICE}/cmd/ping", b"", qos=1, retain=True)
                await client.publish(f"tgw/{DEVICE}/cmd/ping", b"", qos=1)
                await client.publish(f"tgw/{DEVICE}/cmd/ping", b'{"id":"live"}', qos=1)
                await wait_until(lambda: len(got) >= 1)
                await wait_until(lambda: uplink.counters.commands_ignored >= 3)
    assert got == [("ping", b'{"id":"live"}')]
    assert uplink.counters.commands == 1
    assert uplink.counters.commands_ignored == 3  # the stale retained one and two empty ones


async def test_mqtt311_cuts_a_command_over_the_limit_at_once(
    tmp_path: Path, broker: Broker
) -> None:
    """MQTT 3.1.1 cannot advertise a size limit: an oversized command reaches the handler cut to
    the limit plus one byte (enough to refuse it as too large) and is not stored whole."""
    config = make_config(
        tmp_path, broker.port, mqtt={"protocol": "3.1.1", "max_command_bytes": 2048}
    )
    got: list[bytes] = []

    async def on_command(name: str, payload: bytes, meta: CommandMeta) -> None:
        got.append(payload)

    async with Outbox(config.outbox) as outbox:
        uplink = Uplink(config, outbox, events=lambda e: None, on_command=on_command)
        async with running(uplink, outbox), aiomqtt.Client("127.0.0.1", broker.port) as client:
            await wait_until(lambda: uplink.state is LinkState.CONNECTED)
            await client.publish(f"tgw/{DEVICE}/cmd/ping", b"x" * 200_000, qos=1)
            await client.publish(f"tgw/{DEVICE}/cmd/ping", b"{}", qos=1)
            await wait_until(lambda: len(got) >= 2)
    assert [len(p) for p in got] == [2049, 2]
    assert uplink.counters.commands_over_limit == 1


async def test_mqtt5_broker_never_delivers_a_command_over_max_command_bytes(
    tmp_path: Path, broker: Broker
) -> None:
    config = make_config(tmp_path, broker.port, mqtt={"max_command_bytes": "4KiB"})
    got: list[bytes] = []

    async def on_command(name: str, payload: bytes, meta: CommandMeta) -> None:
        got.append(payload)

    async with Outbox(config.outbox) as outbox:
        uplink = Uplink(config, outbox, events=lambda e: None, on_command=on_command)
        async with (
            running(uplink, outbox),
            aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client,
        ):
            await wait_until(lambda: uplink.state is LinkState.CONNECTED)
            await client.publish(f"tgw/{DEVICE}/cmd/ping", b"x" * 5000, qos=1)
            await client.publish(f"tgw/{DEVICE}/cmd/ping", b"y" * 3000, qos=1)
            await wait_until(lambda: len(got) >= 1)
            await asyncio.sleep(0.2)  # the larger one, sent first, would have come by now
    assert got == [b"y" * 3000]
    assert uplink.counters.commands_over_limit == 0
    assert uplink.state is LinkState.STOPPED


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_a_100_mb_command_does_not_reach_the_daemon(tmp_path: Path, broker: Broker) -> None:
    """The daemon as a process: a 100 MB publish on its command topic is dropped by the broker
    (the daemon advertised 64 KiB), the daemon keeps answering and its memory stays small."""
    cfg = write_config(tmp_path, broker.port, "none", "5")
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before any await
        [sys.executable, "-m", "terminal_gw", "run", "--config", str(cfg)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        async with (
            subscriber(broker.port, f"{BASE}/#", qos=1) as got,
            aiomqtt.Client(
                "127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5, timeout=60
            ) as ops,
        ):
            await first_contact(got, ops)
            before = _peak_rss_kib(proc.pid)
            big = json.dumps({"id": "big", "pad": "x" * (100 * 1024 * 1024)})
            await ops.publish(f"{BASE}/cmd/ping", big, qos=1)
            del big
            await ping(ops, "after")
            await until_answered(got, "after", 60)
            peak = _peak_rss_kib(proc.pid)
            assert answered(got)["big"] == 0
        print(f"daemon peak RSS: {before // 1024} MiB before, {peak // 1024} MiB after 100 MB")
        assert peak - before < 20 * 1024, (before, peak)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


async def test_stop_does_not_wait_for_a_tls_handshake_that_never_ends(
    tmp_path: Path, broker: Broker
) -> None:
    """paho's connect (TCP and TLS handshake) blocks a worker thread: stop() gives it up at once."""
    config = make_config(tmp_path, broker.port, mqtt={"publish_timeout_s": 30.0, "tls": True})
    assert broker.proc is not None
    os.kill(broker.proc.pid, signal.SIGSTOP)  # the kernel accepts; no ServerHello ever comes
    try:
        async with Outbox(config.outbox) as outbox:
            uplink = Uplink(config, outbox, events=lambda e: None)
            async with asyncio.TaskGroup() as tg:
                run = tg.create_task(uplink.run())
                await asyncio.sleep(0.3)
                assert uplink.state is LinkState.CONNECTING
                start = time.monotonic()
                await uplink.stop(2.0)
                assert run.done()
                assert time.monotonic() - start < 1.0
                assert uplink.state is LinkState.STOPPED
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)


def _link(port: int, protocol: str) -> MqttLink:
    options = LinkOptions(
        host="127.0.0.1",
        port=port,
        client_id=f"adapter-{protocol}",
        protocol=protocol,
        keepalive_s=30,
        timeout_s=5.0,
        inflight=100,
        session_expiry_s=0,
        max_packet_bytes=65536,
        will=None,
    )
    return MqttLink(options, on_message=lambda m: None, log=structlog.get_logger())


def _data_segments_out(link: MqttLink) -> int:
    """Segments carrying data the kernel sent on the link's socket (tcp_info, Linux 4.6+)."""
    sock = link._client.socket()
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 160)
    segments: int = struct.unpack_from("=I", raw, 156)[0]
    return segments


class _Acks:
    """publish_nowait's callback: what came back for each key."""

    def __init__(self, expected: int) -> None:
        self.got: dict[int, Refusal | None] = {}
        self.errors: list[LinkError] = []
        self.expected = expected
        self.all = asyncio.Event()

    def __call__(self, key: int, refusal: Refusal | None, error: LinkError | None) -> None:
        if error is not None:
            self.errors.append(error)
        assert key not in self.got, f"key {key} resolved twice"
        self.got[key] = refusal
        if len(self.got) >= self.expected:
            self.all.set()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_window_published_in_one_pass_leaves_in_one_write_each_puback_to_its_key(
    broker: Broker, protocol: str
) -> None:
    """16 publishes queued without awaiting in between go out together (one segment on
    loopback, not one each: fewer headers on a link paid by the byte), in order, topic aliases
    and all, and every PUBACK reaches the callback with its own key."""
    link = _link(broker.port, protocol)
    acks = _Acks(16)
    async with subscriber(broker.port, "adapter/#", qos=1) as got:
        await link.connect()
        try:
            before = _data_segments_out(link)
            for key in range(16):
                link.publish_nowait(
                    f"adapter/{key % 3}", b'{"n":%d}' % key, alias=True, done=acks, key=key
                )
            async with asyncio.timeout(5):
                await acks.all.wait()
            sent = _data_segments_out(link) - before
            await got.wait_for(lambda g: len(g.messages) >= 16)
        finally:
            await link.disconnect(1.0)
    assert acks.errors == []
    assert acks.got == dict.fromkeys(range(16))
    assert [(t, p) for t, p, _ in got.messages] == [
        (f"adapter/{k % 3}", b'{"n":%d}' % k) for k in range(16)
    ]
    assert 1 <= sent <= 2, sent


async def test_publishes_larger_than_the_socket_buffer_all_arrive(broker: Broker) -> None:
    """Megabytes queued at once: the socket takes part, the rest goes as it drains."""
    link = _link(broker.port, "5")
    payloads = [bytes([65 + k]) * (1024 * 1024) for k in range(12)]
    acks = _Acks(len(payloads))
    async with subscriber(broker.port, "adapter/big", qos=1) as got:
        await link.connect()
        try:
            for key, payload in enumerate(payloads):
                link.publish_nowait("adapter/big", payload, done=acks, key=key)
            async with asyncio.timeout(20):
                await acks.all.wait()
            await got.wait_for(lambda g: len(g.messages) >= len(payloads), within=20)
        finally:
            await link.disconnect(1.0)
    assert acks.errors == []
    assert acks.got == dict.fromkeys(range(len(payloads)))
    assert [p for _, p, _ in got.messages] == payloads


async def test_the_end_of_the_link_reaches_every_publish_in_flight(broker: Broker) -> None:
    """The broker killed with publishes unacknowledged: each callback hears of it, once."""
    link = _link(broker.port, "5")
    acks = _Acks(8)
    await link.connect()
    assert broker.proc is not None
    os.kill(broker.proc.pid, signal.SIGSTOP)  # no PUBACK comes
    try:
        for key in range(8):
            link.publish_nowait("adapter/lost", b"x", done=acks, key=key)
        await asyncio.sleep(0.05)
        link.abort("test")
        async with asyncio.timeout(5):
            await acks.all.wait()
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
    assert sorted(acks.got) == list(range(8))
    assert len(acks.errors) == 8
    with pytest.raises(LinkError):
        link.publish_nowait("adapter/lost", b"x", done=acks, key=99)


async def test_after_read_sends_the_next_message_in_the_read_that_brought_its_puback(
    broker: Broker,
) -> None:
    """`after_read` runs once a read's PUBACKs were handled: a publish made there goes out at
    once (no wake-up of another task, no pass of the event loop in between), so one window
    slot carries a whole stream, each message sent from the read of the previous PUBACK."""
    link = _link(broker.port, "5")
    n = 50
    acks = _Acks(n)
    order: list[int] = []
    sent = [0]

    def next_one() -> None:
        # One in flight at a time: the next goes when the previous is acknowledged.
        if sent[0] < n and len(acks.got) == sent[0]:
            key = sent[0]
            sent[0] += 1
            order.append(key)
            link.publish_nowait("adapter/chain", b"%d" % key, done=acks, key=key)

    async with subscriber(broker.port, "adapter/chain", qos=1) as got:
        await link.connect()
        try:
            link.after_read = next_one
            next_one()
            link.flush()
            async with asyncio.timeout(10):
                await acks.all.wait()
            await got.wait_for(lambda g: len(g.messages) >= n)
        finally:
            link.after_read = None
            await link.disconnect(1.0)
    assert acks.errors == []
    assert order == list(range(n))
    assert [p for _, p, _ in got.messages] == [b"%d" % k for k in range(n)]
