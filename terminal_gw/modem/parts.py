"""Durable store of SMS parts delivered with `+CMT` (not stored on the SIM).

A part of a concatenated message delivered directly is acknowledged to the network before its
siblings arrive, so nothing but this table holds it: written (and committed, `synchronous=FULL`)
before the acknowledgement, read back at start, deleted once the joined message is in the
outbox. Small and synchronous by design; the driver calls it through `asyncio.to_thread`.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PartStore", "StoredPart"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cmt_parts (
    key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    pdu TEXT NOT NULL,
    first_seen REAL NOT NULL,
    PRIMARY KEY (key, seq)
)
"""


@dataclass(frozen=True, slots=True)
class StoredPart:
    """One waiting part: its message key, part number, PDU hex and unix time first seen."""

    key: str
    seq: int
    pdu: str
    first_seen: float


class PartStore:
    """The `cmt_parts` table in the SQLite file at `path` (created with its directory)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(_SCHEMA)
            self._db = db
        return self._db

    def add(self, key: str, seq: int, pdu: str, first_seen: float) -> None:
        """Keep a part durably; a repeat of the same part keeps the first copy."""
        with self._lock:
            self._conn().execute(
                "INSERT OR IGNORE INTO cmt_parts (key, seq, pdu, first_seen) VALUES (?, ?, ?, ?)",
                (key, seq, pdu, first_seen),
            )

    def remove(self, key: str) -> None:
        """Forget every part of the message `key` (it is in the outbox now)."""
        with self._lock:
            self._conn().execute("DELETE FROM cmt_parts WHERE key = ?", (key,))

    def load(self) -> list[StoredPart]:
        """Every part waiting, oldest first."""
        with self._lock:
            rows = self._conn().execute(
                "SELECT key, seq, pdu, first_seen FROM cmt_parts ORDER BY first_seen, key, seq"
            )
            return [StoredPart(str(k), int(s), str(p), float(t)) for k, s, p, t in rows]

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
