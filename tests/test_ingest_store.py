"""The store against a real PostgreSQL: fixes sent by binary COPY are stored exactly as the
text COPY stores them, and a value the database refuses is refused in the same words."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from terminal_gw import wire
from terminal_gw.ingest.migrate import migrate
from terminal_gw.ingest.records import Row, parse_message, tables_of
from terminal_gw.ingest.store import BadRowsError, Store
from terminal_gw.models import Fix
from tests.ingest_support import fix_payload, query
from tests.pg import Postgres

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def _fixes() -> dict[str, list[Row]]:
    """Fixes of every shape: compact, JSON with fields absent, offsets, an upper-case id."""
    records = [json.loads(fix_payload(i).to_json()) for i in range(30)]
    for i, rec in enumerate(records):
        rec["id"] = wire.fix_id("w", (1_760_000_000 + i) * 1000)
    compact = wire.encode_batch(records, "w", compress=True)
    sparse = Fix(id=fix_payload(0).id.upper(), mode=1, clock="system")
    offset = fix_payload(40).model_copy(
        update={"time": "2025-10-09T16:53:20.5+08:00", "used": None, "lat": -0.0}
    )
    parsed = [
        parse_message("tgw", "tgw/w/gnss/batch", compact, NOW),
        parse_message("tgw", "tgw/j/gnss/fix", sparse.to_json().encode(), NOW),
        parse_message("tgw", "tgw/j/gnss/fix", offset.to_json().encode(), NOW),
    ]
    return tables_of(parsed)


def _stored(pg: Postgres) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    fixes = query(pg, "SELECT * FROM fixes ORDER BY id")
    latest = query(pg, "SELECT * FROM latest_fix ORDER BY device")
    return fixes, latest


def _write(pg: Postgres, tables: dict[str, list[Row]], *, binary: bool) -> int:
    store = Store(pg.dsn, binary=binary)
    store.connect()
    try:
        # The binary path itself, not write()'s fallback to text when it fails.
        return store._write(tables, [], binary=binary).inserted
    finally:
        store.close()


def test_binary_copy_stores_what_text_copy_stores(pg: Postgres) -> None:
    tables = _fixes()
    migrate(pg.dsn)
    assert _write(pg, tables, binary=True) == 32
    assert _write(pg, tables, binary=True) == 0  # every id already stored
    by_binary = _stored(pg)
    pg.reset()
    migrate(pg.dsn)
    assert _write(pg, tables, binary=False) == 32
    assert _stored(pg) == by_binary
    assert len(by_binary[0]) == 32
    assert [r[0] for r in by_binary[1]] == ["j", "w"]


@pytest.mark.parametrize("status", [70_000, 2**70])
def test_a_value_out_of_range_is_refused_in_the_databases_words(pg: Postgres, status: int) -> None:
    migrate(pg.dsn)
    bad = fix_payload(1).model_copy(update={"status": status})
    tables = parse_message("tgw", "tgw/d/gnss/fix", bad.to_json().encode(), NOW).rows
    good = _fixes()
    reasons = []
    for binary in (True, False):
        store = Store(pg.dsn, binary=binary)
        store.connect()
        try:
            with pytest.raises(BadRowsError) as exc:
                store.write(tables, [])
            reasons.append(str(exc.value))
            # The connection goes on: the next batch is stored.
            assert store.write(good, []).inserted == (32 if binary else 0)
        finally:
            store.close()
    assert reasons[0] == reasons[1]
    assert "out of range for type smallint" in reasons[0]
