"""`terminal-gw ingest` to a broker over TLS with a password (from the environment): the
broker options of `[mqtt]`, on the fleet side."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.broker import Broker, free_port
from tests.ingest_support import REPO, Publisher, count, fix_messages, migrate, write_config
from tests.ingest_support import env as base_env
from tests.pg import Postgres
from tests.tls import make_pki
from tests.waiting import wait_until_sync

PASSWORD = "ingest-Pa55"  # noqa: S105 - the test broker's password


def test_tls_and_password_from_the_environment(tmp_path: Path, pg: Postgres) -> None:
    pki = make_pki(tmp_path / "pki", "fleet")
    passwd = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwd), "ingest", PASSWORD],
        check=True,
        capture_output=True,
        timeout=30,
    )
    workdir = tmp_path / "broker"
    workdir.mkdir()
    broker = Broker(workdir)  # its plain port for the devices' side of the test
    tls_port = free_port()
    broker.listener_conf = [
        "per_listener_settings true",
        f"listener {broker.port} 127.0.0.1",
        "allow_anonymous true",
        f"listener {tls_port} 127.0.0.1",
        f"cafile {pki.ca_cert}",
        f"certfile {pki.server_cert}",
        f"keyfile {pki.server_key}",
        "allow_anonymous false",
        f"password_file {passwd}",
    ]
    broker.start()
    try:
        config = write_config(
            tmp_path / "ingest.toml",
            broker,
            pg,
            port=tls_port,
            tls=True,
            ca_file=str(pki.ca_cert),
            username="ingest",
        )
        migrate(config)
        run = [
            sys.executable, "-m", "terminal_gw", "ingest", "--config", str(config),
            "--client-id", "tls", "--once",
        ]  # fmt: skip
        first = subprocess.run(
            run, env={**base_env(), "TGW_INGEST__PASSWORD": PASSWORD}, cwd=REPO,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert first.returncode == 0, first.stderr
        assert PASSWORD not in first.stderr
        Publisher(broker, "dev-tls").publish_all(list(fix_messages("d1", 30)))
        second = subprocess.run(
            run, env={**base_env(), "TGW_INGEST__PASSWORD": PASSWORD}, cwd=REPO,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert second.returncode == 0, second.stderr
        wait_until_sync(lambda: count(pg, "fixes") == 30, 10, "rows")
        # A wrong password: --once says why and exits 1.
        wrong = subprocess.run(
            run, env={**base_env(), "TGW_INGEST__PASSWORD": "nope"}, cwd=REPO,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert wrong.returncode == 1
        assert "auth" in wrong.stderr
    finally:
        broker.kill()
