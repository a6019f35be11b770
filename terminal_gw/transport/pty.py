"""Pseudo-terminals standing in for serial devices: simulators and tests use them.

A `PtyDevice` owns the master side. The client (the daemon) opens the slave by its path or by a
stable symlink, like `/dev/serial/by-id/...`. Hanging up closes the master, as unplugging a USB
adapter does: the client's reads fail, the symlink goes away; `recreate()` plugs a new pty in
under the same symlink.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import termios
import tty
from pathlib import Path
from types import TracebackType
from typing import Self

from terminal_gw.errors import TransportError

#: termios speed constant -> baud rate, for the rates this platform knows.
_RATES = "50 75 110 134 150 200 300 600 1200 1800 2400 4800 9600 19200 38400 57600 115200 230400"
_RATES += " 460800 500000 576000 921600 1000000"
_SPEEDS: dict[int, int] = {
    int(getattr(termios, f"B{rate}")): int(rate)
    for rate in _RATES.split()
    if hasattr(termios, f"B{rate}")
}


class PtyDevice:
    """A pty pair with a stable symlink to its slave; hang up and re-create like a USB device."""

    def __init__(self, link: Path | None = None) -> None:
        self.link = link
        self._master = -1
        self._slave = -1
        self.slave_path = ""
        self.dropped = 0  # bytes the client was not reading fast enough to take
        self.recreate()

    @property
    def path(self) -> str:
        """What a client opens: the symlink when there is one, else the slave path."""
        return str(self.link) if self.link is not None else self.slave_path

    @property
    def is_up(self) -> bool:
        """True while the pty exists (not hung up)."""
        return self._master >= 0

    @property
    def master_fd(self) -> int:
        """The master's file descriptor (non-blocking); -1 while hung up."""
        return self._master

    def recreate(self) -> None:
        """Create a new pty (closing any old one) and point the symlink at it."""
        self.hangup(remove_link=False)
        master, slave = os.openpty()
        # Raw from the start: no echo of what the simulator writes, no CR/LF translation,
        # whatever the client does (or before it opens the port).
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        # Holding the slave open keeps the master readable and writable between client opens.
        self.slave_path = os.ttyname(slave)
        if self.link is not None:
            self.link.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.link.with_name(f".{self.link.name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(self.slave_path)
            os.replace(tmp, self.link)  # atomic: a client never sees the link missing here

    def hangup(self, *, remove_link: bool = True) -> None:
        """Close the master: the client's reads fail (EIO/EOF); the symlink is removed."""
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1
        if remove_link and self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()

    def close(self) -> None:
        """Hang up for good and remove the symlink."""
        self.hangup(remove_link=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def write(self, data: bytes) -> int:
        """Write to the client; returns bytes accepted. Bytes the pty cannot take are dropped
        (and counted), as a UART drops what nobody reads."""
        if self._master < 0:
            raise TransportError("pty is hung up", port=self.path, reason="hangup")
        view = memoryview(data)
        written = 0
        while written < len(view):
            try:
                n = os.write(self._master, view[written:])
            except BlockingIOError:
                break
            except OSError as exc:
                raise TransportError(
                    f"pty write failed: {exc.strerror}", port=self.path, reason="error"
                ) from exc
            written += n
        self.dropped += len(view) - written
        return written

    def read_nowait(self) -> bytes:
        """What the client wrote, as far as it is already there (b"" when nothing)."""
        if self._master < 0:
            return b""
        try:
            return os.read(self._master, 65536)
        except BlockingIOError:
            return b""
        except OSError as exc:
            if exc.errno == errno.EIO:  # no slave open: nothing to read
                return b""
            raise TransportError(
                f"pty read failed: {exc.strerror}", port=self.path, reason="error"
            ) from exc

    async def read(self, within_s: float) -> bytes:
        """What the client writes next, waiting at most `within_s` seconds (b"" if nothing)."""
        data = self.read_nowait()
        if data or self._master < 0:
            return data
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        fd = self._master

        def _wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, _wake)
        try:
            async with asyncio.timeout(within_s):
                await ready
        except TimeoutError:
            return b""
        finally:
            loop.remove_reader(fd)
        return self.read_nowait()

    def baud(self) -> int | None:
        """The baud rate the client set on its end (None while hung up or not standard).

        A pty ignores the rate, but Linux keeps what the client set in the tty's termios."""
        if self._slave < 0:
            return None
        speed = termios.tcgetattr(self._slave)[4]
        return _SPEEDS.get(int(speed))
