"""The durable short-message send queue and its ledger (SQLite, WAL, `synchronous=FULL`).

A send is on disk before the command is answered; the moment it is handed to the terminal is
committed before the sentence is written, so a restart knows a send that may have gone out
(it is failed as interrupted, never sent twice). The ledger holds one row per send handed to
the terminal: the cost guard counts it, the pacing reads the last one (so the service
interval is kept across a restart), and the status counts today's sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from terminal_gw.errors import StoreError
from terminal_gw.outbox import store_cause

__all__ = ["BdsJob", "RdssStore"]

JobState = Literal["queued", "sending", "sent", "failed"]
HOUR_S = 3600.0
DAY_S = 86400.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bds_tx (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    to_id TEXT NOT NULL,
    text TEXT,
    data TEXT,
    mode TEXT NOT NULL,
    cls TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    code TEXT,
    reason TEXT,
    reason_code INTEGER,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS bds_tx_state ON bds_tx (state, next_at);
CREATE TABLE IF NOT EXISTS bds_sent (t REAL NOT NULL, job_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS bds_sent_t ON bds_sent (t);
"""
_COLUMNS = (
    "seq, id, to_id, text, data, mode, cls, state, attempts, next_at, code, reason,"
    " reason_code, created, updated"
)
_SELECT = "SELECT " + _COLUMNS


@dataclass(frozen=True, slots=True)
class BdsJob:
    """One short message to send, as stored."""

    seq: int
    id: str
    to: str
    text: str | None
    data: str | None
    mode: str  # as asked: auto, chinese, code, mixed
    cls: str  # normal or express
    state: JobState
    attempts: int
    next_at: float
    code: str | None
    reason: str | None
    reason_code: int | None
    created: float
    updated: float

    @property
    def final(self) -> bool:
        """Sent or failed: nothing more will happen to it."""
        return self.state in ("sent", "failed")


def _job(row: tuple[Any, ...]) -> BdsJob:
    (seq, rid, to, text, data, mode, cls, state, attempts, next_at, code, reason, rc,
     created, updated) = row  # fmt: skip
    return BdsJob(
        int(seq), str(rid), str(to), text, data, str(mode), str(cls), state, int(attempts),
        float(next_at), code, reason, None if rc is None else int(rc), float(created),
        float(updated),
    )  # fmt: skip


T = TypeVar("T")


def _use_wal(conn: sqlite3.Connection) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise sqlite3.OperationalError(f"cannot switch to WAL mode (got {mode})")


class RdssStore:
    """The sqlite queue of short messages to send and the ledger of sends."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        """Open (create) the database; StoreError when it cannot be."""
        await self._run(self._open)

    async def close(self) -> None:
        """Close the database."""
        await asyncio.to_thread(self._close)

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
            cause = store_cause(exc, self.path)
            reason = f"{cause}: {exc}" if cause != "I/O error" else str(exc)
            raise StoreError(f"the RDSS store failed: {reason}", reason=reason) from exc

    def _c(self) -> sqlite3.Connection:
        if self._conn is None:
            raise sqlite3.OperationalError("the RDSS store is not open")
        return self._conn

    def _get(self, job_id: str) -> BdsJob | None:
        row = self._c().execute(_SELECT + " FROM bds_tx WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def _must(self, job_id: str) -> BdsJob:
        job = self._get(job_id)
        if job is None:
            raise sqlite3.OperationalError(f"no short message with id {job_id!r}")
        return job

    def _tx(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        conn = self._c()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, args in statements:
                conn.execute(sql, args)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    # ---- queue ------------------------------------------------------------------------

    async def add(
        self,
        job_id: str,
        to: str,
        *,
        text: str | None,
        data: str | None,
        mode: str,
        cls: str,
        now: float,
    ) -> tuple[BdsJob, bool]:
        """Queue a send; (the job, True), or (the job already under this id, False)."""

        def add() -> tuple[BdsJob, bool]:
            existing = self._get(job_id)
            if existing is not None:
                return existing, False
            self._tx(
                (
                    (
                        "INSERT INTO bds_tx (id, to_id, text, data, mode, cls, state, next_at,"
                        " created, updated) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)"
                    ),
                    (job_id, to, text, data, mode, cls, now, now, now),
                )
            )
            return self._must(job_id), True

        return await self._run(add)

    async def get(self, job_id: str) -> BdsJob | None:
        """The job with this id, or None."""
        return await self._run(lambda: self._get(job_id))

    async def next_due(self, now: float) -> tuple[BdsJob | None, float | None]:
        """The oldest queued job due at `now`; else (None, when the next one is due)."""

        def due() -> tuple[BdsJob | None, float | None]:
            c = self._c()
            row = c.execute(
                _SELECT + " FROM bds_tx WHERE state = 'queued' AND next_at <= ?"
                " ORDER BY seq LIMIT 1",
                (now,),
            ).fetchone()
            if row is not None:
                return _job(row), None
            nxt = c.execute("SELECT min(next_at) FROM bds_tx WHERE state = 'queued'").fetchone()
            return None, None if nxt[0] is None else float(nxt[0])

        return await self._run(due)

    async def depth(self) -> int:
        """Jobs queued or being sent."""
        return await self._run(
            lambda: int(
                self._c()
                .execute("SELECT count(*) FROM bds_tx WHERE state IN ('queued', 'sending')")
                .fetchone()[0]
            )
        )

    async def handing_over(self, job_id: str, now: float) -> BdsJob:
        """Before the sentence is written: the job is sending, the attempt and the ledger row
        are counted (a send in doubt costs as if it went)."""

        def hand() -> BdsJob:
            self._tx(
                (
                    (
                        "UPDATE bds_tx SET state = 'sending', attempts = attempts + 1, updated = ?"
                        " WHERE id = ?"
                    ),
                    (now, job_id),
                ),
                ("INSERT INTO bds_sent (t, job_id) VALUES (?, ?)", (now, job_id)),
            )
            return self._must(job_id)

        return await self._run(hand)

    async def not_sent(self, job_id: str, at: float, now: float, **why: Any) -> BdsJob:
        """The terminal refused (or the port was down): it cost nothing; queued again for
        `at`, with the reason kept for the progress report."""

        def again() -> BdsJob:
            self._tx(
                (
                    (
                        "DELETE FROM bds_sent WHERE rowid = (SELECT max(rowid) FROM bds_sent"
                        " WHERE job_id = ?)"
                    ),
                    (job_id,),
                ),
                (
                    (
                        "UPDATE bds_tx SET state = 'queued', next_at = ?, code = ?, reason = ?,"
                        " reason_code = ?, updated = ? WHERE id = ?"
                    ),
                    (at, why.get("code"), why.get("reason"), why.get("reason_code"), now, job_id),
                ),
            )
            return self._must(job_id)

        return await self._run(again)

    async def finish(
        self,
        job_id: str,
        state: Literal["sent", "failed"],
        *,
        now: float,
        code: str | None = None,
        reason: str | None = None,
        reason_code: int | None = None,
        refund: bool = False,
    ) -> BdsJob:
        """Sent or failed for good; `refund`: the last handing-over did not transmit."""

        def done() -> BdsJob:
            statements: list[tuple[str, tuple[Any, ...]]] = [
                (
                    (
                        "UPDATE bds_tx SET state = ?, code = ?, reason = ?, reason_code = ?,"
                        " updated = ? WHERE id = ?"
                    ),
                    (state, code, reason, reason_code, now, job_id),
                )
            ]
            if refund:
                statements.append(
                    (
                        (
                            "DELETE FROM bds_sent WHERE rowid = (SELECT max(rowid) FROM bds_sent"
                            " WHERE job_id = ?)"
                        ),
                        (job_id,),
                    )
                )
            self._tx(*statements)
            return self._must(job_id)

        return await self._run(done)

    async def recover(self, now: float) -> list[BdsJob]:
        """After a restart: a job found sending may have gone out: failed, never resent."""

        def settle() -> list[BdsJob]:
            rows = self._c().execute(_SELECT + " FROM bds_tx WHERE state = 'sending'").fetchall()
            out = []
            for job in map(_job, rows):
                self._tx(
                    (
                        (
                            "UPDATE bds_tx SET state = 'failed', code = 'interrupted', reason = ?,"
                            " updated = ? WHERE id = ?"
                        ),
                        (
                            (
                                "unknown: interrupted after the send was handed to the terminal"
                                " (it may or may not have gone out)"
                            ),
                            now,
                            job.id,
                        ),
                    )
                )
                out.append(self._must(job.id))
            return out

        return await self._run(settle)

    # ---- ledger -----------------------------------------------------------------------

    async def usage(self, now: float, day_start: float) -> tuple[int, int, int, float | None]:
        """Sends in the last hour, the last day, since `day_start`, and the last send time."""

        def count() -> tuple[int, int, int, float | None]:
            hour, day, today, last = (
                self._c()
                .execute(
                    "SELECT count(*) FILTER (WHERE t > ?), count(*) FILTER (WHERE t > ?),"
                    " count(*) FILTER (WHERE t >= ?), max(t) FROM bds_sent",
                    (now - HOUR_S, now - DAY_S, day_start),
                )
                .fetchone()
            )
            return int(hour), int(day), int(today), None if last is None else float(last)

        return await self._run(count)

    async def prune(self, now: float, *, keep_s: float) -> int:
        """Forget finished jobs older than `keep_s` and ledger rows older than two days."""

        def prune() -> int:
            conn = self._c()
            cur = conn.execute(
                "DELETE FROM bds_tx WHERE state IN ('sent', 'failed') AND updated < ?",
                (now - keep_s,),
            )
            conn.execute("DELETE FROM bds_sent WHERE t < ?", (now - 2 * DAY_S,))
            return cur.rowcount

        return await self._run(prune)
