"""The outbox's SQLite store: the schema, the checks and salvage at start, the database's
operations (each run in a worker thread under one lock), and the read-only queries that
`terminal-gw outbox stats|export` use too, so that the SQL is written once.

SQLite in WAL mode, one connection guarded by a lock and driven through `asyncio.to_thread`
by the queue (`terminal_gw.outbox.queue`). See `terminal_gw.outbox` for the choices.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from terminal_gw.config import size_or_percent_bytes
from terminal_gw.outbox import codec, pressure
from terminal_gw.outbox.pressure import thin_and_drop

CLASS_PRIORITY = {"sms": 0, "bds": 0, "command": 0, "event": 1, "status": 1, "fix": 2, "sky": 3}
SYNC_CLASSES = {"sms", "bds", "command"}
#: Never pushed out by other records; refused (OutboxFullError) when they cannot fit.
MESSAGE_CLASSES = frozenset({"sms", "bds", "command"})
#: Classes whose newest record goes ahead of their backlog.
LIVE_CLASSES = frozenset({"fix", "sky"})
#: Estimated bytes a row costs beyond its payload, topic and id: row header, the other
#: columns, index entry, page slack (bench/outbox.py: database file against counted).
ROW_OVERHEAD = 48
#: 2: payloads stored encoded (`terminal_gw.outbox.codec`); the rows of 1 read as they are.
SCHEMA_VERSION = 2
#: The reserve file beside the database: this share of the filesystem, within these bounds.
RESERVE_SHARE = 16
RESERVE_MIN = 64 * 1024
RESERVE_MAX = 1024 * 1024
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
    #: As stored (`codec.encode`): what is written, and what `size` counts.
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


_HEX = "0123456789abcdef"


def id_to_db(record_id: str) -> str | bytes:
    """A canonical UUID (`str(uuid.UUID(...))`: lowercase, 8-4-4-4-12) is stored as its 16
    bytes (20 fewer a row, written twice: WAL and checkpoint); any other id as text."""
    # Checked by hand: a fifth of the cost of parsing it with `uuid` (once per record).
    r = record_id
    if len(r) == 36 and r[8] == r[13] == r[18] == r[23] == "-":
        digits = r.replace("-", "")
        if len(digits) == 32 and not digits.strip(_HEX):
            return bytes.fromhex(digits)
    return record_id


def id_from_db(value: object) -> str:
    """The id as the payload carries it."""
    if isinstance(value, bytes) and len(value) == 16:
        h = value.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return str(value)


def record_size(topic: str, payload: bytes, record_id: str) -> int:
    """The bytes a record is counted for against `max_bytes` (`payload` as stored; an id of
    36 characters, a UUID, as the 16 bytes it is stored in)."""
    id_bytes = 16 if len(record_id) == 36 else len(record_id)
    return len(payload) + len(topic.encode()) + id_bytes + ROW_OVERHEAD


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
    if codec.decode_or_none(payload) is None:
        return None  # an encoded payload that no longer inflates
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


# ---- read-only queries (the queue at start, and `terminal-gw outbox stats|export`) ---------


@contextlib.contextmanager
def open_reader(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection; a copy in a temporary folder when the file's folder is
    read-only and SQLite cannot create the WAL index beside it."""
    with contextlib.ExitStack() as stack:
        try:
            conn = connect(path, readonly=True)
            stack.callback(conn.close)
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError:
            stack.close()
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tgw-outbox-")))
            copy = tmp / path.name
            shutil.copyfile(path, copy)
            wal = path.with_name(path.name + "-wal")
            if wal.exists():
                shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
            conn = sqlite3.connect(str(copy), isolation_level=None)
            stack.callback(conn.close)
        yield conn


def class_stats(conn: sqlite3.Connection) -> dict[str, tuple[int, int, float | None]]:
    """Per class: records, bytes (as counted against max_bytes), the earliest `created`."""
    rows = conn.execute("SELECT cls, COUNT(*), SUM(size), MIN(created) FROM outbox GROUP BY cls")
    return {str(c): (int(n), int(b or 0), None if m is None else float(m)) for c, n, b, m in rows}


def iter_payloads(
    conn: sqlite3.Connection, classes: Collection[str] | None = None
) -> Iterator[tuple[str, bytes]]:
    """(class, payload) in drain order: by priority, FIFO (seq) across the classes of a
    priority. Streamed from the (cls) index, class by class and merged, so a million records
    need neither memory nor a temporary sort file."""
    wanted = list(classes) if classes else list(CLASS_PRIORITY)
    for prio in sorted(set(CLASS_PRIORITY.values())):
        cursors = [
            conn.execute("SELECT seq, cls, payload FROM outbox WHERE cls = ? ORDER BY seq", (c,))
            for c in wanted
            if CLASS_PRIORITY.get(c) == prio
        ]
        for _seq, cls, payload in heapq.merge(*cursors, key=lambda row: int(row[0])):
            stored = payload.encode() if isinstance(payload, str) else bytes(payload)
            yield str(cls), codec.decode(stored)


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
        self.thin_span = pressure.THIN_SPAN
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
        return {c: (n, b) for c, (n, b, _) in class_stats(self._c()).items()}

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
                payload=codec.decode(bytes(r[4])),
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
            why, n, b = self._freeing(lambda: thin_and_drop(self, need, classes, now))
            return why, n, b, self._oldest()
