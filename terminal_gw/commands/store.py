"""The durable command queue: SMS to send, their progress, and the parts sent (the cost ledger).

SQLite in WAL mode with `synchronous=FULL`: a command is on disk before it is acknowledged,
and each step of a send (attempt started, part handed to the modem, part confirmed) is
committed before the next one starts, so a restart knows exactly which part may be in doubt.
One connection, guarded by a lock and driven through `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from terminal_gw.errors import StoreError
from terminal_gw.outbox import store_cause

SmsState = Literal["queued", "sending", "sent", "failed"]
FINAL_STATES: frozenset[str] = frozenset({"sent", "failed"})

HOUR_S = 3600.0
DAY_S = 86400.0
#: Ledger rows are kept a little longer than the longest window they count in.
_LEDGER_KEEP_S = 2 * DAY_S

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sms_tx (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    to_number TEXT NOT NULL,
    text TEXT NOT NULL,
    ref INTEGER NOT NULL,
    parts INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    mrs TEXT NOT NULL DEFAULT '[]',
    inflight_part INTEGER,
    code TEXT,
    reason TEXT,
    error_code INTEGER,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sms_tx_state ON sms_tx (state, next_at);
CREATE TABLE IF NOT EXISTS sent_parts (
    t REAL NOT NULL,
    sms_id TEXT NOT NULL,
    part INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sent_parts_t ON sent_parts (t);
"""
_COLUMNS = (
    "seq, id, to_number, text, ref, parts, state, attempts, next_at, mrs, inflight_part, "
    "code, reason, error_code, created, updated"
)


@dataclass(frozen=True, slots=True)
class SmsJob:
    """One SMS to send, as stored; `mrs` holds the message reference of each part sent."""

    seq: int
    id: str
    to: str
    text: str
    ref: int  # concatenation reference, the same for every attempt
    parts: int
    state: SmsState
    attempts: int
    next_at: float
    mrs: tuple[int, ...]
    inflight_part: int | None  # a part handed to the modem and not yet confirmed or refused
    code: str | None
    reason: str | None
    error_code: int | None
    created: float
    updated: float

    @property
    def final(self) -> bool:
        """Sent or failed: nothing more will happen to it."""
        return self.state in FINAL_STATES


def _job(row: tuple[Any, ...]) -> SmsJob:
    (seq, rid, to, text, ref, parts, state, attempts, next_at, mrs, inflight, code, reason, ec,
     created, updated) = row  # fmt: skip
    return SmsJob(
        seq=int(seq),
        id=str(rid),
        to=str(to),
        text=str(text),
        ref=int(ref),
        parts=int(parts),
        state=state,
        attempts=int(attempts),
        next_at=float(next_at),
        mrs=tuple(int(m) for m in json.loads(mrs)),
        inflight_part=None if inflight is None else int(inflight),
        code=code,
        reason=reason,
        error_code=None if ec is None else int(ec),
        created=float(created),
        updated=float(updated),
    )


T = TypeVar("T")


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back when a transaction is still open. After some failures (disk full among them)
    SQLite has already rolled back, and a ROLLBACK would fail with "no transaction is active",
    replacing the real error."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _use_wal(conn: sqlite3.Connection) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise sqlite3.OperationalError(f"cannot switch to WAL mode (got {mode})")


class CommandStore:
    """The sqlite queue of downlink SMS commands and the ledger of parts sent."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    # ---- life cycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Open (create) the database; StoreError when it cannot be."""
        await self._run(self._open)

    async def close(self) -> None:
        """Close the database."""
        await asyncio.to_thread(self._close)

    async def __aenter__(self) -> CommandStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _open(self) -> None:
        if self._conn is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            str(self.path), isolation_level=None, check_same_thread=False, timeout=5
        )
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            _use_wal(conn)
            # A command acknowledged to the fleet must survive a power cut: FULL, not NORMAL.
            conn.execute("PRAGMA synchronous = FULL")
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    async def _run(self, fn: Callable[[], T]) -> T:
        def locked() -> T:
            with self._lock:
                return fn()

        try:
            return await asyncio.to_thread(locked)
        except (sqlite3.Error, OSError) as exc:
            # The cause in a few words ("disk full", "read-only") where it is one of those.
            cause = store_cause(exc, self.path)
            reason = f"{cause}: {exc}" if cause != "I/O error" else str(exc)
            raise StoreError(f"the command store failed: {reason}", reason=reason) from exc

    def _c(self) -> sqlite3.Connection:
        if self._conn is None:
            raise sqlite3.OperationalError("the command store is not open")
        return self._conn

    def _get(self, sms_id: str) -> SmsJob | None:
        row = self._c().execute(f"SELECT {_COLUMNS} FROM sms_tx WHERE id = ?", (sms_id,)).fetchone()  # noqa: S608 - constant columns
        return None if row is None else _job(row)

    def _must(self, sms_id: str) -> SmsJob:
        job = self._get(sms_id)
        if job is None:
            raise sqlite3.OperationalError(f"no SMS with id {sms_id!r}")
        return job

    def _write(self, sql: str, args: tuple[Any, ...]) -> int:
        conn = self._c()
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute(sql, args)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        return cur.lastrowid or 0

    # ---- queue ------------------------------------------------------------------------

    async def add_sms(
        self, sms_id: str, to: str, text: str, *, parts: int, now: float
    ) -> tuple[SmsJob, bool]:
        """Queue an SMS; (the stored job, True) or, when the id is known, (that job, False)."""

        def add() -> tuple[SmsJob, bool]:
            existing = self._get(sms_id)
            if existing is not None:
                return existing, False
            conn = self._c()
            conn.execute("BEGIN IMMEDIATE")
            try:
                cur = conn.execute(
                    "INSERT INTO sms_tx (id, to_number, text, ref, parts, state, next_at, created,"
                    " updated) VALUES (?, ?, ?, 0, ?, 'queued', ?, ?, ?)",
                    (sms_id, to, text, parts, now, now, now),
                )
                # The concatenation reference a receiver joins the parts by: from the row's
                # sequence, so consecutive messages differ and a retry reuses the same one.
                conn.execute("UPDATE sms_tx SET ref = seq % 256 WHERE seq = ?", (cur.lastrowid,))
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
            return self._must(sms_id), True

        return await self._run(add)

    async def get(self, sms_id: str) -> SmsJob | None:
        """The job with this id, or None."""
        return await self._run(lambda: self._get(sms_id))

    async def next_due(self, now: float) -> tuple[SmsJob | None, float | None]:
        """The oldest queued job due at `now`; else (None, when the next one is due or None)."""

        def due() -> tuple[SmsJob | None, float | None]:
            c = self._c()
            row = c.execute(
                f"SELECT {_COLUMNS} FROM sms_tx WHERE state = 'queued' AND next_at <= ?"  # noqa: S608 - constant columns
                " ORDER BY seq LIMIT 1",
                (now,),
            ).fetchone()
            if row is not None:
                return _job(row), None
            nxt = c.execute("SELECT min(next_at) FROM sms_tx WHERE state = 'queued'").fetchone()
            return None, None if nxt[0] is None else float(nxt[0])

        return await self._run(due)

    async def waiting(self) -> int:
        """How many SMS are queued or being sent."""
        return await self._run(
            lambda: int(
                self._c()
                .execute("SELECT count(*) FROM sms_tx WHERE state IN ('queued', 'sending')")
                .fetchone()[0]
            )
        )

    # ---- sending ----------------------------------------------------------------------

    async def begin_attempt(self, sms_id: str, now: float) -> SmsJob:
        """Mark the job sending and count the attempt."""

        def begin() -> SmsJob:
            self._write(
                "UPDATE sms_tx SET state = 'sending', attempts = attempts + 1, updated = ?"
                " WHERE id = ?",
                (now, sms_id),
            )
            return self._must(sms_id)

        return await self._run(begin)

    async def begin_part(self, sms_id: str, part: int, now: float) -> int:
        """Before a part goes to the modem: mark it in doubt and count it in the ledger.

        Returns the ledger row, for `part_not_sent`.
        """

        def begin() -> int:
            conn = self._c()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "UPDATE sms_tx SET inflight_part = ?, updated = ? WHERE id = ?",
                    (part, now, sms_id),
                )
                cur = conn.execute(
                    "INSERT INTO sent_parts (t, sms_id, part) VALUES (?, ?, ?)",
                    (now, sms_id, part),
                )
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
            return cur.lastrowid or 0

        return await self._run(begin)

    async def part_sent(self, sms_id: str, mr: int, now: float) -> SmsJob:
        """The modem confirmed a part with message reference `mr`."""

        def sent() -> SmsJob:
            job = self._must(sms_id)
            mrs = json.dumps([*job.mrs, mr])
            self._write(
                "UPDATE sms_tx SET mrs = ?, inflight_part = NULL, updated = ? WHERE id = ?",
                (mrs, now, sms_id),
            )
            return self._must(sms_id)

        return await self._run(sent)

    async def part_not_sent(self, sms_id: str, ledger_row: int) -> None:
        """The modem refused a part: it cost nothing, so it leaves the ledger."""

        def refused() -> None:
            conn = self._c()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM sent_parts WHERE rowid = ?", (ledger_row,))
                conn.execute("UPDATE sms_tx SET inflight_part = NULL WHERE id = ?", (sms_id,))
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise

        await self._run(refused)

    async def part_unknown(self, sms_id: str) -> None:
        """A part's fate is unknown (timeout): it stays in the ledger, the job is no longer in
        doubt for a restart because the next attempt will decide what to do."""
        await self._run(
            lambda: self._write("UPDATE sms_tx SET inflight_part = NULL WHERE id = ?", (sms_id,))
        )

    async def retry(
        self,
        sms_id: str,
        *,
        at: float,
        now: float,
        code: str | None,
        reason: str | None,
        error_code: int | None = None,
    ) -> SmsJob:
        """Back to queued, due at `at`; the last failure is kept for the progress report."""

        def again() -> SmsJob:
            self._write(
                "UPDATE sms_tx SET state = 'queued', next_at = ?, code = ?, reason = ?,"
                " error_code = ?, inflight_part = NULL, updated = ? WHERE id = ?",
                (at, code, reason, error_code, now, sms_id),
            )
            return self._must(sms_id)

        return await self._run(again)

    async def finish(
        self,
        sms_id: str,
        state: Literal["sent", "failed"],
        *,
        now: float,
        code: str | None = None,
        reason: str | None = None,
        error_code: int | None = None,
    ) -> SmsJob:
        """Sent or failed, for good."""

        def done() -> SmsJob:
            self._write(
                "UPDATE sms_tx SET state = ?, code = ?, reason = ?, error_code = ?,"
                " inflight_part = NULL, updated = ? WHERE id = ?",
                (state, code, reason, error_code, now, sms_id),
            )
            return self._must(sms_id)

        return await self._run(done)

    async def recover(self, now: float) -> list[SmsJob]:
        """After a restart: settle the jobs found sending; return them as they are now.

        A job with a part in doubt (handed to the modem, neither confirmed nor refused) may
        have gone out: it fails with reason "unknown: interrupted while sending", never sent
        again. A job between parts (every part so far confirmed, none in doubt) lost nothing:
        it is queued again and resumes with its next part.
        """

        def settle() -> list[SmsJob]:
            c = self._c()
            rows = c.execute(f"SELECT {_COLUMNS} FROM sms_tx WHERE state = 'sending'").fetchall()  # noqa: S608 - constant columns
            out: list[SmsJob] = []
            for job in map(_job, rows):
                if job.inflight_part is not None:
                    reason = (
                        f"unknown: interrupted while sending (part {job.inflight_part} of"
                        f" {job.parts} may or may not have been sent)"
                    )
                    self._write(
                        "UPDATE sms_tx SET state = 'failed', code = 'interrupted', reason = ?,"
                        " error_code = NULL, updated = ? WHERE id = ?",
                        (reason, now, job.id),
                    )
                else:
                    self._write(
                        "UPDATE sms_tx SET state = 'queued', next_at = ?, code = 'resumed',"
                        " reason = 'resumed after a restart', updated = ? WHERE id = ?",
                        (now, now, job.id),
                    )
                out.append(self._must(job.id))
            return out

        return await self._run(settle)

    # ---- cost ledger ------------------------------------------------------------------

    async def usage(self, now: float) -> tuple[int, int]:
        """SMS parts sent (or possibly sent) in the last hour and the last day."""

        def count() -> tuple[int, int]:
            hour, day = (
                self._c()
                .execute(
                    "SELECT count(*) FILTER (WHERE t > ?), count(*) FROM sent_parts WHERE t > ?",
                    (now - HOUR_S, now - DAY_S),
                )
                .fetchone()
            )
            return int(hour), int(day)

        return await self._run(count)

    async def prune(self, now: float, *, keep_s: float) -> int:
        """Forget finished jobs older than `keep_s` (their ids may then be reused) and old
        ledger rows; returns the jobs forgotten."""

        def prune() -> int:
            conn = self._c()
            conn.execute("BEGIN IMMEDIATE")
            try:
                cur = conn.execute(
                    "DELETE FROM sms_tx WHERE state IN ('sent', 'failed') AND updated < ?",
                    (now - keep_s,),
                )
                conn.execute("DELETE FROM sent_parts WHERE t < ?", (now - _LEDGER_KEEP_S,))
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
            return cur.rowcount

        return await self._run(prune)
