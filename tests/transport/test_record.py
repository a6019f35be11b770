"""`terminal-gw record`: a device's traffic, both directions, in a capture that replays."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from terminal_gw.transport.capture import read_capture
from terminal_gw.transport.pty import PtyDevice


def wait_for(pred: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_record_proxy_both_directions(tmp_path: Path) -> None:
    device = PtyDevice(tmp_path / "modem0")
    out = tmp_path / "session.cap"
    proxy = tmp_path / "proxy0"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "terminal_gw",
            "record",
            "--port",
            device.path,
            "--baud",
            "115200",
            "--name",
            "modem",
            "--proxy",
            str(proxy),
            "--out",
            str(out),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(proxy.exists)
        fd = os.open(proxy, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(fd, b"AT+CSQ\r")
            got = b""
            deadline = time.monotonic() + 5
            while b"AT+CSQ" not in got and time.monotonic() < deadline:
                got += device.read_nowait()
                time.sleep(0.02)
            assert got == b"AT+CSQ\r"  # passed through to the device unchanged
            device.write(b"\r\n+CSQ: 17,99\r\n\r\nOK\r\n\x00\xff")
            reply = b""
            deadline = time.monotonic() + 5
            while b"OK" not in reply and time.monotonic() < deadline:
                try:
                    reply += os.read(fd, 100)
                except BlockingIOError:
                    time.sleep(0.02)
            assert b"+CSQ: 17,99" in reply
        finally:
            os.close(fd)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        device.close()
    assert proc.returncode == 0, err
    chunks = list(read_capture(out))
    sent = b"".join(c.data for c in chunks if c.direction == ">")
    received = b"".join(c.data for c in chunks if c.direction == "<")
    assert sent == b"AT+CSQ\r"
    assert received == b"\r\n+CSQ: 17,99\r\n\r\nOK\r\n\x00\xff"  # binary-safe
    assert {c.port for c in chunks} == {"modem"}
    out.read_text(encoding="ascii")  # plain ASCII text: readable with less as it is
    assert "\\x00\\xff" in out.read_text()


def test_record_plain_then_replay(tmp_path: Path) -> None:
    device = PtyDevice(tmp_path / "gnss0")
    out = tmp_path / "gnss.cap"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "terminal_gw",
            "record",
            "--port",
            device.path,
            "--out",
            str(out),
            "--duration",
            "3",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)
        rmc = b"$GNRMC,223745.00,A,3806.62964,N,12237.61382,W,0.040,,110720,,,D,V*0E\r\n"
        gga = b"$GNGGA,223745.00,3806.62964,N,12237.61382,W,2,12,0.54,83.1,M,-29.5,M,,0000*44\r\n"
        device.write(rmc + gga)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        device.close()
    assert proc.returncode == 0, err
    replay = subprocess.run(
        [sys.executable, "-m", "terminal_gw", "replay", "--jsonl", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert replay.returncode == 0, replay.stderr
    assert '"lat":38.110494' in replay.stdout
