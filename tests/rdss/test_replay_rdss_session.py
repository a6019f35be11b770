"""A real RDSS session recorded by the daemon (the simulated terminal on a pty, a real broker,
`[rdss] record = true`) replayed with `terminal-gw replay`: the replay plays the terminal to
the driver, which writes its card query and the recorded sends again and gets the recorded
answers, so the same messages, card, beams and send feedback come out; and a capture holding
gnss, modem and rdss ports replays every one of them without --port."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from terminal_gw.daemon import Daemon
from terminal_gw.sim.rdss import RdssSimulator
from terminal_gw.transport.capture import CaptureReader, CaptureWriter, Chunk
from terminal_gw.transport.pty import PtyDevice
from tests.broker import Broker
from tests.conftest import GNSS_CORPUS
from tests.rdss.rig import FAST
from tests.test_daemon import Subscriber, make_config
from tests.test_replay import records, run_replay

BASE = "tgw/vessel-t"
CHINESE = "船舶状态正常，请回复当前位置。"
MIXED = "hello 北斗"


@dataclass
class Session:
    """A recorded daemon session and what the daemon published during it."""

    capture: Path
    rx: list[dict[str, Any]]
    tx: dict[str, list[dict[str, Any]]]
    status: dict[str, Any]


async def record_session(tmp_path: Path, broker: Broker, dialect: str) -> Session:
    """The daemon against the simulated terminal: card, beams, four messages in (one repeated
    by the terminal), a send, and a send the terminal first refuses with a wait."""
    device = PtyDevice(tmp_path / "dev" / "rdss0")
    sim = RdssSimulator(device, dialect=dialect, interval_s=2)  # type: ignore[arg-type]
    config = make_config(
        tmp_path,
        "none",
        broker.port,
        rdss={"port": device.path, **FAST, "record": True},
        record={"dir": str(tmp_path / "captures")},
    )
    daemon = Daemon(config)
    sub = Subscriber(broker.port, f"{BASE}/#")
    ready = asyncio.Event()

    def rx() -> list[dict[str, Any]]:
        return [m[1] for m in sub.messages if m[0] == f"{BASE}/bds/rx"]

    try:
        async with asyncio.TaskGroup() as tg:
            sub_task = tg.create_task(sub.run(ready), name="subscriber")
            await ready.wait()
            sim_task = tg.create_task(sim.run(), name="rdss-sim")
            daemon_task = tg.create_task(daemon.run(handle_signals=False), name="daemon")
            await sub.wait_for(
                lambda m: m[0] == f"{BASE}/rdss/status" and m[1].get("beams_ok") is True,
                timeout=20,
            )
            sim.deliver("0166166", text=CHINESE, mode="chinese")
            sim.deliver("0166166", data=bytes.fromhex("2458"), mode="code")
            sim.set_fault("duplicates")
            sim.deliver("0179773", text=MIXED, mode="mixed")
            sim.set_fault("duplicates", on=False)
            sim.deliver("0179773", data=bytes.fromhex("31323334"), mode="code", info_class=2)
            await sub.wait_for(lambda _: len(rx()) == 4)
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="dash") as dash:
                command = {"id": "m-1", "to": "0166166", "text": "位置 ok"}
                await dash.publish(f"{BASE}/cmd/bds/send", json.dumps(command), qos=1)
                await sub.wait_for(
                    lambda m: m[0] == f"{BASE}/bds/tx/m-1" and m[1]["state"] == "sent",
                    timeout=20,
                )
                sim.refuse_next_send(1)
                command = {"id": "m-2", "to": "166166", "data": "0102AB", "mode": "code"}
                await dash.publish(f"{BASE}/cmd/bds/send", json.dumps(command), qos=1)
                await sub.wait_for(
                    lambda m: m[0] == f"{BASE}/bds/tx/m-2" and m[1]["state"] == "sent",
                    timeout=20,
                )
            await sub.wait_for(lambda m: m[0] == f"{BASE}/rdss/status" and m[1]["sends_today"] == 2)
            daemon.supervisor.stop_requested.set()
            await daemon_task
            sim_task.cancel()
            sub_task.cancel()
    finally:
        device.close()
    assert sim.refusals == ["interval"]
    (capture,) = (tmp_path / "captures").iterdir()
    tx = {i: [m[1] for m in sub.messages if m[0] == f"{BASE}/bds/tx/{i}"] for i in ("m-1", "m-2")}
    statuses = [m[1] for m in sub.messages if m[0] == f"{BASE}/rdss/status"]
    return Session(capture, rx(), tx, statuses[-1])


def _of(recs: list[dict[str, Any]], suffix: str) -> list[dict[str, Any]]:
    return [r["payload"] for r in recs if r["topic"] == f"tgw/replay/{suffix}"]


def _content(m: dict[str, Any]) -> tuple[Any, ...]:
    keys = ("from", "mode", "text", "data", "info_class", "dialect", "raw", "reason")
    return tuple(m.get(k) for k in keys)


def _feedback(states: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What the terminal's feedback made of a send: its progress from the first hand-over on
    (before it, the recorded one may have waited for the command; the replay queues it when
    it went out). The recipient as digits: the sentence carries it zero-filled."""
    first = next(i for i, p in enumerate(states) if p["state"] == "sending")
    keys = ("state", "mode", "bits", "attempts", "code", "reason_code", "reason_name")
    return [(p["to"].lstrip("0"), *(p.get(k) for k in keys)) for p in states[first:]]


def _seconds_apart(a: str, b: str) -> float:
    return abs((datetime.fromisoformat(a) - datetime.fromisoformat(b)).total_seconds())


@pytest.mark.parametrize("dialect", ["2.1", "bds3"])
async def test_a_recorded_session_plays_the_terminal(
    tmp_path: Path, broker: Broker, dialect: str
) -> None:
    session = await record_session(tmp_path, broker, dialect)
    assert [m["mode"] for m in session.rx] == ["chinese", "code", "mixed", "code"]
    proc = await asyncio.to_thread(run_replay, "--jsonl", "--port", "rdss", session.capture)
    assert proc.returncode == 0, proc.stderr
    recs = records(proc.stdout)

    # The same messages, once each (the terminal's repeat dropped again), with their contents.
    rx = _of(recs, "bds/rx")
    assert [_content(m) for m in rx] == [_content(m) for m in session.rx]
    assert [m.get("text") for m in rx] == [CHINESE, None, MIXED, None]
    # Stamped with the recorded time of the read, not the time of the replay; and so with the
    # ids the daemon published (derived from that time and the message's place in the session).
    assert [(m["id"], m["received"]) for m in rx] == [(m["id"], m["received"]) for m in session.rx]

    # The sends made again got the recorded feedback: the first sent at once, the second
    # refused with a wait, retried by the driver after it, then sent.
    tx = {bds_id: _of(recs, f"bds/tx/{bds_id}") for bds_id in ("replay-1", "replay-2")}
    assert _feedback(tx["replay-1"]) == _feedback(session.tx["m-1"])
    assert _feedback(tx["replay-2"]) == _feedback(session.tx["m-2"])
    assert [p["state"] for p in tx["replay-2"]] == [
        "queued",
        "sending",
        "waiting_interval",
        "sending",
        "sent",
    ]
    if dialect == "bds3":
        assert tx["replay-2"][2]["reason_code"] == 1

    # The card, the beams and the sends as the recorded daemon's last status had them.
    status = _of(recs, "rdss/status")[-1]
    assert status["state"] == "ok"
    for key in ("dialect", "card", "beams", "beams_ok", "interval_s", "sends_today"):
        assert status[key] == session.status[key], key
    assert status["counters"]["rx"] == 4
    assert status["counters"]["rx_duplicates"] == 1
    assert status["counters"]["tx_sent"] == 2
    assert status["counters"]["tx_retries"] == 1
    assert _seconds_apart(status["last_send"], session.status["last_send"]) < 0.5
    assert all(e["kind"] != "playback_mismatch" for e in _of(recs, "event"))

    summary = await asyncio.to_thread(run_replay, "--port", "rdss", session.capture)
    assert summary.returncode == 0, summary.stderr
    assert "0 remaining; 0 mismatches" in summary.stdout
    assert "rdss writes made again: 1 card queries, 2 sends" in summary.stdout
    assert "0 mismatches, 0 remaining" in summary.stderr


def _retime(chunks: list[Chunk], start: float) -> list[Chunk]:
    first = next(c.ts for c in chunks if c.ts is not None)
    return [c._replace(ts=start + (c.ts or first) - first) for c in chunks]


async def test_one_capture_of_every_port_replays_each(tmp_path: Path, broker: Broker) -> None:
    from tests.test_replay_modem import record as record_modem

    for sub in ("rdss", "modem"):
        (tmp_path / sub).mkdir()
    session = await record_session(tmp_path / "rdss", broker, "2.1")
    modem = await record_modem(tmp_path / "modem")
    # One capture, as the daemon writes it with `record = true` on every port: the modem and
    # the RDSS sessions side by side, GNSS sentences between them.
    rdss_chunks = list(CaptureReader(session.capture))
    start = rdss_chunks[0].ts
    assert start is not None
    modem_chunks = _retime(list(CaptureReader(modem.capture)), start)
    gnss = [c.data for c in CaptureReader(GNSS_CORPUS / "beidou-bd.log")]
    merged = sorted(rdss_chunks + modem_chunks, key=lambda c: c.ts or 0.0)
    both = tmp_path / "all.cap"
    with CaptureWriter(both, start=start) as w:
        for i, c in enumerate(merged):
            w.write(c.port, c.direction, c.data, c.ts)
            if i < len(gnss):
                w.write("gnss", "<", gnss[i], c.ts)
        for data in gnss[len(merged) :]:
            w.write("gnss", "<", data, merged[-1].ts)
    assert {c.port for c in CaptureReader(both)} == {"gnss", "modem", "rdss"}

    proc = await asyncio.to_thread(run_replay, "--jsonl", both)
    assert proc.returncode == 0, proc.stderr
    recs = records(proc.stdout)
    topics = [r["topic"] for r in recs]
    assert topics.count("tgw/replay/gnss/fix") == 10
    assert topics.count("tgw/replay/sms/rx") == 3
    assert [_content(m) for m in _of(recs, "bds/rx")] == [_content(m) for m in session.rx]
    assert [p["state"] for p in _of(recs, "bds/tx/replay-2")][-1] == "sent"
    # GNSS first, then the modem's records, then the RDSS terminal's.
    last_gnss = max(i for i, t in enumerate(topics) if t.startswith("tgw/replay/gnss/"))
    assert last_gnss < topics.index("tgw/replay/sms/rx") < topics.index("tgw/replay/bds/rx")
    played = r"rdss: \d+ chunks from the terminal, played (\d+) of \1 steps, 0 mismatches"
    assert re.search(played, proc.stderr), proc.stderr

    summary = await asyncio.to_thread(run_replay, both)
    assert summary.returncode == 0, summary.stderr
    assert "modem sessions: 1 played" in summary.stdout
    assert "rdss sessions: 1 played" in summary.stdout
    assert "rdss dialect: 2.1" in summary.stdout
