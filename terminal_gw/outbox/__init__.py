"""The durable outbox: every record that leaves the device waits here until the broker has it.

SQLite in WAL mode, one connection guarded by a lock and driven through `asyncio.to_thread`.
Three modules: `store` (the schema, salvage, the database's operations and the read-only
queries `outbox stats|export` use), `queue` (`Outbox`: batches, commits, the live path,
leases, acks) and `pressure` (what pushes out what, thinning, the limit the disk sets).

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
- Stored payloads (`codec`, schema 2): deflated in `put` with a preset dictionary per class
  (a fix's JSON in about a third, a sky view's in a fifth), one codec byte ahead; the rows of
  schema 1 (JSON text) read as they are. Every read (`next_batch`, leases, `outbox export`)
  inflates; a value that does not inflate is handed on as it is, and left out by a salvage.
  With the link down at 10 fixes a second: 0.56 KB written a record instead of 1.02.
- Leases (the drain's contract): `lease(n, classes=...)` hands out records in drain order,
  each once until `ack` (delivered) or `release` (not sent after all); `release_all` ends
  every lease when the link goes down. A leased record's `seq` is its lease key: opaque,
  positive, the same when the record is committed while leased (the lease follows it to its
  row); an ack ends its leases at the call, before the delete runs. The uplink keeps no
  ledger of its own. `next_batch`/`ack_seqs`, the reads under leases, take the seqs below.
- Live path: `next_batch` also hands out the records of the batch at once, each after the
  committed records of its class, under a temporary seq (negative, growing with arrival)
  that `ack_seqs` and `exclude` take like a row's (a lease hides it behind its key). A
  record acked before its batch is committed is dropped from the batch and never written:
  while the link keeps up, live records cost
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
- Size bound: the byte count is an estimate kept incrementally, stored payload + topic + id
  (a UUID's 16 bytes) plus `ROW_OVERHEAD` bytes a row (row header, index entry, page slack:
  172 B counted for a fix's 172 B of database file in bench/outbox.py, 347 for a sky view's
  360), not the file sizes: SQLite files do not shrink when rows go, so file sizes cannot
  tell when room was made. The WAL adds up to about 4 MiB on top. Rows of schema 1 keep the
  size they were counted with.
- Pressure (`pressure`): positions (sky, then fix) are thinned, oldest tiers first (keep
  one record per interval that grows with age, `THIN_TIERS`), then dropped oldest first,
  then events and status oldest first. "Oldest" is arrival order (seq), which a clock jump
  cannot reorder.
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

from terminal_gw.outbox.pressure import POSITION_CLASSES, THIN_TIERS
from terminal_gw.outbox.queue import Outbox
from terminal_gw.outbox.store import (
    CLASS_PRIORITY,
    LIVE_CLASSES,
    MESSAGE_CLASSES,
    ROW_OVERHEAD,
    SCHEMA_VERSION,
    SYNC_CLASSES,
    ClassStats,
    DiskSpace,
    Record,
    check_database,
    connect,
    id_from_db,
    id_to_db,
    iter_salvage,
    record_size,
    reserve_size,
    store_cause,
)

__all__ = [
    "CLASS_PRIORITY",
    "LIVE_CLASSES",
    "MESSAGE_CLASSES",
    "POSITION_CLASSES",
    "ROW_OVERHEAD",
    "SCHEMA_VERSION",
    "SYNC_CLASSES",
    "THIN_TIERS",
    "ClassStats",
    "DiskSpace",
    "Outbox",
    "Record",
    "check_database",
    "connect",
    "id_from_db",
    "id_to_db",
    "iter_salvage",
    "record_size",
    "reserve_size",
    "store_cause",
]
