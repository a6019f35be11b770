"""Re-sends without a reconnect: every epoch published at a high sentence rate, each fix
counted at a subscriber by its id.

Runs `terminal-gw run` as a process against a mosquitto started here on a free port, with
the reporting policy publishing every epoch and the uplink's rate limits lifted, feeds a
simulated receiver on a pty at `--rate` sentences a second for `--seconds`, and prints the
sentences fed, the fixes delivered, how many arrived more than once and the uplink's
connects (from the status file). Goal: 0 duplicates with 1 connect.

Usage: python bench/duplicates.py [--rate 20000] [--seconds 20] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiomqtt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.live import _cpu_model, write_config  # noqa: E402 - after the path set-up
from terminal_gw.sim.gnss import GnssSimulator  # noqa: E402
from terminal_gw.transport.pty import PtyDevice  # noqa: E402
from tests.broker import Broker, free_port  # noqa: E402


async def one_run(rate: float, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="tgw-bench-dup-") as tmp:
        work = Path(tmp)
        (work / "broker").mkdir()
        broker = Broker(work / "broker", port=free_port())
        broker.start()
        device = PtyDevice(work / "gnss0")
        sim = GnssSimulator(device, rate_hz=10)
        cfg = write_config(
            work,
            device.path,
            broker.port,
            mqtt_extra='rate_msgs_per_s = 100000.0\nrate_bytes_per_s = "1GB"',
        )
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before the measurement
            [sys.executable, "-m", "terminal_gw", "run", "--config", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        ids: list[str] = []
        sentences = 0
        try:
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="bench-dup") as client:
                await client.subscribe("tgw/bench/gnss/fix", qos=1)

                async def receive() -> None:
                    async for msg in client.messages:
                        payload = bytes(msg.payload)  # type: ignore[arg-type]
                        ids.append(json.loads(payload)["id"])

                async with asyncio.TaskGroup() as tg:
                    rx = tg.create_task(receive(), name="bench-rx")
                    await asyncio.sleep(2.0)
                    start = time.monotonic()
                    while (elapsed := time.monotonic() - start) < seconds:
                        due = int(elapsed * rate)
                        while sentences < due:
                            epoch = sim.next_epoch()
                            device.write(b"".join(epoch))
                            sentences += len(epoch)
                        await asyncio.sleep(0.005)
                    fed_s = time.monotonic() - start
                    # Let the backlog drain: until no new fix for 3 s.
                    last, quiet = len(ids), time.monotonic()
                    while time.monotonic() - quiet < 3.0:
                        await asyncio.sleep(0.2)
                        if len(ids) != last:
                            last, quiet = len(ids), time.monotonic()
                    rx.cancel()
                    await asyncio.sleep(5.5)  # a status write (every 5 s) after the last fix
            status = json.loads((work / "status.json").read_text())
        finally:
            proc.terminate()
            proc.wait(10)
            device.close()
            broker.kill()
    counters = status.get("counters", {}).get("uplink", {})
    counts = Counter(ids)
    return {
        "rate": sentences / fed_s,
        "sentences": sentences,
        "fixes": len(counts),
        "duplicates": sum(k - 1 for k in counts.values() if k > 1),
        "connects": float(counters.get("connects", float("nan"))),
    }


async def main_async(args: argparse.Namespace) -> None:
    print(
        f"machine: {platform.machine()} {_cpu_model()}, Python {platform.python_version()};"
        f" goal: 0 duplicates, 1 connect"
    )
    print(f"{'run':>4} {'sent/s':>8} {'sentences':>10} {'fixes':>7} {'dups':>5} {'connects':>9}")
    for n in range(1, args.runs + 1):
        r = await one_run(args.rate, args.seconds)
        print(
            f"{n:>4} {r['rate']:>8.0f} {r['sentences']:>10.0f} {r['fixes']:>7.0f}"
            f" {r['duplicates']:>5.0f} {r['connects']:>9.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20000.0, help="sentences a second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=3)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
