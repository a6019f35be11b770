"""Uplink against a real mosquitto: birth and will, commands, drain order, rate, batches, faults."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sqlite3
import time
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from terminal_gw.errors import UplinkError
from terminal_gw.models import Event, FixBatch, Sky
from terminal_gw.outbox import Outbox, codec
from terminal_gw.uplink import (
    CommandMeta,
    Failure,
    LinkState,
    TokenBucket,
    Uplink,
    plan_messages,
)
from tests.broker import Broker, free_port
from tests.uplink_support import (
    DEVICE,
    Gate,
    Sms,
    event,
    fix,
    make_config,
    running,
    subscriber,
    topic_of,
    wait_until,
)

STATUS = f"tgw/{DEVICE}/status"


async def retained_status(port: int) -> dict[str, object]:
    """The retained status a new subscriber gets."""
    async with (
        aiomqtt.Client("127.0.0.1", port, timeout=5) as client,
        asyncio.timeout(5),
    ):
        await client.subscribe(STATUS, qos=1)
        async for m in client.messages:
            assert m.retain
            assert isinstance(m.payload, bytes)
            data: dict[str, object] = json.loads(m.payload)
            return data
    raise AssertionError("no status")


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_birth_is_retained_online_and_stop_leaves_offline(
    tmp_path: Path, broker: Broker, protocol: str
) -> None:
    config = make_config(tmp_path, broker.port, mqtt={"protocol": protocol})
    events: list[Event] = []
    async with Outbox(config.outbox) as outbox:
        uplink = Uplink(
            config, outbox, events=events.append, health=lambda: {"gnss": "ok", "depth": 0}
        )
        async with running(uplink):
            await wait_until(lambda: uplink.state is LinkState.CONNECTED)
            status = await retained_status(broker.port)
            assert status["state"] == "online"
            assert status["class"] == "STATUS"
            assert status["health"] == {"gnss": "ok", "depth": 0}
            assert status["id"]
        assert uplink.state is LinkState.STOPPED
    status = await retained_status(broker.port)
    assert status["state"] == "offline"
    assert not events


async def test_cancelled_uplink_leaves_offline_by_its_last_will(
    tmp_path: Path, broker: Broker
) -> None:
    config = make_config(tmp_path, broker.port)
    async with Outbox(config.outbox) as outbox:
        uplink = Uplink(config, outbox, events=lambda e: None)
        async with asyncio.TaskGroup() as tg:
            run = tg.create_task(uplink.run())
            await wait_until(lambda: uplink.state is LinkState.CONNECTED)
            assert (await retained_status(broker.port))["state"] == "online"
            run.cancel()  # as a supervisor that gives up waiting would
    assert run.cancelled()
    assert uplink.state is LinkState.STOPPED
    assert (await retained_status(broker.port))["state"] == "offline"


async def test_command_reaches_handler_with_response_topic(tmp_path: Path, broker: Broker) -> None:
    config = make_config(tmp_path, broker.port)
    got: list[tuple[str, bytes, CommandMeta]] = []

    async def on_command(name: str, payload: bytes, meta: CommandMeta) -> None:
        got.append((name, payload, meta))

    async with Outbox(config.outbox) as outbox:
        uplink = Uplink(config, outbox, events=lambda e: None, on_command=on_command)
        async with aiomqtt.Client(
            "127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5, timeout=5
        ) as client:
            # A retained command would run again at every connection: it is ignored.
            await client.publish(f"tgw/{DEVICE}/cmd/ping", b"stale", qos=1, retain=True)
            async with running(uplink):
                await wait_until(lambda: uplink.state is LinkState.CONNECTED)
                await _send_commands(client)
                await wait_until(lambda: len(got) >= 2)
                await asyncio.sleep(0.1)
    assert [(n, p) for n, p, _ in got] == [
        ("sms/send", b'{"to":"+8613800000000"}'),
        ("ping", b"{}"),
    ]
    meta = got[0][2]
    assert meta.response_topic == "ops/replies/7"
    assert meta.correlation_data == b"\x01\x02"
    assert meta.topic == f"tgw/{DEVICE}/cmd/sms/send"
    assert got[1][2].response_topic is None
    assert uplink.counters.commands == 2
    assert uplink.counters.commands_ignored == 1


async def _send_commands(client: aiomqtt.Client) -> None:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "ops/replies/7"
    props.CorrelationData = b"\x01\x02"
    await client.publish(
        f"tgw/{DEVICE}/cmd/sms/send", b'{"to":"+8613800000000"}', qos=1, properties=props
    )
    await client.publish(f"tgw/{DEVICE}/cmd/ping", b"{}", qos=1)
    await client.publish("tgw/other-device/cmd/ping", b"{}", qos=1)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_drain_delivers_everything_in_priority_then_class_order(
    tmp_path: Path, broker: Broker, protocol: str
) -> None:
    config = make_config(tmp_path, broker.port, mqtt={"inflight": 8, "protocol": protocol})
    async with Outbox(config.outbox) as outbox:
        fixes = [fix(i) for i in range(300)]
        events = [event(i) for i in range(20)]
        sms = [Sms(n=i) for i in range(5)]
        for i, f in enumerate(fixes):
            await outbox.put(topic_of(config, f), f)
            if i % 15 == 0:
                e = events[i // 15]
                await outbox.put(topic_of(config, e), e)
        for s in sms:
            await outbox.put(topic_of(config, s), s)
        await outbox.flush()
        uplink = Uplink(config, outbox, events=lambda e: None)
        async with subscriber(broker.port, f"tgw/{DEVICE}/#") as got, running(uplink, outbox):
            await got.wait_for(lambda g: len(g.record_ids()) >= 325)
            await wait_until(lambda: outbox.depth == 0)
        order = got.first_seen()
        assert order["SMS"] == [s.id for s in sms]
        assert order["EVENT"] == [e.id for e in events]
        assert order["TPV"] == [f.id for f in fixes]
        # Priority: every SMS before any event, every event before the backlog of fixes.
        ids = [rid for _, rid in got.record_ids()]
        assert max(ids.index(s.id) for s in sms) < min(ids.index(e.id) for e in events)
        assert max(ids.index(e.id) for e in events) < ids.index(fixes[-1].id)
        assert uplink.counters.records == 325
        assert len(ids) == 325  # no duplicates on a healthy link


async def test_live_record_is_not_starved_by_backlog(tmp_path: Path, broker: Broker) -> None:
    config = make_config(tmp_path, broker.port, mqtt={"rate_msgs_per_s": 400.0, "inflight": 4})
    async with Outbox(config.outbox) as outbox:
        for i in range(600):
            f = fix(i)
            await outbox.put(topic_of(config, f), f)
        await outbox.flush()
        uplink = Uplink(config, outbox, events=lambda e: None)
        async with subscriber(broker.port, f"tgw/{DEVICE}/#") as got, running(uplink, outbox):
            await got.wait_for(lambda g: len(g.messages) >= 50)
            urgent = Sms(n=1)
            await outbox.put(topic_of(config, urgent), urgent)
            await got.wait_for(lambda g: any(rid == urgent.id for _, rid in g.record_ids()))
            # Sent well before the backlog of fixes is through.
            assert outbox.depth > 100


def test_token_bucket_allows_burst_then_the_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=10.0, burst=5.0, clock=lambda: now[0])
    assert [bucket.reserve(1) for _ in range(5)] == [0.0] * 5
    assert bucket.reserve(1) == pytest.approx(0.1)
    assert bucket.reserve(1) == pytest.approx(0.2)
    now[0] = 10.0  # a long pause refills only up to the burst
    assert [bucket.reserve(1) for _ in range(5)] == [0.0] * 5
    assert bucket.reserve(1) > 0
    # One message bigger than the burst goes, and the debt delays the next.
    big = TokenBucket(rate=100.0, burst=50.0, clock=lambda: now[0])
    assert big.reserve(150) == pytest.approx(1.0)


async def test_rate_limit_spreads_a_backlog(tmp_path: Path, broker: Broker) -> None:
    # 60 messages at 40/s with a burst of 40: the last 20 need at least half a second.
    config = make_config(tmp_path, broker.port, mqtt={"rate_msgs_per_s": 40.0})
    async with Outbox(config.outbox) as outbox:
        for i in range(60):
            f = fix(i)
            await outbox.put(topic_of(config, f), f)
        await outbox.flush()
        uplink = Uplink(config, outbox, events=lambda e: None)
        async with subscriber(broker.port, f"tgw/{DEVICE}/gnss/#") as got, running(uplink, outbox):
            start = time.monotonic()
            await got.wait_for(lambda g: len(g.messages) >= 60)
            elapsed = time.monotonic() - start
    assert elapsed >= 0.45


async def test_backlog_fixes_are_batched_and_live_ones_single(
    tmp_path: Path, broker: Broker
) -> None:
    config = make_config(
        tmp_path,
        broker.port,
        mqtt={"batch_backlog": True, "batch_max": 40, "batch_min_age_s": 30.0},
    )
    clock = [time.time() - 3600]
    async with Outbox(config.outbox, clock=lambda: clock[0]) as outbox:
        old = [fix(i, clock[0]) for i in range(100)]
        for f in old:
            await outbox.put(topic_of(config, f), f)
        e = event(1)
        await outbox.put(topic_of(config, e), e)
        clock[0] = time.time()
        live = fix(1000)
        await outbox.put(topic_of(config, live), live)
        await outbox.flush()
        uplink = Uplink(config, outbox, events=lambda e: None)
        async with subscriber(broker.port, f"tgw/{DEVICE}/#") as got, running(uplink, outbox):
            await got.wait_for(lambda g: len(g.record_ids()) >= 102)
    batches = got.payloads("/gnss/fix/batch")
    assert [b["count"] for b in batches] == [40, 40, 20]
    for b in batches:
        FixBatch.model_validate(b)  # the published batch matches the documented model
    assert [f["id"] for b in batches for f in b["fixes"]] == [f.id for f in old]
    singles = [p for t, p, _ in got.messages if t == f"tgw/{DEVICE}/gnss/fix"]
    assert [json.loads(p)["id"] for p in singles] == [live.id]
    assert uplink.counters.batches == 3
    assert uplink.counters.records == 102


def test_plan_keeps_order_and_never_batches_across_other_records() -> None:
    from terminal_gw.outbox import Record

    def rec(seq: int, cls: str, created: float) -> Record:
        topic = "p/d/gnss/fix" if cls == "fix" else "p/d/event"
        return Record(seq, f"id{seq}", cls, topic, b"{}", created, 2)

    records = [rec(1, "fix", 0), rec(2, "fix", 0), rec(3, "event", 0), rec(4, "fix", 0)]
    records += [rec(5, "fix", 0), rec(6, "fix", 0), rec(7, "fix", 99)]
    plan = plan_messages(records, now=100, batch=True, batch_max=2, batch_min_age_s=10)
    assert [(m.topic, m.seqs) for m in plan] == [
        ("p/d/gnss/fix/batch", (1, 2)),
        ("p/d/event", (3,)),
        ("p/d/gnss/fix/batch", (4, 5)),
        ("p/d/gnss/fix", (6,)),  # a lone backlog fix goes as itself
        ("p/d/gnss/fix", (7,)),  # live
    ]
    assert [m.seqs for m in plan_messages(records, now=100)] == [(i,) for i in range(1, 8)]
    # More records wait than were read: an unfinished trailing group waits for the next read.
    tail = plan_messages(records[:5], now=100, batch=True, batch_max=3, hold_tail=True)
    assert [m.seqs for m in tail] == [(1, 2), (3,)]
    alone = plan_messages(records[3:5], now=100, batch=True, batch_max=3, hold_tail=True)
    assert [m.seqs for m in alone] == [(4, 5)]


async def waiting_ids(outbox: Outbox, path: Path) -> set[str]:
    """The ids of the records still waiting in the outbox (committed first)."""
    await outbox.flush()
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT payload FROM outbox")
        return {json.loads(codec.decode(p))["id"] for (p,) in rows}


async def test_broker_killed_and_restarted_mid_stream_loses_nothing(
    tmp_path: Path, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    async with Gate(broker.port) as gate:
        config = make_config(
            tmp_path,
            gate.port,
            mqtt={"inflight": 16, "rate_msgs_per_s": 500.0, "publish_timeout_s": 2.0},
        )
        async with Outbox(config.outbox) as outbox:
            expected: dict[str, list[str]] = {"TPV": [], "EVENT": [], "SMS": []}
            for i in range(1500):
                p = fix(i) if i % 10 else event(i)
                await outbox.put(topic_of(config, p), p)
                expected["TPV" if i % 10 else "EVENT"].append(p.id)
            uplink = Uplink(config, outbox, events=lambda e: None)
            async with (
                subscriber(broker.port, f"tgw/{DEVICE}/#", qos=0) as got,
                running(uplink, outbox),
            ):
                for cycle in range(8):
                    # Live records keep arriving during the outages.
                    s = Sms(n=cycle)
                    await outbox.put(topic_of(config, s), s)
                    expected["SMS"].append(s.id)
                    # Kill while the uplink is connected and streaming.
                    seen = len(got.messages)
                    await got.wait_for(
                        lambda g, n=seen: (
                            len(g.messages) > n + 50 and uplink.state is LinkState.CONNECTED
                        )
                    )
                    # Cut the link mid-stream (a real TCP cut at the relay), then kill the
                    # broker once it has passed on what it acknowledged: a broker without
                    # persistence that dies loses what it still queues for the subscriber,
                    # which says nothing of the uplink.
                    gate.open = False
                    gate.cut()
                    await wait_until(lambda: uplink.state is LinkState.BACKING_OFF)
                    put = {rid for ids in expected.values() for rid in ids}
                    acked = put - await waiting_ids(outbox, Path(config.outbox.path))
                    await got.wait_for(lambda g, a=acked: a <= {rid for _, rid in g.record_ids()})
                    broker.kill()
                    await asyncio.sleep(0.05)
                    broker.start()
                    await got.wait_for(lambda g: g.connected.is_set())
                    gate.open = True
                try:
                    await got.wait_for(
                        lambda g: len({rid for _, rid in g.record_ids()}) >= 1508, within=20
                    )
                except TimeoutError:
                    pytest.fail(
                        f"delivered {len({rid for _, rid in got.record_ids()})} of 1508; "
                        f"outbox depth {outbox.depth}, uplink {uplink.state} "
                        f"({uplink.state_reason})"
                    )
                await wait_until(lambda: outbox.depth == 0)
            assert uplink.counters.links_lost >= 8
    order = got.first_seen()
    for cls, ids in expected.items():
        assert order.get(cls) == ids, f"{cls}: delivered out of order or incomplete"
    # Duplicates only of records in flight when the broker died: at most a window per outage.
    assert len(got.record_ids()) - 1508 <= 16 * 8
    # No event-loop callback failed on a socket closed under it (a late add_writer).
    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]


async def test_stalled_broker_times_out_publishes_and_resends(
    tmp_path: Path, broker: Broker
) -> None:
    config = make_config(tmp_path, broker.port, mqtt={"publish_timeout_s": 0.5})
    async with Outbox(config.outbox) as outbox:
        uplink = Uplink(config, outbox, events=lambda e: None)
        async with subscriber(broker.port, f"tgw/{DEVICE}/#") as got, running(uplink, outbox):
            await wait_until(lambda: uplink.state is LinkState.CONNECTED)
            assert broker.proc is not None
            os.kill(broker.proc.pid, signal.SIGSTOP)  # the broker hangs: no PUBACK comes
            try:
                s = Sms(n=1)
                await outbox.put(topic_of(config, s), s)
                await wait_until(lambda: uplink.failure is Failure.TIMEOUT, within=5)
                assert uplink.state in (LinkState.BACKING_OFF, LinkState.CONNECTING)
                assert "PUBACK" in (uplink.state_reason or "")
            finally:
                os.kill(broker.proc.pid, signal.SIGCONT)
            await got.wait_for(lambda g: any(rid == s.id for _, rid in g.record_ids()))
            await wait_until(lambda: outbox.depth == 0)


async def test_unreachable_broker_backs_off_and_connects_when_it_appears(tmp_path: Path) -> None:
    port = free_port()
    config = make_config(tmp_path, port, mqtt={"backoff_min_s": 0.05, "backoff_max_s": 0.2})
    async with Outbox(config.outbox) as outbox:
        uplink = Uplink(config, outbox, events=lambda e: None)
        async with running(uplink):
            await wait_until(lambda: uplink.state is LinkState.BACKING_OFF)
            assert uplink.failure is Failure.NETWORK
            assert uplink.retry_at is not None
            assert uplink.retry_at - time.time() <= 0.2
            b = Broker(tmp_path, port=port)
            b.start()
            try:
                await wait_until(lambda: uplink.state is LinkState.CONNECTED, within=5)
                assert uplink.failure is None
            finally:
                await uplink.stop()
                b.kill()


def test_backoff_grows_to_the_cap_and_auth_waits_longest(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        1883,
        mqtt={"backoff_min_s": 1.0, "backoff_max_s": 8.0, "auth_backoff_s": 600.0},
    )
    uplink = Uplink(config, _NoOutbox(), events=lambda e: None)
    delays = [uplink.backoff_delay(Failure.NETWORK) for _ in range(8)]
    for delay, base in zip(delays, [1, 2, 4, 8, 8, 8, 8, 8], strict=True):
        assert base / 2 <= delay <= base  # jitter takes up to half off
    assert 540 <= uplink.backoff_delay(Failure.AUTH) <= 600
    assert 540 <= uplink.backoff_delay(Failure.TLS) <= 600


class _NoOutbox:
    async def lease(self, n: int, classes: object = None) -> list[object]:
        return []

    async def ack(self, records: object) -> None:
        return None

    def release(self, records: object) -> None:
        return None

    def release_all(self) -> None:
        return None

    async def wait_for_records(self, timeout: float) -> bool:
        await asyncio.sleep(timeout)
        return False


async def test_record_refused_by_the_broker_is_dropped_and_reported(
    tmp_path: Path, broker: Broker
) -> None:
    # MQTT 5 tells the publisher when an ACL refuses a message (PUBACK reason 0x87); sending
    # it again would be refused again and hold up the queue.
    acl = tmp_path / "acl"
    acl.write_text(
        f"topic readwrite tgw/{DEVICE}/gnss/fix\ntopic readwrite tgw/{DEVICE}/status\n"
        f"topic read tgw/{DEVICE}/cmd/#\n"
    )
    broker.kill()
    broker.extra_conf = [f"acl_file {acl}"]
    broker.start()
    config = make_config(tmp_path, broker.port)
    events: list[Event] = []
    async with Outbox(config.outbox) as outbox:
        refused = [Sky(time="2026-01-01T00:00:00.000Z") for _ in range(3)]
        for i in range(20):
            f = fix(i)
            await outbox.put(topic_of(config, f), f)
            if i % 7 == 0:
                sky = refused[i // 7]
                await outbox.put(topic_of(config, sky), sky)
        uplink = Uplink(config, outbox, events=events.append)
        async with subscriber(broker.port, f"tgw/{DEVICE}/gnss/#") as got, running(uplink, outbox):
            await got.wait_for(lambda g: len(g.record_ids()) >= 20)
            await wait_until(lambda: outbox.depth == 0)
            assert uplink.state is LinkState.CONNECTED
    assert uplink.counters.refused == 3
    assert uplink.counters.records == 23  # all left the outbox
    assert [cls for cls, _ in got.record_ids()] == ["TPV"] * 20
    assert len(events) == 1
    assert events[0].data["topic"] == f"tgw/{DEVICE}/gnss/sky"
    assert "Not authorized" in events[0].message


async def test_publish_now_when_connected_and_an_error_when_offline(
    tmp_path: Path, broker: Broker
) -> None:
    config = make_config(tmp_path, broker.port)
    async with Outbox(config.outbox) as outbox:
        uplink = Uplink(config, outbox, events=lambda e: None)
        with pytest.raises(UplinkError):
            await uplink.publish_now(f"tgw/{DEVICE}/cmd/result/1", b"{}")
        async with subscriber(broker.port, f"tgw/{DEVICE}/cmd/result/#") as got, running(uplink):
            await wait_until(lambda: uplink.state is LinkState.CONNECTED)
            await uplink.publish_now(f"tgw/{DEVICE}/cmd/result/1", b'{"ok":true}')
            await got.wait_for(lambda g: len(g.messages) == 1)
        assert got.messages[0][1] == b'{"ok":true}'


async def test_stop_does_not_wait_for_a_connack_that_never_comes(
    tmp_path: Path, broker: Broker
) -> None:
    config = make_config(tmp_path, broker.port, mqtt={"publish_timeout_s": 30.0})
    assert broker.proc is not None
    os.kill(broker.proc.pid, signal.SIGSTOP)  # the kernel still accepts; nobody answers
    try:
        async with Outbox(config.outbox) as outbox:
            uplink = Uplink(config, outbox, events=lambda e: None)
            async with asyncio.TaskGroup() as tg:
                run = tg.create_task(uplink.run())
                await asyncio.sleep(0.3)
                assert uplink.state is LinkState.CONNECTING
                start = time.monotonic()
                await uplink.stop(2.0)
                assert run.done()
                assert time.monotonic() - start < 1.0
                assert uplink.state is LinkState.STOPPED
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
