"""Serial ports on real ptys: open by symlink, hang-up, reopen, stale ports, auto baud, init."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import termios
import threading
import time
from collections.abc import AsyncIterator, Callable
from functools import reduce
from operator import xor
from pathlib import Path
from typing import Any

import pytest

from terminal_gw.backoff import Backoff
from terminal_gw.errors import TransportError
from terminal_gw.models import Event
from terminal_gw.transport.pty import PtyDevice
from terminal_gw.transport.serial import (
    AUTO_BAUD_ORDER,
    PortState,
    ReconnectingPort,
    SerialPort,
)
from tests.waiting import wait_until

FAST = Backoff(min_s=0.02, max_s=0.2)


def sentence(body: str) -> bytes:
    """An NMEA sentence with its checksum."""
    cs = reduce(xor, body.encode(), 0)
    return f"${body}*{cs:02X}\r\n".encode()


GGA = sentence("GNGGA,092725.00,4717.11399,N,00833.91590,E,1,08,1.01,499.6,M,48.0,M,,")


def count_valid(data: bytes) -> int:
    """Checksum-valid sentences in `data` (a minimal check, independent of the framer)."""
    n = 0
    for line in data.split(b"\n"):
        start = line.rfind(b"$")
        star = line.rfind(b"*")
        if start < 0 or star < start or len(line) < star + 3:
            continue
        body = line[start + 1 : star]
        try:
            want = int(line[star + 1 : star + 3], 16)
        except ValueError:
            continue
        if reduce(xor, body, 0) == want:
            n += 1
    return n


def nmea_validator() -> Callable[[bytes], bool]:
    """A fresh validator: True once a checksum-valid sentence came through."""
    buf = bytearray()

    def check(chunk: bytes) -> bool:
        buf.extend(chunk)
        return count_valid(bytes(buf)) > 0

    return check


@contextlib.asynccontextmanager
async def reading(port: ReconnectingPort, *, alive: bool = True) -> AsyncIterator[bytearray]:
    """Read `port` in a task into a buffer; mark it alive on every valid sentence."""
    got = bytearray()

    async def loop() -> None:
        while True:
            got.extend(await port.read())
            if alive and count_valid(bytes(got[-200:])):
                port.mark_alive()

    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(loop(), name="reader")
        try:
            yield got
        finally:
            task.cancel()


async def test_port_opens_by_symlink_reads_and_writes(tmp_path: Path) -> None:
    with PtyDevice(tmp_path / "by-id" / "usb-gnss-if00") as dev:
        port = await SerialPort.open(dev.path, 9600)
        try:
            assert dev.baud() == 9600
            assert dev.write(GGA) == len(GGA)
            got = b""
            while len(got) < len(GGA):
                async with asyncio.timeout(2):
                    got += await port.read()
            assert got == GGA
            await port.write(b"AT\r")
            assert await dev.read(within_s=2) == b"AT\r"
        finally:
            await port.close()
        assert not port.is_open


async def test_open_of_a_missing_device_says_absent(tmp_path: Path) -> None:
    with pytest.raises(TransportError) as info:
        await SerialPort.open(str(tmp_path / "nothing"), 9600)
    assert info.value.reason == "absent"
    assert info.value.port == str(tmp_path / "nothing")


async def test_hangup_ends_reads_with_transport_error(tmp_path: Path) -> None:
    dev = PtyDevice(tmp_path / "gnss")
    port = await SerialPort.open(dev.path, 9600)
    try:
        dev.hangup()
        with pytest.raises(TransportError) as info:
            async with asyncio.timeout(2):
                await port.read()
        assert info.value.reason == "hangup"
        with pytest.raises(TransportError):
            await port.write(b"x")
    finally:
        await port.close()
        dev.close()
    assert not (tmp_path / "gnss").exists()


async def test_lines_that_trickle_in_are_read_several_at_a_time(tmp_path: Path) -> None:
    """After a small read the next one waits `coalesce_s`: lines written one by one meanwhile
    come in one chunk (one wake-up for several lines, not one each)."""
    with PtyDevice(tmp_path / "gnss") as dev:
        port = await SerialPort.open(dev.path, 9600, coalesce_s=1.0)
        try:
            dev.write(GGA)
            async with asyncio.timeout(5):
                assert await port.read() == GGA
            lines = [sentence(f"GPTXT,01,01,02,line {i}") for i in range(5)]
            got = bytearray()
            reads = 0

            async def reader() -> None:
                nonlocal reads
                while len(got) < len(b"".join(lines)):
                    got.extend(await port.read())
                    reads += 1

            async with asyncio.timeout(10), asyncio.TaskGroup() as tg:
                tg.create_task(reader(), name="reader")
                for line in lines:  # one write each, a few ms apart, as a UART delivers them
                    dev.write(line)
                    await asyncio.sleep(0.01)
            assert got == b"".join(lines)
            assert reads == 1
        finally:
            await port.close()


async def test_a_reconnecting_port_coalesces_when_asked(tmp_path: Path) -> None:
    """The daemon's GNSS port passes `coalesce_s` to every port it opens."""
    dev = PtyDevice(tmp_path / "gnss")
    port = ReconnectingPort(dev.path, 9600, stale_after_s=30, backoff=FAST, coalesce_s=1.0)
    chunks: list[bytes] = []

    async def reader() -> None:
        while True:
            chunks.append(await port.read())

    try:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(reader(), name="reader")
            await wait_until(lambda: port.state is PortState.OPEN, what="open")
            dev.write(GGA)
            await wait_until(lambda: chunks == [GGA], what="first line")
            lines = [sentence(f"GPTXT,01,01,02,line {i}") for i in range(5)]
            for line in lines:  # within the second after the first read
                dev.write(line)
                await asyncio.sleep(0.01)
            await wait_until(lambda: len(chunks) > 1, what="the lines")
            task.cancel()
        assert chunks == [GGA, b"".join(lines)]
    finally:
        await port.close()
        dev.close()


async def test_a_burst_is_read_without_waiting_between_full_reads(tmp_path: Path) -> None:
    """A read that got most of a tty buffer (4 KiB) is followed by the next at once: 8 KiB
    written at once take nothing like the coalescing waits between three reads."""
    with PtyDevice(tmp_path / "gnss") as dev:
        port = await SerialPort.open(dev.path, 115200, coalesce_s=3.0)
        try:
            burst = (GGA * 200)[:8192]
            assert dev.write(burst) == len(burst)  # the pty holds it all
            got = bytearray()
            async with asyncio.timeout(5):  # two waits of 3 s would be 6 s
                while len(got) < len(burst):
                    got.extend(await port.read())
            assert got == burst
        finally:
            await port.close()


async def test_a_read_waiting_on_a_quiet_port_gets_the_data_at_once(tmp_path: Path) -> None:
    """The coalescing wait never holds the first line after a silence: a long `coalesce_s`
    does not delay a read that was waiting for data."""
    with PtyDevice(tmp_path / "gnss") as dev:
        port = await SerialPort.open(dev.path, 9600, coalesce_s=30.0)
        try:
            reader = asyncio.create_task(port.read(), name="read")
            await asyncio.sleep(0)  # the read is waiting on the empty port
            dev.write(GGA)
            async with asyncio.timeout(5):  # far below coalesce_s
                assert await reader == GGA
        finally:
            await port.close()


async def test_a_closed_port_wakes_a_read_waiting_to_coalesce(tmp_path: Path) -> None:
    with PtyDevice(tmp_path / "gnss") as dev:
        port = await SerialPort.open(dev.path, 9600, coalesce_s=30.0)
        dev.write(GGA)
        async with asyncio.timeout(5):
            assert await port.read() == GGA
        reader = asyncio.create_task(port.read(), name="read")  # waits 30 s to coalesce
        await asyncio.sleep(0)
        await port.close()
        with pytest.raises(TransportError) as info:
            async with asyncio.timeout(5):
                await reader
        assert info.value.reason == "closed"


async def test_a_write_the_device_does_not_take_times_out_and_close_does_not_hang(
    tmp_path: Path,
) -> None:
    """Nobody reads the pty's other side: the write fails after `within_s`, and close()
    drops the unsent output instead of waiting for it to drain."""
    with PtyDevice(tmp_path / "modem") as dev:
        port = await SerialPort.open(dev.path, 115200)
        try:
            with pytest.raises(TransportError) as info:
                async with asyncio.timeout(5):
                    await port.write(b"x" * 1_000_000, within_s=0.3)
            assert info.value.reason == "timeout"
        finally:
            async with asyncio.timeout(5):
                await port.close(within_s=5)
        assert not port.is_open


def open_ttys(path: str) -> int:
    """Descriptors of this process open on the tty at `path` (hung up: "path (deleted)")."""
    n = 0
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            n += os.readlink(fd).split(" ")[0] == path
    return n


async def test_close_after_an_unread_hangup_releases_the_device(tmp_path: Path) -> None:
    """A port hung up while nobody read it is released by close() alone, twice is harmless
    (and the autouse fixture fails the test on a leftover task)."""
    dev = PtyDevice(tmp_path / "gnss")
    tty = dev.slave_path
    port = await SerialPort.open(dev.path, 9600)
    dev.hangup()
    assert open_ttys(tty) == 1  # the port's own descriptor: the device itself let go
    await port.close()
    await port.close()
    assert not port.is_open
    assert open_ttys(tty) == 0
    dev.close()


async def reconnect_cycles(tmp_path: Path, cycles: int) -> None:
    events: list[Event] = []
    dev = PtyDevice(tmp_path / "by-id" / "gnss")
    port = ReconnectingPort(dev.path, 9600, stale_after_s=30, backoff=FAST, events=events.append)
    rng = random.Random(7)
    try:
        async with reading(port) as got:
            await wait_until(lambda: port.state is PortState.OPEN, 2, "first open")
            for cycle in range(cycles):
                opens = port.opens
                dev.hangup()
                await asyncio.sleep(rng.uniform(0.0, 0.15))  # device away for a while
                dev.recreate()
                took = await wait_until(lambda n=opens: port.opens > n, 2, f"reopen {cycle}")
                assert port.state is PortState.OPEN
                assert took < 2
                # Everything written after the port is back arrives, in order.
                lines = [sentence(f"GPTXT,01,01,02,cycle {cycle} line {i}") for i in range(5)]
                for line in lines:
                    assert dev.write(line) == len(line)
                want = b"".join(lines)
                await wait_until(lambda w=want: got.endswith(w), 2, f"data after reopen {cycle}")
    finally:
        await port.close()
        dev.close()
    kinds = [e.kind for e in events]
    assert kinds.count("port_closed") == cycles
    assert kinds.count("port_open") == cycles + 1
    assert port.status()["state"] == "closed"


async def test_hangup_and_recreate_20_times_reads_again_each_time(tmp_path: Path) -> None:
    await reconnect_cycles(tmp_path, 20)


@pytest.mark.slow
async def test_hangup_and_recreate_300_times(tmp_path: Path) -> None:
    await reconnect_cycles(tmp_path, 300)


async def test_hangup_while_the_port_is_being_set_up_is_a_hangup_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device unplugged between the open() of its node and the line set-up (a race a busy
    machine widens) makes termios fail with EIO: the port waits and reopens like after any
    hang-up. (It used to escape read() and take the reader's stage down.)"""
    events: list[Event] = []
    dev = PtyDevice(tmp_path / "by-id" / "gnss")
    real_tcsetattr = termios.tcsetattr
    armed = threading.Event()
    hung_up = threading.Event()

    def tcsetattr(fd: int, when: int, attrs: list[Any]) -> None:
        # The port's node is open, its line not yet set up: unplug now (the real call then
        # fails on the dead pty, as it does when the race happens by itself).
        if armed.is_set() and not hung_up.is_set():
            dev.hangup()
            hung_up.set()
        real_tcsetattr(fd, when, attrs)

    monkeypatch.setattr(termios, "tcsetattr", tcsetattr)
    port = ReconnectingPort(dev.path, 9600, stale_after_s=30, backoff=FAST, events=events.append)
    try:
        async with reading(port) as got:
            await wait_until(lambda: port.state is PortState.OPEN, what="first open")
            dev.hangup()
            armed.set()
            dev.recreate()  # the reopen races the unplug above
            await wait_until(hung_up.is_set, what="unplugged during the set-up")
            await wait_until(lambda: port.state is PortState.WAITING, what="waiting")
            assert port.reason in ("hangup", "absent")
            dev.recreate()
            back = time.monotonic()
            del got[:]
            while not count_valid(bytes(got)):  # a receiver sends every epoch
                dev.write(GGA)
                await asyncio.sleep(0.02)
                assert time.monotonic() - back < 2.0, "not read again within 2 s"
    finally:
        await port.close()
        dev.close()
    assert [e.kind for e in events].count("port_open") == 2


async def test_a_receiver_that_comes_back_is_read_again_within_2_s(tmp_path: Path) -> None:
    """However long the receiver was away (the backoff at its cap), it is read again within
    2 s of coming back, measured from the moment its device exists again."""
    dev = PtyDevice(tmp_path / "by-id" / "gnss")
    port = ReconnectingPort(dev.path, 9600, stale_after_s=30)  # the daemon's own backoff
    delays: list[float] = []
    try:
        async with reading(port) as got:
            await wait_until(lambda: port.state is PortState.OPEN, what="first open")
            for cycle in range(3):
                dev.hangup()
                await wait_until(lambda: port.state is PortState.WAITING, what="hang-up seen")
                await asyncio.sleep(2.5)  # away long enough for the backoff to reach its cap
                dev.recreate()
                back = time.monotonic()
                del got[:]
                while not count_valid(bytes(got)):  # a receiver sends every epoch
                    dev.write(GGA)
                    await asyncio.sleep(0.02)
                    if time.monotonic() - back > 5.0:
                        pytest.fail(f"cycle {cycle}: not read again within 5 s")
                delays.append(time.monotonic() - back)
    finally:
        await port.close()
        dev.close()
    print(f"read again after {', '.join(f'{d:.2f}' for d in delays)} s")
    # The wait between attempts is at most 1 s: the other second is the slack for the open
    # and the first data on a busy machine.
    assert max(delays) < 2.0, delays


async def test_waits_for_a_device_that_is_not_there_yet(tmp_path: Path) -> None:
    events: list[Event] = []
    link = tmp_path / "by-id" / "modem"
    port = ReconnectingPort(str(link), 115200, name="modem", backoff=FAST, events=events.append)
    try:
        async with reading(port):
            await wait_until(lambda: port.state is PortState.WAITING, 2, "waiting")
            assert port.reason == "absent"
            await asyncio.sleep(0.3)  # several failed attempts: one event, not one per attempt
            assert [e.kind for e in events] == ["port_closed"]
            with pytest.raises(TransportError):
                await port.write(b"AT\r")
            with PtyDevice(link) as dev:
                await wait_until(lambda: port.state is PortState.OPEN, 2, "open once present")
                assert dev.baud() == 115200
                await port.write(b"AT\r")
                assert await dev.read(within_s=2) == b"AT\r"
    finally:
        await port.close()
    assert [e.kind for e in events] == ["port_closed", "port_open"]
    assert events[0].severity == "warning"
    assert events[0].data["reason"] == "absent"


async def test_silent_port_is_stale_and_reopened(tmp_path: Path) -> None:
    events: list[Event] = []
    dev = PtyDevice(tmp_path / "gnss")
    port = ReconnectingPort(dev.path, 9600, stale_after_s=0.3, backoff=FAST, events=events.append)
    try:
        async with reading(port) as got:
            await wait_until(lambda: port.state is PortState.OPEN, 2, "open")
            dev.write(GGA)
            await wait_until(lambda: count_valid(bytes(got)) == 1, 2, "first sentence")
            # Silence: the port stays open, but nothing valid comes.
            await wait_until(lambda: port.stale_reopens >= 1, 2, "stale detected")
            await wait_until(lambda: port.opens >= 2, 2, "reopened")
            stale = [e for e in events if e.kind == "port_stale"]
            assert len(stale) == 1
            assert stale[0].severity == "warning"
            # A device that stays silent is reopened again, without an event each time.
            await wait_until(lambda: port.stale_reopens >= 3, 3, "reopened again")
            assert [e.kind for e in events].count("port_stale") == 1
            # Valid data again (a receiver repeats every epoch; bytes sent while the port is
            # being reopened are lost, as on a real UART): the outage ends with one event.
            async with asyncio.timeout(2):
                while count_valid(bytes(got)) < 2:
                    dev.write(GGA)
                    await asyncio.sleep(0.05)
    finally:
        await port.close()
        dev.close()
    assert [e.kind for e in events] == ["port_open", "port_stale", "port_closed", "port_open"]
    assert events[-1].data["after"] == "stale"


async def test_a_port_with_valid_data_flowing_is_never_stale(tmp_path: Path) -> None:
    """Valid sentences keep coming for several stale periods: the port stays open."""
    events: list[Event] = []
    dev = PtyDevice(tmp_path / "gnss")
    port = ReconnectingPort(dev.path, 9600, stale_after_s=0.5, backoff=FAST, events=events.append)
    try:
        async with reading(port) as got:
            await wait_until(lambda: port.state is PortState.OPEN, what="open")
            end = time.monotonic() + 2.0  # four stale periods
            while time.monotonic() < end:
                dev.write(GGA)
                await asyncio.sleep(0.02)  # a receiver's pace; the condition is the data
            await wait_until(lambda: count_valid(bytes(got)) >= 20, what="sentences read")
    finally:
        await port.close()
        dev.close()
    assert port.stale_reopens == 0
    assert port.opens == 1
    assert [e.kind for e in events] == ["port_open"]


async def test_garbage_without_valid_sentences_is_stale_too(tmp_path: Path) -> None:
    events: list[Event] = []
    dev = PtyDevice(tmp_path / "gnss")
    port = ReconnectingPort(dev.path, 9600, stale_after_s=0.3, backoff=FAST, events=events.append)

    async def garbage() -> None:
        while True:
            if dev.is_up:
                dev.write(os.urandom(64).replace(b"$", b"?"))
            await asyncio.sleep(0.01)

    try:
        async with reading(port) as got, asyncio.TaskGroup() as tg:
            noise = tg.create_task(garbage(), name="garbage")
            await wait_until(lambda: port.stale_reopens >= 1, 2, "stale despite bytes")
            assert len(got) > 0
            noise.cancel()
    finally:
        await port.close()
        dev.close()
    assert "port_stale" in [e.kind for e in events]


async def test_auto_baud_finds_the_rate_with_valid_sentences(tmp_path: Path) -> None:
    """The peer sends valid NMEA only at 4800 baud (read from the tty the client set)."""
    right = 4800
    assert AUTO_BAUD_ORDER[:4] == (9600, 115200, 38400, 4800)
    events: list[Event] = []
    dev = PtyDevice(tmp_path / "gnss")
    rates_seen: list[int | None] = []

    async def peer() -> None:
        while True:
            rate = dev.baud() if dev.is_up else None
            if not rates_seen or rates_seen[-1] != rate:
                rates_seen.append(rate)
            if dev.is_up:
                dev.write(GGA if rate == right else os.urandom(40).replace(b"$", b"#"))
            await asyncio.sleep(0.01)

    port = ReconnectingPort(
        dev.path,
        "auto",
        validator=nmea_validator,
        probe_window_s=0.25,
        stale_after_s=30,
        backoff=FAST,
        events=events.append,
    )
    try:
        async with asyncio.TaskGroup() as tg:
            talker = tg.create_task(peer(), name="peer")
            async with reading(port) as got:
                await wait_until(lambda: count_valid(bytes(got)) >= 3, 3, "valid sentences")
                assert port.baud == right
                assert dev.baud() == right
                assert [r for r in rates_seen if r in (9600, 115200, 38400)]  # it did probe
                # Unplugged and back: the found rate is tried first, no probing from scratch.
                opens = port.opens
                dev.hangup()
                await asyncio.sleep(0.05)
                rates_seen.clear()
                dev.recreate()
                await wait_until(lambda: port.opens > opens, 2, "reopen")
                assert port.baud == right
                assert 9600 not in rates_seen
                assert 115200 not in rates_seen
            talker.cancel()
    finally:
        await port.close()
        dev.close()
    assert events[0].kind == "port_open"
    assert events[0].data["baud"] == right


async def test_auto_baud_with_no_valid_rate_keeps_waiting(tmp_path: Path) -> None:
    events: list[Event] = []
    dev = PtyDevice(tmp_path / "gnss")
    port = ReconnectingPort(
        dev.path,
        "auto",
        validator=nmea_validator,
        probe_window_s=0.01,
        backoff=FAST,
        events=events.append,
    )
    try:
        async with reading(port):
            await wait_until(lambda: port.reason == "no_valid_data", 3, "gave up on all rates")
            assert port.baud is None
    finally:
        await port.close()
        dev.close()
    assert [e.kind for e in events] == ["port_closed"]


def test_auto_baud_needs_a_validator() -> None:
    with pytest.raises(ValueError, match="validator"):
        ReconnectingPort("/dev/null", "auto")


async def test_init_strings_reach_the_device_after_each_open(tmp_path: Path) -> None:
    dev = PtyDevice(tmp_path / "gnss")
    init = ["$PCAS03,1,0,1,1,1,0,0,0*03", "$PCAS02,1000*2E\r\n"]
    port = ReconnectingPort(dev.path, 9600, init=init, backoff=FAST, stale_after_s=30)
    want = b"$PCAS03,1,0,1,1,1,0,0,0*03\r\n$PCAS02,1000*2E\r\n"
    try:
        async with reading(port):
            for _ in range(3):
                got = b""
                while len(got) < len(want):
                    chunk = await dev.read(within_s=2)
                    assert chunk, f"init strings did not arrive, got {got!r}"
                    got += chunk
                assert got == want
                dev.hangup()
                dev.recreate()
    finally:
        await port.close()
        dev.close()
    assert port.opens == 3


def test_pty_recreate_moves_the_link_and_drops_what_nobody_reads(tmp_path: Path) -> None:
    link = tmp_path / "by-id" / "usb-gnss"
    with PtyDevice(link) as dev:
        first = dev.slave_path
        assert str(link.readlink()) == first
        # Nobody reads the slave: the pty fills up and the rest is dropped, never blocking.
        data = b"x" * 1_000_000
        written = dev.write(data)
        assert 0 < written < len(data)
        assert dev.dropped == len(data) - written
        dev.hangup()
        assert not link.is_symlink()
        with pytest.raises(TransportError):
            dev.write(b"$")
        dev.recreate()
        assert dev.is_up
        assert str(link.readlink()) == dev.slave_path
        assert dev.write(GGA) == len(GGA)
    assert not link.is_symlink()
