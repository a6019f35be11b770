"""`terminal-gw run` as a process: SIGTERM during heavy ingest exits fast and loses nothing."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from terminal_gw.config import load_config
from terminal_gw.outbox import Outbox
from terminal_gw.sim.gnss import GnssSimulator
from terminal_gw.transport.pty import PtyDevice
from tests.broker import free_port
from tests.waiting import wait_until_sync


def write_config(tmp_path: Path, gnss: str) -> Path:
    state = tmp_path / "state"
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f"""
[device]
id = "sig-test"
[gnss]
port = "{gnss}"
[gnss.reporting]
min_interval_s = 0
distance_m = 0
sky_interval_s = 0
[mqtt]
host = "127.0.0.1"
port = {free_port()}
[outbox]
path = "{state}/outbox.db"
[commands]
path = "{state}/commands.db"
[status]
path = "{state}/status.json"
interval_s = 0.5
[log]
format = "json"
"""
    )
    return cfg


def test_sigterm_during_heavy_ingest(tmp_path: Path) -> None:
    device = PtyDevice(tmp_path / "gnss0")
    sim = GnssSimulator(device, rate_hz=10)
    cfg = write_config(tmp_path, device.path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "terminal_gw", "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Running, with its signal handlers in place, once it wrote its status file (a
        # SIGTERM during the interpreter's start, slow on a busy machine, just kills it).
        status_path = tmp_path / "state" / "status.json"
        wait_until_sync(status_path.exists, 60, "daemon started")
        # Heavy ingest: epochs as fast as the pty takes them (hundreds a second).
        deadline = time.monotonic() + 4
        written = 0
        while time.monotonic() < deadline:
            written += device.write(b"".join(sim.next_epoch()))
            time.sleep(0.002)
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        for _ in range(50):
            device.write(b"".join(sim.next_epoch()))  # still arriving while it stops
        _, err = proc.communicate(timeout=10)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        device.close()
    assert proc.returncode == 0, err[-2000:]
    assert took < 5.0, f"took {took:.1f}s to stop"
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    accepted = status["counters"]["records_in"]
    print(f"SIGTERM: stopped in {took:.2f}s; accepted {accepted}")
    assert accepted["fix"] > 100, accepted

    async def waiting() -> dict[str, int]:
        async with Outbox(load_config(cfg).outbox) as outbox:
            return {cls: s.count for cls, s in (await outbox.stats()).items()}

    stored = asyncio.run(waiting())
    # No broker: everything accepted must still be in the outbox after the stop.
    for cls in ("fix", "sky"):
        assert stored.get(cls, 0) == accepted.get(cls, 0), (cls, stored, accepted)
