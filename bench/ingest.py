"""Fleet-side ingest: rows per second into PostgreSQL with 1 and 2 processes, and the
end-to-end lag at a steady rate from many devices.

    python bench/ingest.py [--messages 100000] [--devices 100] [--rate 1000] [--seconds 20]

Throughput: sessions are made first, then `--messages` fixes from `--devices` devices are
published into the broker's queue, then 1 (or 2) `terminal-gw ingest --once` processes drain
it; rows/s is counted in the database, from the first row to the last. CPU seconds of the
ingest processes, the PostgreSQL backends and mosquitto over the drain say where the time
goes. Lag: one ingest process, a publisher at `--rate` fixes/s stamped with the system clock;
the lag is commit time minus fix time, from ingest's own status line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import paho.mqtt.client as paho  # noqa: E402 - after the path set-up
import psycopg  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from terminal_gw.models import Fix, iso_utc, new_id  # noqa: E402
from tests.broker import Broker  # noqa: E402
from tests.ingest_support import write_config  # noqa: E402
from tests.pg import Postgres  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return platform.processor()
    for line in out.splitlines():
        if line.startswith("Model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK
    return total


def pids_named(name: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() == name:
                    found.append(int(d.name))
            except OSError:
                continue
    return found


def payload(device: int, i: int, t: float) -> bytes:
    fix = Fix(
        id=new_id(int(t * 1000)),
        time=iso_utc(t),
        mode=3,
        status=1,
        lat=30.0 + device * 0.01 + i * 1e-6,
        lon=120.0 + device * 0.01 - i * 1e-6,
        altHAE=12.5,
        altMSL=8.1,
        geoidSep=4.4,
        speed=5.2,
        track=87.0,
        hdop=0.9,
        vdop=1.2,
        pdop=1.5,
        nSat=18,
        uSat=12,
        used={"gps": 5, "bds": 7},
    )
    return fix.to_json().encode()


class Pub:
    """A QoS 1 publisher with a wide window."""

    def __init__(self, broker: Broker) -> None:
        self.c = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"bench-pub-{os.getpid()}",
            protocol=paho.MQTTv5,
        )
        self.c.max_inflight_messages_set(1000)
        self.c.max_queued_messages_set(0)
        self.c.connect(broker.host, broker.port, 60)
        self.c.loop_start()

    def close(self, infos: list[paho.MQTTMessageInfo]) -> None:
        for info in infos:
            info.wait_for_publish(60)
        self.c.disconnect()
        self.c.loop_stop()


def ingest_cmd(config: Path, client_id: str, once: bool) -> list[str]:
    cmd = [sys.executable, "-m", "terminal_gw", "ingest", "--config", str(config)]
    return [*cmd, "--client-id", client_id, *(["--once"] if once else [])]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def rows(pg: Postgres) -> int:
    with psycopg.connect(pg.dsn) as conn:
        row = conn.execute("SELECT count(*) FROM fixes").fetchone()
        return int(row[0]) if row else 0


def throughput(
    tmp: Path, pg: Postgres, broker: Broker, *, procs: int, n: int, devices: int
) -> dict[str, float]:
    pg.reset()
    config = write_config(
        tmp / f"ingest-{procs}.toml",
        broker,
        pg,
        group=f"bench-{procs}",  # a group of its own: the earlier run's sessions keep theirs
        batch_max_rows=2000,
        batch_max_age_ms=200,
        once_idle_ms=3000,
        status_interval_s=3600.0,
    )
    subprocess.run(
        [*ingest_cmd(config, "x", False)[:6], "--migrate"], env=env(), check=True, cwd=REPO
    )
    ids = [f"bench-{procs}-{k}" for k in range(procs)]
    for cid in ids:  # make the sessions and their shared subscription
        subprocess.run(ingest_cmd(config, cid, True), env=env(), check=True, cwd=REPO)
    t0 = time.time() - n
    pub = Pub(broker)
    infos = [
        pub.c.publish(f"tgw/dev-{i % devices:03d}/gnss/fix", payload(i % devices, i, t0 + i), 1)
        for i in range(n)
    ]
    pub.close(infos)
    # PostgreSQL backends come and go with the connections: each one's CPU is read at every
    # poll, the last reading counts.
    pg_cpu: dict[int, float] = {pid: cpu_seconds([pid]) for pid in pids_named("postgres")}
    pg_cpu0 = dict(pg_cpu)
    broker_pids = [broker.proc.pid] if broker.proc else []
    broker_cpu0 = cpu_seconds(broker_pids)
    children0 = os.times()
    started = time.monotonic()
    running = [
        subprocess.Popen(
            ingest_cmd(config, cid, True),
            env=env(),
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        for cid in ids
    ]
    first = last = None
    while True:
        count = rows(pg)
        for pid in pids_named("postgres"):
            pg_cpu[pid] = cpu_seconds([pid])
        now = time.monotonic()
        if count > 0 and first is None:
            first = now
        if count >= n:
            last = now
            break
        if all(p.poll() is not None for p in running) and rows(pg) < n:
            raise SystemExit(f"ingest exited with {rows(pg)} of {n} rows")
        time.sleep(0.05)
    outs = [p.communicate(timeout=120)[1] for p in running]
    children1 = os.times()
    assert first is not None
    assert last is not None
    ingest_cpu = (children1.children_user - children0.children_user) + (
        children1.children_system - children0.children_system
    )
    span = max(last - first, 1e-3)
    per_proc = []
    for out in outs:
        final = [json.loads(line) for line in out.splitlines() if '"ingest_stopped"' in line]
        per_proc.append(final[-1]["totals"]["rows"] if final else 0)
    return {
        "processes": procs,
        "rows": n,
        "seconds": round(span, 2),
        "rows_per_s": round(n / span),
        "wall_s_incl_start": round(last - started, 2),
        "ingest_cpu_s": round(ingest_cpu, 2),
        "postgres_cpu_s": round(sum(pg_cpu.values()) - sum(pg_cpu0.values()), 2),
        "broker_cpu_s": round(cpu_seconds(broker_pids) - broker_cpu0, 2),
        "rows_by_process": per_proc,  # type: ignore[dict-item]
    }


def lag(
    tmp: Path, pg: Postgres, broker: Broker, *, rate: float, seconds: float, devices: int
) -> dict[str, object]:
    pg.reset()
    config = write_config(
        tmp / "ingest-lag.toml",
        broker,
        pg,
        batch_max_rows=2000,
        batch_max_age_ms=200,
        status_interval_s=3600.0,
    )
    subprocess.run(
        [*ingest_cmd(config, "x", False)[:6], "--migrate"], env=env(), check=True, cwd=REPO
    )
    proc = subprocess.Popen(
        ingest_cmd(config, "bench-lag", False),
        env=env(),
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    while not any("ingest_subscribed" in line for line in list(lines)):
        time.sleep(0.05)
    pub = Pub(broker)
    n = int(rate * seconds)
    start = time.monotonic()
    infos = []
    behind = 0.0
    for i in range(n):
        due = start + i / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        else:
            behind = max(behind, now - due)
        infos.append(
            pub.c.publish(
                f"tgw/dev-{i % devices:03d}/gnss/fix", payload(i % devices, i, time.time()), 1
            )
        )
    pub.close(infos)
    while rows(pg) < n:
        time.sleep(0.05)
    proc.terminate()
    proc.wait(30)
    reader.join(10)
    final = [json.loads(line) for line in lines if '"ingest_stopped"' in line][-1]
    return {
        "rate": rate,
        "devices": devices,
        "seconds": seconds,
        "fixes": n,
        "publisher_max_behind_s": round(behind, 3),
        "lag_p50_s": final["lag_p50_s"],
        "lag_max_s": final["lag_max_s"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tgw-bench-ingest-"))
    (tmp / "broker").mkdir()
    broker = Broker(
        tmp / "broker",
        extra_conf=["max_queued_messages 0", "max_inflight_messages 0", "memory_limit 0"],
    )
    broker.start()
    pg = Postgres()
    pg.init()
    pg.start()
    pg.create_database()
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    try:
        for procs in args.processes:
            result = throughput(tmp, pg, broker, procs=procs, n=args.messages, devices=args.devices)
            print(json.dumps(result))
            busy = {
                "ingest": result["ingest_cpu_s"],
                "postgres": result["postgres_cpu_s"],
                "mosquitto": result["broker_cpu_s"],
            }
            share = {k: round(v / result["seconds"], 2) for k, v in busy.items()}
            print(f"  cores busy during the drain: {share} (of {os.cpu_count()})")
        print(
            json.dumps(
                lag(tmp, pg, broker, rate=args.rate, seconds=args.seconds, devices=args.devices)
            )
        )
    finally:
        broker.kill()
        pg.destroy()


if __name__ == "__main__":
    main()
