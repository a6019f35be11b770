"""Fleet-side ingest: rows per second into PostgreSQL with 1 and 2 processes, and the
end-to-end lag at a steady rate from many devices.

    python bench/ingest.py [--messages 100000] [--devices 100] [--rate 1000] [--seconds 20]
                           [--kinds fix wire600 wire60 json50] [--processes 1 2]
                           [--db-connections 1 2] [--no-lag]

Kinds of load (each run with 1 and 2 processes, printed side by side at the end):
  fix      one JSON TPV per message on {prefix}/{device}/gnss/fix (a live daemon);
  wireN    compact batches of N fixes (zstd) on {prefix}/{device}/gnss/batch, ids derived
           from device and time (wire.fix_id), as devices on metered links send them;
  jsonN    JSON TPV_BATCH payloads of N fixes on {prefix}/{device}/gnss/fix/batch, as the
           daemon's backlog drain sends them (mqtt.batch_backlog).

Throughput: sessions are made first, then `--messages` fixes from `--devices` devices are
published into the broker's queue, then 1 (or 2) `terminal-gw ingest --once` processes drain
it; rows/s is counted in the database, from the first row to the last (on one connection
kept open, its backend left out of PostgreSQL's CPU). CPU seconds of the ingest processes,
the PostgreSQL backends and mosquitto over the drain say where the time goes.
`--db-connections 1 2` runs each load with ingest's `db_connections` at 1 and at 2 (one
batch at a time, or the next copied while one commits). Lag: one ingest process, a
publisher at `--rate` fixes/s stamped with the system clock; the lag is commit time minus
fix time, from ingest's own status line.
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

from terminal_gw import wire  # noqa: E402
from terminal_gw.models import Fix, FixBatch, iso_utc, new_id  # noqa: E402
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


def make_fix(device: int, i: int, t: float, ident: str | None = None) -> Fix:
    return Fix(
        id=ident or new_id(int(t * 1000)),
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


def payload(device: int, i: int, t: float) -> bytes:
    return make_fix(device, i, t).to_json().encode()


def messages(kind: str, n: int, devices: int, t0: float) -> list[tuple[str, bytes]]:
    """(topic, payload) of `n` fixes from `devices` devices, one second apart per device."""
    if kind == "fix":
        return [
            (f"tgw/dev-{i % devices:03d}/gnss/fix", payload(i % devices, i, t0 + i))
            for i in range(n)
        ]
    size = int(kind.removeprefix("wire").removeprefix("json"))
    per_device = -(-n // devices)
    out: list[tuple[str, bytes]] = []
    left = n
    for start in range(0, per_device, size):
        for d in range(devices):
            name = f"dev-{d:03d}"
            count = min(size, per_device - start, left)
            if count <= 0:
                break
            left -= count
            fixes = []
            for k in range(start, start + count):
                t_ms = int((t0 + k) * 1000)
                fixes.append(make_fix(d, k, t_ms / 1000, wire.fix_id(name, t_ms)))
            if kind.startswith("wire"):
                dicts = [json.loads(f.to_json()) for f in fixes]
                body = wire.encode_batch(dicts, name, compress=True)
                out.append((f"tgw/{name}/{wire.TOPIC_SUFFIX}", body))
            else:
                batch = FixBatch(count=count, fixes=fixes)
                out.append((f"tgw/{name}/gnss/fix/batch", batch.to_json().encode()))
    assert left == 0
    return out


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


class Counter:
    """Counts the fixes stored, on one connection kept open (a connection a poll would fork
    a backend each time); its backend's pid, left out of PostgreSQL's CPU."""

    def __init__(self, pg: Postgres) -> None:
        self.conn = psycopg.connect(pg.dsn, autocommit=True)
        row = self.conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        self.pid = int(row[0])

    def rows(self) -> int:
        row = self.conn.execute("SELECT count(*) FROM fixes").fetchone()
        return int(row[0]) if row else 0

    def states(self) -> dict[str, int]:
        """The other client backends by what they do now: `active` (working), `lock`
        (waiting for another transaction's row), `client` (in a transaction, waiting for
        the client's next command or COPY data), `idle` (between transactions)."""
        out = {"active": 0, "lock": 0, "client": 0, "idle": 0}
        for state, wait in self.conn.execute(
            "SELECT state, wait_event_type FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchall():
            if wait == "Lock":
                out["lock"] += 1
            elif state == "active":
                out["active"] += 1
            elif state and state.startswith("idle in transaction"):
                out["client"] += 1
            else:
                out["idle"] += 1
        return out

    def close(self) -> None:
        self.conn.close()


def throughput(
    tmp: Path,
    pg: Postgres,
    broker: Broker,
    *,
    kind: str,
    procs: int,
    n: int,
    devices: int,
    db_connections: int | None = None,
) -> dict[str, object]:
    pg.reset()
    extra = {} if db_connections is None else {"db_connections": db_connections}
    tag = f"{kind}-{procs}-{db_connections or 'd'}"
    config = write_config(
        tmp / f"ingest-{tag}.toml",
        broker,
        pg,
        group=f"bench-{tag}",  # a group of its own: the earlier run's sessions keep theirs
        batch_max_rows=2000,
        batch_max_age_ms=200,
        once_idle_ms=3000,
        status_interval_s=3600.0,
        **extra,
    )
    subprocess.run(
        [*ingest_cmd(config, "x", False)[:6], "--migrate"], env=env(), check=True, cwd=REPO
    )
    ids = [f"bench-{tag}-{k}" for k in range(procs)]
    for cid in ids:  # make the sessions and their shared subscription
        subprocess.run(ingest_cmd(config, cid, True), env=env(), check=True, cwd=REPO)
    load = messages(kind, n, devices, float(int(time.time()) - n))
    pub = Pub(broker)
    infos = [pub.c.publish(topic, body, 1) for topic, body in load]
    pub.close(infos)
    # PostgreSQL backends come and go with the connections: each one's CPU is read at every
    # poll, the last reading counts.
    counter = Counter(pg)
    pg_cpu: dict[int, float] = {
        pid: cpu_seconds([pid]) for pid in pids_named("postgres") if pid != counter.pid
    }
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
    # Ingest CPU from the first row to the last, read from /proc: the interpreter's start
    # and imports (about a second of CPU) are left out, as they are of the rows/s.
    ingest_pids = [p.pid for p in running]
    ingest_first = ingest_last = 0.0
    samples: list[dict[str, int]] = []
    while True:
        count = counter.rows()
        if first is not None:
            samples.append(counter.states())
        for pid in pids_named("postgres"):
            if pid != counter.pid:
                pg_cpu[pid] = cpu_seconds([pid])
        now = time.monotonic()
        if first is None:
            ingest_first = cpu_seconds(ingest_pids)
            if count > 0:
                first = now
        if count >= n:
            last = now
            ingest_last = cpu_seconds(ingest_pids)
            break
        if all(p.poll() is not None for p in running) and counter.rows() < n:
            for p in running:
                sys.stderr.write("".join((p.communicate()[1] or "").splitlines(True)[-8:]))
            raise SystemExit(f"ingest exited with {counter.rows()} of {n} rows")
        time.sleep(0.05)
    counter.close()
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
    ingest_s = round(ingest_last - ingest_first, 2)
    pg_s = round(sum(pg_cpu.values()) - sum(pg_cpu0.values()), 2)
    return {
        "kind": kind,
        "processes": procs,
        "db_connections": db_connections or "default",
        "messages": len(load),
        "bytes": sum(len(body) for _, body in load),
        "rows": n,
        "seconds": round(span, 2),
        "rows_per_s": round(n / span),
        "wall_s_incl_start": round(last - started, 2),
        "rows_per_s_per_process": round(n / span / procs),
        "ingest_cpu_s": ingest_s,
        "ingest_cpu_s_incl_start": round(ingest_cpu, 2),
        "ingest_us_per_row": round(ingest_s / n * 1e6, 1),
        "postgres_cpu_s": pg_s,
        "postgres_us_per_row": round(pg_s / n * 1e6, 1),
        "broker_cpu_s": round(cpu_seconds(broker_pids) - broker_cpu0, 2),
        "rows_by_process": per_proc,  # type: ignore[dict-item]
        # Ingest's backends, on average over the drain, by what they were doing.
        "db_backends": {  # type: ignore[dict-item]
            k: round(sum(x[k] for x in samples) / max(len(samples), 1), 2)
            for k in ("active", "lock", "client", "idle")
        },
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
    ap.add_argument("--kinds", nargs="+", default=["fix", "wire600", "wire60", "json50"])
    ap.add_argument("--no-lag", action="store_true", help="skip the lag run")
    ap.add_argument(
        "--db-connections",
        type=int,
        nargs="+",
        default=[None],
        help="ingest's db_connections, each a run of its own (default: the config's default)",
    )
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
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results: list[dict[str, object]] = []
    try:
        runs = [
            (kind, procs, conns)
            for kind in args.kinds
            for procs in args.processes
            for conns in args.db_connections
        ]
        for kind, procs, conns in runs:
            result = throughput(
                tmp,
                pg,
                broker,
                kind=kind,
                procs=procs,
                n=args.messages,
                devices=args.devices,
                db_connections=conns,
            )
            results.append(result)
            print(json.dumps(result), flush=True)
            seconds = float(result["seconds"])  # type: ignore[arg-type]
            busy = {
                "ingest": result["ingest_cpu_s"],
                "postgres": result["postgres_cpu_s"],
                "mosquitto": result["broker_cpu_s"],
            }
            share = {k: round(float(v) / seconds, 2) for k, v in busy.items()}  # type: ignore[arg-type]
            print(f"  cores busy during the drain: {share} (of {os.cpu_count()})", flush=True)
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print()
        print(
            "| load | procs | db conns | msgs | fixes/s | per proc | ingest us/row"
            " | postgres us/row |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in results:
            print(
                f"| {r['kind']} | {r['processes']} | {r['db_connections']} | {r['messages']:,} "
                f"| {r['rows_per_s']:,} "
                f"| {r['rows_per_s_per_process']:,} | {r['ingest_us_per_row']} "
                f"| {r['postgres_us_per_row']} |"
            )
        if not args.no_lag:
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
