"""Serial ports: one open port behind a small interface, and a port that reopens itself.

`SerialPort` is one open port: pyserial opens and configures it, the event loop then reads
and writes its descriptor directly. `read()` returns what the driver holds (with `coalesce_s`,
as on the GNSS port, after a small read the next one waits a few ms, so a wake-up takes several
lines), `write()` sends bytes, `close()` releases the device.

`ReconnectingPort` keeps a device usable for a daemon that runs for months: it reopens after an
unplug, a hang-up or an error (capped exponential backoff with jitter, until the device is back),
and after `stale_after_s` without valid data (one timer per port, not one per read). Which data
is valid is the consumer's call: it calls `mark_alive()` on a checksum-valid NMEA sentence, or
on a good AT reply. With `baud="auto"` it tries the usual rates and keeps the first at which the
consumer's validator sees valid data.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import os
import termios
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any, Literal, Self

import serial
import structlog
from structlog.typing import FilteringBoundLogger

from terminal_gw.backoff import Backoff, Retry
from terminal_gw.config import BAUD_RATES
from terminal_gw.errors import TransportError
from terminal_gw.models import Event, EventSink, iso_utc, make_event
from terminal_gw.transport.port import open_with_retry

#: The order `baud = "auto"` tries rates in: most likely first (NMEA 0183's 4800 is rare today).
AUTO_BAUD_ORDER: tuple[int, ...] = tuple(
    sorted(
        BAUD_RATES,
        key=(9600, 115200, 38400, 4800, 19200, 57600, 230400, 460800, 921600).index,
    )
)

#: A consumer's check on a chunk read while probing a baud rate: True once it saw valid data.
Validator = Callable[[bytes], bool]

#: Bytes asked for per read: more than a tty hands out at once (its buffer is 4 KiB).
_READ_SIZE = 65536
#: A read at least this big (three quarters of a tty's buffer) suggests more is waiting: the
#: next read goes at once. Below it: a 921600 baud line brings 1.8 KiB in `COALESCE_S`.
_FULL_READ = 3072
#: For a stream such as a GNSS receiver's (the daemon's GNSS port): after a smaller read, the
#: next read waits this long, so that one wake-up takes the lines that arrived meanwhile (a
#: receiver at 115200 baud sends a line every few ms) instead of one wake-up a line. Data
#: after a quiet spell is read at once; a line that ends a burst is read at most this late,
#: well within the live path's budget (p99 under 50 ms at 10 Hz). Ports that answer
#: commands (modem, RDSS terminal) do not wait: each reply would be read that much later.
COALESCE_S = 0.02


def _reason(exc: BaseException) -> str:
    """A machine reason for an OS or pyserial error: absent, permission, busy, hangup or error."""
    code = getattr(exc, "errno", None)
    if isinstance(exc, termios.error) and exc.args and isinstance(exc.args[0], int):
        code = exc.args[0]  # termios.error is (errno, message), without an errno attribute
    if code in (errno.ENOENT, errno.ENXIO, errno.ENODEV):
        return "absent"
    if code in (errno.EACCES, errno.EPERM):
        return "permission"
    if code in (errno.EBUSY, errno.EAGAIN) or "lock" in str(exc).lower():
        return "busy"
    if code == errno.EIO or "returned no data" in str(exc) or "disconnected" in str(exc):
        return "hangup"
    return "error"


def _open_device(path: str, baud: int, exclusive: bool) -> serial.Serial:
    """pyserial opens the node and sets the line up (8N1, no flow control, the lock); then
    VMIN 1: with pyserial's VMIN 0 a read of an empty tty returns b"" like a hung-up one, with
    1 it fails with EAGAIN (the descriptor is non-blocking) and b"" means hung up."""
    device = serial.Serial(path, baud, timeout=0, write_timeout=0, exclusive=exclusive)
    try:
        attrs = termios.tcgetattr(device.fileno())
        attrs[6][termios.VMIN] = 1
        attrs[6][termios.VTIME] = 0
        termios.tcsetattr(device.fileno(), termios.TCSANOW, attrs)
        os.set_blocking(device.fileno(), False)
    except BaseException:
        _close_device(device)
        raise
    return device


def _close_device(device: serial.Serial) -> None:
    with contextlib.suppress(OSError, serial.SerialException, termios.error):
        device.close()


class SerialPort:
    """One open serial port; `open()` it by path (symlinks such as /dev/serial/by-id work).

    pyserial opens and configures the device; reads and writes then go to its descriptor from
    the event loop: a read is one `os.read` of what the driver holds, and waits (a reader on
    the descriptor) only when nothing is there. With `coalesce_s` (0: none), after a read
    that got little the next one waits that long first (see `COALESCE_S`)."""

    def __init__(
        self, path: str, baud: int, device: serial.Serial, *, coalesce_s: float = 0.0
    ) -> None:
        self.path = path
        self.baud = baud
        self.coalesce_s = coalesce_s
        self._device = device
        self._fd: int = device.fileno()
        self._loop = asyncio.get_running_loop()
        self._read_at = 0.0  # loop time before which the next read waits (coalescing)
        self._reader: asyncio.Future[None] | None = None  # a read() waiting
        self._writer: asyncio.Future[None] | None = None  # a write() waiting
        self._watching_read = False
        self._watching_write = False
        self._interrupted = False
        self._lost: OSError | None = None  # why the device failed (EOF: an OSError too)
        self._closing = False
        self._released: asyncio.Future[None] | None = None
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(
        cls,
        path: str,
        baud: int,
        *,
        exclusive: bool = True,
        open_timeout_s: float = 5.0,
        coalesce_s: float = 0.0,
    ) -> SerialPort:
        """Open `path` at `baud`, 8N1, no flow control; raise TransportError with a reason."""
        loop = asyncio.get_running_loop()
        # In a thread: a driver may take its time to open (a USB adapter being enumerated).
        opening = loop.run_in_executor(None, _open_device, path, baud, exclusive)
        try:
            async with asyncio.timeout(open_timeout_s):
                device = await asyncio.shield(opening)
        except TimeoutError as exc:
            _close_when_opened(opening)
            raise TransportError(
                f"{path}: open timed out after {open_timeout_s:g}s", port=path, reason="timeout"
            ) from exc
        except asyncio.CancelledError:
            _close_when_opened(opening)
            raise
        except (serial.SerialException, OSError, ValueError, termios.error) as exc:
            # termios.error: pyserial sets up the line (tcsetattr, tcflush) without wrapping
            # their errors; a device unplugged while it does so fails there with EIO.
            raise TransportError(
                f"{path}: cannot open: {exc}", port=path, reason=_reason(exc)
            ) from exc
        return cls(path, baud, device, coalesce_s=coalesce_s)

    @property
    def is_open(self) -> bool:
        """False once a read or write found the device hung up, or the port was closed."""
        return self._lost is None and not self._closing

    def _lost_error(self) -> TransportError:
        exc = self._lost
        if self._closing:
            return TransportError(f"{self.path}: port closed", port=self.path, reason="closed")
        if exc is None or exc.errno is None:
            return TransportError(
                f"{self.path}: device closed the port", port=self.path, reason="hangup"
            )
        return TransportError(f"{self.path}: {exc}", port=self.path, reason=_reason(exc))

    async def read(self) -> bytes:
        """The next chunk; raises TransportError when the device hangs up or fails."""
        while not (data := await self._next()):
            pass
        return data

    async def _next(self) -> bytes:
        """The next chunk, or b"" once `_interrupt()` was called (by ReconnectingPort)."""
        if self._read_at and self._loop.time() < self._read_at:
            await self._wait_until(self._read_at)
        while True:
            if self._interrupted:
                self._interrupted = False
                return b""
            if self._lost is not None or self._closing:
                raise self._lost_error()
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                await self._wait_readable()
                continue
            except OSError as exc:  # EIO: the device is gone (a pty's master closed)
                self._lost = exc
                raise self._lost_error() from exc
            if not data:  # end of file: hung up
                self._lost = OSError(None, "device closed the port")
                raise self._lost_error()
            if self.coalesce_s:
                small = len(data) < _FULL_READ
                self._read_at = self._loop.time() + self.coalesce_s if small else 0.0
            return data

    def _interrupt(self) -> None:
        """Make the read waiting (or the next one) return b"" at once."""
        self._interrupted = True
        self._wake_reader()

    def _wake_reader(self) -> None:
        waiter = self._reader
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_writer(self) -> None:
        waiter = self._writer
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait_until(self, when: float) -> None:
        self._reader = waiter = self._loop.create_future()
        timer = self._loop.call_at(when, self._wake_reader)
        try:
            await waiter
        finally:
            timer.cancel()
            self._reader = None

    async def _wait_readable(self) -> None:
        self._reader = waiter = self._loop.create_future()
        self._loop.add_reader(self._fd, self._wake_reader)
        self._watching_read = True
        try:
            await waiter
        finally:
            self._reader = None
            self._unwatch()

    def _unwatch(self) -> None:
        if self._watching_read:
            self._watching_read = False
            self._loop.remove_reader(self._fd)

    def _unwatch_write(self) -> None:
        if self._watching_write:
            self._watching_write = False
            self._loop.remove_writer(self._fd)

    async def write(self, data: bytes, within_s: float = 5.0) -> None:
        """Send `data`; returns once the driver took it all, TransportError if not."""
        if not self.is_open:
            raise self._lost_error()
        deadline = self._loop.time() + within_s
        async with self._write_lock:
            view = memoryview(data)
            while view:
                if not self.is_open:
                    raise self._lost_error()
                try:
                    view = view[os.write(self._fd, view) :]
                    continue
                except BlockingIOError:
                    pass
                except OSError as exc:
                    self._lost = exc
                    raise self._lost_error() from exc
                if not await self._wait_writable(deadline):
                    raise TransportError(
                        f"{self.path}: write timed out after {within_s:g}s",
                        port=self.path,
                        reason="timeout",
                    )

    async def _wait_writable(self, deadline: float) -> bool:
        """Until the driver takes more (True) or `deadline` passed (False)."""
        if self._loop.time() >= deadline:
            return False
        self._writer = waiter = self._loop.create_future()
        self._loop.add_writer(self._fd, self._wake_writer)
        self._watching_write = True
        timer = self._loop.call_at(deadline, self._wake_writer)
        try:
            await waiter
        finally:
            timer.cancel()
            self._writer = None
            self._unwatch_write()
        return self._loop.time() < deadline

    async def close(self, within_s: float = 5.0) -> None:
        """Release the device and wait until the driver let it go."""
        self._closing = True
        if self._released is None:
            self._wake_reader()
            self._wake_writer()
            self._unwatch()
            self._unwatch_write()
            # Unsent output is dropped: closing a tty waits for its output to drain, which can
            # block on a device that stopped reading; nothing written here is worth that.
            with contextlib.suppress(OSError, termios.error):
                termios.tcflush(self._fd, termios.TCOFLUSH)
            self._released = self._loop.run_in_executor(None, _close_device, self._device)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                await asyncio.shield(self._released)


def _close_when_opened(opening: asyncio.Future[serial.Serial]) -> None:
    """A device whose open completes after its caller gave up is closed at once."""

    def done(fut: asyncio.Future[serial.Serial]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            _close_device(fut.result())

    opening.add_done_callback(done)


class PortState(StrEnum):
    """Where a ReconnectingPort is in its life."""

    CLOSED = "closed"  # not started yet, or closed by its owner
    OPENING = "opening"
    PROBING = "probing"  # baud "auto": trying a rate
    OPEN = "open"
    WAITING = "waiting"  # device absent or failing: waiting before the next attempt


#: Opening a missing device costs one failed syscall: retry often enough that a replugged
#: receiver is read again within 2 s, however long it was away and however busy the machine:
#: at most 1 s of waiting, leaving the rest for the open and the first data.
DEFAULT_BACKOFF = Backoff(min_s=0.25, max_s=1.0)


@dataclass
class _Down:
    """An outage being reported: one event when it starts, one when it ends."""

    reason: str
    stale: bool


class ReconnectingPort:
    """A serial port that reopens itself after unplug, errors or staleness (see module doc)."""

    def __init__(
        self,
        path: str,
        baud: int | Literal["auto"] = 9600,
        *,
        name: str = "gnss",
        validator: Callable[[], Validator] | None = None,
        init: Sequence[str | bytes] = (),
        stale_after_s: float = 10.0,
        backoff: Backoff | None = None,
        probe_window_s: float = 3.0,
        events: EventSink | None = None,
        log: FilteringBoundLogger | None = None,
        exclusive: bool = True,
        coalesce_s: float = 0.0,
    ) -> None:
        if baud == "auto" and validator is None:
            raise ValueError("baud 'auto' needs a validator to recognise valid data")
        self.path = path
        self.name = name
        self.configured_baud = baud
        self.stale_after_s = stale_after_s
        self.probe_window_s = probe_window_s
        self.backoff = backoff or DEFAULT_BACKOFF
        self._validator = validator
        self._init = [_init_bytes(s) for s in init]
        self._events = events
        self._log: FilteringBoundLogger = log or structlog.get_logger("terminal_gw.serial")
        self._exclusive = exclusive
        self._coalesce_s = coalesce_s
        self._port: SerialPort | None = None  # the port in use, while OPEN
        self._held: set[SerialPort] = set()  # every port opened and not yet fully closed
        self._pending: collections.deque[bytes] = collections.deque()
        self._closed = asyncio.Event()
        self._found_baud: int | None = None if baud == "auto" else baud
        self._alive_at = time.monotonic()
        self._stale_timer: asyncio.TimerHandle | None = None
        self._retry = Retry(self.backoff)
        self._down: _Down | None = None
        self.state = PortState.CLOSED
        self.reason = "not opened yet"
        self.since = time.time()
        self.opens = 0
        self.closes = 0
        self.stale_reopens = 0

    @property
    def baud(self) -> int | None:
        """The rate in use, or found by auto-baud (None before the first successful probe)."""
        return self._found_baud

    def status(self) -> dict[str, Any]:
        """A snapshot for the health report."""
        return {
            "path": self.path,
            "device": os.path.realpath(self.path),
            "state": str(self.state),
            "reason": self.reason,
            "since": iso_utc(self.since),
            "baud": self._found_baud,
            "configured_baud": self.configured_baud,
            "opens": self.opens,
            "closes": self.closes,
            "stale_reopens": self.stale_reopens,
        }

    def mark_alive(self) -> None:
        """The consumer saw valid data (a checksum-valid sentence, a good AT reply)."""
        self._alive_at = time.monotonic()
        if self._down is not None and self._down.stale and self._port is not None:
            self._end_outage()
        self._retry.reset()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the port for good; a read() waiting on it raises TransportError."""
        self._closed.set()
        self._port = None
        self._unwatch_stale()
        for port in list(self._held):
            await self._release(port)
        self._set_state(PortState.CLOSED, "closed by owner")

    async def write(self, data: bytes) -> None:
        """Send bytes; TransportError when the port is not open right now."""
        port = self._port
        if port is None or self.state is not PortState.OPEN:
            raise TransportError(
                f"{self.name} port {self.path} is {self.state}: {self.reason}",
                port=self.path,
                reason=str(self.state),
            )
        await port.write(data)

    async def read(self) -> bytes:
        """The next chunk; opens, reopens and waits for the device as long as it takes."""
        while True:
            if self._closed.is_set():
                raise TransportError(f"{self.name} port closed", port=self.path, reason="closed")
            if self._pending:
                return self._pending.popleft()
            port = self._port
            if port is None:
                port = await self._open_with_backoff()
                if port is None:
                    continue
            if time.monotonic() - self._alive_at >= self.stale_after_s:
                await self._stale(port)
                continue
            if self._stale_timer is None:
                self._watch_stale()
            try:
                data = await port._next()  # b"" when the stale timer interrupted it
            except TransportError as exc:
                if self._closed.is_set():
                    continue
                await self._drop(exc.reason, str(exc))
                continue
            if data:
                return data

    # -- internals ---------------------------------------------------------------------

    def _watch_stale(self) -> None:
        """One timer per port, due when the last valid data gets `stale_after_s` old: it
        wakes a waiting read once that happened, else moves on (no timer armed per chunk)."""
        delay = self._alive_at + self.stale_after_s - time.monotonic()
        loop = asyncio.get_running_loop()
        self._stale_timer = loop.call_later(max(0.0, delay), self._stale_due)

    def _stale_due(self) -> None:
        self._stale_timer = None
        port = self._port
        if port is None:
            return
        if time.monotonic() - self._alive_at >= self.stale_after_s:
            port._interrupt()
        else:
            self._watch_stale()

    def _unwatch_stale(self) -> None:
        if self._stale_timer is not None:
            self._stale_timer.cancel()
            self._stale_timer = None

    def _emit(self, event: Event) -> None:
        if self._events is not None:
            self._events(event)

    def _set_state(self, state: PortState, reason: str) -> None:
        if state is not self.state or reason != self.reason:
            self.since = time.time()
        self.state = state
        self.reason = reason

    def _start_outage(self, reason: str, message: str, *, stale: bool) -> None:
        """Report the start of an outage once; repeats (a device still silent) only log."""
        if self._down is not None:
            self._log.debug("port still down", port=self.name, path=self.path, reason=reason)
            return
        self._down = _Down(reason, stale)
        self._log.warning("port down", port=self.name, path=self.path, reason=reason, error=message)
        self._emit(
            make_event(
                "port_closed",
                f"{self.name} port {self.path} closed: {message}",
                now=time.time(),
                severity="warning",
                port=self.name,
                path=self.path,
                reason=reason,
            )
        )

    def _end_outage(self) -> None:
        down, self._down = self._down, None
        self._log.info("port open", port=self.name, path=self.path, baud=self._found_baud)
        self._emit(
            make_event(
                "port_open",
                f"{self.name} port {self.path} open at {self._found_baud} baud",
                now=time.time(),
                port=self.name,
                path=self.path,
                device=os.path.realpath(self.path),
                baud=self._found_baud,
                after=None if down is None else down.reason,
            )
        )

    async def _open_port(self, baud: int) -> SerialPort:
        port = await SerialPort.open(
            self.path, baud, exclusive=self._exclusive, coalesce_s=self._coalesce_s
        )
        self._held.add(port)
        return port

    async def _release(self, port: SerialPort) -> None:
        # Forgotten only once closed: if cancelled half-way, close() finishes the job.
        await port.close()
        self._held.discard(port)

    async def _drop(self, reason: str, message: str) -> None:
        port, self._port = self._port, None
        self._unwatch_stale()
        if port is not None:
            await self._release(port)
            self.closes += 1
        self._set_state(PortState.WAITING, reason)
        self._start_outage(reason, message, stale=False)

    async def _stale(self, port: SerialPort) -> None:
        self.stale_reopens += 1
        message = f"no valid data for {self.stale_after_s:g}s"
        if self._down is None:
            self._log.warning(
                "port stale", port=self.name, path=self.path, after_s=self.stale_after_s
            )
            self._emit(
                make_event(
                    "port_stale",
                    f"{self.name} port {self.path}: {message}; reopening",
                    now=time.time(),
                    severity="warning",
                    port=self.name,
                    path=self.path,
                    stale_after_s=self.stale_after_s,
                )
            )
        self._port = None
        self._unwatch_stale()
        await self._release(port)
        self.closes += 1
        self._set_state(PortState.WAITING, "stale")
        self._start_outage("stale", message, stale=True)
        # Successive stale reopens of a silent device back off too.
        await self._sleep(self._retry.next_delay())

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._closed.wait()

    async def _open_with_backoff(self) -> SerialPort | None:
        """Open (probing rates for auto), waiting the backoff after each failure; None when
        closed meanwhile or the init lines could not be written (after a wait)."""

        async def attempt() -> SerialPort:
            self._set_state(PortState.OPENING, self.reason)
            return await self._open_once()

        def failed(exc: Exception, delay: float) -> None:
            reason = exc.reason if isinstance(exc, TransportError) else "error"
            self._set_state(PortState.WAITING, reason)
            stale = self._down is not None and self._down.stale
            if not stale:
                self._start_outage(reason, str(exc), stale=False)
            self._log.debug("port open failed", port=self.name, reason=reason, retry_s=delay)

        port = await open_with_retry(
            attempt,
            self._retry,
            failed=failed,
            wait=self._sleep,
            stopped=self._closed.is_set,
            errors=(TransportError,),
        )
        if port is None:
            return None
        if self._closed.is_set():
            await self._release(port)
            return None
        try:
            for line in self._init:
                await port.write(line)
        except TransportError as exc:
            await self._release(port)
            self._set_state(PortState.WAITING, exc.reason)
            self._start_outage(exc.reason, str(exc), stale=False)
            await self._sleep(self._retry.next_delay())
            return None
        self._port = port
        self.opens += 1
        self._alive_at = time.monotonic()
        self._set_state(PortState.OPEN, "open")
        if self._down is None or not self._down.stale:
            # A stale outage ends when valid data comes (mark_alive), not when the port opens.
            self._end_outage()
            self._retry.reset()
        return port

    async def _open_once(self) -> SerialPort:
        if self.configured_baud != "auto":
            return await self._open_port(int(self.configured_baud))
        assert self._validator is not None
        found = self._found_baud
        rates = (
            [found, *[r for r in AUTO_BAUD_ORDER if r != found]] if found else list(AUTO_BAUD_ORDER)
        )
        for rate in rates:
            port = await self._open_port(rate)
            self._set_state(PortState.PROBING, f"trying {rate} baud")
            chunks = await self._probe(port, self._validator())
            if chunks is not None:
                if rate != found:
                    self._log.info("baud rate found", port=self.name, baud=rate)
                self._found_baud = rate
                self._pending.extend(chunks)
                return port
            await self._release(port)
            if self._closed.is_set():
                break
        raise TransportError(
            f"{self.path}: no valid data at any baud rate ({', '.join(map(str, rates))})",
            port=self.path,
            reason="no_valid_data",
        )

    async def _probe(self, port: SerialPort, check: Validator) -> list[bytes] | None:
        """Read for up to probe_window_s; the chunks read if `check` accepted one, else None."""
        chunks: list[bytes] = []
        size = 0
        deadline = time.monotonic() + self.probe_window_s
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                async with asyncio.timeout(remaining):
                    chunk = await port.read()
            except TimeoutError:
                return None
            except TransportError:
                await self._release(port)
                raise
            chunks.append(chunk)
            size += len(chunk)
            while size > 65536 and len(chunks) > 1:
                size -= len(chunks.pop(0))
            if check(chunk):
                return chunks
        return None


def _init_bytes(s: str | bytes) -> bytes:
    """An init string as sent: ASCII, ending in CR LF."""
    data = s.encode("ascii") if isinstance(s, str) else s
    return data if data.endswith(b"\n") else data + b"\r\n"
