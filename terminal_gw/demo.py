"""`terminal-gw demo`: a simulated BeiDou receiver, Tiantong modem and BeiDou RDSS terminal on
ptys, the daemon, a broker, a live view.

Broker: the one on localhost:1883 when it answers, else a mosquitto started on a free port
when the binary exists, else none (records then pile up in the outbox, as on a vessel
without a link). `--broker HOST[:PORT]` names one (port 1883 when left out), `--broker none`
runs without.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from terminal_gw.config import Config, load_config_data
from terminal_gw.daemon import Daemon
from terminal_gw.exit_codes import EXIT_OK, EXIT_USAGE
from terminal_gw.logs import configure_logging
from terminal_gw.sim.gnss import GnssSimulator
from terminal_gw.sim.modem import ModemSimulator
from terminal_gw.sim.rdss import RdssSimulator
from terminal_gw.topics import Topics
from terminal_gw.transport.pty import PtyDevice

DEVICE_ID = "demo-vessel"
DEFAULT_MQTT_PORT = 1883


@dataclass(frozen=True)
class BrokerSpec:
    """What --broker asked for: auto, none, or a given host and port."""

    mode: str  # "auto", "none", "given"
    host: str = "127.0.0.1"
    port: int = DEFAULT_MQTT_PORT


#: The simulated RDSS card's service interval: short, so a demo shows sends paced by it.
DEMO_BDS_INTERVAL_S = 10.0


def parse_broker(text: str) -> BrokerSpec:
    """--broker: auto, none, HOST, HOST:PORT, [IPv6]:PORT (mqtt:// in front is allowed)."""
    spec = text.strip()
    if spec.lower() in ("auto", "none"):
        return BrokerSpec(spec.lower())
    for scheme in ("mqtt://", "tcp://"):
        if spec.lower().startswith(scheme):
            spec = spec[len(scheme) :].rstrip("/")
    if "://" in spec:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give HOST or HOST:PORT (the demo speaks plain MQTT, no TLS)"
        )
    port_text = ""
    if spec.startswith("["):
        host, bracket, rest = spec[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise argparse.ArgumentTypeError(f"{text!r}: an IPv6 address goes as [ADDRESS]:PORT")
        port_text = rest[1:]
    elif spec.count(":") > 1:
        host = spec  # a bare IPv6 address, no port
    else:
        host, _, port_text = spec.partition(":")
        if not port_text and spec.endswith(":"):
            raise argparse.ArgumentTypeError(f"{text!r}: the port is missing after ':'")
    if not host and not port_text:
        raise argparse.ArgumentTypeError("give auto, none, HOST or HOST:PORT")
    port = DEFAULT_MQTT_PORT
    if port_text:
        if not port_text.isdigit():
            raise argparse.ArgumentTypeError(f"{text!r}: port {port_text!r} is not a number")
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise argparse.ArgumentTypeError(f"{text!r}: port {port} is not in 1-65535")
    return BrokerSpec("given", host or "127.0.0.1", port)


@dataclass
class BrokerChoice:
    """Where the demo's daemon sends records, and what it says about it."""

    host: str
    port: int
    how: str  # "local", "started", "given", "none" (asked for), "not_found"
    proc: subprocess.Popen[bytes] | None = None


def _answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_mosquitto(workdir: Path) -> BrokerChoice | None:
    binary = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
    )
    if binary is None:
        return None
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false"]
    if os.geteuid() == 0:
        lines.append("user root")  # as root it would drop to `mosquitto` and lose our dir
    lines.append(f"log_dest file {workdir / 'mosquitto.log'}")
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        if _answers("127.0.0.1", port, 0.2):
            return BrokerChoice("127.0.0.1", port, "started", proc)
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    return None


def choose_broker(spec: BrokerSpec, workdir: Path) -> BrokerChoice:
    """Resolve --broker: auto, none, or a given host and port."""
    if spec.mode == "none":
        return BrokerChoice("127.0.0.1", _free_port(), "none")
    if spec.mode == "given":
        return BrokerChoice(spec.host, spec.port, "given")
    if _answers("127.0.0.1", DEFAULT_MQTT_PORT):
        return BrokerChoice("127.0.0.1", DEFAULT_MQTT_PORT, "local")
    started = _start_mosquitto(workdir)
    if started is not None:
        return started
    return BrokerChoice("127.0.0.1", _free_port(), "not_found")


def resolve_error(spec: BrokerSpec) -> str | None:
    """Why a given broker's host cannot be used (it does not resolve), else None."""
    if spec.mode != "given":
        return None
    try:
        socket.getaddrinfo(spec.host, spec.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        return f"--broker: cannot resolve host {spec.host!r}: {reason}"
    return None


def demo_config(
    workdir: Path, gnss_path: str, modem_path: str, broker: BrokerChoice, rdss_path: str = "none"
) -> Config:
    """The daemon's config for the demo: everything under `workdir`."""
    return load_config_data(
        {
            "device": {"id": DEVICE_ID},
            "gnss": {
                "port": gnss_path,
                "baud": 9600,
                "stale_after_s": 5.0,
                "reporting": {
                    "min_interval_s": 1.0,
                    "max_interval_s": 10.0,
                    "distance_m": 5.0,
                    "sky_interval_s": 10.0,
                },
            },
            "modem": {"port": modem_path, "baud": 115200},
            "rdss": {"port": rdss_path, "interval_s": DEMO_BDS_INTERVAL_S},
            "mqtt": {
                "host": broker.host,
                "port": broker.port,
                "backoff_min_s": 1.0,
                "backoff_max_s": 5.0,
            },
            "outbox": {"path": str(workdir / "outbox.db")},
            "commands": {"path": str(workdir / "commands.db")},
            "status": {"path": str(workdir / "status.json"), "interval_s": 1.0},
        },
        environ={},
    )


class LiveView:
    """One line a second: the last fix, outbox depth, link state, records in and out."""

    def __init__(self, daemon: Daemon, out: TextIO) -> None:
        self.daemon = daemon
        self.out = out
        self.tty = out.isatty()

    def line(self) -> str:
        """The current state in one line."""
        d = self.daemon
        fix = d.gnss.last_fix
        if fix is None or fix.lat is None or fix.lon is None:
            where = "waiting for a fix"
        else:
            used = fix.used or {}
            sats = " ".join(f"{k}:{v}" for k, v in sorted(used.items()))
            speed = "" if fix.speed is None else f" {fix.speed * 1.943844:4.1f} kn"
            where = f"fix {fix.lat:9.5f} {fix.lon:10.5f} mode {fix.mode}{speed} [{sats}]"
        stored = d.records_stored()
        sms = d.records_in.get("sms", 0)
        modem = "" if d.modem is None else f"  | modem {d.modem.state} sms {sms}"
        if d.rdss is not None:
            modem += f"  | bds {d.rdss.state} rx {d.rdss.counters['rx']} tx {d.rdss.sends_today}"
        sent = d.uplink.counters.records
        link = str(d.uplink.state)
        return (
            f"{time.strftime('%H:%M:%S')}  {where}  | outbox {d.outbox.depth:5d} waiting"
            f"  | in {stored} out {sent}  | link {link}{modem}"
        )

    async def run(self) -> None:
        """Print until cancelled."""
        while True:
            await asyncio.sleep(1.0)
            text = self.line()
            if self.tty:
                self.out.write("\r\x1b[2K" + text)
            else:
                self.out.write(text + "\n")
            self.out.flush()


@contextlib.contextmanager
def _workdir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    path = Path(tempfile.mkdtemp(prefix="terminal-gw-demo-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def run_demo(args: argparse.Namespace, workdir: Path, out: TextIO) -> dict[str, Any]:
    """Simulator, broker, daemon and live view until Ctrl-C or --duration."""
    device = PtyDevice(workdir / "dev" / "beidou0")
    sim = GnssSimulator(device, rate_hz=args.rate)
    modem_device = PtyDevice(workdir / "dev" / "tiantong0")
    modem_sim = ModemSimulator(modem_device)
    rdss_device = PtyDevice(workdir / "dev" / "rdss0")
    rdss_sim = RdssSimulator(rdss_device, interval_s=DEMO_BDS_INTERVAL_S)
    broker = choose_broker(args.broker, workdir)
    config = demo_config(workdir, device.path, modem_device.path, broker, rdss_device.path)
    daemon = Daemon(config)
    waits = "records wait in the outbox (as on a vessel with no link)"
    say = {
        "local": f"using the broker on {broker.host}:{broker.port}",
        "started": f"started mosquitto on {broker.host}:{broker.port}",
        "given": f"using the broker at {broker.host}:{broker.port}",
        "none": f"no broker (--broker none): {waits}",
        "not_found": f"no broker found (nothing on 127.0.0.1:{DEFAULT_MQTT_PORT}, no mosquitto"
        f" to start): {waits}",
    }[broker.how]
    print(f"terminal-gw demo: {say}", file=out)
    if broker.how == "given" and not _answers(broker.host, broker.port, 1.0):
        print(
            f"  nothing answers at {broker.host}:{broker.port} yet: records wait in the outbox"
            " and go out once it does",
            file=out,
        )
    print(f"  simulated BeiDou/GPS receiver on {device.path} -> {device.slave_path}", file=out)
    print(
        f"  simulated Tiantong modem on {modem_device.path} -> {modem_device.slave_path}"
        f" (an SMS every {args.sms_every:g} s)",
        file=out,
    )
    print(
        f"  simulated BeiDou RDSS terminal on {rdss_device.path} -> {rdss_device.slave_path}"
        f" (card {rdss_sim.user_id}, a short message every {args.bds_every:g} s, one send"
        f" per {DEMO_BDS_INTERVAL_S:g} s)",
        file=out,
    )
    print(f"  state, outbox and logs in {workdir}", file=out)
    if broker.how not in ("none", "not_found"):
        topics = Topics(config.mqtt.prefix, DEVICE_ID)
        print(
            f"  watch the topics:  mosquitto_sub -h {broker.host} -p {broker.port}"
            f" -t '{topics.base}/#' -v",
            file=out,
        )
        print(
            f"  send an SMS:       mosquitto_pub -h {broker.host} -p {broker.port}"
            f" -t '{topics.command('sms/send')}' -q 1"
            """ -m '{"id": "demo-1", "to": "+8613800138000", "text": "hello"}'""",
            file=out,
        )
        print(
            f"  send a BeiDou message: mosquitto_pub -h {broker.host} -p {broker.port}"
            f" -t '{topics.command('bds/send')}' -q 1"
            """ -m '{"id": "bds-1", "to": "0166166", "text": "你好, hello"}'""",
            file=out,
        )
    print("  Ctrl-C stops it cleanly.\n", file=out)
    out.flush()
    try:
        async with asyncio.TaskGroup() as tg:
            sim_task = tg.create_task(sim.run(), name="demo-sim")
            modem_task = tg.create_task(
                modem_sim.run(incoming_every=args.sms_every), name="demo-modem-sim"
            )
            rdss_task = tg.create_task(
                rdss_sim.run(incoming_every=args.bds_every), name="demo-rdss-sim"
            )
            view_task = tg.create_task(LiveView(daemon, out).run(), name="demo-view")
            daemon_task = tg.create_task(daemon.run(), name="demo-daemon")
            if args.duration:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(args.duration):
                        await asyncio.shield(daemon_task)
                daemon.supervisor.stop_requested.set()
            await daemon_task
            sim_task.cancel()
            modem_task.cancel()
            rdss_task.cancel()
            view_task.cancel()
    finally:
        device.close()
        modem_device.close()
        rdss_device.close()
        if broker.proc is not None:
            broker.proc.terminate()
            try:
                broker.proc.wait(5)
            except subprocess.TimeoutExpired:
                broker.proc.kill()
    summary = {
        "broker": broker.how,
        "stored": dict(daemon.records_in),
        "delivered": daemon.uplink.counters.records,
        "waiting": daemon.outbox.depth,
    }
    if out.isatty():
        out.write("\n")
    print(
        f"\nstopped: {daemon.records_stored()} records"
        f" stored, {summary['delivered']} delivered, {summary['waiting']} waiting in the outbox",
        file=out,
    )
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `terminal-gw demo`."""
    parser.add_argument("--duration", type=float, default=0, help="stop after S seconds")
    parser.add_argument(
        "--broker",
        type=parse_broker,
        default=BrokerSpec("auto"),
        help="auto (localhost:1883, else a mosquitto on a free port, else none), none,"
        " HOST[:PORT] (port 1883 when left out)",
    )
    parser.add_argument("--rate", type=float, default=1.0, help="receiver rate in Hz (1-10)")
    parser.add_argument(
        "--sms-every", type=float, default=20.0, help="an incoming SMS every S seconds"
    )
    parser.add_argument(
        "--bds-every",
        type=float,
        default=30.0,
        help="an incoming BeiDou short message every S seconds",
    )
    parser.add_argument(
        "--state-dir", type=Path, default=None, help="keep state here (default: a temp dir)"
    )


def cli(args: argparse.Namespace) -> int:
    """`terminal-gw demo`."""
    problem = resolve_error(args.broker)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    with _workdir(args.state_dir) as workdir:
        log_file = (workdir / "daemon.log").open("a", encoding="utf-8")
        try:
            configure_logging(args.log_level or "info", "json", stream=log_file)
            summary = asyncio.run(run_demo(args, workdir, sys.stdout))
        finally:
            log_file.close()
    print(_where_records_went(summary["waiting"], workdir, kept=args.state_dir is not None))
    return EXIT_OK


def _where_records_went(waiting: int, workdir: Path, *, kept: bool) -> str:
    """What became of the records still waiting when the demo stopped."""
    db = workdir / "outbox.db"
    if kept:
        return (
            f"kept: {waiting} records waiting in {db}"
            f" (`terminal-gw outbox stats --db {db}`; the same --state-dir sends them on)"
        )
    if waiting:
        return (
            f"deleted: {waiting} records waiting in the outbox went with the temporary"
            f" directory {workdir} (--state-dir DIR keeps them)"
        )
    return f"deleted the temporary directory {workdir}: no record was left waiting"
