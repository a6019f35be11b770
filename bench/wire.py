"""Bytes per position: JSON, JSON batched, the compact batch format, with zstd, with a dictionary;
and track reports for short messages and SMS.

    python bench/wire.py [--hours 24] [--batch 60 --batch 600] [--cache DIR] [--drain]

(a) every fix of ../shared/corpus/gnss*/*.log replayed through the pipeline of `replay`;
(b) the simulator's vessel at 1 Hz for --hours (its NMEA through the same pipeline).

For each: the fix payload as the daemon publishes it (`gnss/fix` JSON), the TPV_BATCH JSON of
`mqtt.batch_backlog`, and the compact format without and with zstd, and with a zstd dictionary
trained on other batches (the corpus's batches for the vessel and the other way round). The
compact format twice: with the fixes' ids as the daemon makes them today (random UUIDv7: 10
bytes of each cannot be compressed) and with derived ids (`terminal_gw.wire.fix_id`: none
carried). Bytes are payload bytes, before MQTT and TCP/IP.

Then the vessel's track over 1 h, 6 h and the whole run, cut into consecutive track reports of
at most 78 bytes (a BeiDou short message) and 140 (an SMS) within 10 m: reports needed, their
bytes, and the distance of every fix from the position the reports give for its time.

With --drain instead: bytes on the wire per position while the uplink drains a backlog through
a real mosquitto, compact and JSON link profiles side by side (bench/wire_drain.py): the 24 h
vessel track, and two minutes at 10 Hz with one sky a second, two events and a stored status,
where a connection's whole cost (CONNECT with its will, birth status, ...) counts.
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from terminal_gw.clock import parse_iso_utc  # noqa: E402 - after the path set-up
from terminal_gw.wire import codec, encode_batch, fix_id  # noqa: E402
from terminal_gw.wire.track import (  # noqa: E402
    BDS_SHORT_MESSAGE_BYTES,
    SMS_BYTES,
    Point,
    split_reports,
    track_errors,
)

CORPUS = REPO.parent / "shared" / "corpus"
DEVICE = "vessel-042"


def corpus_fixes() -> list[dict[str, Any]]:
    """Every fix `replay --jsonl` prints for the corpus GNSS captures."""
    from terminal_gw.gnss.pipeline import GnssPipeline
    from terminal_gw.replay import Replayer
    from terminal_gw.transport.capture import CaptureReader

    out: list[dict[str, Any]] = []
    for log in sorted(CORPUS.glob("gnss*/*.log")):
        buf = io.StringIO()
        Replayer(GnssPipeline, out=buf, jsonl=True, speed=None).replay([CaptureReader(log)])
        for line in buf.getvalue().splitlines():
            payload = json.loads(line)["payload"]
            if payload["class"] == "TPV":
                out.append(payload)
    return out


def vessel_fixes(hours: float) -> list[dict[str, Any]]:
    """The simulator's vessel at 1 Hz, through the GNSS pipeline."""
    from terminal_gw.gnss.pipeline import GnssPipeline
    from terminal_gw.sim.gnss import Sky, Track, epoch

    track, sky = Track(), Sky(1)
    start = datetime(2026, 5, 1, tzinfo=UTC)
    v = track.start(start)
    pipeline = GnssPipeline()
    t0 = start.timestamp()
    out: list[dict[str, Any]] = []
    for i in range(int(hours * 3600)):
        records = pipeline.feed(b"".join(epoch(v, sky.at(float(i)))), t0 + i)
        out += [r.to_json_dict() for r in records if r.record_class == "fix"]
        v = track.step(v, 1.0, float(i))
    out += [r.to_json_dict() for r in pipeline.flush(t0 + i + 1) if r.record_class == "fix"]
    return out


def derived(fixes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same fixes with derived ids."""
    return [
        {**f, "id": fix_id(DEVICE, round(parse_iso_utc(f["time"]) * 1000))} if "time" in f else f
        for f in fixes
    ]


def chunks(fixes: list[dict[str, Any]], n: int) -> list[list[dict[str, Any]]]:
    return [fixes[i : i + n] for i in range(0, len(fixes), n)]


def json_batch(part: list[dict[str, Any]]) -> int:
    """Bytes of the TPV_BATCH payload the uplink makes (uplink.batch_payload's layout)."""
    head = f'{{"id":"{"0" * 8}-0000-7000-8000-{"0" * 12}","v":1,"class":"TPV_BATCH",'
    head += f'"count":{len(part)},"fixes":['
    body = ",".join(json.dumps(f, separators=(",", ":"), ensure_ascii=False) for f in part)
    return len(head) + len(body) + 2


def train(fixes: list[dict[str, Any]], batch: int) -> bytes:
    """A zstd dictionary trained on the uncompressed bodies of these fixes' batches."""
    import zstandard

    samples = [codec._body(part, DEVICE) for part in chunks(fixes, batch)]
    while len(samples) < 64:  # the trainer wants many samples: add halves
        samples += [s[: len(s) // 2] for s in samples]
    size = max(256, min(16_384, sum(map(len, samples)) // 20))
    return zstandard.train_dictionary(size, samples).as_bytes()


def sizes(fixes: list[dict[str, Any]], batch: int, dictionary: bytes | None) -> dict[str, float]:
    """Bytes per position of each encoding at this batch size."""
    n = len(fixes)
    single = sum(len(json.dumps(f, separators=(",", ":"), ensure_ascii=False)) for f in fixes)
    out = {"JSON (one fix a message)": single / n}
    parts = chunks(fixes, batch)
    out["JSON batched (TPV_BATCH)"] = sum(json_batch(p) for p in parts) / n
    for label, fx in (("ids as today", fixes), ("derived ids", derived(fixes))):
        ps = chunks(fx, batch)
        out[f"compact, {label}"] = sum(len(encode_batch(p, DEVICE, compress=False)) for p in ps) / n
        out[f"compact + zstd, {label}"] = sum(len(encode_batch(p, DEVICE)) for p in ps) / n
        if dictionary is not None:
            d = (1, dictionary)
            total = sum(len(encode_batch(p, DEVICE, dictionary=d)) for p in ps)
            out[f"compact + zstd + dict, {label}"] = total / n
    return out


def table(title: str, columns: dict[str, dict[str, float]]) -> list[str]:
    names = list(next(iter(columns.values())))
    heads = list(columns)
    lines = [f"### {title}", "", "| bytes per position | " + " | ".join(heads) + " |"]
    lines.append("|---|" + "---:|" * len(heads))
    for name in names:
        cells = " | ".join(f"{columns[h][name]:.2f}" for h in heads)
        lines.append(f"| {name} | {cells} |")
    return [*lines, ""]


def reports(fixes: list[dict[str, Any]], hours: float) -> list[str]:
    """Track reports over 1 h, 6 h and the whole run, for both channels."""
    points = [
        Point(parse_iso_utc(f["time"]), f["lat"], f["lon"])
        for f in fixes
        if f.get("mode", 0) >= 2 and "lat" in f and "lon" in f
    ]
    lines = [
        "### Track reports (vessel, 1 Hz, within 10 m)",
        "",
        (
            "| period | channel | reports | bytes | bytes a report | span a report (median) "
            "| error max | error p95 | seconds |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    periods = [h for h in (1.0, 6.0, 24.0) if h <= hours] or [hours]
    for period in periods:
        part = points[: int(period * 3600)]
        for channel, limit in (("short message", BDS_SHORT_MESSAGE_BYTES), ("SMS", SMS_BYTES)):
            t = time.perf_counter()
            reps = split_reports(part, max_error_m=10.0, max_bytes=limit)
            seconds = time.perf_counter() - t
            errors: list[float] = []
            start = 0
            for r in reps:
                covered = part[start : start + r.fixes]
                errors += track_errors(covered, r.points)
                start += r.fixes
            errors.sort()
            total = sum(len(r.data) for r in reps)
            span = statistics.median(r.points[-1].t - r.points[0].t for r in reps)
            p95 = errors[int(0.95 * (len(errors) - 1))]
            lines.append(
                f"| {period:g} h | {channel} ({limit} B) | {len(reps)} | {total} | "
                f"{total / len(reps):.1f} | {span / 60:.0f} min | {errors[-1]:.1f} m | "
                f"{p95:.1f} m | {seconds:.1f} |"
            )
    return [*lines, ""]


def _health() -> dict[str, Any]:
    """A health board of the daemon's shape and size (about 1.8 KB of JSON)."""
    stages = ("gnss", "modem", "outbox", "events", "uplink", "status", "commands", "rdss")
    return {
        "healthy": True,
        "problems": {},
        "uptime_s": 86400.0,
        "stages": {
            s: {"state": "running", "restarts": 0, "last_error": None, "idle_s": 0.4}
            for s in stages
        },
        "counters": {
            "sentences": {"GGA": 86400, "RMC": 86400, "GSA": 172800, "GSV": 345600},
            "records_in": {"fix": 86400, "sky": 86400, "event": 12},
            "uplink": {"connects": 3, "reconnects": 2, "published": 1440, "records": 86400},
            "commands": {"received": 2, "done": 2},
        },
        "gauges": {
            "link_profile": {"profile": "tiantong", "interface": "wwan0", "encoding": "compact"},
            "outbox_depth": 86400,
            "outbox_oldest_age_s": 86400.0,
            "outbox_error": None,
            "outbox_limit_bytes": 268435456,
            "outbox_disk_free_bytes": 10737418240,
            "link": "connected",
            "link_reason": "connected to broker.example.net:8883",
            "last_fix_age_s": 0.3,
            "last_fix_mode": 3,
            "clock_offset_s": 0.004,
            "gnss_port": "open: /dev/ttyUSB0",
            "modem": "ready: registered",
            "modem_rssi": -71,
            "modem_registration": "home",
            "rdss": {"card": "0123456", "level": 3, "capacity_bytes": 78},
        },
        "versions": {"terminal_gw": "0.1.0", "python": platform.python_version()},
    }


def ten_hz(seconds: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The simulator's vessel at 10 Hz for `seconds`: fixes, and one sky a second."""
    from terminal_gw.gnss.pipeline import GnssPipeline
    from terminal_gw.sim.gnss import Sky, Track, epoch

    track, sky = Track(), Sky(1)
    start = datetime(2026, 5, 1, tzinfo=UTC)
    v = track.start(start)
    pipeline = GnssPipeline()
    t0 = start.timestamp()
    fixes: list[dict[str, Any]] = []
    skies: list[dict[str, Any]] = []
    for i in range(seconds * 10):
        t = i / 10
        for r in pipeline.feed(b"".join(epoch(v, sky.at(t))), t0 + t):
            if r.record_class == "fix":
                fixes.append(r.to_json_dict())
            elif r.record_class == "sky" and i % 10 == 0:
                skies.append(r.to_json_dict())
        v = track.step(v, 0.1, t)
    return fixes, skies


def drains(vessel: list[dict[str, Any]]) -> list[str]:
    """Bytes on the wire per position for the 24 h backlog and a 2 min 10 Hz backlog."""
    from bench.wire_drain import Stored, drain
    from terminal_gw.models import Fix, Sky, Status, iso_utc, make_event
    from terminal_gw.uplink.compact import derive_id

    health = _health()
    day = [
        Stored(derive_id(Fix.model_validate(f), DEVICE), parse_iso_utc(f["time"])) for f in vessel
    ]
    fixes, skies = ten_hz(120)
    t_end = parse_iso_utc(fixes[-1]["time"])
    short: list[Stored] = [
        Stored(Status(time=iso_utc(t_end - 120), state="online", health=health), t_end - 120, True)
    ]
    short += [
        Stored(derive_id(Fix.model_validate(f), DEVICE), parse_iso_utc(f["time"])) for f in fixes
    ]
    short += [
        Stored(derive_id(Sky.model_validate(s), DEVICE), parse_iso_utc(s["time"])) for s in skies
    ]
    short += [
        Stored(make_event("uplink", "MQTT link lost: timeout", now=t_end - 119), t_end - 119),
        Stored(make_event("gnss", "antenna ok", now=t_end - 60, antenna="ok"), t_end - 60),
    ]
    short.sort(key=lambda r: r.created)
    profiles = {
        "compact": {"name": "compact", "encoding": "compact"},
        "json": {"name": "json", "encoding": "json"},
    }
    lines = [
        "",
        (
            "Bytes on the wire per position, draining a backlog over one MQTT 5 connection"
            " (mosquitto through a counting relay: payload both ways + 52 B a TCP segment):"
        ),
        "",
        (
            "| backlog | profile | positions | messages | up B | down B | segments | wire B |"
            " B/position | drain s |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for title, records in (
        (f"24 h at 1 Hz ({len(day)} fixes)", day),
        (f"2 min at 10 Hz ({len(fixes)} fixes, {len(skies)} sky, 2 events, 1 status)", short),
    ):
        for name, profile in profiles.items():
            d = drain(profile, records, health)
            lines.append(
                f"| {title} | {name} | {d.positions} | {d.messages} | {d.up} | {d.down} |"
                f" {d.segments} | {d.wire} | {d.per_position:.2f} | {d.seconds:.1f} |"
            )
            print(lines[-1], file=sys.stderr)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=float, default=24.0, help="vessel track length")
    parser.add_argument("--batch", type=int, action="append", help="fixes a batch (repeatable)")
    parser.add_argument("--cache", type=Path, help="keep the generated fixes here between runs")
    parser.add_argument(
        "--drain",
        action="store_true",
        help="only the drains through a real broker: bytes on the wire per position",
    )
    args = parser.parse_args()
    batches = args.batch or [60, 600]

    def cached(name: str, make: Any) -> list[dict[str, Any]]:
        if args.cache is None:
            return list(make())
        path = args.cache / f"{name}.pickle"
        if path.exists():
            return list(pickle.loads(path.read_bytes()))  # noqa: S301 - our own cache file
        value = make()
        args.cache.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(value))
        return list(value)

    vessel = cached(f"vessel-{args.hours:g}h", lambda: vessel_fixes(args.hours))
    if args.drain:
        print("\n".join(drains(vessel)))
        return
    corpus = cached("corpus", corpus_fixes)
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if "Model name" in ln), "")
    lines = [
        (
            f"{model}, Python {platform.python_version()}, "
            f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}"
        ),
        "",
    ]
    for title, fixes, other in (
        (f"(a) corpus: {len(corpus)} fixes of ../shared/corpus/gnss*/", corpus, vessel),
        (f"(b) simulated vessel, {args.hours:g} h at 1 Hz: {len(vessel)} fixes", vessel, corpus),
    ):
        columns = {}
        for batch in batches:
            dictionary = train(other, batch)
            columns[f"batch {batch}"] = sizes(fixes, batch, dictionary)
        lines += table(title, columns)
    lines += reports(vessel, args.hours)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
