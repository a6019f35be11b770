"""CPU per sentence: the daemon against gpsd, fed the same lines through a pty in the same run.

Feeds the NMEA lines of `../shared/corpus/gnss/*.log` (`#` lines removed, repeated as needed)
through a pty at 200 lines/s (one line per write, as a 10 Hz receiver at 115200 baud sends
them), 2,000 and 20,000 lines/s (a write every 5 ms) and at full speed, and measures the CPU
time each process spent (`/proc/PID/task/*/schedstat`, all threads, until it is idle again)
per line fed:

- `terminal-gw run` with the default reporting policy ("default"), and publishing every epoch
  ("every"), against a mosquitto started here, with a subscriber counting the fixes delivered;
- `gpsd -N -n -b` (Debian's `gpsd`, installed when missing) on its own pty, fed the same way.

The ratio daemon / gpsd in the same run is the figure (these machines are noisy). Also: the
fixes delivered against the epochs fed, the rate the feeder reached, and the uplink's CPU per
published message estimated as (every - default) CPU / messages published. First, the
daemon's idle CPU (default policy, its pty silent, `--idle` seconds; 0 skips it): what its
timers cost, a share of every paced figure (at 200 lines/s, 1 ms/s is 5 us/line).

Each daemon run also reports what it wrote to disk while fed (`write_bytes` of
`/proc/PID/io`: outbox commits and checkpoints, the status file), in KiB.

With `--profile FILE` the "every" daemon of the last rate runs under cProfile (`python -m
cProfile`, its stats written to FILE when it stops; its CPU figure is then the profiler's too).
With `--tree DIR` the daemon runs from another checkout's `terminal_gw` (a "before" tree, fed
by the same bench in the same session).

Usage: python bench/cpu.py [--seconds 6] [--rates 200,2000,20000,full] [--idle 20]
                           [--profile FILE] [--tree DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from terminal_gw.transport.pty import PtyDevice  # noqa: E402 - after the path set-up
from tests.broker import Broker, free_port  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpus" / "gnss"
#: Lines fed at full speed (no schedule).
FULL_LINES = 60_000
#: The checkout whose `terminal_gw` the daemon runs (`--tree`); set once by `main`.
TREE = [REPO]


def corpus_lines() -> list[bytes]:
    """Every NMEA line of the corpus, in file order, each ending in CR LF."""
    lines: list[bytes] = []
    for path in sorted(CORPUS.glob("*.log")):
        for raw in path.read_bytes().splitlines():
            line = raw.strip()
            if line.startswith(b"$") and b"*" in line:
                lines.append(line + b"\r\n")
    return lines


def epochs_in(lines: list[bytes]) -> int:
    """Epochs in the lines: changes of the time field of GGA/RMC/GNS sentences."""
    count = 0
    last = b""
    for line in lines:
        kind = line[3:6]
        if kind not in (b"GGA", b"RMC", b"GNS"):
            continue
        fields = line.split(b",")
        stamp = fields[1] if len(fields) > 1 else b""
        if stamp and stamp != last:
            count += 1
            last = stamp
    return count


def schedstat_ns(pid: int) -> int:
    """CPU time of every thread of a process, in ns (first field of each task's schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return total


def written_bytes(pid: int) -> int:
    """Bytes the process caused to be written to storage so far (`write_bytes`)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def wait_idle(
    pid: int, *, quiet_ns: int = 3_000_000, step: float = 0.25, cap: float = 30.0
) -> None:
    """Until the process used less than `quiet_ns` of CPU in a `step`."""
    end = time.monotonic() + cap
    last = schedstat_ns(pid)
    while time.monotonic() < end:
        time.sleep(step)
        now = schedstat_ns(pid)
        if now - last < quiet_ns:
            return
        last = now


def feed(device: PtyDevice, lines: list[bytes], rate: float | None) -> float:
    """Write the lines at `rate` lines/s (None: as fast as the reader takes them); never drop.

    Returns the rate reached."""
    fd = device.master_fd
    per_write = 1 if rate is None or rate <= 200 else max(1, int(rate * 0.005))
    period = per_write / rate if rate else 0.0
    t0 = time.monotonic()
    next_at = t0
    for i in range(0, len(lines), per_write):
        data = memoryview(b"".join(lines[i : i + per_write]))
        while data:
            try:
                n = os.write(fd, data)
            except BlockingIOError:
                select.select([], [fd], [], 1.0)
                continue
            data = data[n:]
        if period:
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    return len(lines) / max(1e-9, time.monotonic() - t0)


@dataclass
class Run:
    who: str
    rate: str
    lines: int
    reached: float
    cpu_us_per_line: float
    fixes: int | None = None
    epochs: int | None = None
    messages: int = 0
    written: int | None = None  # bytes written to disk while fed (daemon runs)


def write_config(work: Path, port: str, mqtt_port: int, *, every: bool) -> Path:
    reporting = (
        "[gnss.reporting]\nmin_interval_s = 0\ndistance_m = 0\nsky_interval_s = 0\n"
        if every
        else ""
    )
    cfg = work / f"config-{'every' if every else 'default'}.toml"
    cfg.write_text(
        f"""
[device]
id = "bench"
[gnss]
port = "{port}"
{reporting}
[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
rate_msgs_per_s = 1000000
rate_bytes_per_s = "1GB"
[outbox]
path = "{work}/outbox-{"every" if every else "default"}.db"
max_bytes = "2GiB"
[status]
path = "{work}/status.json"
[log]
level = "warning"
format = "json"
"""
    )
    return cfg


def lines_for(all_lines: list[bytes], rate: float | None, seconds: float) -> list[bytes]:
    n = FULL_LINES if rate is None else int(rate * seconds)
    out: list[bytes] = []
    while len(out) < n:
        out += all_lines[: n - len(out)]
    return out


def run_daemon(
    work: Path,
    broker: Broker,
    lines: list[bytes],
    rate: float | None,
    *,
    every: bool,
    profile: Path | None = None,
) -> Run:
    device = PtyDevice(work / f"gnss-{'every' if every else 'default'}")
    cfg = write_config(work, device.path, broker.port, every=every)
    fixes_file = work / "fixes.txt"
    with fixes_file.open("wb") as out:
        sub = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-v",
             "-t", "tgw/bench/gnss/#"],
            stdout=out,
        )  # fmt: skip
        wrap = [] if profile is None else ["-m", "cProfile", "-o", str(profile)]
        proc = subprocess.Popen(
            [sys.executable, *wrap, "-m", "terminal_gw", "run", "--config", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=TREE[0],
            env={**os.environ, "PYTHONPATH": str(TREE[0])},
        )
        try:
            time.sleep(3.0)  # start-up: imports, outbox, the broker connection
            wait_idle(proc.pid)
            before, disk0 = schedstat_ns(proc.pid), written_bytes(proc.pid)
            reached = feed(device, lines, rate)
            wait_idle(proc.pid)
            used, written = schedstat_ns(proc.pid) - before, written_bytes(proc.pid) - disk0
            time.sleep(0.5)
        finally:
            proc.terminate()
            proc.wait(15)
            sub.terminate()
            sub.wait(5)
            device.close()
    topics = [line.split(b" ", 1)[0] for line in fixes_file.read_bytes().splitlines()]
    fixes = sum(1 for t in topics if t.endswith(b"/fix"))
    for old in work.glob("outbox-*"):
        old.unlink()
    return Run(
        who=f"daemon ({'every' if every else 'default'})",
        rate=_rate_name(rate),
        lines=len(lines),
        reached=reached,
        cpu_us_per_line=used / 1000 / len(lines),
        fixes=fixes,
        epochs=epochs_in(lines),
        messages=len(topics),
        written=written,
    )


def run_idle(work: Path, broker: Broker, seconds: float) -> float:
    """The daemon's CPU in ms per second with its receiver silent (after start-up)."""
    device = PtyDevice(work / "gnss-idle")
    cfg = write_config(work, device.path, broker.port, every=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "terminal_gw", "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=TREE[0],
        env={**os.environ, "PYTHONPATH": str(TREE[0])},
    )
    try:
        time.sleep(3.0)
        wait_idle(proc.pid)
        before, t0 = schedstat_ns(proc.pid), time.monotonic()
        time.sleep(seconds)
        used, took = schedstat_ns(proc.pid) - before, time.monotonic() - t0
    finally:
        proc.terminate()
        proc.wait(15)
        device.close()
    for old in work.glob("outbox-*"):
        old.unlink()
    return used / 1e6 / took


def ensure_gpsd() -> str:
    found = shutil.which("gpsd") or ("/usr/sbin/gpsd" if Path("/usr/sbin/gpsd").exists() else "")
    if found:
        return found
    print("gpsd not found: installing Debian's gpsd", file=sys.stderr)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True)
    subprocess.run(
        [*sudo, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-qq",
         "gpsd"],
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return shutil.which("gpsd") or "/usr/sbin/gpsd"


def run_gpsd(gpsd: str, work: Path, lines: list[bytes], rate: float | None) -> Run:
    device = PtyDevice()
    proc = subprocess.Popen(
        [gpsd, "-N", "-n", "-b", "-S", str(free_port()), "-F", str(work / "gpsd.sock"),
         device.slave_path],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(1.5)
        wait_idle(proc.pid)
        before = schedstat_ns(proc.pid)
        reached = feed(device, lines, rate)
        wait_idle(proc.pid)
        used = schedstat_ns(proc.pid) - before
    finally:
        proc.terminate()
        proc.wait(10)
        device.close()
    return Run(
        who="gpsd",
        rate=_rate_name(rate),
        lines=len(lines),
        reached=reached,
        cpu_us_per_line=used / 1000 / len(lines),
    )


def _rate_name(rate: float | None) -> str:
    return "full" if rate is None else f"{rate:,.0f}/s"


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="feeding time per paced run")
    parser.add_argument(
        "--rates", default="200,2000,20000,full", help="lines/s to feed, comma separated"
    )
    parser.add_argument(
        "--idle", type=float, default=20.0, help="seconds of the idle measurement (0: none)"
    )
    parser.add_argument(
        "--profile", type=Path, help='cProfile stats of the last rate\'s "every" daemon to FILE'
    )
    parser.add_argument(
        "--tree", type=Path, default=REPO, help="the checkout whose terminal_gw the daemon runs"
    )
    args = parser.parse_args()
    TREE[0] = args.tree.resolve()
    rates: list[float | None] = [
        None if r.strip() == "full" else float(r) for r in args.rates.split(",")
    ]
    gpsd = ensure_gpsd()
    all_lines = corpus_lines()
    print(
        f"machine: {platform.machine()} {_cpu_model()}, {os.cpu_count()} CPUs,"
        f" Python {platform.python_version()}; load {os.getloadavg()[0]:.1f};"
        f" corpus {len(all_lines):,} lines; daemon from {TREE[0]}"
    )
    with tempfile.TemporaryDirectory(prefix="tgw-bench-cpu-") as tmp:
        work = Path(tmp)
        (work / "broker").mkdir()
        broker = Broker(work / "broker", port=free_port())
        broker.start()
        try:
            if args.idle > 0:
                idle = run_idle(work, broker, args.idle)
                print(
                    f"idle (no input, {args.idle:g} s): {idle:.2f} ms of CPU per s"
                    f" ({idle * 5:.1f} us/line at 200 lines/s)"
                )
            print(
                f"{'rate':>9} {'who':<17} {'lines':>7} {'reached/s':>10} {'us/line':>8}"
                f" {'x gpsd':>7} {'fixes/epochs':>13} {'disk KiB':>9}"
            )
            for i, rate in enumerate(rates):
                lines = lines_for(all_lines, rate, args.seconds)
                ref = run_gpsd(gpsd, work, lines, rate)
                profile = args.profile.resolve() if args.profile and i == len(rates) - 1 else None
                runs = [
                    ref,
                    run_daemon(work, broker, lines, rate, every=False),
                    run_daemon(work, broker, lines, rate, every=True, profile=profile),
                ]
                for r in runs:
                    ratio = r.cpu_us_per_line / ref.cpu_us_per_line if ref.cpu_us_per_line else 0
                    delivered = f"{r.fixes:,}/{r.epochs:,}" if r.fixes is not None else ""
                    disk = f"{r.written / 1024:,.0f}" if r.written is not None else ""
                    print(
                        f"{r.rate:>9} {r.who:<17} {r.lines:>7,} {r.reached:>10,.0f}"
                        f" {r.cpu_us_per_line:>8.1f} {ratio:>7.2f} {delivered:>13} {disk:>9}"
                    )
                default, every = runs[1], runs[2]
                if every.messages > default.messages:
                    extra = (every.cpu_us_per_line - default.cpu_us_per_line) * every.lines
                    messages = every.messages - default.messages
                    print(
                        f"{'':>9} per published message: {extra / messages:.1f} us of CPU"
                        f" ((every - default) / {messages:,} more fix and sky messages; the"
                        " sky models built count too)"
                    )
        finally:
            broker.kill()


if __name__ == "__main__":
    main()
