"""Supervisor: failing stages restart without taking others down; watchdog; signals."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time

from terminal_gw.models import Event
from terminal_gw.sdnotify import Notifier
from terminal_gw.status import StatusBoard
from terminal_gw.supervisor import Stage, Supervisor


def drain(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


async def test_failing_stage_restarts_and_others_keep_running() -> None:
    board = StatusBoard("d")
    events: list[Event] = []
    sup = Supervisor(board, events=events.append, backoff_min_s=0.01, backoff_max_s=0.05)
    ticks = 0
    attempts = 0
    enough = asyncio.Event()

    async def steady() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            board.progress("steady")
            await asyncio.sleep(0.005)

    async def flaky() -> None:
        nonlocal attempts
        attempts += 1
        if attempts >= 4:
            enough.set()
        await asyncio.sleep(0.01)
        raise OSError("port vanished")

    async def stopper() -> None:
        await enough.wait()
        sup.stop_requested.set()

    await sup.run(
        [Stage("steady", steady), Stage("flaky", flaky), Stage("stopper", stopper, restart=False)],
        handle_signals=False,
    )
    assert attempts >= 4
    assert ticks > 10
    assert board.stages["flaky"].restarts >= 3
    assert board.stages["flaky"].last_error == "OSError: port vanished"
    restarts = [e for e in events if e.kind == "stage_restart"]
    assert len(restarts) >= 3
    assert restarts[0].data["stage"] == "flaky"
    assert restarts[0].severity == "error"


async def test_watchdog_stops_when_a_stage_hangs(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "150000", "WATCHDOG_PID": str(os.getpid())}
    board = StatusBoard("d", stall_s=0.3)
    sup = Supervisor(board, events=lambda e: None, notifier=Notifier(env))
    hang = asyncio.Event()
    phases: dict[str, list[str]] = {}

    async def worker() -> None:
        while True:
            if not hang.is_set():
                board.progress("worker")
            await asyncio.sleep(0.02)  # once hung, it never reports progress again

    async def script() -> None:
        await asyncio.sleep(0.6)
        phases["healthy"] = drain(sock)
        hang.set()
        await asyncio.sleep(0.5)  # stall_s passes
        drain(sock)
        await asyncio.sleep(0.5)
        phases["hung"] = drain(sock)
        sup.stop_requested.set()

    await sup.run(
        [Stage("worker", worker), Stage("script", script, restart=False)], handle_signals=False
    )
    healthy = phases["healthy"]
    assert "READY=1" in healthy
    assert healthy.count("WATCHDOG=1") >= 3
    assert "WATCHDOG=1" not in phases["hung"]
    assert any(m.startswith("STATUS=stalled: worker") for m in phases["hung"])


async def test_sigterm_stops_inputs_then_commits_within_timeout() -> None:
    board = StatusBoard("d")
    sup = Supervisor(board, events=lambda e: None)
    order: list[str] = []

    async def reader() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            order.append("reader stopped")

    async def committer() -> None:
        await asyncio.Event().wait()

    async def on_stopping() -> None:
        order.append("commit")

    async def send_sigterm() -> None:
        await asyncio.sleep(0.05)
        sup.handle_signal(signal.SIGTERM)

    t0 = time.monotonic()
    await sup.run(
        [
            Stage("reader", reader, input=True),
            Stage("committer", committer),
            Stage("kill", send_sigterm, restart=False),
        ],
        on_stopping=on_stopping,
        handle_signals=False,
    )
    assert order == ["reader stopped", "commit"]
    assert time.monotonic() - t0 < 2


async def test_second_signal_forces_a_hung_shutdown() -> None:
    board = StatusBoard("d")
    sup = Supervisor(board, events=lambda e: None)

    async def on_stopping() -> None:
        await asyncio.sleep(30)  # a broker that never answers

    async def signals() -> None:
        await asyncio.sleep(0.05)
        sup.handle_signal(signal.SIGINT)
        await asyncio.sleep(0.1)
        sup.handle_signal(signal.SIGINT)

    t0 = time.monotonic()
    await sup.run(
        [Stage("signals", signals, restart=False)],
        on_stopping=on_stopping,
        shutdown_timeout_s=20,
        handle_signals=False,
    )
    assert time.monotonic() - t0 < 2


async def test_sighup_calls_reload() -> None:
    board = StatusBoard("d")
    sup = Supervisor(board, events=lambda e: None)
    reloads = 0

    async def on_reload() -> None:
        nonlocal reloads
        reloads += 1
        if reloads == 2:
            sup.stop_requested.set()

    async def hups() -> None:
        for _ in range(2):
            await asyncio.sleep(0.05)
            sup.handle_signal(signal.SIGHUP)

    await sup.run([Stage("hups", hups, restart=False)], on_reload=on_reload, handle_signals=False)
    assert reloads == 2
