"""`terminal-gw simulate rdss`: a terminal on a pty answering in its dialect."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
import tty
from pathlib import Path

from tests.conftest import REPO
from tests.waiting import wait_until_sync


def _read_until(fd: int, marker: bytes, timeout: float = 10.0) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while marker not in got and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            got += os.read(fd, 4096)
    return got


def test_simulate_rdss_answers_its_own_dialect_and_refuses_a_fast_send(tmp_path: Path) -> None:
    link = tmp_path / "rdss0"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "terminal_gw",
            "simulate",
            "rdss",
            "--link",
            str(link),
            "--user-id",
            "300001",
            "--level",
            "2",
            "--interval",
            "30",
            "--duration",
            "30",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_sync(link.exists, what="the simulator's link")
        fd = os.open(link, os.O_RDWR | os.O_NOCTTY)
        try:
            tty.setraw(fd)
            os.write(fd, b"$CCICR,0,00*68\r\n$CCICA,0,00*7B\r\n")  # BDS-3 query: not answered
            answer = _read_until(fd, b"\r\n")
            assert answer.startswith(b"$BDICI,0300001,00300001,0000011,6,30,2,N,0*")
            os.write(fd, b"$CCTXA,0166166,1,1,3132*7E\r\n$CCTXA,0166166,1,1,3132*7E\r\n")
            feedback = _read_until(fd, b"TXA,N")
            assert b"$BDFKI,TXA,Y,Y,0,0000*" in feedback
            assert b"$BDFKI,TXA,N,Y,0,00" in feedback  # the second came inside the interval
        finally:
            os.close(fd)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert "dialect 2.1, card 0300001 level 2, interval 30s" in out
