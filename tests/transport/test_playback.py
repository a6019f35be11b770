"""Modem capture playback: a session recorded against the simulator over a real pty is played
back to the driver, which stores the same messages with the same ids; mismatches are reported
and either resynchronised, answered ERROR, or fail the port, never a hang."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from terminal_gw.config import ModemConfig
from terminal_gw.errors import TransportError
from terminal_gw.models import Event
from terminal_gw.modem.at import AtPort
from terminal_gw.modem.tiantong import ModemState, TiantongModem
from terminal_gw.sim.modem import ModemSimulator
from terminal_gw.transport.capture import CaptureReader, CaptureWriter, Chunk
from terminal_gw.transport.playback import PlaybackPort, RecordingPort, steps_from_chunks
from terminal_gw.transport.pty import PtyDevice
from terminal_gw.transport.serial import SerialPort
from tests.modem.test_tiantong_rig import FAST, TOPICS, Sink, wait_until

T0 = datetime(2026, 11, 25, 9, 0, 0, tzinfo=timezone(timedelta(hours=8)))
#: Nothing periodic during a test: the exchange is the start sequence and the sweep only.
QUIET: dict[str, Any] = {
    **FAST,
    "poll_signal_s": 60.0,
    "poll_registration_s": 60.0,
    "poll_operator_s": 60.0,
}


@contextlib.asynccontextmanager
async def driver(
    factory: Any, sink: Sink, events: list[Event] | None = None, **options: Any
) -> AsyncIterator[TiantongModem]:
    """The driver on ports made by `factory`, running for the body."""
    config = ModemConfig(port="playback", **{**QUIET, **options})
    modem = TiantongModem(
        config,
        sink,
        topics=TOPICS,
        port_factory=factory,
        events=None if events is None else events.append,
    )
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(modem.run(), name="modem")
        try:
            yield modem
        finally:
            task.cancel()


async def record_session(tmp_path: Path) -> tuple[Path, Sink]:
    """Record the driver's start against the simulator, with two messages waiting on the SIM."""
    capture = tmp_path / "modem.cap"
    sink = Sink()
    with PtyDevice(tmp_path / "tiantong0") as device, CaptureWriter(capture) as writer:
        sim = ModemSimulator(device)
        sim.cnmi = (2, 1, 0, 0, 0)
        sim.deliver("+8613912345678", "recorded single", timestamp=T0)
        sim.deliver("+8613912345679", "记录的长消息，" * 20, timestamp=T0)

        async def factory() -> AtPort:
            return RecordingPort(await SerialPort.open(device.path, 115200), writer)

        async with asyncio.TaskGroup() as tg:
            sim_task = tg.create_task(sim.run(), name="sim")
            try:
                async with driver(factory, sink) as modem:
                    await wait_until(lambda: len(sink.sms()) == 2 and not sim.storage)
                    await wait_until(lambda: modem.state is ModemState.OK)
            finally:
                sim_task.cancel()
    return capture, sink


async def test_driver_against_playback_stores_the_same_messages(tmp_path: Path) -> None:
    capture, recorded = await record_session(tmp_path)
    played = Sink()
    ports: list[PlaybackPort] = []

    async def factory() -> AtPort:
        ports.append(PlaybackPort.from_capture(capture))
        return ports[-1]

    async with driver(factory, played) as modem:
        await wait_until(lambda: len(played.sms()) == 2)
        await wait_until(lambda: ports[0].remaining == 0)
        assert modem.imei == "860123456789012"
    assert [(s.id, s.text) for s in played.sms()] == [(s.id, s.text) for s in recorded.sms()]
    assert ports[0].counters["mismatched"] == 0
    assert len(ports) == 1


async def test_a_skipped_command_is_resynchronised(tmp_path: Path) -> None:
    capture, recorded = await record_session(tmp_path)
    played = Sink()
    events: list[Event] = []
    ports: list[PlaybackPort] = []

    async def factory() -> AtPort:
        ports.append(PlaybackPort.from_capture(capture, events=events.append))
        return ports[-1]

    init = ["ATE0", "AT+CMGF=0", "AT+CNMI=2,1,0,1,0"]  # AT+CMEE=2 left out
    async with driver(factory, played, events, init=init):
        await wait_until(lambda: len(played.sms()) == 2)
    port = ports[0]
    assert (port.counters["resynced"], port.counters["skipped"]) == (1, 1)
    [event] = [e for e in events if e.kind == "playback_mismatch"]
    assert event.data["expected"] == "AT+CMEE=2\r"
    assert event.data["wrote"] == "AT+CMGF=0\r"
    assert [s.id for s in played.sms()] == [s.id for s in recorded.sms()]


async def test_an_unrecorded_command_fails_the_port_by_default(tmp_path: Path) -> None:
    capture, _ = await record_session(tmp_path)
    played = Sink()
    events: list[Event] = []
    opened: list[PlaybackPort] = []

    async def factory() -> AtPort:
        opened.append(PlaybackPort.from_capture(capture, events=events.append))
        return opened[-1]

    init = ["ATE0", "AT+CPMS?", "AT+CMEE=2", "AT+CMGF=0", "AT+CNMI=2,1,0,1,0"]
    async with driver(factory, played, events, init=init) as modem:
        await wait_until(lambda: any(e.kind == "modem_port" for e in events))
        assert modem.state is ModemState.DOWN
    down = next(e for e in events if e.kind == "modem_port")
    assert "AT+CPMS?" in down.message
    assert any(e.kind == "playback_mismatch" for e in events)


async def test_error_reply_mode_answers_and_goes_on(tmp_path: Path) -> None:
    capture, recorded = await record_session(tmp_path)
    played = Sink()

    async def factory() -> AtPort:
        return PlaybackPort.from_capture(capture, on_mismatch="error_reply")

    init = ["ATE0", "AT+CPMS?", "AT+CMEE=2", "AT+CMGF=0", "AT+CNMI=2,1,0,1,0"]
    async with driver(factory, played, init=init) as modem:
        await wait_until(lambda: len(played.sms()) == 2)
        assert modem.counters["init_errors"] == 1
    assert [s.text for s in played.sms()] == [s.text for s in recorded.sms()]


async def test_writing_past_the_end_fails_instead_of_hanging() -> None:
    port = PlaybackPort(
        [
            Chunk(0.0, "modem", "<", b"\r\nRDY\r\n"),
            Chunk(1.0, "modem", ">", b"AT\r"),
            Chunk(1.1, "modem", "<", b"\r\nOK"),
            Chunk(1.2, "modem", "<", b"\r\n"),
            Chunk(1.2, "gnss", "<", b"$GNGGA,,*00\r\n"),  # another port: not played
        ]
    )
    assert await port.read() == b"\r\nRDY\r\n"
    await port.write(b"A")
    await port.write(b"T\r")  # a write in two pieces matches the recorded one
    assert await port.read() == b"\r\nOK"
    assert await port.read() == b"\r\n"
    with pytest.raises(TransportError) as info:
        await port.write(b"AT+CSQ\r")
    assert info.value.reason == "capture ended"
    async with asyncio.timeout(1):
        with pytest.raises(TransportError):
            await port.read()


def test_steps_join_split_writes_and_keep_the_preamble(tmp_path: Path) -> None:
    path = tmp_path / "c.cap"
    with CaptureWriter(path, start=1000.0) as w:
        w.write("modem", "<", b"\r\n+CPIN: READY\r\n", 1000.1)
        w.write("modem", ">", b"AT+CMGS=18\r", 1001.0)
        w.write("modem", "<", b"\r\n> ", 1001.1)
        w.write("modem", ">", b"0011000B91", 1001.2)
        w.write("modem", ">", b"...\x1a", 1001.3)
        w.write("modem", "<", b"\r\n+CMGS: 5\r\n\r\nOK\r\n", 1002.0)
    preamble, steps = steps_from_chunks(CaptureReader(path), "modem")
    assert preamble == [b"\r\n+CPIN: READY\r\n"]
    assert [s.written for s in steps] == [b"AT+CMGS=18\r", b"0011000B91...\x1a"]
    assert steps[1].replies == [b"\r\n+CMGS: 5\r\n\r\nOK\r\n"]
