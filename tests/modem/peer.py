"""A real pty for AT engine tests: the engine's end (`PtyPort`) and a scripted modem peer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Callable

from terminal_gw.errors import TransportError


class PtyPort:
    """The engine's end of a pty, read and written through the event loop."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.closed = False
        os.set_blocking(fd, False)

    async def read(self) -> bytes:
        """The next chunk; TransportError when the peer hung up."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                return os.read(self.fd, 4096)
            except BlockingIOError:
                pass
            except OSError as e:  # EIO once the master side is closed
                raise TransportError(f"pty read failed: {e}", reason="hangup") from e
            ready = asyncio.Event()
            loop.add_reader(self.fd, ready.set)
            try:
                await ready.wait()
            finally:
                loop.remove_reader(self.fd)

    async def write(self, data: bytes) -> None:
        """Write all of `data`."""
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:
                await asyncio.sleep(0.001)

    async def close(self) -> None:
        """Close the fd (once)."""
        if not self.closed:
            self.closed = True
            os.close(self.fd)


Reply = bytes | Callable[[bytes], bytes | None] | None
_PDU_UNIT = re.compile(rb"[0-9A-F]+\x1a")


class ModemPeer:
    """The modem's end: records every byte received and answers each unit (a command ending
    in CR, a PDU ending in Ctrl-Z, or ESC) from `script`; `pdu_reply` answers PDUs."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.received = bytearray()
        self.units: list[bytes] = []
        self.script: dict[bytes, Reply] = {}
        self.pdu_reply: bytes | None = b"\r\n+CMGS: 7\r\n\r\nOK\r\n"
        self.echo = False
        self.chunk = 0  # >0: send replies in pieces of this size, 1 ms apart
        self._unit = bytearray()
        self._timers: list[asyncio.TimerHandle] = []
        self._open = True
        self._busy_until = 0.0
        os.set_blocking(fd, False)
        asyncio.get_running_loop().add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except OSError:
            return
        self.received += data
        for b in data:
            self._unit.append(b)
            if b in (0x0D, 0x1A, 0x1B):
                unit = bytes(self._unit)
                self._unit.clear()
                self.units.append(unit)
                self._answer(unit)

    def _answer(self, unit: bytes) -> None:
        if self.echo:
            self.send(unit)
        if _PDU_UNIT.fullmatch(unit):
            reply: Reply = self.pdu_reply
        else:
            reply = self.script.get(unit.rstrip(b"\r"))
        if callable(reply):
            reply = reply(unit)
        if reply:
            self.send(reply)

    def send(self, data: bytes) -> None:
        """Write to the engine, whole or in `chunk`-sized pieces."""
        if not self.chunk:
            self._write(data)
            return
        loop = asyncio.get_running_loop()
        at = max(loop.time(), self._busy_until)  # after what is still being sent
        for i in range(0, len(data), self.chunk):
            at += 0.001
            self._timers.append(loop.call_at(at, self._write, data[i : i + self.chunk]))
        self._busy_until = at

    def send_later(self, delay: float, data: bytes) -> None:
        """Write after `delay` seconds."""
        self._timers.append(asyncio.get_running_loop().call_later(delay, self._write, data))

    def _write(self, data: bytes) -> None:
        if self._open:
            os.write(self.fd, data)

    def hangup(self) -> None:
        """Close the modem's end, as a pulled cable would."""
        if self._open:
            self._open = False
            for t in self._timers:
                t.cancel()
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self.fd)
            os.close(self.fd)
