"""Outbox benchmark: enqueue rate, bytes written to disk per record, memory with an empty and
with a full outbox, bytes written per record on the live path. Prints figures; goals are
checked by eye and recorded in bench/RESULTS.md.

    python bench/outbox.py [--records N] [--waiting N] [--dir DIR] [--live-seconds S]
    python bench/outbox.py --live-only    # only the live-path figures
    python bench/outbox.py --enqueue-only # only enqueue and read rates (a few runs of each)

The live-path figures of the block device need a filesystem of the bench's own: `--dir` on a
loop-mounted image (truncate -s 256M img; mkfs.ext4 -q img; mount -o loop img /mnt/x).

Goals: bytes written per 300-byte record under 1 KB (batched commits); resident memory with
1,000,000 waiting records within 5 MB of an empty outbox; on the live path (a connected
uplink keeping up with 10 records/s) near 0 bytes written per record.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import structlog

from terminal_gw.config import OutboxConfig
from terminal_gw.models import Fix, Payload, new_id
from terminal_gw.outbox import Outbox

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))


class Sms(Payload):
    """Stands in for the modem stage's SMS payload (a sync class)."""

    record_class: ClassVar[str] = "sms"
    text: str


def write_bytes() -> int:
    """Bytes this process caused to be sent to storage (Linux /proc/self/io)."""
    with open("/proc/self/io", encoding="ascii") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/self/io")


def device_written(path: Path) -> int | None:
    """Bytes written to the block device that holds `path`, as the device sees them (its
    sectors written, /sys/dev/block): the filesystem's journal and metadata included, what an
    SD card would be asked to write. Everyone's writes: exact only on a filesystem of its own
    (a loop-mounted image, the SD card itself). None when the device has no statistics."""
    st = os.stat(path)
    stat = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/stat")
    try:
        return int(stat.read_text().split()[6]) * 512
    except (OSError, IndexError, ValueError):
        return None


def rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def sample_fix(i: int) -> Fix:
    """A fix whose JSON is about 300 bytes, like a full TPV from a multi-constellation receiver."""
    return Fix(
        id=new_id(),
        time="2026-03-01T10:00:00.000Z",
        mode=3,
        lat=31.2304 + i * 1e-6,
        lon=121.4737,
        altHAE=12.345,
        altMSL=4.567,
        speed=5.144,
        track=123.4,
        eph=2.5,
        epv=3.9,
        hdop=0.8,
        vdop=1.1,
        pdop=1.4,
        nSat=24,
        uSat=18,
        used={"gps": 8, "bds": 10},
    )


async def enqueue(path: Path, n: int) -> dict[str, Any]:
    """Batched puts of n fixes: rate, bytes written per record, file size per record."""
    cfg = OutboxConfig(path=path, max_bytes="4GiB", max_age_s={})
    fixes = [sample_fix(i) for i in range(min(n, 10_000))]
    payload_len = len(fixes[0].to_json())
    async with Outbox(cfg, events=lambda e: None) as outbox:
        w0 = write_bytes()
        t0 = time.perf_counter()
        for i in range(n):
            await outbox.put("tgw/vessel-042/gnss/fix", fixes[i % len(fixes)])
        await outbox.flush()
        elapsed = time.perf_counter() - t0
    # Closing checkpoints the WAL into the database: count those writes too.
    os.sync()
    written = write_bytes() - w0
    stored, counted = _stored_sizes(path)
    return {
        "records": n,
        "payload_bytes": payload_len,
        "rate": n / elapsed,
        "written_per_record": written / n,
        "stored_per_record": stored,
        "estimate_per_record": counted,
    }


def _stored_sizes(path: Path) -> tuple[float, float]:
    """Mean bytes of a stored payload, and mean bytes counted against max_bytes."""
    import sqlite3

    conn = sqlite3.connect(str(path))
    try:
        stored, counted = conn.execute(
            "SELECT AVG(LENGTH(payload)), AVG(size) FROM outbox"
        ).fetchone()
    finally:
        conn.close()
    return float(stored), float(counted)


async def read_all(path: Path, limit: int = 64) -> float:
    """Lease and ack every waiting record, `limit` at a time: records read per second."""
    cfg = OutboxConfig(path=path, max_bytes="4GiB", max_age_s={})
    async with Outbox(cfg, events=lambda e: None) as outbox:
        n = outbox.depth
        t0 = time.perf_counter()
        while batch := await outbox.lease(limit):
            await outbox.ack(batch)
        await outbox.flush()
        return n / (time.perf_counter() - t0)


def enqueue_section(work: Path, records: int, runs: int) -> None:
    """Print enqueue and read rates, `runs` times each, back to back."""
    print(f"enqueue then read {records:,} fixes, {runs} runs (records/s):")
    for i in range(runs):
        path = work / f"enqueue-{i}.db"
        r = asyncio.run(enqueue(path, records))
        file_per_record = path.stat().st_size / records
        read = asyncio.run(read_all(path))
        print(
            f"  enqueue {r['rate']:>9,.0f}   read (lease 64 + ack) {read:>9,.0f}"
            f"   written {r['written_per_record']:,.0f} B/record,"
            f" payload {r['payload_bytes']} B stored in {r['stored_per_record']:,.1f} B,"
            f" file {file_per_record:,.0f} B/record, counted {r['estimate_per_record']:,.0f}"
        )
        for old in work.glob(f"enqueue-{i}.db*"):
            old.unlink()


async def sync_puts(path: Path, n: int) -> float:
    """Sync puts (as for an SMS): each committed with synchronous=FULL before returning."""
    cfg = OutboxConfig(path=path)
    async with Outbox(cfg, events=lambda e: None) as outbox:
        t0 = time.perf_counter()
        for i in range(n):
            await outbox.put("tgw/vessel-042/sms/rx", Sms(text=f"message {i}"))
        return n / (time.perf_counter() - t0)


async def _probe(path: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    outbox = Outbox(OutboxConfig(path=path, max_bytes="4GiB", max_age_s={}), events=lambda e: None)
    await outbox.open()
    opened = time.perf_counter() - t0
    t1 = time.perf_counter()
    batch = await outbox.lease(16)
    next_batch_ms = (time.perf_counter() - t1) * 1000
    await outbox.ack(batch[:4])
    stats = await outbox.stats()
    await outbox.put("tgw/vessel-042/gnss/fix", sample_fix(0))
    await outbox.flush()
    result = {
        "depth": outbox.depth,
        "open_s": opened,
        "next_batch_ms": next_batch_ms,
        "classes": len(stats),
        "rss_kib": rss_kib(),
    }
    await outbox.close()
    return result


def probe(path: Path) -> dict[str, Any]:
    """Open the outbox in a fresh process and measure its resident memory."""
    out = subprocess.run(
        [sys.executable, __file__, "--probe", str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    return result


async def fill(path: Path, n: int) -> None:
    cfg = OutboxConfig(path=path, max_bytes="4GiB", max_age_s={}, commit_records=5000)
    fixes = [sample_fix(i) for i in range(1000)]
    async with Outbox(cfg, events=lambda e: None) as outbox:
        for i in range(n):
            await outbox.put("tgw/vessel-042/gnss/fix", fixes[i % 1000])


async def pressure(path: Path, n: int, max_bytes: int) -> dict[str, Any]:
    """One fix a second for n seconds into an outbox that holds far fewer: the slowest put
    (thinning and dropping run inside put) and what is left."""
    now = [1_760_000_000.0]
    cfg = OutboxConfig(path=path, max_bytes=max_bytes, max_age_s={}, event_interval_s=3600)
    fixes = [sample_fix(i) for i in range(1000)]
    worst = 0.0
    async with Outbox(cfg, events=lambda e: None, clock=lambda: now[0]) as outbox:
        t0 = time.perf_counter()
        for i in range(n):
            now[0] += 1.0
            t = time.perf_counter()
            await outbox.put("tgw/vessel-042/gnss/fix", fixes[i % 1000])
            worst = max(worst, time.perf_counter() - t)
        elapsed = time.perf_counter() - t0
        depth = outbox.depth
    return {"records": n, "rate": n / elapsed, "worst_ms": worst * 1000, "depth": depth}


# ---- drain ------------------------------------------------------------------------------
# Drain figures (records/s to a broker through the uplink) belong here, next to the enqueue
# figures, measured against a local mosquitto.
#
# A 24-hour backlog at 1 Hz (86,400 fixes, created a day ago) waits in the outbox; the link
# "returns" (the uplink starts) and the clock runs until every fix left the outbox (PUBACK,
# then ack); a QoS 0 subscriber (mosquitto_sub, another process) then confirms it received
# every fix. Goal: under 15 s on this machine.

DEVICE = "vessel-042"
FIX_TOPIC = f"tgw/{DEVICE}/gnss/fix"


def start_mosquitto(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A mosquitto of the bench's own on a free loopback port (never the machine's 1883)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    conf = workdir / "mosquitto.conf"
    lines = [
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        "persistence false",
        "max_queued_messages 1000000",
        f"log_dest file {workdir / 'mosquitto.log'}",
    ]
    if os.geteuid() == 0:
        lines.append("user root")  # else it drops to `mosquitto` and cannot write the log
    conf.write_text("\n".join(lines) + "\n")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
        except OSError:
            time.sleep(0.02)
        else:
            return proc, port
    proc.kill()
    raise RuntimeError("mosquitto did not start")


def count_fixes(path: Path) -> int:
    """Fixes in a mosquitto_sub output file: one per line, or a batch's count."""
    n = 0
    with path.open("rb") as f:
        for line in f:
            if line.startswith(b'{"id"') and b'"TPV_BATCH"' in line[:80]:
                n += int(json.loads(line)["count"])
            elif b'"TPV"' in line:
                n += 1
    return n


async def _fill_and_drain(config: Any, n: int, received: Path) -> tuple[float, dict[str, int]]:
    import aiomqtt

    from terminal_gw.uplink import Uplink

    start = time.time() - n  # one fix a second for the last n seconds
    created = [start]
    fixes = [sample_fix(i) for i in range(n)]
    async with Outbox(config.outbox, events=lambda e: None, clock=lambda: created[0]) as outbox:
        for i, f in enumerate(fixes):
            created[0] = start + i
            await outbox.put(FIX_TOPIC, f)
        await outbox.flush()
    async with aiomqtt.Client("127.0.0.1", config.mqtt.port, timeout=10) as probe:
        # Wait until the subscriber listens.
        while b"probe" not in await asyncio.to_thread(received.read_bytes):
            await probe.publish(f"tgw/{DEVICE}/gnss/probe", b"probe")
            await asyncio.sleep(0.05)
    async with Outbox(config.outbox, events=lambda e: None) as outbox:
        uplink = Uplink(config, outbox, events=lambda e: None)
        async with asyncio.TaskGroup() as tg:
            t0 = time.perf_counter()
            run = tg.create_task(uplink.run())
            while outbox.depth > 0:  # noqa: ASYNC110 - polls the outbox's depth
                await asyncio.sleep(0.005)
            elapsed = time.perf_counter() - t0
            await uplink.stop()
            run.cancel()
    return elapsed, uplink.counters.as_dict()


def drain(work: Path, port: int, n: int, mqtt: dict[str, Any]) -> dict[str, Any]:
    """Deliver an n-fix backlog through the uplink; time from link up to outbox empty."""
    from terminal_gw.config import load_config_data

    path = work / "drain.db"
    for old in work.glob("drain.db*"):
        old.unlink()
    config = load_config_data(
        {
            "device": {"id": DEVICE},
            "mqtt": {"host": "127.0.0.1", "port": port, **mqtt},
            "outbox": {"path": str(path), "max_bytes": "4GiB", "commit_records": 5000},
        },
        environ={},
    )
    # The subscriber is another process, as on a real link: it takes no CPU from this loop.
    received = work / "received.txt"
    with received.open("wb") as out:
        sub = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "0", "-t",
             f"tgw/{DEVICE}/gnss/#"],
            stdout=out,
        )  # fmt: skip
    try:
        elapsed, counters = asyncio.run(_fill_and_drain(config, n, received))
        deadline = time.monotonic() + 60
        while (got := count_fixes(received)) < n and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        sub.kill()
        sub.wait(5)
    return {
        "records": n,
        "received": got,
        "seconds": elapsed,
        "records_per_s": n / elapsed,
        "messages": counters["published"],
        "messages_per_s": counters["published"] / elapsed,
        "mb": counters["bytes"] / 1e6,
    }


DRAIN_CASES: list[tuple[str, dict[str, Any]]] = [
    ("single, limits lifted, inflight 16", {"rate_msgs_per_s": 1e6, "rate_bytes_per_s": "1GB"}),
    (
        "single, limits lifted, inflight 64",
        {"rate_msgs_per_s": 1e6, "rate_bytes_per_s": "1GB", "inflight": 64},
    ),
    (
        "batched (50), limits lifted",
        {"batch_backlog": True, "rate_msgs_per_s": 1e6, "rate_bytes_per_s": "1GB"},
    ),
    (
        "batched (50), 200 msg/s, 4 MiB/s",
        {"batch_backlog": True, "rate_bytes_per_s": "4MiB"},
    ),
    ("batched (50), default limits (200 msg/s, 1 MiB/s)", {"batch_backlog": True}),
]


# --- live path: bytes written while a connected uplink keeps up ---------------------------
# The daemon's set-up (the outbox's timer with the default batching; the uplink connected to
# a local mosquitto) and 10 fixes a second: bytes this process wrote to storage (/proc/self/io,
# after os.sync so that the WAL's writeback is counted) per record, first the commits (to the
# WAL), then the checkpoint that copies those pages into the database (forced at the end; on
# a device it comes every 1,000 pages), and apart from them what closing the outbox writes.
# For comparison the same stream with the link down: records wait, and are committed.


async def _live(config: Any, seconds: float, rate: float, *, link: bool) -> dict[str, Any]:
    from terminal_gw.uplink import LinkState, Uplink

    n = int(seconds * rate)
    fixes = [sample_fix(i) for i in range(n)]
    async with Outbox(config.outbox, events=lambda e: None) as outbox:
        uplink = Uplink(config, outbox, events=lambda e: None)
        async with asyncio.TaskGroup() as tg:
            duties = tg.create_task(outbox.run(), name="outbox")
            run = tg.create_task(uplink.run(), name="uplink") if link else None
            async with asyncio.timeout(10):
                while link and uplink.state is not LinkState.CONNECTED:  # noqa: ASYNC110 - polls the link state
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(os.sync)
            w0 = write_bytes()
            d0 = device_written(config.outbox.path)
            next_at = time.monotonic()
            for f in fixes:
                await outbox.put(FIX_TOPIC, f)
                next_at += 1.0 / rate
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            # With the link up, the last records' acks; then what is still waiting is
            # committed (as the commit timer would), so every record is counted.
            async with asyncio.timeout(10):
                while link and outbox.depth > 0:  # noqa: ASYNC110 - polls the outbox's depth
                    await asyncio.sleep(0.01)
            await outbox.flush()
            await asyncio.to_thread(os.sync)
            w1 = write_bytes()
            # The checkpoint copies the WAL's pages into the database: the SD card sees those
            # writes too, in proportion to the records (they only come later).
            await asyncio.to_thread(_checkpoint, config.outbox.path)
            await asyncio.to_thread(os.sync)
            w2 = write_bytes()
            d2 = device_written(config.outbox.path)
            if run is not None:
                await uplink.stop()
                run.cancel()
            duties.cancel()
        unwritten = outbox.delivered_unwritten
        commits = outbox.commits
    os.sync()
    return {
        "records": n,
        "delivered": uplink.counters.records,
        "unwritten": unwritten,
        "commits": commits,
        "written_per_record": (w1 - w0) / n,
        "checkpoint_per_record": (w2 - w1) / n,
        "device_per_record": None if d0 is None or d2 is None else (d2 - d0) / n,
        "close": write_bytes() - w2,  # once per run, not per record
    }


def _checkpoint(path: Path) -> None:
    import sqlite3

    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()


def live_section(work: Path, seconds: float, rate: float = 10.0) -> None:
    """Print bytes written per record with the link up (live path) and down (batched)."""
    from terminal_gw.config import load_config_data

    proc, port = start_mosquitto(work)
    try:
        batching = OutboxConfig()
        print(
            f"live path: {rate:g} fixes/s for {seconds:g} s, default batching (a commit every"
            f" {batching.commit_interval_s:g} s or {batching.commit_bytes:,} B),"
        )
        print(f"  loopback mosquitto on port {port}; bytes written per record (/proc/self/io):")
        print("  commits (WAL), then the checkpoint (WAL pages into the database)")
        for link in (True, False):
            path = work / f"live-{link}.db"
            config = load_config_data(
                {
                    "device": {"id": DEVICE},
                    "mqtt": {"host": "127.0.0.1", "port": port},
                    "outbox": {"path": str(path)},
                },
                environ={},
            )
            asyncio.run(fill(path, 0))  # the schema's own writes are not the records'
            r = asyncio.run(_live(config, seconds, rate, link=link))
            name = "link up, uplink keeping up" if link else "link down, records wait"
            total = r["written_per_record"] + r["checkpoint_per_record"]
            print(
                f"  {name:<28} {r['written_per_record']:>8,.1f} + {r['checkpoint_per_record']:,.1f}"
                f" = {total:,.1f} B/record ({r['commits']} commits), then {r['close']:,} B at"
                f" close; {r['delivered']} delivered, {r['unwritten']} of them never written"
            )
            if r["device_per_record"] is not None:
                print(
                    f"  {'':<28} the block device: {r['device_per_record']:,.1f} B/record"
                    " (journal and metadata too; every writer's on a shared disk)"
                )
    finally:
        proc.kill()
        proc.wait(5)


def drain_section(work: Path, n: int) -> None:
    """Print the drain figures for each case against a fresh local mosquitto."""
    proc, port = start_mosquitto(work)
    try:
        print(f"drain: {n:,} backlog fixes of {len(sample_fix(0).to_json())} B JSON, QoS 1,")
        print(f"  loopback mosquitto on port {port}; link up -> all delivered and acked")
        for name, mqtt in DRAIN_CASES:
            r = drain(work, port, n, mqtt)
            print(
                f"  {name:<50} {r['seconds']:>6.1f} s {r['records_per_s']:>9,.0f} fixes/s"
                f" {r['messages_per_s']:>7,.0f} msg/s {r['mb']:>6.1f} MB"
                f"  received {r['received']:,}"
            )
    finally:
        proc.kill()
        proc.wait(5)


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000, help="records to enqueue")
    parser.add_argument("--waiting", type=int, default=1_000_000, help="records for the RSS test")
    parser.add_argument(
        "--pressure", type=int, default=500_000, help="records for the pressure test"
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path.cwd(),
        help="where to put the databases: a real disk, not a tmpfs (default: here)",
    )
    parser.add_argument("--probe", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--drain-only", action="store_true", help="only the drain figures")
    parser.add_argument(
        "--backlog", type=int, default=86_400, help="fixes in the drain backlog (24 h at 1 Hz)"
    )
    parser.add_argument("--live-only", action="store_true", help="only the live-path figures")
    parser.add_argument(
        "--enqueue-only", action="store_true", help="only the enqueue and read rates"
    )
    parser.add_argument("--runs", type=int, default=5, help="runs of --enqueue-only")
    parser.add_argument(
        "--live-seconds", type=float, default=60.0, help="length of each live-path run"
    )
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(asyncio.run(_probe(args.probe))))
        return
    if args.live_only:
        work = Path(tempfile.mkdtemp(prefix="tgw-bench-", dir=args.dir))
        try:
            live_section(work, args.live_seconds)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    if args.enqueue_only:
        work = Path(tempfile.mkdtemp(prefix="tgw-bench-", dir=args.dir))
        try:
            enqueue_section(work, args.records, args.runs)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    if args.drain_only:
        work = Path(tempfile.mkdtemp(prefix="tgw-bench-", dir=args.dir))
        try:
            drain_section(work, args.backlog)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return

    work = Path(tempfile.mkdtemp(prefix="tgw-bench-", dir=args.dir))
    try:
        print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus,")
        print(f"  {platform.platform()}, Python {platform.python_version()}, SQLite", end=" ")
        import sqlite3

        print(sqlite3.sqlite_version)
        print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        r = asyncio.run(enqueue(work / "enqueue.db", args.records))
        r["file_per_record"] = (work / "enqueue.db").stat().st_size / r["records"]
        print(f"enqueue, batched: {r['records']} fixes of {r['payload_bytes']} B JSON")
        print(f"  rate                     {r['rate']:>10,.0f} records/s")
        print(f"  written to disk          {r['written_per_record']:>10,.0f} B/record")
        print(f"  payload as stored        {r['stored_per_record']:>10,.1f} B/record")
        print(f"  database file            {r['file_per_record']:>10,.0f} B/record")
        print(f"  counted against max_bytes{r['estimate_per_record']:>10,.0f} B/record")
        read = asyncio.run(read_all(work / "enqueue.db"))
        print(f"read, lease(64) + ack:     {read:>10,.0f} records/s")
        rate = asyncio.run(sync_puts(work / "sync.db", 300))
        print(f"enqueue, sync (FULL):      {rate:>10,.0f} records/s")

        p = asyncio.run(pressure(work / "pressure.db", args.pressure, 32 * 1024 * 1024))
        print(f"under pressure: {p['records']:,} fixes (1/s) into 32 MiB, {p['depth']:,} kept")
        print(f"  rate                     {p['rate']:>10,.0f} records/s")
        print(f"  slowest put              {p['worst_ms']:>10,.1f} ms")

        empty = work / "empty.db"
        full = work / "full.db"
        t0 = time.perf_counter()
        asyncio.run(fill(full, args.waiting))
        print(f"filled {args.waiting:,} records in {time.perf_counter() - t0:.1f} s", end="")
        print(f" ({full.stat().st_size / 1e6:,.0f} MB)")
        asyncio.run(fill(empty, 0))
        a = probe(empty)
        b = probe(full)
        print("resident memory after open, lease, ack, stats, put:")
        print(f"  0 waiting                {a['rss_kib'] / 1024:>10.1f} MiB")
        print(f"  {b['depth']:,} waiting      {b['rss_kib'] / 1024:>10.1f} MiB")
        print(f"  difference               {(b['rss_kib'] - a['rss_kib']) / 1024:>10.1f} MiB")
        print(f"open (quick_check) with {b['depth']:,} waiting: {b['open_s']:.2f} s")
        print(f"lease(16) with {b['depth']:,} waiting: {b['next_batch_ms']:.2f} ms")
        live_section(work, args.live_seconds)
        drain_section(work, args.backlog)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
