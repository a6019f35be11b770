"""The daemon end to end: simulated receiver on a real pty, real mosquitto, real outbox."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from terminal_gw import daemon as daemon_module
from terminal_gw.config import Config, load_config_data
from terminal_gw.daemon import Daemon
from terminal_gw.models import Fix
from terminal_gw.outbox import Outbox
from terminal_gw.sdnotify import Notifier
from terminal_gw.sim.gnss import GnssSimulator
from terminal_gw.transport.capture import read_capture
from terminal_gw.transport.pty import PtyDevice
from terminal_gw.uplink import LinkState
from tests.broker import Broker, free_port
from tests.waiting import FakeClock, wait_until


def make_config(tmp_path: Path, gnss_port: str, mqtt_port: int, **extra: Any) -> Config:
    data: dict[str, Any] = {
        "device": {"id": "vessel-t"},
        "gnss": {
            "port": gnss_port,
            "baud": 9600,
            "stale_after_s": 2.0,
            "reporting": {"min_interval_s": 0, "distance_m": 0, "sky_interval_s": 0},
        },
        "mqtt": {
            "host": "127.0.0.1",
            "port": mqtt_port,
            "backoff_min_s": 0.1,
            "backoff_max_s": 0.5,
        },
        "outbox": {"path": str(tmp_path / "state" / "outbox.db"), "commit_interval_s": 0.2},
        "commands": {"path": str(tmp_path / "state" / "commands.db")},
        "status": {"path": str(tmp_path / "state" / "status.json"), "interval_s": 0.5},
        "daemon": {"restart_backoff_min_s": 0.1, "restart_backoff_max_s": 0.5},
    }
    for section, values in extra.items():
        data.setdefault(section, {}).update(values)
    return load_config_data(data, environ={})


class Subscriber:
    """Collects messages of a topic filter from a real broker."""

    def __init__(self, port: int, topic: str) -> None:
        self.port = port
        self.topic = topic
        self.messages: list[tuple[str, dict[str, Any], bool]] = []
        self.changed = asyncio.Event()

    async def run(self, ready: asyncio.Event) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port, identifier="sub-test") as client:
            await client.subscribe(self.topic, qos=1)
            ready.set()
            async for msg in client.messages:
                payload = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
                self.messages.append((str(msg.topic), payload, bool(msg.retain)))
                self.changed.set()

    async def wait_for(self, pred: Any, timeout: float = 10.0) -> list[Any]:
        async with asyncio.timeout(timeout):
            while True:
                found = [m for m in self.messages if pred(m)]
                if found:
                    return found
                self.changed.clear()
                await self.changed.wait()


def watch_events(daemon: Daemon) -> list[Any]:
    """Events the daemon raises itself from now on (reload, record), in order; they still
    reach the outbox. Stages given `daemon.emit` at construction are not watched."""
    events: list[Any] = []
    real_emit = daemon.emit

    def spy(event: Any) -> None:
        events.append(event)
        real_emit(event)

    daemon.emit = spy  # type: ignore[method-assign]
    return events


def status_of(path: Path) -> dict[str, Any]:
    """The daemon's status file ({} while it is not written yet)."""
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[tuple[PtyDevice, GnssSimulator]]:
    device = PtyDevice(tmp_path / "dev" / "by-id" / "usb-beidou-if00")
    sim = GnssSimulator(device, rate_hz=10, hangup_s=0.3)
    yield device, sim
    device.close()


async def test_fixes_and_status_reach_subscriber(
    tmp_path: Path, broker: Broker, receiver: tuple[PtyDevice, GnssSimulator]
) -> None:
    device, sim = receiver
    config = make_config(tmp_path, device.path, broker.port)
    daemon = Daemon(config)
    sub = Subscriber(broker.port, "tgw/vessel-t/#")
    ready = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        sub_task = tg.create_task(sub.run(ready), name="subscriber")
        await ready.wait()
        sim_task = tg.create_task(sim.run(), name="sim")
        daemon_task = tg.create_task(daemon.run(handle_signals=False), name="daemon")
        fixes = await sub.wait_for(lambda m: m[0] == "tgw/vessel-t/gnss/fix")
        fix = fixes[0][1]
        assert fix["class"] == "TPV"
        assert fix["mode"] == 3
        assert fix["used"]["bds"] > 0
        assert fix["clock"] == "gnss"
        await sub.wait_for(lambda m: m[0] == "tgw/vessel-t/gnss/sky")
        online = await sub.wait_for(
            lambda m: m[0] == "tgw/vessel-t/status" and m[1]["state"] == "online"
        )
        assert "stages" in online[0][1]["health"]
        daemon.supervisor.stop_requested.set()
        await daemon_task
        offline = await sub.wait_for(
            lambda m: m[0] == "tgw/vessel-t/status" and m[1]["state"] == "offline"
        )
        assert offline
        sim_task.cancel()
        sub_task.cancel()
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["stopped"] is True
    assert status["counters"]["records_in"]["fix"] > 0
    # Every fix accepted is either delivered (once) or still waiting in the outbox.
    ids = [m[1]["id"] for m in sub.messages if m[0] == "tgw/vessel-t/gnss/fix"]
    assert len(ids) == len(set(ids))
    async with Outbox(config.outbox) as outbox:
        waiting = await outbox.stats()
    left = waiting["fix"].count if "fix" in waiting else 0
    assert len(ids) + left == status["counters"]["records_in"]["fix"]


async def test_pty_hangups_are_survived(
    tmp_path: Path, broker: Broker, receiver: tuple[PtyDevice, GnssSimulator]
) -> None:
    """A receiver unplugged and plugged back 20 times: reading resumes within 2 s each time."""
    device, sim = receiver
    config = make_config(tmp_path, device.path, broker.port)
    daemon = Daemon(config)
    delays = []
    async with asyncio.TaskGroup() as tg:
        sim_task = tg.create_task(sim.run(), name="sim")
        daemon_task = tg.create_task(daemon.run(handle_signals=False), name="daemon")
        for _ in range(20):
            before = daemon.gnss.pipeline.counters.get("good", 0)
            await wait_until(
                lambda n=before: daemon.gnss.pipeline.counters.get("good", 0) > n, what="sentences"
            )
            sim.set_fault("hangup")
            # wait for the pty to come back, then time how long until sentences flow again
            await wait_until(lambda: device.is_up, what="pty re-created")
            count = daemon.gnss.pipeline.counters.get("good", 0)
            delays.append(
                await wait_until(
                    lambda n=count: daemon.gnss.pipeline.counters.get("good", 0) > n,
                    what="sentences after the hang-up",
                )
            )
        daemon.supervisor.stop_requested.set()
        await daemon_task
        sim_task.cancel()
    print(f"hang-ups: {len(delays)}, reading again after max {max(delays):.3f}s")
    assert max(delays) < 2.0, delays
    assert daemon.gnss.port is not None
    assert daemon.gnss.port.opens >= 21


async def test_status_record_tap_metrics_and_reload(
    tmp_path: Path, broker: Broker, receiver: tuple[PtyDevice, GnssSimulator]
) -> None:
    """While running: status file and `terminal-gw status`, the capture tap, /metrics, SIGHUP."""
    device, sim = receiver
    metrics_port = free_port()
    config = make_config(
        tmp_path,
        device.path,
        broker.port,
        status={"metrics_port": metrics_port},
        record={"dir": str(tmp_path / "captures")},
    )
    config = config.model_copy(update={"gnss": config.gnss.model_copy(update={"record": True})})
    cfg_path = tmp_path / "config.toml"
    cfg_path.write_text(
        f'[device]\nid = "vessel-t"\n[gnss.reporting]\nmin_interval_s = 42\n'
        f"[mqtt]\nport = {broker.port + 1}\n"
    )
    daemon = Daemon(config, config_path=cfg_path)
    events = watch_events(daemon)
    async with asyncio.TaskGroup() as tg:
        sim_task = tg.create_task(sim.run(), name="sim")
        daemon_task = tg.create_task(daemon.run(handle_signals=False), name="daemon")
        await wait_until(lambda: daemon.records_in["fix"] >= 3, what="fixes read")
        # A status file written since every stage runs: what `terminal-gw status` reads.
        await wait_until(lambda: status_of(config.status.path).get("healthy"), what="healthy")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "terminal_gw",
            "status",
            "--file",
            str(config.status.path),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0, out.decode()
        assert "healthy" in out.decode()
        assert "gnss" in out.decode()
        reader, writer = await asyncio.open_connection("127.0.0.1", metrics_port)
        writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
        body = (await reader.read()).decode()
        writer.close()
        await writer.wait_closed()
        assert 'tgw_sentences_total{outcome="good"}' in body
        assert "tgw_outbox_depth" in body
        # SIGHUP: the reporting policy changes at once; the broker port needs a restart.
        daemon.supervisor.handle_signal(signal.SIGHUP)
        await wait_until(
            lambda: any(e.kind == "config_reload" for e in events), what="config reloaded"
        )
        assert daemon.gnss.policy.config.min_interval_s == 42
        reload = next(e for e in events if e.kind == "config_reload")
        assert "mqtt.port" in reload.data["needs_restart"]
        assert "gnss.reporting" in reload.data["applied"]
        daemon.supervisor.stop_requested.set()
        await daemon_task
        sim_task.cancel()
    captures = list((tmp_path / "captures").iterdir())
    assert len(captures) == 1
    chunks = list(read_capture(captures[0]))
    assert chunks
    assert all(c.port == "gnss" and c.direction == "<" for c in chunks)
    assert b"GGA," in b"".join(c.data for c in chunks)


async def test_recording_that_cannot_be_written_never_stops_ingest(
    tmp_path: Path, broker: Broker, receiver: tuple[PtyDevice, GnssSimulator]
) -> None:
    device, sim = receiver
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the capture directory should be")
    config = make_config(tmp_path, device.path, broker.port, record={"dir": str(blocker)})
    config = config.model_copy(update={"gnss": config.gnss.model_copy(update={"record": True})})
    daemon = Daemon(config)
    events = watch_events(daemon)
    async with asyncio.TaskGroup() as tg:
        sim_task = tg.create_task(sim.run(), name="sim")
        daemon_task = tg.create_task(daemon.run(handle_signals=False), name="daemon")
        await wait_until(lambda: daemon.records_in["fix"] >= 5, what="fixes read")
        daemon.supervisor.stop_requested.set()
        await daemon_task
        sim_task.cancel()
    assert daemon.board.stages["gnss"].restarts == 0
    (record_event,) = [e for e in events if e.kind == "record"]
    assert record_event.severity == "warning"
    assert "cannot record gnss" in record_event.message


async def test_watchdog_stops_when_outbox_writes_hang(
    tmp_path: Path,
    receiver: tuple[PtyDevice, GnssSimulator],
    notify_socket: tuple[socket.socket, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A disk write that never returns (a dying SD card) stalls the outbox stage: the
    watchdog pings stop and the status says which stage, while the receiver keeps reading.
    Stall time runs on a fake clock the test moves: a loaded machine cannot fake a stall."""
    device, sim = receiver
    notify, notify_path = notify_socket
    env = {"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "300000"}
    # No broker answers: fixes wait in the outbox and must be written to disk.
    config = make_config(tmp_path, device.path, free_port(), status={"stall_s": 30.0})
    daemon = Daemon(config, notifier=Notifier(env))
    clock = FakeClock()
    daemon.board.clock = clock
    stuck = threading.Event()
    hung = threading.Event()
    release = threading.Event()
    real_insert = daemon.outbox._db.insert

    def hanging_insert(*args: Any) -> Any:
        if stuck.is_set():
            hung.set()
            release.wait(30)
        return real_insert(*args)

    monkeypatch.setattr(daemon.outbox._db, "insert", hanging_insert)

    received: list[str] = []

    async def listen() -> None:  # as systemd does, so the socket's queue never fills
        loop = asyncio.get_running_loop()
        while True:
            received.append((await loop.sock_recv(notify, 4096)).decode())

    def pings(after: int, what: str = "WATCHDOG=1", n: int = 1) -> Any:
        return lambda: sum(m.startswith(what) for m in received[after:]) >= n

    def stalled_stages() -> set[str]:
        return set(daemon.board.stalled())

    async with asyncio.TaskGroup() as tg:
        listener = tg.create_task(listen(), name="notify-listener")
        sim_task = tg.create_task(sim.run(), name="sim")
        daemon_task = tg.create_task(daemon.run(handle_signals=False), name="daemon")
        try:
            await wait_until(lambda: daemon.records_in["fix"] >= 3, what="fixes read")
            await wait_until(pings(0, n=3), what="pings while healthy")
            clock.advance(25)  # less than stall_s without a stage's progress: still healthy
            await wait_until(pings(len(received), n=2), what="pings within stall_s")
            assert stalled_stages() == set()
            stuck.set()
            await asyncio.to_thread(hung.wait, 30)
            assert hung.is_set(), "the outbox never wrote to disk"
            clock.advance(31)  # the outbox is hung for longer than stall_s

            # The stages still working report progress again soon (status, link, events);
            # the receiver's stage waits on the outbox's commit, and is seen waiting too.
            def only_hung_stages() -> bool:
                stalled = stalled_stages()
                return "outbox" in stalled and stalled <= {"outbox", "gnss"}

            await wait_until(only_hung_stages, what="only the hung stages stalled")
            mark = len(received)
            await wait_until(pings(mark, "STATUS=stalled: ", 3), what="stall reported")
            during = received[mark:]
            assert "WATCHDOG=1" not in during
            assert all("outbox" in m for m in during if m.startswith("STATUS=")), during
            assert "outbox" in stalled_stages()
            await wait_until(
                lambda: status_of(config.status.path).get("healthy") is False,
                what="status file unhealthy",
            )
            assert status_of(config.status.path)["stages"]["outbox"]["idle_s"] >= 30
            release.set()
            await wait_until(lambda: not stalled_stages(), what="the outbox back")
            await wait_until(pings(len(received)), what="pings resumed")
            daemon.supervisor.stop_requested.set()
            await daemon_task
        finally:
            release.set()  # never leave a worker thread hanging, also when the test fails
            sim_task.cancel()
            listener.cancel()
    # Nothing accepted was lost to the hang: every fix waits in the outbox.
    async with Outbox(config.outbox) as outbox:
        waiting = await outbox.stats()
    assert waiting["fix"].count == daemon.records_in["fix"]


async def test_input_faster_than_the_link_waits_for_pubacks_not_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the link is up and the records held in memory reach half a commit, the GNSS
    stage's next read waits for PUBACKs to take some off (`PACE_MAX_S` at most), rather
    than letting them pile up into a commit written only to be deleted; with the link down, or
    below that, it does not wait."""
    longest = 0.5  # PACE_MAX_S made long enough to tell the waits apart on a busy machine
    monkeypatch.setattr(daemon_module, "PACE_MAX_S", longest)
    config = make_config(tmp_path, "none", free_port(), outbox={"commit_bytes": 8192})
    daemon = Daemon(config)
    (tmp_path / "state").mkdir()
    async with daemon.outbox:
        n = 0
        while daemon.outbox.held_bytes < 4096:
            await daemon.outbox.put("tgw/vessel-t/gnss/fix", Fix(time="2026-12-04T12:00:00Z"))
            n += 1
        assert daemon.outbox.commits == 0
        assert daemon.outbox.held_bytes < 8192

        async def paced() -> float:
            t0 = time.monotonic()
            await daemon.pace_input()
            return time.monotonic() - t0

        daemon.uplink.state = LinkState.BACKING_OFF
        assert await paced() < longest / 10  # the link is down: nothing to wait for
        daemon.uplink.state = LinkState.CONNECTED
        assert await paced() >= longest * 0.9  # no PUBACK comes: the longest wait
        # PUBACKs take the records off: the wait ends then.
        waiting = asyncio.create_task(paced())
        await asyncio.sleep(0.01)
        await daemon.outbox.ack(await daemon.outbox.lease(n))
        daemon.uplink._drain.acked.set()  # as the drain does when it acks
        assert await waiting < longest * 0.9
        assert daemon.outbox.held_bytes == 0
        assert await paced() < longest / 10  # nothing held: no wait
        assert daemon.outbox.commits == 0
