"""`terminal-gw replay` end to end: corpus captures, own-format captures, pacing, errors."""

from __future__ import annotations

import io
import json
import os
import pty
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from terminal_gw.gnss.pipeline import GnssPipeline
from terminal_gw.models import Event, Fix, Payload, Sky
from terminal_gw.replay import Replayer, Stats
from terminal_gw.transport import capture
from terminal_gw.transport.capture import CaptureReader, CaptureWriter
from tests.conftest import CORPUS, GNSS_CORPUS, REPO

GPSD_CORPUS = CORPUS / "gnss-gpsd"

CORPUS_LOGS = sorted(GNSS_CORPUS.glob("*.log"))
MODELS: dict[str, type[Payload]] = {"TPV": Fix, "SKY": Sky, "EVENT": Event}
# Sentence types that carry the UTC time of day, and the field that holds it.
TIME_FIELD = {"GGA": 1, "RMC": 1, "GNS": 1, "ZDA": 1, "GST": 1, "GLL": 5}


def run_replay(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "terminal_gw", "replay", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        check=False,
    )


def records(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def without_ids(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "payload": {k: v for k, v in r["payload"].items() if k != "id"}} for r in recs]


def epoch_times(log: Path) -> list[str]:
    """The UTC times of day of the epochs in a raw log, read with a plain split."""
    times: list[str] = []
    for line in log.read_bytes().splitlines():
        if not line.startswith(b"$"):
            continue
        fields = line.decode("ascii", "replace").split("*")[0].split(",")
        index = TIME_FIELD.get(fields[0][3:])
        if (
            index is not None
            and len(fields) > index
            and fields[index]
            and (not times or fields[index] != times[-1])
        ):
            times.append(fields[index])
    return times


@pytest.mark.parametrize("log", CORPUS_LOGS, ids=lambda p: p.name)
def test_corpus_capture_gives_one_valid_fix_per_epoch(log: Path) -> None:
    result = run_replay("--jsonl", log)
    assert result.returncode == 0, result.stderr
    recs = records(result.stdout)
    fixes = [r for r in recs if r["payload"]["class"] == "TPV"]
    assert len(fixes) == len(epoch_times(log))
    for r in recs:
        model = MODELS[r["payload"]["class"]]
        payload = model.model_validate(r["payload"])
        assert r["topic"] == f"tgw/replay/{model.topic_suffix}"
        assert payload.to_json_dict() == r["payload"]
    assert len({r["payload"]["id"] for r in recs}) == len(recs)
    # Counters at the end, on stderr; no progress drawing when stderr is not a terminal.
    assert "replay: 1 capture(s)" in result.stderr
    assert "\r" not in result.stderr


def test_summary_without_jsonl() -> None:
    log = GNSS_CORPUS / "beidou-bd.log"
    result = run_replay(log)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    recs = records(run_replay("--jsonl", log).stdout)
    skies = sum(r["payload"]["class"] == "SKY" for r in recs)
    assert f"records: {len(recs)} (fix 10, sky {skies})" in out
    assert "GNSS time: 2015-02-25T07:41:50.799Z .. 2015-02-25T07:41:59.799Z" in out
    assert "pipeline counters:" in out
    assert "proprietary.PSRFEPE" in out
    assert not out.lstrip().startswith("{")


def test_topics_come_from_the_config(tmp_path: Path) -> None:
    config = tmp_path / "tgw.toml"
    config.write_text('[device]\nid = "vessel-9"\n\n[mqtt]\nprefix = "fleet"\n')
    result = run_replay("--jsonl", "--config", config, GNSS_CORPUS / "beidou-gb.log")
    assert result.returncode == 0, result.stderr
    topics = {r["topic"] for r in records(result.stdout)}
    assert topics == {"fleet/vessel-9/gnss/fix", "fleet/vessel-9/gnss/sky"}


def test_bad_config_exits_2_with_the_field(tmp_path: Path) -> None:
    config = tmp_path / "tgw.toml"
    config.write_text('[device]\nid = "no spaces allowed"\n')
    result = run_replay("--config", config, GNSS_CORPUS / "beidou-gb.log")
    assert result.returncode == 2
    assert "device.id" in result.stderr
    assert result.stdout == ""


def make_own_capture(log: Path, path: Path, *, seed: int = 1) -> tuple[int, int]:
    """Write the log's bytes as the gnss port's reads, split at random, between other traffic.

    The other traffic holds valid NMEA that would add epochs if it were replayed. Returns
    the number of gnss reads and of other chunks.
    """
    rng = random.Random(seed)
    data = b"".join(c.data for c in CaptureReader(log))
    decoy = b"$GPGGA,000001.00,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*65\r\n"
    pos = 0
    n = other = 0
    with CaptureWriter(path, start=1_700_000_000.0) as w:
        ts = w.start
        while pos < len(data):
            size = rng.randint(1, 300)
            w.write("gnss", "<", data[pos : pos + size], ts=ts)
            pos += size
            ts += 0.05
            n += 1
            if rng.random() < 0.2:
                w.write("modem", ">", b"AT+CSQ\r", ts=ts)
                w.write("modem", "<", b"\r\n+CSQ: 17,99\r\n\r\nOK\r\n", ts=ts)
                w.write("gnss", ">", decoy, ts=ts)
                w.write("aux", "<", decoy, ts=ts)
                other += 4
    return n, other


def test_own_capture_replays_like_the_raw_one(tmp_path: Path) -> None:
    log = GNSS_CORPUS / "ublox-neo-m9n-nmea.log"
    capture = tmp_path / "session.tgw"
    reads, other = make_own_capture(log, capture)
    raw = run_replay("--jsonl", log)
    own = run_replay("--jsonl", capture)
    assert own.returncode == 0, own.stderr
    assert without_ids(records(own.stdout)) == without_ids(records(raw.stdout))
    assert len([r for r in records(own.stdout) if r["topic"].endswith("/fix")]) == len(
        epoch_times(log)
    )
    summary = run_replay(capture).stdout
    data_bytes = sum(len(c.data) for c in CaptureReader(log))
    assert f"replayed: {reads} chunks, {data_bytes} bytes" in summary
    assert f"skipped: {other} chunks of other ports or directions, 0 bad capture lines" in summary
    assert "capture span: " in summary


def test_rotated_capture_set_replays_as_one_stream(tmp_path: Path) -> None:
    log = GNSS_CORPUS / "ublox-neo-m9n-nmea.log"
    capture = tmp_path / "gnss.tgw"
    with CaptureWriter(capture, start=1_700_000_000.0, max_bytes=20_000, keep=10) as w:
        for i, chunk in enumerate(CaptureReader(log)):
            w.write("gnss", "<", chunk.data, ts=w.start + i * 0.05)
    files = [*sorted(tmp_path.glob("gnss.tgw.*"), reverse=True), capture]
    assert len(files) >= 4
    together = run_replay("--jsonl", *files)
    assert together.returncode == 0, together.stderr
    expected = without_ids(records(run_replay("--jsonl", log).stdout))
    assert without_ids(records(together.stdout)) == expected


def test_another_port_of_an_own_capture(tmp_path: Path) -> None:
    # Any port but modem and rdss (which play their drivers) goes through the GNSS pipeline.
    capture = tmp_path / "session.tgw"
    make_own_capture(GNSS_CORPUS / "beidou-bd.log", capture)
    result = run_replay("--jsonl", "--port", "aux", capture)
    assert result.returncode == 0, result.stderr
    fixes = [r["payload"] for r in records(result.stdout) if r["payload"]["class"] == "TPV"]
    assert fixes
    assert {f["lat"] for f in fixes} == {48.1173}


def test_several_captures_replay_in_order(tmp_path: Path) -> None:
    a, b = GNSS_CORPUS / "beidou-gb.log", GNSS_CORPUS / "skytraq.log"
    capture = tmp_path / "b.tgw"
    make_own_capture(b, capture)
    both = run_replay("--jsonl", a, capture)
    assert both.returncode == 0, both.stderr
    expected = records(run_replay("--jsonl", a).stdout) + records(run_replay("--jsonl", b).stdout)
    assert without_ids(records(both.stdout)) == without_ids(expected)
    assert "replay: 2 capture(s)" in both.stderr


@pytest.mark.parametrize("bad", ["missing.log", "a-directory"])
def test_bad_capture_exits_2_before_replaying_anything(tmp_path: Path, bad: str) -> None:
    (tmp_path / "a-directory").mkdir()
    result = run_replay("--jsonl", GNSS_CORPUS / "beidou-gb.log", tmp_path / bad)
    assert result.returncode == 2
    assert result.stdout == ""
    assert f"error: cannot read capture {tmp_path / bad}" in result.stderr
    assert "Traceback" not in result.stderr


def test_capture_of_a_newer_format_exits_2(tmp_path: Path) -> None:
    future = tmp_path / "future.tgw"
    future.write_text("# terminal-gw capture v2 start=2030-01-01T00:00:00.000000Z\n")
    result = run_replay(future)
    assert result.returncode == 2
    assert "version '2' is not supported" in result.stderr


def test_speed_and_fast_are_exclusive() -> None:
    result = run_replay("--speed", "2", "--fast", GNSS_CORPUS / "beidou-gb.log")
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr


def fix_arrival_times(*args: str | Path) -> list[float]:
    """Wall-clock times at which each fix line reached stdout."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "terminal_gw", "replay", "--jsonl", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    assert proc.stdout is not None
    arrivals = [time.monotonic() for line in proc.stdout if b'"class":"TPV"' in line]
    assert proc.wait(timeout=30) == 0
    return arrivals


def test_speed_paces_an_own_capture_by_its_timestamps(tmp_path: Path) -> None:
    log = GNSS_CORPUS / "ublox-zed-f9p-nmea.log"
    capture = tmp_path / "paced.tgw"
    with CaptureWriter(capture, start=1_700_000_000.0) as w:
        times: list[str] = []
        for chunk in CaptureReader(log):
            fields = chunk.data.decode("ascii", "replace").split(",")
            index = TIME_FIELD.get(fields[0][3:])
            if index is not None and fields[index] and (not times or fields[index] != times[-1]):
                times.append(fields[index])
                if len(times) > 5:
                    break
            w.write("gnss", "<", chunk.data, ts=w.start + len(times))  # one epoch a second
    arrivals = fix_arrival_times("--speed", "2", capture)
    assert len(arrivals) == 5
    # Epoch k is read (k - 1) / 2 s after the start: fix 1 leaves by 0.5 s (when epoch 2
    # starts at the latest), fix 5 not before 2 s (when its sentences arrive).
    assert arrivals[4] - arrivals[0] >= 1.3
    assert arrivals[4] - arrivals[0] < 6


def test_speed_paces_a_raw_capture_one_epoch_a_second(tmp_path: Path) -> None:
    arrivals = fix_arrival_times("--speed", "10", GNSS_CORPUS / "skytraq.log")
    assert len(arrivals) == 17
    assert arrivals[15] - arrivals[0] >= 1.35  # 15 intervals of 0.1 s
    fast = fix_arrival_times("--fast", GNSS_CORPUS / "skytraq.log")
    assert fast[15] - fast[0] < 1.0


def test_progress_is_drawn_on_a_terminal() -> None:
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "terminal_gw", "replay", str(GNSS_CORPUS / "skytraq.log")],
            stdout=subprocess.DEVNULL,
            stderr=slave,
            cwd=REPO,
            timeout=60,
            check=False,
        )
        os.close(slave)
        slave = -1
        seen = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the other side is closed and everything was read
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert proc.returncode == 0
    assert b"\r\x1b[Kreplay 1/1 skytraq.log:" in seen
    assert b"skytraq.log: 100.0%" in seen
    assert b"replay: 1 capture(s), " in seen
    assert b"records (fix 17, " in seen


# -- raw captures read a run of whole lines at a time ---------------------------------------

_RAW_PARTS = [
    b"\n",
    b"\r\n",
    b"#",
    b"# a comment\n",
    b"$GPTXT,01,01,02,ANTENNA OK*35",
    b"\r",
    b"\xb5\x62",
    b"\xff",
    b"\n#\xff",
    b"plain text",
]


def _pieces(reader: CaptureReader, *, blocks: bool) -> list[bytes]:
    if not blocks:
        return [chunk.data for chunk in reader]
    out: list[bytes] = []
    for data, whole in reader.raw_blocks():
        if not whole:
            out.append(data)
            continue
        assert data.endswith(b"\n")
        pos = 0
        while pos < len(data):
            end = data.index(b"\n", pos) + 1
            out.append(data[pos:end])
            pos = end
    return out


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(_RAW_PARTS), st.sampled_from([1, 1, 2, 9])), max_size=60),
    st.sampled_from([4, 7, 16, 64]),
    st.sampled_from([3, 5, 16, 1000]),
)
def test_raw_blocks_give_the_chunks_iteration_gives(
    tmp_path_factory: pytest.TempPathFactory, parts: list[tuple[bytes, int]], piece: int, block: int
) -> None:
    path = tmp_path_factory.mktemp("raw") / "raw.log"
    path.write_bytes(b"".join(p * n for p, n in parts))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(capture, "RAW_PIECE", piece)  # lines longer than a piece, split
        mp.setattr(capture, "RAW_BLOCK", block)  # lines longer than a block, whole
        iterated, grouped = CaptureReader(path), CaptureReader(path)
        assert _pieces(grouped, blocks=True) == _pieces(iterated, blocks=False)
    assert grouped.comment_lines == iterated.comment_lines
    assert grouped.bytes_read == iterated.bytes_read


def _replay_in_process(paths: list[Path], *, per_chunk: bool) -> tuple[str, Stats, dict[str, int]]:
    """Replay with the wall clock fixed; `per_chunk`: one chunk at a time, as before runs of
    lines were framed together."""
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(time, "time", lambda: 1_800_000_000.0)
        if per_chunk:
            mp.setattr(
                CaptureReader,
                "raw_blocks",
                lambda self: ((chunk.data, False) for chunk in iter(self)),
            )
        replayer = Replayer(GnssPipeline, out=out, jsonl=True, speed=None)
        replayer.replay([CaptureReader(p) for p in paths])
    text = re.sub(r'"id":"[^"]*",', "", out.getvalue())
    return text, replayer.stats, replayer.counters


def test_runs_of_lines_replay_as_each_line_alone(tmp_path: Path) -> None:
    # Garbage, a split sentence, a CR-only line end, a line with two `$`, blank lines, a
    # comment, binary and a last line without its line end, between the corpus's epochs.
    log = CORPUS_LOGS[0].read_bytes()
    odd = (
        b"junk\r\n$GPGGA,1\r$GPTXT,01,01,02,ANTENNA OPEN*2E\n\n\r\n# note\n"
        b"\xb5\x62\x01\x07\x00\x00\x08\x19\n$GNRMC,$GNGGA,,*7E\n"
    )
    path = tmp_path / "odd.log"
    path.write_bytes(log[: len(log) // 2] + odd + log[len(log) // 2 :] + b"$GPTXT,01,01")
    paths = [path, *CORPUS_LOGS, *sorted(GPSD_CORPUS.glob("*.log"))[:40]]
    together = _replay_in_process(paths, per_chunk=False)
    alone = _replay_in_process(paths, per_chunk=True)
    assert together[0] == alone[0]
    assert together[0].count("\n") > 1000
    assert together[1] == alone[1]
    assert together[2] == alone[2]
