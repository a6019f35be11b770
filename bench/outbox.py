"""Outbox benchmark: enqueue rate, bytes written to disk per record, memory with an empty and
with a full outbox. Prints figures; goals are checked by eye and recorded in bench/RESULTS.md.

    python bench/outbox.py [--records N] [--waiting N] [--dir DIR]

Goals: bytes written per 300-byte record under 1 KB (batched commits); resident memory with
1,000,000 waiting records within 5 MB of an empty outbox.
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
from terminal_gw.outbox import ROW_OVERHEAD, Outbox

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
    return {
        "records": n,
        "payload_bytes": payload_len,
        "rate": n / elapsed,
        "written_per_record": written / n,
        "estimate_per_record": payload_len + len("tgw/vessel-042/gnss/fix") + 36 + ROW_OVERHEAD,
    }


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
    batch = await outbox.next_batch(16)
    next_batch_ms = (time.perf_counter() - t1) * 1000
    await outbox.ack(r.seq for r in batch[:4])
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


# ---- drain ------------------------------------------------------------------------------
# Drain figures (records/s to a broker through the uplink) belong here, next to the enqueue
# figures, measured against a local mosquitto.


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000, help="records to enqueue")
    parser.add_argument("--waiting", type=int, default=1_000_000, help="records for the RSS test")
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path.cwd(),
        help="where to put the databases: a real disk, not a tmpfs (default: here)",
    )
    parser.add_argument("--probe", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(asyncio.run(_probe(args.probe))))
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
        print(f"  database file            {r['file_per_record']:>10,.0f} B/record")
        print(f"  counted against max_bytes{r['estimate_per_record']:>10,.0f} B/record")
        rate = asyncio.run(sync_puts(work / "sync.db", 300))
        print(f"enqueue, sync (FULL):      {rate:>10,.0f} records/s")

        empty = work / "empty.db"
        full = work / "full.db"
        t0 = time.perf_counter()
        asyncio.run(fill(full, args.waiting))
        print(f"filled {args.waiting:,} records in {time.perf_counter() - t0:.1f} s", end="")
        print(f" ({full.stat().st_size / 1e6:,.0f} MB)")
        asyncio.run(fill(empty, 0))
        a = probe(empty)
        b = probe(full)
        print("resident memory after open, next_batch, ack, stats, put:")
        print(f"  0 waiting                {a['rss_kib'] / 1024:>10.1f} MiB")
        print(f"  {b['depth']:,} waiting      {b['rss_kib'] / 1024:>10.1f} MiB")
        print(f"  difference               {(b['rss_kib'] - a['rss_kib']) / 1024:>10.1f} MiB")
        print(f"open (quick_check) with {b['depth']:,} waiting: {b['open_s']:.2f} s")
        print(f"next_batch(16) with {b['depth']:,} waiting: {b['next_batch_ms']:.2f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
