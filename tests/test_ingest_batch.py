"""Compact batches (`{prefix}/{device}/gnss/batch`, the wire format) stored fix by fix, each
under its own id, exactly once."""

from __future__ import annotations

from pathlib import Path

from terminal_gw.wire import encode_batch, sky_summary
from tests.broker import Broker
from tests.ingest_support import (
    PREFIX,
    Publisher,
    count,
    fix_payload,
    migrate,
    query,
    run_cli,
    sky_payload,
    write_config,
)
from tests.pg import Postgres


def test_compact_batches_stored_fix_by_fix_once(
    tmp_path: Path, broker: Broker, pg: Postgres
) -> None:
    config = write_config(tmp_path / "ingest.toml", broker, pg)
    migrate(config)
    assert run_cli("ingest", "--config", str(config), "--client-id", "w", "--once").returncode == 0
    fixes = [fix_payload(i).to_json_dict() for i in range(120)]
    sky = sky_summary(sky_payload().to_json_dict())  # a sky view travels as counts
    first = encode_batch([*fixes[:80], sky], "vessel-9")
    second = encode_batch(fixes[60:], "vessel-9")  # 20 fixes again, in another batch
    topic = f"{PREFIX}/vessel-9/gnss/batch"
    Publisher(broker, "dev-w").publish_all(
        [(topic, first), (topic, second), (topic, first), (topic, b"\x00not a batch")]
    )
    res = run_cli("ingest", "--config", str(config), "--client-id", "w", "--once")
    assert res.returncode == 0, res.stderr
    rows = query(pg, "SELECT id, source, device FROM fixes")
    assert {str(r[0]) for r in rows} == {f["id"] for f in fixes}
    assert {(r[1], r[2]) for r in rows} == {("wire", "vessel-9")}
    reason = query(pg, "SELECT reason FROM rejected")
    assert len(reason) == 1
    assert reason[0][0].startswith("not a compact batch")
    assert count(pg, "latest_fix") == 1
    views = query(pg, "SELECT id, satellites, seen, used FROM sky_summary")
    assert views == [(views[0][0], None, {"gps": 1, "bds": 1}, {"bds": 1})]
    assert str(views[0][0]) == sky["id"]
