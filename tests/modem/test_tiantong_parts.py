"""Parts of a concatenated message delivered with +CMT (acknowledged, on no SIM) survive a
restart: a driver process SIGKILLed after acknowledging part 1, a new driver takes part 2 and
publishes the joined message.

Run as a script (`python -m tests.modem.test_tiantong_parts child PORT PARTS`) this module is
the child: a driver with the part table at PARTS, printing what it would store.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sqlite3
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from terminal_gw.config import ModemConfig
from terminal_gw.models import Payload, SmsReceived
from terminal_gw.modem.tiantong import ModemState, TiantongModem
from terminal_gw.sim.modem import ModemSimulator, deliver_pdus
from terminal_gw.transport.pty import PtyDevice
from tests.conftest import REPO
from tests.modem.test_tiantong_rig import FAST, TOPICS, Sink, wait_until

T0 = datetime(2026, 11, 25, 18, 30, 5, tzinfo=timezone(timedelta(hours=8)))
TEXT = "Gale warning for sea area 7: wind NE 7-8, waves 4 m, visibility poor. " * 4


class _PrintSink:
    async def put(
        self, topic: str, payload: Payload, *, retain: bool = False, sync: bool | None = None
    ) -> None:
        if isinstance(payload, SmsReceived):
            print(payload.to_json(), flush=True)


async def _child(port: str, parts: Path) -> None:
    modem = TiantongModem(
        ModemConfig(port=port, ack_cmt=True, **FAST),
        _PrintSink(),
        topics=TOPICS,
        parts_path=parts,
    )
    async with asyncio.timeout(30):
        await modem.run()


def _rows(parts: Path) -> int:
    with sqlite3.connect(parts) as db:
        return int(db.execute("SELECT count(*) FROM cmt_parts").fetchone()[0])


async def test_cmt_parts_survive_a_killed_driver(tmp_path: Path) -> None:
    parts_db = tmp_path / "state" / "sms_parts.db"
    pdus = deliver_pdus("+8613912345678", TEXT, timestamp=T0, ref=42)
    assert len(pdus) == 2
    with PtyDevice(tmp_path / "tiantong0") as device:
        sim = ModemSimulator(device)
        async with asyncio.TaskGroup() as tg:
            sim_task = tg.create_task(sim.run(), name="sim")
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.modem.test_tiantong_parts",
                "child",
                device.path,
                str(parts_db),
                cwd=REPO,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                # The first driver: part 1 comes with +CMT and is acknowledged, then a SIGKILL.
                await wait_until(lambda: "AT+CNMI=2,1,0,1,0" in sim.commands, within=20)
                await wait_until(lambda: sim.commands.count("AT+CSQ") >= 2, within=10)
                sim.deliver_pdus([pdus[0]], direct=True)
                await wait_until(lambda: "AT+CNMA" in sim.commands, within=10)
                proc.send_signal(signal.SIGKILL)
                out, _ = await proc.communicate()
                assert proc.returncode == -signal.SIGKILL
                published = [ln for ln in out.splitlines() if ln.startswith(b"{")]
                assert published == []  # nothing published (log lines aside): half a message
                assert _rows(parts_db) == 1  # what the acknowledgement promised is on disk
                # The second driver (this process): part 2 arrives, the message is whole.
                sim.commands.clear()
                sink = Sink()
                events: list[Any] = []
                modem = TiantongModem(
                    ModemConfig(port=device.path, ack_cmt=True, **FAST),
                    sink,
                    topics=TOPICS,
                    events=events.append,
                    parts_path=parts_db,
                )
                task = tg.create_task(modem.run(), name="modem")
                try:
                    await wait_until(lambda: modem.state is ModemState.OK)
                    assert modem.counters["sms_parts_restored"] == 1
                    assert modem.status()["sms_parts_waiting"] == 1
                    sim.deliver_pdus([pdus[1]], direct=True)
                    await wait_until(lambda: bool(sink.sms()))
                    await wait_until(lambda: "AT+CNMA" in sim.commands)
                    # The parts' rows go once the whole message is stored (after it).
                    await wait_until(lambda: _rows(parts_db) == 0)
                finally:
                    task.cancel()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                sim_task.cancel()
    [sms] = sink.sms()
    assert sms.text == TEXT
    assert (sms.parts, sms.ref, sms.complete) == (2, 42, True)
    assert _rows(parts_db) == 0  # stored in the outbox: the table lets the parts go


async def test_restored_part_keeps_its_age_and_expires_incomplete(tmp_path: Path) -> None:
    parts_db = tmp_path / "sms_parts.db"
    pdus = deliver_pdus("+8613912345679", TEXT, timestamp=T0, ref=43)
    with PtyDevice(tmp_path / "tiantong0") as device:
        sim = ModemSimulator(device)
        config = ModemConfig(
            port=device.path, ack_cmt=True, **{**FAST, "sms_reassembly_timeout_s": 1.0}
        )
        sink = Sink()
        async with asyncio.TaskGroup() as tg:
            sim_task = tg.create_task(sim.run(), name="sim")
            first = TiantongModem(config, sink, topics=TOPICS, parts_path=parts_db)
            task = tg.create_task(first.run(), name="modem-1")
            await wait_until(lambda: first.state is ModemState.OK)
            sim.deliver_pdus([pdus[1]], direct=True)
            await wait_until(lambda: "AT+CNMA" in sim.commands)
            task.cancel()
            await asyncio.wait([task])  # the port closed: one reader on it at a time
            second = TiantongModem(config, sink, topics=TOPICS, parts_path=parts_db)
            task = tg.create_task(second.run(), name="modem-2")
            try:
                await wait_until(lambda: bool(sink.sms()), within=8)
                # The part's row goes once the incomplete message is stored (after it, in a
                # thread): a stop between the two sends it again, never loses it.
                await wait_until(lambda: _rows(parts_db) == 0, within=8)
            finally:
                task.cancel()
                sim_task.cancel()
    [sms] = sink.sms()
    assert (sms.complete, sms.missing) == (False, [1])


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["child"])
    parser.add_argument("port")
    parser.add_argument("parts", type=Path)
    args: Any = parser.parse_args(argv)
    asyncio.run(_child(args.port, args.parts))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
