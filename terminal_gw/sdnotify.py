"""systemd's notify protocol: READY=1, WATCHDOG=1, STATUS=..., STOPPING=1 as one datagram to
$NOTIFY_SOCKET. A no-op outside systemd; a failure is logged and returned, never hidden."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

READY = "READY=1"
WATCHDOG = "WATCHDOG=1"
STOPPING = "STOPPING=1"
RELOADING = "RELOADING=1"


def _log() -> structlog.typing.FilteringBoundLogger:
    # Looked up per call: a failure is rare, and this honours the logging set up later.
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger("terminal_gw.sdnotify")
    return logger


def status(text: str) -> str:
    """The STATUS= line systemctl shows: one line of text."""
    return "STATUS=" + " ".join(text.split())


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """True when started by systemd with a notify socket (Type=notify)."""
    return bool((os.environ if environ is None else environ).get("NOTIFY_SOCKET"))


def notify(state: str, environ: Mapping[str, str] | None = None, *, wait: bool = True) -> bool:
    """Send `state` (e.g. "READY=1\\nSTATUS=running") to systemd; True if it was sent.

    With `wait` False the send never blocks: when the socket's queue is full (systemd busy),
    the state is not sent, which suits the periodic watchdog pings of the event loop (the
    next ping follows soon); READY and STOPPING wait up to a second instead."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address[0] == "@":
        address = "\0" + address[1:]  # abstract namespace
    elif address[0] != "/":
        _log().warning("sd_notify: unsupported NOTIFY_SOCKET", address=address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # A datagram socket blocks only when systemd's queue is full: briefly at most.
            sock.settimeout(1.0 if wait else 0.0)
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError as exc:
        _log().warning("sd_notify failed", state=state, error=str(exc))
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """WatchdogSec in seconds when systemd expects WATCHDOG=1 from this process, else None.

    Ping at half this interval."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None  # meant for another process (e.g. our parent)
    return int(usec) / 1_000_000


class Notifier:
    """The notify functions bound to one environment (the process's, by default): what the
    supervisor holds, and what its tests replace."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = environ

    @property
    def enabled(self) -> bool:
        """True when there is a notify socket to send to."""
        return enabled(self.environ)

    def notify(self, state: str, *, wait: bool = True) -> bool:
        """Send `state`; True if it was sent (see `notify`)."""
        return notify(state, self.environ, wait=wait)

    def watchdog_interval(self) -> float | None:
        """WatchdogSec in seconds, if systemd expects pings from this process."""
        return watchdog_interval(self.environ)
