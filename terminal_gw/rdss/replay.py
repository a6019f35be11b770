"""`terminal-gw replay` of the RDSS port: a recorded RDSS session played as the terminal.

A session recorded with both directions (`[rdss] record = true`, or `terminal-gw record
--proxy`) is played to the driver of `run` over a `PlaybackPort`: each sentence the driver
writes (`CCICA`/`CCICR` card queries, `CCRMO` beam output, `CCTXA`/`CCTCQ` sends) is answered
with what the terminal sent after it was recorded, and what the terminal sent on its own
(`BDTXR`/`BDTCI` messages, `BDBSI`/`BDPWI` beams) comes in the recorded order. The driver's
own timers do not decide when it writes in a replay: the replay makes the recorded writes
again when they come up (once the driver has read everything recorded before them), as the
modem replay makes recorded sends again. A card query is asked in the dialects recorded; a
send is queued again (ids `replay-1`, `replay-2`, ...) with the recorded recipient, mode and
content, so the driver builds the same sentence, and a retry after a `BDFKI` wait is the
driver's own. The driver's clock is the recording's: the time of the chunk read last, moved on
to a write's recorded time before the replay makes it, so pacing (service interval, a wait
from the feedback) lets the write go as it went when recorded.

What the driver stores is printed (`--jsonl`) or counted: `bds/rx` for each received message
(duplicates within the window dropped as `run` drops them; the same ids as `run` published when
the session was recorded from the driver's start: an id derives from the read time, kept to the
millisecond in the capture, and the message's place in the session), `bds/tx/{id}` progress
of the sends made again, `rdss/status` as the state changes, events (`playback_mismatch`
included), and the last `rdss/status` closes each session. A write that is not the recorded
next one is a mismatch (an event; the playback looks a few steps ahead, else answers nothing
the driver can parse); a session ends when every step was played and the driver is quiet, or
when nothing was played for a while (a stall, reported).

Only the terminal's side of a capture (a raw capture, or `<` chunks without any `>`) has
nothing to answer: its chunks go through the driver offline, one after the other, with the
recorded times (when there are) as the clock.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO

import structlog
from structlog.typing import FilteringBoundLogger

from terminal_gw.config import RdssConfig
from terminal_gw.errors import CommandError, StoreError, TransportError
from terminal_gw.gnss.framer import Framer, Sentence
from terminal_gw.models import Event, Payload
from terminal_gw.rdss.content import mode_of
from terminal_gw.rdss.driver import RdssDriver
from terminal_gw.rdss.sentences import (
    MAX_SENTENCE_LEN,
    CardQuery,
    CardQuery3,
    Dialect,
    OutputControl,
    RdssRecord,
    SendRequest,
    SendRequest3,
    SentenceError,
    parse,
)
from terminal_gw.rdss.store import RdssStore
from terminal_gw.topics import Topics
from terminal_gw.transport.capture import TO_DEVICE, CaptureReader, Chunk
from terminal_gw.transport.playback import PlaybackPort
from terminal_gw.transport.serial import PortState

__all__ = ["RDSS_PORT", "RdssReplay", "rdss_sessions", "replay_rdss"]

RDSS_PORT = "rdss"
#: How often the replay looks at the playback.
CHECK_EVERY_S = 0.01
#: A recorded write is made again once the driver has read everything before it and been
#: quiet this long (it has acted on what it read).
WRITE_QUIET_S = 0.05
#: After the last recorded step, a session ends once the driver has been quiet this long.
QUIET_S = 0.3
#: A session with steps left stalls when none was played for this long.
STALL_S = 5.0
#: The driver's waits for an answer in a replay: a recorded answer is played at once.
REPLAY_TIMEOUT_S = 1.0
#: How far ahead the playback looks for a write that was not the recorded next one.
RESYNC_WINDOW = 2
#: The host's sentences a card query is made of (the query, then beam output).
_QUERY = (CardQuery, CardQuery3, OutputControl)


def _dialect_of(record: RdssRecord) -> Dialect | None:
    if isinstance(record, CardQuery):
        return "2.1"
    if isinstance(record, CardQuery3):
        return "bds3"
    if isinstance(record, OutputControl):
        return "2.1" if record.sentence == "BSI" else "bds3" if record.sentence == "PWI" else None
    return None


def _records(written: bytes) -> list[RdssRecord] | None:
    """The sentences of a recorded write; None when one does not parse."""
    framer = Framer(max_sentence_len=MAX_SENTENCE_LEN)
    out: list[RdssRecord] = []
    for sentence in framer.feed(written):
        if not isinstance(sentence, Sentence):
            return None
        try:
            out.append(parse(sentence))
        except SentenceError:
            return None
    return out or None


def rdss_sessions(readers: Iterable[CaptureReader]) -> list[list[Chunk]]:
    """The `rdss` chunks of the captures, per recorded session (a capture continuing the one
    before it, by rotation, joins its session); every chunk of a raw capture is the
    terminal's."""
    from terminal_gw.replay import ModemChunks

    tap = ModemChunks(RDSS_PORT)
    for reader in readers:
        tap.begin(reader)
        for chunk in reader:
            tap.see(chunk._replace(port=RDSS_PORT) if reader.kind == "raw" else chunk)
    return tap.sessions()


class _TerminalPort:
    """The driver's port in a replay: the playback, always open. A write past the
    recording's end gets no answer and is counted: it is where the replay ends."""

    def __init__(self, playback: PlaybackPort, replay: RdssReplay) -> None:
        self.playback = playback
        self._replay = replay
        self.state = PortState.OPEN
        self.reason = "replaying a recording"
        self.opens = 1
        self.past_end = 0
        self.last_activity = time.monotonic()

    async def read(self) -> bytes:
        data = await self.playback.read()
        self.last_activity = time.monotonic()
        self._replay.advance(self.playback.read_time)
        return data

    async def write(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        if self.playback.remaining == 0:
            self.past_end += 1
            return
        await self.playback.write(data)

    def mark_alive(self) -> None:
        """Nothing goes stale in a replay."""

    async def close(self) -> None:
        """The replay closes the playback."""


@dataclass
class RdssStats:
    """What the RDSS side of a replay saw and did."""

    sessions: int = 0
    offline: int = 0
    chunks_in: int = 0
    steps: int = 0
    playback: Counter[str] = field(default_factory=Counter)
    remaining: int = 0
    past_end: int = 0
    stalled: int = 0
    queries: int = 0
    sends: int = 0
    sends_refused: int = 0
    settings: dict[str, int] = field(default_factory=dict)

    @property
    def played(self) -> int:
        """Recorded steps played."""
        return self.playback["matched"]

    @property
    def mismatches(self) -> int:
        """Writes that were not the recorded next one."""
        return self.playback["mismatched"]


class RdssReplay:
    """Plays recorded RDSS sessions to the driver and prints (or counts) what it stores."""

    def __init__(
        self,
        config: RdssConfig,
        *,
        out: TextIO,
        jsonl: bool,
        topics: Topics,
        state_dir: Path,
        log: FilteringBoundLogger | None = None,
    ) -> None:
        self.config = config.model_copy(
            update={
                "answer_timeout_s": min(config.answer_timeout_s, REPLAY_TIMEOUT_S),
                "feedback_timeout_s": min(config.feedback_timeout_s, REPLAY_TIMEOUT_S),
            }
        )
        self.out = out
        self.jsonl = jsonl
        self.topics = topics
        self.state_dir = state_dir
        self.log: FilteringBoundLogger = log or structlog.get_logger("terminal_gw.replay")
        self.records: Counter[str] = Counter()
        self.host = Framer(max_sentence_len=MAX_SENTENCE_LEN)
        self.host_counts: Counter[str] = Counter()
        self.stats = RdssStats()
        self.driver: RdssDriver | None = None
        self.counters: Counter[str] = Counter()
        self.framer_counters: Counter[str] = Counter()
        self._now = time.time()
        self._last_record = time.monotonic()
        self._sends = 0

    # -- what the driver stores -----------------------------------------------------------

    async def put(
        self, topic: str, payload: Payload, *, retain: bool = False, sync: bool | None = None
    ) -> None:
        """The driver's outbox: print or count the record."""
        self._emit(topic, payload)

    def _emit(self, topic: str, payload: Payload) -> None:
        self._last_record = time.monotonic()
        self.records[payload.record_class] += 1
        if self.jsonl:
            self.out.write(
                f'{{"topic":{json.dumps(topic, ensure_ascii=False)},'
                f'"payload":{payload.to_json()}}}\n'
            )

    def _event(self, event: Event) -> None:
        self._emit(self.topics.of(event), event)

    def advance(self, recorded: float | None) -> None:
        """The recording's clock moves on to `recorded` (never back)."""
        if recorded is not None and recorded > self._now:
            self._now = recorded

    # -- playing ----------------------------------------------------------------------

    def play(self, sessions: list[list[Chunk]]) -> None:
        """Play each session to a fresh driver."""
        asyncio.run(self._play_all(sessions))

    async def _play_all(self, sessions: list[list[Chunk]]) -> None:
        for chunks in sessions:
            for chunk in chunks:
                if chunk.direction == TO_DEVICE:
                    self._count_host(chunk.data)
                else:
                    self.stats.chunks_in += 1
            first = next((c.ts for c in chunks if c.ts is not None), None)
            self._now = first if first is not None else time.time()
            if any(c.direction == TO_DEVICE for c in chunks):
                await self._play(chunks)
            else:
                await self._offline(chunks)

    def _count_host(self, data: bytes) -> None:
        for sentence in self.host.feed(data):
            if not isinstance(sentence, Sentence):
                self.host_counts["bad"] += 1
                continue
            try:
                self.host_counts[parse(sentence).ADDRESS] += 1
            except SentenceError:
                self.host_counts["bad"] += 1

    def _new_driver(self, port: _TerminalPort | None) -> RdssDriver:
        driver = RdssDriver(
            self.config,
            self,
            RdssStore(self.state_dir / "rdss-replay.db"),
            topics=self.topics,
            state_dir=self.state_dir,
            events=self._event,
            log=self.log,
            clock=lambda: self._now,
            port_factory=None if port is None else (lambda: port),
            asks_card=False,
        )
        self.driver = driver
        return driver

    async def _finish(self, driver: RdssDriver) -> None:
        for _ in driver.framer.flush():
            driver.counters["unterminated_at_end"] += 1
        status = driver.status_payload()
        await self.put(self.topics.of(status), status, retain=True)
        self.counters.update(driver.counters)
        self.framer_counters.update(driver.framer.counters)
        await driver.close()

    async def _offline(self, chunks: list[Chunk]) -> None:
        self.stats.offline += 1
        driver = self._new_driver(None)
        driver.replaying = True
        await driver.open()
        for chunk in chunks:
            self.advance(chunk.ts)
            await driver.feed(chunk.data, round(self._now, 3))
        await self._finish(driver)

    async def _play(self, chunks: list[Chunk]) -> None:
        self.stats.sessions += 1
        playback = PlaybackPort(
            chunks,
            port=RDSS_PORT,
            resync_window=RESYNC_WINDOW,
            on_mismatch="error_reply",
            events=self._event,
            log=self.log,
        )
        port = _TerminalPort(playback, self)
        driver = self._new_driver(port)
        await driver.open()
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(driver.run(), name="rdss-replay")
            stalled = await self._until_done(driver, playback, port)
            task.cancel()
        await playback.close()
        st = self.stats
        st.steps += playback.steps
        st.playback.update(playback.counters)
        st.remaining += playback.remaining
        st.past_end += port.past_end
        st.stalled += stalled
        await self._finish(driver)

    async def _until_done(
        self, driver: RdssDriver, playback: PlaybackPort, port: _TerminalPort
    ) -> bool:
        """Make the recorded writes as they come up, until the session is played out; True
        when it stalled instead."""
        made_at: int | None = None  # the step (by steps remaining) last made again
        sends: dict[bytes, str] = {}  # recorded send sentence -> the job made for it
        matched = -1
        progress_at = time.monotonic()
        while True:
            await asyncio.sleep(CHECK_EVERY_S)
            now = time.monotonic()
            if playback.counters["matched"] != matched:
                matched = playback.counters["matched"]
                progress_at = now
            quiet = now - max(port.last_activity, self._last_record)
            if playback.remaining == 0:
                if playback.unread == 0 and (port.past_end or quiet >= QUIET_S):
                    return False
                continue
            if now - progress_at >= STALL_S:
                return True
            if playback.unread or quiet < WRITE_QUIET_S or made_at == playback.remaining:
                continue
            made_at = playback.remaining
            # Everything recorded before the write was read: the clock is at the write.
            self.advance(playback.next_written_at)
            driver.wake()
            await self._make_write(driver, playback, sends)

    async def _make_write(
        self, driver: RdssDriver, playback: PlaybackPort, sends: dict[bytes, str]
    ) -> None:
        upcoming = playback.upcoming(4)
        first = _records(upcoming[0])
        if first is None:
            return
        if all(isinstance(r, _QUERY) for r in first):
            dialects: list[Dialect] = []
            for written in upcoming:
                records = _records(written)
                if records is None or not all(isinstance(r, _QUERY) for r in records):
                    break
                for record in records:
                    d = _dialect_of(record)
                    if d is not None and d not in dialects:
                        dialects.append(d)
                    if isinstance(record, OutputControl) and record.interval_s:
                        self._recorded_setting(driver, beam_interval_s=record.interval_s)
            if dialects:
                self.stats.queries += 1
                await driver.ask_card(tuple(dialects))
            return
        request = first[0]
        if len(first) != 1 or not isinstance(request, SendRequest | SendRequest3):
            return
        known = sends.get(upcoming[0])
        if known is not None:
            job = await driver.store.get(known)
            if job is not None and not job.final:
                return  # the driver retries it itself
        await self._send_again(driver, request, upcoming[0], sends)

    async def _send_again(
        self,
        driver: RdssDriver,
        request: SendRequest | SendRequest3,
        written: bytes,
        sends: dict[bytes, str],
    ) -> None:
        """Queue a recorded send again, so that the driver builds the same sentence."""
        cfg = driver.cfg
        if isinstance(request, SendRequest):
            mode = mode_of("2.1", request.mode)
            cls: Literal["normal", "express"] = "normal"
            if request.comm_class == cfg.comm_class_express != cfg.comm_class_normal:
                cls = "express"
            elif request.comm_class != cfg.comm_class_normal:
                self._recorded_setting(driver, comm_class_normal=request.comm_class)
        else:
            mode = mode_of("bds3", request.code_type)
            cls = "normal"
            self._recorded_setting(
                driver, frequency_point=request.frequency_point, inbound_ack=request.ack
            )
        if mode not in ("chinese", "code", "mixed"):
            self.stats.sends_refused += 1
            return
        self._sends += 1
        bds_id = f"replay-{self._sends}"
        try:
            await driver.enqueue(bds_id, request.to, data=request.content, mode=mode, cls=cls)
        except (CommandError, StoreError, TransportError) as exc:
            self.stats.sends_refused += 1
            self.log.warning("recorded send refused in the replay", error=str(exc))
            return
        sends[written] = bds_id
        self.stats.sends += 1

    def _recorded_setting(self, driver: RdssDriver, **update: int) -> None:
        """Take a setting from the recorded write when `--config` says otherwise, so that the
        driver writes what was recorded."""
        cfg = driver.cfg
        changed = {k: v for k, v in update.items() if getattr(cfg, k) != v}
        if changed:
            self.stats.settings.update(changed)
            driver.cfg = cfg.model_copy(update=changed)

    # -- reporting --------------------------------------------------------------------

    def summary_lines(self) -> list[str]:
        """The RDSS part of the summary printed without --jsonl."""
        d = self.driver
        card = None if d is None else d.card
        st = self.stats
        pb = st.playback
        lines = [
            f"rdss sessions: {st.sessions} played"
            + (f", {st.offline} terminal output only (played offline)" if st.offline else ""),
            f"rdss dialect: {(d.dialect if d is not None else None) or 'unknown'}",
            "rdss card: "
            + ("none seen" if card is None else json.dumps(card.as_dict(), ensure_ascii=False)),
            (
                f"rdss records: {self.records.total()}"
                f" ({', '.join(f'{k} {v}' for k, v in sorted(self.records.items()))})"
            ),
            "rdss host sentences: "
            + (", ".join(f"{k} {v}" for k, v in sorted(self.host_counts.items())) or "none"),
        ]
        if st.sessions:
            lines.append(
                f"rdss steps: {st.steps} recorded, {st.played} played, {st.remaining} remaining;"
                f" {st.mismatches} mismatches ({pb['resynced']} resynchronised skipping"
                f" {pb['skipped']} steps)"
            )
            lines.append(
                f"rdss writes made again: {st.queries} card queries, {st.sends} sends"
                + (f" ({st.sends_refused} refused)" if st.sends_refused else "")
            )
        if st.settings:
            lines.append(
                "rdss settings taken from the recording: "
                + ", ".join(f"{k} {v}" for k, v in sorted(st.settings.items()))
            )
        if st.past_end:
            lines.append(f"rdss writes past the recording's end: {st.past_end}")
        if st.stalled:
            lines.append(
                f"rdss stalled: {st.stalled} session(s) ended with steps the driver did not make"
            )
        counters = {
            **{k: v for k, v in self.counters.items() if v},
            **{f"framer_{k}": v for k, v in self.framer_counters.items() if v},
        }
        if counters:
            lines.append("rdss counters:")
            width = max(len(k) for k in counters)
            lines.extend(f"  {k:<{width}}  {v:>9}" for k, v in sorted(counters.items()))
        return lines

    def status_line(self) -> str:
        """The RDSS part of the line printed on stderr at the end."""
        st = self.stats
        line = f"rdss: {st.chunks_in} chunks from the terminal"
        if st.sessions:
            line += (
                f", played {st.played} of {st.steps} steps, {st.mismatches} mismatches,"
                f" {st.remaining} remaining" + (f", stalled {st.stalled}" if st.stalled else "")
            )
        return line


def replay_rdss(
    readers: Iterable[CaptureReader],
    config: RdssConfig,
    *,
    topics: Topics,
    jsonl: bool,
    out: TextIO,
    err: TextIO,
    log: FilteringBoundLogger | None = None,
) -> int:
    """`replay --port rdss`: play the rdss chunks of the captures; an exit code."""
    readers = list(readers)
    sessions = rdss_sessions(readers)
    if not sessions:
        print(
            f"error: no {RDSS_PORT!r} chunks: nothing to play (the daemon records them with"
            " [rdss] record = true)",
            file=err,
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="tgw-rdss-replay-") as tmp:
        replay = RdssReplay(
            config, out=out, jsonl=jsonl, topics=topics, state_dir=Path(tmp), log=log
        )
        replay.play(sessions)
    if not jsonl:
        print("\n".join(replay.summary_lines()), file=out)
    out.flush()
    total = replay.records.total()
    print(
        f"replay: {len(readers)} capture(s), {total} records; {replay.status_line()}",
        file=err,
    )
    st = replay.stats
    if st.sessions and not st.played:
        print("error: no recorded rdss step could be played", file=err)
        return 1
    return 0
