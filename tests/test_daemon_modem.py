"""The daemon with the Tiantong modem: SMS in to MQTT, SMS out from an MQTT command."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiomqtt

from terminal_gw.daemon import Daemon
from terminal_gw.modem.sms import decode_pdu
from terminal_gw.sim.modem import ModemSimulator
from terminal_gw.transport.capture import read_capture
from terminal_gw.transport.pty import PtyDevice
from tests.broker import Broker
from tests.test_daemon import Subscriber, make_config
from tests.waiting import wait_until


async def test_sms_in_and_out_through_the_daemon(tmp_path: Path, broker: Broker) -> None:
    device = PtyDevice(tmp_path / "dev" / "tiantong0")
    sim = ModemSimulator(device)
    config = make_config(
        tmp_path,
        "none",
        broker.port,
        modem={"port": device.path, "baud": 115200, "record": True},
        record={"dir": str(tmp_path / "captures")},
    )
    daemon = Daemon(config)
    sub = Subscriber(broker.port, "tgw/vessel-t/#")
    ready = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as tg:
            sub_task = tg.create_task(sub.run(ready), name="subscriber")
            await ready.wait()
            sim_task = tg.create_task(sim.run(), name="modem-sim")
            daemon_task = tg.create_task(daemon.run(handle_signals=False), name="daemon")
            await sub.wait_for(lambda m: m[0] == "tgw/vessel-t/modem/status")
            sim.deliver("+8613912345678", "船舶状态正常，请回复当前位置。")
            rx = await sub.wait_for(lambda m: m[0] == "tgw/vessel-t/sms/rx")
            assert rx[0][1]["from"] == "+8613912345678"
            assert rx[0][1]["text"] == "船舶状态正常，请回复当前位置。"
            # Deleted from the SIM once stored (the publish may overtake the AT+CMGD).
            await wait_until(lambda: not sim.storage)

            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="dash") as dash:
                await dash.publish(
                    "tgw/vessel-t/cmd/sms/send",
                    json.dumps({"id": "m-1", "to": "+8613800138000", "text": "ok;\x1a+++"}),
                    qos=1,
                )
            sent = await sub.wait_for(
                lambda m: m[0] == "tgw/vessel-t/sms/tx/m-1" and m[1]["state"] == "sent"
            )
            assert sent[0][1]["mr"]
            assert len(sim.sent) == 1
            pdu = decode_pdu(sim.sent[0].pdu)
            assert pdu.text == "ok;\x1a+++"
            daemon.supervisor.stop_requested.set()
            await daemon_task
            sim_task.cancel()
            sub_task.cancel()
    finally:
        device.close()
    states = [m[1]["state"] for m in sub.messages if m[0] == "tgw/vessel-t/sms/tx/m-1"]
    assert states[0] == "queued"
    assert states[-1] == "sent"
    # The modem tap recorded the session, both directions, in the capture format.
    (capture,) = (tmp_path / "captures").iterdir()
    chunks = list(read_capture(capture))
    written = b"".join(c.data for c in chunks if c.direction == ">")
    read = b"".join(c.data for c in chunks if c.direction == "<")
    assert {c.port for c in chunks} == {"modem"}
    assert b"AT+CMGS=" in written
    assert b"AT+CMGR=" in written
    assert b"+CMTI:" in read
