"""Payloads stored encoded (deflate with a dictionary per class): every read path gives the
original payload back, rows written as JSON text by schema 1 still open and drain, and a
damaged stored payload never crashes a read."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
import zlib
from pathlib import Path

import pytest

from terminal_gw.config import OutboxConfig
from terminal_gw.models import Fix, Satellite, Sky, Status, make_event
from terminal_gw.outbox import Outbox, codec, record_size, store
from tests.outbox_child import Bds, CommandResult, Sms

# The table and index as schema 1 made them (payloads stored as JSON text).
SCHEMA_1 = """
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id BLOB NOT NULL,
    cls TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL,
    priority INTEGER NOT NULL,
    retain INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL
);
CREATE INDEX outbox_class ON outbox (cls);
PRAGMA user_version = 1;
"""


def full_fix(i: int = 0) -> Fix:
    return Fix(
        time="2026-03-01T10:00:00.000Z",
        mode=3,
        status=1,
        lat=31.2304 + i * 1e-5,
        lon=121.4737,
        altHAE=42.8,
        altMSL=-4.0,
        geoidSep=46.8,
        speed=3.292,
        track=232.4,
        hdop=0.6,
        vdop=0.9,
        pdop=1.1,
        nSat=22,
        uSat=14,
        used={"gps": 9, "bds": 5},
    )


def sky() -> Sky:
    sats = [
        Satellite(PRN=p, gnssid=g, svid=s, az=a, el=e, ss=ss, used=u)
        for p, g, s, a, e, ss, u in [
            (3, 0, 3, 224.0, 23.0, 43.0, True),
            (11, 0, 11, 314.0, 17.0, 38.0, True),
            (15, 0, 15, 138.0, 18.0, 0.0, False),
            (401, 3, 1, 60.0, 40.0, 25.0, True),
            (427, 3, 27, 172.0, 42.0, 36.0, True),
            (74, 6, 10, 100.0, 21.0, 0.0, False),
        ]
    ]
    return Sky(time="2026-03-01T10:00:00.000Z", satellites=sats, nSat=6, uSat=4, hdop=0.9)


SAMPLES = [
    full_fix(),
    Fix(mode=1),
    sky(),
    Sky(),
    make_event("evicted", "the outbox evicted records", now=1.76e9, counts={"fix": 3}),
    Status(time="2026-03-01T10:00:00.000Z", state="online", health={"outbox_depth": 3}),
    Sms(text="hello 你好"),
    Bds(text="ok"),
    CommandResult(result="done"),
]


@pytest.mark.parametrize("payload", SAMPLES, ids=lambda p: type(p).__name__)
def test_every_class_round_trips_and_is_never_stored_larger(payload: Fix) -> None:
    data = payload.to_json().encode()
    stored = codec.encode(payload.record_class, data)
    assert codec.decode(stored) == data
    assert len(stored) <= len(data)


def test_positions_take_well_under_half_their_json() -> None:
    for payload in (full_fix(), sky()):
        data = payload.to_json().encode()
        stored = codec.encode(payload.record_class, data)
        assert stored[0] in (codec.FIX, codec.SKY)
        assert len(stored) < 0.45 * len(data)


def test_json_text_is_read_as_it_is() -> None:
    for data in (b'{"id":"x"}', b' {"a":1}', b"", b"\n[]"):
        assert codec.decode(data) == data
        assert codec.decode_or_none(data) == data


def test_a_payload_that_starts_like_an_encoded_one_is_encoded() -> None:
    for data in (bytes((codec.FIX,)) + b"not json", bytes((codec.OTHER,))):
        stored = codec.encode("status", data)
        assert stored != data
        assert codec.decode(stored) == data


def test_damaged_and_oversized_streams_are_not_inflated() -> None:
    good = codec.encode("fix", full_fix().to_json().encode())
    for bad in (
        good[:-3],  # truncated
        good[:1] + b"\xff" * 40,  # not deflate
        good + b"trailing",
        bytes((codec.FIX,)),
    ):
        assert codec.decode_or_none(bad) is None
        assert codec.decode(bad) == bad  # handed on, never lost or raised
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = bytes((codec.OTHER,)) + z.compress(b"\0" * (codec.MAX_DECODED + 10)) + z.flush()
    assert codec.decode_or_none(bomb) is None


async def test_rows_are_stored_encoded_and_counted_as_stored(tmp_path: Path) -> None:
    cfg = OutboxConfig(path=tmp_path / "outbox.db")
    fix = full_fix()
    async with Outbox(cfg) as outbox:
        await outbox.put("tgw/d/gnss/fix", fix)
        await outbox.flush()
        stats = await outbox.stats()
    data = fix.to_json().encode()
    conn = sqlite3.connect(cfg.path)
    try:
        (stored, size), *_ = conn.execute("SELECT payload, size FROM outbox").fetchall()
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()
    assert version == store.SCHEMA_VERSION == 2
    assert stored[0] == codec.FIX
    assert len(stored) < len(data) / 2
    assert size == record_size("tgw/d/gnss/fix", stored, fix.id) == stats["fix"].bytes


def schema_1_database(path: Path, records: list[tuple[str, str, bytes]]) -> None:
    """An outbox as schema 1 left it: JSON payloads, user_version 1."""
    start = time.time() - 60
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(SCHEMA_1)
        for i, (cls, topic, data) in enumerate(records):
            rid = json.loads(data)["id"]
            conn.execute(
                "INSERT INTO outbox (id, cls, topic, payload, created, priority, retain, size)"
                " VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
                (
                    uuid.UUID(rid).bytes,
                    cls,
                    topic,
                    data,
                    start + i,
                    store.CLASS_PRIORITY[cls],
                    record_size(topic, data, rid),
                ),
            )
    finally:
        conn.close()


async def test_an_outbox_of_schema_1_opens_and_drains(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    old = [full_fix(i) for i in range(5)] + [sky(), Sms(text="waiting since schema 1")]
    records = [(p.record_class, f"tgw/d/{p.topic_path()}", p.to_json().encode()) for p in old]
    schema_1_database(path, records)
    old_bytes = sum(record_size(t, d, json.loads(d)["id"]) for _, t, d in records)

    cfg = OutboxConfig(path=path, live_window_s=0)
    new = full_fix(9)
    async with Outbox(cfg) as outbox:
        assert outbox.depth == len(old)
        assert sum(s.bytes for s in (await outbox.stats()).values()) == old_bytes
        await outbox.put("tgw/d/gnss/fix", new)
        await outbox.flush()
        # Export reads both kinds of rows (and gives the payloads as they were put).
        with store.open_reader(path) as conn:
            exported = [p for _, p in store.iter_payloads(conn)]
        got = []
        while batch := await outbox.lease(3):
            got += batch
            await outbox.ack(batch)
        assert outbox.depth == 0
    want = [r[2] for r in records if r[0] == "sms"]
    want += [r[2] for r in records if r[0] == "fix"] + [new.to_json().encode()]
    want += [r[2] for r in records if r[0] == "sky"]
    assert exported == want
    assert sorted(r.payload for r in got) == sorted(want)
    assert {r.topic for r in got} == {t for _, t, _ in records}
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    finally:
        conn.close()


async def test_a_damaged_stored_payload_is_handed_on_and_never_salvaged(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    good = full_fix()
    async with Outbox(OutboxConfig(path=path)) as outbox:
        await outbox.put("tgw/d/gnss/fix", good)
        await outbox.put("tgw/d/gnss/fix", full_fix(1))
        await outbox.flush()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        rows = conn.execute(
            "SELECT seq, id, cls, topic, payload, created, priority, retain FROM outbox"
            " ORDER BY seq"
        ).fetchall()
        damaged = rows[1][4][:1] + b"\xff" * 20
        conn.execute("UPDATE outbox SET payload = ? WHERE seq = ?", (damaged, rows[1][0]))
    finally:
        conn.close()
    async with Outbox(OutboxConfig(path=path, live_window_s=0)) as outbox:
        batch = await outbox.lease(10)
        assert [r.payload for r in batch] == [good.to_json().encode(), damaged]
    # Salvage keeps what inflates and leaves out what does not.
    assert store._valid_row(rows[0]) is not None
    assert store._valid_row((*rows[1][:4], damaged, *rows[1][5:])) is None


def test_ids_are_stored_as_uuid_would_store_them() -> None:
    def by_uuid(record_id: str) -> str | bytes:
        try:
            u = uuid.UUID(record_id)
        except ValueError:
            return record_id
        return u.bytes if str(u) == record_id else record_id

    canonical = [str(uuid.uuid4()) for _ in range(200)] + [Fix().id]
    other = [
        canonical[0].upper(),
        "{" + canonical[0] + "}",
        "urn:uuid:" + canonical[0],
        canonical[0].replace("-", ""),
        canonical[0][:-1] + "g",
        canonical[0][:-2] + "-0",
        "+" + canonical[0][1:],
        canonical[0][:-3] + " 00",
        canonical[0][:-2] + "\u0660\u0661",
        "sms-1",
        "",
    ]
    for rid in canonical + other:
        stored = store.id_to_db(rid)
        assert stored == by_uuid(rid)
        assert isinstance(stored, bytes) == (rid in canonical)
        assert store.id_from_db(stored) == rid
