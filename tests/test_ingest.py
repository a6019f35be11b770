"""`terminal-gw ingest` against a real mosquitto and a real PostgreSQL: every record once,
bad input kept aside with its reason, a database outage absorbed, `--once` drains."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from terminal_gw.models import CommandResult, ModemStatus, SmsReceived, SmsSendProgress, new_id
from tests.broker import Broker, free_port
from tests.ingest_support import (
    PREFIX,
    IngestProcess,
    Publisher,
    count,
    event_payload,
    fix_messages,
    fix_payload,
    ids_of,
    migrate,
    query,
    run_cli,
    sky_payload,
    status_payload,
    write_config,
)
from tests.pg import Postgres
from tests.waiting import wait_until_sync

T0 = 1_760_000_000.0


def test_migrate_creates_the_schema_once(tmp_path: Path, broker: Broker, pg: Postgres) -> None:
    config = write_config(tmp_path / "ingest.toml", broker, pg)
    first = run_cli("ingest", "--config", str(config), "--migrate")
    assert first.returncode == 0, first.stderr
    assert "001_tables" in first.stderr
    again = run_cli("ingest", "--config", str(config), "--migrate")
    assert again.returncode == 0, again.stderr
    assert '"applied": []' in again.stderr
    assert query(pg, "SELECT version, name FROM ingest_schema ORDER BY version")[0] == (1, "tables")
    tables = {r[0] for r in query(pg, "SELECT tablename FROM pg_tables WHERE schemaname='public'")}
    assert {
        "fixes",
        "latest_fix",
        "sky_summary",
        "messages",
        "events",
        "device_status",
        "command_results",
        "rejected",
    } <= tables
    indexes = {r[0] for r in query(pg, "SELECT indexname FROM pg_indexes WHERE tablename='fixes'")}
    assert "fixes_device_time" in indexes


def test_every_record_once_and_where_it_belongs(
    tmp_path: Path, broker: Broker, pg: Postgres
) -> None:
    config = write_config(tmp_path / "ingest.toml", broker, pg)
    migrate(config)
    # The first --once makes the persistent session and its shared subscription.
    first = run_cli("ingest", "--config", str(config), "--client-id", "ing-1", "--once")
    assert first.returncode == 0, first.stderr

    fixes = list(fix_messages("vessel-1", 300))
    late = list(fix_messages("vessel-1", 5, start=-1000))  # a backlog from long ago, sent last
    sms_tx = [
        SmsSendProgress(
            id=new_id(),
            time=f"2025-10-09T08:00:0{i}.000Z",
            sms_id="s-1",
            state=state,
            to="+8613800000000",
            parts=1,
        )
        for i, state in enumerate(("queued", "sending", "sent"))
    ]
    others = [
        (f"{PREFIX}/vessel-1/gnss/sky", sky_payload(T0).to_json().encode()),
        (f"{PREFIX}/vessel-1/event", event_payload(T0).to_json().encode()),
        (f"{PREFIX}/vessel-1/status", status_payload("online", T0).to_json().encode()),
        (f"{PREFIX}/vessel-1/status", status_payload("offline", T0 - 60).to_json().encode()),
        (
            f"{PREFIX}/vessel-1/modem/status",
            ModemStatus(id=new_id(), time="2025-10-09T08:00:00.000Z", rssi=20).to_json().encode(),
        ),
        (
            f"{PREFIX}/vessel-1/sms/rx",
            SmsReceived(
                id=new_id(),
                time="2025-10-09T08:00:00.000Z",
                received="2025-10-09T08:00:01.000Z",
                sender="+8613800000000",
                text="hello",
            )
            .to_json()
            .encode(),
        ),
        *[(f"{PREFIX}/vessel-1/sms/tx/s-1", p.to_json().encode()) for p in sms_tx],
        (
            f"{PREFIX}/vessel-1/cmd-result/ping",
            CommandResult(id=new_id(), time="2025-10-09T08:00:00.000Z", command="ping", ok=True)
            .to_json()
            .encode(),
        ),
        # A command to the device: read past, not stored, not rejected.
        (f"{PREFIX}/vessel-1/cmd/ping", b'{"id": "x"}'),
    ]
    duplicates = fixes[:40] + others[:3]
    Publisher(broker, "dev-1").publish_all([*fixes, *others, *duplicates, *late])

    res = run_cli("ingest", "--config", str(config), "--client-id", "ing-1", "--once")
    assert res.returncode == 0, res.stderr
    stored = {str(r[0]) for r in query(pg, "SELECT id FROM fixes")}
    assert stored == set(ids_of(fixes + late))
    assert count(pg, "sky_summary") == 1
    assert count(pg, "events") == 1
    assert count(pg, "command_results") == 1
    assert count(pg, "rejected") == 0
    # Device time and receive time on every row; the backlog lands in its place in time.
    first_time, received = query(pg, "SELECT min(time), min(received) FROM fixes")[0]
    assert first_time.timestamp() == T0 - 1000
    assert received is not None
    # Latest position: the newest by device time, not the last to arrive.
    latest = query(pg, "SELECT device, lat, time FROM latest_fix")
    assert latest == [("vessel-1", fix_payload(299).lat, latest[0][2])]
    assert latest[0][2].timestamp() == T0 + 299
    # The latest retained status per topic: online (newer) though offline arrived after it.
    status = dict(query(pg, "SELECT topic, state FROM device_status WHERE device = 'vessel-1'"))
    assert status == {"status": "online", "modem/status": "ok"}
    msgs = query(pg, "SELECT channel, direction, state FROM messages ORDER BY time, direction")
    assert ("sms", "rx", None) in msgs
    assert [m[2] for m in msgs if m[1] == "tx"] == ["queued", "sending", "sent"]
    totals = json.loads(res.stderr.strip().splitlines()[-1])["totals"]
    # 40 fixes, the sky and the event again (a status is an update of the latest, not a record).
    assert totals["duplicates"] == 42
    assert totals["skipped"] == 1


def test_bad_input_goes_to_rejected_with_reason_and_topic(
    tmp_path: Path, broker: Broker, pg: Postgres
) -> None:
    config = write_config(tmp_path / "ingest.toml", broker, pg)
    migrate(config)
    ingest = IngestProcess(config, "ing-rej")
    try:
        ingest.wait_event("ingest_subscribed")
        good = fix_payload(1).to_json().encode()
        bad_schema = json.dumps({"id": new_id(), "v": 1, "class": "TPV", "mode": "three"})
        bad_time = json.dumps({"id": new_id(), "v": 1, "class": "TPV", "time": "yesterday"})
        bad_id = json.dumps({"id": "not-a-uuid", "v": 1, "class": "TPV", "mode": 1})
        messages = [
            (f"{PREFIX}/d1/gnss/fix", b"\x00\xffnot json"),
            (f"{PREFIX}/d1/gnss/fix", b"\x00\xffnot json"),  # the same again: kept once
            (f"{PREFIX}/d1/gnss/fix", bad_schema.encode()),
            (f"{PREFIX}/d1/gnss/fix", bad_time.encode()),
            (f"{PREFIX}/d1/gnss/fix", bad_id.encode()),
            (f"{PREFIX}/d1/gnss/fix", json.dumps({"id": new_id(), "class": "ALIEN"}).encode()),
            (f"{PREFIX}/d1/telemetry/x", b"{}"),
            (f"{PREFIX}/d1/gnss/fix", good),
        ]
        Publisher(broker, "dev-rej").publish_all(messages)
        wait_until_sync(lambda: count(pg, "fixes") == 1 and count(pg, "rejected") == 6, 30, "rows")
        rows = query(pg, "SELECT topic, device, reason, payload FROM rejected ORDER BY received")
        reasons = {r[2] for r in rows}
        assert "not valid JSON" in reasons
        assert any(r.startswith("fails the schema: mode") for r in reasons)
        assert any("is not an ISO 8601 time" in r for r in reasons)
        assert any("is not a UUID" in r for r in reasons)
        assert any(r.startswith("unknown class 'ALIEN' on gnss/fix") for r in reasons)
        assert "unknown topic 'telemetry/x' below the device" in reasons
        assert {r[0] for r in rows} == {f"{PREFIX}/d1/gnss/fix", f"{PREFIX}/d1/telemetry/x"}
        assert {r[1] for r in rows} == {"d1"}
        assert bytes(rows[0][3]) == b"\x00\xffnot json"
        assert ingest.proc.poll() is None  # bad input never stops it
    finally:
        assert ingest.terminate() == 0


def test_database_down_stops_acks_then_resumes(
    tmp_path: Path, broker: Broker, pg: Postgres
) -> None:
    config = write_config(
        tmp_path / "ingest.toml", broker, pg, receive_maximum=50, batch_max_rows=20
    )
    migrate(config)
    ingest = IngestProcess(config, "ing-down")
    publisher = Publisher(broker, "dev-down")
    try:
        ingest.wait_event("ingest_subscribed")
        before = list(fix_messages("d1", 100))
        publisher.publish_all(before)
        wait_until_sync(lambda: count(pg, "fixes") == 100, 30, "rows before the outage")

        pg.stop()
        during = list(fix_messages("d1", 300, start=100))
        publisher.publish_all(during)  # the broker takes them and queues what is not acked
        down = ingest.wait_event("ingest_database_down", count=3)
        # Backpressure: never more in hand than the broker may leave unacknowledged.
        assert down["pending_messages"] <= 50
        assert all(e["pending_messages"] <= 50 for e in ingest.events("ingest_database_down"))
        assert ingest.proc.poll() is None

        pg.start()
        wait_until_sync(lambda: count(pg, "fixes") == 400, 60, "rows after the outage")
        stored = {str(r[0]) for r in query(pg, "SELECT id FROM fixes")}
        assert stored == set(ids_of(before + during))
        assert ingest.events("ingest_database_connected")
    finally:
        assert ingest.terminate() == 0


def test_once_drains_and_exits_and_fails_without_a_database(
    tmp_path: Path, broker: Broker, pg: Postgres
) -> None:
    config = write_config(tmp_path / "ingest.toml", broker, pg)
    migrate(config)
    assert run_cli("ingest", "--config", str(config), "--client-id", "o", "--once").returncode == 0
    msgs = [m for d in ("a", "b", "c") for m in fix_messages(d, 150)]
    Publisher(broker, "dev-o").publish_all(msgs)
    res = run_cli("ingest", "--config", str(config), "--client-id", "o", "--once")
    assert res.returncode == 0, res.stderr
    assert count(pg, "fixes") == 450
    assert sorted(r[0] for r in query(pg, "SELECT device FROM latest_fix")) == ["a", "b", "c"]

    # Queued work but no database: --once says so, exits 1, and acknowledges nothing.
    more = list(fix_messages("a", 10, start=1000))
    Publisher(broker, "dev-o").publish_all(more)
    pg.stop()
    failed = run_cli("ingest", "--config", str(config), "--client-id", "o", "--once")
    assert failed.returncode == 1
    assert "ingest_database_down" in failed.stderr
    pg.start()
    res = run_cli("ingest", "--config", str(config), "--client-id", "o", "--once")
    assert res.returncode == 0, res.stderr
    assert count(pg, "fixes") == 460


def test_status_line_and_metrics(tmp_path: Path, broker: Broker, pg: Postgres) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "ingest.toml", broker, pg, status_interval_s=0.3, metrics_port=port
    )
    migrate(config)
    ingest = IngestProcess(config, "ing-status")
    try:
        ingest.wait_event("ingest_subscribed")
        Publisher(broker, "dev-s").publish_all(
            [*fix_messages("d1", 50), (f"{PREFIX}/d1/gnss/fix", b"nope")]
        )
        wait_until_sync(
            lambda: any(
                e["totals"]["rows"] == 50 and e["totals"]["rejected"] == 1
                for e in ingest.events("ingest_status")
            ),
            30,
            "a status line counting the rows",
        )
        lines = ingest.events("ingest_status")
        assert any(e["rows_per_s"] > 0 and e["lag_p50_s"] is not None for e in lines)
        assert any(e["rejected"] == 1 for e in lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        assert 'tgw_ingest_total{outcome="rows"} 50' in text
        assert 'tgw_ingest_total{outcome="rejected"} 1' in text
        assert "tgw_ingest_lag_seconds" in text
    finally:
        assert ingest.terminate() == 0


def test_bad_config_exits_2_with_the_field(tmp_path: Path) -> None:
    config = tmp_path / "ingest.toml"
    config.write_text('[ingest]\nbatch_max_rows = 0\ngroup = "a/b"\n')
    res = run_cli("ingest", "--config", str(config), "--once")
    assert res.returncode == 2
    assert "ingest.batch_max_rows" in res.stderr
    assert "ingest.group" in res.stderr


def test_postgis_columns_where_the_extension_is_available(
    tmp_path: Path, broker: Broker, pg: Postgres
) -> None:
    config = write_config(tmp_path / "ingest.toml", broker, pg)
    res = run_cli("ingest", "--config", str(config), "--migrate")
    assert res.returncode == 0, res.stderr
    available = query(pg, "SELECT 1 FROM pg_available_extensions WHERE name = 'postgis'")
    columns = {
        r[0] for r in query(pg, "SELECT column_name FROM information_schema.columns"
                            " WHERE table_name = 'fixes'")
    }  # fmt: skip
    if not available:
        # Plain lat/lon, and the migration waits for a server that offers PostGIS.
        assert "geog" not in columns
        assert "002_postgis (extension postgis not available)" in res.stderr
        return
    assert "geog" in columns
    assert run_cli("ingest", "--config", str(config), "--client-id", "g", "--once").returncode == 0
    Publisher(broker, "dev-g").publish_all(list(fix_messages("d1", 3)))
    assert run_cli("ingest", "--config", str(config), "--client-id", "g", "--once").returncode == 0
    near = query(
        pg,
        "SELECT device FROM latest_fix"
        " WHERE ST_DWithin(geog, ST_MakePoint(121.4737, 31.2304)::geography, 1000)",
    )
    assert near == [("d1",)]
    points = query(pg, "SELECT count(*) FROM fixes WHERE geog IS NOT NULL")
    assert points == [(3,)]
