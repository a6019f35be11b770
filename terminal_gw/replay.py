"""`terminal-gw replay`: run captures through the GNSS pipeline of `run`, offline.

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
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from terminal_gw.errors import ConfigError, TerminalGwError
from terminal_gw.transport.capture import FROM_DEVICE, CaptureReader, Chunk

if TYPE_CHECKING:
    from terminal_gw.gnss.pipeline import GnssPipeline
    from terminal_gw.models import Payload

EXIT_OK = 0
EXIT_USAGE = 2

DEFAULT_PREFIX = "tgw"
DEFAULT_DEVICE = "replay"
DEFAULT_PORT = "gnss"

#: Most seconds between one own-format capture's last chunk and the next one's start for the
#: next to count as its continuation (rotation), replayed through the same pipeline.
CONTINUE_GAP_S = 10.0
#: Least time between two progress updates on a terminal.
PROGRESS_EVERY_S = 0.2


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
        help="replay at N times real time (raw captures: one epoch per 1/N s)",
    )
    pace.add_argument("--fast", action="store_true", help="as fast as possible (the default)")
    parser.add_argument(
        "--jsonl",
        action="store_true",
        help='print each record as a JSON line {"topic": ..., "payload": ...}',
    )
    parser.add_argument(
        "--port",
        default=DEFAULT_PORT,
        help=f"port of own-format captures whose data is replayed (default: {DEFAULT_PORT})",
    )
    # Its own dest: without --config, replay uses fixed names instead of the default config.
    parser.add_argument(
        "--config",
        dest="replay_config",
        type=Path,
        metavar="PATH",
        default=None,
        help=f"take topic prefix, device id and GNSS settings from this config "
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
    ) -> None:
        self._new_pipeline = new_pipeline
        self.pipeline = new_pipeline()
        self._used = False  # whether self.pipeline has been fed
        self._done_counters: Counter[str] = Counter()
        self._last_now = 0.0
        self._file_last_ts: float | None = None
        self.out = out
        self.jsonl = jsonl
        self.speed = speed
        self.topic_base = f"{prefix}/{device}/"
        self.port = port
        self.progress = progress
        self.stats = Stats()
        self._topic_json: dict[str, str] = {}
        self._clock = time.time()  # the 1 Hz virtual clock of raw captures

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
        # Line by line, so that the virtual clock moves between epochs as a 1 Hz receiver's
        # would (the assembler stamps an epoch with the `now` of its first sentence).
        start = time.monotonic()
        epochs = 0
        feed = self.pipeline.feed
        for chunk in reader:
            self._count(chunk)
            self._last_now = self._clock
            payloads = feed(chunk.data, self._clock)
            if payloads:
                fixes = self._emit(payloads)
                if fixes:
                    epochs += fixes
                    self._clock += fixes
                    if self.speed is not None:
                        self.out.flush()
                        self._sleep_until(start + epochs / self.speed)
                self._tick(index, reader)

    def _replay_own(self, index: int, reader: CaptureReader) -> None:
        start_wall = time.monotonic()
        first_ts: float | None = None
        self._file_last_ts = None
        for chunk in reader:
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
                suffix = payload.topic_suffix
                topic = self._topic_json.get(suffix)
                if topic is None:
                    topic = json.dumps(self.topic_base + suffix, ensure_ascii=False)
                    self._topic_json[suffix] = topic
                self.out.write(f'{{"topic":{topic},"payload":{payload.to_json()}}}\n')
        return fixes


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


def cli(args: argparse.Namespace) -> int:
    """Run `terminal-gw replay`."""
    from terminal_gw.config import GnssConfig, load_config
    from terminal_gw.gnss.pipeline import GnssPipeline

    prefix, device = DEFAULT_PREFIX, DEFAULT_DEVICE
    gnss = GnssConfig()
    if args.replay_config is not None:
        try:
            config = load_config(args.replay_config)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            for loc, msg in exc.problems:
                print(f"  {loc}: {msg}", file=sys.stderr)
            return EXIT_USAGE
        prefix, device, gnss = config.mqtt.prefix, config.device.id, config.gnss

    # Open every capture first: a typo in the last name should not cost a long replay.
    readers: list[CaptureReader] = []
    for path in args.captures:
        try:
            readers.append(CaptureReader(path))
        except TerminalGwError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE

    def new_pipeline() -> GnssPipeline:
        return GnssPipeline(
            max_sentence_len=gnss.max_sentence_len, allow_no_checksum=gnss.allow_no_checksum
        )

    replayer = Replayer(
        new_pipeline,
        out=sys.stdout,
        jsonl=args.jsonl,
        speed=args.speed,
        prefix=prefix,
        device=device,
        port=args.port,
        progress=Progress(sys.stderr, len(readers)),
    )
    try:
        replayer.replay(readers)
    except TerminalGwError as exc:
        if replayer.progress is not None:
            replayer.progress.clear()
        sys.stdout.flush()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    stats = replayer.stats
    counters = replayer.counters
    if not args.jsonl:
        print("\n".join(summary_lines(stats, counters)))
    sys.stdout.flush()  # the summary before the counters line when both go to a terminal
    nonzero = _format_counts((k, v) for k, v in sorted(counters.items()) if v)
    print(
        f"replay: {stats.files.total()} capture(s), {stats.records.total()} records"
        + (f" ({_format_counts(sorted(stats.records.items()))})" if stats.records else "")
        + f"; counters: {nonzero or 'all zero'}",
        file=sys.stderr,
    )
    return EXIT_OK
