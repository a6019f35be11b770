"""Clock: skew against GNSS time raises an event on crossing; chrony gets real SOCK samples."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from terminal_gw.clock import SOCK_MAGIC, ClockWatch, parse_iso_utc
from terminal_gw.models import Fix

T0 = parse_iso_utc("2020-07-11T22:37:45.000Z")


def fix_at(t: str, mode: int = 3) -> Fix:
    return Fix(time=t, mode=mode, lat=1.0, lon=2.0)  # type: ignore[arg-type]


def test_skew_event_on_crossing_only() -> None:
    watch = ClockWatch(threshold_s=2.0)
    assert watch.source == "system"
    # The Pi booted with a clock years behind.
    wrong = T0 - 5 * 365 * 86400
    event = watch.observe(fix_at("2020-07-11T22:37:45.000Z"), wrong)
    assert event is not None
    assert event.kind == "clock_skew"
    assert event.data["offset_s"] < -1e8
    assert event.clock == "gnss"
    assert event.time.startswith("2020-07-11T22:37:45")  # the corrected time, not 2015
    assert watch.observe(fix_at("2020-07-11T22:37:46.000Z"), wrong + 1) is None
    assert watch.corrected(wrong + 10) == T0 + 10
    # Clock stepped right (NTP came back): one event saying so.
    back = watch.observe(fix_at("2020-07-11T22:37:47.000Z"), T0 + 2.05)
    assert back is not None
    assert back.kind == "clock_ok"
    assert watch.observe(fix_at("2020-07-11T22:37:48.000Z"), T0 + 3.01) is None


def test_no_fix_no_measurement() -> None:
    watch = ClockWatch(threshold_s=2.0)
    assert watch.observe(fix_at("2020-07-11T22:37:45.000Z", mode=1), T0 + 100) is None
    assert watch.offset_s is None
    assert watch.observe(Fix(mode=3), T0) is None


def test_chrony_sock_samples(tmp_path: Path) -> None:
    path = tmp_path / "chrony.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(2)
    watch = ClockWatch(threshold_s=2.0, chrony_socket=path)
    try:
        watch.observe(fix_at("2020-07-11T22:37:45.000Z"), T0 + 0.25)
        data = server.recv(64)
    finally:
        server.close()
        watch.close()
    sec, usec, offset, pulse, leap, _pad, magic = struct.unpack("@lldiiii", data)
    assert magic == SOCK_MAGIC
    assert sec == int(T0)
    assert abs(usec - 250_000) < 2
    assert abs(offset + 0.25) < 1e-9  # true time = system time + offset
    assert (pulse, leap) == (0, 0)
    assert watch.chrony_samples == 1


def test_chrony_absent_is_counted_not_fatal(tmp_path: Path) -> None:
    watch = ClockWatch(threshold_s=2.0, chrony_socket=tmp_path / "missing.sock")
    watch.observe(fix_at("2020-07-11T22:37:45.000Z"), T0)
    assert watch.chrony_errors == 1
    watch.close()
