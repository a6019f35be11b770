"""The database schema: numbered SQL files in `schema/`, applied in order, each once.

`ingest_schema` records each version applied. A file whose first line is
`-- requires: EXTENSION` is applied only when the server offers that extension (PostGIS): it
is left unrecorded otherwise, so a later `--migrate` on a server that gained it applies it.
Each file runs in its own transaction under an advisory lock, so several ingest processes
started with `--migrate` at once apply it once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import psycopg

from terminal_gw.ingest.store import DatabaseError

_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_REQUIRES = re.compile(r"^--\s*requires:\s*([a-z0-9_]+)\s*$")
#: pg_advisory_xact_lock key: "tgw-ingest" folded into a bigint.
_LOCK_KEY = 0x7467_772D_696E_6700

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS ingest_schema (
    version  integer PRIMARY KEY,
    name     text NOT NULL,
    applied  timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One SQL file of the schema."""

    version: int
    name: str
    sql: str
    requires: str | None


def migrations() -> list[Migration]:
    """The schema's files, in version order."""
    found = []
    for entry in resources.files("terminal_gw.ingest").joinpath("schema").iterdir():
        m = _NAME.match(entry.name)
        if not m:
            continue
        text = entry.read_text(encoding="utf-8")
        first = text.splitlines()[0] if text else ""
        req = _REQUIRES.match(first)
        found.append(Migration(int(m.group(1)), m.group(2), text, req.group(1) if req else None))
    return sorted(found, key=lambda mig: mig.version)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What `migrate` did: versions applied now, versions skipped (extension missing)."""

    applied: list[str]
    skipped: list[str]
    current: int


def migrate(dsn: str, password: str | None = None) -> Outcome:
    """Bring the schema up to date; DatabaseError when the database cannot be reached."""
    kwargs: dict[str, object] = {"autocommit": True, "connect_timeout": 10}
    if password:
        kwargs["password"] = password
    applied: list[str] = []
    skipped: list[str] = []
    try:
        with psycopg.connect(dsn, **kwargs) as conn:  # type: ignore[arg-type]  # libpq's kwargs
            for mig in migrations():
                label = f"{mig.version:03d}_{mig.name}"
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                    conn.execute(_VERSION_TABLE)
                    done = conn.execute(
                        "SELECT 1 FROM ingest_schema WHERE version = %s", (mig.version,)
                    ).fetchone()
                    if done:
                        continue
                    if mig.requires is not None:
                        offered = conn.execute(
                            "SELECT 1 FROM pg_available_extensions WHERE name = %s",
                            (mig.requires,),
                        ).fetchone()
                        if not offered:
                            skipped.append(f"{label} (extension {mig.requires} not available)")
                            continue
                    conn.execute(mig.sql.encode())
                    conn.execute(
                        "INSERT INTO ingest_schema (version, name) VALUES (%s, %s)",
                        (mig.version, mig.name),
                    )
                    applied.append(label)
            row = conn.execute("SELECT coalesce(max(version), 0) FROM ingest_schema").fetchone()
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        transient = isinstance(exc, psycopg.OperationalError)
        raise DatabaseError(f"database: {first}", transient=transient) from exc
    return Outcome(applied, skipped, int(row[0]) if row else 0)
