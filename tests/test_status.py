"""Status: health snapshot, the local status file, `terminal-gw status` exit codes, metrics."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from terminal_gw.status import MetricsServer, StatusBoard, StatusFile, write_status_file
from tests.waiting import FakeClock, wait_until


def status_cli(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "terminal_gw", "status", "--file", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def make_board(clock: FakeClock | None = None) -> StatusBoard:
    board = StatusBoard("vessel-1", stall_s=30, clock=clock or FakeClock())
    board.progress("gnss")
    board.progress("uplink")
    board.add_counters("sentences", lambda: {"good": 10, "bad_checksum": 2})
    board.add_gauge("outbox_depth", lambda: 42)
    board.add_gauge("link", lambda: "connected")
    return board


def test_board_health_and_stall() -> None:
    clock = FakeClock()
    board = make_board(clock)
    clock.advance(29)
    assert board.healthy()
    board.progress("uplink")
    clock.advance(2)  # gnss silent for 31 s, the link for 2 s
    assert board.stalled() == ["gnss"]
    assert not board.healthy()
    snap = board.snapshot()
    assert snap["healthy"] is False
    assert snap["stages"]["gnss"]["idle_s"] == 31.0
    assert snap["stages"]["uplink"]["idle_s"] == 2.0
    board.progress("gnss")
    assert board.healthy()
    assert snap["counters"]["sentences"]["bad_checksum"] == 2
    assert snap["gauges"]["outbox_depth"] == 42


def test_broken_counter_source_does_not_break_snapshot() -> None:
    board = make_board()

    def broken() -> dict[str, int]:
        raise RuntimeError("boom")

    board.add_counters("modem", broken)
    snap = board.snapshot()
    assert snap["counters"]["modem"]["error"] == 1
    assert snap["counters"]["sentences"]["good"] == 10


def test_status_cli_exit_codes(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    res = status_cli(path)
    assert res.returncode == 3
    assert "not running" in res.stderr

    board = make_board()
    write_status_file(path, board.snapshot())
    res = status_cli(path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "healthy" in res.stdout
    assert "gnss" in res.stdout
    assert "outbox_depth" in res.stdout

    board.stages["uplink"].state = "backing_off"
    write_status_file(path, board.snapshot())
    res = status_cli(path)
    assert res.returncode == 1
    assert "UNHEALTHY" in res.stdout

    # A status file left by a daemon that died: the pid is gone.
    snap = board.snapshot()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    snap["pid"] = dead.pid
    write_status_file(path, snap)
    assert status_cli(path).returncode == 3

    # A daemon that stopped updating its status is unhealthy.
    snap = make_board().snapshot()
    snap["updated"] = time.time() - 3600
    write_status_file(path, snap)
    res = status_cli(path)
    assert res.returncode == 1
    assert "not updated" in res.stdout


def test_status_json(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    write_status_file(path, make_board().snapshot())
    res = subprocess.run(
        [sys.executable, "-m", "terminal_gw", "status", "--file", str(path), "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    data = json.loads(res.stdout)
    assert data["pid"] == os.getpid()
    assert data["verdict"] == "healthy"


async def test_a_periodic_write_that_finishes_late_does_not_undo_the_final_status(
    tmp_path: Path,
) -> None:
    path = tmp_path / "status.json"
    status_file = StatusFile(path)
    fixes = 1500
    board = make_board()
    board.add_counters("records_in", lambda: {"fix": fixes})
    periodic = board.snapshot()
    periodic_number = status_file.take()
    # The daemon stops while that periodic write is still waiting for its thread.
    fixes = 1771
    final = board.snapshot()
    final["stopped"] = True
    assert status_file.write(final, status_file.take())
    late = asyncio.create_task(asyncio.to_thread(status_file.write, periodic, periodic_number))
    assert await late is False
    on_disk = json.loads(path.read_text())
    assert on_disk["stopped"] is True
    assert on_disk["counters"]["records_in"] == {"fix": 1771}


async def test_metrics_endpoint() -> None:
    server = MetricsServer(make_board(), "127.0.0.1", 0)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(server.run(), name="metrics")
        await wait_until(lambda: server._server is not None, what="metrics server listening")
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        await writer.drain()
        body = (await reader.read()).decode()
        writer.close()
        await writer.wait_closed()
        task.cancel()
    assert body.startswith("HTTP/1.0 200")
    assert 'tgw_sentences_total{outcome="bad_checksum"} 2' in body
    assert "tgw_outbox_depth 42" in body
    assert "tgw_healthy 1" in body
