"""`terminal-gw outbox stats|export`: while the outbox is open (a WAL reader beside the
daemon), and on a database file copied off a device."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

from terminal_gw.config import OutboxConfig
from terminal_gw.models import Fix, Sky
from terminal_gw.outbox import Outbox
from tests.outbox_child import CommandResult, Sms

GPX_NS = {"g": "http://www.topografix.com/GPX/1/1"}
TRACK = [(31.2304, 121.4737, 4.5), (31.2310, 121.4800, 5.0), (31.2400, 121.4900, 6.25)]


@contextlib.contextmanager
def read_only_folder(folder: Path) -> Iterator[Callable[[], None]]:
    """A folder the reader cannot write into (no room for SQLite's -shm file): a tmpfs
    remounted read-only as root, or a folder without write permission otherwise."""
    mounted = os.geteuid() == 0
    if mounted:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], check=True)

    def make_read_only() -> None:
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        else:
            folder.chmod(0o555)

    try:
        yield make_read_only
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=False)
        else:
            folder.chmod(0o755)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "terminal_gw", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def write_config(tmp_path: Path, db: Path) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[device]\nid = "v-1"\n[outbox]\npath = "{db}"\n')
    return cfg


async def fill(outbox: Outbox) -> list[str]:
    ids = []
    for i, (lat, lon, alt) in enumerate(TRACK):
        f = Fix(mode=3, lat=lat, lon=lon, altMSL=alt, time=f"2026-03-01T10:00:0{i}.000Z", uSat=9)
        await outbox.put("tgw/v-1/gnss/fix", f)
        ids.append(f.id)
    await outbox.put("tgw/v-1/gnss/fix", Fix(mode=1))  # no position: not on the track
    sms = Sms(text="你好, crew")
    await outbox.put("tgw/v-1/sms/rx", sms)
    ids.append(sms.id)
    await outbox.put("tgw/v-1/gnss/sky", Sky())
    return ids


async def test_stats_and_export_while_the_outbox_is_open(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    cfg = write_config(tmp_path, db)
    async with Outbox(OutboxConfig(path=db), events=lambda e: None) as outbox:
        ids = await fill(outbox)
        # Classes of one priority are exported merged in arrival order.
        cmd, later = CommandResult(result="done"), Sms(text="later")
        await outbox.put("tgw/v-1/cmd/result", cmd)
        await outbox.put("tgw/v-1/sms/rx", later)
        await outbox.flush()
        assert db.with_name("outbox.db-wal").exists()  # rows still in the WAL

        table = run_cli("outbox", "stats", "--config", str(cfg))
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].split() == ["class", "count", "bytes", "oldest"]
        rows = {ln.split()[0]: ln.split() for ln in lines[1:] if not ln.startswith("-")}
        assert rows["fix"][1] == "4"
        assert rows["sms"][1] == "2"
        assert rows["command"][1] == "1"
        assert rows["sky"][1] == "1"
        assert rows["total"][1] == "8"
        assert lines[-1].startswith("limit: 256.0 MiB (outbox.max_bytes), 0.0% used")
        # Drain order: messages first.
        assert [ln.split()[0] for ln in lines[1:5]] == ["command", "sms", "fix", "sky"]

        as_json = run_cli("outbox", "stats", "--config", str(cfg), "--json")
        stats = json.loads(as_json.stdout)
        ours = await outbox.stats()
        assert {c: s["count"] for c, s in stats.items()} == {c: s.count for c, s in ours.items()}
        assert {c: s["bytes"] for c, s in stats.items()} == {c: s.bytes for c, s in ours.items()}
        assert all(0 <= s["oldest_age_s"] < 60 for s in stats.values())

        export = run_cli("outbox", "export", "--config", str(cfg))
        assert export.returncode == 0, export.stderr
        payloads = [json.loads(line) for line in export.stdout.splitlines()]
        assert len(payloads) == 8
        assert payloads[0]["text"] == "你好, crew"
        assert [p["id"] for p in payloads[:3]] == [ids[-1], cmd.id, later.id]
        assert [p["class"] for p in payloads[3:]] == ["TPV"] * 4 + ["SKY"]
        assert set(ids) <= {p["id"] for p in payloads}

        only_sms = run_cli("outbox", "export", "--config", str(cfg), "--class", "sms")
        assert [json.loads(x)["id"] for x in only_sms.stdout.splitlines()] == [ids[-1], later.id]


async def test_geojson_and_gpx_of_a_copied_database(tmp_path: Path) -> None:
    db = tmp_path / "device" / "outbox.db"
    async with Outbox(OutboxConfig(path=db), events=lambda e: None) as outbox:
        await fill(outbox)
    copy = tmp_path / "laptop" / "outbox.db"
    copy.parent.mkdir()
    with read_only_folder(copy.parent) as make_read_only:
        shutil.copyfile(db, copy)
        make_read_only()
        geo = run_cli("outbox", "export", "--db", str(copy), "--format", "geojson")
        assert geo.returncode == 0, geo.stderr
        collection = json.loads(geo.stdout)
        assert collection["type"] == "FeatureCollection"
        points = [f for f in collection["features"] if f["geometry"]["type"] == "Point"]
        assert [p["geometry"]["coordinates"] for p in points] == [
            [lon, lat, alt] for lat, lon, alt in TRACK
        ]
        assert points[0]["properties"]["time"] == "2026-03-01T10:00:00.000Z"
        (line,) = [f for f in collection["features"] if f["geometry"]["type"] == "LineString"]
        assert line["geometry"]["coordinates"] == [[lon, lat, alt] for lat, lon, alt in TRACK]

        gpx = run_cli("outbox", "export", "--db", str(copy), "--format", "gpx")
        assert gpx.returncode == 0, gpx.stderr
        root = ET.fromstring(gpx.stdout)  # noqa: S314 - our own output
        pts = root.findall("g:trk/g:trkseg/g:trkpt", GPX_NS)
        assert [(float(p.get("lat", "")), float(p.get("lon", ""))) for p in pts] == [
            (lat, lon) for lat, lon, _ in TRACK
        ]
        assert [float(p.findtext("g:ele", "", GPX_NS)) for p in pts] == [a for *_, a in TRACK]
        assert pts[2].findtext("g:time", "", GPX_NS) == "2026-03-01T10:00:02.000Z"

        stats = run_cli("outbox", "stats", "--db", str(copy), "--json")
        assert json.loads(stats.stdout)["fix"]["count"] == 4


def test_missing_outbox_and_bad_config(tmp_path: Path) -> None:
    missing = run_cli("outbox", "stats", "--db", str(tmp_path / "none.db"))
    assert missing.returncode == 1
    assert "no outbox" in missing.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[device]\n")
    assert run_cli("outbox", "stats", "--config", str(bad)).returncode == 2
