"""AtEngine over a real pty against a scripted modem: answers, errors, timeouts, URCs, sends,
garbage, and what may reach the port."""

from __future__ import annotations

import asyncio
import os
import re
import tty
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from terminal_gw.errors import CommandError, ModemError, TransportError
from terminal_gw.modem.at import AtEngine, ModemResultError, ModemTimeoutError, Urc
from terminal_gw.modem.sms import SmsSubmit, decode_pdu, encode_submit
from tests.modem.peer import ModemPeer, PtyPort

OK = b"\r\nOK\r\n"


@dataclass
class Rig:
    engine: AtEngine
    peer: ModemPeer
    port: PtyPort
    urcs: list[Urc]


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    master, slave = os.openpty()
    tty.setraw(slave)  # a serial line: no echo, CR stays CR
    port = PtyPort(slave)
    peer = ModemPeer(master)
    urcs: list[Urc] = []
    engine = AtEngine(port, on_urc=urcs.append)
    try:
        yield Rig(engine, peer, port, urcs)
    finally:
        peer.hangup()
        await port.close()


async def wait_for(cond: Callable[[], bool]) -> None:
    """Poll `cond` for up to 2 s: the pty has no event to wait on from the test's side."""
    async with asyncio.timeout(2):
        while not cond():
            await asyncio.sleep(0.002)


async def test_command_and_answer(rig: Rig) -> None:
    rig.peer.script[b"AT+CSQ"] = b"\r\n+CSQ: 20,99\r\n" + OK
    async with rig.engine as engine:
        resp = await engine.command("AT+CSQ", timeout=2, expect="+CSQ")
    assert resp.lines == ("+CSQ: 20,99",)
    assert resp.values("+CSQ") == ["20,99"]
    assert resp.final.ok
    assert bytes(rig.peer.received) == b"AT+CSQ\r"


async def test_answer_arriving_a_byte_at_a_time_with_echo(rig: Rig) -> None:
    rig.peer.chunk = 1
    rig.peer.echo = True
    rig.peer.script[b"AT+CGSN"] = b"\r\n867530012345678\r\n" + OK
    async with rig.engine as engine:
        resp = await engine.command("AT+CGSN", timeout=2)
    assert resp.lines == ("867530012345678",)


@pytest.mark.parametrize(
    ("reply", "code", "reason"),
    [
        (b"\r\n+CME ERROR: 10\r\n", 10, "SIM not inserted"),
        (b"\r\n+CME ERROR: SIM PIN required\r\n", 11, "SIM PIN required"),
        (b"\r\n+CMS ERROR: 330\r\n", 330, "SMSC address unknown"),
        (b"\r\nERROR\r\n", None, "error"),
    ],
)
async def test_errors_carry_the_3gpp_reason(
    rig: Rig, reply: bytes, code: int | None, reason: str
) -> None:
    rig.peer.script[b"AT+CPIN?"] = reply
    async with rig.engine as engine:
        with pytest.raises(ModemResultError) as err:
            await engine.command("AT+CPIN?", timeout=2, expect="+CPIN")
    assert isinstance(err.value, ModemError)
    assert (err.value.command, err.value.code, err.value.reason) == ("AT+CPIN?", code, reason)
    assert reason in str(err.value)


async def test_timeout_then_late_answer_is_not_taken_for_the_next(rig: Rig) -> None:
    rig.peer.script[b"AT+COPS?"] = None  # silent
    rig.peer.script[b"AT+CSQ"] = b"\r\n+CSQ: 11,99\r\n" + OK
    async with rig.engine as engine:
        with pytest.raises(ModemTimeoutError) as err:
            await engine.command("AT+COPS?", timeout=0.2, expect="+COPS")
        assert err.value.reason == "timeout"
        assert err.value.command == "AT+COPS?"
        rig.peer.send(b'\r\n+COPS: 0,0,"China Telecom"\r\n' + OK)  # too late
        await wait_for(lambda: engine.counters["garbage"] >= 2)  # dropped, both lines
        resp = await engine.command("AT+CSQ", timeout=2, expect="+CSQ")
    assert resp.lines == ("+CSQ: 11,99",)
    assert engine.counters["timeouts"] == 1
    assert rig.urcs == []  # the late +COPS was not passed on as news


async def test_urc_in_the_middle_of_a_reply(rig: Rig) -> None:
    pdu = b"0791534850020200040C9153486507895500006090608164138004D4F29C0E"
    rig.peer.chunk = 7
    rig.peer.script[b"AT+CMGL=4"] = (
        b"\r\n+CMGL: 1,1,,23\r\n" + pdu + b'\r\n+CMTI: "SM",2\r\n+CREG: 5\r\n'
        b"+CMGL: 2,1,,23\r\n" + pdu + b"\r\n" + OK
    )
    async with rig.engine as engine:
        resp = await engine.command("AT+CMGL=4", timeout=2, expect="+CMGL")
    assert [u.name for u in rig.urcs] == ["+CMTI", "+CREG"]
    assert rig.urcs[0].fields == ["SM", "2"]
    assert resp.lines == ("+CMGL: 1,1,,23", pdu.decode(), "+CMGL: 2,1,,23", pdu.decode())


async def test_urc_while_idle_and_a_failing_handler_does_not_stop_the_reader(rig: Rig) -> None:
    seen: list[str] = []

    def handler(urc: Urc) -> None:
        seen.append(urc.name)
        raise RuntimeError("handler bug")

    rig.peer.script[b"AT"] = OK
    engine = AtEngine(rig.port, on_urc=handler)
    async with engine:
        rig.peer.send(b'\r\nRING\r\n\r\n+CLIP: "+8613800138000",145\r\n')
        await wait_for(lambda: len(seen) == 2)
        resp = await engine.command("AT", timeout=2)
    assert seen == ["RING", "+CLIP"]
    assert resp.final.ok


async def test_one_command_at_a_time(rig: Rig) -> None:
    rig.peer.script[b"AT+CSQ"] = lambda _u: rig.peer.send_later(0.05, b"\r\n+CSQ: 1,99\r\n" + OK)
    rig.peer.script[b"AT+CREG?"] = b"\r\n+CREG: 0,1\r\n" + OK
    async with rig.engine as engine, asyncio.TaskGroup() as tg:
        a = tg.create_task(engine.command("AT+CSQ", timeout=2, expect="+CSQ"))
        b = tg.create_task(engine.command("AT+CREG?", timeout=2, expect="+CREG"))
    assert rig.peer.units == [b"AT+CSQ\r", b"AT+CREG?\r"]
    assert a.result().lines == ("+CSQ: 1,99",)
    assert b.result().lines == ("+CREG: 0,1",)  # an answer here, not a URC
    assert rig.urcs == []


async def test_send_pdu_with_prompt_and_echo(rig: Rig) -> None:
    [part] = encode_submit("+8613800138000", "天通 test", max_parts=1, ref=0)
    rig.peer.echo = True
    rig.peer.script[f"AT+CMGS={part.tpdu_length}".encode()] = b"\r\n> "
    async with rig.engine as engine:
        mr = await engine.send_pdu(part.tpdu_length, part.hex, timeout=2)
    assert mr == 7
    sent = f"AT+CMGS={part.tpdu_length}\r{part.hex}\x1a".encode()
    assert bytes(rig.peer.received) == sent


async def test_prompt_timeout_sends_escape(rig: Rig) -> None:
    [part] = encode_submit("12345", "hi", max_parts=1, ref=0)
    async with rig.engine as engine:
        with pytest.raises(ModemTimeoutError) as err:
            await engine.send_pdu(part.tpdu_length, part.hex, timeout=2, prompt_timeout=0.2)
    assert err.value.reason == "no prompt"
    await wait_for(lambda: rig.peer.received.endswith(b"\x1b"))
    assert bytes(rig.peer.received) == f"AT+CMGS={part.tpdu_length}\r".encode() + b"\x1b"


async def test_send_refused_before_the_prompt(rig: Rig) -> None:
    [part] = encode_submit("12345", "hi", max_parts=1, ref=0)
    rig.peer.script[f"AT+CMGS={part.tpdu_length}".encode()] = b"\r\n+CMS ERROR: 304\r\n"
    async with rig.engine as engine:
        with pytest.raises(ModemResultError) as err:
            await engine.send_pdu(part.tpdu_length, part.hex, timeout=2)
    assert (err.value.code, err.value.reason) == (304, "invalid PDU mode parameter")
    assert b"\x1a" not in rig.peer.received


async def test_send_failure_after_the_pdu(rig: Rig) -> None:
    [part] = encode_submit("12345", "hi", max_parts=1, ref=0)
    rig.peer.script[f"AT+CMGS={part.tpdu_length}".encode()] = b"\r\n> "
    rig.peer.pdu_reply = b"\r\n+CMS ERROR: 42\r\n"
    async with rig.engine as engine:
        with pytest.raises(ModemResultError) as err:
            await engine.send_pdu(part.tpdu_length, part.hex, timeout=2)
    assert (err.value.code, err.value.reason) == (42, "congestion")


async def test_garbage_recovery(rig: Rig) -> None:
    rig.peer.script[b"AT"] = OK
    rig.peer.script[b"AT+CSQ"] = b"\x00\xff\r\n+CSQ: 9,99\r\n\x00" + OK
    async with rig.engine as engine:
        rig.peer.send(b"\x00\xff\xfe\x80junk\r\n" + os.urandom(3000).replace(b"\r", b"") + b"\n")
        rig.peer.send(b"\xff" * 500 + b"\r\n")
        await wait_for(lambda: engine.counters["garbage"] >= 2)
        assert (await engine.command("AT", timeout=2)).final.ok
        resp = await engine.command("AT+CSQ", timeout=2, expect="+CSQ")
    assert resp.lines == ("+CSQ: 9,99",)


async def test_hangup_ends_the_reader_with_a_transport_error(rig: Rig) -> None:
    asyncio.get_running_loop().call_later(0.05, rig.peer.hangup)
    with pytest.raises(TransportError):
        async with asyncio.timeout(2):
            await rig.engine.run()
    assert not rig.engine.running
    with pytest.raises(ModemError) as err:
        await rig.engine.command("AT", timeout=1)
    assert err.value.reason == "not running"


# -- injection -------------------------------------------------------------------------

BAD_COMMANDS = [
    'AT+CMGS="123";+CFUN=0',
    "AT+CSQ\rAT+CFUN=0",
    "AT+CSQ\n",
    "AT+CSQ\x1a",
    "AT+CSQ\x1b",
    'AT+CPMS="SM',
    "+++",
    "ATD+++",
    "AT+CMGS=23",  # only send_pdu may open a send
    "AT\x00",
    "ATé",
    "CFUN=0",
]


@pytest.mark.parametrize("command", BAD_COMMANDS)
async def test_bad_commands_never_reach_the_port(rig: Rig, command: str) -> None:
    rig.peer.script[b"AT"] = OK
    async with rig.engine as engine:
        with pytest.raises(CommandError):
            await engine.command(command, timeout=1)
        await engine.command("AT", timeout=2)  # the port still works, and carried only this
    assert bytes(rig.peer.received) == b"AT\r"


HOSTILE_TEXTS = [
    "stop\x1aAT+CFUN=0\r",
    "esc\x1b then text",
    "line\r\nAT+CMGD=1,4\r\n",
    'quote " and ; semicolon;+CFUN=0',
    "+++ATH0",
    "\x1a\x1b\r\n\"';+++",
    "天通\x1a卫星",
]


@pytest.mark.parametrize("text", HOSTILE_TEXTS)
async def test_hostile_text_goes_out_as_hex_only(rig: Rig, text: str) -> None:
    parts = encode_submit("+8613800138000", text * 10, max_parts=5, ref=9)
    for p in parts:
        rig.peer.script[f"AT+CMGS={p.tpdu_length}".encode()] = b"\r\n> "
    async with rig.engine as engine:
        for p in parts:
            assert await engine.send_pdu(p.tpdu_length, p.hex, timeout=2) == 7
    wire = bytes(rig.peer.received)
    assert re.fullmatch(rb"(AT\+CMGS=\d{1,3}\r[0-9A-F]+\x1a)+", wire)
    assert wire.count(b"\x1a") == len(parts)
    assert b"\x1b" not in wire
    hexes = re.findall(rb"\r([0-9A-F]+)\x1a", wire)
    smss = [decode_pdu(h.decode()) for h in hexes]
    assert "".join(s.text or "" for s in smss if isinstance(s, SmsSubmit)) == text * 10


@pytest.mark.parametrize("number", ['123";+CFUN=0', "123\x1a", "+86\r\nAT", "+++", "12 3"])
async def test_hostile_numbers_are_refused_before_the_port(rig: Rig, number: str) -> None:
    rig.peer.script[b"AT"] = OK
    async with rig.engine as engine:
        with pytest.raises(CommandError):
            encode_submit(number, "hi", max_parts=1, ref=0)
        await engine.command("AT", timeout=2)
    assert bytes(rig.peer.received) == b"AT\r"


@pytest.mark.parametrize(
    ("length", "pdu"),
    [
        (12, "00010005812143F5000002E834\x1a"),
        (11, "00010005812143F5000002E834"),  # length does not match
        (12, "00010005812143F5000002E83"),  # odd
        (12, "00010005812143F5000002E8;4"),
        (0, "00"),
    ],
)
async def test_bad_pdus_are_refused_before_the_port(rig: Rig, length: int, pdu: str) -> None:
    rig.peer.script[b"AT"] = OK
    async with rig.engine as engine:
        with pytest.raises(CommandError):
            await engine.send_pdu(length, pdu, timeout=1)
        await engine.command("AT", timeout=2)
    assert bytes(rig.peer.received) == b"AT\r"
