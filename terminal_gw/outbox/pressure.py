"""The outbox's pressure policy: what may push out what, how room is made (thinning of
positions, then dropping oldest first), and the limit the room on disk sets.

Positions (sky, then fix) are thinned, oldest tiers first (keep one record per interval that
grows with age, `THIN_TIERS`), then dropped oldest first, then events and status oldest
first. "Oldest" is arrival order (seq), which a clock jump cannot reorder. Messages and
command results are never pushed out (`terminal_gw.outbox.queue` refuses a new one that
cannot fit).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from terminal_gw.outbox.store import DiskSpace, _Db

#: Thinned under pressure, least important first.
POSITION_CLASSES = ("sky", "fix")
#: Thinning tiers, applied oldest first: records older than `age` keep one per `interval`.
THIN_TIERS: tuple[tuple[float, float], ...] = (
    (30 * 86400.0, 86400.0),
    (7 * 86400.0, 3 * 3600.0),
    (86400.0, 1800.0),
    (6 * 3600.0, 300.0),
    (3600.0, 60.0),
    (600.0, 10.0),
)
#: Room (bytes) that counts as "room again" after messages were refused for want of disk.
ROOM_AGAIN = 64 * 1024
#: Under disk pressure, room is made in rounds of at least this much (a few pages).
DISK_SLACK = 32 * 1024
#: The WAL index (-shm) of a WAL of up to 4096 frames.
SHM_BYTES = 32 * 1024
#: Rounds of making room one put may take.
ROOM_ROUNDS = 8
#: Rows fill new pages to about this share (the rest is page headers and slack).
PAGE_FILL = 0.9
DROP_CHUNK = 1000
THIN_SPAN = 2000


def evictable(cls: str, priority: int) -> tuple[str, ...]:
    """The classes a new record of `cls` may push out: only records less important than or
    as important as itself; messages and command results are never pushed out."""
    if priority <= 1:
        return ("sky", "fix", "event", "status")
    if cls == "fix":
        return ("sky", "fix")
    return ("sky",)


def room_slack(limit: int, *, disk_bound: bool) -> int:
    """Free a little more than needed so that pressure is relieved in rounds (on a disk-bound
    limit at least a few pages: deleted rows free whole pages only)."""
    slack = min(limit // 20, 1024 * 1024)
    return max(slack, DISK_SLACK) if disk_bound else slack


def disk_limit(  # noqa: PLR0917 - the figures the limit is made of
    space: DiskSpace,
    committed: int,
    min_free: int,
    checkpoint_bytes: int,
    previous_files: int | None,
    overshoot: int,
) -> tuple[int, int]:
    """The bytes the outbox may hold with the room on disk `space` (and the overshoot to
    carry to the next reading): what its rows hold (`committed`) plus the room they can
    still grow into, free pages first."""
    # The WAL may still grow to its checkpoint size and one commit past it (commits are
    # kept under half of that), and the WAL index beside it.
    wal_budget = 2 * checkpoint_bytes + SHM_BYTES
    # Room is also left for the reserve file to be made again.
    grow = space.free - min_free - max(0, wal_budget - space.wal)
    grow -= max(0, space.reserve_want - space.reserve)
    # And the batch that is committed next (up to half a checkpoint), whose pages the
    # estimate above can only follow after the fact.
    grow -= checkpoint_bytes // 2
    limit = committed + int(space.free_pages * PAGE_FILL)
    if grow > 0:
        limit += int(grow * PAGE_FILL)
        overshoot = 0
    elif previous_files is not None and space.files > previous_files:
        # The files grew below the headroom (pages came out fuller than estimated): hold
        # that much less, so that rows are thinned and new ones reuse the freed pages.
        overshoot = min(min_free, overshoot + space.files - previous_files)
    # Otherwise, below the headroom, the files do not grow: new rows go into pages that
    # thinning and eviction free. What is stored is not given away (SQLite files do not
    # shrink, and a runaway log would take every page the outbox gave back).
    return max(0, limit - overshoot), overshoot


def thin_and_drop(
    db: _Db, need: int, classes: tuple[str, ...], now: float
) -> tuple[Counter[tuple[str, str]], Counter[str], Counter[str]]:
    """Free at least `need` bytes from `classes` in one transaction (run under the database
    lock): thin positions, oldest tiers first (`THIN_TIERS`), then drop oldest first."""
    conn = db._w()
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

    cap = db.max_deletes

    def capped() -> bool:
        return cap is not None and sum(n.values()) >= cap

    # Thinning progress counts only once its deletes are committed.
    progress = dict(db.thinned_upto)
    with db._transaction(conn):
        positions = [c for c in POSITION_CLASSES if c in classes]
        for age, interval in THIN_TIERS:
            for cls in positions:
                end = db._boundary(cls, now - age)
                start = db._first_at_or_after(cls, 0)
                seq = 0 if start is None else start[0]
                # What an earlier round thinned at this interval needs no second pass
                # (from the start of the interval it stopped in, so that one keeps one).
                done = progress.get((cls, interval), 0)
                if done > seq:
                    seq = max(seq, db._bucket_start(cls, done, interval))
                # In spans of THIN_SPAN rows (cut where an interval starts), oldest
                # first, so that it stops as soon as enough is free and no statement
                # returns a million rows at once.
                while seq < end and freed < need and not capped():
                    nxt = conn.execute(
                        "SELECT seq FROM outbox WHERE cls = ? AND seq >= ? ORDER BY seq"
                        " LIMIT 1 OFFSET ?",
                        (cls, seq, db.thin_span),
                    ).fetchone()
                    stop = end
                    if nxt is not None and int(nxt[0]) < end:
                        cut = db._bucket_start(cls, int(nxt[0]), interval)
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
                    (cls, DROP_CHUNK),
                ).fetchall()
                if not oldest:
                    break
                # Drop only as many as needed, oldest first.
                victims: list[int] = []
                room = freed
                for seq, size in oldest:
                    if room >= need or (cap is not None and sum(n.values()) + len(victims) >= cap):
                        break
                    victims.append(seq)
                    room += size
                gone_n, gone_b = db._delete(victims)
                for c, k in gone_n.items():
                    why[(c, "dropped")] += k
                    n[c] += k
                for c, size in gone_b.items():
                    b[c] += size
                    freed += size
    db.thinned_upto = progress
    return why, n, b
