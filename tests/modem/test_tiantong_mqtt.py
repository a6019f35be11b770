"""SMS in end to end: simulator over a real pty -> driver -> outbox -> uplink -> a real mosquitto
subscriber; and a driver SIGKILLed between storing a message and deleting it from the SIM.

Run as a script (`python -m tests.modem.test_tiantong_mqtt child ...`) this module is the child
process of the kill test: a driver and an outbox that kill themselves right after the put.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from terminal_gw.config import ModemConfig
from terminal_gw.models import Payload, SmsReceived
from terminal_gw.modem.tiantong import ModemState, TiantongModem
from terminal_gw.outbox import Outbox
from terminal_gw.sim.modem import ModemSimulator
from terminal_gw.topics import Topics
from terminal_gw.transport.pty import PtyDevice
from terminal_gw.uplink import Uplink
from tests.broker import Broker
from tests.conftest import REPO
from tests.modem.test_tiantong_rig import FAST
from tests.uplink_support import make_config, running, subscriber, wait_until

UCS2_TEXT = "天通一号卫星短信：风力七级，请注意安全。"
LONG_TEXT = "Weather bulletin: gale warning for sea area 7, wind NE 7-8, waves 4m. " * 5


async def test_sms_reach_a_real_subscriber(tmp_path: Path, broker: Broker) -> None:
    config = make_config(tmp_path, broker.port)
    base = f"{config.mqtt.prefix}/{config.device.id}"
    with PtyDevice(tmp_path / "tiantong0") as device:
        sim = ModemSimulator(device)
        modem_cfg = ModemConfig(port=device.path, **FAST)
        async with (
            Outbox(config.outbox) as outbox,
            subscriber(broker.port, f"{base}/#") as got,
        ):
            uplink = Uplink(config, outbox, events=lambda e: None)
            modem = TiantongModem(modem_cfg, outbox, topics=Topics.of_config(config))
            async with running(uplink, outbox), asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(sim.run(), name="sim")]
                tasks.append(tg.create_task(modem.run(), name="modem"))
                try:
                    await wait_until(lambda: modem.state is ModemState.OK)
                    sim.deliver("+8613912345678", "single part, GSM 7-bit")
                    sim.deliver("+8613912345678", LONG_TEXT)
                    sim.deliver("+8613912345679", UCS2_TEXT)
                    await got.wait_for(lambda r: len(r.payloads("/sms/rx")) == 3)
                    await got.wait_for(lambda r: bool(r.payloads("/modem/status")))
                    await wait_until(lambda: not sim.storage)
                    # A subscriber that comes later gets the modem status: it is retained.
                    async with subscriber(broker.port, f"{base}/modem/status") as late:
                        await late.wait_for(lambda r: bool(r.messages))
                finally:
                    for t in tasks:
                        t.cancel()
    sms = got.payloads("/sms/rx")
    assert sorted(s["text"] for s in sms) == sorted(
        ["single part, GSM 7-bit", LONG_TEXT, UCS2_TEXT]
    )
    long = next(s for s in sms if s["text"] == LONG_TEXT)
    assert (long["parts"], long["complete"]) == (3, True)
    ucs2 = next(s for s in sms if s["text"] == UCS2_TEXT)
    assert (ucs2["encoding"], ucs2["from"]) == ("ucs2", "+8613912345679")
    assert all(s["class"] == "SMS" for s in sms)
    topic, _, retain = late.messages[0]
    assert (topic, retain) == (f"{base}/modem/status", True)
    assert late.payloads()[0]["imei"] == sim.imei
    assert late.payloads()[0]["class"] == "MODEM"


# ---------------------------------------------------------------------------
# SIGKILL between the put and the delete.


class _KillAfterPut:
    """An outbox that SIGKILLs its own process as soon as an SMS is durably stored."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    async def put(
        self, topic: str, payload: Payload, *, retain: bool = False, sync: bool | None = None
    ) -> None:
        await self.outbox.put(topic, payload, retain=retain, sync=sync)
        if isinstance(payload, SmsReceived):
            print(payload.id, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


async def _child(port: str, db: Path) -> None:
    config = make_config(db.parent, 1, outbox={"path": str(db)})
    async with Outbox(config.outbox) as outbox:
        modem = TiantongModem(
            ModemConfig(port=port, **FAST), _KillAfterPut(outbox), topics=Topics("tgw", "dev1")
        )
        async with asyncio.timeout(20):
            await modem.run()


async def _run_child(port: str, db: Path) -> tuple[int | None, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.modem.test_tiantong_mqtt",
        "child",
        port,
        str(db),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(8):
            out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = out.decode().strip().splitlines()  # log lines first, the stored id last
    return proc.returncode, lines[-1] if lines else ""


async def test_sigkill_between_store_and_delete_loses_nothing_and_repeats_the_id(
    tmp_path: Path, broker: Broker
) -> None:
    config = make_config(tmp_path, broker.port)
    base = f"{config.mqtt.prefix}/{config.device.id}"
    with PtyDevice(tmp_path / "tiantong0") as device:
        sim = ModemSimulator(device)
        sim.cnmi = (2, 1, 0, 0, 0)
        sim.deliver("+8613912345678", LONG_TEXT)  # three parts on the SIM
        sim.deliver("+8613912345670", UCS2_TEXT)
        assert len(sim.storage) == 4
        async with asyncio.TaskGroup() as tg:
            sim_task = tg.create_task(sim.run(), name="sim")
            try:
                # First run: killed right after the first message is stored.
                code, first_id = await _run_child(device.path, config.outbox.path)
                assert code == -signal.SIGKILL
                assert first_id
                assert len(sim.storage) == 4  # nothing deleted: the kill came before AT+CMGD
                assert not any(c.startswith("AT+CMGD") for c in sim.commands)
                # Restart (in this process, to completion), and publish what the outbox holds.
                async with (
                    Outbox(config.outbox) as outbox,
                    subscriber(broker.port, f"{base}/sms/#") as got,
                ):
                    modem = TiantongModem(
                        ModemConfig(port=device.path, **FAST),
                        outbox,
                        topics=Topics.of_config(config),
                    )
                    uplink = Uplink(config, outbox, events=lambda e: None)
                    async with running(uplink, outbox), asyncio.TaskGroup() as inner:
                        task = inner.create_task(modem.run(), name="modem")
                        try:
                            await wait_until(lambda: not sim.storage)
                            await got.wait_for(lambda r: len(r.payloads("/sms/rx")) == 3)
                        finally:
                            task.cancel()
            finally:
                sim_task.cancel()
    sms = got.payloads("/sms/rx")
    ids = [s["id"] for s in sms]
    # Three deliveries: the one stored before the kill, and both messages after the restart.
    # The repeat carries the same id, so a consumer keeps exactly the two messages.
    assert ids.count(first_id) == 2
    assert len(set(ids)) == 2
    assert sorted({s["id"]: s["text"] for s in sms}.values()) == sorted([LONG_TEXT, UCS2_TEXT])


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["child"])
    parser.add_argument("port")
    parser.add_argument("db", type=Path)
    args: Any = parser.parse_args(argv)
    asyncio.run(_child(args.port, args.db))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
