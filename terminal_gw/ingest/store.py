"""PostgreSQL side: one connection, one transaction per batch, idempotent by payload id.

Rows go by COPY into temporary staging tables (emptied at each commit), then one
`INSERT ... SELECT ... ON CONFLICT DO NOTHING` per table moves them into place: COPY's speed
with the database deciding what is new. `latest_fix` and `device_status` are updated from the
same staging tables only where the incoming record is newer (by device time), so a backlog
arriving days late lands in its place and does not overwrite the present.

Blocking (psycopg's sync API): the ingest service calls it from one worker thread, so the
event loop keeps reading MQTT while a batch is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg import sql

from terminal_gw.errors import TerminalGwError
from terminal_gw.ingest.records import COLUMNS, Row


class DatabaseError(TerminalGwError):
    """The database is unreachable or refused the batch; `transient` when a retry may help."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class BadRowsError(TerminalGwError):
    """A value the database refuses (a time out of its range, ...): the batch is split."""


class _DumpError(Exception):
    """A row value the binary COPY cannot send."""


@dataclass(slots=True)
class Rejected:
    """A message to keep in the `rejected` table."""

    digest: bytes
    received: datetime
    topic: str
    device: str | None
    reason: str
    payload: bytes


@dataclass(slots=True)
class Written:
    """What one batch did in the database."""

    offered: int = 0  # record rows handed in
    inserted: int = 0  # of them, new (the rest were duplicates)
    rejected: int = 0  # rejected messages stored (duplicates of earlier ones not counted)
    by_table: dict[str, int] = field(default_factory=dict)


#: Record tables keyed by `id`, in the order they are written.
_KEYED = ("fixes", "sky_summary", "messages", "events", "command_results")

_LATEST_FIX = """
INSERT INTO latest_fix (device, id, time, received, mode, lat, lon, alt_msl, speed, track)
SELECT DISTINCT ON (device) device, id, time, received, mode, lat, lon, alt_msl, speed, track
FROM _stage_fixes
WHERE time IS NOT NULL AND lat IS NOT NULL AND lon IS NOT NULL
ORDER BY device, time DESC, id DESC
ON CONFLICT (device) DO UPDATE SET
    id = excluded.id, time = excluded.time, received = excluded.received,
    mode = excluded.mode, lat = excluded.lat, lon = excluded.lon, alt_msl = excluded.alt_msl,
    speed = excluded.speed, track = excluded.track
WHERE latest_fix.time < excluded.time
"""

#: Fixes go by binary COPY (a third of the text COPY's cost, both sides) into a staging
#: table of their own: each column's type there (what psycopg sends the row's value as) and
#: the cast into the table's type. Ids, times and JSON are text in the rows, cast by the
#: database as a text COPY would parse them; smallints go as bigint and are cast, so a value
#: out of range is refused (psycopg's binary int2 would wrap it).
_FIXES_BINARY: dict[str, tuple[str, str | None]] = {
    "id": ("text", "uuid"),
    "device": ("text", None),
    "time": ("text", "timestamptz"),
    "received": ("timestamptz", None),
    "used": ("text", "jsonb"),
    "clock": ("text", None),
    "source": ("text", None),
    **dict.fromkeys(("mode", "status", "nsat", "usat"), ("int8", "int2")),
    **{
        c: ("float8", None)
        for c in COLUMNS["fixes"]
        if c not in ("id", "device", "time", "received", "used", "clock", "source")
        and c not in ("mode", "status", "nsat", "usat")
    },
}
assert set(_FIXES_BINARY) == set(COLUMNS["fixes"])
_BINARY_TYPES = [_FIXES_BINARY[c][0] for c in COLUMNS["fixes"]]
#: The binary staging table read as the fixes table's types.
_FIXES_CAST = ", ".join(
    f"{c}::{cast} AS {c}" if cast else c
    for c in COLUMNS["fixes"]
    for cast in (_FIXES_BINARY[c][1],)
)
_BINARY_STAGE = "_stage_fixes_binary"
_FIXES_BINARY_INSERT = (
    f"INSERT INTO fixes ({', '.join(COLUMNS['fixes'])})"  # noqa: S608 - the module's own names
    f" SELECT {_FIXES_CAST} FROM {_BINARY_STAGE} ORDER BY 1 ON CONFLICT (id) DO NOTHING"
)
_LATEST_FIX_BINARY = _LATEST_FIX.replace(
    "FROM _stage_fixes",
    f"FROM (SELECT {_FIXES_CAST} FROM {_BINARY_STAGE}) AS _stage_fixes",  # noqa: S608 - the module's own names
)
assert _LATEST_FIX_BINARY != _LATEST_FIX

_DEVICE_STATUS = """
INSERT INTO device_status (device, topic, id, time, received, class, state, payload)
SELECT DISTINCT ON (device, topic) device, topic, id, time, received, class, state, payload
FROM _stage_device_status
ORDER BY device, topic, time DESC NULLS LAST, id DESC
ON CONFLICT (device, topic) DO UPDATE SET
    id = excluded.id, time = excluded.time, received = excluded.received,
    class = excluded.class, state = excluded.state, payload = excluded.payload
WHERE device_status.time IS NULL OR excluded.time >= device_status.time
"""

_REJECTED = """
INSERT INTO rejected (digest, received, topic, device, reason, payload)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (digest) DO NOTHING
"""


def _translate(exc: psycopg.Error) -> DatabaseError | BadRowsError:
    if isinstance(exc, psycopg.DataError | psycopg.IntegrityError):
        return BadRowsError(f"database refused a value: {exc}".strip())
    transient = isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, psycopg.errors.UndefinedTable):
        text += " (run `terminal-gw ingest --migrate` first)"
    return DatabaseError(f"database: {text}", transient=transient)


class Store:
    """One PostgreSQL connection for batches; `connect()` again after an error."""

    def __init__(
        self,
        dsn: str,
        password: str | None = None,
        connect_timeout_s: float = 10.0,
        *,
        binary: bool = True,
    ):
        self._binary = binary  # fixes by binary COPY (False: text, as every other table)
        self._dsn = dsn
        self._password = password
        self._timeout = connect_timeout_s
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None

    @property
    def connected(self) -> bool:
        """A connection is open (it may still turn out broken at the next batch)."""
        return self._conn is not None and not self._conn.closed

    def connect(self) -> None:
        """Open the connection and its staging tables; DatabaseError when that fails."""
        self.close()
        kwargs: dict[str, object] = {
            "autocommit": True,
            "connect_timeout": max(1, int(self._timeout)),
        }
        if self._password:
            kwargs["password"] = self._password
        try:
            conn = psycopg.connect(self._dsn, **kwargs)  # type: ignore[arg-type]  # kwargs are libpq's
        except psycopg.Error as exc:
            raise _translate(exc) from exc
        try:
            with conn.cursor() as cur:
                for table in (*_KEYED, "device_status"):
                    cols = sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS[table])
                    cur.execute(
                        sql.SQL(
                            "CREATE TEMP TABLE IF NOT EXISTS {} ON COMMIT DELETE ROWS AS"
                            " SELECT {} FROM {} WITH NO DATA"
                        ).format(sql.Identifier(f"_stage_{table}"), cols, sql.Identifier(table))
                    )
                columns = ", ".join(f"{c} {_FIXES_BINARY[c][0]}" for c in COLUMNS["fixes"])
                cur.execute(
                    f"CREATE TEMP TABLE IF NOT EXISTS {_BINARY_STAGE} ({columns})"
                    " ON COMMIT DELETE ROWS"
                )
        except psycopg.Error as exc:
            conn.close()
            raise _translate(exc) from exc
        self._conn = conn

    def close(self) -> None:
        """Close the connection (nothing uncommitted is kept)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def write(self, tables: dict[str, list[Row]], rejected: Sequence[Rejected]) -> Written:
        """Store one batch in one transaction. DatabaseError: nothing stored (retry later);
        BadRowsError: a value the database refuses, nothing stored (split the batch)."""
        if self._binary and tables.get("fixes"):
            try:
                return self._write(tables, rejected, binary=True)
            except (BadRowsError, _DumpError):
                # Nothing stored: the text COPY says which value, in the database's words.
                pass
        return self._write(tables, rejected, binary=False)

    def _write(
        self, tables: dict[str, list[Row]], rejected: Sequence[Rejected], *, binary: bool
    ) -> Written:
        conn = self._conn
        if conn is None or conn.closed:
            raise DatabaseError("database: not connected", transient=True)
        done = Written()
        try:
            with conn.transaction(), conn.cursor() as cur:
                for table in _KEYED:
                    rows = tables.get(table)
                    if rows and binary and table == "fixes":
                        inserted = self._copy_binary(cur, rows)
                        done.offered += len(rows)
                        done.inserted += inserted
                        done.by_table[table] = inserted
                        cur.execute(_LATEST_FIX_BINARY)
                    elif rows:
                        inserted = self._copy_insert(cur, table, rows)
                        done.offered += len(rows)
                        done.inserted += inserted
                        done.by_table[table] = inserted
                        if table == "fixes":
                            cur.execute(_LATEST_FIX)
                status = tables.get("device_status")
                if status:
                    self._copy(cur, "device_status", status)
                    cur.execute(_DEVICE_STATUS)
                    done.offered += len(status)
                    done.inserted += len(status)
                    done.by_table["device_status"] = len(status)
                if rejected:
                    before = len(rejected)
                    cur.executemany(
                        _REJECTED,
                        [
                            (r.digest, r.received, r.topic, r.device, r.reason, r.payload)
                            for r in sorted(rejected, key=lambda r: r.digest)  # as ids above
                        ],
                        returning=False,
                    )
                    done.rejected = before if cur.rowcount < 0 else cur.rowcount
        except psycopg.Error as exc:
            error = _translate(exc)
            if isinstance(error, DatabaseError) and error.transient:
                self.close()
            raise error from exc
        return done

    @staticmethod
    def _copy_binary(cur: psycopg.Cursor[tuple[object, ...]], rows: list[Row]) -> int:
        cols = ", ".join(COLUMNS["fixes"])
        try:
            with cur.copy(f"COPY {_BINARY_STAGE} ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(_BINARY_TYPES)
                for row in rows:
                    copy.write_row(row)
        except (OverflowError, TypeError, ValueError) as exc:
            # A value psycopg cannot send in binary (an integer over 64 bits, ...).
            raise _DumpError(str(exc)) from exc
        cur.execute(_FIXES_BINARY_INSERT)
        return max(cur.rowcount, 0)

    @staticmethod
    def _copy(cur: psycopg.Cursor[tuple[object, ...]], table: str, rows: list[Row]) -> None:
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS[table])
        stage = sql.Identifier(f"_stage_{table}")
        with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(stage, cols)) as copy:
            for row in rows:
                copy.write_row(row)

    def _copy_insert(
        self, cur: psycopg.Cursor[tuple[object, ...]], table: str, rows: list[Row]
    ) -> int:
        self._copy(cur, table, rows)
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS[table])
        # In id order: two batches written at once (this process's connections, or another
        # process's) wait for each other's ids in one order, never in a cycle (no deadlock).
        cur.execute(
            sql.SQL(
                "INSERT INTO {} ({}) SELECT {} FROM {} ORDER BY id ON CONFLICT (id) DO NOTHING"
            ).format(sql.Identifier(table), cols, cols, sql.Identifier(f"_stage_{table}"))
        )
        return max(cur.rowcount, 0)
