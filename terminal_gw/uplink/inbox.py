"""The command inbox: every command the broker hands over is on disk before its PUBACK.

SQLite in WAL mode with `synchronous=FULL`. The uplink writes each received command here
(one transaction for all that arrived together), and only after the commit acknowledges them
to the broker; a runner task then takes the rows in order and marks each one done after its
handler returned. So a kill at any moment loses nothing:

- before the commit: the broker has no PUBACK and hands the command over again (same packet
  id, DUP flag) on the next connection of the persistent session;
- after the commit, before the PUBACK: the command is here and is handed over again as well;
  the copy (DUP set, same packet id and same topic and payload as the newest row with that
  packet id) is acknowledged and not stored again, so it runs once;
- after the PUBACK, before it ran: the row is not done and runs after the restart.

A kill after the handler stored its effect (the answer in the outbox, the SMS in the command
store) and before its row was marked done runs the command once more after the restart: those
are other databases, so the two commits cannot be one. It has no second effect downstream:
`sms/send` is idempotent by its `id` (no SMS is sent twice), and every answer of a command
run from here takes a stable id from the row's receipt, so a second run's answers carry the
same ids as the first's and consumers drop them as duplicates, as for any redelivery.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from terminal_gw.errors import StoreError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    qos INTEGER NOT NULL,
    response_topic TEXT,
    correlation BLOB,
    mid INTEGER,
    digest BLOB NOT NULL,
    received REAL NOT NULL,
    done REAL
);
CREATE INDEX IF NOT EXISTS inbox_pending ON inbox (done, seq);
CREATE INDEX IF NOT EXISTS inbox_mid ON inbox (mid);
"""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """One stored command. `size` is the payload's size as sent (it may be cut when over the
    limit on MQTT 3.1.1)."""

    seq: int
    topic: str
    payload: bytes
    size: int
    qos: int
    response_topic: str | None
    correlation_data: bytes | None
    #: Unix time it was stored: with `seq`, the receipt that names this command for good.
    received: float = 0.0

    @property
    def receipt(self) -> str:
        """Names this stored command across restarts (`seq@ms`): a command run again after a
        kill gives its answers the same ids, so consumers drop the second copy."""
        return f"{self.seq}@{int(self.received * 1000)}"


@dataclass(frozen=True, slots=True)
class Received:
    """What the uplink hands to `Inbox.add`: a command as it came off the wire."""

    topic: str
    payload: bytes
    size: int
    qos: int
    mid: int
    dup: bool
    response_topic: str | None = None
    correlation_data: bytes | None = None


def _digest(topic: str, payload: bytes) -> bytes:
    return hashlib.sha256(topic.encode() + b"\x00" + payload).digest()[:16]


class Inbox:
    """The durable queue of received commands; see the module docstring."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self.duplicates = 0  # redeliveries recognised and not stored again

    async def open(self) -> None:
        """Open (and create) the database."""
        await self._run(self._open)

    async def close(self) -> None:
        """Close the database."""
        await self._run(self._close)

    def _open(self) -> None:
        if self._conn is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the command inbox {self.path}: {exc}") from exc
        self._conn = conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _run(self, fn: Callable[[], T]) -> T:
        def locked() -> T:
            with self._lock:
                try:
                    return fn()
                except sqlite3.Error as exc:
                    raise StoreError(f"command inbox {self.path}: {exc}", reason=str(exc)) from exc

        return await asyncio.to_thread(locked)

    def _c(self) -> sqlite3.Connection:
        if self._conn is None:
            self._open()
        assert self._conn is not None
        return self._conn

    async def add(self, messages: Sequence[Received]) -> list[bool]:
        """Store `messages` in one durable commit; per message, False for a redelivered copy."""

        def add() -> list[bool]:
            conn = self._c()
            fresh: list[bool] = []
            now = self._clock()
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                for m in messages:
                    digest = _digest(m.topic, m.payload)
                    if m.dup:
                        row = conn.execute(
                            "SELECT digest FROM inbox WHERE mid = ? ORDER BY seq DESC LIMIT 1",
                            (m.mid,),
                        ).fetchone()
                        if row is not None and bytes(row[0]) == digest:
                            fresh.append(False)
                            continue
                    # The broker reuses a packet id only after our PUBACK for the last one:
                    # an older row with this id can no longer be handed over again.
                    conn.execute("UPDATE inbox SET mid = NULL WHERE mid = ?", (m.mid,))
                    conn.execute(
                        "INSERT INTO inbox (topic, payload, size, qos, response_topic,"
                        " correlation, mid, digest, received) VALUES (?,?,?,?,?,?,?,?,?)",
                        (
                            m.topic,
                            m.payload,
                            m.size,
                            m.qos,
                            m.response_topic,
                            m.correlation_data,
                            m.mid,
                            digest,
                            now,
                        ),
                    )
                    fresh.append(True)
            return fresh

        fresh = await self._run(add)
        self.duplicates += fresh.count(False)
        return fresh

    async def pending(self, limit: int = 100) -> list[InboxEntry]:
        """Stored commands not yet run, oldest first."""

        def pending() -> list[InboxEntry]:
            rows = self._c().execute(
                "SELECT seq, topic, payload, size, qos, response_topic, correlation, received"
                " FROM inbox"
                " WHERE done IS NULL ORDER BY seq LIMIT ?",
                (limit,),
            )
            return [
                InboxEntry(
                    seq=r[0],
                    topic=r[1],
                    payload=bytes(r[2]),
                    size=r[3],
                    qos=r[4],
                    response_topic=r[5],
                    correlation_data=bytes(r[6]) if r[6] is not None else None,
                    received=float(r[7]),
                )
                for r in rows
            ]

        return await self._run(pending)

    async def done(self, seq: int) -> None:
        """Mark a command as run; its payload is dropped (the row stays to tell copies apart)."""

        def done() -> None:
            self._c().execute(
                "UPDATE inbox SET done = ?, payload = x'' WHERE seq = ?", (self._clock(), seq)
            )

        await self._run(done)

    async def prune(self, keep_s: float) -> int:
        """Forget commands run more than `keep_s` ago (no broker hands those over again)."""

        def prune() -> int:
            cur = self._c().execute(
                "DELETE FROM inbox WHERE done IS NOT NULL AND done < ?", (self._clock() - keep_s,)
            )
            return cur.rowcount

        return await self._run(prune)
