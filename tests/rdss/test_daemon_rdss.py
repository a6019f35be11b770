"""The daemon with an RDSS terminal over a real pty and a real broker: messages in (both
dialects, every mode, Chinese text), bds/send by MQTT (paced, injection-proof, refusals
reported), the retained rdss/status and the health summary; and a SIGKILL right after a
received message was stored: it is published after the restart, once, with one id.

Run as a script (`python -m tests.rdss.test_daemon_rdss child ...`) this module is the child of
the kill test: a driver and an outbox that kill their process right after the put.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from terminal_gw.config import RdssConfig
from terminal_gw.daemon import Daemon
from terminal_gw.models import BdsReceived, Payload
from terminal_gw.outbox import Outbox
from terminal_gw.rdss.driver import RdssDriver
from terminal_gw.rdss.store import RdssStore
from terminal_gw.sim.rdss import RdssSimulator
from terminal_gw.topics import Topics
from terminal_gw.transport.capture import read_capture
from terminal_gw.transport.pty import PtyDevice
from terminal_gw.uplink import Uplink
from tests.broker import Broker
from tests.conftest import REPO
from tests.rdss.rig import FAST
from tests.test_daemon import Subscriber, make_config
from tests.uplink_support import make_config as uplink_config
from tests.uplink_support import running, subscriber
from tests.waiting import wait_until

BASE = "tgw/vessel-t"
SAFE_LINE = re.compile(rb"\$CC[A-Z]{3}(,[0-9A-Z.]*)*\*[0-9A-F]{2}")


async def _retained(port: int, topic: str) -> dict[str, Any]:
    async with aiomqtt.Client("127.0.0.1", port, identifier="late-reader") as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(10):
            async for msg in client.messages:
                assert msg.retain
                return dict(json.loads(bytes(msg.payload)))  # type: ignore[arg-type]
    raise AssertionError("no retained message")


@pytest.mark.parametrize("dialect", ["2.1", "bds3"])
async def test_messages_in_and_paced_sends_by_command(
    tmp_path: Path, broker: Broker, dialect: str
) -> None:
    device = PtyDevice(tmp_path / "dev" / "rdss0")
    sim = RdssSimulator(device, dialect=dialect, interval_s=2)  # type: ignore[arg-type]
    config = make_config(
        tmp_path,
        "none",
        broker.port,
        rdss={"port": device.path, **FAST, "record": True},
        record={"dir": str(tmp_path / "captures")},
    )
    daemon = Daemon(config)
    sub = Subscriber(broker.port, f"{BASE}/#")
    ready = asyncio.Event()
    bad_text = 'a,b*c$d\re\nf"'
    try:
        async with asyncio.TaskGroup() as tg:
            sub_task = tg.create_task(sub.run(ready), name="subscriber")
            await ready.wait()
            sim_task = tg.create_task(sim.run(), name="rdss-sim")
            daemon_task = tg.create_task(daemon.run(handle_signals=False), name="daemon")
            await sub.wait_for(
                lambda m: m[0] == f"{BASE}/rdss/status" and m[1]["state"] == "ok", timeout=20
            )
            sim.deliver("0166166", text="船舶状态正常，请回复当前位置。", mode="chinese")
            sim.deliver("0166166", data=bytes.fromhex("2458"), mode="code")
            sim.deliver("0179773", text="hello 北斗", mode="mixed")
            await sub.wait_for(lambda _: len(sub_rx(sub)) == 3)

            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="dash") as dash:
                for command in (
                    {"id": "m-1", "to": "0166166", "text": bad_text},
                    {
                        "id": "m-2",
                        "to": "166166",
                        "data": "0102AB",
                        "mode": "code",
                        "class": "normal",
                    },
                    {"id": "m-3", "to": "0166166,1\r\n$CCTXA", "text": "x"},
                    {"id": "m-4", "to": "0166166", "data": "31*0"},
                    {"id": "m$5", "to": "0166166", "text": "x"},
                ):
                    await dash.publish(f"{BASE}/cmd/bds/send", json.dumps(command), qos=1)
            await sub.wait_for(
                lambda m: m[0] == f"{BASE}/bds/tx/m-2" and m[1]["state"] == "sent", timeout=20
            )
            await sub.wait_for(
                lambda _: len([m for m in sub.messages if "/cmd-result/" in m[0]]) == 5
            )
            health = daemon.health_summary()
            daemon.supervisor.stop_requested.set()
            await daemon_task
            sim_task.cancel()
            sub_task.cancel()
        status = await _retained(broker.port, f"{BASE}/rdss/status")
    finally:
        device.close()

    rx = sub_rx(sub)
    assert [(m["mode"], m.get("text"), m.get("data")) for m in rx] == [
        ("chinese", "船舶状态正常，请回复当前位置。", None),
        ("code", None, "2458"),
        ("mixed", "hello 北斗", None),
    ]
    assert all(m["class"] == "BDS_RX" and m["dialect"] == dialect for m in rx)

    def states(bds_id: str) -> list[str]:
        return [m[1]["state"] for m in sub.messages if m[0] == f"{BASE}/bds/tx/{bds_id}"]

    assert states("m-1") == ["queued", "sending", "sent"]
    assert states("m-2") == ["queued", "waiting_interval", "sending", "sent"]
    first, second = sim.sent
    assert second.at - first.at >= 2.0 - 0.05  # the card's interval, kept by the daemon
    assert sim.refusals == []
    # The text went as hex: not one of its separators reached the port raw.
    assert bytes.fromhex(first.content)[1:].decode("gb2312") == bad_text
    assert second.content == "0102AB"
    for line in sim.commands:
        assert SAFE_LINE.fullmatch(line), line
    results = {m[1].get("command_id"): m[1] for m in sub.messages if "/cmd-result/" in m[0]}
    assert results["m-1"]["ok"]
    assert results["m-2"]["ok"]
    assert results["m-3"]["code"] == "invalid_number"
    assert results["m-4"]["code"] == "invalid"
    assert results[None]["code"] == "invalid"  # the id itself was refused: no id to answer
    assert states("m-3") == ["failed"]
    assert states("m-4") == ["failed"]
    # Status: retained, with the card and the pacing; the health summary carries it too.
    assert status["class"] == "RDSS"
    assert status["dialect"] == dialect
    assert status["card"]["user_id"] == "0242286"
    assert status["card"]["interval_s"] == 2
    assert status["sends_today"] == 2
    assert status["last_send"]
    assert status["next_send"]
    assert health["gauges"]["rdss"].startswith("ok: dialect " + dialect)
    assert health["counters"]["rdss"]["rx"] == 3
    assert health["gauges"]["rdss_sends_today"] == 2
    # The RDSS port was recorded, both directions.
    (capture,) = (tmp_path / "captures").iterdir()
    chunks = list(read_capture(capture))
    assert {c.port for c in chunks} == {"rdss"}
    assert b"$CCT" in b"".join(c.data for c in chunks if c.direction == ">")
    assert b"$BDT" in b"".join(c.data for c in chunks if c.direction == "<")
    # Replaying the capture plays the terminal: the same messages come out of the driver.
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "terminal_gw", "replay", "--port", "rdss", "--jsonl"),
        str(capture),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    replayed = [json.loads(line) for line in stdout.decode().splitlines()]
    replayed_rx = [r["payload"] for r in replayed if r["topic"].endswith("/bds/rx")]
    assert [(m["mode"], m.get("text"), m.get("data"), m["raw"]) for m in replayed_rx] == [
        (m["mode"], m.get("text"), m.get("data"), m["raw"]) for m in rx
    ]
    last = [r["payload"] for r in replayed if r["topic"].endswith("/rdss/status")][-1]
    assert last["dialect"] == dialect
    assert last["card"]["user_id"] == "0242286"


def sub_rx(sub: Subscriber) -> list[dict[str, Any]]:
    return [m[1] for m in sub.messages if m[0] == f"{BASE}/bds/rx"]


# ---------------------------------------------------------------------------
# SIGKILL right after a received message was stored.


class _KillAfterPut:
    """An outbox that SIGKILLs its own process as soon as a short message is durably stored."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    async def put(
        self, topic: str, payload: Payload, *, retain: bool = False, sync: bool | None = None
    ) -> None:
        await self.outbox.put(topic, payload, retain=retain, sync=sync)
        if isinstance(payload, BdsReceived):
            print(payload.id, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


async def _child(port: str, db: Path) -> None:
    config = uplink_config(db.parent, 1, outbox={"path": str(db)})
    async with Outbox(config.outbox) as outbox:
        driver = RdssDriver(
            RdssConfig(port=port, dialect="2.1", **FAST),
            _KillAfterPut(outbox),
            RdssStore(db.parent / "rdss.db"),
            topics=Topics("tgw", "dev1"),
            state_dir=db.parent,
        )
        await driver.open()
        async with asyncio.timeout(20):
            await driver.run()


async def test_sigkill_right_after_a_message_is_read_publishes_it_once_after_restart(
    tmp_path: Path, broker: Broker
) -> None:
    config = uplink_config(tmp_path, broker.port)
    base = f"{config.mqtt.prefix}/{config.device.id}"
    with PtyDevice(tmp_path / "rdss0") as device:
        sim = RdssSimulator(device)
        async with asyncio.TaskGroup() as tg:
            sim_task = tg.create_task(sim.run(), name="sim")
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.rdss.test_daemon_rdss",
                "child",
                device.path,
                str(config.outbox.path),
                cwd=REPO,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                await wait_until(
                    lambda: any(c.startswith(b"$CCICA") for c in sim.commands),
                    timeout=20,
                    what="the child asked for the card",
                )
                sim.deliver("0166166", text="救援请求：船体进水。", mode="chinese")
                async with asyncio.timeout(20):
                    out, _ = await proc.communicate()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            assert proc.returncode == -signal.SIGKILL
            stored_id = out.decode().strip().splitlines()[-1]
            # Restart: the outbox publishes what it holds; the driver runs again beside it.
            async with (
                Outbox(config.outbox) as outbox,
                subscriber(broker.port, f"{base}/bds/#") as got,
            ):
                driver = RdssDriver(
                    RdssConfig(port=device.path, dialect="2.1", **FAST),
                    outbox,
                    RdssStore(tmp_path / "rdss.db"),
                    topics=Topics.of_config(config),
                    state_dir=tmp_path,
                )
                await driver.open()
                uplink = Uplink(config, outbox, events=lambda e: None)
                async with running(uplink, outbox), asyncio.TaskGroup() as inner:
                    task = inner.create_task(driver.run(), name="rdss")
                    try:
                        await got.wait_for(lambda r: len(r.payloads("/bds/rx")) == 1)
                        await wait_until(lambda: driver.state == "ok", what="driver back")
                        await wait_until(lambda: outbox.depth == 0, what="outbox drained")
                    finally:
                        task.cancel()
                await driver.close()
            sim_task.cancel()
    (rx,) = got.payloads("/bds/rx")
    assert rx["id"] == stored_id
    assert rx["text"] == "救援请求：船体进水。"


async def test_faults_through_the_daemon_no_beams_unplug_no_card(
    tmp_path: Path, broker: Broker
) -> None:
    device = PtyDevice(tmp_path / "dev" / "rdss0")
    sim = RdssSimulator(device, dialect="bds3", interval_s=1)
    config = make_config(
        tmp_path,
        "none",
        broker.port,
        rdss={"port": device.path, **FAST, "card_query_interval_s": 1.0, "status_interval_s": 1},
    )
    daemon = Daemon(config)
    sub = Subscriber(broker.port, f"{BASE}/#")
    ready = asyncio.Event()

    def status(state: str) -> Any:
        return lambda m: m[0] == f"{BASE}/rdss/status" and m[1]["state"] == state

    def tx(bds_id: str, state: str) -> Any:
        return lambda m: m[0] == f"{BASE}/bds/tx/{bds_id}" and m[1]["state"] == state

    try:
        async with asyncio.TaskGroup() as tg:
            sub_task = tg.create_task(sub.run(ready), name="subscriber")
            await ready.wait()
            sim.set_fault("nobeams")
            sim_task = tg.create_task(sim.run(), name="rdss-sim")
            daemon_task = tg.create_task(daemon.run(handle_signals=False), name="daemon")
            await sub.wait_for(status("ok"), timeout=20)
            await wait_until(lambda: daemon.rdss is not None and daemon.rdss.beams_ok() is False)
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="dash") as dash:
                await dash.publish(
                    f"{BASE}/cmd/bds/send",
                    json.dumps({"id": "f-1", "to": "4207733", "text": "测试"}),
                    qos=1,
                )
                await sub.wait_for(tx("f-1", "waiting_signal"), timeout=20)
                assert sim.sent == []
                sim.set_fault("nobeams", on=False)
                await sub.wait_for(tx("f-1", "sent"), timeout=20)
                # Unplug and back: the status says down, then ok again.
                sim.unplug(1.0)
                await sub.wait_for(status("down"), timeout=20)
                await wait_until(lambda: daemon.rdss is not None and daemon.rdss.state == "ok")
                await sub.wait_for(
                    lambda m: status("ok")(m) and m[1]["time"] > _last(sub, "down")["time"],
                    timeout=20,
                )
                # The card pulled: the next card answer says so, and a send fails.
                sim.set_fault("nocard")
                await sub.wait_for(status("no_card"), timeout=20)
                await dash.publish(
                    f"{BASE}/cmd/bds/send",
                    json.dumps({"id": "f-2", "to": "4207733", "text": "测试"}),
                    qos=1,
                )
                await sub.wait_for(tx("f-2", "failed"), timeout=20)
            daemon.supervisor.stop_requested.set()
            await daemon_task
            sim_task.cancel()
            sub_task.cancel()
    finally:
        device.close()
    waiting = next(m[1] for m in sub.messages if tx("f-1", "waiting_signal")(m))
    assert waiting["code"] == "no_signal"
    failed = next(m[1] for m in sub.messages if tx("f-2", "failed")(m))
    assert failed["code"] == "no_card"
    assert len(sim.sent) == 1
    events = [m[1]["kind"] for m in sub.messages if m[0] == f"{BASE}/event"]
    assert {"port_closed", "port_open", "rdss_no_card", "rdss_dialect"} <= set(events)


def _last(sub: Subscriber, state: str) -> dict[str, Any]:
    found = [m[1] for m in sub.messages if m[0] == f"{BASE}/rdss/status" and m[1]["state"] == state]
    return found[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["child"])
    parser.add_argument("port")
    parser.add_argument("db", type=Path)
    args = parser.parse_args()
    asyncio.run(_child(args.port, args.db))


if __name__ == "__main__":
    main()
