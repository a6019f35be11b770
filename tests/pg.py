"""A real, throwaway PostgreSQL cluster for tests: `initdb` + `pg_ctl` in a temporary directory,
on a free port, with a socket directory of its own; stoppable and restartable.

`initdb` and `postgres` refuse to run as root: as root (CI), they run as user `postgres`
(`runuser -u postgres --`) in a directory that user owns.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.broker import free_port

_BIN_DIRS = [Path(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]


def pg_binary(name: str) -> str:
    """A PostgreSQL server program (initdb, pg_ctl); tests that need one fail loudly without it."""
    found = shutil.which(name)
    if found:
        return found
    for d in _BIN_DIRS:
        if (d / name).exists():
            return str(d / name)
    raise RuntimeError(
        f"{name} is not installed: scripts/test installs PostgreSQL (apt-get install postgresql)"
    )


def _as_owner() -> list[str]:
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


@dataclass
class Postgres:
    """One cluster. `dsn` reaches it over TCP on 127.0.0.1 as superuser `postgres`, no password."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tgw-pg-", dir="/tmp")))
    port: int = field(default_factory=free_port)
    database: str = "tgw"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={self.database}"

    def admin_dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def _run(self, *args: str, timeout: float = 120) -> None:
        res = subprocess.run(
            [*_as_owner(), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.root,
        )
        if res.returncode != 0:
            log = self.log_path.read_text() if self.log_path.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed: {res.stderr or res.stdout}\n{log}")

    def init(self) -> None:
        """Create the cluster (trust authentication: a throwaway on loopback)."""
        self.root.chmod(0o755)
        self.socket_dir.mkdir()
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            os.chown(self.socket_dir, owner.pw_uid, owner.pw_gid)
        self._run(
            pg_binary("initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        opts = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            " -c max_connections=50 -c shared_buffers=64MB"
        )
        self._run(
            pg_binary("pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log_path),
            "-o",
            opts,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`immediate`: like a crash, no checkpoint)."""
        self._run(pg_binary("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def create_database(self) -> None:
        """Create the test database (empty)."""
        import psycopg

        with psycopg.connect(self.admin_dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')

    def reset(self) -> None:
        """Drop and create the test database: each test starts from nothing."""
        import psycopg

        with psycopg.connect(self.admin_dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{self.database}"')

    def destroy(self) -> None:
        """Stop the server if running and remove its files."""
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
