"""`terminal-gw replay --port rdss`: a recorded terminal played through the driver."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from terminal_gw.sim.rdss import sim_sentence
from terminal_gw.transport.capture import CaptureWriter
from tests.conftest import REPO


def _replay(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "terminal_gw", "replay", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )


def test_a_recorded_session_replays_as_the_terminal(tmp_path: Path) -> None:
    card = sim_sentence("BDICI,0242286,00242286,0000011,6,60,3,N,0")
    rx = sim_sentence("BDTXR,1,0166166,0,,CDA8D0C5B2E2CAD4")
    mixed = sim_sentence("BDTXR,1,0179773,2,,A468656C6C6F")
    stream = b"\x00\xff" + card + rx + rx + sim_sentence("GPGGA,1") + mixed
    path = tmp_path / "session.cap"
    with CaptureWriter(path, start=1_700_000_000.0) as w:
        w.write("rdss", ">", sim_sentence("CCICA,0,00"), ts=1_700_000_000.0)
        for i in range(len(stream)):  # one byte a read: fragments everywhere
            w.write("rdss", "<", stream[i : i + 1], ts=1_700_000_001.0 + i / 1000)
        w.write("gnss", "<", b"$GPGGA,x*00\r\n", ts=1_700_000_002.0)
    result = _replay("--port", "rdss", "--jsonl", path)
    assert result.returncode == 0, result.stderr
    out = [json.loads(line) for line in result.stdout.splitlines()]
    rx_records = [r["payload"] for r in out if r["topic"] == "tgw/replay/bds/rx"]
    assert [(m["from"], m["text"]) for m in rx_records] == [
        ("0166166", "通信测试"),
        ("0179773", "hello"),
    ]
    assert rx_records[0]["received"].startswith("2023-11-14T22:13:21")  # the recorded time
    status = out[-1]
    assert status["topic"] == "tgw/replay/rdss/status"
    assert status["payload"]["card"]["level"] == 3
    assert status["payload"]["counters"]["rx_duplicates"] == 1
    assert status["payload"]["counters"]["sentences_bad"] == 1  # the GGA on the RDSS port
    summary = _replay("--port", "rdss", path)
    assert "rdss dialect: 2.1" in summary.stdout
    assert "rdss host sentences: CCICA 1" in summary.stdout


def test_no_rdss_chunks_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "gnss.cap"
    with CaptureWriter(path, start=1_700_000_000.0) as w:
        w.write("gnss", "<", b"$GPGGA,x*00\r\n", ts=1_700_000_000.0)
    result = _replay("--port", "rdss", path)
    assert result.returncode == 2
    assert "no 'rdss' chunks" in result.stderr
