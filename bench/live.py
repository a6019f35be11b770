"""Live path benchmark: sentence written to a pty -> fix at a subscriber on a loopback broker.

Runs `terminal-gw run` as a process (as on a device) against a mosquitto started here on a
free port, feeds it a simulated receiver on a pty and prints:

- latency from an epoch's last sentence written to its fix arriving at a subscriber (p50, p99)
  at 1 Hz and 10 Hz (goal: p99 under 50 ms at 10 Hz), after a few unmeasured epochs;
- the daemon's CPU percent at 1 Hz and 10 Hz (from /proc/PID/stat);
- the daemon's resident memory after an hour-equivalent of input (3,600 epochs fed fast).

With `--line-gap-ms N` each sentence of a measured epoch is its own write, N ms after the
previous one, as a UART delivers them (about 6 ms a line at 115200 baud) instead of the whole
epoch in one write; latency still counts from the write of the epoch's last sentence.

Usage: python bench/live.py [--seconds 30] [--hour-epochs 3600] [--line-gap-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from terminal_gw.sim.gnss import GnssSimulator  # noqa: E402 - after the path set-up
from terminal_gw.transport.pty import PtyDevice  # noqa: E402
from tests.broker import Broker, free_port  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Epochs fed before each measurement (see `measure`).
WARMUP_EPOCHS = 3


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    """Resident memory of a process in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_config(work: Path, gnss: str, mqtt_port: int, *, mqtt_extra: str = "") -> Path:
    """A config publishing every epoch; `mqtt_extra`: more `[mqtt]` lines."""
    cfg = work / "config.toml"
    cfg.write_text(
        f"""
[device]
id = "bench"
[gnss]
port = "{gnss}"
[gnss.reporting]
min_interval_s = 0
distance_m = 0
sky_interval_s = 3600
[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
{mqtt_extra}
[outbox]
path = "{work}/outbox.db"
[status]
path = "{work}/status.json"
[log]
level = "warning"
format = "json"
"""
    )
    return cfg


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0-1) of the values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(
    sim: GnssSimulator,
    device: PtyDevice,
    port: int,
    pid: int,
    *,
    rate: float,
    seconds: float,
    line_gap_s: float = 0.0,
) -> dict[str, float]:
    """Feed `rate` Hz for `seconds`; latency per fix and the daemon's CPU share."""
    sent: dict[str, float] = {}
    latencies: list[float] = []
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"bench-sub-{rate}") as client:
        await client.subscribe("tgw/bench/gnss/fix", qos=1)

        async def receive() -> None:
            async for msg in client.messages:
                fix = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
                t = sent.pop(fix.get("time", ""), None)
                if t is not None:
                    latencies.append(time.perf_counter() - t)

        async with asyncio.TaskGroup() as tg:
            rx = tg.create_task(receive(), name="bench-rx")
            period = 1.0 / rate
            # Unmeasured: the assembler learns the receiver's cycle (which sentence ends an
            # epoch) from two epochs; until then an epoch is reported when the next begins.
            for _ in range(WARMUP_EPOCHS):
                device.write(b"".join(sim.next_epoch()))
                await asyncio.sleep(period)
            await asyncio.sleep(1.0)
            cpu0, wall0 = cpu_seconds(pid), time.monotonic()
            next_at = time.monotonic()
            end = next_at + seconds
            while time.monotonic() < end:
                # The fix's time as the receiver states it: NMEA carries hundredths.
                stamp = sim.vessel.time.strftime("%Y-%m-%dT%H:%M:%S.") + (
                    f"{sim.vessel.time.microsecond // 10_000 * 10:03d}Z"
                )
                sentences = sim.next_epoch()
                if line_gap_s > 0:
                    for line in sentences[:-1]:
                        device.write(line)
                        await asyncio.sleep(line_gap_s)
                    device.write(sentences[-1])
                else:
                    device.write(b"".join(sentences))
                sent[stamp] = time.perf_counter()
                next_at += period
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - wall0) * 100
            await asyncio.sleep(1.5)
            rx.cancel()
    ms = [x * 1000 for x in latencies]
    return {
        "rate_hz": rate,
        "fixes": len(ms),
        "p50_ms": statistics.median(ms) if ms else float("nan"),
        "p99_ms": pct(ms, 0.99) if ms else float("nan"),
        "max_ms": max(ms) if ms else float("nan"),
        "cpu_pct": cpu,
    }


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="tgw-bench-live-") as tmp:
        work = Path(tmp)
        (work / "broker").mkdir()
        broker = Broker(work / "broker", port=free_port())
        broker.start()
        device = PtyDevice(work / "gnss0")
        sim = GnssSimulator(device, rate_hz=10)
        cfg = write_config(work, device.path, broker.port)
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before the measurement
            [sys.executable, "-m", "terminal_gw", "run", "--config", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await asyncio.sleep(2.0)
            rss_start = rss_mib(proc.pid)
            results = [
                await measure(
                    sim,
                    device,
                    broker.port,
                    proc.pid,
                    rate=rate,
                    seconds=args.seconds,
                    line_gap_s=args.line_gap_ms / 1000,
                )
                for rate in (1.0, 10.0)
            ]
            # An hour of input at 1 Hz, fed as fast as the daemon keeps up (about 200 Hz).
            t0 = time.monotonic()
            for _ in range(args.hour_epochs):
                device.write(b"".join(sim.next_epoch()))
                await asyncio.sleep(0.005)
            await asyncio.sleep(3.0)
            hour_s = time.monotonic() - t0
            rss_hour = rss_mib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(10)
            device.close()
            broker.kill()
    print(
        f"machine: {platform.machine()} {_cpu_model()}, {os.cpu_count()} CPUs,"
        f" Python {platform.python_version()}"
    )
    print(f"{'rate':>6} {'fixes':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'CPU %':>6}")
    for r in results:
        print(
            f"{r['rate_hz']:>5.0f}Hz {r['fixes']:>6.0f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f}"
            f" {r['max_ms']:>8.1f} {r['cpu_pct']:>6.1f}"
        )
    print(f"RSS after start: {rss_start:.1f} MiB")
    print(
        f"RSS after an hour-equivalent ({args.hour_epochs} epochs in {hour_s:.0f} s):"
        f" {rss_hour:.1f} MiB"
    )


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="per rate")
    parser.add_argument("--hour-epochs", type=int, default=3600)
    parser.add_argument(
        "--line-gap-ms", type=float, default=0.0, help="write each sentence alone, this far apart"
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
