"""The outbox's queue: records accepted and batched, commits, the live path (records handed
out before their commit), leases for the drain, acks, the ack journal, and the store's
failures and recovery. The SQL is in `terminal_gw.outbox.store`, what pushes out what in
`terminal_gw.outbox.pressure`; the choices are described in `terminal_gw.outbox`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sqlite3
import struct
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Collection, Iterable
from pathlib import Path
from typing import Any

import structlog

from terminal_gw.config import OutboxConfig, size_or_percent_bytes
from terminal_gw.errors import OutboxFullError, StoreError
from terminal_gw.models import Event, EventSink, Payload, make_event
from terminal_gw.outbox import codec, pressure
from terminal_gw.outbox.store import (
    CLASS_PRIORITY,
    LIVE_CLASSES,
    MESSAGE_CLASSES,
    SYNC_CLASSES,
    ClassStats,
    DiskSpace,
    Record,
    _Db,
    _Pending,
    record_size,
    store_cause,
)

#: Acks the journal holds (8 bytes each, the first slot the count): 64 KiB.
_JOURNAL_SLOTS = 8192
_MAX_UNSAVED_ACKS = 20000
#: Seqs of records not yet committed: negative, growing with arrival (never reach 0).
_TMP_BASE = -(2**62)
#: Records remembered as handed out under a temporary seq and not yet acknowledged. Past it
#: the oldest are forgotten (a link that dropped them): a late ack for one of those cannot
#: spare it its write, and once committed it is sent again.
_MAX_HANDED = 4096


def _as_record(rec: _Pending) -> Record:
    """A pending record as handed out: its temporary (negative) seq."""
    return Record(
        seq=rec.tmp,
        id=rec.id,
        cls=rec.cls,
        topic=rec.topic,
        payload=codec.decode(rec.payload),
        created=rec.created,
        priority=rec.priority,
        retain=rec.retain,
    )


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
        #: Ids of the records accepted last: a put cancelled after it took its record (while
        #: the commit it triggered ran) still took it, and its caller can tell.
        self._taken: deque[str] = deque(maxlen=256)
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
        if writes_due:
            with contextlib.suppress(StoreError):
                await self.flush()
        elif self._acked and self._store_error is None:
            # Rows delivered while their commit ran: delete them alone. The pending batch
            # waits for its own time or size (committing it along would turn a stream of
            # such acks into a commit, and an fsync, every round).
            with contextlib.suppress(StoreError):
                async with self._write_lock:
                    await self._commit_locked(sync=False, records=False)
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
        data = codec.encode(cls, payload.to_json().encode())
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
        elif len(self._pending) == 1:
            # A new batch: the duties' timer is set again from its start. The records after
            # it need no round of duties each (a round reads the disk's room in a thread).
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
        self._taken.append(rec.id)
        self._pending_bytes += rec.size
        self._fresh = True
        self._arrived.set()

    def took(self, record_id: str) -> bool:
        """Whether a record with this id was accepted lately (for a caller whose `put` was
        cancelled: the record may be in, and will be committed)."""
        return record_id in self._taken

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

    async def _commit_locked(self, *, sync: bool, records: bool = True) -> None:
        """Commit the pending batch and the remembered acks (`records=False`: the acks alone)."""
        if not (self._pending and records) and not self._acked:
            return
        batch = list(self._pending) if records else []
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
        if self._disk_bound() and self._limit() - self._total_bytes() < pressure.ROOM_AGAIN:
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
        previous = self._files
        self._files = space.files
        self._disk_limit, self._overshoot = pressure.disk_limit(
            space,
            sum(self._bytes.values()),
            size_or_percent_bytes(self._config.min_free, space.total),
            self._checkpoint_bytes(),
            previous,
            self._overshoot,
        )

    async def _relieve(self) -> None:
        """While the disk fails: thin and drop what is stored until what is held fits."""
        if self._store_cause != "disk full" or self._total_bytes() <= self._limit():
            return
        async with self._write_lock:
            need = self._total_bytes() - self._limit()
            if need <= 0:
                return
            slack = max(min(self._limit() // 20, 1024 * 1024), pressure.DISK_SLACK)
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
        evictable = pressure.evictable(rec.cls, rec.priority)
        async with self._write_lock:
            if self._pending and self._store_error is None:
                with contextlib.suppress(StoreError):
                    await self._commit_locked(sync=False)
            limit = self._limit()
            slack = pressure.room_slack(limit, disk_bound=self._disk_bound())
            need = self._total_bytes() + rec.size - limit
            # In rounds (one transaction each, bounded on a small filesystem so that the WAL
            # stays small), while they free something.
            for _ in range(pressure.ROOM_ROUNDS):
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
        data = codec.encode("event", event.to_json().encode())
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
