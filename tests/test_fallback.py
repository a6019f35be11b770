"""[fallback]: a vessel without MQTT sends its track as one report through the RDSS terminal
(simulator on a pty); a shore daemon receiving it from a known sender publishes the positions
as the vessel's fixes on a real broker, within max_error_m of the track."""

from __future__ import annotations

import asyncio
import base64
import json
import math
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from terminal_gw.commands.runner import CommandRunner
from terminal_gw.commands.store import CommandStore
from terminal_gw.config import FallbackConfig
from terminal_gw.daemon import Daemon
from terminal_gw.fallback import SMS_REPORT_BYTES, FallbackSender, ShoreSink
from terminal_gw.models import Fix, SmsReceived, iso_utc
from terminal_gw.outbox import Outbox
from terminal_gw.sim.rdss import RdssSimulator
from terminal_gw.transport.pty import PtyDevice
from terminal_gw.wire.track import Point, decode_report, encode_report, is_report, track_errors
from tests.broker import Broker, free_port
from tests.commands_support import make_config as commands_config
from tests.commands_support import modem_on_pty
from tests.rdss.rig import FAST, rig
from tests.test_daemon import Subscriber, make_config
from tests.waiting import wait_until

START = datetime(2026, 5, 1, 6, tzinfo=UTC).timestamp()


def vessel(seconds: int) -> list[Fix]:
    """A vessel at 5 m/s turning slowly, 1 Hz."""
    lat, lon, heading = 30.5, 122.2, 40.0
    out = []
    for i in range(seconds):
        heading += 0.02 * math.sin(i / 300)
        lat += 5 * math.cos(math.radians(heading)) / 111_195
        lon += 5 * math.sin(math.radians(heading)) / (111_195 * math.cos(math.radians(lat)))
        out.append(
            Fix(time=iso_utc(START + i), mode=3, lat=round(lat, 7), lon=round(lon, 7), speed=5.0)
        )
    return out


def points(fixes: list[Fix]) -> list[Point]:
    return [Point(START + i, f.lat or 0.0, f.lon or 0.0) for i, f in enumerate(fixes)]


async def test_a_report_through_the_rdss_simulator_is_decoded_by_a_shore_daemon(
    tmp_path: Path, broker: Broker
) -> None:
    cfg = FallbackConfig(channel="bds", to="0166166", after_s=0, interval_s=60, max_error_m=10)
    track = vessel(3600)
    async with rig(tmp_path / "vessel") as r:
        await wait_until(lambda: r.driver.card is not None, what="the card")
        sender = FallbackSender(
            cfg,
            connected=lambda: False,
            rdss=r.driver,
            state_path=tmp_path / "fallback.json",
            events=r.events.append,
            clock=lambda: START + 3600,
        )
        for f in track:
            sender.observe(f)
        await sender.tick()
        assert sender.counters["report_queued"] == 1
        await wait_until(lambda: len(r.sim.sent) == 1, what="the report sent")
        sent = r.sim.sent[0]
        vessel_id = r.sim.user_id
        assert sent.to.lstrip("0") == "166166"
        report = sender.last_report
        assert report is not None
        assert report["bytes"] <= sender.capacity()
        # Nothing new since: the next tick sends nothing, and the day's count is kept.
        sender.next_at = 0
        await sender.tick()
        assert len(r.sim.sent) == 1
        assert json.loads((tmp_path / "fallback.json").read_text())["sent"] == 1

    # The shore station: its own terminal, the vessel's id mapped to the vessel's device.
    device = PtyDevice(tmp_path / "shore" / "rdss0")
    shore_sim = RdssSimulator(device, dialect="2.1")
    config = make_config(
        tmp_path / "shore",
        "none",
        broker.port,
        device={"id": "shore-1"},
        rdss={"port": device.path, **FAST},
        fallback={"senders": {vessel_id: "vessel-7"}},
    )
    daemon = Daemon(config)
    sub = Subscriber(broker.port, "tgw/vessel-7/gnss/fix")
    ready = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as tg:
            sub_task = tg.create_task(sub.run(ready))
            await ready.wait()
            sim_task = tg.create_task(shore_sim.run())
            daemon_task = tg.create_task(daemon.run(handle_signals=False))
            await wait_until(lambda: daemon.rdss is not None and daemon.rdss.card is not None)
            shore_sim.deliver(vessel_id, data=bytes.fromhex(sent.content), mode="code")
            await sub.wait_for(lambda _: len(sub.messages) >= report["points"], timeout=20)
            daemon.supervisor.stop_requested.set()
            await daemon_task
            sim_task.cancel()
            sub_task.cancel()
    finally:
        device.close()
    got = [m[1] for m in sub.messages]
    assert len(got) == report["points"]
    assert all(g["source"] == f"bds:{vessel_id}" for g in got)
    assert all(g["class"] == "TPV" and g["mode"] == 2 for g in got)
    assert daemon.fallback_counters["report_fixes"] == len(got)
    decoded = [
        Point(datetime.fromisoformat(g["time"]).timestamp(), g["lat"], g["lon"]) for g in got
    ]
    covered = points(track)[-report["fixes"] :]
    decoded.sort(key=lambda p: p.t)  # the outbox sends the newest fix ahead of the rest
    errors = track_errors(covered, decoded)
    assert max(errors) <= 10.0 + 0.5  # within max_error_m (the grid's rounding in it)
    assert report["fixes"] >= 1800  # at least half an hour of the 1 Hz track in one message


async def test_no_report_while_connected_before_after_s_or_over_the_daily_cap(
    tmp_path: Path,
) -> None:
    cfg = FallbackConfig(channel="bds", to="0166166", after_s=300, interval_s=60, max_per_day=1)
    now = [START]
    up = [True]
    async with rig(tmp_path) as r:
        await wait_until(lambda: r.driver.card is not None, what="the card")
        sender = FallbackSender(
            cfg,
            connected=lambda: up[0],
            rdss=r.driver,
            state_path=tmp_path / "fallback.json",
            events=r.events.append,
            clock=lambda: now[0],
        )
        for f in vessel(600):
            sender.observe(f)
        await sender.tick()
        up[0] = False
        now[0] += 1
        await sender.tick()  # down, but not for after_s yet
        assert sender.counters["report_queued"] == 0
        now[0] += 300
        await sender.tick()
        assert sender.counters["report_queued"] == 1, sender.counters
        for f in vessel(700)[600:]:
            sender.observe(f)
        now[0] += 61
        await sender.tick()
        assert sender.counters["report_queued"] == 1  # the day's cap
        assert sender.counters["over_daily_cap"] == 1


class ListSink:
    def __init__(self) -> None:
        self.records: list[tuple[str, Any]] = []

    async def put(
        self, topic: str, payload: Any, *, retain: bool = False, sync: Any = None
    ) -> None:
        self.records.append((topic, payload))


async def test_a_base64_sms_report_from_a_known_number_becomes_fixes() -> None:
    track = points(vessel(600))
    report = encode_report(track, max_error_m=10, max_bytes=SMS_REPORT_BYTES)
    assert report is not None
    text = base64.b64encode(report.data).decode()
    assert len(text) <= 160
    inner = ListSink()
    counters: Counter[str] = Counter()
    sink = ShoreSink(inner, prefix="tgw", senders={"+8613800000001": "vessel-9"}, counters=counters)
    for sender in ("+8613800000001", "+8613999999999"):
        sms = SmsReceived(received=iso_utc(START), sender=sender, text=text, encoding="gsm7")
        await sink.put("tgw/shore/sms/rx", sms)
    plain = SmsReceived(received=iso_utc(START), sender="+8613800000001", text="hello")
    await sink.put("tgw/shore/sms/rx", plain)
    fixes = [p for t, p in inner.records if t == "tgw/vessel-9/gnss/fix"]
    assert len(fixes) == len(report.points)
    assert fixes[0].source == "sms:+8613800000001"
    assert counters["report_unknown_sender"] == 1
    assert len([t for t, _ in inner.records if t.endswith("sms/rx")]) == 3  # all still published


async def test_a_report_by_sms_goes_through_the_sms_queue_and_reads_back_at_the_shore(
    tmp_path: Path,
) -> None:
    config = commands_config(tmp_path)
    cfg = FallbackConfig(channel="sms", to="+8613800000001", after_s=0, interval_s=60)
    track = vessel(1800)
    async with (
        Outbox(config.outbox) as outbox,
        CommandStore(config.commands.path) as store,
        modem_on_pty() as modem,
    ):
        runner = CommandRunner(config, store, outbox, modem.driver)
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(runner.run())
            sender = FallbackSender(
                cfg,
                connected=lambda: False,
                rdss=None,
                sms=runner,
                state_path=tmp_path / "fallback.json",
                events=lambda e: None,
                clock=lambda: START + 1800,
            )
            for f in track:
                sender.observe(f)
            await sender.tick()
            assert sender.counters["report_queued"] == 1, sender.counters
            await wait_until(lambda: modem.sends() == 1, what="the SMS sent")
            task.cancel()
        report = sender.last_report
        assert report is not None
        job = await store.get(report["id"])
        assert job is not None
    assert len(job.text) <= 160  # one SMS
    # The shore reads it back from the text of the SMS it receives.
    inner = ListSink()
    sink = ShoreSink(
        inner, prefix="tgw", senders={"+8613800000009": "vessel-9"}, counters=Counter()
    )
    await sink.put(
        "tgw/shore/sms/rx",
        SmsReceived(received=iso_utc(START), sender="+8613800000009", text=job.text),
    )
    fixes = [p for t, p in inner.records if t == "tgw/vessel-9/gnss/fix"]
    assert len(fixes) == report["points"]
    assert report["fixes"] == 1800


async def test_the_daemon_sends_a_report_when_its_broker_is_unreachable(tmp_path: Path) -> None:
    device = PtyDevice(tmp_path / "rdss0")
    sim = RdssSimulator(device, dialect="2.1")
    config = make_config(
        tmp_path,
        "none",
        free_port(),  # no broker there
        rdss={"port": device.path, **FAST},
        fallback={"channel": "bds", "to": "0166166", "after_s": 0.5, "interval_s": 1},
    )
    daemon = Daemon(config)
    track = vessel(600)
    try:
        async with asyncio.TaskGroup() as tg:
            sim_task = tg.create_task(sim.run())
            daemon_task = tg.create_task(daemon.run(handle_signals=False))
            await wait_until(lambda: daemon.rdss is not None and daemon.rdss.card is not None)
            for f in track:
                await daemon.gnss.accept(f, START)
            await wait_until(lambda: len(sim.sent) >= 1, timeout=20, what="a report")
            health = daemon.health_summary()
            daemon.supervisor.stop_requested.set()
            await daemon_task
            sim_task.cancel()
    finally:
        device.close()
    raw = bytes.fromhex(sim.sent[0].content)
    assert is_report(raw)
    got = decode_report(raw)
    assert got[-1].t == START + 599  # up to the newest fix
    assert health["counters"]["fallback"]["report_queued"] >= 1
