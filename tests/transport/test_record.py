"""`terminal-gw record`: a device's traffic, both directions, in a capture that replays."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

from terminal_gw.transport.capture import read_capture
from terminal_gw.transport.pty import PtyDevice
from tests.waiting import wait_until_sync


class Stderr:
    """A child's stderr, read line by line in a thread while the test goes on."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line)

    def has(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def text(self) -> str:
        """Everything, once the child has exited."""
        self._thread.join(timeout=10)
        return "".join(self.lines)


def record(*args: str) -> tuple[subprocess.Popen[str], Stderr]:
    """`terminal-gw record ARGS`, started; wait for its device with `port_open` in stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "terminal_gw", "record", *args],
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, Stderr(proc)


def test_record_proxy_both_directions(tmp_path: Path) -> None:
    device = PtyDevice(tmp_path / "modem0")
    out = tmp_path / "session.cap"
    proxy = tmp_path / "proxy0"
    proc, stderr = record(
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
    )
    try:
        # Bytes sent before the recorder has the device open would be lost, as on a UART.
        wait_until_sync(lambda: stderr.has("port_open"), 30, "recorder opened the device")
        wait_until_sync(proxy.exists, what="proxy pty created")
        fd = os.open(proxy, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            os.write(fd, b"AT+CSQ\r")
            got = bytearray()

            def to_device() -> bool:
                got.extend(device.read_nowait())
                return got.endswith(b"\r")

            wait_until_sync(to_device, what="command passed to the device")
            assert got == b"AT+CSQ\r"  # passed through to the device unchanged
            device.write(b"\r\n+CSQ: 17,99\r\n\r\nOK\r\n\x00\xff")
            reply = bytearray()

            def to_program() -> bool:
                with contextlib.suppress(BlockingIOError):
                    reply.extend(os.read(fd, 100))
                return reply.endswith(b"\x00\xff")

            wait_until_sync(to_program, what="reply passed to the program")
            assert b"+CSQ: 17,99" in reply
        finally:
            os.close(fd)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        device.close()
    err = stderr.text()
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
    proc, stderr = record("--port", device.path, "--out", str(out), "--duration", "5")
    try:
        # Bytes sent before the recorder has the device open would be lost, as on a UART.
        wait_until_sync(lambda: stderr.has("port_open"), 30, "recorder opened the device")
        rmc = b"$GNRMC,223745.00,A,3806.62964,N,12237.61382,W,0.040,,110720,,,D,V*0E\r\n"
        gga = b"$GNGGA,223745.00,3806.62964,N,12237.61382,W,2,12,0.54,83.1,M,-29.5,M,,0000*44\r\n"
        device.write(rmc + gga)
        proc.wait(timeout=30)  # --duration ends it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        device.close()
    err = stderr.text()
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
