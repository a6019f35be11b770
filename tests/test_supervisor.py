"""Supervisor: failing stages restart without taking others down; watchdog; signals."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Callable

import pytest

from terminal_gw.models import Event
from terminal_gw.sdnotify import Notifier
from terminal_gw.status import StatusBoard
from terminal_gw.supervisor import Stage, Supervisor
from tests.waiting import FakeClock, wait_until


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
    """A stage that stops reporting progress for longer than stall_s stops the watchdog pings
    (systemd then restarts the daemon) and says which stage; progress again resumes them.
    Stall time is the board's clock, moved by the test: no real waiting on it."""
    sock, path = notify_socket
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "150000", "WATCHDOG_PID": str(os.getpid())}
    clock = FakeClock()
    board = StatusBoard("d", stall_s=30, clock=clock)
    sup = Supervisor(board, events=lambda e: None, notifier=Notifier(env), clock=clock)
    hang = asyncio.Event()
    got: list[str] = []
    phases: dict[str, list[str]] = {}

    async def worker() -> None:
        while True:
            if not hang.is_set():
                board.progress("worker")
            await asyncio.sleep(0.02)  # once hung, it never reports progress again

    async def listen() -> None:
        loop = asyncio.get_running_loop()
        while True:
            got.append((await loop.sock_recv(sock, 4096)).decode())

    def received(after: int, what: str, n: int = 1) -> Callable[[], bool]:
        return lambda: sum(m.startswith(what) for m in got[after:]) >= n

    async with asyncio.TaskGroup() as tg:
        listener = tg.create_task(listen(), name="notify-listener")
        running = tg.create_task(
            sup.run([Stage("worker", worker)], handle_signals=False), name="supervisor"
        )
        try:
            await wait_until(received(0, "WATCHDOG=1", 3), what="three pings while healthy")
            phases["healthy"] = got[:]
            hang.set()
            clock.advance(29)  # not quite stall_s: still pinging
            await wait_until(received(len(got), "WATCHDOG=1", 2), what="pings before stall_s")
            clock.advance(2)  # now past stall_s
            await wait_until(received(len(got), "STATUS=stalled"), what="stall reported")
            mark = len(got)
            await wait_until(received(mark, "STATUS=stalled", 3), what="stall reported again")
            phases["hung"] = got[mark:]
            hang.clear()  # progress again: pings resume
            await wait_until(received(len(got), "WATCHDOG=1"), what="pings after progress")
        finally:
            sup.stop_requested.set()
            await running
            listener.cancel()
    healthy = phases["healthy"]
    assert "READY=1" in healthy
    assert "WATCHDOG=1" not in phases["hung"]
    assert all(m == "STATUS=stalled: worker" for m in phases["hung"]), phases["hung"]


async def test_a_stage_that_ran_a_good_while_restarts_after_the_short_backoff() -> None:
    """Restart delays double while a stage keeps failing, and start again from the short one
    once it ran for a good while (more than 5 x backoff_max_s, by the supervisor's clock)."""
    clock = FakeClock()
    board = StatusBoard("d", clock=clock)
    events: list[Event] = []
    sup = Supervisor(
        board, events=events.append, backoff_min_s=0.01, backoff_max_s=0.08, clock=clock
    )
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs == 5:
            clock.advance(1.0)  # this run lasts long by the clock: then it fails again
        if runs == 6:
            sup.stop_requested.set()
            return
        raise OSError("port vanished")

    await sup.run([Stage("flaky", flaky)], handle_signals=False)
    delays = [float(e.message.rsplit(" ", 1)[1].rstrip("s")) for e in events]
    # 0.01, 0.02, 0.04, 0.08 (each +-20 %), then back to 0.01 after the long run.
    assert len(delays) == 5, [e.message for e in events]
    assert delays[3] >= 0.06
    assert delays[4] <= 0.02


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


@pytest.mark.parametrize("when", ["running", "stopping"])
async def test_cancelled_supervisor_leaves_no_task_behind(when: str) -> None:
    """A daemon cancelled from outside (its caller failed) leaves nothing running, whether it
    was waiting for a stop or in its shutdown (the autouse fixture fails on a leftover)."""
    board = StatusBoard("d")
    sup = Supervisor(board, events=lambda e: None)
    stopping = asyncio.Event()

    async def on_stopping() -> None:
        stopping.set()
        await asyncio.Event().wait()  # a commit that never finishes

    async def idle() -> None:
        board.progress("idle")
        await asyncio.Event().wait()

    task = asyncio.create_task(
        sup.run([Stage("idle", idle)], on_stopping=on_stopping, handle_signals=False)
    )
    await wait_until(lambda: "idle" in board.stages, what="stage running")
    if when == "stopping":
        sup.stop_requested.set()
        await wait_until(stopping.is_set, what="shutdown begun")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
