"""A link profile with `encoding = "compact"`: fixes and sky summaries in compact batches on
gnss/batch (MQTT 5 content type), every id recoverable; a JSON profile unchanged; fix ids
derived from the device and the GNSS time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from terminal_gw import wire
from terminal_gw.config import Config, LinkProfileConfig
from terminal_gw.models import Fix, Satellite, Sky, Status, iso_utc, new_id
from terminal_gw.outbox import Outbox
from terminal_gw.uplink import Uplink
from terminal_gw.uplink.compact import derive_id, plan_compact
from tests.broker import Broker
from tests.byte_proxy import ByteProxy
from tests.uplink_support import DEVICE, event, fix, make_config, running, topic_of, wait_until


def with_links(config: Config, *profiles: dict[str, Any]) -> Config:
    return config.model_copy(
        update={"links": [LinkProfileConfig.model_validate(p) for p in profiles]}
    )


@dataclass
class Got:
    messages: list[tuple[str, bytes, str | None]] = field(default_factory=list)

    def batches(self) -> list[tuple[bytes, str | None]]:
        return [(p, ct) for t, p, ct in self.messages if t.endswith("/gnss/batch")]

    def decoded(self) -> list[dict[str, Any]]:
        return [rec for p, _ in self.batches() for rec in wire.decode_batch(p)]


@contextlib.asynccontextmanager
async def v5_subscriber(port: int, topic: str) -> AsyncIterator[Got]:
    got = Got()
    ready = asyncio.Event()

    async def loop() -> None:
        async with aiomqtt.Client(
            "127.0.0.1",
            port,
            identifier=f"sub-{new_id()[-12:]}",
            protocol=aiomqtt.ProtocolVersion.V5,
            timeout=5,
        ) as client:
            await client.subscribe(topic, qos=1)
            ready.set()
            async for m in client.messages:
                payload = m.payload if isinstance(m.payload, bytes) else b""
                ct = getattr(m.properties, "ContentType", None) if m.properties else None
                got.messages.append((m.topic.value, payload, ct))

    task = asyncio.create_task(loop())
    try:
        async with asyncio.timeout(10):
            await ready.wait()
        yield got
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def sky(t: float) -> Sky:
    sats = [
        Satellite(PRN=1, gnssid=0, svid=1, used=True, el=40.0, az=100.0, ss=40.0),
        Satellite(PRN=201, gnssid=3, svid=1, used=False, el=10.0, az=200.0, ss=20.0),
    ]
    return Sky(time=iso_utc(t), satellites=sats, nSat=2, uSat=1, hdop=0.9)


async def test_a_compact_profile_sends_batches_that_decode_to_every_fix(
    tmp_path: Path, broker: Broker
) -> None:
    config = with_links(
        make_config(tmp_path, broker.port),
        {"name": "sat", "encoding": "compact", "batch_max_records": 600},
    )
    start = float(int(time.time()) - 3600)
    clock = [start]
    sent: list[Fix] = []
    skies: list[Sky] = []
    async with Outbox(config.outbox, clock=lambda: clock[0]) as outbox:
        for i in range(1500):
            clock[0] = start + i
            p = fix(i, start + i)
            if i % 3:  # most with the derived id the daemon gives, some random
                p = derive_id(p, DEVICE)
                assert isinstance(p, Fix)
            sent.append(p)
            await outbox.put(topic_of(config, p), p)
            if i % 100 == 0:
                s = sky(start + i)
                skies.append(s)
                await outbox.put(topic_of(config, s), s)
        e = event(1)
        await outbox.put(topic_of(config, e), e)
        uplink = Uplink(config, outbox, events=lambda e: None)
        async with v5_subscriber(broker.port, f"tgw/{DEVICE}/#") as got:
            async with running(uplink, outbox):
                await wait_until(lambda: outbox.depth == 0, within=30)
                await wait_until(lambda: len(got.decoded()) >= 1515, within=10)
                assert uplink.link_summary()["encoding"] == "compact"
            batches = got.batches()
            assert batches
            assert all(ct == wire.CONTENT_TYPE for _, ct in batches)
            assert all(wire.read_header(p).count <= 600 for p, _ in batches)
            decoded = got.decoded()
            tpv = [r for r in decoded if r["class"] == "TPV"]
            assert [r["id"] for r in tpv] == [f.id for f in sent]
            assert [r["lat"] for r in tpv] == [f.lat for f in sent]
            assert [r["time"] for r in tpv] == [f.time for f in sent]
            sky_got = [r for r in decoded if r["class"] == "SKY"]
            assert [r["id"] for r in sky_got] == [s.id for s in skies]
            assert sky_got[0]["seen"] == {"gps": 1, "bds": 1}
            assert sky_got[0]["used"] == {"gps": 1}
            assert "satellites" not in sky_got[0]
            # No fix as JSON; the event as JSON, one message.
            assert not [m for m in got.messages if m[0].endswith("/gnss/fix")]
            assert [m for m in got.messages if m[0].endswith("/event")]
            # Derived ids cost no bytes: a batch of them is far smaller than one of random ids.
            assert uplink.counters.batches == len(batches)


async def test_live_fixes_wait_for_a_fuller_batch_at_most_batch_max_age_s(
    tmp_path: Path, broker: Broker
) -> None:
    config = with_links(
        make_config(tmp_path, broker.port),
        {"name": "sat", "encoding": "compact", "batch_max_age_s": 1.5},
    )
    async with Outbox(config.outbox) as outbox:
        uplink = Uplink(config, outbox, events=lambda e: None)
        async with (
            v5_subscriber(broker.port, f"tgw/{DEVICE}/gnss/#") as got,
            running(uplink, outbox),
        ):
            first = time.monotonic()
            ids = []
            for i in range(5):
                p = derive_id(fix(i, time.time() + i), DEVICE)
                ids.append(p.id)
                await outbox.put(topic_of(config, p), p)
            await wait_until(lambda: len(got.decoded()) == 5, within=10)
            assert time.monotonic() - first >= 1.0  # held for more, not sent one by one
            assert len(got.batches()) == 1
            assert [r["id"] for r in got.decoded()] == ids


async def test_a_json_profile_is_unchanged(tmp_path: Path, broker: Broker) -> None:
    config = with_links(make_config(tmp_path, broker.port), {"name": "lan", "encoding": "json"})
    async with Outbox(config.outbox) as outbox:
        sent = [fix(i) for i in range(20)]
        for p in sent:
            await outbox.put(topic_of(config, p), p)
        uplink = Uplink(config, outbox, events=lambda e: None)
        async with v5_subscriber(broker.port, f"tgw/{DEVICE}/gnss/#") as got:
            async with running(uplink, outbox):
                await wait_until(lambda: len(got.messages) == 20, within=10)
            assert not got.batches()
            assert all(t.endswith("/gnss/fix") and ct is None for t, _, ct in got.messages)
            assert [json.loads(p)["id"] for _, p, _ in got.messages] == [f.id for f in sent]


def test_the_derived_id_is_the_one_a_batch_recovers_and_untimed_fixes_keep_theirs() -> None:
    t = 1_780_000_000.123
    a = derive_id(fix(1, t), DEVICE)
    b = derive_id(fix(2, t), DEVICE)
    assert a.id == b.id == wire.fix_id(DEVICE, 1_780_000_000_123)  # stable per epoch
    untimed = Fix(mode=1)
    assert derive_id(untimed, DEVICE).id == untimed.id
    system = Fix(time=iso_utc(t), mode=3, lat=1.0, lon=2.0, clock="system")
    assert derive_id(system, DEVICE).id == system.id
    batch = wire.encode_batch([a.to_json_dict()], DEVICE, compress=False)
    assert wire.decode_batch(batch)[0]["id"] == a.id


def test_a_payload_the_batch_cannot_read_goes_as_json() -> None:
    @dataclass
    class R:
        seq: int
        cls: str
        topic: str
        payload: bytes
        created: float
        retain: bool = False

    recs = [
        R(1, "fix", "t/fix", fix(1, 100.0).to_json().encode(), 0.0),
        R(2, "fix", "t/fix", b"not json", 0.0),
        R(3, "fix", "t/fix", fix(3, 102.0).to_json().encode(), 0.0),
    ]
    plan = plan_compact(recs, now=1000.0, device=DEVICE, topic="t/batch")
    assert [(m[0], m[3], m[4]) for m in plan.messages] == [
        ("t/batch", (1,), True),
        ("t/fix", (2,), False),
        ("t/batch", (3,), True),
    ]


async def test_topic_aliases_name_each_topic_once_per_connection(
    tmp_path: Path, broker: Broker
) -> None:
    async with ByteProxy(broker.port) as proxy:
        config = with_links(make_config(tmp_path, proxy.port), {"name": "lan"})
        async with Outbox(config.outbox) as outbox:
            sent = [fix(i) for i in range(200)]
            for p in sent:
                await outbox.put(topic_of(config, p), p)
            uplink = Uplink(config, outbox, events=lambda e: None)
            async with v5_subscriber(broker.port, f"tgw/{DEVICE}/gnss/#") as got:
                async with running(uplink, outbox):
                    await wait_until(lambda: len(got.messages) == 200, within=10)
                    up = proxy.count.up
                # The broker resolved every alias: each message on its full topic.
                assert {t for t, _, _ in got.messages} == {topic_of(config, sent[0])}
                assert [json.loads(p)["id"] for _, p, _ in got.messages] == [f.id for f in sent]
    topic = len(topic_of(config, sent[0]))
    payloads = sum(len(p.to_json()) for p in sent)
    # Without aliases the topics alone (2 + 17 B a PUBLISH) would take more than all the
    # overhead does with them: the topic goes once, then a 3 B alias property.
    assert up < payloads + 200 * (topic + 2)


async def test_a_compact_link_sends_a_small_birth_and_no_stale_statuses(
    tmp_path: Path, broker: Broker
) -> None:
    config = with_links(
        make_config(tmp_path, broker.port),
        {"name": "sat", "encoding": "compact", "batch_max_age_s": 0},
    )
    board = {
        "healthy": True,
        "problems": {},
        "uptime_s": 12.5,
        "stages": {f"stage{i}": {"state": "running", "restarts": 0} for i in range(10)},
        "counters": {f"c{i}": {"x": i, "y": i} for i in range(30)},
        "gauges": {"outbox_depth": 3, "last_fix_mode": 3, "last_fix_age_s": 0.4, "link": "up"},
    }
    async with Outbox(config.outbox) as outbox:
        stale = [Status(time=iso_utc(time.time()), state="online", health=board) for _ in range(5)]
        for s in stale:
            await outbox.put(f"tgw/{DEVICE}/status", s, retain=True)
        p = fix(1)
        await outbox.put(topic_of(config, p), p)
        uplink = Uplink(config, outbox, events=lambda e: None, health=lambda: board)
        async with v5_subscriber(broker.port, f"tgw/{DEVICE}/#") as got:
            async with running(uplink, outbox):
                await wait_until(lambda: outbox.depth == 0, within=10)
                await wait_until(lambda: len(got.batches()) == 1, within=10)
            statuses = [p for t, p, _ in got.messages if t.endswith("/status")]
            births = [json.loads(p) for p in statuses if json.loads(p)["state"] == "online"]
            assert len(births) == 1  # the birth; the 5 stored before it superseded
            assert {s.id for s in stale}.isdisjoint(b["id"] for b in births)
            assert len(statuses[0]) < 300
            assert births[0]["health"] == {
                "compact": True,
                "profile": "sat",
                "healthy": True,
                "uptime_s": 12.5,
                "outbox_depth": 3,
                "last_fix_mode": 3,
                "last_fix_age_s": 0.4,
            }
            assert uplink.counters.status_skipped == 5
