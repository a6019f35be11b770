"""A disk that fills up or turns read-only for real (a 2 MB tmpfs): the outbox reports it,
keeps draining, holds a bounded number of records in memory, refuses sync records, and
recovers by itself."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from terminal_gw.config import OutboxConfig
from terminal_gw.errors import StoreError
from terminal_gw.models import Event, Fix
from terminal_gw.outbox import Outbox, check_database
from tests.outbox_child import Sms
from tests.test_outbox import stored_ids


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MB filesystem (tmpfs; needs root, as the tests run in CI and on the Pi)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the disk-full test (run as root): {done.stderr}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the filesystem says ENOSPC."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb") as f, pytest.raises(OSError, match="No space") as exc_info:  # noqa: PT012 - writes until it fails
        while True:
            f.write(chunk)
            f.flush()
    assert exc_info.value.errno == errno.ENOSPC
    # The last partial chunk may have left a few bytes: take them too.
    with contextlib.suppress(OSError), filler.open("ab") as f:
        while True:
            f.write(b"\0")
            f.flush()
    return filler


async def test_disk_full_refuses_messages_by_name_and_recovers_by_itself(small_disk: Path) -> None:
    """Another file takes the whole disk: positions make way, messages that cannot fit are
    refused naming the disk (their source copy is kept), the drain goes on, acks are
    deleted, and once space returns the listeners hear of it without a restart."""
    events: list[Event] = []
    cfg = OutboxConfig(
        path=small_disk / "outbox.db",
        max_bytes="100MB",
        memory_buffer_bytes=20_000,
        retry_interval_s=0.1,
        commit_interval_s=0.05,
        event_interval_s=0,
    )
    async with Outbox(cfg, events=events.append) as outbox:
        recovered = asyncio.Event()
        outbox.on_recovered(recovered.set)
        before = []
        for i in range(20):
            sms = Sms(text=f"before {i}")
            await outbox.put("sms", sms)
            before.append(sms.id)
        for _ in range(100):
            await outbox.put("fix", Fix(mode=3, lat=1.0, lon=2.0))
        await outbox.flush()
        assert outbox.limit_bytes < cfg.max_bytes  # the disk, not max_bytes, is the limit

        filler = fill(small_disk)
        # Messages go on being accepted while positions can make way and pages have room,
        # then are refused naming the disk (a sync put: the caller keeps its source copy).
        refused: StoreError | None = None
        for i in range(2000):
            try:
                await outbox.put("sms", Sms(text=f"during {i} " + "x" * 200))
            except StoreError as exc:
                refused = exc
                break
        assert refused is not None
        assert refused.reason == "disk full"
        assert "disk full" in str(refused)
        assert outbox.health_problem == "disk full"
        failing = [e for e in events if e.kind == "store"]
        assert [e.data["state"] for e in failing] == ["failing"]
        assert failing[0].data["cause"] == "disk full"
        assert stored_ids(cfg.path)[:20] == before  # messages are never pushed out

        # Positions accepted meanwhile wait in memory, bounded; the overflow is counted.
        for _ in range(2000):
            await outbox.put("fix", Fix(mode=3, lat=3.0, lon=4.0))
        assert 0 < outbox.held_bytes <= cfg.memory_buffer_bytes

        # The link side keeps draining; acks are deleted on disk even now.
        batch = await outbox.next_batch(10)
        assert [r.id for r in batch] == before[:10]
        await outbox.ack_seqs(r.seq for r in batch)
        assert not set(before[:10]) & set(stored_ids(cfg.path))

        # Space returns: the outbox says so by itself.
        filler.unlink()
        async with asyncio.TaskGroup() as tg:
            runner = tg.create_task(outbox.run(), name="outbox")
            async with asyncio.timeout(20):
                await recovered.wait()
            runner.cancel()
        assert outbox.health_problem is None
        back = [e for e in events if e.kind == "store"][-1]
        assert back.data["state"] == "recovered"
        assert back.data["cause"] == "disk full"
        async with asyncio.timeout(20):
            while outbox.held_bytes:  # what was held is written
                await outbox.flush()
        late = Sms(text="after")
        await outbox.put("sms", late)
        assert late.id in stored_ids(cfg.path)
    assert check_database(cfg.path) is None


def remount(disk: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(disk)], check=True)


async def test_read_only_filesystem_at_start_drains_holds_and_recovers(small_disk: Path) -> None:
    """The kernel remounts a failing SD card read-only; the daemon restarts on it."""
    cfg = OutboxConfig(
        path=small_disk / "outbox.db",
        retry_interval_s=0.1,
        commit_interval_s=0.05,
        event_interval_s=0,
        live_window_s=0,
    )
    stored = []
    async with Outbox(cfg, events=lambda e: None) as outbox:
        for i in range(10):
            sms = Sms(text=f"stored {i}")
            await outbox.put("sms", sms)
            stored.append(sms.id)
    remount(small_disk, "ro")
    events: list[Event] = []
    try:
        async with Outbox(cfg, events=events.append) as outbox:
            assert outbox.store_error is not None
            assert [e.data["state"] for e in events if e.kind == "store"] == ["failing"]
            assert outbox.depth == 10
            # Draining goes on from a read-only connection; acks wait in memory.
            batch = await outbox.next_batch(4)
            assert [r.id for r in batch] == stored[:4]
            await outbox.ack_seqs(r.seq for r in batch)
            assert [r.id for r in await outbox.next_batch(10)] == stored[4:]
            assert outbox.depth == 6
            # New positions are held; a sync message is refused (its source copy stays).
            held = Fix(mode=3, lat=5.0, lon=6.0)
            await outbox.put("fix", held)
            with pytest.raises(StoreError):
                await outbox.put("sms", Sms(text="not now"))

            remount(small_disk, "rw")
            async with asyncio.TaskGroup() as tg:
                runner = tg.create_task(outbox.run(), name="outbox")
                for _ in range(100):
                    if outbox.store_error is None and outbox.held_bytes == 0:
                        break
                    await asyncio.sleep(0.05)
                runner.cancel()
            assert outbox.store_error is None
            assert events[-1].kind == "store"
            assert events[-1].data["state"] == "recovered"
            assert stored_ids(cfg.path) == [*stored[4:], held.id]
    finally:
        remount(small_disk, "rw")
    assert check_database(cfg.path) is None


async def test_acks_alone_are_written_once_the_disk_is_back(small_disk: Path) -> None:
    cfg = OutboxConfig(path=small_disk / "outbox.db", retry_interval_s=0.1, event_interval_s=0)
    async with Outbox(cfg, events=lambda e: None) as outbox:
        for i in range(5):
            await outbox.put("sms", Sms(text=f"stored {i}"))
    remount(small_disk, "ro")
    try:
        async with Outbox(cfg, events=lambda e: None) as outbox:
            batch = await outbox.next_batch(5)
            await outbox.ack_seqs(r.seq for r in batch)
            assert outbox.depth == 0
            remount(small_disk, "rw")
            async with asyncio.TaskGroup() as tg:
                runner = tg.create_task(outbox.run(), name="outbox")
                for _ in range(100):
                    if outbox.store_error is None:
                        break
                    await asyncio.sleep(0.05)
                runner.cancel()
            assert outbox.store_error is None
            assert stored_ids(cfg.path) == []
    finally:
        remount(small_disk, "rw")
