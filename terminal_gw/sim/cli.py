"""`terminal-gw simulate DEVICE`: device simulators on ptys, for demos, tests and bench work.

Each simulator is one row of SIMULATORS: a name, a help line, a function adding its arguments
and a handler. Arguments are declared here so that building the CLI's parser stays cheap; the
simulator's module is imported only when it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from terminal_gw.exit_codes import EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from terminal_gw.sim.gnss import GnssSimulator
    from terminal_gw.sim.modem import ModemSimulator
    from terminal_gw.sim.rdss import RdssSimulator

Setup = Callable[[argparse.ArgumentParser], None]
Handler = Callable[[argparse.Namespace], int]

FAULT_NAMES = ("silent", "garbage", "nofix", "hangup")


def default_link(name: str) -> Path:
    """Where a simulator's stable symlink goes unless --link says otherwise."""
    return Path(tempfile.gettempdir()) / f"terminal-gw-sim-{os.getuid()}" / name


def _utc(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from exc
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if not 1 <= rate <= 10:
        raise argparse.ArgumentTypeError("the rate is 1 to 10 Hz")
    return rate


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


# --- gnss -----------------------------------------------------------------------------


def _gnss_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--link",
        type=Path,
        default=None,
        help=f"stable symlink to the pty (default {default_link('gnss0')})",
    )
    p.add_argument("--capture", type=Path, help="play this capture in a loop instead of a track")
    p.add_argument("--port", default="gnss", help="the port of an own-format capture to play")
    p.add_argument("--speed", type=_positive, default=1.0, help="capture playback speed factor")
    p.add_argument("--rate", type=_rate, default=1.0, help="epochs per second, 1-10 (default 1)")
    p.add_argument("--start", type=_utc, help="GNSS time of the first epoch (default now, UTC)")
    p.add_argument("--lat", type=float, default=24.45, help="start latitude (default 24.45)")
    p.add_argument("--lon", type=float, default=118.07, help="start longitude (default 118.07)")
    p.add_argument("--knots", type=float, default=8.0, help="speed over ground (default 8)")
    p.add_argument("--course", type=float, default=135.0, help="mean course, degrees true")
    p.add_argument("--gst", action="store_true", help="also send GST (error estimates)")
    p.add_argument(
        "--bds-talker",
        choices=["GB", "BD"],
        default="GB",
        help="BeiDou GSV talker: GB (NMEA 4.10) or BD (Chinese standard)",
    )
    p.add_argument("--fault", choices=FAULT_NAMES, help="inject this fault during the run")
    p.add_argument("--fault-at", type=float, default=10.0, help="seconds before the fault")
    p.add_argument(
        "--fault-for",
        type=_positive,
        default=10.0,
        help="seconds the fault lasts (hangup: until the pty is re-created)",
    )
    p.add_argument("--duration", type=_positive, help="stop after this many seconds")
    p.add_argument("--seed", type=int, default=1, help="seed of the simulated sky and noise")


def _gnss_cli(args: argparse.Namespace) -> int:
    from terminal_gw.errors import TransportError
    from terminal_gw.sim.gnss import GnssSimulator, Track, load_capture
    from terminal_gw.transport.pty import PtyDevice

    capture = None
    if args.capture is not None and args.fault == "nofix":
        print("error: --fault nofix needs the generated track, not --capture", file=sys.stderr)
        return EXIT_USAGE
    if args.capture is not None:
        try:
            capture = load_capture(args.capture, args.port)
        except TransportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if not capture:
            print(f"error: {args.capture}: nothing from port {args.port!r}", file=sys.stderr)
            return EXIT_USAGE
    track = Track(lat=args.lat, lon=args.lon, speed_kn=args.knots, course_deg=args.course)
    link: Path = args.link or default_link("gnss0")
    with PtyDevice(link) as device:
        sim = GnssSimulator(
            device,
            rate_hz=args.rate,
            start=args.start,
            track=track,
            capture=capture,
            speed=args.speed,
            with_gst=args.gst,
            bds_talker=args.bds_talker,
            hangup_s=args.fault_for,
            seed=args.seed,
            on_recreate=lambda path: print(f"pty re-created: {path}", flush=True),
        )
        source = f"capture {args.capture}" if capture else f"vessel from {args.lat}, {args.lon}"
        print(f"gnss simulator: {device.slave_path}", flush=True)
        print(f"  stable link:  {device.path}  (use as [gnss] port)", flush=True)
        print(f"  {source}, {args.rate:g} Hz", flush=True)
        asyncio.run(_run_gnss(sim, args))
    return EXIT_OK


async def _run_with_faults(
    run: Coroutine[Any, Any, None], faults: Coroutine[Any, Any, None]
) -> None:
    """Run a simulator beside its fault schedule until it ends, or SIGTERM or Ctrl-C stops it."""
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if main is not None:
        loop.add_signal_handler(signal.SIGTERM, main.cancel)
    try:
        async with asyncio.TaskGroup() as tg:
            schedule = tg.create_task(faults, name="faults")
            await run
            schedule.cancel()
    except asyncio.CancelledError:
        pass
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)


async def _run_gnss(sim: GnssSimulator, args: argparse.Namespace) -> None:
    async def faults() -> None:
        if args.fault is None:
            return
        await asyncio.sleep(args.fault_at)
        print(f"fault: {args.fault} for {args.fault_for:g}s", flush=True)
        sim.set_fault(args.fault)
        if args.fault != "hangup":  # a hang-up ends by itself: the pty is re-created
            await asyncio.sleep(args.fault_for)
            sim.set_fault(None)
            print("fault over", flush=True)

    await _run_with_faults(sim.run(args.duration), faults())


# --- modem ----------------------------------------------------------------------------

MODEM_FAULTS = ("hang", "errors", "garbage", "noreg", "unplug")


def _modem_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--link",
        type=Path,
        default=None,
        help=f"stable symlink to the pty (default {default_link('tiantong0')})",
    )
    p.add_argument(
        "--incoming-every",
        type=_positive,
        metavar="S",
        help="deliver an SMS every S seconds (single, Chinese UCS2, three-part, in turn)",
    )
    p.add_argument("--capacity", type=int, default=30, help="SIM SMS storage slots (default 30)")
    p.add_argument("--rssi", type=int, default=18, help="AT+CSQ signal 0-31, 99 unknown")
    p.add_argument("--imei", default="860123456789012", help="what AT+CGSN answers")
    p.add_argument("--answer-delay", type=float, default=0.0, help="seconds before each answer")
    p.add_argument(
        "--fault",
        choices=MODEM_FAULTS,
        help="hang: stop answering; errors: ERROR to everything; garbage: line noise; "
        "noreg: registration lost; unplug: hang up the pty, re-create it after --fault-for",
    )
    p.add_argument("--fault-at", type=float, default=10.0, help="seconds before the fault")
    p.add_argument("--fault-for", type=_positive, default=10.0, help="seconds the fault lasts")
    p.add_argument("--duration", type=_positive, help="stop after this many seconds")
    p.add_argument("--seed", type=int, default=1, help="seed of the simulated noise")


def _modem_cli(args: argparse.Namespace) -> int:
    from terminal_gw.sim.modem import ModemSimulator
    from terminal_gw.transport.pty import PtyDevice

    if not (0 <= args.rssi <= 31 or args.rssi == 99):
        print("error: --rssi is 0-31 or 99", file=sys.stderr)
        return EXIT_USAGE
    if args.capacity < 1:
        print("error: --capacity must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    link: Path = args.link or default_link("tiantong0")
    with PtyDevice(link) as device:
        sim = ModemSimulator(
            device,
            imei=args.imei,
            capacity=args.capacity,
            rssi=args.rssi,
            answer_delay_s=args.answer_delay,
            seed=args.seed,
            on_recreate=lambda path: print(f"pty re-created: {path}", flush=True),
        )
        print(f"modem simulator: {device.slave_path}", flush=True)
        print(f"  stable link:   {device.path}  (use as [modem] port)", flush=True)
        if args.incoming_every:
            print(f"  an incoming SMS every {args.incoming_every:g}s", flush=True)
        asyncio.run(_run_modem(sim, args))
    return EXIT_OK


async def _run_modem(sim: ModemSimulator, args: argparse.Namespace) -> None:
    async def faults() -> None:
        if args.fault is None:
            return
        await asyncio.sleep(args.fault_at)
        print(f"fault: {args.fault} for {args.fault_for:g}s", flush=True)
        if args.fault == "hang":
            sim.hang(seconds=args.fault_for)
        elif args.fault == "unplug":
            sim.unplug(args.fault_for)
        elif args.fault == "noreg":
            sim.set_registration(2)
        else:
            (sim.error_storm if args.fault == "errors" else sim.garbage)(True)
        await asyncio.sleep(args.fault_for)
        if args.fault == "noreg":
            sim.set_registration(1)
        elif args.fault in ("errors", "garbage"):
            (sim.error_storm if args.fault == "errors" else sim.garbage)(False)
        print("fault over", flush=True)

    await _run_with_faults(sim.run(args.duration, incoming_every=args.incoming_every), faults())


# --- rdss -----------------------------------------------------------------------------


def _rdss_arguments(p: argparse.ArgumentParser) -> None:
    from terminal_gw.sim.rdss import FAULTS

    p.add_argument(
        "--link",
        type=Path,
        default=None,
        help=f"stable symlink to the pty (default {default_link('rdss0')})",
    )
    p.add_argument("--dialect", choices=["2.1", "bds3"], default="2.1", help="protocol dialect")
    p.add_argument("--user-id", default="0242286", help="the card's user id (digits)")
    p.add_argument("--level", type=int, choices=[1, 2, 3, 4], default=3, help="comm level")
    p.add_argument(
        "--interval", type=_positive, default=60.0, help="service interval in s (default 60)"
    )
    p.add_argument("--encrypted", action="store_true", help="an encrypted card")
    p.add_argument("--no-card", action="store_true", help="no card in the terminal")
    p.add_argument(
        "--incoming-every",
        type=_positive,
        metavar="S",
        help="deliver a message every S seconds (Chinese, code, mixed, in turn)",
    )
    p.add_argument("--sender", default="0166166", help="the user id incoming messages come from")
    p.add_argument("--fault", choices=FAULTS, help="inject this fault during the run")
    p.add_argument("--fault-at", type=float, default=10.0, help="seconds before the fault")
    p.add_argument("--fault-for", type=_positive, default=10.0, help="seconds the fault lasts")
    p.add_argument("--duration", type=_positive, help="stop after this many seconds")
    p.add_argument("--seed", type=int, default=1, help="seed of the simulated noise")


def _rdss_cli(args: argparse.Namespace) -> int:
    from terminal_gw.sim.rdss import RdssSimulator
    from terminal_gw.transport.pty import PtyDevice

    if not (args.user_id.isdigit() and 1 <= len(args.user_id) <= 7):
        print("error: --user-id is 1-7 digits", file=sys.stderr)
        return 2
    if not args.sender.isdigit() or len(args.sender) > 8:
        print("error: --sender is 1-8 digits", file=sys.stderr)
        return 2
    link: Path = args.link or default_link("rdss0")
    with PtyDevice(link) as device:
        sim = RdssSimulator(
            device,
            dialect=args.dialect,
            user_id=args.user_id.zfill(7),
            level=args.level,
            interval_s=args.interval,
            encrypted=args.encrypted,
            card=not args.no_card,
            seed=args.seed,
            on_recreate=lambda path: print(f"pty re-created: {path}", flush=True),
        )
        print(f"rdss simulator: {device.slave_path}", flush=True)
        print(f"  stable link:  {device.path}  (use as [rdss] port)", flush=True)
        card = "no card" if args.no_card else f"card {sim.user_id} level {args.level}"
        print(f"  dialect {args.dialect}, {card}, interval {args.interval:g}s", flush=True)
        if args.incoming_every:
            print(f"  an incoming message every {args.incoming_every:g}s", flush=True)
        asyncio.run(_run_rdss(sim, args))
    return 0


async def _run_rdss(sim: RdssSimulator, args: argparse.Namespace) -> None:
    async def faults() -> None:
        if args.fault is None:
            return
        await asyncio.sleep(args.fault_at)
        print(f"fault: {args.fault} for {args.fault_for:g}s", flush=True)
        if args.fault == "hangup":
            sim.unplug(args.fault_for)
        elif args.fault == "interval":
            sim.refuse_next_send(int(args.fault_for))
        else:
            sim.set_fault(args.fault)
            await asyncio.sleep(args.fault_for)
            sim.set_fault(args.fault, on=False)
        print("fault over", flush=True)

    await _run_with_faults(
        sim.run(args.duration, incoming_every=args.incoming_every, sender=args.sender), faults()
    )


#: name -> (help, add its arguments, run it). A new simulator is one more row.
SIMULATORS: dict[str, tuple[str, Setup, Handler]] = {
    "gnss": (
        "a BeiDou/GPS receiver: a moving vessel's NMEA, or a capture, with faults on demand",
        _gnss_arguments,
        _gnss_cli,
    ),
    "modem": (
        "a Tiantong satellite modem: AT commands, SIM SMS storage, incoming SMS, faults",
        _modem_arguments,
        _modem_cli,
    ),
    "rdss": (
        "a BeiDou short-message (RDSS) terminal: 2.1 or BDS-3, a card, messages in, faults",
        _rdss_arguments,
        _rdss_cli,
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `simulate` sub-command's arguments: one sub-command per simulator."""
    sub = parser.add_subparsers(dest="simulator", required=True, metavar="DEVICE")
    for name, (help_text, setup, handler) in SIMULATORS.items():
        p = sub.add_parser(name, help=help_text)
        setup(p)
        p.set_defaults(sim_handler=handler)


def cli(args: argparse.Namespace) -> int:
    """Run the chosen simulator until it ends, is interrupted or terminated."""
    handler: Handler = args.sim_handler
    return handler(args)
