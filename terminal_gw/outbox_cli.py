"""`terminal-gw outbox stats|export`: look into the outbox, read-only, while the daemon runs
(WAL readers do not block it) or on a database copied off a device."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO
from xml.sax.saxutils import escape, quoteattr

from terminal_gw.exit_codes import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_PERMISSION,
    EXIT_USAGE,
    permission_denied,
)
from terminal_gw.outbox.store import CLASS_PRIORITY, class_stats, iter_payloads, open_reader


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `outbox` sub-commands: stats, export."""
    sub = parser.add_subparsers(dest="outbox_command", required=True, metavar="ACTION")
    for name, help_text in (
        ("stats", "per class: records waiting, bytes, oldest age"),
        ("export", "the records still waiting, one JSON payload a line (or a track)"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument(
            "--config",
            type=Path,
            default=None,
            help="config file (default: $TGW_CONFIG or /etc/terminal-gw/config.toml)",
        )
        p.add_argument(
            "--db", type=Path, default=None, help="read this outbox file instead of the config's"
        )
        if name == "stats":
            p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        else:
            p.add_argument(
                "--format",
                choices=["jsonl", "geojson", "gpx"],
                default="jsonl",
                help="jsonl: every waiting payload; geojson, gpx: the waiting fixes as a track",
            )
            p.add_argument(
                "--class",
                dest="classes",
                action="append",
                choices=sorted(CLASS_PRIORITY),
                help="only this class (repeatable; jsonl only)",
            )


def cli(args: argparse.Namespace) -> int:
    """Run `outbox stats` or `outbox export`."""
    path, limit = _db_path(args)
    try:
        if path.is_dir():
            print(
                f"error: {path} is a directory; give the outbox database file"
                f" (`--db {path / 'outbox.db'}`, the default name)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        if not path.exists():
            print(f"error: no outbox at {path}", file=sys.stderr)
            return EXIT_FAILURE
        with open_reader(path) as conn:
            if args.outbox_command == "stats":
                return _stats(conn, as_json=args.json, limit=limit, out=sys.stdout)
            return _export(conn, fmt=args.format, classes=args.classes, out=sys.stdout)
    except PermissionError:
        print(f"error: {permission_denied(path, 'outbox')}", file=sys.stderr)
        return EXIT_PERMISSION
    except (sqlite3.Error, OSError) as exc:
        print(f"error: cannot read the outbox at {path}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _db_path(args: argparse.Namespace) -> tuple[Path, int | None]:
    """The database to read and, when it comes from a config, its max_bytes (a config that
    cannot be read exits here, 2 or 4, as every command's does)."""
    if args.db is not None:
        return Path(args.db), None
    from terminal_gw.cli.common import read_config_or_exit

    outbox = read_config_or_exit(args.config).outbox
    return outbox.path, outbox.max_bytes


def read_stats(conn: sqlite3.Connection, now: float) -> dict[str, dict[str, Any]]:
    """Per class (drain order): count, bytes (as counted against max_bytes), oldest age."""
    found = class_stats(conn)
    order = sorted(found, key=lambda c: (CLASS_PRIORITY.get(c, 99), c))
    out: dict[str, dict[str, Any]] = {}
    for c in order:
        count, size, oldest = found[c]
        age = None if oldest is None else round(max(0.0, now - oldest), 3)
        out[c] = {"count": count, "bytes": size, "oldest_age_s": age}
    return out


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _human_age(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def _stats(conn: sqlite3.Connection, *, as_json: bool, limit: int | None, out: TextIO) -> int:
    stats = read_stats(conn, time.time())
    if as_json:
        out.write(json.dumps(stats, indent=2) + "\n")
        return EXIT_OK
    rows = [
        (c, str(s["count"]), _human_bytes(s["bytes"]), _human_age(s["oldest_age_s"]))
        for c, s in stats.items()
    ]
    total_n = sum(s["count"] for s in stats.values())
    total_b = sum(s["bytes"] for s in stats.values())
    ages = [s["oldest_age_s"] for s in stats.values() if s["oldest_age_s"] is not None]
    rows.append(("total", str(total_n), _human_bytes(total_b), _human_age(max(ages, default=None))))
    header = ("class", "count", "bytes", "oldest")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for i, r in enumerate([header, *rows]):
        if i == len(rows):
            out.write("  ".join("-" * w for w in widths) + "\n")
        out.write(
            f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}\n"
        )
    if limit:
        out.write(f"limit: {_human_bytes(limit)} (outbox.max_bytes), {total_b / limit:.1%} used\n")
    return EXIT_OK


def _fixes(conn: sqlite3.Connection) -> Iterator[dict[str, Any]]:
    """The waiting fixes with a position, in arrival order (the receiver's time order),
    streamed: a week of fixes at 1 Hz need not fit in memory."""
    for _cls, payload in iter_payloads(conn, ["fix"]):
        try:
            fix = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            continue
        if not isinstance(fix, dict):
            continue
        lat, lon = fix.get("lat"), fix.get("lon")
        if isinstance(lat, (int, float)) and isinstance(lon, (int, float)):
            yield fix


def _export(conn: sqlite3.Connection, *, fmt: str, classes: list[str] | None, out: TextIO) -> int:
    if fmt == "jsonl":
        for _cls, payload in iter_payloads(conn, classes):
            out.write(payload.decode("utf-8", errors="replace").strip() + "\n")
    elif fmt == "geojson":
        write_geojson(_fixes(conn), out)
    else:
        write_gpx(_fixes(conn), out)
    return EXIT_OK


_POINT_PROPS = ("time", "mode", "altMSL", "altHAE", "speed", "track", "eph", "hdop", "uSat", "id")


def _coords(f: dict[str, Any]) -> list[float]:
    alt = f.get("altMSL", f.get("altHAE"))
    c = [float(f["lon"]), float(f["lat"])]
    if isinstance(alt, (int, float)):
        c.append(float(alt))
    return c


def write_geojson(fixes: Iterable[dict[str, Any]], out: TextIO) -> None:
    """A FeatureCollection: one Point per fix (with its fields) and the track as a LineString.

    Points are written as they come; only the track's coordinates are kept until the end.
    """
    out.write('{"type": "FeatureCollection", "features": [\n')
    track: list[list[float]] = []
    first: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    for f in fixes:
        point = {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": _coords(f)},
            "properties": {k: f[k] for k in _POINT_PROPS if k in f},
        }
        out.write(("" if first is None else ",\n") + json.dumps(point, ensure_ascii=False))
        first = first or f
        last = f
        track.append(_coords(f))
    if first is not None and last is not None and len(track) >= 2:
        line = {
            "type": "Feature",
            "geometry": {"type": "LineString", "coordinates": track},
            "properties": {"name": "track", "start": first.get("time"), "end": last.get("time")},
        }
        out.write(",\n" + json.dumps(line, ensure_ascii=False))
    out.write("\n]}\n")


def write_gpx(fixes: Iterable[dict[str, Any]], out: TextIO) -> None:
    """GPX 1.1 with one track segment of the fixes, written as they come."""
    out.write(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<gpx version="1.1" creator="terminal-gw" xmlns="http://www.topografix.com/GPX/1/1">\n'
        "  <trk>\n    <name>terminal-gw outbox</name>\n    <trkseg>\n"
    )
    for f in fixes:
        lat = quoteattr(f"{float(f['lat']):.7f}")
        lon = quoteattr(f"{float(f['lon']):.7f}")
        lines = [f"      <trkpt lat={lat} lon={lon}>"]
        alt = f.get("altMSL")
        if isinstance(alt, (int, float)):
            lines.append(f"        <ele>{float(alt):.2f}</ele>")
        if f.get("time"):
            lines.append(f"        <time>{escape(str(f['time']))}</time>")
        if isinstance(f.get("uSat"), int):
            lines.append(f"        <sat>{f['uSat']}</sat>")
        if isinstance(f.get("hdop"), (int, float)):
            lines.append(f"        <hdop>{float(f['hdop'])}</hdop>")
        lines.append("      </trkpt>\n")
        out.write("\n".join(lines))
    out.write("    </trkseg>\n  </trk>\n</gpx>\n")
