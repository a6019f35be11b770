"""A damaged database at start: moved aside with the reason in an event, readable rows
salvaged into a fresh one, and the outbox carries on."""

from __future__ import annotations

import json
import os
import random
import sqlite3
from pathlib import Path

from terminal_gw.config import OutboxConfig
from terminal_gw.models import Event, Fix
from terminal_gw.outbox import Outbox, check_database
from tests.outbox_child import Sms


async def make_outbox(path: Path, fixes: int, messages: int) -> list[str]:
    ids = []
    async with Outbox(OutboxConfig(path=path), events=lambda e: None) as outbox:
        for i in range(fixes):
            f = Fix(mode=3, lat=30 + i / 1000, lon=120.0)
            await outbox.put("tgw/d/gnss/fix", f)
            ids.append(f.id)
            if messages and i % (fixes // messages) == 0:
                sms = Sms(text=f"sms {i}")
                await outbox.put("tgw/d/sms/rx", sms)
                ids.append(sms.id)
    # Closing the last connection checkpoints the WAL into the database file.
    assert not path.with_name(path.name + "-wal").exists()
    return ids


def names(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir()]


def read(path: Path) -> bytes:
    return path.read_bytes()


def overwrite_pages(path: Path, pages: list[int], seed: int = 7) -> None:
    rng = random.Random(seed)
    page_size = 4096
    with path.open("r+b") as f:
        for p in pages:
            f.seek(p * page_size)
            f.write(rng.randbytes(page_size))


async def test_garbage_pages_are_moved_aside_and_readable_rows_salvaged(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    ids = await make_outbox(path, fixes=3000, messages=30)
    pages = path.stat().st_size // 4096
    # Damage a stretch in the middle of the table (not the first pages: schema and root).
    overwrite_pages(path, [pages // 3, pages // 3 + 1, pages // 2])
    assert check_database(path) is not None

    events: list[Event] = []
    cfg = OutboxConfig(path=path, live_window_s=0)
    async with Outbox(cfg, events=events.append) as outbox:
        (event,) = [e for e in events if e.kind == "store"]
        assert event.severity == "error"
        moved = Path(event.data["moved_to"])
        assert moved.name.startswith("outbox.db.corrupt-")
        assert moved.name in names(tmp_path)
        assert event.data["reason"]
        salvaged = event.data["salvaged"]
        assert len(ids) * 0.8 < salvaged < len(ids)
        assert outbox.depth == salvaged
        got = []
        while batch := await outbox.next_batch(500):
            got += batch
            await outbox.ack_seqs(r.seq for r in batch)
        assert len(got) == salvaged
        assert {r.id for r in got} <= set(ids)
        for r in got:
            assert json.loads(r.payload)["id"] == r.id
        # Still FIFO: salvaged rows keep their order.
        fixes = [r.id for r in got if r.cls == "fix"]
        assert fixes == [i for i in ids if i in set(fixes)]
        # And it carries on.
        await outbox.put("f", Fix(mode=3, lat=1.0, lon=2.0))
        await outbox.flush()
        assert outbox.depth == 1
    assert check_database(path) is None


async def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    garbage = os.urandom(50_000)
    path.write_bytes(garbage)
    events: list[Event] = []
    async with Outbox(OutboxConfig(path=path), events=events.append) as outbox:
        (event,) = [e for e in events if e.kind == "store"]
        assert "not a database" in event.data["reason"]
        assert event.data["salvaged"] == 0
        assert read(Path(event.data["moved_to"])) == garbage  # kept for a look
        await outbox.put("s", Sms(text="works"))
        assert outbox.depth == 1
    assert check_database(path) is None


async def test_damaged_header_page_and_a_foreign_database(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    await make_outbox(path, fixes=200, messages=0)
    overwrite_pages(path, [0])
    events: list[Event] = []
    async with Outbox(OutboxConfig(path=path), events=events.append) as outbox:
        assert [e.kind for e in events] == ["store"]
        assert outbox.depth == 0
    # A database that is sound but not an outbox is not written into either.
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE notes (x)")
    conn.commit()
    conn.close()
    events.clear()
    async with Outbox(OutboxConfig(path=other), events=events.append):
        assert "no outbox table" in events[0].data["reason"]
    assert check_database(other) is None


async def test_a_sound_database_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    ids = await make_outbox(path, fixes=50, messages=5)
    events: list[Event] = []
    async with Outbox(OutboxConfig(path=path), events=events.append) as outbox:
        assert outbox.depth == len(ids)
    assert events == []
    assert [n for n in names(tmp_path) if "corrupt" in n] == []
