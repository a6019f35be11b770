"""`terminal-gw replay` plays the modem: a session recorded against the simulator over a real
pty (single, Chinese UCS2 and three-part SMS) replayed to the driver prints the same records;
a capture that lost a reply shows a mismatch and still ends; no modem chunks exits 2."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from terminal_gw.config import ModemConfig
from terminal_gw.models import ModemStatus, SmsReceived
from terminal_gw.modem.at import AtPort
from terminal_gw.modem.sms import encode_submit
from terminal_gw.modem.tiantong import ModemState, TiantongModem
from terminal_gw.sim.modem import ModemSimulator
from terminal_gw.topics import Topics
from terminal_gw.transport.capture import CaptureReader, CaptureWriter
from terminal_gw.transport.playback import RecordingPort
from terminal_gw.transport.pty import PtyDevice
from terminal_gw.transport.serial import SerialPort
from tests.conftest import GNSS_CORPUS
from tests.modem.test_tiantong_rig import Sink, wait_until
from tests.test_replay import records
from tests.test_replay import run_replay as replay_process

T0 = datetime(2026, 11, 25, 9, 0, 0, tzinfo=timezone(timedelta(hours=8)))
SINGLE = "Position report request"
CHINESE = "船舶状态正常，请回复当前位置。"
REPLY_TO, REPLY = "+8613800138000", "All well on board"
LONG = " ".join(f"Weather bulletin line {n}: wind NE 5, sea moderate." for n in range(9))


@dataclass
class Recording:
    """A recorded driver session and what the driver stored while it was recorded."""

    capture: Path
    sms: list[SmsReceived]
    status: ModemStatus


@contextlib.asynccontextmanager
async def recorded_driver(
    directory: Path, capture: Path, config: ModemConfig
) -> AsyncIterator[tuple[ModemSimulator, TiantongModem, Sink]]:
    """The driver against the simulator on a pty, its port tapped into `capture`; both run
    until the block ends."""
    sink = Sink()
    with PtyDevice(directory / "tiantong0") as device, CaptureWriter(capture) as writer:
        sim = ModemSimulator(device)

        async def factory() -> AtPort:
            return RecordingPort(await SerialPort.open(device.path, 115200), writer)

        modem = TiantongModem(config, sink, topics=Topics("tgw", "replay"), port_factory=factory)
        async with asyncio.TaskGroup() as tg:
            sim_task = tg.create_task(sim.run(), name="sim")
            modem_task = tg.create_task(modem.run(), name="modem")
            try:
                yield sim, modem, sink
            finally:
                modem_task.cancel()
                sim_task.cancel()


async def record(directory: Path) -> Recording:
    """The driver against the simulator, tapped into a capture, while three messages arrive."""
    capture = directory / "session.cap"
    # The daemon's defaults, so that `replay` without --config runs the same driver settings.
    config = ModemConfig(port="recorded", command_timeout_s=2.0)
    async with recorded_driver(directory, capture, config) as (sim, modem, sink):
        await wait_until(lambda: modem.state is ModemState.OK and bool(sink.statuses()))
        await wait_until(lambda: modem.counters["sweeps"] == 1)
        messages = ((SINGLE, None), (CHINESE, None), (LONG, 3))
        for n, (text, parts) in enumerate(messages, start=1):
            sim.deliver("+8613912345678", text, timestamp=T0, force_parts=parts)
            await wait_until(lambda: len(sink.sms()) == n)  # noqa: B023 - awaited here
            if n == 1:  # a downlink command's send between the messages
                await modem.send_sms(encode_submit(REPLY_TO, REPLY, max_parts=1, ref=7))
        assert [s.pdu for s in sim.sent] == [
            p.hex for p in encode_submit(REPLY_TO, REPLY, max_parts=1, ref=7)
        ]
        await wait_until(lambda: not sim.storage)
        await asyncio.sleep(0.2)  # the last delete's answer is in the capture
    return Recording(capture, sink.sms(), sink.statuses()[-1])


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    return asyncio.run(record(tmp_path_factory.mktemp("modem-session")))


#: `terminal-gw replay` as a process, with a shorter guard than GNSS replays need.
run_replay = functools.partial(replay_process, timeout=30)


def of_topic(recs: list[dict[str, Any]], suffix: str) -> list[dict[str, Any]]:
    return [r["payload"] for r in recs if r["topic"] == f"tgw/replay/{suffix}"]


def without(payload: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k not in keys}


def test_the_recording_holds_the_three_messages(recording: Recording) -> None:
    assert [(s.text, s.parts, s.encoding) for s in recording.sms] == [
        (SINGLE, 1, "gsm7"),
        (CHINESE, 1, "ucs2"),
        (LONG, 3, "gsm7"),
    ]


def same_moment(replayed: str | None, recorded: str | None) -> bool:
    """Two payload times that name the same moment of the recording. The live driver stamps
    a record just after its reply was captured, so the two differ by the time it took to
    handle the reply (and can fall either side of a millisecond): far less than the 0.3 s
    between polls, and nothing like the time of the replay itself."""
    assert replayed is not None
    assert recorded is not None
    gap = datetime.fromisoformat(replayed) - datetime.fromisoformat(recorded)
    return abs(gap) <= timedelta(milliseconds=100)


def test_replay_prints_the_same_sms_and_status(recording: Recording) -> None:
    started = time.monotonic()
    result = run_replay("--jsonl", "--port", "modem", recording.capture)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    recs = records(result.stdout)
    sms = of_topic(recs, "sms/rx")
    expected = [s.to_json_dict() for s in recording.sms]
    # Same ids (derived from the message), texts, senders and times; `received` is the
    # recorded time of the read, not the time of the replay.
    assert [without(s, "received") for s in sms] == [without(s, "received") for s in expected]
    for played, recorded in zip(sms, expected, strict=True):
        assert same_moment(played["received"], recorded["received"])
    statuses = of_topic(recs, "modem/status")
    assert statuses
    assert without(statuses[-1], "id", "time") == without(
        recording.status.to_json_dict(), "id", "time"
    )
    assert statuses[-1]["imei"] == "860123456789012"
    assert statuses[-1]["operator"] == "CHINA TELECOM TIANTONG"
    assert not [r for r in of_topic(recs, "event") if r["kind"] == "playback_mismatch"]
    assert "mismatches" in result.stderr
    assert ", 0 mismatches, 0 remaining" in result.stderr
    assert elapsed < 8


def test_summary_counts_records_and_steps(recording: Recording) -> None:
    _, steps = _steps(recording.capture)
    result = run_replay("--port", "modem", recording.capture)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"modem steps: {steps} recorded, {steps} played, 0 remaining; 0 mismatches" in out
    assert "modem records: " in out
    assert "sms 3" in out
    assert "captures: 1 (capture 1)" in out
    # The send a downlink command made is made again, so the messages after it are played.
    assert "recorded sends made again: 1, failed: 0" in out
    assert not out.lstrip().startswith("{")


def _steps(capture: Path) -> tuple[int, int]:
    from terminal_gw.transport.playback import steps_from_chunks

    preamble, steps = steps_from_chunks(CaptureReader(capture), "modem")
    return len(preamble), len(steps)


def drop_reply(capture: Path, out: Path, command: bytes) -> None:
    """A copy of the capture without the modem's reply to the first `command`."""
    chunks = list(CaptureReader(capture))
    reader = CaptureReader(capture)
    assert reader.start is not None
    at = next(i for i, c in enumerate(chunks) if c.direction == ">" and c.data == command)
    end = next(i for i in range(at + 1, len(chunks)) if chunks[i].direction == ">")
    kept = chunks[: at + 1] + chunks[end:]
    with CaptureWriter(out, start=reader.start) as w:
        for c in kept:
            w.write(c.port, c.direction, c.data, c.ts)


def test_a_lost_reply_shows_a_mismatch_and_still_ends(recording: Recording, tmp_path: Path) -> None:
    edited = tmp_path / "edited.cap"
    drop_reply(recording.capture, edited, b"AT+CSQ\r")
    started = time.monotonic()
    result = run_replay("--jsonl", "--port", "modem", edited)
    assert time.monotonic() - started < 10
    assert result.returncode == 0, result.stderr
    recs = records(result.stdout)
    mismatches = [e for e in of_topic(recs, "event") if e["kind"] == "playback_mismatch"]
    assert mismatches
    assert mismatches[0]["data"]["wrote"] == "AT\r"  # the driver's ping after the silence
    assert mismatches[0]["data"]["expected"] == "AT+CREG?\r"
    # The rest of the recording is still played: the messages come through.
    assert [s["text"] for s in of_topic(recs, "sms/rx")] == [SINGLE, CHINESE, LONG]
    assert "0 mismatches" not in result.stderr


def test_without_modem_chunks_exits_2(tmp_path: Path) -> None:
    capture = tmp_path / "gnss-only.cap"
    with CaptureWriter(capture, start=1_700_000_000.0) as w:
        w.write("gnss", "<", b"$GNGGA,074150.799,,,,,0,00,,,M,0.0,M,,0000,*64\r\n")
    for path in (capture, GNSS_CORPUS / "beidou-bd.log"):
        result = run_replay("--jsonl", "--port", "modem", path)
        assert result.returncode == 2
        assert result.stdout == ""
        assert "no 'modem' chunks" in result.stderr
        assert "Traceback" not in result.stderr


def test_without_port_both_sides_are_replayed(recording: Recording, tmp_path: Path) -> None:
    both = tmp_path / "both.cap"
    chunks = list(CaptureReader(recording.capture))
    start = CaptureReader(recording.capture).start
    assert start is not None
    gnss = [c.data for c in CaptureReader(GNSS_CORPUS / "beidou-bd.log")]
    with CaptureWriter(both, start=start) as w:
        for i, c in enumerate(chunks):
            w.write(c.port, c.direction, c.data, c.ts)
            if i < len(gnss):
                w.write("gnss", "<", gnss[i], c.ts)
        for data in gnss[len(chunks) :]:
            w.write("gnss", "<", data, chunks[-1].ts)
    result = run_replay("--jsonl", both)
    assert result.returncode == 0, result.stderr
    topics = [r["topic"] for r in records(result.stdout)]
    assert topics.count("tgw/replay/gnss/fix") == 10
    assert topics.count("tgw/replay/sms/rx") == 3
    # The GNSS records first, then the modem's.
    assert topics.index("tgw/replay/sms/rx") > max(
        i for i, t in enumerate(topics) if t.startswith("tgw/replay/gnss/")
    )
    summary = run_replay(both).stdout
    assert "records: " in summary
    assert "modem sessions: 1 played" in summary


POLLS = {"poll_signal_s": 0.3, "poll_registration_s": 0.3, "poll_operator_s": 0.7}


async def record_polls(directory: Path) -> tuple[Path, list[ModemStatus]]:
    """A session with periodic polls; the signal changes halfway."""
    capture = directory / "polls.cap"
    config = ModemConfig(port="recorded", command_timeout_s=2.0, **POLLS)
    async with recorded_driver(directory, capture, config) as (sim, modem, sink):
        await wait_until(lambda: modem.state is ModemState.OK)
        await asyncio.sleep(0.8)
        sim.set_signal(25)
        await wait_until(lambda: modem.rssi == 25)
        await asyncio.sleep(0.8)
    return capture, sink.statuses()


def test_periodic_polls_replay_in_order_with_the_recording_config(tmp_path: Path) -> None:
    capture, statuses = asyncio.run(record_polls(tmp_path))
    assert [s.rssi for s in statuses] == [18, 25]
    config = tmp_path / "tgw.toml"
    config.write_text(
        '[device]\nid = "replay"\n\n[modem]\n' + "".join(f"{k} = {v}\n" for k, v in POLLS.items())
    )
    result = run_replay("--jsonl", "--port", "modem", "--config", config, capture)
    assert result.returncode == 0, result.stderr
    assert ", 0 mismatches, 0 remaining" in result.stderr
    played = of_topic(records(result.stdout), "modem/status")
    assert [s["rssi"] for s in played] == [18, 25]
    for replayed, recorded in zip(played, statuses, strict=True):
        assert same_moment(replayed["time"], recorded.time)  # the recorded times

    chunks = list(CaptureReader(capture))
    span = (chunks[-1].ts or 0) - (chunks[0].ts or 0)
    started = time.monotonic()
    paced = run_replay("--speed", "1", "--port", "modem", "--config", config, capture)
    assert paced.returncode == 0, paced.stderr
    assert time.monotonic() - started >= 0.7 * span  # the driver's polls come at their pace
    assert ", 0 mismatches, 0 remaining" in paced.stderr


def test_a_recording_the_driver_never_matches_exits_1(tmp_path: Path) -> None:
    capture = tmp_path / "other.cap"
    with CaptureWriter(capture, start=1_700_000_000.0) as w:
        for i in range(3):
            w.write("modem", ">", b"AT+QGPS=1\r", w.start + i)
            w.write("modem", "<", b"\r\nOK\r\n", w.start + i + 0.1)
    config = tmp_path / "tgw.toml"
    config.write_text(
        '[device]\nid = "replay"\n\n[modem]\nsweep_interval_s = 60\nrecovery_backoff_s = 60\n'
    )
    started = time.monotonic()
    result = run_replay("--port", "modem", "--config", config, capture)
    # A stall ends it, well before the 60 s recovery backoff (slack for a busy machine's start).
    assert time.monotonic() - started < 30
    assert result.returncode == 1, result.stderr
    assert "no recorded modem step could be played" in result.stderr
    assert "modem steps: 3 recorded, 0 played, 3 remaining" in result.stdout
    assert "modem stalled: 1 session(s)" in result.stdout


def test_without_port_a_modem_fragment_is_counted_not_played(tmp_path: Path) -> None:
    capture = tmp_path / "fragment.cap"
    with CaptureWriter(capture, start=1_700_000_000.0) as w:
        w.write("modem", ">", b"AT+CSQ\r", w.start)
        w.write("modem", "<", b"\r\n+CSQ: 17,99\r\n\r\nOK\r\n", w.start + 0.1)
    assert run_replay("--jsonl", capture).stdout == ""
    summary = run_replay(capture)
    assert summary.returncode == 0, summary.stderr
    assert "modem sessions: 0 played, 1 not played (2 chunks without the driver's start" in (
        summary.stdout
    )
    played = run_replay("--jsonl", "--port", "modem", capture)
    assert played.returncode == 0, played.stderr
    assert of_topic(records(played.stdout), "event")[0]["kind"] == "playback_mismatch"
