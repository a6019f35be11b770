"""Commands through the real Tiantong driver: a real mosquitto, the uplink and outbox, the
driver on a pty with the Tiantong simulator at the other end."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiomqtt

from terminal_gw.commands import CommandRunner, CommandStore
from terminal_gw.config import ModemConfig
from terminal_gw.modem.sms import SmsSubmit, decode_pdu
from terminal_gw.modem.tiantong import ModemState, TiantongModem
from terminal_gw.outbox import Outbox
from terminal_gw.sim.modem import ModemSimulator
from terminal_gw.topics import Topics
from terminal_gw.transport.pty import PtyDevice
from terminal_gw.uplink import LinkState, Uplink
from tests.broker import Broker
from tests.commands_support import (
    BASE,
    READY_TOPIC,
    Requester,
    collect_replies,
    make_config,
)
from tests.modem.test_tiantong_rig import FAST
from tests.uplink_support import running, subscriber, wait_until

TEXT = 'Ctrl-Z \x1a ESC \x1b CR \r LF \n quote " semicolon ; +++ 天通'


async def test_sms_send_and_modem_status_through_the_tiantong_driver(
    tmp_path: Path, broker: Broker
) -> None:
    config = make_config(tmp_path, broker.port, retry_count=20)
    with PtyDevice(tmp_path / "tiantong0") as device:
        sim = ModemSimulator(device)
        async with (
            Outbox(config.outbox) as outbox,
            CommandStore(config.commands.path) as store,
            subscriber(broker.port, f"{BASE}/#", qos=0) as seen,
            aiomqtt.Client(
                "127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5, timeout=5
            ) as client,
        ):
            modem = TiantongModem(
                ModemConfig(port=device.path, **FAST), outbox, topics=Topics.of_config(config)
            )
            runner = CommandRunner(config, store, outbox, modem)
            uplink = Uplink(config, outbox, events=lambda e: None, on_command=runner.handle)
            runner.responder = uplink
            requester = Requester(client, f"ops/replies/tt-{os.getpid()}")
            await client.subscribe(requester.reply_topic, qos=1)

            def states(sms_id: str) -> list[str]:
                return [p["state"] for p in seen.payloads(f"/sms/tx/{sms_id}")]

            await client.publish(READY_TOPIC, b"{}", qos=1, retain=True)  # see gateway()
            async with running(uplink, outbox), asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(sim.run(), name="sim"),
                    tg.create_task(modem.run(), name="modem"),
                    tg.create_task(runner.run(), name="command-runner"),
                    tg.create_task(collect_replies(requester), name="requester"),
                ]
                try:
                    await wait_until(lambda: modem.state is ModemState.OK)
                    await wait_until(lambda: uplink.state is LinkState.CONNECTED)
                    await wait_until(lambda: uplink.counters.commands_ignored >= 1)
                    await requester.send(
                        "sms/send", {"id": "tt1", "to": "+8613800138000", "text": TEXT},
                        correlation=b"1",
                    )  # fmt: skip
                    reply = await requester.reply(b"1")
                    await seen.wait_for(lambda _: "sent" in states("tt1"))

                    # Not registered: +CMS ERROR 331 is transient; sent once registered again.
                    sim.reg = 0
                    await requester.send(
                        "sms/send", {"id": "tt2", "to": "13800138000", "text": "again"}
                    )
                    await seen.wait_for(lambda _: states("tt2")[-1:] == ["queued"] and
                                        len(states("tt2")) > 2)  # fmt: skip
                    sim.reg = 1
                    await seen.wait_for(lambda _: "sent" in states("tt2"))

                    await requester.send("modem/status", {"id": "st"}, correlation=b"2")
                    status = await requester.reply(b"2")
                    await seen.wait_for(lambda r: bool(r.payloads(f"{BASE}/modem/status")))
                finally:
                    for t in tasks:
                        t.cancel()

    assert reply.payload["ok"] is True
    assert reply.payload["result"]["state"] == "queued"
    # The driver wrote the PDU; the simulator decoded it back to the same text.
    first, *rest = sim.sent
    decoded = decode_pdu(first.pdu)
    assert isinstance(decoded, SmsSubmit)
    assert decoded.text == TEXT
    assert str(decoded.recipient) == "+8613800138000"
    sent = next(p for p in seen.payloads("/sms/tx/tt1") if p["state"] == "sent")
    assert sent["mr"] == [first.mr]
    # The retry after 331: the failure was reported, then the message went out once.
    retry = next(p for p in seen.payloads("/sms/tx/tt2") if p.get("code") == "cms_error")
    assert (retry["error_code"], retry["reason"]) == (331, "no network service")
    assert [decode_pdu(s.pdu).text for s in rest] == ["again"]  # type: ignore[union-attr]
    assert status.payload["ok"] is True
    assert status.payload["result"] == {"polled": True}
