"""A full disk never sticks the outbox (a real 2 MiB tmpfs, mounted here; needs root).

The outbox keeps headroom on its filesystem and thins positions as the disk shrinks; acks are
deleted on a full disk and a restart sends nothing the broker already has; the command store
names the real cause; the status file keeps updating and says what is wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from terminal_gw.commands import CommandStore
from terminal_gw.config import OutboxConfig
from terminal_gw.daemon import Daemon
from terminal_gw.errors import StoreError
from terminal_gw.models import Event, Fix, Sky, new_id
from terminal_gw.outbox import Outbox, check_database, codec
from terminal_gw.sim.modem import ModemSimulator
from terminal_gw.status import StatusBoard, StatusFile, evaluate, read_status_file
from terminal_gw.transport.pty import PtyDevice
from tests.broker import Broker
from tests.outbox_child import Sms
from tests.test_daemon import Subscriber, make_config
from tests.test_outbox import stored_ids

MIB = 1024 * 1024
#: outbox.min_free's default, 5%, of the 2 MiB filesystem.
MIN_FREE = 2 * MIB * 5 // 100


def mount_tmpfs(mnt: Path, size: str = "2m") -> None:
    """Mount a real small filesystem, or skip (naming why) where that is impossible."""
    mnt.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for the full-disk tests needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB filesystem, unmounted afterwards."""
    mnt = tmp_path / "disk"
    mount_tmpfs(mnt)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _payloads(path: Path, cls: str) -> list[bytes]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [
            codec.decode(bytes(r[0]))
            for r in conn.execute("SELECT payload FROM outbox WHERE cls = ?", (cls,))
        ]
    finally:
        conn.close()


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def grow(path: Path, size: int | None = None) -> Path:
    """Grow a file to `size` bytes (None: until the filesystem says ENOSPC)."""
    with path.open("ab", buffering=0) as f:
        try:
            while size is None or f.tell() < size:
                chunk = 65536 if size is None else min(65536, size - f.tell())
                f.write(b"\0" * chunk)
        except OSError as exc:
            if exc.errno != errno.ENOSPC or size is not None:
                raise
    if size is None:
        # The last partial chunk may have left a few bytes: take them too.
        with contextlib.suppress(OSError), path.open("ab", buffering=0) as f:
            while True:
                f.write(b"\0" * 512)
    return path


class Clock:
    def __init__(self) -> None:
        self.now = 1.8e9

    def __call__(self) -> float:
        return self.now


def evicted(events: list[Event]) -> Counter[tuple[str, str]]:
    total: Counter[tuple[str, str]] = Counter()
    for e in events:
        if e.kind == "evicted":
            for cls, reasons in e.data["counts"].items():
                for reason, n in reasons.items():
                    total[(cls, reason)] += n
    return total


async def ingest(outbox: Outbox, clock: Clock, epochs: int, disk: Path) -> int:
    """`epochs` epochs at 10 Hz (a fix each, a sky each second); the least free space seen
    after each commit."""
    least = free_bytes(disk)
    for i in range(epochs):
        clock.now += 0.1
        await outbox.put("tgw/d/gnss/fix", Fix(mode=3, lat=30.0 + i * 1e-6, lon=120.0))
        if i % 10 == 0:
            await outbox.put("tgw/d/gnss/sky", Sky(satellites=[]))
        if i % 50 == 49:
            # Refused while another file has just taken the last blocks: the batch waits in
            # memory and is written once room is made (the daemon's outbox stage retries).
            with contextlib.suppress(StoreError):
                await outbox.flush()
            least = min(least, free_bytes(disk))
    with contextlib.suppress(StoreError):
        await outbox.flush()
    return min(least, free_bytes(disk))


async def test_outbox_keeps_headroom_on_a_small_disk_at_10_hz(disk: Path) -> None:
    """The issue's reproduction: 1.2 MiB of the 2 MiB taken by another file, max_bytes at its
    default, no broker, 10 Hz with every epoch reported."""
    grow(disk / "other", 1200 * 1024)
    clock = Clock()
    events: list[Event] = []
    cfg = OutboxConfig(path=disk / "outbox.db", commit_interval_s=0.2, event_interval_s=0)
    assert cfg.max_bytes == 256 * MIB  # the default: far above the free space
    async with Outbox(cfg, clock=clock, events=events.append) as outbox:
        # 20 minutes at 10 Hz: far more than the disk has room for.
        least = await ingest(outbox, clock, 12000, disk)
        assert outbox.limit_bytes < 1 * MIB
        assert least >= MIN_FREE, f"the outbox left only {least} bytes free"
        assert evicted(events)[("fix", "dropped")] > 0  # the oldest made way
        assert outbox.store_error is None
        assert outbox.health_problem is None
        first_limit = outbox.limit_bytes

        # The other file goes: the limit follows the free space up, headroom kept.
        (disk / "other").unlink()
        least = await ingest(outbox, clock, 6000, disk)
        assert outbox.limit_bytes > first_limit + 512 * 1024
        assert least >= MIN_FREE

        # It comes back and takes every block it can: the outbox goes on in its own pages
        # (positions make way for new ones) and says the disk is full.
        grow(disk / "other")
        assert free_bytes(disk) == 0
        await ingest(outbox, clock, 3000, disk)
        assert outbox.health_problem == "disk full"
        # Messages still get in: positions make way for them (a put the disk refuses is
        # tried again, as the modem's sweep does; the outbox stage makes room meanwhile).
        messages = [Sms(text=f"m{i}") for i in range(20)]
        async with asyncio.TaskGroup() as tg:
            runner = tg.create_task(outbox.run(), name="outbox")
            async with asyncio.timeout(30):
                for sms in messages:
                    while True:
                        try:
                            await outbox.put("tgw/d/sms/rx", sms)
                        except StoreError:
                            await asyncio.sleep(0.2)
                        else:
                            break
            runner.cancel()
        assert {m.id for m in messages} <= set(stored_ids(cfg.path))
        print(
            f"headroom at 10 Hz: least free {least} bytes before the disk was filled"
            f" (min_free {MIN_FREE}),"
            f" limit {outbox.limit_bytes}, evicted {dict(evicted(events))}"
        )
    assert check_database(cfg.path) is None


async def test_a_shrinking_disk_thins_positions_first(disk: Path) -> None:
    """Hours of fixes stored, then another file grows: the old ones are thinned (the track
    still reaches back to the first), none is dropped, messages stay."""
    clock = Clock()
    events: list[Event] = []
    cfg = OutboxConfig(path=disk / "outbox.db", commit_interval_s=0.2, event_interval_s=0)
    async with Outbox(cfg, clock=clock, events=events.append) as outbox:
        first = Fix(mode=3, lat=30.0, lon=120.0)
        await outbox.put("tgw/d/gnss/fix", first)
        for i in range(1, 1500):  # one fix every 10 s for about 4 hours
            clock.now += 10
            await outbox.put("tgw/d/gnss/fix", Fix(mode=3, lat=30.0 + i * 1e-4, lon=120.0))
        messages = [Sms(text=f"m{i}") for i in range(10)]
        for sms in messages:
            await outbox.put("tgw/d/sms/rx", sms)
        await outbox.flush()
        assert not evicted(events)
        # Another file leaves 80 KiB free: less than the headroom wants.
        grow(disk / "other", free_bytes(disk) - 80 * 1024)
        for _ in range(30):
            clock.now += 10
            await outbox.put("tgw/d/gnss/fix", Fix(mode=3, lat=31.0, lon=120.0))
            await outbox.flush()
        lost = evicted(events)
        assert lost[("fix", "thinned")] > 0
        assert lost[("fix", "dropped")] == 0
        ids = stored_ids(cfg.path)
        assert ids[0] == first.id  # thinned, not dropped: the track still reaches back
        assert {m.id for m in messages} <= set(ids)
        # Below the headroom the outbox's files did not grow: new rows went into freed pages.
        assert free_bytes(disk) >= 64 * 1024
        print(f"shrinking disk: {lost[('fix', 'thinned')]} fixes thinned, none dropped")


async def test_acks_are_deleted_on_a_full_disk_and_a_restart_sends_none_again(disk: Path) -> None:
    clock = Clock()
    cfg = OutboxConfig(path=disk / "outbox.db", commit_interval_s=0.2, event_interval_s=0)
    async with Outbox(cfg, clock=clock, events=lambda e: None) as outbox:
        await ingest(outbox, clock, 3000, disk)
        for i in range(50):
            await outbox.put("tgw/d/sms/rx", Sms(text=f"m{i}"))
        waiting = outbox.depth
        assert waiting > 500
        assert (disk / "outbox.db.reserve").exists()
        # Another file takes every last block.
        filler = grow(disk / "other")
        assert free_bytes(disk) == 0

        delivered: list[str] = []
        while batch := await outbox.next_batch(100):
            await outbox.ack_seqs(r.seq for r in batch)
            delivered += [r.id for r in batch]
        assert len(delivered) == waiting
        assert outbox.depth == 0
        assert stored_ids(cfg.path) == []  # deleted on disk, not only remembered
    # A restart (the disk still full) has nothing to send again.
    async with Outbox(cfg, clock=clock, events=lambda e: None) as outbox:
        assert outbox.depth == 0
        assert await outbox.next_batch(100) == []
        # Space returns: the reserve is made again.
        filler.unlink()
        await outbox.flush()
        await outbox.put("tgw/d/sms/rx", Sms(text="after"))
        assert (disk / "outbox.db.reserve").exists()
    print(f"full disk: {len(delivered)} acked records deleted; re-sent after restart: 0")


async def test_command_store_on_a_full_disk_names_the_disk(disk: Path) -> None:
    async with CommandStore(disk / "commands.db") as store:
        await store.add_sms("a", "+8613800138000", "first", parts=1, now=time.time())
        grow(disk / "other")
        failure: StoreError | None = None
        for i in range(200):  # until the pages SQLite already has run out
            try:
                await store.add_sms(f"b{i}", "+8613800138000", "x" * 150, parts=1, now=time.time())
            except StoreError as exc:
                failure = exc
                break
        assert failure is not None
        assert failure.reason.startswith("disk full"), failure.reason
        assert "no transaction" not in str(failure)
        assert (await store.get("a")) is not None  # what was stored stays readable


def test_status_file_keeps_updating_on_a_full_disk_and_names_the_cause(disk: Path) -> None:
    board = StatusBoard("vessel-t")
    board.progress("outbox")
    problem: list[str | None] = [None]
    board.add_check("outbox", lambda: problem[0])
    status = StatusFile(disk / "status.json")
    status.write(board.snapshot(), status.take())
    assert evaluate(read_status_file(status.path), time.time(), 5.0)[0] == 0

    grow(disk / "other")
    problem[0] = "disk full"
    board.progress("status")  # a new stage: the snapshot is bigger than the first
    snap = board.snapshot()
    assert snap["healthy"] is False
    assert snap["problems"] == {"outbox": "disk full"}
    time.sleep(0.01)
    assert status.write(snap, status.take())
    on_disk = read_status_file(status.path)
    assert on_disk["updated"] == snap["updated"]
    code, verdict = evaluate(on_disk, time.time(), 5.0)
    assert code == 1
    assert verdict == "UNHEALTHY (outbox: disk full)"
    # What an operator runs.
    done = subprocess.run(
        [sys.executable, "-m", "terminal_gw", "status", "--file", str(status.path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "UNHEALTHY (outbox: disk full)" in done.stdout

    # A status file that went stale on that disk: `status` names the disk.
    stale = {**on_disk, "updated": time.time() - 600}
    code, verdict = evaluate(stale, time.time(), 5.0, status.path)
    assert code == 1
    assert f"disk full on {disk}" in verdict
    assert json.loads(json.dumps(on_disk)) == on_disk


async def test_daemon_on_a_full_disk_answers_names_it_and_collects_the_sim_on_recovery(
    disk: Path, tmp_path: Path, broker: Broker
) -> None:
    """The daemon with its state on the small disk, a modem on a pty and a real broker: the
    disk fills; the retained status says why; a command is still answered on its response
    topic, naming the disk; an SMS the store cannot take stays on the SIM and is collected as
    soon as space returns (the periodic sweep is 10 minutes away)."""
    device = PtyDevice(tmp_path / "dev" / "tiantong0")
    sim = ModemSimulator(device)
    config = make_config(
        tmp_path,
        "none",
        broker.port,
        modem={"port": device.path, "baud": 115200, "sweep_interval_s": 600},
        outbox={"path": str(disk / "outbox.db"), "retry_interval_s": 0.5},
        commands={"path": str(disk / "commands.db")},
        status={"path": str(disk / "status.json"), "interval_s": 0.5},
    )
    daemon = Daemon(config)
    sub = Subscriber(broker.port, "tgw/vessel-t/#")
    ready = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as tg:
            sub_task = tg.create_task(sub.run(ready), name="subscriber")
            await ready.wait()
            sim_task = tg.create_task(sim.run(), name="modem-sim")
            daemon_task = tg.create_task(daemon.run(handle_signals=False), name="daemon")
            await sub.wait_for(lambda m: m[0] == "tgw/vessel-t/modem/status", timeout=20)

            filler = grow(disk / "other")
            # Until the command store's own pages run out too.
            async with asyncio.timeout(20):
                while True:
                    try:
                        await daemon.command_store.add_sms(
                            new_id(), "+8613800138000", "x" * 150, parts=1, now=time.time()
                        )
                    except StoreError:
                        break
            status = await sub.wait_for(
                lambda m: (
                    m[0] == "tgw/vessel-t/status"
                    and m[1]["health"].get("problems", {}).get("outbox") == "disk full"
                ),
                timeout=20,
            )
            assert status[-1][1]["health"]["healthy"] is False
            # Retained: a dashboard that looks now sees it.
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="dash") as dash:
                await dash.subscribe("tgw/vessel-t/status", qos=1)
                async with asyncio.timeout(10):
                    seen = await anext(aiter(dash.messages))
            assert seen.retain
            retained = json.loads(bytes(seen.payload))  # type: ignore[arg-type]
            assert retained["health"]["problems"] == {"outbox": "disk full"}

            # A command is answered on its response topic, with the real cause.
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = "ops/replies"
            props.CorrelationData = b"c-1"
            async with aiomqtt.Client(
                "127.0.0.1", broker.port, identifier="ops", protocol=aiomqtt.ProtocolVersion.V5
            ) as ops:
                await ops.subscribe("ops/replies", qos=1)
                body = {"id": "m-full", "to": "+8613800138000", "text": "are you there"}
                await ops.publish(
                    "tgw/vessel-t/cmd/sms/send", json.dumps(body), qos=1, properties=props
                )
                async with asyncio.timeout(20):
                    reply = await anext(aiter(ops.messages))
            answer = json.loads(bytes(reply.payload))  # type: ignore[arg-type]
            assert answer["ok"] is False
            assert answer["code"] == "store"
            assert "disk full" in answer["reason"]
            assert "no transaction" not in answer["reason"]
            # The command inbox sits on the same full disk: run unstored, acked once answered.
            assert daemon.uplink.counters.commands_unstored >= 1

            # The link goes down, and what waits fills the last pages: the store is down.
            sub_task.cancel()
            broker.kill()
            # (The other file takes again whatever the outbox's reserve gave back.)
            async with asyncio.timeout(30):
                for _ in range(3):
                    while True:
                        try:
                            await daemon.outbox.put("tgw/vessel-t/sms/rx", Sms(text="x" * 300))
                        except StoreError:
                            break
                    grow(filler)
            # An SMS arrives while the store cannot take it: it stays on the SIM.
            sim.deliver("+8613912345678", "left on the SIM while the disk was full")
            async with asyncio.timeout(20):
                while not daemon.modem or not daemon.modem.counters["sms_store_failed"]:
                    await asyncio.sleep(0.05)
            assert sim.storage
            assert daemon.board.snapshot()["problems"] == {"outbox": "disk full"}

            filler.unlink()
            t0 = time.monotonic()
            async with asyncio.timeout(30):
                while sim.storage:  # deleted from the SIM only once stored
                    await asyncio.sleep(0.05)
            took = time.monotonic() - t0
            assert took < 15, f"collected {took:.1f}s after space returned"
            assert daemon.modem is not None
            assert daemon.modem.counters["sms_received"] == 1
            async with asyncio.timeout(20):
                while daemon.board.snapshot()["problems"]:
                    await asyncio.sleep(0.05)
            print(f"SIM collected {took:.2f}s after space returned (the sweep is 600 s away)")
            daemon.supervisor.stop_requested.set()
            await daemon_task
            sim_task.cancel()
        waiting = [json.loads(p) for p in _payloads(disk / "outbox.db", "sms")]
        assert "left on the SIM while the disk was full" in [w.get("text") for w in waiting]
    finally:
        device.close()
