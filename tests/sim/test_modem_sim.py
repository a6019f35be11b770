"""The Tiantong simulator over a real pty: its answers, SIM storage, sends, incoming SMS built
by its own encoder (read back with the project's decoder), faults, and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from terminal_gw.errors import TransportError
from terminal_gw.modem.at import AtEngine, ModemResultError, ModemTimeoutError, Urc
from terminal_gw.modem.sms import Reassembler, SmsDeliver, decode_pdu, encode_submit, parse_stored
from terminal_gw.sim.modem import ModemSimulator, deliver_pdus
from terminal_gw.transport.pty import PtyDevice
from terminal_gw.transport.serial import SerialPort
from tests.conftest import REPO

CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 25, 23, 59, 58, tzinfo=CST)


@dataclass
class Client:
    sim: ModemSimulator
    engine: AtEngine
    urcs: list[Urc]

    async def ask(self, command: str, expect: str | None = None) -> list[str]:
        return list((await self.engine.command(command, timeout=1.0, expect=expect)).lines)


@contextlib.asynccontextmanager
async def client(tmp_path: Path, **kwargs: object) -> AsyncIterator[Client]:
    with PtyDevice(tmp_path / "tt0") as device:
        sim = ModemSimulator(device, **kwargs)  # type: ignore[arg-type]
        port = await SerialPort.open(device.path, 115200)
        urcs: list[Urc] = []
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(sim.run(), name="sim")
            try:
                async with AtEngine(port, on_urc=urcs.append) as engine:
                    yield Client(sim, engine, urcs)
            finally:
                task.cancel()


async def test_status_and_identity_answers(tmp_path: Path) -> None:
    async with client(tmp_path, rssi=21, imei="861234567890123") as c:
        assert await c.ask("AT") == []
        assert await c.ask("AT+CSQ", "+CSQ") == ["+CSQ: 21,0"]
        assert await c.ask("AT+CREG?", "+CREG") == ["+CREG: 0,1"]
        assert await c.ask("AT+COPS?", "+COPS") == ['+COPS: 0,0,"CHINA TELECOM TIANTONG"']
        assert await c.ask("AT+CPIN?", "+CPIN") == ["+CPIN: READY"]
        assert await c.ask("AT+CGSN") == ["861234567890123"]
        assert await c.ask("AT+CIMI") == ["460110123456789"]
        assert await c.ask("AT+CGMR") == ["TT-SIM 1.2.0"]
        c.sim.set_registration(0)
        assert await c.ask("AT+COPS?", "+COPS") == ["+COPS: 0"]


async def test_multiline_quoted_cusd_over_the_pty(tmp_path: Path) -> None:
    reply = "Balance: 10.00 CNY\r\nValid to 2026-12-31\r\nReply 1 for more"
    async with client(tmp_path, ussd_reply=reply) as c:
        assert await c.ask('AT+CUSD=1,"*100#",15') == []
        async with asyncio.timeout(5):
            while not c.urcs:
                await asyncio.sleep(0.01)
        [urc] = c.urcs
        assert urc.name == "+CUSD"
        assert urc.fields == [
            "0",
            "Balance: 10.00 CNY\nValid to 2026-12-31\nReply 1 for more",
            "15",
        ]
        assert await c.ask("AT+CSQ", "+CSQ") == ["+CSQ: 18,0"]  # nothing left over


async def test_creg_urc_after_ok_and_errors_without_plus_over_the_pty(tmp_path: Path) -> None:
    async with client(tmp_path, creg_n=2) as c:
        c.sim.quirks.add("creg_urc_after_ok")
        assert await c.ask("AT+CREG?", "+CREG") == ["+CREG: 2,1"]
        async with asyncio.timeout(5):
            while not c.urcs:
                await asyncio.sleep(0.01)
        assert [(u.name, u.fields) for u in c.urcs] == [("+CREG", ["2", "0005", "0001"])]
        for style, line in (("bare", "CME ERROR: 50"), ("modem", "MODEM ERROR: 50")):
            c.sim.error_style = style
            assert await c.ask("AT+CMEE=1") == []
            with pytest.raises(ModemResultError) as info:
                await c.ask("AT+CMEE=7")  # the simulator answers error 50, spelled its way
            assert info.value.final.line == line
            assert info.value.code == 50


async def test_echo_and_error_verbosity(tmp_path: Path) -> None:
    async with client(tmp_path) as c:
        assert c.sim.echo
        await c.ask("ATE0")
        assert not c.sim.echo
        with pytest.raises(ModemResultError) as plain:
            await c.ask("AT+CMEE=7")
        assert plain.value.reason == "error"
        await c.ask("AT+CMEE=2")
        with pytest.raises(ModemResultError) as verbose:
            await c.ask("AT+CMEE=7")
        assert verbose.value.reason == "incorrect parameters"
        with pytest.raises(ModemResultError) as unknown:
            await c.ask("AT+XYZ")
        assert unknown.value.reason == "error"


async def test_incoming_sms_announced_read_listed_deleted(tmp_path: Path) -> None:
    async with client(tmp_path, capacity=3) as c:
        await c.ask("AT+CNMI=2,1,0,1,0")
        [idx] = c.sim.deliver("+8613912345678", "hello from the sim", timestamp=T0)
        async with asyncio.timeout(1):
            while not c.urcs:
                await asyncio.sleep(0.01)
        assert c.urcs[0].name == "+CMTI"
        assert c.urcs[0].fields == ["SM", str(idx)]
        [stored] = parse_stored(await c.ask(f"AT+CMGR={idx}", "+CMGR"))
        sms = stored.decode()
        assert isinstance(sms, SmsDeliver)
        assert (sms.sender.number, sms.text, sms.timestamp) == (
            "+8613912345678",
            "hello from the sim",
            T0,
        )
        assert c.sim.storage[idx].stat == 1  # read now
        # Capacity 3: a 3-part message fills it; the next one is refused (stays at the SMSC).
        assert len(c.sim.deliver("+8613900000000", "y" * 400)) == 2
        assert c.sim.deliver("+8613900000000", "no room") == []
        assert c.sim.rejected == 2
        listed = parse_stored(await c.ask("AT+CMGL=4", "+CMGL"))
        assert [s.index for s in listed] == [1, 2, 3]
        await c.ask(f"AT+CMGD={idx}")
        assert idx not in c.sim.storage
        with pytest.raises(ModemResultError) as bad:
            await c.ask("AT+CMGR=99", "+CMGR")
        assert bad.value.code == 321


async def test_send_records_pdu_and_answers_reference(tmp_path: Path) -> None:
    async with client(tmp_path) as c:
        pdus = encode_submit("+8613912345678", "位置报告", max_parts=1, ref=1)
        mr = await c.engine.send_pdu(pdus[0].tpdu_length, pdus[0].hex, 1.0)
        assert c.sim.sent[0].pdu == pdus[0].hex
        assert c.sim.sent[0].mr == mr
        assert c.sim.sent[0].length == pdus[0].tpdu_length
        c.sim.set_registration(2)
        with pytest.raises(ModemResultError) as refused:
            await c.engine.send_pdu(pdus[0].tpdu_length, pdus[0].hex, 1.0)
        assert refused.value.code == 331
        assert len(c.sim.sent) == 1


@pytest.mark.parametrize(
    ("text", "parts", "alphabet"),
    [
        ("plain GSM text with € and {braces}", 1, "gsm7"),
        ("x" * 161, 2, "gsm7"),
        ("天通卫星" * 18, 2, "ucs2"),
        ("emoji 🚢 crosses a part boundary " * 6, 3, "ucs2"),
    ],
)
def test_deliver_encoder_reads_back_with_the_decoder(text: str, parts: int, alphabet: str) -> None:
    pdus = deliver_pdus("+8613912345678", text, timestamp=T0, ref=200)
    assert len(pdus) == parts
    r = Reassembler()
    message = None
    for p in reversed(pdus):  # parts may arrive in any order
        sms = decode_pdu(p)
        assert isinstance(sms, SmsDeliver)
        assert sms.dcs.alphabet.value == alphabet
        message = r.add(sms, 0.0)
    assert message is not None
    assert message.text == text
    assert message.timestamp == T0


async def test_hang_until_reset(tmp_path: Path) -> None:
    async with client(tmp_path) as c:
        c.sim.hang(until_reset=True)
        with pytest.raises(ModemTimeoutError):
            await c.engine.command("AT", timeout=0.2)
        await c.engine.command("AT+CFUN=1,1", timeout=1.0)
        assert c.sim.resets == 1
        await asyncio.sleep(c.sim.reset_s + 0.05)
        assert await c.ask("AT") == []
        assert c.sim.echo  # power-on settings after the reset


async def test_error_storm_and_timed_hang(tmp_path: Path) -> None:
    async with client(tmp_path) as c:
        c.sim.error_storm()
        with pytest.raises(ModemResultError):
            await c.ask("AT+CSQ", "+CSQ")
        c.sim.error_storm(False)
        c.sim.hang(seconds=0.3)
        with pytest.raises(ModemTimeoutError):
            await c.engine.command("AT", timeout=0.1)
        await asyncio.sleep(0.3)
        assert await c.ask("AT") == []


async def test_unplug_hangs_up_and_replugs_under_the_same_link(tmp_path: Path) -> None:
    with PtyDevice(tmp_path / "tt0") as device:
        sim = ModemSimulator(device)
        port = await SerialPort.open(device.path, 115200)
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(sim.run(), name="sim")
            try:
                sim.unplug(0.3)
                with pytest.raises(TransportError):
                    async with asyncio.timeout(2):
                        await port.read()
                await port.close()
                assert not (tmp_path / "tt0").exists()
                async with asyncio.timeout(2):
                    while not device.is_up:
                        await asyncio.sleep(0.02)
                again = await SerialPort.open(device.path, 115200)
                async with AtEngine(again, on_urc=lambda u: None) as engine:
                    await engine.command("AT", timeout=1.0)
            finally:
                task.cancel()
        assert os.readlink(tmp_path / "tt0") == device.slave_path  # the link follows the new pty
        assert sim.device.is_up


def test_cli_runs_with_incoming_messages(tmp_path: Path) -> None:
    link = tmp_path / "tt-cli"

    async def talk() -> list[Urc]:
        async with asyncio.timeout(5):
            while not link.exists():
                await asyncio.sleep(0.02)
        urcs: list[Urc] = []
        port = await SerialPort.open(str(link), 115200)
        async with AtEngine(port, on_urc=urcs.append) as engine:
            await engine.command("AT+CNMI=2,1,0,1,0", timeout=1.0)
            async with asyncio.timeout(3):
                while len(urcs) < 2:
                    await asyncio.sleep(0.02)
        return urcs

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "terminal_gw",
            "simulate",
            "modem",
            "--link",
            str(link),
            "--incoming-every",
            "0.3",
            "--duration",
            "3",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        started = time.monotonic()
        urcs = asyncio.run(talk())
        assert time.monotonic() - started < 5
        assert all(u.name == "+CMTI" for u in urcs)
        out, _ = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert "stable link" in out
    assert "an incoming SMS every 0.3s" in out


def test_cli_refuses_bad_options(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "terminal_gw", "simulate", "modem", "--rssi", "40"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert done.returncode == 2
    assert "--rssi" in done.stderr
