"""Two batches written at once (`db_connections`): a batch goes on while the one before is
held up, and its messages are acknowledged only after every earlier message is stored."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg

from tests.broker import Broker
from tests.ingest_support import (
    IngestProcess,
    Publisher,
    count,
    fix_messages,
    migrate,
    query,
    run_cli,
    write_config,
)
from tests.pg import Postgres
from tests.waiting import wait_until_sync


def _totals(stderr: str) -> dict[str, int]:
    final = [json.loads(line) for line in stderr.splitlines() if '"ingest_stopped"' in line]
    totals: dict[str, int] = final[-1]["totals"]
    return totals


def test_a_later_batch_is_stored_beside_a_held_one_and_acknowledged_after_it(
    tmp_path: Path, broker: Broker, pg: Postgres
) -> None:
    config = write_config(
        tmp_path / "ingest.toml",
        broker,
        pg,
        batch_max_rows=10,
        batch_max_age_ms=50,
        db_connections=2,
    )
    migrate(config)
    Publisher(broker, "dev-seed").publish_all(fix_messages("a", 1))
    first = run_cli("ingest", "--config", str(config), "--client-id", "pipe", "--once")
    assert first.returncode == 0, first.stderr
    assert count(pg, "fixes") == 0  # the session is made now; what came before is not its

    Publisher(broker, "dev-seed").publish_all(fix_messages("a", 1))
    seed = run_cli("ingest", "--config", str(config), "--client-id", "pipe", "--once")
    assert seed.returncode == 0, seed.stderr
    assert count(pg, "latest_fix") == 1

    ingest = IngestProcess(config, "pipe")
    try:
        with psycopg.connect(pg.dsn) as lock:
            # Device a's latest position locked: a batch of a's fixes cannot commit.
            lock.execute("SELECT * FROM latest_fix WHERE device = 'a' FOR UPDATE")
            ingest.wait_event("ingest_subscribed")
            Publisher(broker, "dev-a").publish_all(fix_messages("a", 10, start=10))
            wait_until_sync(
                lambda: (
                    query(
                        pg, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    )[0][0]
                    == 1
                ),
                30,
                "a's batch waiting for the lock",
            )
            Publisher(broker, "dev-b").publish_all(fix_messages("b", 10, start=10))
            # b's batch went on the other connection and committed while a's waits.
            wait_until_sync(
                lambda: query(pg, "SELECT count(*) FROM fixes WHERE device = 'b'")[0][0] == 10,
                30,
                "b's batch stored beside a's",
            )
            ingest.kill()  # a's batch never commits
    finally:
        ingest.kill()
    assert query(pg, "SELECT count(*) FROM fixes WHERE device = 'a'")[0][0] == 1

    # b's messages were not acknowledged (a's, before them, were not stored): both come again.
    again = run_cli("ingest", "--config", str(config), "--client-id", "pipe", "--once")
    assert again.returncode == 0, again.stderr
    assert count(pg, "fixes") == 21
    totals = _totals(again.stderr)
    assert (totals["rows"], totals["duplicates"]) == (10, 10)


def test_a_queue_longer_to_read_than_the_suback_timeout_is_drained(
    tmp_path: Path, broker: Broker, pg: Postgres
) -> None:
    # A resumed session's queue comes before the SUBACK; reading 6,000 messages takes well
    # over a second, the SUBACK deadline here.
    config = write_config(
        tmp_path / "ingest.toml", broker, pg, connect_timeout_s=1.0, receive_maximum=10_000
    )
    migrate(config)
    first = run_cli("ingest", "--config", str(config), "--client-id", "long", "--once")
    assert first.returncode == 0, first.stderr
    Publisher(broker, "dev-long").publish_all(fix_messages("l", 6000))
    res = run_cli("ingest", "--config", str(config), "--client-id", "long", "--once", timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    assert count(pg, "fixes") == 6000
