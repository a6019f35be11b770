"""CPU per published message in the uplink, against a plain paho-mqtt loop, in the same run.

A mosquitto started here (tests/broker.py) and a subscriber in another process (this file with
`--subscriber`, paho at QoS 1) that counts the records delivered (a fix batch counts its fixes).
For each mode, N fix records are put in a real Outbox (committed before the clock starts),
then, each measured with `time.process_time()` (this process, every thread: the outbox's
SQLite threads too), from the start until the subscriber has every record and the outbox is
empty:

- "uplink": `Uplink.run()` draining the outbox to the broker (connect, birth and subscription
  included: a few messages among thousands);
- "outbox": the same records read and acknowledged with the uplink's calls (`lease` with
  its limit, then `ack`), no MQTT: the outbox's share of the line above;
- "paho": a plain paho-mqtt client (`loop()` in this thread, no asyncio) publishing the
  messages the uplink published (same topics, payloads, QoS 1, same window of `inflight`)
  and waiting for every PUBACK: what the MQTT library itself costs.

Modes: "single" (live fixes, one message each) and "batched" (backlog fixes, `batch_backlog`,
`batch_max` fixes a message). The uplink's own CPU per message is uplink - outbox; the figure
to compare with the reference is that against paho.

Usage: python bench/uplink.py [--records 20000] [--inflight 16] [--repeat 3] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import paho.mqtt.client as paho  # noqa: E402 - after the path set-up
import structlog  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from terminal_gw.config import Config, load_config_data  # noqa: E402
from terminal_gw.models import Fix, iso_utc, new_id  # noqa: E402
from terminal_gw.outbox import Outbox  # noqa: E402
from terminal_gw.uplink import OutboxRecord, Outgoing, Uplink, plan_messages  # noqa: E402
from tests.broker import Broker  # noqa: E402

DEVICE = "bench1"
PREFIX = "terminal-gw"


# --- the subscriber (another process) ----------------------------------------------------


def subscriber(port: int, topic: str) -> None:
    """Count records delivered on `topic` (statuses left out); answer `expect N` on stdin with
    `got MESSAGES` once N records arrived since the last question."""
    state = {"records": 0, "messages": 0}

    def on_message(client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        if msg.topic.endswith("/status") or not msg.payload:
            return
        state["messages"] += 1
        if msg.topic.endswith("/batch"):
            state["records"] += int(json.loads(msg.payload)["count"])
        else:
            state["records"] += 1

    subscribed = []
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-subscriber")
    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.append(True)
    client.connect("127.0.0.1", port)
    client.subscribe(topic, qos=1)
    while not subscribed:
        client.loop(0.1)
    client.loop_start()
    print("ready", flush=True)
    for line in sys.stdin:
        want = int(line.split()[1])
        while state["records"] < want:
            time.sleep(0.005)
        print(f"got {state['messages']}", flush=True)
        state["records"] = 0
        state["messages"] = 0
    client.loop_stop()


class Counter:
    """The subscriber process, asked how many records arrived."""

    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--subscriber", str(port), f"{PREFIX}/{DEVICE}/#"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdin is not None
        self._out: IO[str] = self.proc.stdout
        self._in: IO[str] = self.proc.stdin
        line = self._out.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"subscriber did not start: {line!r}")

    def expect(self, records: int) -> None:
        self._in.write(f"expect {records}\n")
        self._in.flush()

    def delivered(self) -> int:
        """Blocks until the records expected arrived; the messages they came in."""
        return int(self._out.readline().split()[1])

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


# --- the runs ----------------------------------------------------------------------------


def config_for(work: Path, port: int, *, batched: bool, inflight: int) -> Config:
    return load_config_data(
        {
            "device": {"id": DEVICE},
            "mqtt": {
                "host": "127.0.0.1",
                "port": port,
                "prefix": PREFIX,
                "rate_msgs_per_s": 1e9,
                "rate_bytes_per_s": "1TB",
                "inflight": inflight,
                "batch_backlog": batched,
            },
            "outbox": {"path": str(work / "outbox.db"), "live_window_s": 0.0},
        },
        environ={},
    )


async def fill(outbox: Outbox, config: Config, n: int, *, now: list[float]) -> None:
    topic = f"{config.mqtt.prefix}/{DEVICE}/tpv"
    for i in range(n):
        t = now[0] or time.time()
        fix = Fix(id=new_id(), time=iso_utc(t), mode=3, lat=i / 1e6, lon=10.0, speed=1.0)
        await outbox.put(topic, fix)
    await outbox.flush()


class Calls:
    """The outbox as the uplink sees it, counting the acks it makes and the records in them."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.acks = 0
        self.acked = 0

    async def lease(self, n: int, classes: Collection[str] | None = None) -> Sequence[OutboxRecord]:
        return await self.outbox.lease(n, classes)

    def ack(self, records: Iterable[int]) -> Awaitable[None]:
        seqs = list(records)
        self.acks += 1
        self.acked += len(seqs)
        return self.outbox.ack(seqs)

    def release(self, records: Iterable[int]) -> None:
        self.outbox.release(records)

    def release_all(self) -> None:
        self.outbox.release_all()

    async def wait_for_records(self, timeout: float) -> bool:  # noqa: ASYNC109 - the outbox's
        return await self.outbox.wait_for_records(timeout)


@dataclass
class Run:
    cpu_s: float
    wall_s: float
    messages: int
    payloads: list[Outgoing]
    loop_cpu_s: float = 0.0  # of that, the event loop's thread (the rest: SQLite's threads)
    ack_size: int = 1  # records an outbox.ack call carried, on average


async def run_uplink(
    work: Path,
    port: int,
    counter: Counter,
    n: int,
    *,
    batched: bool,
    inflight: int,
    profile: cProfile.Profile | None,
) -> Run:
    config = config_for(work, port, batched=batched, inflight=inflight)
    now = [time.time() - 3600.0 if batched else 0.0]
    sent: list[Outgoing] = []
    async with Outbox(config.outbox, clock=lambda: now[0] or time.time()) as outbox:
        await fill(outbox, config, n, now=now)
        now[0] = 0.0
        calls = Calls(outbox)
        uplink = Uplink(config, outbox=calls, events=lambda e: None)
        # The messages published, for the reference run: read back after the run.
        counter.expect(n)
        if profile is not None:
            profile.enable()
        cpu0, wall0, loop0 = time.process_time(), time.monotonic(), time.thread_time()
        async with asyncio.TaskGroup() as tg:
            run = tg.create_task(uplink.run())
            duties = tg.create_task(outbox.run())
            delivered = await asyncio.to_thread(counter.delivered)
            while outbox.depth > 0:  # noqa: ASYNC110 - the outbox has no such event
                await asyncio.sleep(0.01)
            cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
            loop_cpu = time.thread_time() - loop0
            if profile is not None:
                profile.disable()
            await uplink.stop(5.0)
            await run
            duties.cancel()
        published = uplink.counters.published
    # The same messages again, planned from the same records, for the reference.
    async with Outbox(
        config_for(work / "again", port, batched=batched, inflight=inflight).outbox,
        clock=lambda: now[0] or time.time(),
    ) as again:
        now[0] = time.time() - 3600.0 if batched else 0.0
        await fill(again, config, n, now=now)
        now[0] = 0.0
        records = await again.next_batch(n + 1)
        sent = plan_messages(
            records,
            now=time.time(),
            batch=batched,
            batch_max=config.mqtt.batch_max,
            batch_min_age_s=config.mqtt.batch_min_age_s,
        )
    if published != delivered or published != len(sent):
        print(f"  note: published {published}, delivered {delivered}, planned {len(sent)}")
    return Run(cpu, wall, published, sent, loop_cpu, max(1, round(calls.acked / calls.acks)))


async def run_outbox(
    work: Path, port: int, n: int, *, batched: bool, inflight: int, ack_size: int
) -> Run:
    """The uplink's outbox calls alone: leases with its limit, acks of the size
    its acks had."""
    config = config_for(work, port, batched=batched, inflight=inflight)
    now = [time.time() - 3600.0 if batched else 0.0]
    cfg = config.mqtt
    limit = 4 * (max(cfg.inflight, cfg.batch_max) if batched else cfg.inflight)
    async with Outbox(config.outbox, clock=lambda: now[0] or time.time()) as outbox:
        await fill(outbox, config, n, now=now)
        now[0] = 0.0
        # In flight as in the uplink: a window of messages' records, leased ahead of it;
        # acknowledged oldest first, `ack_size` at a time.
        per_message = cfg.batch_max if batched else 1
        window = inflight * per_message
        flying: deque[int] = deque()
        cpu0, wall0 = time.process_time(), time.monotonic()
        async with asyncio.TaskGroup() as tg:
            duties = tg.create_task(outbox.run())
            while outbox.depth > 0:
                records = await outbox.lease(limit)
                if not records and not flying:
                    await outbox.wait_for_records(0.01)
                    continue
                for r in records:
                    flying.append(r.seq)
                while len(flying) > window or (flying and not records):
                    acked = [flying.popleft() for _ in range(min(len(flying), ack_size))]
                    await outbox.ack(acked)
            cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
            duties.cancel()
    return Run(cpu, wall, 0, [])


def run_paho(port: int, counter: Counter, messages: Sequence[Outgoing], inflight: int) -> Run:
    """A plain paho client: QoS 1, `inflight` in flight, every PUBACK awaited."""
    records = sum(len(m.seqs) for m in messages)
    acked = [0]

    def on_publish(*args: Any) -> None:
        acked[0] += 1

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-paho", protocol=paho.MQTTv5)
    client.max_inflight_messages_set(inflight)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    connected = []
    client.on_connect = lambda *a: connected.append(True)
    client.connect("127.0.0.1", port, 60)
    while not connected:
        client.loop(0.1)
    counter.expect(records)
    cpu0, wall0 = time.process_time(), time.monotonic()
    for m in messages:
        client.publish(m.topic, m.payload, qos=1, retain=m.retain)
    while acked[0] < len(messages):
        client.loop(1.0)
    delivered = counter.delivered()
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    client.disconnect()
    client.loop(0.1)
    if delivered != len(messages):
        print(f"  note: paho published {len(messages)}, delivered {delivered}")
    return Run(cpu, wall, len(messages), [])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--inflight", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3, help="runs a mode; the best is kept")
    parser.add_argument("--modes", default="single,batched")
    parser.add_argument("--profile", type=Path, help="cProfile of the uplink runs to this file")
    parser.add_argument("--subscriber", nargs=2, metavar=("PORT", "TOPIC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.subscriber:
        subscriber(int(args.subscriber[0]), args.subscriber[1])
        return 0

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    cpu_model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    print(f"machine: {cpu_model}, {os.cpu_count()} cpus, Python {platform.python_version()}")
    print(f"records {args.records}, inflight {args.inflight}, best of {args.repeat}")
    profile = cProfile.Profile() if args.profile else None
    with tempfile.TemporaryDirectory(prefix="bench-uplink-") as tmp:
        work = Path(tmp)
        broker = Broker(work / "broker")
        (work / "broker").mkdir()
        broker.start()
        counter = Counter(broker.port)
        try:
            rows = []
            for mode in args.modes.split(","):
                batched = mode == "batched"
                best: dict[str, Run] = {}
                for i in range(args.repeat):
                    d = work / f"{mode}-{i}"
                    d.mkdir()
                    up = asyncio.run(
                        run_uplink(
                            d / "u",
                            broker.port,
                            counter,
                            args.records,
                            batched=batched,
                            inflight=args.inflight,
                            profile=profile,
                        )
                    )
                    ob = asyncio.run(
                        run_outbox(
                            d / "o",
                            broker.port,
                            args.records,
                            batched=batched,
                            inflight=args.inflight,
                            ack_size=up.ack_size,
                        )
                    )
                    ref = run_paho(broker.port, counter, up.payloads, args.inflight)
                    for name, r in (("uplink", up), ("outbox", ob), ("paho", ref)):
                        if name not in best or r.cpu_s < best[name].cpu_s:
                            best[name] = r
                    print(
                        f"  {mode} run {i + 1}: uplink {up.cpu_s:.3f} s CPU ({up.wall_s:.2f} s),"
                        f" outbox {ob.cpu_s:.3f} s, paho {ref.cpu_s:.3f} s ({ref.wall_s:.2f} s),"
                        f" {up.messages} messages"
                    )
                rows.append((mode, best))
            print()
            print(
                f"{'mode':<8} {'messages':>8} {'uplink':>8} {'(loop':>7} {'sqlite)':>8}"
                f" {'outbox':>8} {'uplink-outbox':>14} {'paho':>8}"
                f" {'msgs/s uplink':>14} {'msgs/s paho':>12}   (us CPU a message)"
            )
            for mode, best in rows:
                up = best["uplink"]
                m = up.messages
                per = {k: 1e6 * r.cpu_s / m for k, r in best.items()}
                loop = 1e6 * up.loop_cpu_s / m
                print(
                    f"{mode:<8} {m:>8} {per['uplink']:>8.1f} {loop:>7.1f}"
                    f" {per['uplink'] - loop:>8.1f} {per['outbox']:>8.1f}"
                    f" {per['uplink'] - per['outbox']:>14.1f} {per['paho']:>8.1f}"
                    f" {m / up.wall_s:>14.0f} {m / best['paho'].wall_s:>12.0f}"
                )
        finally:
            counter.close()
            broker.stop()
    if profile is not None:
        profile.dump_stats(str(args.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
