"""sd_notify against real AF_UNIX datagram sockets, path and abstract."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import structlog

from terminal_gw import sdnotify


@pytest.fixture
def notify_socket(
    notify_socket: tuple[socket.socket, str],
) -> tuple[socket.socket, str]:
    """The shared stand-in for systemd's socket, read here with a 2 s timeout."""
    notify_socket[0].settimeout(2)
    return notify_socket


def test_ready_status_watchdog_stopping_arrive(notify_socket: tuple[socket.socket, str]) -> None:
    sock, address = notify_socket
    env = {"NOTIFY_SOCKET": address}
    assert sdnotify.enabled(env)
    assert sdnotify.notify(sdnotify.READY + "\n" + sdnotify.status("running: gnss ok"), env)
    assert sock.recv(4096) == b"READY=1\nSTATUS=running: gnss ok"
    for state in (sdnotify.WATCHDOG, sdnotify.STOPPING):
        assert sdnotify.notify(state, env)
        assert sock.recv(4096) == state.encode()


def test_abstract_socket() -> None:
    name = f"terminal-gw-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert sdnotify.notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_status_is_one_line() -> None:
    assert sdnotify.status("outbox\n 12 waiting") == "STATUS=outbox 12 waiting"


def test_no_socket_is_a_no_op() -> None:
    assert not sdnotify.enabled({})
    assert sdnotify.notify("READY=1", {}) is False


def test_os_environ_is_the_default(
    notify_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, address = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    assert sdnotify.notify("READY=1")
    assert sock.recv(4096) == b"READY=1"


def test_a_dead_socket_is_reported_not_hidden(tmp_path: Path) -> None:
    with structlog.testing.capture_logs() as logs:
        sent = sdnotify.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert sent is False
    assert logs[0]["event"] == "sd_notify failed"
    assert logs[0]["log_level"] == "warning"
    assert "No such file" in logs[0]["error"]


def test_an_unsupported_address_is_reported() -> None:
    with structlog.testing.capture_logs() as logs:
        assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1234"}) is False
    assert logs[0]["event"] == "sd_notify: unsupported NOTIFY_SOCKET"


def test_watchdog_interval() -> None:
    me = str(os.getpid())
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": me}) == 30.0
    # Set for another process (systemd names the main PID): not ours to ping.
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert sdnotify.watchdog_interval({}) is None


def test_notifier_binds_an_environment(notify_socket: tuple[socket.socket, str]) -> None:
    sock, address = notify_socket
    notifier = sdnotify.Notifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "20000000"})
    assert notifier.enabled
    assert notifier.watchdog_interval() == 20.0
    assert notifier.notify("WATCHDOG=1")
    assert sock.recv(4096) == b"WATCHDOG=1"
    quiet = sdnotify.Notifier({})
    assert not quiet.enabled
    assert quiet.notify("READY=1") is False
    assert quiet.watchdog_interval() is None


def test_a_full_queue_never_blocks_a_watchdog_ping(
    notify_socket: tuple[socket.socket, str],
) -> None:
    """Nobody reads the socket (systemd busy): once its queue is full, a ping that must not
    wait returns at once, unsent and logged; a waiting send gives up after a second."""
    _, address = notify_socket
    env = {"NOTIFY_SOCKET": address}
    sent = 0
    while sdnotify.notify("WATCHDOG=1", env, wait=False):
        sent += 1
        assert sent < 100_000, "the queue never filled"
    assert sent > 0
    started = time.monotonic()
    with structlog.testing.capture_logs() as logs:
        assert sdnotify.notify("WATCHDOG=1", env, wait=False) is False
    assert time.monotonic() - started < 0.1
    assert logs[0]["event"] == "sd_notify failed"
    started = time.monotonic()
    assert sdnotify.notify("STOPPING=1", env) is False
    assert 0.8 < time.monotonic() - started < 3.0
