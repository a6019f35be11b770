"""The GNSS simulator: valid, plausible NMEA; faults that do what they say, on real ptys."""

from __future__ import annotations

import asyncio
import itertools
import math
import subprocess
import sys
import time
from datetime import UTC, datetime
from functools import reduce
from operator import xor
from pathlib import Path

import pytest

from terminal_gw.backoff import Backoff
from terminal_gw.gnss.pipeline import GnssPipeline
from terminal_gw.models import Fix, Sky
from terminal_gw.sim.gnss import GnssSimulator, Track, load_capture, sentence_time
from terminal_gw.transport.pty import PtyDevice
from terminal_gw.transport.serial import PortState, ReconnectingPort, SerialPort
from tests.conftest import GNSS_CORPUS, REPO
from tests.waiting import wait_until

START = datetime(2026, 11, 25, 23, 59, 50, tzinfo=UTC)


def valid_sentences(data: bytes) -> list[list[str]]:
    """The fields of each checksum-valid sentence (a check of our own, not the framer's)."""
    out = []
    for line in data.split(b"\r\n"):
        if not line.startswith(b"$") or len(line) < 4 or line[-3:-2] != b"*":
            continue
        body = line[1:-3]
        if reduce(xor, body, 0) == int(line[-2:], 16):
            out.append(body.decode("ascii").split(","))
    return out


def invalid_lines(data: bytes) -> list[bytes]:
    lines = [x for x in data.split(b"\r\n") if x]
    return [x for x in lines if not valid_sentences(x + b"\r\n")]


def degrees(value: str, hemi: str) -> float:
    dot = value.index(".")
    deg = float(value[: dot - 2]) + float(value[dot - 2 :]) / 60
    return -deg if hemi in "SW" else deg


def metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    dlat = math.radians(b[0] - a[0])
    dlon = math.radians(b[1] - a[1]) * math.cos(math.radians(a[0]))
    return 6_371_000 * math.hypot(dlat, dlon)


def generated(n: int, **kwargs: object) -> tuple[GnssSimulator, bytes]:
    with PtyDevice() as dev:
        sim = GnssSimulator(dev, start=START, **kwargs)  # type: ignore[arg-type]
        return sim, b"".join(b"".join(sim.next_epoch()) for _ in range(n))


def test_every_sentence_has_a_valid_checksum_and_ends_in_crlf() -> None:
    _, data = generated(30, with_gst=True)
    assert invalid_lines(data) == []
    assert data.endswith(b"\r\n")
    addresses = {f[0] for f in valid_sentences(data)}
    assert addresses == {"GNRMC", "GNVTG", "GNGGA", "GNGSA", "GPGSV", "GBGSV", "GNGST", "GNZDA"}


def test_gsa_carries_nmea_410_system_ids_and_gsv_signal_ids() -> None:
    _, data = generated(1)
    sentences = valid_sentences(data)
    assert sorted(f[18] for f in sentences if f[0] == "GNGSA") == ["1", "4"]
    for f in sentences:
        if f[0].endswith("GSV"):
            assert (len(f) - 5) % 4 == 0  # 4 fields a satellite, then the signal id
            assert f[-1] == "1"
            for i in range(4, len(f) - 1, 4):
                prn, el, az, snr = f[i : i + 4]
                assert 1 <= int(prn) <= 63
                assert 0 <= int(el) <= 90
                assert 0 <= int(az) < 360
                assert snr == "" or 10 <= int(snr) <= 60


def test_bd_talker_for_chinese_standard_receivers() -> None:
    _, data = generated(1, bds_talker="BD")
    addresses = {f[0] for f in valid_sentences(data)}
    assert "BDGSV" in addresses
    assert "GBGSV" not in addresses


def test_positions_move_plausibly() -> None:
    _, data = generated(120, track=Track(speed_kn=10.0, course_deg=90.0))
    ggas = [f for f in valid_sentences(data) if f[0] == "GNGGA"]
    rmcs = [f for f in valid_sentences(data) if f[0] == "GNRMC"]
    assert len(ggas) == len(rmcs) == 120
    points = [(degrees(f[2], f[3]), degrees(f[4], f[5])) for f in ggas]
    steps = [metres(a, b) for a, b in itertools.pairwise(points)]
    # 10 knots = 5.14 m/s, one epoch a second
    assert all(5.0 < s < 5.3 for s in steps), steps[:5]
    courses = [float(f[8]) for f in rmcs]
    assert all(60 <= c <= 120 for c in courses)  # weaving around 090
    assert max(courses) - min(courses) > 5  # and it does weave
    bearing = math.degrees(
        math.atan2(
            (points[-1][1] - points[0][1]) * math.cos(math.radians(points[0][0])),
            points[-1][0] - points[0][0],
        )
    )
    assert 60 < bearing < 120
    assert {f[6] for f in ggas} == {"1"}
    assert all(float(f[7]) == 10.0 for f in rmcs)


def test_time_runs_from_the_start_time_across_midnight() -> None:
    _, data = generated(21, rate_hz=2)
    zdas = [f for f in valid_sentences(data) if f[0] == "GNZDA"]
    assert zdas[0][1:5] == ["235950.00", "25", "11", "2026"]
    assert zdas[1][1] == "235950.50"
    assert zdas[-1][1:5] == ["000000.00", "26", "11", "2026"]
    rmc_dates = {f[9] for f in valid_sentences(data) if f[0] == "GNRMC"}
    assert rmc_dates == {"251126", "261126"}


def test_the_pipeline_decodes_fixes_and_sky() -> None:
    _, data = generated(10, with_gst=True)
    pipeline = GnssPipeline()
    records = pipeline.feed(data, now=0.0) + pipeline.flush(now=0.0)
    fixes = [r for r in records if isinstance(r, Fix)]
    skies = [r for r in records if isinstance(r, Sky)]
    assert len(fixes) >= 9
    assert len(skies) >= 9
    fix = fixes[-1]
    assert fix.mode == 3
    assert fix.used is not None
    assert set(fix.used) == {"gps", "bds"}
    assert fix.speed == pytest.approx(8.0 * 1852 / 3600, abs=0.01)
    assert fix.eph is not None
    assert {s.gnssid for s in skies[-1].satellites} == {0, 3}
    assert pipeline.counters["bad_checksum"] == 0


def test_nofix_fault_sends_mode_1_with_empty_fields() -> None:
    with PtyDevice() as dev:
        sim = GnssSimulator(dev, start=START)
        sim.set_fault("nofix")
        data = b"".join(sim.next_epoch())
        more = b"".join(sim.next_epoch())
    assert invalid_lines(data) == []
    by = {f[0]: f for f in valid_sentences(data)}
    assert by["GNGGA"][2:7] == ["", "", "", "", "0"]
    assert by["GNRMC"][2] == "V"
    assert by["GNGSA"][2] == "1"
    assert by["GNZDA"][1] == "235950.00"  # the receiver clock runs on
    pipeline = GnssPipeline()
    records = pipeline.feed(data + more, now=0.0) + pipeline.flush(now=0.0)
    fixes = [r for r in records if isinstance(r, Fix)]
    assert fixes
    assert fixes[0].mode == 1
    assert fixes[0].lat is None


def test_unknown_fault_is_refused() -> None:
    with PtyDevice() as dev:
        sim = GnssSimulator(dev)
        with pytest.raises(ValueError, match="unknown fault"):
            sim.set_fault("smoke")  # type: ignore[arg-type]


# --- on a pty, at real time -----------------------------------------------------------


async def read_for(port: SerialPort, seconds: float) -> bytes:
    got = b""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        try:
            async with asyncio.timeout(left):
                got += await port.read()
        except TimeoutError:
            break
    return got


async def test_silent_and_garbage_faults_over_a_pty(tmp_path: Path) -> None:
    dev = PtyDevice(tmp_path / "gnss0")
    sim = GnssSimulator(dev, rate_hz=10)
    port = await SerialPort.open(dev.path, 9600)
    try:
        async with asyncio.TaskGroup() as tg:
            runner = tg.create_task(sim.run(), name="sim")
            assert len(valid_sentences(await read_for(port, 0.35))) >= 20
            sim.set_fault("silent")
            await read_for(port, 0.05)  # what was already on its way
            assert await read_for(port, 0.3) == b""
            sim.set_fault("garbage")
            garbage = await read_for(port, 0.3)
            assert len(garbage) > 100
            assert valid_sentences(garbage) == []
            sim.set_fault(None)
            await read_for(port, 0.05)
            assert len(valid_sentences(await read_for(port, 0.3))) >= 10
            runner.cancel()
    finally:
        await port.close()
        dev.close()


async def test_hangup_fault_recreates_the_pty_behind_the_same_link(tmp_path: Path) -> None:
    link = tmp_path / "by-id" / "gnss0"
    dev = PtyDevice(link)
    recreated: list[str] = []
    sim = GnssSimulator(dev, rate_hz=10, hangup_s=0.3, on_recreate=recreated.append)
    port = ReconnectingPort(dev.path, 9600, backoff=Backoff(0.02, 0.2), stale_after_s=5)
    got = bytearray()

    async def reader() -> None:
        while True:
            got.extend(await port.read())

    try:
        async with asyncio.TaskGroup() as tg:
            runner = tg.create_task(sim.run(), name="sim")
            reading = tg.create_task(reader(), name="reader")
            await wait_until(lambda: valid_sentences(bytes(got)), what="sentences")
            first_pts = dev.slave_path
            sim.set_fault("hangup")
            assert not dev.is_up
            assert not link.is_symlink()  # unplugged: the by-id link is gone
            await wait_until(lambda: port.state is PortState.WAITING, what="hang-up noticed")
            assert port.reason in ("hangup", "absent")
            del got[:]
            await wait_until(lambda: len(valid_sentences(bytes(got))) > 10, what="data again")
            assert recreated
            assert sim.fault is None
            assert str(link.readlink()) == dev.slave_path
            assert port.state is PortState.OPEN
            assert port.opens == 2
            assert first_pts  # the old pty is gone; the link names whichever is current
            runner.cancel()
            reading.cancel()
    finally:
        await port.close()
        dev.close()


async def test_capture_plays_in_order_paced_by_sentence_times(tmp_path: Path) -> None:
    path = GNSS_CORPUS / "beidou-bd.log"
    steps = load_capture(path)
    times = [s.t for s in steps]
    assert all(t is not None for t in times)
    expected = b"".join(
        line for line in path.read_bytes().splitlines(keepends=True) if not line.startswith(b"#")
    )
    assert b"".join(s.data for s in steps) == expected

    dev = PtyDevice(tmp_path / "gnss0")
    sim = GnssSimulator(dev, capture=steps, speed=10.0)  # 1 s epochs every 0.1 s
    port = await SerialPort.open(dev.path, 9600)
    try:
        async with asyncio.TaskGroup() as tg:
            started = time.monotonic()
            runner = tg.create_task(sim.run(duration_s=0.45), name="sim")
            got = await read_for(port, 0.7)
            await runner
            elapsed = time.monotonic() - started
    finally:
        await port.close()
        dev.close()
    assert elapsed < 2.0  # the 0.7 s read, then the sim stopped at its duration
    # at 0, 0.1, 0.2, 0.3, 0.4 s (the last one may miss the end on a busy machine); unpaced it
    # would be hundreds, at the capture's own pace one
    n = sim.epochs
    assert n in (4, 5)
    assert got == b"".join(s.data for s in steps[:n])
    assert [sentence_time(x) for x in got.splitlines() if b"GGA" in x] == times[:n]


def test_every_corpus_capture_loads(tmp_path: Path) -> None:
    for path in sorted(GNSS_CORPUS.glob("*.log")):
        steps = load_capture(path)
        assert len(steps) >= 5, path.name
        stamped = [s.t for s in steps if s.t is not None]
        assert len(stamped) >= len(steps) - 1, path.name


async def test_simulate_gnss_command(tmp_path: Path) -> None:
    """`terminal-gw simulate gnss` prints its link, serves NMEA there, and cleans up."""
    link = tmp_path / "gnss0"
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "terminal_gw", "simulate", "gnss", "--link", str(link)),
        *("--rate", "10", "--duration", "1.5", "--fault", "nofix", "--fault-at", "0.6"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(10):
            first = (await proc.stdout.readline()).decode()
            second = (await proc.stdout.readline()).decode()
        assert first.startswith("gnss simulator: /dev/pts/")
        assert str(link) in second
        port = await SerialPort.open(str(link), 9600)
        try:
            data = await read_for(port, 1.2)
        finally:
            await port.close()
        async with asyncio.timeout(10):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert "fault: nofix" in out.decode()
    ggas = [f for f in valid_sentences(data) if f[0] == "GNGGA"]
    assert {f[6] for f in ggas} == {"0", "1"}  # a fix, then none
    assert not link.is_symlink()


def test_simulate_rejects_a_rate_out_of_range() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "terminal_gw", "simulate", "gnss", "--rate", "20"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "1 to 10 Hz" in result.stderr
