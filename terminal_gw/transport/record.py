"""`terminal-gw record`: write what crosses a serial port to a capture file.

Plain mode reads the device and records what it sends (`<`). With `--proxy LINK` the recorder
sits between the device and a program: it creates a pty at LINK for the program (the daemon,
a vendor tool) to open, passes bytes both ways, and records both directions (`<` from the
device, `>` to it). The device is reopened when it is unplugged, as the daemon does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from pathlib import Path

from terminal_gw.config import parse_baud, parse_size
from terminal_gw.errors import TerminalGwError, TransportError
from terminal_gw.exit_codes import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_PERMISSION,
    EXIT_USAGE,
    permission_denied,
)
from terminal_gw.models import Event
from terminal_gw.transport.capture import CaptureWriter
from terminal_gw.transport.pty import PtyDevice
from terminal_gw.transport.serial import ReconnectingPort


class Recorder:
    """Copies a device's traffic into a capture file (and through a pty with a proxy)."""

    def __init__(
        self,
        port: ReconnectingPort,
        writer: CaptureWriter,
        *,
        name: str,
        proxy: PtyDevice | None = None,
    ) -> None:
        self.port = port
        self.writer = writer
        self.name = name
        self.proxy = proxy
        self.bytes_in = 0
        self.bytes_out = 0
        self.chunks = 0

    async def _from_device(self) -> None:
        while True:
            chunk = await self.port.read()
            self.port.mark_alive()  # any byte counts: the recorder does not judge content
            self.writer.write(self.name, "<", chunk, time.time())
            self.bytes_in += len(chunk)
            self.chunks += 1
            if self.proxy is not None and self.proxy.is_up:
                self.proxy.write(chunk)

    async def _to_device(self) -> None:
        assert self.proxy is not None
        while True:
            data = await self.proxy.read(1.0)
            if not data:
                continue
            self.writer.write(self.name, ">", data, time.time())
            self.bytes_out += len(data)
            self.chunks += 1
            # The device may be away: the program's bytes are recorded, not delivered.
            with contextlib.suppress(TransportError):
                await self.port.write(data)

    async def run(self) -> None:
        """Record until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._from_device(), name="record-rx")
            if self.proxy is not None:
                tg.create_task(self._to_device(), name="record-tx")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `terminal-gw record`."""
    parser.add_argument("--port", required=True, help="serial device (path or by-id link)")
    parser.add_argument("--baud", default="9600", help="baud rate (default 9600)")
    parser.add_argument(
        "--name", default="gnss", help="port name in the capture: gnss, modem, rdss"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="capture file (default: NAME-UTCTIME.cap)"
    )
    parser.add_argument(
        "--proxy",
        type=Path,
        default=None,
        help="create a pty at this path for a program to open; record both directions",
    )
    parser.add_argument("--max-bytes", default="64MiB", help="rotate the file at this size")
    parser.add_argument("--keep", type=int, default=3, help="rotated files to keep")
    parser.add_argument("--duration", type=float, default=0, help="stop after S seconds")
    parser.add_argument(
        "--wait",
        action="store_true",
        help="wait for a device that is not there yet (default: fail when it cannot be opened)",
    )


class DeviceOpenError(TransportError):
    """The device could not be opened when the recording began."""

    chunks = 0  # what was recorded before it failed (the program's side of a proxy)


async def record(args: argparse.Namespace, out: Path) -> Recorder:
    """Run a recorder for the parsed arguments until a signal or the duration.

    Unless `args.wait`, a device that cannot be opened at the start raises DeviceOpenError (and no
    capture is left behind); once it was open, it is reopened whenever it goes away.
    """
    baud = parse_baud(args.baud)
    if baud == "auto":
        raise TransportError("record needs a fixed --baud", reason="baud")
    stop = asyncio.Event()
    failed: list[DeviceOpenError] = []
    opened = False

    def on_event(event: Event) -> None:
        nonlocal opened
        if event.kind == "port_open":
            opened = True
        elif event.kind == "port_closed" and not opened and not args.wait:
            reason = str(event.data.get("reason", "error"))
            failed.append(DeviceOpenError(event.message, port=args.port, reason=reason))
            stop.set()
            return
        _print_event(event)

    port = ReconnectingPort(args.port, baud, name=args.name, stale_after_s=1e9, events=on_event)
    writer = CaptureWriter(out, max_bytes=parse_size(args.max_bytes), keep=args.keep)
    proxy = PtyDevice(args.proxy) if args.proxy is not None else None
    recorder = Recorder(port, writer, name=args.name, proxy=proxy)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    try:
        async with port, asyncio.TaskGroup() as tg:
            task = tg.create_task(recorder.run(), name="recorder")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(args.duration or None):
                    await stop.wait()
            task.cancel()
    finally:
        writer.close()
        if proxy is not None:
            proxy.close()
    if failed:
        failed[0].chunks = recorder.chunks
        raise failed[0]
    return recorder


def _print_event(event: Event) -> None:
    print(f"{event.time} {event.kind}: {event.message}", file=sys.stderr)


def cli(args: argparse.Namespace) -> int:
    """`terminal-gw record`."""
    out: Path = args.out or Path(time.strftime(f"{args.name}-%Y%m%dT%H%M%SZ.cap", time.gmtime()))
    try:
        if args.proxy is not None:
            print(f"open {args.proxy} instead of {args.port}", file=sys.stderr)
        print(f"recording {args.port} to {out}; Ctrl-C stops", file=sys.stderr)
        rec = asyncio.run(record(args, out))
    except DeviceOpenError as exc:
        if exc.chunks == 0:
            # A file holding only the header would pass for a capture of a silent device.
            out.unlink(missing_ok=True)
        return _open_failed(args.port, exc)
    except (TerminalGwError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"recorded {rec.chunks} chunks: {rec.bytes_in} bytes from the device,"
        f" {rec.bytes_out} to it, in {out}",
        file=sys.stderr,
    )
    return EXIT_OK


def _open_failed(port: str, exc: DeviceOpenError) -> int:
    """Say why the device could not be opened; exit 2 (no such device), 4 or 1."""
    if exc.reason == "permission":
        text = permission_denied(Path(port), "serial device", access="open")
        print(f"error: {text}", file=sys.stderr)
        return EXIT_PERMISSION
    if exc.reason == "absent":
        print(
            f"error: no device at {port}: nothing recorded. Is it plugged in? "
            "`ls -l /dev/serial/by-id/` lists the serial devices; --wait waits for it",
            file=sys.stderr,
        )
        return EXIT_USAGE
    print(f"error: cannot open {port} ({exc.reason}): {exc}; nothing recorded", file=sys.stderr)
    return EXIT_FAILURE
