"""The one port interface (read, write, close) every stage talks to, and the one reopen loop.

A serial port, a recording wrapper, a playback of a capture and a test's pty all have this
shape; the GNSS reader and the AT engine take any of them. `open_with_retry` is the loop that
opens a port and, after each failure, reports it and waits the backoff before the next try:
`ReconnectingPort` and the Tiantong driver both open through it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from terminal_gw.backoff import Retry
from terminal_gw.errors import TransportError

__all__ = ["OPEN_ERRORS", "Port", "PortFactory", "open_with_retry"]


class Port(Protocol):
    """What the stages need from a serial port."""

    async def read(self) -> bytes:
        """The next chunk of bytes from the device."""
        ...

    async def write(self, data: bytes) -> None:
        """Send bytes to the device."""
        ...

    async def close(self) -> None:
        """Release the device."""
        ...


#: Opens a port (the daemon injects one: a serial port, recorded when configured).
PortFactory = Callable[[], Awaitable[Port]]

#: What a failed open raises: the transport's own error, the OS's, or a timeout.
OPEN_ERRORS: tuple[type[Exception], ...] = (TransportError, OSError, TimeoutError)

P = TypeVar("P")


async def open_with_retry(
    open_once: Callable[[], Awaitable[P]],
    retry: Retry,
    *,
    failed: Callable[[Exception, float], None],
    wait: Callable[[float], Awaitable[None]],
    stopped: Callable[[], bool] = lambda: False,
    errors: tuple[type[Exception], ...] = OPEN_ERRORS,
) -> P | None:
    """Open with `open_once` until it works; after each failure call `failed(error, delay)`,
    then `wait(delay)`, the retry's next delay. None once `stopped()` (checked before each
    try). The caller resets `retry` when the port proves good."""
    while not stopped():
        try:
            return await open_once()
        except errors as exc:
            delay = retry.next_delay()
            failed(exc, delay)
            await wait(delay)
    return None
