"""The issue's full-disk reproduction with `terminal-gw run` as a real process.

A 2 MiB tmpfs holds the outbox, commands and status; 1.2 MiB of it is taken by another file;
`outbox.max_bytes` is at its default; the broker is down; the receiver is a simulator on a
pty, every epoch reported. Measured: the free space the outbox leaves, the time to drain once
the broker is back (on a disk another file has filled), and the records sent again after a
SIGKILL and a restart (must be 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from terminal_gw.sim.gnss import GnssSimulator
from terminal_gw.status import read_status_file
from terminal_gw.transport.pty import PtyDevice
from tests.broker import Broker
from tests.test_daemon import Subscriber
from tests.test_disk_full import MIN_FREE, free_bytes, grow, mount_tmpfs

TOPIC = "tgw/proc-disk"


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB filesystem, unmounted afterwards."""
    mnt = tmp_path / "disk"
    mount_tmpfs(mnt)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def write_config(tmp_path: Path, state: Path, gnss: str, mqtt_port: int) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f"""
[device]
id = "proc-disk"
[gnss]
port = "{gnss}"
[gnss.reporting]
min_interval_s = 0
distance_m = 0
sky_interval_s = 0
[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
backoff_min_s = 3.0
backoff_max_s = 3.0
[outbox]
path = "{state}/outbox.db"
retry_interval_s = 1.0
[commands]
path = "{state}/commands.db"
[status]
path = "{state}/status.json"
interval_s = 0.5
[log]
format = "json"
level = "warning"
"""
    )
    return cfg


async def start(cfg: Path, log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as err:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "terminal_gw",
            "run",
            "--config",
            str(cfg),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=err,
        )


async def status_when(path: Path, pred: Any, timeout: float) -> dict[str, Any]:
    """The status file's snapshot once `pred` holds for it (it is written every 0.5 s)."""
    snap: dict[str, Any] = {}
    try:
        async with asyncio.timeout(timeout):
            while True:
                with contextlib.suppress(OSError, ValueError):
                    snap = read_status_file(path)
                    if pred(snap):
                        return snap
                await asyncio.sleep(0.1)
    except TimeoutError:
        shown = {k: snap.get(k) for k in ("pid", "updated", "problems", "gauges", "stages")}
        shown["age"] = time.time() - float(snap.get("updated", 0))
        raise AssertionError(f"status never matched; last: {json.dumps(shown)}") from None


async def feed(device: PtyDevice, sim: GnssSimulator, seconds: float, disk: Path) -> int:
    """Epochs as fast as the pty takes them for `seconds`; the least free space seen."""
    least = free_bytes(disk)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        device.write(b"".join(sim.next_epoch()))
        least = min(least, free_bytes(disk))
        await asyncio.sleep(0.002)
    return least


async def hog_disk(path: Path) -> None:
    """Take every block that comes free, until cancelled."""
    while True:
        grow(path)
        await asyncio.sleep(0.05)


async def settle(disk: Path) -> int:
    """Free space 3 s after the feed stopped (the last batch committed, the WAL cut back)."""
    await asyncio.sleep(3)
    return free_bytes(disk)


async def test_full_disk_reproduction_as_processes(disk: Path, tmp_path: Path) -> None:
    state = disk / "state"
    grow(disk / "other", 1200 * 1024)
    device = PtyDevice(tmp_path / "gnss0")
    sim = GnssSimulator(device, rate_hz=10)
    broker = Broker(tmp_path / "broker")
    broker.workdir.mkdir()
    cfg = write_config(tmp_path, state, device.path, broker.port)
    log = tmp_path / "daemon.log"
    proc = await start(cfg, log)
    status_path = state / "status.json"
    figures: dict[str, Any] = {}
    hog: asyncio.Task[None] | None = None
    try:
        await status_when(status_path, lambda s: s["stages"].get("gnss"), 30)
        # Broker down, far more epochs than the disk has room for.
        least = await feed(device, sim, 10, disk)
        snap = await status_when(status_path, lambda s: True, 5)
        assert snap["gauges"]["outbox_limit_bytes"] < 1024 * 1024
        # Sampled every few ms: a commit or checkpoint may dip into the headroom for a
        # moment; the disk never fills, and once the batch settles the headroom is whole.
        assert least >= 16 * 1024, f"the outbox left only {least} bytes free"
        settled = await settle(disk)
        assert settled >= MIN_FREE * 3 // 4, f"{settled} bytes free once settled"
        figures["with_other_file"] = {"least_free": least, "settled_free": settled}

        # The other file goes: the outbox grows into the space, and still leaves the headroom.
        (disk / "other").unlink()
        least = await feed(device, sim, 10, disk)
        assert least >= 16 * 1024, f"the outbox left only {least} bytes free"
        settled = await settle(disk)
        assert settled >= MIN_FREE * 3 // 4, f"{settled} bytes free once settled"
        figures["after_it_went"] = {"least_free": least, "settled_free": settled}

        # Another file (a runaway log) takes every block left, and every block the outbox
        # gives back: the status says so, and keeps updating.
        filler = disk / "filler"
        hog = asyncio.create_task(hog_disk(filler), name="hog")
        await feed(device, sim, 2, disk)
        snap = await status_when(
            status_path, lambda s: s.get("problems") == {"outbox": "disk full"}, 60
        )
        later = await status_when(
            status_path,
            lambda s: s["updated"] > snap["updated"] and s.get("problems") == snap["problems"],
            10,
        )
        assert later["healthy"] is False
        cli = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "terminal_gw",
            "status",
            "--config",
            str(cfg),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await cli.communicate()
        assert cli.returncode == 1, err
        assert "UNHEALTHY (outbox: disk full)" in out.decode()
        waiting = int(later["gauges"]["outbox_depth"])
        assert waiting > 500

        # The broker comes back (the disk still full): everything drains.
        broker.start()
        sub = Subscriber(broker.port, f"{TOPIC}/gnss/#")
        ready = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            sub_task = tg.create_task(sub.run(ready), name="subscriber")
            await ready.wait()
            t0 = time.monotonic()
            await status_when(status_path, lambda s: s["gauges"]["outbox_depth"] == 0, 120)
            drain_s = time.monotonic() - t0
            first_run = [m[1]["id"] for m in sub.messages]
            assert len(first_run) >= waiting * 0.9  # the subscriber joined before the drain
            assert len(set(first_run)) == len(first_run)

            # A real kill right after the drain, and a restart on the still full disk.
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            seen = len(sub.messages)
            proc = await start(cfg, log)
            await status_when(
                status_path,
                lambda s: s["pid"] == proc.pid and s["gauges"]["link"] == "connected",
                30,
            )
            await asyncio.sleep(3)  # what a restart would send again, it sends at once
            again = [m[1]["id"] for m in sub.messages[seen:]]
            resent = len(set(again) & set(first_run))
            assert resent == 0, f"{resent} records sent again after the restart"

            # Space returns: healthy again by itself.
            hog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hog
            filler.unlink()
            await status_when(
                status_path, lambda s: not s.get("problems") and s["pid"] == proc.pid, 30
            )
            sub_task.cancel()
        figures |= {
            "waiting_before_drain": waiting,
            "drain_s": round(drain_s, 2),
            "delivered": len(first_run),
            "resent_after_restart": resent,
            "free_at_end": free_bytes(disk),
        }
        print("full-disk reproduction:", json.dumps(figures))
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            await proc.wait()
        assert proc.returncode == 0, log.read_text()[-2000:]
    finally:
        if hog is not None:
            hog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hog
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
        broker.kill()
        device.close()
