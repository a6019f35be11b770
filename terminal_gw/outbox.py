"""The durable outbox: every record that leaves the device waits here until the broker has it.

SQLite in WAL mode, one connection guarded by a lock and driven through `asyncio.to_thread`.

Choices (each tested):

- Batching: non-sync records wait in an in-memory batch and are inserted and committed
  together when the oldest is `commit_interval_s` old or the batch holds `commit_bytes` or
  `commit_records`, whichever comes first. Each commit of records is fsynced
  (`synchronous=FULL`), so a crash or a power cut loses at most that uncommitted batch. A
  commit writes whole pages (table and index leaves, the sequence row) to the WAL and again
  at the checkpoint, so few large commits spare the SD card: at 10 fixes a second, a commit
  a second wrote 2.9 KB a record (WAL and checkpoint), a commit per 30 s 1.04 KB. A sync record
  (sms, bds, command by default) is committed with everything queued before it before `put`
  returns.
- Live path: `next_batch` also hands out the records of the batch at once, each after the
  committed records of its class, under a temporary seq (negative, growing with arrival)
  that `ack` and `exclude` take like a row's. A record acked before its batch is committed
  is dropped from the batch and never written: while the link keeps up, live records cost
  no SD-card write at all (batching still spares the card while it does not). A record
  committed while in flight maps its temporary seq to its row: its ack deletes the row (an
  ack that lands during the commit, with the next write) and an `exclude` of the temporary
  seq keeps the row back, so it is not handed out twice; from its ack until its delete has
  landed the row is kept back too (the temporary seq is gone from the map by then).
  `next_batch` reads under the write lock: no record is a row and pending within one read.
  A record published and then lost by a crash before its PUBACK and its commit is the loss
  above (the subscriber may have it); a crash after its commit sends it again. Sync records
  are committed before `put` returns, as before. `put` wakes `wait_for_records` at once; it
  reports records that the last `next_batch` did not hand out (new ones, or more than its
  limit), so a caller with records in flight can wait on it too.
- Size bound: the byte count is an estimate kept incrementally, payload + topic + id plus
  `ROW_OVERHEAD` bytes a row (row header, index entry, page slack; within 3% of the file size
  measured by bench/outbox.py), not the file sizes: SQLite files do not shrink when rows go,
  so file sizes cannot tell when room was made. The WAL adds up to about 4 MiB on top.
- Pressure: positions (sky, then fix) are thinned, oldest tiers first (keep one record per
  interval that grows with age, `THIN_TIERS`), then dropped oldest first, then events and
  status oldest first. "Oldest" is arrival order (seq), which a clock jump cannot reorder.
  Messages and command results are never pushed out; a new one that cannot fit is refused
  with `OutboxFullError`. Other classes that cannot fit are dropped and counted.
  Every eviction and refusal is counted and reported as one aggregated event.
- Drain order: priority, FIFO within a class, except that the newest fix and sky (created
  within `live_window_s` and newer than any sent this way) go ahead of their backlog.
- Headroom: the limit the outbox works against is the lower of `max_bytes` and what its rows
  hold plus the room they can still grow into: the database's free pages, and the
  filesystem's free space less `min_free` (and less what the WAL may still grow by), read
  again after every commit and every second. So when another file eats the disk, positions
  are thinned and dropped as for `max_bytes`, and the outbox never fills the filesystem
  itself; below the headroom the files stop growing (new rows reuse freed pages). What is
  stored is not given away: SQLite files do not shrink. On a small filesystem the WAL is
  checkpointed at 1/32 of it and cut back after large transactions, and one round of
  making room deletes at most a few pages' worth of rows.
- Deletes on a full disk: SQLite needs pages to delete. A reserve file
  (`<path>.reserve`, 1/16 of the filesystem, 64 KiB to 1 MiB) is kept beside the database.
  A delete (acks, thinning, age limits) that fails for want of space checkpoints the WAL and
  tries again, then deletes the reserve and tries again; the reserve is made again once the
  filesystem has the room. Acks are written even while inserts fail. Acks that cannot be
  written at all (a disk that another file fills as soon as space comes free, a read-only
  filesystem) go into an ack journal (`<path>.acks`, 64 KiB allocated while there was room,
  rewritten in place); a restart applies it before handing anything out, so what the
  broker acknowledged is never sent again.
- Disk full or read-only: the failing batch stays in memory, bounded by
  `memory_buffer_bytes` (least important dropped first, counted); sync puts raise
  `StoreError` so the source copy is kept; writes are retried every `retry_interval_s` on a
  reopened connection; draining goes on, of the rows and of the records held in memory
  (acked, those leave memory; acks of rows that cannot be written are remembered and
  retried). A filesystem already read-only at start is opened read-only for draining.
  `store_error` says why in the store's own words, `store_cause` as "disk full",
  "read-only" or "I/O error". With nothing to write, a probe write every
  `retry_interval_s` finds the disk back; `on_recovered` callbacks run then (the modem
  collects the messages it had to leave on the SIM).
- Start: `PRAGMA quick_check`; a corrupt file is moved aside and its readable rows are
  copied into a fresh database. Age limits are applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import os
import sqlite3
import struct
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

from terminal_gw.config import OutboxConfig, size_or_percent_bytes
from terminal_gw.errors import OutboxFullError, StoreError
from terminal_gw.models import Event, EventSink, Payload, make_event

CLASS_PRIORITY = {"sms": 0, "bds": 0, "command": 0, "event": 1, "status": 1, "fix": 2, "sky": 3}
SYNC_CLASSES = {"sms", "bds", "command"}
#: Never pushed out by other records; refused (OutboxFullError) when they cannot fit.
MESSAGE_CLASSES = frozenset({"sms", "bds", "command"})
#: Thinned under pressure, least important first.
POSITION_CLASSES = ("sky", "fix")
#: Classes whose newest record goes ahead of their backlog.
LIVE_CLASSES = frozenset({"fix", "sky"})
#: Estimated bytes a row costs beyond its payload, topic and id (measured: bench/outbox.py).
ROW_OVERHEAD = 64
#: Thinning tiers, applied oldest first: records older than `age` keep one per `interval`.
THIN_TIERS: tuple[tuple[float, float], ...] = (
    (30 * 86400.0, 86400.0),
    (7 * 86400.0, 3 * 3600.0),
    (86400.0, 1800.0),
    (6 * 3600.0, 300.0),
    (3600.0, 60.0),
    (600.0, 10.0),
)
SCHEMA_VERSION = 1
#: The reserve file beside the database: this share of the filesystem, within these bounds.
RESERVE_SHARE = 16
RESERVE_MIN = 64 * 1024
RESERVE_MAX = 1024 * 1024
#: Room (bytes) that counts as "room again" after messages were refused for want of disk.
_ROOM_AGAIN = 64 * 1024
#: Under disk pressure, room is made in rounds of at least this much (a few pages).
_DISK_SLACK = 32 * 1024
#: The WAL index (-shm) of a WAL of up to 4096 frames.
_SHM_BYTES = 32 * 1024
#: Acks the journal holds (8 bytes each, the first slot the count): 64 KiB.
_JOURNAL_SLOTS = 8192
#: Rounds of making room one put may take.
_ROOM_ROUNDS = 8
#: Rows fill new pages to about this share (the rest is page headers and slack).
_PAGE_FILL = 0.9
_DROP_CHUNK = 1000
_THIN_SPAN = 2000
_MAX_UNSAVED_ACKS = 20000
#: Seqs of records not yet committed: negative, growing with arrival (never reach 0).
_TMP_BASE = -(2**62)
#: Records remembered as handed out under a temporary seq and not yet acknowledged. Past it
#: the oldest are forgotten (a link that dropped them): a late ack for one of those cannot
#: spare it its write, and once committed it is sent again.
_MAX_HANDED = 4096
_T = TypeVar("_T")
_COLUMNS = "seq, id, cls, topic, payload, created, priority, retain"
# INDEXED BY: with statistics the planner may walk the rowids above the cursor instead, which
# reads the whole table for a class that has no row.
_SELECT_OLDEST = (
    f"SELECT {_COLUMNS} FROM outbox INDEXED BY outbox_class"  # noqa: S608 - constant columns
    " WHERE cls = ? AND seq > ? ORDER BY seq LIMIT ?"
)
_SELECT_NEWEST = f"SELECT {_COLUMNS} FROM outbox WHERE cls = ? ORDER BY seq DESC LIMIT 1"  # noqa: S608 - constant columns
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id BLOB NOT NULL,
    cls TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL,
    priority INTEGER NOT NULL,
    retain INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_class ON outbox (cls);
"""
# One index, (cls) with the rowid: drain order (per class, FIFO), oldest first for eviction,
# age limits (records arrive in time order: a binary search over seq). A second index costs
# about 60 bytes written a record (WAL and checkpoint).
# AUTOINCREMENT: a seq is never reused, so an ack for a record evicted while in flight can
# never delete a newer record that happened to get the same rowid.


@dataclass(frozen=True, slots=True)
class Record:
    """One waiting record, as stored.

    `seq` is the record's place in the outbox as `next_batch` reads it (a row's seq, or a
    temporary negative one for a record not yet committed); in a record from `lease` it is
    the lease key instead: opaque, positive, never reused by this outbox, and the same
    whether the record is a row yet or not.
    """

    seq: int
    id: str
    cls: str
    topic: str
    payload: bytes
    created: float
    priority: int
    retain: bool = False


@dataclass(frozen=True, slots=True)
class ClassStats:
    """What waits in one class."""

    count: int
    bytes: int
    oldest_age_s: float | None


@dataclass(slots=True, eq=False)
class _Pending:
    """A record accepted but not yet committed."""

    id: str
    cls: str
    topic: str
    payload: bytes
    created: float
    priority: int
    retain: bool
    sync: bool
    size: int
    #: Its seq while not committed (negative, growing with arrival); set when accepted.
    tmp: int = 0
    #: Monotonic time it was accepted (the commit timer runs from the oldest one waiting).
    since: float = 0.0
    #: Delivered while its batch was being committed: deleted as soon as the commit lands.
    acked: bool = False


@dataclass(frozen=True, slots=True)
class DiskSpace:
    """What the outbox's filesystem and database have room for (bytes)."""

    free_pages: int  # free pages inside the database file
    wal: int  # the WAL file's size
    free: int  # free on the filesystem (for unprivileged users)
    total: int  # the filesystem's size
    reserve: int  # the reserve file's size (0 when released)
    reserve_want: int  # the size it should have
    read_only: bool = False  # a read-only filesystem (its free space means nothing then)
    files: int = 0  # the database and its WAL


def store_cause(exc: BaseException | str, path: Path | None = None) -> str:
    """A store failure in a few words: "disk full", "read-only", or "I/O error"."""
    code = getattr(exc, "sqlite_errorcode", None)
    base = None if code is None else int(code) & 0xFF
    err = getattr(exc, "errno", None)
    text = str(exc).lower()
    if base == sqlite3.SQLITE_FULL or err == errno.ENOSPC or "full" in text or "no space" in text:
        return "disk full"
    if base == sqlite3.SQLITE_READONLY or err == errno.EROFS or "readonly" in text:
        return "read-only"
    if "read-only" in text:
        return "read-only"
    # An I/O error or a file that cannot be opened: the filesystem tells why, if it can.
    vague = base in (None, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN)
    if path is not None and vague:
        with contextlib.suppress(OSError):
            st = os.statvfs(path.parent)
            if st.f_flag & os.ST_RDONLY:
                return "read-only"
            if st.f_bavail == 0:
                return "disk full"
    return "I/O error"


def _is_full(exc: BaseException) -> bool:
    return store_cause(exc) == "disk full"


def reserve_size(total: int) -> int:
    """Bytes of the reserve file on a filesystem of `total` bytes."""
    return max(RESERVE_MIN, min(RESERVE_MAX, total // RESERVE_SHARE))


def id_to_db(record_id: str) -> str | bytes:
    """A canonical UUID is stored as its 16 bytes (20 fewer a row, written twice: WAL and
    checkpoint); any other id as text."""
    try:
        u = uuid.UUID(record_id)
    except ValueError:
        return record_id
    return u.bytes if str(u) == record_id else record_id


def id_from_db(value: object) -> str:
    """The id as the payload carries it."""
    if isinstance(value, bytes) and len(value) == 16:
        return str(uuid.UUID(bytes=value))
    return str(value)


def record_size(topic: str, payload: bytes, record_id: str) -> int:
    """The bytes a record is counted for against `max_bytes`."""
    return len(payload) + len(topic.encode()) + len(record_id) + ROW_OVERHEAD


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, NORMAL sync."""
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA busy_timeout = 5000")
        return conn
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=5)
    conn.execute("PRAGMA busy_timeout = 5000")
    try:
        _use_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
        # Keep the WAL file from staying at its high-water mark after a checkpoint.
        conn.execute("PRAGMA journal_size_limit = 4194304")
    except BaseException:
        conn.close()
        raise
    return conn


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back when a transaction is still open. SQLite rolls back by itself after some
    failures (disk full among them); a ROLLBACK then would fail and hide the real error."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _use_wal(conn: sqlite3.Connection) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise sqlite3.OperationalError(f"cannot switch to WAL mode (got {mode})")


def check_database(path: Path, *, unreadable_is_damage: bool = True) -> str | None:
    """None when `path` is a sound outbox database, else why it is not (quick_check's words).

    A file that cannot be opened at all (permissions, a read-only folder without the WAL index,
    an I/O error) is not called damaged when `unreadable_is_damage` is false: moving it aside
    would not help, and may not be possible.
    """
    try:
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=5)
    except sqlite3.Error as exc:
        return str(exc) if unreadable_is_damage else None
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
        problems = [str(r[0]) for r in rows if str(r[0]) != "ok"]
        if problems:
            return "; ".join(problems[:5])
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "outbox" not in tables:
            return "not an outbox database (no outbox table)"
    except sqlite3.OperationalError as exc:
        if unreadable_is_damage:
            return str(exc)
    except sqlite3.Error as exc:
        return str(exc)
    finally:
        conn.close()
    return None


def iter_salvage(path: Path) -> Iterator[tuple[Any, ...]]:
    """Readable rows of a damaged outbox, in seq order; damaged stretches are skipped."""
    try:
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=5)
    except sqlite3.Error:
        return
    try:
        top: int | None = None
        with contextlib.suppress(sqlite3.Error):
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
            top = int(row[0]) if row else None
        last = 0
        step = 1
        failures = 0
        while failures < 64 and (top is None or last < top):
            try:
                cur = conn.execute(
                    "SELECT seq, id, cls, topic, payload, created, priority, retain FROM outbox"
                    " WHERE seq > ? ORDER BY seq",
                    (last,),
                )
                for row in cur:
                    last = int(row[0]) if isinstance(row[0], int) else last + 1
                    step = 1
                    failures = 0
                    yield row
            except sqlite3.Error:
                # A damaged page: jump ahead, further each time it fails again.
                failures += 1
                last += step
                step *= 2
            else:
                return
    finally:
        conn.close()


def _valid_row(row: tuple[Any, ...]) -> _Pending | None:
    """A salvaged row as a record, or None when its fields are garbage."""
    try:
        _seq, rid, cls, topic, payload, created, _priority, retain = row
    except ValueError:
        return None
    if not (isinstance(rid, (str, bytes)) and isinstance(topic, str) and cls in CLASS_PRIORITY):
        return None
    rid = id_from_db(rid)
    if isinstance(payload, str):
        payload = payload.encode()
    if not isinstance(payload, bytes) or not isinstance(created, (int, float)):
        return None
    return _Pending(
        id=rid,
        cls=cls,
        topic=topic,
        payload=payload,
        created=float(created),
        priority=CLASS_PRIORITY[cls],
        retain=bool(retain),
        sync=False,
        size=record_size(topic, payload, rid),
    )


def _as_record(rec: _Pending) -> Record:
    """A pending record as handed out: its temporary (negative) seq."""
    return Record(
        seq=rec.tmp,
        id=rec.id,
        cls=rec.cls,
        topic=rec.topic,
        payload=rec.payload,
        created=rec.created,
        priority=rec.priority,
        retain=rec.retain,
    )


class _Db:
    """The sqlite side: every method runs in a worker thread, under one lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reserve_path = path.with_name(path.name + ".reserve")
        self.lock = threading.Lock()
        self.conn: sqlite3.Connection | None = None
        self.writable = False
        #: The WAL is checkpointed at this many pages (fewer on a small filesystem).
        self.checkpoint_pages = 1000
        self.page_size = 4096
        self.thin_span = _THIN_SPAN
        #: Rows one ack transaction deletes at most.
        self.ack_chunk = 5000
        #: Rows one round of make_room deletes at most (None: as many as needed).
        self.max_deletes: int | None = None
        #: Times the reserve file was deleted to let a delete through.
        self.reserve_released = 0
        # Per (class, thinning interval): records below this seq are already thinned.
        self.thinned_upto: dict[tuple[str, float], int] = {}

    def _c(self) -> sqlite3.Connection:
        if self.conn is None:
            raise sqlite3.OperationalError("the outbox database could not be opened")
        return self.conn

    def _w(self) -> sqlite3.Connection:
        """The connection for a write; reopened first when the last write failed, because a
        connection SQLite opened read-only (read-only filesystem) stays read-only."""
        if not self.writable:
            try:
                self._open_rw()
            except BaseException:
                self._open_ro()  # keep draining what is stored
                raise
        return self._c()

    def open(self) -> dict[str, Any]:
        """Check, salvage when needed, create the schema; return what was found.

        When the database cannot be written (read-only filesystem, no space), it is opened
        read-only so that what is stored can still be drained; `info["unwritable"]` says why.
        """
        with self.lock:
            info: dict[str, Any] = {}
            if self.path.exists():
                reason = check_database(self.path, unreadable_is_damage=False)
                if reason is not None:
                    info["corrupt"] = reason
                    try:
                        info["moved_to"] = str(self._move_aside())
                    except OSError as exc:
                        info["unwritable"] = f"cannot move the damaged database aside: {exc}"
                        return self._found(info)
            try:
                self._open_rw()
            except (sqlite3.Error, OSError) as exc:
                info["unwritable"] = str(exc)
                self._open_ro()
                return self._found(info)
            if "moved_to" in info:
                info["salvaged"] = self._salvage(Path(info["moved_to"]))
            return self._found(info)

    def _found(self, info: dict[str, Any]) -> dict[str, Any]:
        info["counts"] = self._counts() if self.conn is not None else {}
        info["oldest"] = self._oldest() if self.conn is not None else {}
        return info

    def _open_rw(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
            self.conn = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(self.path)
        try:
            conn.executescript(_SCHEMA)
            if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            # On a small filesystem the WAL must not grow to its default 4 MiB before a
            # checkpoint: 1/32 of the filesystem, at least 16 pages.
            page = int(conn.execute("PRAGMA page_size").fetchone()[0])
            self.page_size = page
            with contextlib.suppress(OSError):
                st = os.statvfs(self.path.parent)
                total = st.f_blocks * st.f_frsize
                self.checkpoint_pages = max(16, min(1000, total // 32 // page))
            # On a small filesystem one round of making room touches about a checkpoint's
            # worth of pages (a class interleaved with others has a row in every page).
            if self.checkpoint_pages < 1000:
                self.thin_span = max(32, self.checkpoint_pages * 2)
                self.max_deletes = self.checkpoint_pages * 2
                self.ack_chunk = self.checkpoint_pages * 8
            conn.execute(f"PRAGMA wal_autocheckpoint = {self.checkpoint_pages}")
            # A WAL that one large transaction grew is cut back after the next checkpoint.
            wal_limit = min(4 * 1024 * 1024, 2 * self.checkpoint_pages * page)
            conn.execute(f"PRAGMA journal_size_limit = {wal_limit}")
        except BaseException:
            conn.close()
            raise
        self.conn = conn
        self.writable = True

    def _open_ro(self) -> None:
        """A read-only connection for draining; immutable when SQLite cannot even create
        its WAL index (a read-only filesystem after a clean shutdown has no WAL to miss)."""
        self.conn = None
        self.writable = False
        if not self.path.exists():
            return
        for query in ("mode=ro", "immutable=1"):
            conn: sqlite3.Connection | None = None
            try:
                conn = sqlite3.connect(
                    f"file:{self.path}?{query}",
                    uri=True,
                    isolation_level=None,
                    check_same_thread=False,
                )
                conn.execute("SELECT 1 FROM outbox LIMIT 1").fetchall()
            except sqlite3.Error:
                if conn is not None:
                    conn.close()
                continue
            self.conn = conn
            return

    @contextlib.contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT; on any failure roll back, and reopen the connection
        before the next write."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.writable = False
            raise
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            self.writable = False
            _rollback(conn)
            raise

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        os.replace(self.path, target)
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                # The WAL goes with its database so the salvage reads committed rows from it.
                os.replace(side, target.with_name(target.name + suffix))
        return target

    def _salvage(self, source: Path) -> int:
        conn = self._c()
        saved = 0
        conn.execute("BEGIN")
        try:
            for row in iter_salvage(source):
                rec = _valid_row(row)
                if rec is None:
                    continue
                conn.execute(
                    "INSERT INTO outbox (seq, id, cls, topic, payload, created, priority,"
                    " retain, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        row[0] if isinstance(row[0], int) else None,
                        id_to_db(rec.id),
                        rec.cls,
                        rec.topic,
                        rec.payload,
                        rec.created,
                        rec.priority,
                        int(rec.retain),
                        rec.size,
                    ),
                )
                saved += 1
            conn.execute("COMMIT")
        except sqlite3.Error:
            _rollback(conn)
            raise
        return saved

    def _counts(self) -> dict[str, tuple[int, int]]:
        rows = self._c().execute("SELECT cls, COUNT(*), SUM(size) FROM outbox GROUP BY cls")
        return {str(c): (int(n), int(b or 0)) for c, n, b in rows}

    def close(self) -> None:
        with self.lock:
            if self.conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("PRAGMA optimize")
                self.conn.close()
                self.conn = None

    def insert(
        self, batch: list[_Pending], sync: bool, acks: Collection[int]
    ) -> tuple[Counter[str], Counter[str], dict[str, float], Counter[str], Counter[str], list[int]]:
        """Insert and commit `batch` (and delete remembered acks); return, among the counts,
        the seqs the batch got, in its order. Raise sqlite3 errors."""
        with self.lock:
            conn = self._w()
            if sync:
                conn.execute("PRAGMA synchronous = FULL")
            try:
                with self._transaction(conn):
                    conn.executemany(
                        "INSERT INTO outbox (id, cls, topic, payload, created, priority, retain,"
                        " size) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [
                            (
                                id_to_db(r.id),
                                r.cls,
                                r.topic,
                                r.payload,
                                r.created,
                                r.priority,
                                int(r.retain),
                                r.size,
                            )
                            for r in batch
                        ],
                    )
                    # One statement by one writer: the batch got consecutive seqs ending here.
                    last = int(conn.execute("SELECT last_insert_rowid()").fetchone()[0])
                    gone_n, gone_b = self._delete(acks)
            finally:
                if sync:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("PRAGMA synchronous = NORMAL")
            n: Counter[str] = Counter()
            b: Counter[str] = Counter()
            for r in batch:
                n[r.cls] += 1
                b[r.cls] += r.size
            seqs = list(range(last - len(batch) + 1, last + 1)) if batch else []
            return n, b, self._oldest(), gone_n, gone_b, seqs

    def _delete(self, seqs: Collection[int]) -> tuple[Counter[str], Counter[str]]:
        conn = self._c()
        n: Counter[str] = Counter()
        b: Counter[str] = Counter()
        seq_list = list(seqs)
        for i in range(0, len(seq_list), 500):
            chunk = seq_list[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for cls, size in conn.execute(
                f"DELETE FROM outbox WHERE seq IN ({marks}) RETURNING cls, size",  # noqa: S608 - only placeholders
                chunk,
            ).fetchall():
                n[cls] += 1
                b[cls] += size
        return n, b

    def ack(
        self, seqs: Collection[int]
    ) -> tuple[Counter[str], Counter[str], dict[str, float], set[int], BaseException | None]:
        """Delete delivered records (on a full disk too: see `_freeing`), in transactions of
        at most `ack_chunk` rows (a transaction too large for the WAL room left would fail
        every time). Returns the counts deleted, and the seqs not deleted with the error."""
        with self.lock:
            n: Counter[str] = Counter()
            b: Counter[str] = Counter()
            todo = sorted(seqs)
            while todo:
                chunk = todo[: self.ack_chunk]

                def delete(chunk: list[int] = chunk) -> tuple[Counter[str], Counter[str]]:
                    conn = self._w()
                    with self._transaction(conn):
                        return self._delete(chunk)

                try:
                    cn, cb = self._freeing(delete)
                except (sqlite3.Error, OSError) as exc:
                    return n, b, self._oldest_or_empty(), set(todo), exc
                n.update(cn)
                b.update(cb)
                todo = todo[len(chunk) :]
            return n, b, self._oldest(), set(), None

    def _oldest_or_empty(self) -> dict[str, float]:
        try:
            return self._oldest()
        except sqlite3.Error:
            return {}

    def _freeing(self, delete: Callable[[], _T]) -> _T:
        """Run a transaction that frees rows; when it fails for want of space, checkpoint the
        WAL (its next writes then reuse the file from its start) and try again, then delete
        the reserve file and try again. Called under the lock."""
        try:
            return delete()
        except sqlite3.OperationalError as exc:
            if not _is_full(exc):
                raise
        with contextlib.suppress(sqlite3.Error):
            self._w().execute("PRAGMA wal_checkpoint(RESTART)")
        try:
            return delete()
        except sqlite3.OperationalError as exc:
            if not _is_full(exc) or not self.reserve_path.exists():
                raise
        with contextlib.suppress(OSError):
            self.reserve_path.unlink()
            self.reserve_released += 1
        return delete()

    def space(self, min_free: int | str) -> DiskSpace | None:
        """The room there is, and the reserve file made again when the filesystem has room
        for it beyond `min_free`. None when it cannot be read."""
        with self.lock:
            # Without a usable connection (the store failing) the filesystem still tells.
            page, free_pages = self.page_size, 0
            if self.conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    page = int(self.conn.execute("PRAGMA page_size").fetchone()[0])
                    free_pages = int(self.conn.execute("PRAGMA freelist_count").fetchone()[0])
            try:
                st = os.statvfs(self.path.parent)
            except OSError:
                return None
            wal = 0
            with contextlib.suppress(OSError):
                wal = os.stat(self.path.with_name(self.path.name + "-wal")).st_size
            total = st.f_blocks * st.f_frsize
            free = st.f_bavail * st.f_frsize
            want = reserve_size(total)
            have = 0
            with contextlib.suppress(OSError):
                have = os.stat(self.reserve_path).st_size
            if have < want and self.writable and not st.f_flag & os.ST_RDONLY:
                reserve_min_free = size_or_percent_bytes(min_free, total)
                if free - (want - have) >= reserve_min_free:
                    have = self._make_reserve(want)
                    with contextlib.suppress(OSError):
                        st = os.statvfs(self.path.parent)
                        free = st.f_bavail * st.f_frsize
            read_only = bool(st.f_flag & os.ST_RDONLY)
            files = wal
            with contextlib.suppress(OSError):
                files += os.stat(self.path).st_size
            return DiskSpace(free_pages * page, wal, free, total, have, want, read_only, files)

    def _make_reserve(self, size: int) -> int:
        """Allocate the reserve file (real blocks, not a sparse file); its size, 0 on failure."""
        try:
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError:
            return 0
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                self.reserve_path.unlink()
            return 0
        finally:
            os.close(fd)
        return size

    def existing(self, seqs: Collection[int]) -> set[int]:
        """Which of `seqs` are rows."""
        with self.lock:
            conn = self._c()
            found: set[int] = set()
            seq_list = list(seqs)
            for i in range(0, len(seq_list), 500):
                chunk = seq_list[i : i + 500]
                marks = ",".join("?" * len(chunk))
                found |= {
                    int(r[0])
                    for r in conn.execute(
                        f"SELECT seq FROM outbox WHERE seq IN ({marks})",  # noqa: S608 - only placeholders
                        chunk,
                    )
                }
            return found

    def probe(self) -> None:
        """A small write (the schema version) to see whether the disk takes writes again;
        raise sqlite3 errors."""
        conn = self._w()
        with self._transaction(conn):
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _oldest(self) -> dict[str, float]:
        """Per class, when its first-arrived waiting record was created."""
        conn = self._c()
        oldest: dict[str, float] = {}
        for cls in CLASS_PRIORITY:
            row = conn.execute(
                "SELECT created FROM outbox WHERE cls = ? ORDER BY seq LIMIT 1", (cls,)
            ).fetchone()
            if row is not None:
                oldest[cls] = float(row[0])
        return oldest

    def _first_at_or_after(self, cls: str, seq: int) -> tuple[int, float] | None:
        row = (
            self._c()
            .execute(
                "SELECT seq, created FROM outbox WHERE cls = ? AND seq >= ? ORDER BY seq LIMIT 1",
                (cls, seq),
            )
            .fetchone()
        )
        return None if row is None else (int(row[0]), float(row[1]))

    def _boundary(self, cls: str, cut: float) -> int:
        """The seq before which the records of `cls` were created before `cut`.

        Records arrive in time order, so a binary search over seq on the (cls) index finds it
        in a few lookups; a clock that jumped only makes the boundary approximate.
        """
        first = self._first_at_or_after(cls, 0)
        if first is None or first[1] >= cut:
            return 0
        row = (
            self._c()
            .execute(
                "SELECT seq, created FROM outbox WHERE cls = ? ORDER BY seq DESC LIMIT 1", (cls,)
            )
            .fetchone()
        )
        if float(row[1]) < cut:
            return int(row[0]) + 1
        lo, hi = first[0] + 1, int(row[0])  # the answer is in [lo, hi]
        while lo < hi:
            mid = (lo + hi) // 2
            found = self._first_at_or_after(cls, mid)
            if found is not None and found[1] >= cut:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _bucket_start(self, cls: str, seq: int, interval: float) -> int:
        """The first seq of the thinning interval that the record at `seq` falls in."""
        found = self._first_at_or_after(cls, seq)
        if found is None:
            return seq
        return self._boundary(cls, (found[1] // interval) * interval)

    def next_batch(  # noqa: PLR0917 - the read and its five filters
        self,
        limit: int,
        skip: Collection[int],
        marks: dict[str, int],
        live_after: float,
        newest_pending: Collection[str] = (),
        after: Mapping[str, int] | None = None,
        classes: Collection[str] | None = None,
    ) -> tuple[list[Record], set[int], dict[str, list[int]]]:
        """The next `limit` committed records in drain order, the seqs that went ahead as
        live, and per class the skipped seqs the scan passed over. Classes in
        `newest_pending` have a newer record not yet committed: none of their committed
        records goes ahead. `after` (per class) starts the scan above a seq below which
        every row is known to be skipped."""
        after = after or {}
        with self.lock:
            conn = self._c()
            picked: list[tuple[Any, ...]] = []
            live: set[int] = set()
            passed: dict[str, list[int]] = {}
            for prio in sorted(set(CLASS_PRIORITY.values())):
                if len(picked) >= limit:
                    break
                level: list[tuple[Any, ...]] = []
                for cls in (c for c, p in CLASS_PRIORITY.items() if p == prio):
                    if classes is not None and cls not in classes:
                        continue
                    start = after.get(cls, 0)
                    ahead = sum(1 for s in skip if s > start)
                    rows = conn.execute(_SELECT_OLDEST, (cls, start, limit + ahead)).fetchall()
                    passed[cls] = [r[0] for r in rows if r[0] in skip]
                    level += [r for r in rows if r[0] not in skip]
                    if cls in LIVE_CLASSES and cls not in newest_pending:
                        row = conn.execute(_SELECT_NEWEST, (cls,)).fetchone()
                        if (
                            row is not None
                            and row[0] not in skip
                            and row[0] > marks.get(cls, 0)
                            and row[5] >= live_after
                        ):
                            live.add(row[0])
                            level = [row] + [r for r in level if r[0] != row[0]]
                level.sort(key=lambda r: (r[0] not in live, r[0]))
                picked += level
        records = [
            Record(
                seq=r[0],
                id=id_from_db(r[1]),
                cls=r[2],
                topic=r[3],
                payload=bytes(r[4]),
                created=r[5],
                priority=r[6],
                retain=bool(r[7]),
            )
            for r in picked[:limit]
        ]
        return records, {r.seq for r in records if r.seq in live}, passed

    def expire(
        self, limits: dict[str, float], now: float
    ) -> tuple[Counter[str], Counter[str], dict[str, float]]:
        """Delete records older than their class's age limit."""
        with self.lock:

            def attempt() -> tuple[Counter[str], Counter[str]]:
                conn = self._w()
                n: Counter[str] = Counter()
                b: Counter[str] = Counter()
                with self._transaction(conn):
                    for cls, max_age in limits.items():
                        end = self._boundary(cls, now - max_age)
                        if end == 0:
                            continue
                        count, size = conn.execute(
                            "SELECT COUNT(*), SUM(size) FROM outbox WHERE cls = ? AND seq < ?",
                            (cls, end),
                        ).fetchone()
                        if not count:
                            continue
                        conn.execute("DELETE FROM outbox WHERE cls = ? AND seq < ?", (cls, end))
                        n[cls] += int(count)
                        b[cls] += int(size or 0)
                return n, b

            n, b = self._freeing(attempt)
            return n, b, self._oldest()

    def make_room(
        self, need: int, classes: tuple[str, ...], now: float
    ) -> tuple[Counter[tuple[str, str]], Counter[str], Counter[str], dict[str, float]]:
        """Free at least `need` bytes from `classes`: thin positions, then drop oldest first."""
        with self.lock:
            why, n, b = self._freeing(lambda: self._make_room(need, classes, now))
            return why, n, b, self._oldest()

    def _make_room(
        self, need: int, classes: tuple[str, ...], now: float
    ) -> tuple[Counter[tuple[str, str]], Counter[str], Counter[str]]:
        conn = self._w()
        why: Counter[tuple[str, str]] = Counter()
        n: Counter[str] = Counter()
        b: Counter[str] = Counter()
        freed = 0

        def take(rows: Iterable[tuple[str, int]], reason: str) -> None:
            nonlocal freed
            for cls, size in rows:
                why[(cls, reason)] += 1
                n[cls] += 1
                b[cls] += size
                freed += size

        cap = self.max_deletes

        def capped() -> bool:
            return cap is not None and sum(n.values()) >= cap

        # Thinning progress counts only once its deletes are committed.
        progress = dict(self.thinned_upto)
        with self._transaction(conn):
            positions = [c for c in POSITION_CLASSES if c in classes]
            for age, interval in THIN_TIERS:
                for cls in positions:
                    end = self._boundary(cls, now - age)
                    start = self._first_at_or_after(cls, 0)
                    seq = 0 if start is None else start[0]
                    # What an earlier round thinned at this interval needs no second pass
                    # (from the start of the interval it stopped in, so that one keeps one).
                    done = progress.get((cls, interval), 0)
                    if done > seq:
                        seq = max(seq, self._bucket_start(cls, done, interval))
                    # In spans of _THIN_SPAN rows (cut where an interval starts), oldest
                    # first, so that it stops as soon as enough is free and no statement
                    # returns a million rows at once.
                    while seq < end and freed < need and not capped():
                        nxt = conn.execute(
                            "SELECT seq FROM outbox WHERE cls = ? AND seq >= ? ORDER BY seq"
                            " LIMIT 1 OFFSET ?",
                            (cls, seq, self.thin_span),
                        ).fetchone()
                        stop = end
                        if nxt is not None and int(nxt[0]) < end:
                            cut = self._bucket_start(cls, int(nxt[0]), interval)
                            stop = cut if cut > seq else int(nxt[0])
                        take(
                            conn.execute(
                                "DELETE FROM outbox WHERE cls = :c AND seq >= :a AND seq < :z"
                                " AND seq NOT IN (SELECT MIN(seq) FROM outbox WHERE cls = :c"
                                " AND seq >= :a AND seq < :z"
                                " GROUP BY CAST(created / :i AS INTEGER)) RETURNING cls, size",
                                {"c": cls, "a": seq, "z": stop, "i": interval},
                            ),
                            "thinned",
                        )
                        seq = stop
                        progress[(cls, interval)] = stop
            droppable = positions + [c for c in classes if c not in POSITION_CLASSES]
            for cls in droppable:
                while freed < need and not capped():
                    oldest = conn.execute(
                        "SELECT seq, size FROM outbox WHERE cls = ? ORDER BY seq LIMIT ?",
                        (cls, _DROP_CHUNK),
                    ).fetchall()
                    if not oldest:
                        break
                    # Drop only as many as needed, oldest first.
                    victims: list[int] = []
                    room = freed
                    for seq, size in oldest:
                        if room >= need or (
                            cap is not None and sum(n.values()) + len(victims) >= cap
                        ):
                            break
                        victims.append(seq)
                        room += size
                    gone_n, gone_b = self._delete(victims)
                    for c, k in gone_n.items():
                        why[(c, "dropped")] += k
                        n[c] += k
                    for c, size in gone_b.items():
                        b[c] += size
                        freed += size
        self.thinned_upto = progress
        return why, n, b


class Outbox:
    """The durable store-and-forward queue between the stages and the uplink."""

    def __init__(
        self,
        config: OutboxConfig,
        *,
        events: EventSink | None = None,
        clock: Callable[[], float] = time.time,
        log: structlog.typing.FilteringBoundLogger | None = None,
        event_topic: str | None = None,
    ) -> None:
        self._config = config
        self._events = events
        # Without a sink, the outbox queues its own events on this topic (if given).
        self._event_topic = event_topic
        self._clock = clock
        self._log = log or structlog.get_logger("outbox")
        self._db = _Db(Path(config.path))
        self._journal_path = Path(config.path).with_name(Path(config.path).name + ".acks")
        self._open = False
        # Committed rows, per class; kept incrementally so depth and quotas need no query.
        self._count: Counter[str] = Counter()
        self._bytes: Counter[str] = Counter()
        self._oldest: dict[str, float] = {}
        # Accepted, not yet committed (the batch; also the buffer while the disk fails).
        self._pending: list[_Pending] = []
        self._pending_bytes = 0
        self._pending_since: float | None = None  # monotonic time of the oldest pending
        self._committing: set[int] = set()  # id() of the pending records being committed
        self._next_tmp = _TMP_BASE
        # Handed out under a temporary seq, not yet acknowledged: the record while pending,
        # its row's seq once committed (so that its ack deletes the row and an `exclude` of
        # the temporary seq keeps the row back).
        self._handed: dict[int, _Pending | int] = {}
        self._write_lock = asyncio.Lock()
        # Records arrived that no next_batch has handed out yet (wakes wait_for_records).
        self._fresh = True
        self._arrived = asyncio.Event()
        self._wake = asyncio.Event()
        # Delivered but not yet deleted (the disk refused the delete); retried with the next write.
        self._acked: set[int] = set()
        # Rows whose delete (an ack) is under way in a thread: a read meanwhile must not hand
        # them out again (their temporary seqs have already left `_handed`).
        self._deleting: set[int] = set()
        # The drain's read cursor: per class, a seq at or below which every row is in
        # `_cursor_rows` (handed out or passed over as skipped), so a read starts above it
        # instead of fetching again every row in flight. Reset as soon as one of those rows
        # is neither skipped nor deleted any more (released by a reconnect, or unknown).
        self._cursor: dict[str, int] = {}
        self._cursor_rows: set[int] = set()
        self._live_marks: dict[str, int] = {}
        # Leases (the drain's records in hand): key -> the record's seq in `next_batch` terms,
        # and back. A leased record is not handed out again until it is acked or released.
        self._leases: dict[int, int] = {}
        self._leased: dict[int, int] = {}
        self._next_key = 1
        self._live_tmp_marks: dict[str, int] = {}  # the same for records sent before commit
        #: Records delivered before their batch was committed: never written to disk.
        self.delivered_unwritten = 0
        #: Batches of records committed (each one an fsync of the WAL).
        self.commits = 0
        # Disk trouble: the reason, since when, and when to try again.
        self._store_error: str | None = None
        self._store_cause: str | None = None
        self._recovered_callbacks: list[Callable[[], None]] = []
        # The room on disk, read after commits and every second; None until first read.
        self._space: DiskSpace | None = None
        self._disk_limit: int | None = None
        self._files: int | None = None  # the database and WAL sizes when last read
        self._overshoot = 0  # what they grew by below the headroom
        # Messages were refused because the disk had no room: listeners wait for room.
        self._disk_refused = False
        self._retry_at = 0.0
        self._buffer_dropped: Counter[str] = Counter()
        # Evictions and refusals waiting to be reported.
        self._evicted: Counter[tuple[str, str]] = Counter()
        self._refused: Counter[str] = Counter()
        self._last_report = -float("inf")
        self._next_expire = 0.0

    # ---- life cycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Check the database (salvage a corrupt one), create the schema, load the counts."""
        info = await asyncio.to_thread(self._db.open)
        self._open = True
        if "unwritable" in info:
            self._store_failed(sqlite3.OperationalError(info["unwritable"]))
        for cls, (n, b) in info["counts"].items():
            self._count[cls] = n
            self._bytes[cls] = b
        self._oldest = info["oldest"]
        journal = self._read_journal()
        if journal:
            # Acks the last run could not write: those rows are not handed out again.
            try:
                found = await asyncio.to_thread(self._db.existing, journal)
            except sqlite3.Error:
                found = journal  # cannot tell which are rows: keep them all out
            self._log.info("outbox applies acks from its journal", count=len(found))
            self._acked |= found
            if found and self._store_cause != "read-only":
                await self._delete(set(found), remember=False)
            if not self._acked:
                self._journal_acks()
        await self._refresh_space()
        if "corrupt" in info:
            self._log.error(
                "outbox corrupt",
                reason=info["corrupt"],
                moved_to=info["moved_to"],
                salvaged=info.get("salvaged", 0),
            )
            self._emit(
                make_event(
                    "store",
                    f"the outbox database was damaged ({info['corrupt']}); moved aside to"
                    f" {info['moved_to']}, {info.get('salvaged', 0)} records salvaged",
                    now=self._clock(),
                    severity="error",
                    reason=info["corrupt"],
                    moved_to=info["moved_to"],
                    salvaged=info.get("salvaged", 0),
                )
            )
        try:
            await self.expire()
        except StoreError as exc:
            self._log.warning("outbox cannot expire old records", reason=str(exc))

    async def close(self) -> None:
        """Commit what is pending (when the disk lets us), report, close."""
        if not self._open:
            return
        self._report(force=True)
        with contextlib.suppress(StoreError):
            await self.flush()
        if self._pending:
            self._log.error("outbox closed with unwritten records", count=len(self._pending))
        self._open = False
        await asyncio.to_thread(self._db.close)

    async def __aenter__(self) -> Outbox:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def run(self, on_progress: Callable[[], None] | None = None) -> None:
        """Background duties (a long-lived stage): timed commits, retries, age limits, reports.

        `on_progress` is called after each round of duties (at least once a second): a
        round that never ends, such as a write stuck on a dying SD card, stops the calls,
        and the supervisor's watchdog sees the stage stalled.
        """
        while True:
            now = time.monotonic()
            due = self._next_due(now)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, due - now)):
                    await self._wake.wait()
            self._wake.clear()
            await self._duties()
            if on_progress is not None:
                on_progress()

    def _next_due(self, now: float) -> float:
        due = now + min(self._config.commit_interval_s, 1.0)
        if self._pending_since is not None:
            due = min(due, self._pending_since + self._config.commit_interval_s)
        return due

    async def _duties(self) -> None:
        now = time.monotonic()
        await self._refresh_space()
        if self._store_error is not None and now >= self._retry_at:
            # Make room first when the disk shrank under what is held, then write it; with
            # nothing to write, a probe write tells whether the disk is back.
            await self._relieve()
            if not self._pending and not self._acked:
                await self._probe()
        # While the disk fails, remembered acks alone are also a reason to try again.
        writes_due = (self._pending or self._acked) and self._flush_due(now)
        if writes_due or (self._acked and self._store_error is None):
            with contextlib.suppress(StoreError):
                await self.flush()
        self._check_disk_room()
        if now >= self._next_expire:
            self._next_expire = now + 60.0
            with contextlib.suppress(StoreError):
                await self.expire()
        self._report()

    def _checkpoint_bytes(self) -> int:
        return self._db.checkpoint_pages * self._db.page_size

    def _flush_due(self, now: float) -> bool:
        if self._store_error is not None:
            return now >= self._retry_at
        return (
            len(self._pending) >= self._config.commit_records
            or self._pending_bytes >= self._config.commit_bytes
            # A commit stays well under the WAL's checkpoint size (a small filesystem).
            or self._pending_bytes * 2 >= self._checkpoint_bytes()
        ) or (
            self._pending_since is not None
            and now - self._pending_since >= self._config.commit_interval_s
        )

    # ---- writing ----------------------------------------------------------------------

    async def put(
        self, topic: str, payload: Payload, *, retain: bool = False, sync: bool | None = None
    ) -> None:
        """Accept a record; with sync, return only once it is committed with synchronous=FULL."""
        if not self._open:
            raise StoreError("the outbox is not open", reason="closed")
        cls = payload.record_class
        if cls not in CLASS_PRIORITY:
            raise StoreError(f"unknown record class {cls!r}", reason="class")
        if sync is None:
            sync = cls in SYNC_CLASSES
        data = payload.to_json().encode()
        rec = _Pending(
            id=payload.id,
            cls=cls,
            topic=topic,
            payload=data,
            created=self._clock(),
            priority=CLASS_PRIORITY[cls],
            retain=retain,
            sync=sync,
            size=record_size(topic, data, payload.id),
        )
        if self._total_bytes() + rec.size > self._limit() and not await self._room_for(rec):
            return
        if sync:
            await self._put_sync(rec)
            return
        self._append(rec)
        if self._store_error is not None:
            self._bound_buffer()
        if self._flush_due(time.monotonic()):
            with contextlib.suppress(StoreError):
                await self.flush()
        else:
            self._wake.set()

    async def _put_sync(self, rec: _Pending) -> None:
        async with self._write_lock:
            self._append(rec)
            try:
                await self._commit_locked(sync=True)
            except StoreError:
                # The caller keeps its source copy; the record must not linger in memory.
                with contextlib.suppress(ValueError):
                    self._pending.remove(rec)
                    self._pending_bytes -= rec.size
                if not self._pending:
                    self._pending_since = None
                raise

    def _append(self, rec: _Pending) -> None:
        now = time.monotonic()
        if not self._pending:
            self._pending_since = now
        rec.tmp = self._next_tmp
        self._next_tmp += 1
        rec.since = now
        self._pending.append(rec)
        self._pending_bytes += rec.size
        self._fresh = True
        self._arrived.set()

    def _forget_pending(self, rec: _Pending) -> None:
        """A pending record was delivered before its commit: it never needs writing."""
        try:
            self._pending.remove(rec)
        except ValueError:
            return  # dropped from the memory buffer meanwhile
        self._pending_bytes -= rec.size
        self._pending_since = self._pending[0].since if self._pending else None
        self.delivered_unwritten += 1

    async def flush(self) -> None:
        """Commit the pending batch now; raise StoreError when the disk refuses."""
        async with self._write_lock:
            await self._commit_locked(sync=any(r.sync for r in self._pending))

    async def _commit_locked(self, *, sync: bool) -> None:
        if not self._pending and not self._acked:
            return
        batch = list(self._pending)
        # Acks go with the insert when few; many are deleted after it, in chunks.
        chunked = len(self._acked) > self._db.ack_chunk
        acks = set() if chunked else set(self._acked)
        self._committing = {id(r) for r in batch}
        # The insert runs on in its thread whatever happens to this task: a cancel (a stop)
        # waits for it and accounts for it first, else the batch would still look pending
        # and be written a second time by the close.
        # Every commit of records is fsynced (synchronous=FULL): a power cut loses at most
        # the batch not yet committed. Batches are large (see `_flush_due`), so that costs
        # one sync every `commit_interval_s` or `commit_bytes`; a commit of acks alone is not
        # synced (a lost ack means a record sent again, never one lost).
        durable = sync or bool(batch)
        work = asyncio.ensure_future(asyncio.to_thread(self._db.insert, batch, durable, acks))
        cancelled = False
        while not work.done():
            try:
                await asyncio.wait({work})
            except asyncio.CancelledError:
                cancelled = True
        try:
            await self._after_insert(work, batch, acks, chunked=chunked)
        except StoreError:
            if not cancelled:
                raise
        if cancelled:
            raise asyncio.CancelledError  # accounted for: now the stop goes on

    async def _after_insert(
        self,
        work: asyncio.Future[tuple[Any, ...]],
        batch: list[_Pending],
        acks: set[int],
        *,
        chunked: bool,
    ) -> None:
        """Account for a finished insert: the committed records leave the batch; or, when it
        failed, the failure is recorded and raised as StoreError."""
        try:
            n, b, oldest, gone_n, gone_b, seqs = work.result()
        except (sqlite3.Error, OSError) as exc:
            self._committing = set()
            # Delivered while the write was tried: nothing left to write for them.
            for r in batch:
                if r.acked:
                    self._forget_pending(r)
            self._store_failed(exc)
            if acks and self._store_cause != "read-only":
                # Deletes can go through where inserts cannot (the reserve file): the broker
                # has these, and a restart must not send them again.
                await self._delete(acks, remember=False)
            cause = self._store_cause or "I/O error"
            raise StoreError(f"the outbox cannot write ({cause}): {exc}", reason=cause) from exc
        # Puts may have appended meanwhile: remove exactly the committed ones.
        written = self._committing
        self._committing = set()
        self._pending = [r for r in self._pending if id(r) not in written]
        self._pending_bytes = sum(r.size for r in self._pending)
        self._pending_since = self._pending[0].since if self._pending else None
        self._acked -= acks
        if acks:
            self._journal_acks()
        if batch:
            self.commits += 1
        self._rows_for_handed(batch, seqs)
        if len(acks) > _MAX_UNSAVED_ACKS:
            # Draining was paused on these: it may go on.
            self._fresh = True
            self._arrived.set()
        self._count.update(n)
        self._bytes.update(b)
        self._count.subtract(gone_n)
        self._bytes.subtract(gone_b)
        self._oldest = oldest
        if chunked:
            await self._delete(set(self._acked), remember=False)
        await self._refresh_space()
        if self._store_error is not None and not (chunked and self._acked):
            self._store_recovered(len(batch))

    def _rows_for_handed(self, batch: list[_Pending], seqs: list[int]) -> None:
        """Committed records that were handed out before: keep their rows' seqs for their
        acks, and their live marks in the rows' seq space."""
        late_acks = False
        for r, seq in zip(batch, seqs, strict=True):
            key = self._leased.pop(r.tmp, None)
            if key is not None:
                # Leased while in the batch: the lease now holds the row.
                self._leases[key] = seq
                self._leased[seq] = key
            if r.acked:
                # Delivered while being committed: the row goes with the next write.
                self._acked.add(seq)
                late_acks = True
            elif r.tmp in self._handed:
                self._handed[r.tmp] = seq
            mark = self._live_tmp_marks.get(r.cls)
            if mark is not None and r.tmp <= mark:
                # Not newer than a record already sent ahead as live: must not go ahead again.
                self._live_marks[r.cls] = max(self._live_marks.get(r.cls, 0), seq)
        if late_acks:
            self._wake.set()

    def _store_failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        first = self._store_error is None
        if first or now >= self._retry_at:
            # Not pushed back by every failure meanwhile (puts keep trying to make room):
            # the retry must come.
            self._retry_at = now + self._config.retry_interval_s
        cause = store_cause(exc, self._db.path)
        # The latest cause (a full disk may turn read-only); the event is for the first.
        self._store_error = f"{cause}: {exc}"
        self._store_cause = cause
        if first:
            self._log.error("outbox cannot write", cause=cause, reason=str(exc))
            self._emit(
                make_event(
                    "store",
                    f"the outbox cannot write ({cause}: {exc}); holding up to"
                    f" {self._config.memory_buffer_bytes} bytes of records in memory",
                    now=self._clock(),
                    severity="error",
                    reason=str(exc),
                    cause=cause,
                    state="failing",
                )
            )
        self._bound_buffer()

    async def _prune_acked(self) -> None:
        """Acks waiting in memory whose rows were thinned, dropped or expired meanwhile are
        no longer rows: forget them (depth counts the rows less these)."""
        if not self._acked:
            return
        with contextlib.suppress(sqlite3.Error):
            still = await asyncio.to_thread(self._db.existing, set(self._acked))
            if still != self._acked:
                self._acked = still
                self._journal_acks()

    def _journal_acks(self) -> None:
        """Write the acks that wait in memory into the ack journal, in place (its blocks were
        allocated while there was room, so this needs none on a full disk). A restart
        deletes them before anything is handed out: what the broker has is never sent
        again. A torn write leaves older acks in it, which are harmless to delete again
        (seqs are never reused)."""
        seqs = sorted(s for s in self._acked if s >= 0)[: _JOURNAL_SLOTS - 1]
        data = struct.pack(f"<Q{len(seqs)}q", len(seqs), *seqs)
        try:
            fd = os.open(self._journal_path, os.O_WRONLY)
        except OSError:
            return
        try:
            os.pwrite(fd, data, 0)
        except OSError as exc:
            self._log.error("outbox cannot write its ack journal", error=str(exc))
        finally:
            os.close(fd)

    def _read_journal(self) -> set[int]:
        """Acks a previous run could not write to the database; the journal is made (its
        blocks allocated) when missing."""
        path = self._journal_path
        try:
            with path.open("rb") as f:
                head = f.read(8)
                count = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
                count = min(count, _JOURNAL_SLOTS - 1)
                body = f.read(8 * count)
            return {s for s in struct.unpack(f"<{len(body) // 8}q", body) if s > 0}
        except FileNotFoundError:
            pass
        except (OSError, struct.error) as exc:
            self._log.error("outbox cannot read its ack journal", error=str(exc))
            return set()
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, _JOURNAL_SLOTS * 8)
            except OSError:
                os.ftruncate(fd, 0)
                os.close(fd)
                path.unlink()
            else:
                os.close(fd)
        return set()

    def on_recovered(self, callback: Callable[[], None]) -> None:
        """Call `callback` each time the outbox writes again after a failure."""
        self._recovered_callbacks.append(callback)

    async def _probe(self) -> None:
        """With nothing to write while the store fails: is the disk back?"""
        await self._refresh_space()
        async with self._write_lock:
            if self._store_error is None or self._pending or self._acked:
                return
            space = self._space
            if space is not None and self._store_cause == "disk full":
                need = size_or_percent_bytes(self._config.min_free, space.total)
                if space.free < need and space.free_pages == 0:
                    self._retry_at = time.monotonic() + self._config.retry_interval_s
                    return
            try:
                await asyncio.to_thread(self._db.probe)
            except (sqlite3.Error, OSError):
                self._retry_at = time.monotonic() + self._config.retry_interval_s
                return
            self._store_recovered(0)

    def _store_recovered(self, written: int) -> None:
        reason = self._store_error
        cause = self._store_cause
        self._store_error = None
        self._store_cause = None
        dropped = dict(self._buffer_dropped)
        self._buffer_dropped.clear()
        self._log.info("outbox writes again", written=written, dropped=dropped)
        self._emit(
            make_event(
                "store",
                f"the outbox writes again; {written} held records written,"
                f" {sum(dropped.values())} dropped while it could not",
                now=self._clock(),
                severity="info",
                reason=reason,
                cause=cause,
                state="recovered",
                written=written,
                dropped=dropped,
            )
        )
        self._disk_refused = False
        self._notify_recovered()

    def _bound_buffer(self) -> None:
        """While the disk fails, keep the held records under memory_buffer_bytes."""
        limit = self._config.memory_buffer_bytes
        while self._pending_bytes > limit:
            victims = [
                r
                for r in self._pending
                if r.cls not in MESSAGE_CLASSES and id(r) not in self._committing
            ]
            if not victims:
                return
            worst = max(victims, key=lambda r: (r.priority, -r.created))
            self._pending.remove(worst)
            self._pending_bytes -= worst.size
            self._buffer_dropped[worst.cls] += 1
            self._evicted[(worst.cls, "store_failed")] += 1
        if not self._pending:
            self._pending_since = None

    def _disk_bound(self) -> bool:
        """The room on disk, not max_bytes, sets the limit now."""
        return self._disk_limit is not None and self._disk_limit < self._config.max_bytes

    def _disk_short(self) -> bool:
        """Other files took the free space the outbox leaves (below half of min_free)."""
        space = self._space
        if space is None:
            return False
        # Free space that is only the released reserve file does not count.
        free = space.free - max(0, space.reserve_want - space.reserve)
        return free < size_or_percent_bytes(self._config.min_free, space.total) // 2

    def _check_disk_room(self) -> None:
        """After messages were refused for want of disk: room again? Tell the listeners."""
        if not self._disk_refused or self._store_error is not None:
            return
        if self._disk_bound() and self._limit() - self._total_bytes() < _ROOM_AGAIN:
            return
        self._disk_refused = False
        self._log.info("outbox has room again", limit=self._limit())
        self._emit(
            make_event(
                "store",
                f"the outbox has room again ({self._limit()} bytes)",
                now=self._clock(),
                severity="info",
                cause="disk full",
                state="recovered",
                written=0,
                dropped={},
            )
        )
        self._notify_recovered()

    def _notify_recovered(self) -> None:
        for callback in list(self._recovered_callbacks):
            try:
                callback()
            except Exception as exc:  # noqa: BLE001 - a listener must not break the outbox
                self._log.error("outbox recovery listener failed", error=repr(exc))

    def _limit(self) -> int:
        """The bytes the outbox may hold now: max_bytes, or less when the disk has less room."""
        if self._disk_limit is None:
            return self._config.max_bytes
        return min(self._config.max_bytes, self._disk_limit)

    async def _refresh_space(self) -> None:
        """Read the room on disk again and set the limit from it."""
        try:
            space = await asyncio.to_thread(self._db.space, self._config.min_free)
        except (sqlite3.Error, OSError):
            space = None
        if space is None or space.read_only:
            return  # a read-only filesystem: what is held waits in memory (memory_buffer_bytes)
        self._space = space
        min_free = size_or_percent_bytes(self._config.min_free, space.total)
        # The WAL may still grow to its checkpoint size and one commit past it (commits are
        # kept under half of that, see `_flush_due`), and the WAL index beside it.
        wal_budget = 2 * self._checkpoint_bytes() + _SHM_BYTES
        # Room is also left for the reserve file to be made again.
        grow = space.free - min_free - max(0, wal_budget - space.wal)
        grow -= max(0, space.reserve_want - space.reserve)
        # And the batch that is committed next (up to half a checkpoint, see `_flush_due`),
        # whose pages the estimate above can only follow after the fact.
        grow -= self._checkpoint_bytes() // 2
        committed = sum(self._bytes.values())
        limit = committed + int(space.free_pages * _PAGE_FILL)
        previous = self._files
        self._files = space.files
        if grow > 0:
            limit += int(grow * _PAGE_FILL)
            self._overshoot = 0
        elif previous is not None and space.files > previous:
            # The files grew below the headroom (pages came out fuller than estimated): hold
            # that much less, so that rows are thinned and new ones reuse the freed pages.
            self._overshoot = min(min_free, self._overshoot + space.files - previous)
        # Otherwise, below the headroom, the files do not grow: new rows go into pages that
        # thinning and eviction free. What is stored is not given away (SQLite files do not
        # shrink, and a runaway log would take every page the outbox gave back).
        self._disk_limit = max(0, limit - self._overshoot)

    async def _relieve(self) -> None:
        """While the disk fails: thin and drop what is stored until what is held fits."""
        if self._store_cause != "disk full" or self._total_bytes() <= self._limit():
            return
        async with self._write_lock:
            need = self._total_bytes() - self._limit()
            if need <= 0:
                return
            slack = max(min(self._limit() // 20, 1024 * 1024), _DISK_SLACK)
            try:
                why, n, b, oldest = await asyncio.to_thread(
                    self._db.make_room,
                    need + slack,
                    ("sky", "fix", "event", "status"),
                    self._clock(),
                )
            except (sqlite3.Error, OSError):
                return
            self._count.subtract(n)
            self._bytes.subtract(b)
            self._oldest = oldest
            self._evicted.update(why)
            await self._prune_acked()
        await self._refresh_space()
        self._report()

    async def _room_for(self, rec: _Pending) -> bool:
        """Make room for `rec` by evicting less important records; False when it was dropped."""
        limit = self._limit()
        # A record pushes out only records less important than or as important as itself;
        # messages and command results are never pushed out.
        if rec.priority <= 1:
            evictable: tuple[str, ...] = ("sky", "fix", "event", "status")
        elif rec.cls == "fix":
            evictable = ("sky", "fix")
        else:
            evictable = ("sky",)
        async with self._write_lock:
            if self._pending and self._store_error is None:
                with contextlib.suppress(StoreError):
                    await self._commit_locked(sync=False)
            limit = self._limit()
            # Free a little more than needed so that pressure is relieved in rounds (on a
            # disk-bound limit at least a few pages: deleted rows free whole pages only).
            slack = min(limit // 20, 1024 * 1024)
            if self._disk_bound():
                slack = max(slack, _DISK_SLACK)
            need = self._total_bytes() + rec.size - limit
            # In rounds (one transaction each, bounded on a small filesystem so that the WAL
            # stays small), while they free something.
            for _ in range(_ROOM_ROUNDS):
                if need <= 0 or self._store_cause == "read-only":
                    break
                try:
                    why, n, b, oldest = await asyncio.to_thread(
                        self._db.make_room, need + slack, evictable, self._clock()
                    )
                except (sqlite3.Error, OSError) as exc:
                    self._store_failed(exc)
                    break
                self._count.subtract(n)
                self._bytes.subtract(b)
                self._oldest = oldest
                self._evicted.update(why)
                await self._prune_acked()
                await self._refresh_space()
                limit = self._limit()
                if not n:
                    break
                need = self._total_bytes() + rec.size - limit
        if self._total_bytes() + rec.size <= limit:
            self._report()
            return True
        # Nothing left to make way on a disk another file filled: try the write all the same
        # (a page may still have room); when the disk refuses, the failure path holds
        # positions in memory (bounded) and sync puts raise, naming the disk.
        fits_memory = self._pending_bytes + rec.size <= self._config.memory_buffer_bytes
        nothing_left = not any(self._count[c] > 0 for c in evictable)
        if (
            self._disk_bound()
            and nothing_left
            and self._store_cause != "read-only"
            and (rec.cls in MESSAGE_CLASSES or fits_memory)
        ):
            self._report()
            return True
        if rec.cls in MESSAGE_CLASSES:
            self._refused[rec.cls] += 1
            self._report(force=True)
            if self._disk_bound():
                # The disk, not max_bytes, is the limit: say so, and tell the listeners once
                # there is room again (the modem then takes what it left on the SIM).
                self._disk_refused = True
                raise OutboxFullError(
                    f"the outbox is full (disk full: {self.disk_free_bytes} bytes free on its"
                    f" filesystem, {self._total_bytes()} of {limit} bytes held); a {rec.cls}"
                    " record was refused",
                    reason="disk full",
                )
            raise OutboxFullError(
                f"the outbox is full ({self._total_bytes()} of {limit} bytes); a {rec.cls}"
                " record was refused",
                reason="full",
            )
        self._evicted[(rec.cls, "full")] += 1
        self._report()
        return False

    def _total_bytes(self) -> int:
        return sum(self._bytes.values()) + self._pending_bytes

    async def expire(self) -> None:
        """Drop records older than their class's `max_age_s`."""
        limits: dict[str, float] = {str(c): float(a) for c, a in self._config.max_age_s.items()}
        if not limits:
            return
        async with self._write_lock:
            try:
                n, b, oldest = await asyncio.to_thread(self._db.expire, limits, self._clock())
            except (sqlite3.Error, OSError) as exc:
                raise StoreError(f"the outbox cannot expire records: {exc}") from exc
        self._count.subtract(n)
        self._bytes.subtract(b)
        self._oldest = oldest
        if n:
            async with self._write_lock:
                await self._prune_acked()
        for cls, k in n.items():
            self._evicted[(cls, "age")] += k
        self._report()

    # ---- reading and acknowledging ------------------------------------------------------

    async def next_batch(
        self, limit: int, exclude: Collection[int] = (), classes: Collection[str] | None = None
    ) -> list[Record]:
        """The next records in drain order, skipping seqs in `exclude` (and, with `classes`,
        records of other classes: they wait for a link that may carry them). The low-level
        read under `lease` (which the drain uses); tools and tests read with it.

        Within a priority level the committed records come first, then those not yet committed
        (the batch), each with a negative seq that `ack_seqs` and `exclude` take like a row's.
        """
        if not self._open or limit <= 0:
            return []
        if len(self._acked) > _MAX_UNSAVED_ACKS:
            # The disk refuses deletes and many acks wait in memory: pause draining until it
            # recovers rather than let that set grow without bound.
            return []
        excluded = set(exclude)
        now = self._clock()
        live_after = now - self._config.live_window_s if self._config.live_window_s > 0 else now + 1
        # Commits wait while the rows are read: a record is a row or pending, never both.
        async with self._write_lock:
            self._fresh = False
            skip = excluded | self._acked | self._deleting
            for seq in excluded:
                row_seq = self._handed.get(seq) if seq < 0 else None
                if isinstance(row_seq, int):
                    skip.add(row_seq)  # committed while in flight
            waiting = list(self._pending)
            if classes is not None:
                waiting = [r for r in waiting if r.cls in classes]
            newest = {r.cls: r for r in waiting if r.cls in LIVE_CLASSES}
            rows: list[Record] = []
            live: set[int] = set()
            if self._cursor and not self._cursor_rows <= skip:
                self._cursor.clear()
                self._cursor_rows.clear()
            passed: dict[str, list[int]] = {}
            if sum(self._count.values()) > 0:  # no read (no thread hop) when no row waits
                try:
                    rows, live, passed = await asyncio.to_thread(
                        self._db.next_batch,
                        limit,
                        skip,
                        self._live_marks,
                        live_after,
                        set(newest),
                        dict(self._cursor),
                        None if classes is None else frozenset(classes),
                    )
                except sqlite3.Error as exc:
                    self._log.error("outbox cannot read", reason=str(exc))
                    self._fresh = True
                    return []
            # Acks and the memory bound may have taken pending records meanwhile.
            still = {id(r) for r in self._pending}
        live_tmp = {
            r.tmp
            for cls, r in newest.items()
            if id(r) in still
            and r.tmp not in excluded
            and r.created >= live_after
            and r.tmp > self._live_tmp_marks.get(cls, _TMP_BASE - 1)
        }
        pending: dict[int, list[_Pending]] = {}
        for r in waiting:
            if id(r) in still and r.tmp not in excluded and not r.acked:
                pending.setdefault(r.priority, []).append(r)
        committed: dict[int, list[Record]] = {}
        for rec in rows:
            committed.setdefault(rec.priority, []).append(rec)
        out: list[Record] = []
        handed: dict[int, _Pending] = {}
        for prio in sorted(set(CLASS_PRIORITY.values())):
            if len(out) >= limit:
                break
            level = pending.get(prio, [])
            out += [_as_record(r) for r in level if r.tmp in live_tmp]
            out += committed.get(prio, [])
            out += [_as_record(r) for r in level if r.tmp not in live_tmp]
            handed.update((r.tmp, r) for r in level)
        out = out[:limit]
        self._advance_cursor(out, live, passed)
        for rec in out:
            if rec.seq >= 0:
                if rec.seq in live:
                    self._live_marks[rec.cls] = max(self._live_marks.get(rec.cls, 0), rec.seq)
                continue
            if rec.seq in live_tmp:
                self._live_tmp_marks[rec.cls] = rec.seq
            # Latest hand-out last, so that the oldest are forgotten first.
            self._handed.pop(rec.seq, None)
            self._handed[rec.seq] = handed[rec.seq]
        while len(self._handed) > _MAX_HANDED:
            del self._handed[next(iter(self._handed))]
        if len(out) >= limit:
            self._fresh = True  # more may wait beyond the limit
        return out

    def _advance_cursor(
        self, out: list[Record], live: set[int], passed: dict[str, list[int]]
    ) -> None:
        """Move each class's read cursor past the committed rows handed out in order."""
        top: dict[str, int] = {}
        for rec in out:
            if rec.seq >= 0 and rec.seq not in live:
                top[rec.cls] = max(top.get(rec.cls, 0), rec.seq)
                self._cursor_rows.add(rec.seq)
        for cls, seq in top.items():
            self._cursor_rows.update(s for s in passed.get(cls, ()) if s <= seq)
            self._cursor[cls] = max(self._cursor.get(cls, 0), seq)

    # ---- leases: the drain's contract (`terminal_gw.uplink.DrainSource`) -----------------

    async def lease(self, n: int, classes: Collection[str] | None = None) -> list[Record]:
        """Lease the next `n` records in drain order (with `classes`, only records of those
        classes: the others wait for a link that may carry them).

        A leased record is not handed out again until it is acked (delivered) or released.
        Its `seq` is its lease key: opaque and positive, whether the record is a row yet or
        still in the batch (it may be committed while leased: the lease follows it).
        """
        if n <= 0:
            return []
        records = await self.next_batch(n, exclude=self._leased, classes=classes)
        out: list[Record] = []
        for rec in records:
            key = self._next_key
            self._next_key += 1
            self._leases[key] = rec.seq
            self._leased[rec.seq] = key
            out.append(dataclasses.replace(rec, seq=key))
        return out

    def ack(self, records: Iterable[int | Record]) -> Awaitable[None]:
        """Leased records delivered (PUBACK), given as records or keys: they leave the outbox
        (a record not yet committed is never written). The leases end at the call itself
        (so a `release_all` right after it cannot hand them out again); the returned
        awaitable deletes the rows. Keys not leased (released, or acked before) are ignored.
        """
        return self._deleted(self._settle(self._end_leases(records)))

    def release(self, records: Iterable[int | Record]) -> None:
        """Leased records not sent after all (given as records or keys): they may be leased
        again, in their place in the drain order."""
        self._end_leases(records)

    def release_all(self) -> None:
        """End every lease (the link went down): what was not acked is handed out again."""
        self._leases.clear()
        self._leased.clear()
        self._fresh = True
        self._arrived.set()

    def _end_leases(self, records: Iterable[int | Record]) -> list[int]:
        seqs: list[int] = []
        for item in records:
            seq = self._leases.pop(item.seq if isinstance(item, Record) else item, None)
            if seq is not None:
                self._leased.pop(seq, None)
                seqs.append(seq)
        return seqs

    @property
    def leased(self) -> int:
        """Records leased and neither acked nor released."""
        return len(self._leases)

    async def ack_seqs(self, seqs: Iterable[int]) -> None:
        """Records read with `next_batch` delivered, by seq: delete them; a record not yet
        committed is never written."""
        await self._deleted(self._settle(seqs))

    def _settle(self, seqs: Iterable[int]) -> set[int]:
        """Delivered records: those still in the batch leave it (or are marked to go once
        their commit lands); the rows to delete are returned, kept out of reads from now on."""
        wanted = set(seqs)
        if not wanted or not self._open:
            return set()
        stored: set[int] = set()
        for seq in wanted:
            if seq >= 0:
                stored.add(seq)
                continue
            held = self._handed.pop(seq, None)
            if held is None:
                # Not handed out by this process, or forgotten: look for it in the batch.
                held = next((r for r in self._pending if r.tmp == seq), None)
            if isinstance(held, int):
                stored.add(held)  # committed while in flight: its row goes
            elif held is None:
                continue
            elif id(held) in self._committing:
                held.acked = True  # its row is deleted once the commit lands
            else:
                self._forget_pending(held)
        if not stored:
            return stored
        if self._store_cause == "read-only":
            self._acked |= stored
            self._journal_acks()
            return set()
        # Kept out of reads from now on, before the delete's task even starts: their
        # temporary seqs have just left `_handed` (and their leases ended), so neither an
        # `exclude` nor a lease covers them any more.
        self._deleting |= stored
        return stored

    async def _deleted(self, stored: set[int]) -> None:
        if not stored:
            return
        # Tried on a full disk too (the reserve file lets deletes through). Shielded: a caller
        # cancelled mid-delete (a link dropping during shutdown) must not leave the rows
        # deleted on disk but still counted in depth and quotas.
        await asyncio.shield(self._delete(stored))

    async def _delete(self, stored: set[int], *, remember: bool = True) -> None:
        try:
            n, b, oldest, left, exc = await asyncio.to_thread(self._db.ack, stored)
        finally:
            self._deleting -= stored
        done = stored - left
        self._cursor_rows -= done
        if self._acked & done or left:
            # Deleting needs disk too; remember what is left (in memory and in the ack
            # journal, for a restart) and keep those out of next_batch.
            self._acked -= done
            self._acked |= left
            self._journal_acks()
        self._count.subtract(n)
        self._bytes.subtract(b)
        if oldest or not left:
            self._oldest = oldest
        if exc is not None and remember:
            self._store_failed(exc)

    async def wait_for_records(self, timeout: float) -> bool:  # noqa: ASYNC109 - the agreed interface; used with asyncio.timeout inside
        """True as soon as records wait that the last `next_batch` did not hand out (new ones,
        or more than its limit); False after `timeout` without."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, timeout)):
                while not (self._fresh and self.depth > 0):
                    self._arrived.clear()
                    await self._arrived.wait()
                return True
        return False

    def _committed_count(self) -> int:
        return sum(self._count.values()) - len(self._acked)

    # ---- figures --------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Records waiting: committed and not yet delivered, plus the pending batch."""
        return self._committed_count() + len(self._pending)

    @property
    def held_bytes(self) -> int:
        """Bytes of records accepted but not yet written (the batch, or the buffer while the
        disk refuses writes)."""
        return self._pending_bytes

    @property
    def store_error(self) -> str | None:
        """Why the outbox cannot write right now, or None when it can."""
        return self._store_error

    @property
    def store_cause(self) -> str | None:
        """`store_error` in a few words ("disk full", "read-only", "I/O error"), or None."""
        return self._store_cause

    @property
    def health_problem(self) -> str | None:
        """What makes the store unhealthy, in a few words ("disk full", "read-only", "I/O
        error"), or None: a failing store, messages refused for want of disk, or other files
        that took the free space the outbox leaves."""
        if self._store_cause is not None:
            return self._store_cause
        if self._disk_refused or self._disk_short():
            return "disk full"
        return None

    @property
    def limit_bytes(self) -> int:
        """The bytes the outbox may hold now: `max_bytes`, or less when the disk has less room."""
        return self._limit()

    @property
    def disk_free_bytes(self) -> int | None:
        """Free space on the outbox's filesystem when last read, or None."""
        return None if self._space is None else self._space.free

    @property
    def reserve_released(self) -> int:
        """Times the reserve file was deleted to let deletes through on a full disk."""
        return self._db.reserve_released

    def oldest_age_s(self) -> float | None:
        """Age in seconds of the oldest waiting record, or None when empty."""
        times = list(self._oldest.values()) + [r.created for r in self._pending[:1]]
        if not times:
            return None
        return max(0.0, self._clock() - min(times))

    async def stats(self) -> dict[str, ClassStats]:
        """Per class: records waiting, their bytes, the oldest one's age."""
        now = self._clock()
        count: Counter[str] = Counter(self._count)
        size: Counter[str] = Counter(self._bytes)
        oldest = dict(self._oldest)
        for r in self._pending:
            count[r.cls] += 1
            size[r.cls] += r.size
            oldest[r.cls] = min(oldest.get(r.cls, r.created), r.created)
        return {
            cls: ClassStats(
                count=count[cls],
                bytes=size[cls],
                oldest_age_s=max(0.0, now - oldest[cls]) if cls in oldest else None,
            )
            for cls in CLASS_PRIORITY
            if count[cls] > 0
        }

    # ---- events ---------------------------------------------------------------------

    def _report(self, *, force: bool = False) -> None:
        """Emit the aggregated evicted / refused counts, at most once per event_interval_s."""
        if not self._evicted and not self._refused:
            return
        now = time.monotonic()
        if not force and now - self._last_report < self._config.event_interval_s:
            return
        self._last_report = now
        wall = self._clock()
        if self._evicted:
            counts: dict[str, dict[str, int]] = {}
            for (cls, reason), k in sorted(self._evicted.items()):
                counts.setdefault(cls, {})[reason] = k
            total = sum(self._evicted.values())
            self._evicted.clear()
            self._log.warning("outbox evicted records", counts=counts)
            self._emit(
                make_event(
                    "evicted",
                    f"{total} records evicted from the outbox",
                    now=wall,
                    severity="warning",
                    counts=counts,
                    total=total,
                )
            )
        if self._refused:
            refused = dict(self._refused)
            self._refused.clear()
            self._log.error("outbox full: messages refused", refused=refused)
            self._emit(
                make_event(
                    "outbox_full",
                    f"the outbox is full: {sum(refused.values())} messages refused",
                    now=wall,
                    severity="error",
                    refused=refused,
                    max_bytes=self._config.max_bytes,
                )
            )

    def _emit(self, event: Event) -> None:
        if self._events is not None:
            self._events(event)
            return
        if self._event_topic is None or not self._open:
            return
        # No sink: the outbox queues its own events (past the quota: they are few and small).
        data = event.to_json().encode()
        self._append(
            _Pending(
                id=event.id,
                cls="event",
                topic=self._event_topic,
                payload=data,
                created=self._clock(),
                priority=CLASS_PRIORITY["event"],
                retain=False,
                sync=False,
                size=record_size(self._event_topic, data, event.id),
            )
        )
        self._wake.set()


__all__ = [
    "CLASS_PRIORITY",
    "MESSAGE_CLASSES",
    "SYNC_CLASSES",
    "ClassStats",
    "DiskSpace",
    "Outbox",
    "Record",
    "check_database",
    "id_from_db",
    "id_to_db",
    "record_size",
    "store_cause",
]
