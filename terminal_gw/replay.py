"""`terminal-gw replay`: run captures through the GNSS pipeline and the modem driver of `run`,
offline.

The same framer, decoder and epoch assembler as `run`, with the reporting policy off: every
epoch becomes a record. With `--jsonl` each record that `run` would publish is printed as one
JSON line, `{"topic": ..., "payload": {...}}`; without it, a summary.

Inputs: the project's own captures (see `terminal_gw.transport.capture`) and raw captures
(bytes as read from a port, `#` lines are comments). From an own-format capture only what the
GNSS port sent (`<` chunks of the port named by `--port`, default `gnss`) goes to the pipeline;
other ports and directions are counted and skipped. Several captures are replayed in the order
given. Each starts a fresh pipeline (the previous one is flushed: its open epoch ends), except
an own-format capture that continues the one before it (its header's start time lies within
CONTINUE_GAP_S after the previous file's last chunk): a rotated set `cap.2 cap.1 cap` replays
as one stream.

Pacing: `--fast` (the default) as fast as possible. `--speed N` replays N times real time: by
the timestamps of an own-format capture; a raw capture has none, so it is paced as a receiver
sending one epoch a second (each fix waits 1/N s). The `now` handed to the pipeline is the
chunk's recorded time for own captures; for raw ones it starts at the wall-clock time of the
replay and advances one second per fix, the same 1 Hz assumption.

The modem side (`--port modem`): the Tiantong driver of `run` talks to a `PlaybackPort` over
the `modem` chunks of the captures, which answers each command the driver writes with the
reply recorded after it. What the driver stores (SMS received, the modem status, events) is
printed like the GNSS records. A recorded command the driver does not send, or one it sends that
was not recorded, is a mismatch: a `playback_mismatch` event says which; the playback looks for
the command a few steps further on, else answers `ERROR`, and the replay goes on. The driver's
settings come from `--config`'s `[modem]` (the init sequence and the poll intervals the session
was recorded with), with short timeouts (a recorded reply is played at once) and its timers
(polls, sweeps, backoffs) compressed: `--speed N` runs them N times faster, `--fast` so that the
shortest periodic one comes every FAST_SHORTEST_S. A replay of the modem side ends when every
recorded step was played and the driver has gone quiet or writes past the recording's end,
or when no step could be played for a while (a stall, reported).

The RDSS side (`--port rdss`): the RDSS driver talks to a playback of the `rdss` chunks, see
`terminal_gw.rdss.replay`.

Without `--port`, own-format captures are replayed on every side: the `gnss` port through the
pipeline, then the `modem` port through the driver, when its recording begins with the driver's
start (its first command is the first init command; a stray fragment is counted, not played),
then the `rdss` port through the RDSS driver. The GNSS records come first, then the modem's,
then the RDSS terminal's. Captures continuing one another (rotation) are one session of each
port; any other capture starts a fresh driver.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import structlog
from structlog.typing import FilteringBoundLogger

from terminal_gw.errors import TerminalGwError
from terminal_gw.exit_codes import EXIT_FAILURE as EXIT_NOTHING_PLAYED
from terminal_gw.exit_codes import EXIT_OK, EXIT_USAGE
from terminal_gw.topics import Topics
from terminal_gw.transport.capture import FROM_DEVICE, CaptureReader, Chunk

if TYPE_CHECKING:
    from terminal_gw.config import ModemConfig, RdssConfig
    from terminal_gw.gnss.pipeline import GnssPipeline
    from terminal_gw.models import Event, Payload
    from terminal_gw.modem.tiantong import TiantongModem
    from terminal_gw.rdss.replay import RdssReplay
    from terminal_gw.transport.playback import PlaybackPort

DEFAULT_PREFIX = "tgw"
DEFAULT_DEVICE = "replay"
DEFAULT_PORT = "gnss"
MODEM_PORT = "modem"
RDSS_PORT = "rdss"

#: Most seconds between one own-format capture's last chunk and the next one's start for the
#: next to count as its continuation (rotation), replayed through the same pipeline.
CONTINUE_GAP_S = 10.0
#: Least time between two progress updates on a terminal.
PROGRESS_EVERY_S = 0.2

#: With --fast, the driver's timers are compressed so that its shortest periodic one (a poll,
#: the sweep) comes this often: short, yet long against the few milliseconds a played exchange
#: takes, so the driver makes its periodic commands in the order it made them when recorded.
FAST_SHORTEST_S = 0.25
#: Longest a command waits for its reply in a replay: a recorded reply is played at once, so
#: only a command the modem never answered waits, as long as this instead of the real timeout.
REPLAY_TIMEOUT_S = 0.5
#: After the last recorded step, the replay ends once the driver has been quiet this long.
QUIET_S = 0.3
#: How often a modem replay looks whether it is done.
CHECK_EVERY_S = 0.01
#: A recorded send is made again once the driver has been quiet this long (so that it comes
#: between the driver's own commands, as the command stage's send did when recorded).
SEND_QUIET_S = 0.05
#: How far ahead the playback looks for a command that was not the recorded next one: far
#: enough for two polls made in another order than recorded, or a send not made again; not so
#: far that a poll made early jumps over recorded messages (their replies would be lost).
RESYNC_WINDOW = 4
#: A recorded send: `AT+CMGS=<length>` then the PDU and Ctrl-Z, as the AT engine writes them.
_CMGS = re.compile(rb"AT\+CMGS=(\d{1,3})\r")
_PDU = re.compile(rb"([0-9A-F]{4,400})\x1a")
#: Driver settings that are waits, compressed with the timers.
_SCALED = (
    "poll_signal_s",
    "poll_registration_s",
    "poll_operator_s",
    "status_interval_s",
    "sweep_interval_s",
    "sms_reassembly_timeout_s",
    "reset_wait_s",
    "recovery_backoff_s",
    "reopen_backoff_s",
)
#: The timers that make the driver write a command.
_COMMAND_TIMERS = ("poll_signal_s", "poll_registration_s", "poll_operator_s", "sweep_interval_s")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `terminal-gw replay`."""
    parser.add_argument(
        "captures", nargs="+", type=Path, metavar="CAPTURE", help="capture files, in order"
    )
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed",
        type=_positive,
        metavar="N",
        help="replay at N times real time (raw captures: one epoch per 1/N s; the modem "
        "driver's timers run N times faster)",
    )
    pace.add_argument("--fast", action="store_true", help="as fast as possible (the default)")
    parser.add_argument(
        "--jsonl",
        action="store_true",
        help='print each record as a JSON line {"topic": ..., "payload": ...}',
    )
    parser.add_argument(
        "--port",
        default=None,
        help=f"port of own-format captures to replay: {MODEM_PORT!r} plays the modem side to "
        "the modem driver, 'rdss' plays the RDSS terminal to the RDSS driver, any other port "
        f"goes through the GNSS pipeline (default: "
        f"{DEFAULT_PORT!r} through the pipeline, then {MODEM_PORT!r} when it holds a session, "
        f"then {RDSS_PORT!r})",
    )
    # Its own dest: without --config, replay uses fixed names instead of the default config.
    parser.add_argument(
        "--config",
        dest="replay_config",
        type=Path,
        metavar="PATH",
        default=None,
        help=f"take topic prefix, device id, GNSS and modem settings from this config "
        f"(default: prefix {DEFAULT_PREFIX!r}, device {DEFAULT_DEVICE!r})",
    )


@dataclass
class Stats:
    """What a replay saw and produced."""

    files: Counter[str] = field(default_factory=Counter)
    chunks: int = 0
    bytes_fed: int = 0
    chunks_skipped: int = 0
    bad_capture_lines: int = 0
    records: Counter[str] = field(default_factory=Counter)
    first_time: str | None = None
    last_time: str | None = None
    first_ts: float | None = None
    last_ts: float | None = None

    def see(self, payload: Payload) -> None:
        """Count one record and widen the GNSS time span."""
        self.records[payload.record_class] += 1
        t = getattr(payload, "time", None)
        if isinstance(t, str) and payload.record_class == "fix":
            if self.first_time is None or t < self.first_time:
                self.first_time = t
            if self.last_time is None or t > self.last_time:
                self.last_time = t


class Progress:
    """A one-line progress indicator, drawn only when stderr is a terminal."""

    def __init__(self, stream: TextIO, total_files: int) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.total_files = total_files
        self._next = 0.0

    def update(
        self, index: int, reader: CaptureReader, records: int, *, force: bool = False
    ) -> None:
        """Redraw at most every PROGRESS_EVERY_S."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now < self._next:
            return
        self._next = now + PROGRESS_EVERY_S
        pct = 100.0 * reader.bytes_read / reader.size if reader.size else 100.0
        self.stream.write(
            f"\r\x1b[Kreplay {index}/{self.total_files} {reader.path.name}: "
            f"{pct:5.1f}% {records} records"
        )
        self.stream.flush()

    def steps(self, played: int, total: int, records: int) -> None:
        """Redraw the modem side's progress, at most every PROGRESS_EVERY_S."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + PROGRESS_EVERY_S
        self.stream.write(f"\r\x1b[Kreplay modem: {played}/{total} steps {records} records")
        self.stream.flush()

    def clear(self) -> None:
        """Remove the indicator line."""
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


class Replayer:
    """Feeds capture chunks to the pipeline and prints or counts the records."""

    def __init__(
        self,
        new_pipeline: Callable[[], GnssPipeline],
        *,
        out: TextIO,
        jsonl: bool,
        speed: float | None,
        prefix: str = DEFAULT_PREFIX,
        device: str = DEFAULT_DEVICE,
        port: str = DEFAULT_PORT,
        progress: Progress | None = None,
        taps: Sequence[ModemChunks] = (),
    ) -> None:
        self._new_pipeline = new_pipeline
        self.taps = taps  # gather the modem and RDSS sides while the GNSS side is read
        self.pipeline = new_pipeline()
        self._used = False  # whether self.pipeline has been fed
        self._done_counters: Counter[str] = Counter()
        self._last_now = 0.0
        self._file_last_ts: float | None = None
        self.out = out
        self.jsonl = jsonl
        self.speed = speed
        self.topics = Topics(prefix, device)
        self.port = port
        self.progress = progress
        self.stats = Stats()
        self._topic_json: dict[str, str] = {}
        self._clock = time.time()  # the 1 Hz virtual clock of raw captures
        self._pace_start = 0.0  # when the raw capture being replayed started (monotonic)
        self._paced = 0  # its fixes so far: it is paced one epoch a fix

    @property
    def counters(self) -> dict[str, int]:
        """Pipeline counters summed over every pipeline of this replay."""
        total = Counter(self._done_counters)
        total.update(self.pipeline.counters)
        return dict(total)

    def replay(self, readers: list[CaptureReader]) -> None:
        """Replay every capture in order (see the module docstring for what continues)."""
        previous: CaptureReader | None = None
        for index, reader in enumerate(readers, start=1):
            if self._used and not self._continues(previous, reader):
                self._finish_pipeline()
                self.pipeline = self._new_pipeline()
            self._used = True
            self.stats.files[reader.kind] += 1
            for tap in self.taps:
                tap.begin(reader)
            if reader.kind == "raw":
                self._replay_raw(index, reader)
            else:
                self._replay_own(index, reader)
            self.stats.bad_capture_lines += reader.bad_lines
            if self.progress is not None:
                self.progress.update(index, reader, self.stats.records.total(), force=True)
            previous = reader
        self._emit(self.pipeline.flush(self._last_now))
        if self.progress is not None:
            self.progress.clear()

    def _continues(self, previous: CaptureReader | None, reader: CaptureReader) -> bool:
        if previous is None or previous.kind != "capture" or reader.kind != "capture":
            return False
        if reader.start is None or self._file_last_ts is None:
            return False
        return -1.0 <= reader.start - self._file_last_ts <= CONTINUE_GAP_S

    def _finish_pipeline(self) -> None:
        self._emit(self.pipeline.flush(self._last_now))
        self._done_counters.update(self.pipeline.counters)

    def _replay_raw(self, index: int, reader: CaptureReader) -> None:
        # Chunk by chunk (a raw capture's are its lines), so that the virtual clock moves
        # between epochs as a 1 Hz receiver's would (the assembler stamps an epoch with the
        # `now` of its first sentence). Runs of whole lines are framed together, with the
        # clock still read before each line's sentence, as if each line were fed alone.
        self._pace_start = time.monotonic()
        self._paced = 0
        pipeline = self.pipeline
        frame_lines = pipeline.frame_lines
        feed_sentence = pipeline.feed_sentence
        stats = self.stats
        for data, whole in reader.raw_blocks():
            if not whole:
                self._raw_chunk(index, reader, data)
                continue
            pos, n = 0, len(data)
            while pos < n:
                entries, end = frame_lines(data, pos)
                stats.chunks += len(entries)
                stats.bytes_fed += end - pos
                for sentence in entries:
                    self._last_now = now = self._clock
                    if sentence is not None and (payloads := feed_sentence(sentence, now)):
                        self._fed(index, reader, payloads)
                if end < n:
                    # A line the framer's byte scan must see (or a partial sentence is
                    # buffered): that line alone, as a chunk.
                    pos = data.index(b"\n", end) + 1
                    self._raw_chunk(index, reader, data[end:pos])
                else:
                    pos = end

    def _raw_chunk(self, index: int, reader: CaptureReader, data: bytes) -> None:
        stats = self.stats
        stats.chunks += 1
        stats.bytes_fed += len(data)
        self._last_now = self._clock
        payloads = self.pipeline.feed(data, self._clock)
        if payloads:
            self._fed(index, reader, payloads)

    def _fed(self, index: int, reader: CaptureReader, payloads: list[Payload]) -> None:
        """A raw capture's records: printed, then the clock moves one second a fix."""
        fixes = self._emit(payloads)
        if fixes:
            self._paced += fixes
            self._clock += fixes
            if self.speed is not None:
                self.out.flush()
                self._sleep_until(self._pace_start + self._paced / self.speed)
        self._tick(index, reader)

    def _replay_own(self, index: int, reader: CaptureReader) -> None:
        start_wall = time.monotonic()
        first_ts: float | None = None
        self._file_last_ts = None
        taps = self.taps
        for chunk in reader:
            for tap in taps:
                tap.see(chunk)
            if chunk.port != self.port or chunk.direction != FROM_DEVICE:
                self.stats.chunks_skipped += 1
                continue
            ts = chunk.ts
            assert ts is not None  # own-format chunks always carry a time
            self._count(chunk)
            if self.stats.first_ts is None:
                self.stats.first_ts = ts
            self.stats.last_ts = self._file_last_ts = self._last_now = ts
            if self.speed is not None:
                if first_ts is None:
                    first_ts = ts
                self._sleep_until(start_wall + (ts - first_ts) / self.speed)
            if self._emit(self.pipeline.feed(chunk.data, ts)) and self.speed is not None:
                self.out.flush()
            self._tick(index, reader)

    def _count(self, chunk: Chunk) -> None:
        self.stats.chunks += 1
        self.stats.bytes_fed += len(chunk.data)

    def _tick(self, index: int, reader: CaptureReader) -> None:
        if self.progress is not None and self.progress.enabled:
            self.progress.update(index, reader, self.stats.records.total())

    @staticmethod
    def _sleep_until(deadline: float) -> None:
        delay = deadline - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def _emit(self, payloads: Iterable[Payload]) -> int:
        """Print or count the records; returns how many were fixes."""
        fixes = 0
        for payload in payloads:
            self.stats.see(payload)
            if payload.record_class == "fix":
                fixes += 1
            if self.jsonl:
                path = payload.topic_path()
                topic = self._topic_json.get(path)
                if topic is None:
                    topic = json.dumps(self.topics.below(path), ensure_ascii=False)
                    self._topic_json[path] = topic
                self.out.write(f'{{"topic":{topic},"payload":{payload.to_json()}}}\n')
        return fixes


# -- the modem side ---------------------------------------------------------------------------


@dataclass
class _ModemFile:
    kind: str
    start: float | None
    last_ts: float | None = None
    chunks: list[Chunk] = field(default_factory=list)


class ModemChunks:
    """The modem port's chunks of each capture, gathered while the captures are read."""

    def __init__(self, port: str = MODEM_PORT) -> None:
        self.port = port
        self.files: list[_ModemFile] = []

    def begin(self, reader: CaptureReader) -> None:
        """A capture starts."""
        self.files.append(_ModemFile(reader.kind, reader.start))

    def see(self, chunk: Chunk) -> None:
        """One chunk of the current capture, of any port (all of them date the file's end)."""
        current = self.files[-1]
        if chunk.ts is not None:
            current.last_ts = chunk.ts
        if chunk.port == self.port and chunk.data:
            current.chunks.append(chunk)

    def read(self, reader: CaptureReader) -> None:
        """Gather one capture on its own (no GNSS side replayed)."""
        self.begin(reader)
        for chunk in reader:
            self.see(chunk)

    @property
    def total(self) -> int:
        """Modem chunks gathered."""
        return sum(len(f.chunks) for f in self.files)

    def sessions(self) -> list[list[Chunk]]:
        """The chunks per recorded session: a capture that continues the one before it (its
        start within CONTINUE_GAP_S of that one's last chunk: rotation) joins its session."""
        sessions: list[list[Chunk]] = []
        previous: _ModemFile | None = None
        for f in self.files:
            continues = (
                previous is not None
                and previous.kind == f.kind == "capture"
                and f.start is not None
                and previous.last_ts is not None
                and -1.0 <= f.start - previous.last_ts <= CONTINUE_GAP_S
            )
            if continues and sessions:
                sessions[-1].extend(f.chunks)
            else:
                sessions.append(list(f.chunks))
            previous = f
        return [s for s in sessions if s]


def time_scale(config: ModemConfig, speed: float | None) -> float:
    """How many times faster than recorded the driver's timers run in a replay."""
    if speed is not None:
        return speed
    shortest = min(float(getattr(config, name)) for name in _COMMAND_TIMERS)
    return max(1.0, shortest / FAST_SHORTEST_S)


def replay_modem_config(config: ModemConfig, scale: float) -> ModemConfig:
    """The driver's settings for a replay: waits `scale` times shorter, short timeouts."""
    timeout = min(config.command_timeout_s, REPLAY_TIMEOUT_S)
    update: dict[str, object] = {name: float(getattr(config, name)) / scale for name in _SCALED}
    update.update(
        command_timeout_s=timeout,
        ping_timeout_s=min(config.ping_timeout_s, timeout),
        send_timeout_s=min(config.send_timeout_s, timeout),
    )
    return config.model_copy(update=update)


def starts_session(chunks: Iterable[Chunk], config: ModemConfig, port: str = MODEM_PORT) -> bool:
    """Whether a modem recording begins with the driver's start (its first init command)."""
    from terminal_gw.transport.playback import steps_from_chunks

    _, steps = steps_from_chunks(chunks, port)
    first = config.init[0] if config.init else "AT+CGSN"
    return bool(steps) and steps[0].written == first.encode("ascii") + b"\r"


class _ReplayPort:
    """The driver's port in a replay. Opening it again after the driver closed it goes on in
    the same recording (a recorded reopen did too). A write past the recording's end gets no
    answer and is counted, not reported as a mismatch: it is where the replay ends."""

    def __init__(self, playback: PlaybackPort) -> None:
        self.playback = playback
        self.past_end = 0
        self.last_activity = time.monotonic()

    async def read(self) -> bytes:
        """The next recorded chunk due."""
        data = await self.playback.read()
        self.last_activity = time.monotonic()
        return data

    async def write(self, data: bytes) -> None:
        """Hand the bytes to the playback, unless the recording is over."""
        self.last_activity = time.monotonic()
        if self.playback.remaining == 0:
            self.past_end += 1
            return
        await self.playback.write(data)

    async def close(self) -> None:
        """Nothing to release: the playback stays for the next open."""


@dataclass
class ModemStats:
    """What the modem side of a replay saw and produced."""

    sessions: int = 0
    sessions_not_played: int = 0
    chunks_not_played: int = 0
    steps: int = 0
    playback: Counter[str] = field(default_factory=Counter)
    remaining: int = 0
    past_end: int = 0
    stalled: int = 0
    sends: int = 0
    sends_failed: int = 0
    mismatches_folded: int = 0
    records: Counter[str] = field(default_factory=Counter)
    driver: Counter[str] = field(default_factory=Counter)

    @property
    def played(self) -> int:
        """Recorded steps played (in order or after a resynchronisation)."""
        return self.playback["matched"]

    @property
    def mismatches(self) -> int:
        """Writes that were not the recorded next command."""
        return self.playback["mismatched"]


class ModemReplayer:
    """Plays recorded modem sessions to the Tiantong driver and prints or counts what it
    stores: SMS received, the modem status, events (`playback_mismatch` ones included)."""

    def __init__(
        self,
        config: ModemConfig,
        *,
        out: TextIO,
        jsonl: bool,
        speed: float | None,
        prefix: str = DEFAULT_PREFIX,
        device: str = DEFAULT_DEVICE,
        port: str = MODEM_PORT,
        log: FilteringBoundLogger | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.config = config
        self.scale = time_scale(config, speed)
        self.driver_config = replay_modem_config(config, self.scale)
        self.out = out
        self.jsonl = jsonl
        self.paced = speed is not None
        self.topics = Topics(prefix, device)
        self.port = port
        self.log: FilteringBoundLogger = log or structlog.get_logger("terminal_gw.replay")
        self.progress = progress
        self.stats = ModemStats()
        self.record_stats = Stats()
        self._last_record = time.monotonic()
        self._playback: PlaybackPort | None = None
        self._last_mismatch: tuple[int, object] | None = None
        cfg = self.driver_config
        waits = [float(getattr(cfg, name)) for name in (*_COMMAND_TIMERS, "recovery_backoff_s")]
        # No step played for this long while some remain: the driver will not ask for them
        # (its longest timer has come round, with a few timeouts on top).
        self.stall_s = max(waits) + 4 * cfg.command_timeout_s + 1.0

    def replay(self, sessions: list[list[Chunk]], *, only_sessions: bool = False) -> None:
        """Play each session to a fresh driver; with `only_sessions`, skip (and count) those
        that do not begin with the driver's start."""
        asyncio.run(self._replay(sessions, only_sessions=only_sessions))
        if self.progress is not None:
            self.progress.clear()

    async def _replay(self, sessions: list[list[Chunk]], *, only_sessions: bool) -> None:
        for chunks in sessions:
            if only_sessions and not starts_session(chunks, self.config, self.port):
                self.stats.sessions_not_played += 1
                self.stats.chunks_not_played += len(chunks)
                continue
            await self._play(chunks)

    async def _play(self, chunks: list[Chunk]) -> None:
        from terminal_gw.modem.at import AtPort
        from terminal_gw.modem.tiantong import TiantongModem
        from terminal_gw.transport.playback import PlaybackPort

        self.stats.sessions += 1
        first_ts = next((c.ts for c in chunks if c.ts is not None), None)
        # "error_reply": a command that was not recorded fails like a refused one and the
        # driver goes on, so the rest of the recording is still played.
        playback = PlaybackPort(
            chunks,
            port=self.port,
            resync_window=RESYNC_WINDOW,
            on_mismatch="error_reply",
            events=self._event,
            log=self.log,
        )
        port = _ReplayPort(playback)
        self._playback = playback
        self._last_mismatch = None

        async def open_port() -> AtPort:
            return port

        def clock() -> float:
            # The recorded time of the exchange: records carry the session's times.
            recorded = playback.recorded_time
            if recorded is not None:
                return recorded
            return first_ts if first_ts is not None else time.time()

        modem = TiantongModem(
            self.driver_config,
            self,
            topics=self.topics,
            events=self._event,
            port_factory=open_port,
            log=self.log,
            clock=clock,
        )
        async with asyncio.TaskGroup() as tg:
            driver = tg.create_task(modem.run(), name="modem-replay")
            stalled = await self._until_done(modem, playback, port)
            driver.cancel()
        await playback.close()
        self.stats.steps += playback.steps
        self.stats.playback.update(playback.counters)
        self.stats.remaining += playback.remaining
        self.stats.past_end += port.past_end
        self.stats.stalled += stalled
        self.stats.driver.update(modem.counters)

    async def _until_done(
        self, modem: TiantongModem, playback: PlaybackPort, port: _ReplayPort
    ) -> bool:
        """Wait until the session is played out; True when it stalled instead."""
        matched = -1
        progress_at = time.monotonic()
        send_tried_at: int | None = None
        while True:
            await asyncio.sleep(CHECK_EVERY_S)
            now = time.monotonic()
            if (
                playback.remaining != send_tried_at
                and playback.unread == 0
                and now - port.last_activity >= SEND_QUIET_S
                and await self._send_recorded(modem, playback)
            ):
                send_tried_at = playback.remaining
                continue
            if playback.counters["matched"] != matched:
                matched = playback.counters["matched"]
                progress_at = now
                if self.progress is not None:
                    self.progress.steps(matched, playback.steps, self.record_stats.records.total())
            if playback.remaining == 0 and playback.unread == 0:
                if port.past_end:
                    return False
                quiet = now - max(port.last_activity, self._last_record)
                if quiet >= QUIET_S:
                    return False
            elif now - progress_at >= self.stall_s:
                return True

    async def _send_recorded(self, modem: TiantongModem, playback: PlaybackPort) -> bool:
        """When the next recorded step is a send (made by the command stage, which a replay
        has not got), make it again through the driver; False when it is not a send."""
        from terminal_gw.modem.sms import SubmitPdu
        from terminal_gw.modem.tiantong import ModemState

        upcoming = playback.upcoming(2)
        if len(upcoming) < 2 or modem.state is not ModemState.OK:
            return False
        command, body = _CMGS.fullmatch(upcoming[0]), _PDU.fullmatch(upcoming[1])
        if command is None or body is None:
            return False
        pdu = SubmitPdu(
            hex=body.group(1).decode("ascii"), tpdu_length=int(command.group(1)), part=1, total=1
        )
        try:
            await modem.send_sms([pdu])
        except TerminalGwError as exc:
            self.stats.sends_failed += 1
            self.log.warning("recorded send failed in the replay", error=str(exc))
        else:
            self.stats.sends += 1
        return True

    # -- what the driver stores ---------------------------------------------------------------

    async def put(
        self, topic: str, payload: Payload, *, retain: bool = False, sync: bool | None = None
    ) -> None:
        """The driver's outbox: print or count the record."""
        self._emit(topic, payload)

    def _event(self, event: Event) -> None:
        if event.kind == "playback_mismatch" and self._playback is not None:
            # While the driver writes command after command the recording has not got (its
            # recovery ladder), one event says where; the summary counts them all.
            key = (self._playback.counters["matched"], event.data.get("expected"))
            if key == self._last_mismatch:
                self.stats.mismatches_folded += 1
                return
            self._last_mismatch = key
        self._emit(self.topics.of(event), event)

    def _emit(self, topic: str, payload: Payload) -> None:
        self._last_record = time.monotonic()
        self.record_stats.see(payload)
        self.stats.records[payload.record_class] += 1
        if self.jsonl:
            self.out.write(
                f'{{"topic":{json.dumps(topic, ensure_ascii=False)},'
                f'"payload":{payload.to_json()}}}\n'
            )
            if self.paced:
                self.out.flush()

    def summary_lines(self) -> list[str]:
        """The modem part of the summary printed without --jsonl."""
        st = self.stats
        pb = st.playback
        lines = [
            f"modem sessions: {st.sessions} played"
            + (
                f", {st.sessions_not_played} not played ({st.chunks_not_played} chunks without "
                "the driver's start; --port modem plays them anyway)"
                if st.sessions_not_played
                else ""
            ),
            (
                f"modem steps: {st.steps} recorded, {st.played} played, "
                f"{st.remaining} remaining; {st.mismatches} mismatches "
                f"({pb['resynced']} resynchronised skipping {pb['skipped']} steps, "
                f"{pb['error_replies']} answered ERROR)"
            ),
            f"modem records: {st.records.total()}"
            + (f" ({_format_counts(sorted(st.records.items()))})" if st.records else ""),
        ]
        if st.mismatches_folded:
            lines.append(
                f"modem mismatch events left out: {st.mismatches_folded} (the same recorded "
                "step expected again)"
            )
        if st.sends or st.sends_failed:
            lines.append(f"recorded sends made again: {st.sends}, failed: {st.sends_failed}")
        if st.past_end:
            lines.append(f"modem writes past the recording's end: {st.past_end}")
        if st.stalled:
            lines.append(
                f"modem stalled: {st.stalled} session(s) ended with steps the driver did not ask "
                "for (recorded sends, or another config than the recording's)"
            )
        nonzero = {k: v for k, v in st.driver.items() if v}
        if nonzero:
            lines.append("driver counters:")
            width = max(len(k) for k in nonzero)
            lines.extend(f"  {k:<{width}}  {v:>9}" for k, v in sorted(nonzero.items()))
        return lines

    def status_line(self) -> str:
        """The modem part of the line printed on stderr at the end."""
        st = self.stats
        return (
            f"modem: played {st.played} of {st.steps} steps, {st.mismatches} mismatches, "
            f"{st.remaining} remaining" + (f", stalled {st.stalled}" if st.stalled else "")
        )


def _format_counts(counts: Iterable[tuple[str, int]]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts)


def summary_lines(stats: Stats, counters: dict[str, int]) -> list[str]:
    """The human summary printed without --jsonl."""
    files = _format_counts(sorted(stats.files.items()))
    lines = [
        f"captures: {stats.files.total()} ({files})",
        f"replayed: {stats.chunks} chunks, {stats.bytes_fed} bytes",
        (
            f"skipped: {stats.chunks_skipped} chunks of other ports or directions, "
            f"{stats.bad_capture_lines} bad capture lines"
        ),
        f"records: {stats.records.total()}"
        + (f" ({_format_counts(sorted(stats.records.items()))})" if stats.records else ""),
    ]
    if stats.first_time is not None:
        lines.append(f"GNSS time: {stats.first_time} .. {stats.last_time}")
    if stats.first_ts is not None and stats.last_ts is not None:
        lines.append(f"capture span: {stats.last_ts - stats.first_ts:.3f} s")
    if counters:
        lines.append("pipeline counters:")
        width = max(len(k) for k in counters)
        lines.extend(f"  {k:<{width}}  {v:>9}" for k, v in sorted(counters.items()))
    return lines


def _replay_log(level: str | None) -> FilteringBoundLogger:
    """The driver's and the playback's logger: errors only unless --log-level says otherwise
    (what they warn about is in the printed events already)."""
    wrapper = structlog.make_filtering_bound_logger(
        logging.getLevelNamesMapping()[(level or "error").upper()]
    )
    logger: FilteringBoundLogger = structlog.wrap_logger(None, wrapper_class=wrapper).bind(
        stage="replay"
    )
    return logger


def _replay_rdss_side(
    tap: ModemChunks, config: RdssConfig, *, topics: Topics, jsonl: bool, log: FilteringBoundLogger
) -> RdssReplay:
    """Without --port: the RDSS sessions of the captures played to the RDSS driver."""
    import tempfile

    from terminal_gw.rdss.replay import RdssReplay

    with tempfile.TemporaryDirectory(prefix="tgw-rdss-replay-") as tmp:
        replay = RdssReplay(
            config, out=sys.stdout, jsonl=jsonl, topics=topics, state_dir=Path(tmp), log=log
        )
        replay.play(tap.sessions())
    return replay


def cli(args: argparse.Namespace) -> int:
    """Run `terminal-gw replay`."""
    from terminal_gw.cli.common import read_config_or_exit
    from terminal_gw.config import GnssConfig, ModemConfig, RdssConfig
    from terminal_gw.gnss.pipeline import GnssPipeline

    prefix, device = DEFAULT_PREFIX, DEFAULT_DEVICE
    gnss = GnssConfig()
    modem = ModemConfig()
    if args.replay_config is not None:
        config = read_config_or_exit(args.replay_config)
        prefix, device, gnss = config.mqtt.prefix, config.device.id, config.gnss
        modem = config.modem

    # Open every capture first: a typo in the last name should not cost a long replay.
    readers: list[CaptureReader] = []
    for path in args.captures:
        try:
            readers.append(CaptureReader(path))
        except TerminalGwError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE

    port: str | None = args.port
    log = _replay_log(getattr(args, "log_level", None))
    rdss_config = config.rdss if args.replay_config is not None else RdssConfig()
    if port == RDSS_PORT:
        from terminal_gw.rdss.replay import replay_rdss

        return replay_rdss(
            readers,
            rdss_config,
            topics=Topics(prefix, device),
            jsonl=args.jsonl,
            out=sys.stdout,
            err=sys.stderr,
            log=log,
        )
    gnss_side = port != MODEM_PORT
    # Without --port the modem side comes along, but only sessions the driver can play;
    # and the RDSS side.
    modem_side = port is None or port == MODEM_PORT
    progress = Progress(sys.stderr, len(readers))
    tap = ModemChunks(MODEM_PORT) if modem_side else None
    rdss_tap = ModemChunks(RDSS_PORT) if port is None else None

    def new_pipeline() -> GnssPipeline:
        return GnssPipeline(
            max_sentence_len=gnss.max_sentence_len,
            allow_no_checksum=gnss.allow_no_checksum,
            prefer=gnss.prefer,
        )

    replayer = Replayer(
        new_pipeline,
        out=sys.stdout,
        jsonl=args.jsonl,
        speed=args.speed,
        prefix=prefix,
        device=device,
        port=port or DEFAULT_PORT,
        progress=progress,
        taps=[t for t in (tap, rdss_tap) if t is not None],
    )
    modem_replayer = ModemReplayer(
        modem,
        out=sys.stdout,
        jsonl=args.jsonl,
        speed=args.speed,
        prefix=prefix,
        device=device,
        log=log,
        progress=progress,
    )
    rdss_replay: RdssReplay | None = None
    try:
        if gnss_side:
            replayer.replay(readers)
        elif tap is not None:
            for reader in readers:
                replayer.stats.files[reader.kind] += 1
                tap.read(reader)
                replayer.stats.bad_capture_lines += reader.bad_lines
        if port == MODEM_PORT and tap is not None and not tap.total:
            names = ", ".join(str(r.path) for r in readers)
            print(
                f"error: no {MODEM_PORT!r} chunks in {names}: nothing to play to the modem "
                "driver (the daemon records them with [modem] record = true)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        if tap is not None and tap.total:
            sys.stdout.flush()  # the GNSS records before the modem's
            modem_replayer.replay(tap.sessions(), only_sessions=port is None)
        if rdss_tap is not None and rdss_tap.total:
            sys.stdout.flush()  # then the RDSS side's
            rdss_replay = _replay_rdss_side(
                rdss_tap, rdss_config, topics=Topics(prefix, device), jsonl=args.jsonl, log=log
            )
    except TerminalGwError as exc:
        progress.clear()
        sys.stdout.flush()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    stats = replayer.stats
    counters = replayer.counters
    mstats = modem_replayer.stats
    if not args.jsonl:
        if gnss_side:
            lines = summary_lines(stats, counters)
        else:
            files = _format_counts(sorted(stats.files.items()))
            lines = [
                f"captures: {stats.files.total()} ({files})",
                f"bad capture lines: {stats.bad_capture_lines}",
            ]
        if mstats.sessions or mstats.sessions_not_played:
            lines.extend(modem_replayer.summary_lines())
        if rdss_replay is not None:
            lines.extend(rdss_replay.summary_lines())
        print("\n".join(lines))
    sys.stdout.flush()  # the summary before the counters line when both go to a terminal
    records = Counter(stats.records)
    records.update(mstats.records)
    if rdss_replay is not None:
        records.update(rdss_replay.records)
    line = f"replay: {stats.files.total()} capture(s), {records.total()} records" + (
        f" ({_format_counts(sorted(records.items()))})" if records else ""
    )
    if gnss_side:
        nonzero = _format_counts((k, v) for k, v in sorted(counters.items()) if v)
        line += f"; counters: {nonzero or 'all zero'}"
    if mstats.sessions:
        line += f"; {modem_replayer.status_line()}"
    if rdss_replay is not None:
        line += f"; {rdss_replay.status_line()}"
    print(line, file=sys.stderr)
    if mstats.sessions and not mstats.played:
        print("error: no recorded modem step could be played", file=sys.stderr)
        return EXIT_NOTHING_PLAYED
    if rdss_replay is not None and rdss_replay.stats.sessions and not rdss_replay.stats.played:
        print("error: no recorded rdss step could be played", file=sys.stderr)
        return EXIT_NOTHING_PLAYED
    return EXIT_OK
