"""The RDSS stage: the BeiDou short-message terminal on its serial port.

One `run()` owns the port (a `ReconnectingPort`: reopened on unplug, after `stale_after_s`
without a valid sentence, on a capped backoff) and runs three tasks:

- the reader frames sentences (the GNSS framer: fragments, garbage, bad checksums counted),
  parses them with the tables in `sentences`, and acts: card answers set the card state
  (and, with `dialect = "auto"`, the dialect, remembered in the state directory); beam
  sentences set the beams; each received message (`BDTXR`, `BDTCI`) is stored in the outbox
  with a synchronous commit at once (a terminal outputs a message once: there is nothing to
  read again later) unless it repeats one from the same sender within `duplicate_window_s`;
  feedback (`BDFKI`) goes to the send waiting for it.
- the ticker asks for the card after each (re)open and now and then, detects the dialect,
  turns beam output on, and keeps the retained `rdss/status` current.
- the sender takes the durable queue (`store`) in order: it waits for the card's service
  interval since the last send (the ledger's, so a restart keeps it), for a beam at the
  configured minimum (beam information missing, old or unreadable never blocks), checks the
  cost guard and the card's capacity, hands the send to the terminal and reads its feedback:
  a wait is waited and retried up to `max_tries`, suppression and radio silence are waited
  and reported, no card fails.

`enqueue()` queues a send from inside the daemon; the `bds/send` command uses it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import structlog
from structlog.typing import FilteringBoundLogger

from terminal_gw.config import RdssConfig
from terminal_gw.errors import CommandError, StoreError, TransportError
from terminal_gw.gnss.framer import Framer, Sentence
from terminal_gw.models import (
    BdsReceived,
    BdsSendProgress,
    EventSink,
    RdssStatus,
    RecordSink,
    iso_utc,
    make_event,
    new_id,
    stable_id,
)
from terminal_gw.rdss.content import (
    Mode,
    Planned,
    capacity_bits,
    decode_content,
    mode_code,
    mode_of,
    plan,
)
from terminal_gw.rdss.sentences import (
    MAX_SENTENCE_LEN,
    BeamPower,
    BeamStatus,
    CardInfo,
    CardInfo3,
    CardQuery,
    CardQuery3,
    Dialect,
    Feedback,
    Feedback3,
    OutputControl,
    RdssRecord,
    Received,
    Received3,
    SendRequest,
    SendRequest3,
    SentenceError,
    build,
    parse,
)
from terminal_gw.rdss.store import BdsJob, RdssStore
from terminal_gw.topics import Topics
from terminal_gw.transport.port import Port
from terminal_gw.transport.serial import PortState, ReconnectingPort

__all__ = ["COMMAND_ID", "DIALECT_FILE", "Card", "RdssDriver", "RecordSink"]

#: Ids go into topics (`bds/tx/{id}`): the same rule as every command id.
COMMAND_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
#: The recipient's user id: digits only, at most this long per dialect.
TO_DIGITS: dict[Dialect, int] = {"2.1": 7, "bds3": 8}
#: Where `dialect = "auto"` remembers what the terminal answered, in the state directory.
DIALECT_FILE = "rdss_dialect.json"
TICK_S = 0.5
INFO_CLASS = {1: "normal", 2: "express", 3: "broadcast", 4: "query_result", 5: "query_result"}
#: The command names of BDFKI feedback to a send.
SEND_COMMANDS = frozenset({"TXA", "TCQ"})
#: 2.1 BDFKI transmit suppression values.
SUPPRESSION = {1: "suppressed", 2: "radio_silence", 3: "suppressed"}
#: Feedback reasons a send waits on (then retried); others fail it.
_WAIT_REASONS = frozenset({"interval", "suppressed", "radio_silence", "power_not_locked"})
_REASON_TEXT = {
    "interval": "the service interval has not passed",
    "suppressed": "transmission suppressed",
    "radio_silence": "radio silence",
    "power_not_locked": "power not locked",
    "no_card": "no IC card in the terminal",
    "no_permission": "the card has no permission for this",
    "refused": "the terminal refused the send",
}


class TerminalPort(Port, Protocol):
    """The driver's port: a `ReconnectingPort`, or a recording played back (`replay`)."""

    state: PortState
    reason: str
    opens: int

    def mark_alive(self) -> None:
        """A valid sentence was read."""
        ...


@dataclass(frozen=True, slots=True)
class Card:
    """The card as the terminal reported it."""

    present: bool
    user_id: str
    serial: str
    broadcast_id: str
    level: int
    interval_s: int
    encrypted: bool
    subordinates: int | None = None
    user_class: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """For the status payload (absent values left out)."""
        out = {
            "user_id": self.user_id,
            "serial": self.serial,
            "broadcast_id": self.broadcast_id,
            "level": self.level,
            "interval_s": self.interval_s,
            "encrypted": self.encrypted,
            "subordinates": self.subordinates,
            "user_class": self.user_class,
        }
        return {k: v for k, v in out.items() if v is not None}


def _card(record: CardInfo | CardInfo3) -> Card:
    if isinstance(record, CardInfo):
        return Card(
            record.present,
            record.user_id,
            record.serial,
            record.broadcast_id,
            record.level,
            record.interval_s,
            record.encrypted,
            record.subordinates,
            record.user_class,
        )
    return Card(
        record.present,
        record.user_id,
        record.serial,
        record.broadcast_id,
        record.level,
        record.interval_s,
        record.encrypted,
    )


def day_start(now: float) -> float:
    """00:00 UTC of the day of `now`."""
    return now - now % 86400.0


class RdssDriver:
    """The RDSS stage (see module doc)."""

    def __init__(
        self,
        config: RdssConfig,
        sink: RecordSink,
        store: RdssStore,
        *,
        topics: Topics,
        state_dir: Path,
        events: EventSink | None = None,
        on_progress: Callable[[], None] | None = None,
        tap: Callable[[Literal["<", ">"], bytes, float], None] | None = None,
        log: FilteringBoundLogger | None = None,
        clock: Callable[[], float] = time.time,
        port_factory: Callable[[], TerminalPort] | None = None,
        asks_card: bool = True,
    ) -> None:
        self.cfg = config
        self._port_factory = port_factory
        #: Whether the ticker asks for the card by itself (a replay asks when it was recorded).
        self.asks_card = asks_card
        self._sink = sink
        self.store = store
        self._topics = topics
        self._state_file = state_dir / DIALECT_FILE
        self._events = events
        self._on_progress = on_progress
        self._tap = tap
        self._log: FilteringBoundLogger = log or structlog.get_logger("terminal_gw.rdss")
        self._clock = clock
        self.framer = Framer(max_sentence_len=MAX_SENTENCE_LEN)
        self.counters: Counter[str] = Counter()
        self.dialect: Dialect | None = None if config.dialect == "auto" else config.dialect
        self._remembered: Dialect | None = None
        self.card: Card | None = None
        self.beams: list[int] | None = None
        self._beams_at = -float("inf")
        self._port: TerminalPort | None = None
        self._opens_seen = 0
        self._asked_at = -float("inf")  # the last card query
        self._answered_at = -float("inf")  # the last card answer
        self._heard_at = time.monotonic()
        self._wake = asyncio.Event()
        self._feedback: asyncio.Future[Feedback | Feedback3] | None = None
        self._feedback_at = 0.0  # when the last feedback to a send was read
        self._recent: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self._unstored: list[BdsReceived] = []
        self._rx_seq = 0
        self._read_at = 0.0  # when the chunk being acted on was read
        self.last_send: float | None = None
        self.next_send: float | None = None
        self.sends_today = 0
        self.queue_depth = 0
        self._status_key: tuple[Any, ...] | None = None
        self._status_at = -float("inf")
        self._no_card_reported = False
        self._beam_kind: str | None = None
        self._waiting: dict[str, str] = {}  # job id -> the wait last reported
        self._started = time.monotonic()
        self._usage_at = time.monotonic()
        #: Fed from a recording (`feed`), without a port: the state does not look at one.
        self.replaying = False

    # ---- public ---------------------------------------------------------------------

    @property
    def state(self) -> Literal["ok", "no_card", "detecting", "down"]:
        """ok, no_card, detecting (dialect or card not known yet) or down (port)."""
        port = self._port
        if not self.replaying and (port is None or port.state is not PortState.OPEN):
            return "down"
        if self.dialect is None or self.card is None:
            return "detecting"
        return "ok" if self.card.present else "no_card"

    def interval_s(self) -> float:
        """The service interval in use: the card's, else the configured one."""
        if self.card is not None and self.card.present and self.card.interval_s > 0:
            return float(self.card.interval_s)
        return self.cfg.interval_s

    def beams_ok(self) -> bool | None:
        """A beam at the minimum: True/False; None when no recent beam information."""
        if self.beams is None or time.monotonic() - self._beams_at > self.cfg.beams_max_age_s:
            return None
        floor = self.cfg.min_beam_cn0 if self._beam_kind == "bds3" else self.cfg.min_beam_power
        return any(b >= floor for b in self.beams)

    def summary(self) -> str:
        """One line for the health report."""
        card = self.card
        what = "no card" if card is None or not card.present else f"card {card.user_id}"
        if card is not None and card.present:
            what += f" level {card.level} interval {card.interval_s}s"
        return f"{self.state}: dialect {self.dialect or '?'}, {what}, queue {self.queue_depth}"

    def status_payload(self) -> RdssStatus:
        """The retained `rdss/status` payload."""
        now = self._clock()
        port = self._port
        return RdssStatus(
            id=new_id(int(now * 1000)),
            time=iso_utc(now),
            state=self.state,
            reason=None if port is None else f"port {port.state}: {port.reason}",
            dialect=self.dialect,
            card=None if self.card is None else self.card.as_dict(),
            beams=self.beams,
            beams_ok=self.beams_ok(),
            last_send=None if self.last_send is None else iso_utc(self.last_send),
            next_send=None if self.next_send is None else iso_utc(self.next_send),
            interval_s=self.interval_s(),
            queue_depth=self.queue_depth,
            sends_today=self.sends_today,
            counters=dict(self.counters),
        )

    async def open(self) -> None:
        """Open the send queue (StoreError when it cannot be)."""
        await self.store.open()
        self._load_dialect()

    async def close(self) -> None:
        """Close the send queue."""
        await self.store.close()

    async def enqueue(
        self,
        bds_id: str,
        to: str,
        *,
        text: str | None = None,
        data: str | None = None,
        mode: Literal["auto", "chinese", "code", "mixed"] = "auto",
        cls: Literal["normal", "express"] = "normal",
    ) -> tuple[BdsJob, bool]:
        """Queue a short message (idempotent by id): (the job, True when new). CommandError
        (with a code) when it is refused: nothing is queued then."""
        if not COMMAND_ID.fullmatch(bds_id):
            raise CommandError(f"invalid id {bds_id[:70]!r}", code="invalid_id")
        self.check_to(to)
        if data is not None:
            data = data.upper()
        planned = self.plan(text=text, data=data, mode=mode, cls=cls, strict=False)
        now = self._clock()
        try:
            job, created = await self.store.add(
                bds_id, to, text=text, data=data, mode=mode, cls=cls, now=now
            )
        except StoreError as exc:
            raise CommandError(
                f"cannot queue the message: {exc.reason}", code="store", reason=exc.reason
            ) from exc
        if created:
            self.counters["tx_queued"] += 1
            self._log.info("bds_queued", bds_id=bds_id, to=to, bits=planned.bits)
            self.queue_depth += 1
        else:
            self.counters["tx_duplicates"] += 1
        await self.progress(job, "queued" if not job.final else job.state, planned=planned)
        self._wake.set()
        return job, created

    async def report_refused(self, bds_id: str, to: object, exc: CommandError) -> None:
        """A send refused before it was queued: `failed` on `bds/tx/{id}`, unless the id
        already names a message (its state stands)."""
        try:
            if await self.store.get(bds_id) is not None:
                return
        except StoreError:
            return
        now = self._clock()
        self.counters["tx_refused"] += 1
        shown = to[:24] if isinstance(to, str) and to.isascii() and to.isdigit() else ""
        payload = BdsSendProgress(
            id=new_id(int(now * 1000)),
            time=iso_utc(now),
            bds_id=bds_id,
            state="failed",
            to=shown,
            code=exc.code,
            reason=str(exc),
        )
        await self._put_progress(payload)

    def check_to(self, to: str) -> None:
        """CommandError unless `to` is a user id for the dialect (digits only)."""
        longest = TO_DIGITS[self.dialect] if self.dialect else max(TO_DIGITS.values())
        if not (to.isascii() and to.isdigit() and 1 <= len(to) <= longest and int(to) > 0):
            raise CommandError(
                f"invalid recipient {to[:24]!r}: a user id of 1-{longest} digits",
                code="invalid_number",
            )

    def plan(
        self,
        *,
        text: str | None,
        data: str | None,
        mode: Literal["auto", "chinese", "code", "mixed"],
        cls: str,
        strict: bool,
    ) -> Planned:
        """Mode and size against the card's capacity. Not strict (at queueing, the card or
        dialect perhaps unknown): the largest capacity they may turn out to have."""
        dialect = self.dialect
        card = self.card if self.card is not None and self.card.present else None
        if dialect == "bds3" and cls == "express":
            raise CommandError("BDS-3 terminals have no express class", code="invalid")
        if dialect is None and not strict:
            limit = max(
                capacity_bits("bds3", level=None, scope=self.cfg.bds3_scope),
                capacity_bits("2.1", level=None, express=cls == "express"),
            )
            note = "the largest card of either dialect"
        elif dialect == "bds3":
            limit = capacity_bits("bds3", level=None, scope=self.cfg.bds3_scope)
            note = f"a BDS-3 {self.cfg.bds3_scope} message"
        elif card is not None:
            limit = capacity_bits(
                "2.1", level=card.level, encrypted=card.encrypted, express=cls == "express"
            )
            enc = "encrypted " if card.encrypted else ""
            note = f"an {enc}card of comm level {card.level}" + (
                " (express)" if cls == "express" else ""
            )
        elif strict:
            limit = capacity_bits("2.1", level=self.cfg.level, express=cls == "express")
            note = f"comm level {self.cfg.level} (rdss.level: the card did not say)"
        else:
            limit = capacity_bits("2.1", level=None, express=cls == "express")
            note = "the largest 2.1 card"
        return plan(text=text, data=data, mode=mode, limit=limit, card_note=note)

    # ---- life -----------------------------------------------------------------------

    async def run(self) -> None:
        """Own the port until cancelled."""
        now = self._clock()
        for job in await self.store.recover(now):
            self.counters["tx_interrupted"] += 1
            await self.progress(job, "failed")
        with contextlib.suppress(StoreError):
            await self.store.prune(now, keep_s=self.cfg.history_days * 86400.0)
        await self._refresh_usage()
        port: TerminalPort
        if self._port_factory is not None:
            port = self._port_factory()
        else:
            port = ReconnectingPort(
                self.cfg.port,
                self.cfg.baud,
                name="rdss",
                stale_after_s=self.cfg.stale_after_s,
                events=self._events,
                log=self._log,
            )
        self._port = port
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._reader(port), name="rdss-reader")
                tg.create_task(self._ticker(port), name="rdss-ticker")
                tg.create_task(self._sender(port), name="rdss-sender")
        finally:
            await port.close()

    async def ask_card(self, dialects: tuple[Dialect, ...]) -> None:
        """Ask for the card (and turn beam output on) in these dialects now: a replay makes
        the queries it finds recorded."""
        if self._port is not None:
            await self._query(self._port, dialects)

    def wake(self) -> None:
        """Let the sender look at the queue again now (a replay's clock has moved on)."""
        self._wake.set()

    # ---- reader ---------------------------------------------------------------------

    async def _reader(self, port: TerminalPort) -> None:
        while True:
            chunk = await port.read()
            # To the millisecond: the time a capture keeps and a replay gives back, so that
            # a replay derives the same message ids.
            at = round(self._clock(), 3)
            if self._tap is not None:
                self._tap("<", chunk, at)
            if await self.feed(chunk, at):
                port.mark_alive()

    async def feed(self, chunk: bytes, at: float | None = None) -> int:
        """Act on the sentences `chunk` completes (bytes as the terminal sent them, read at
        `at`, default now); the number of valid ones. The reader calls it; a replay feeds a
        recording through it."""
        self._read_at = self._clock() if at is None else at
        valid = 0
        for sentence in self.framer.feed(chunk):
            if not isinstance(sentence, Sentence):
                self.counters["sentences_bad"] += 1  # a binary frame: not the terminal's
                continue
            try:
                record = parse(sentence)
            except SentenceError as exc:
                self.counters["sentences_bad"] += 1
                self._log.info("rdss_bad_sentence", reason=exc.reason, raw=sentence.raw[:80])
                continue
            valid += 1
            self._heard_at = time.monotonic()
            self.counters["sentences"] += 1
            await self._on_record(record, sentence)
        return valid

    async def _on_record(self, record: RdssRecord, sentence: Sentence) -> None:
        if isinstance(record, CardInfo | CardInfo3):
            self._on_card(record)
        elif isinstance(record, BeamStatus):
            self._set_beams(list(record.powers), "2.1")
        elif isinstance(record, BeamPower):
            if record.beams:
                self._set_beams([max(b.cn0_a, b.cn0_b) for b in record.beams], "bds3")
            else:
                self.counters["beams_empty"] += 1
        elif isinstance(record, Received | Received3):
            await self._receive(record, sentence)
        elif isinstance(record, Feedback | Feedback3):
            fut = self._feedback
            if record.command not in SEND_COMMANDS:
                self.counters["feedback_other"] += 1  # e.g. to CCICA or CCRMO
            elif fut is not None and not fut.done():
                self._feedback_at = self._clock()
                fut.set_result(record)
            else:
                self.counters["feedback_unexpected"] += 1
        else:
            self.counters["sentences_ignored"] += 1

    def _on_card(self, record: CardInfo | CardInfo3) -> None:
        dialect: Dialect = "2.1" if isinstance(record, CardInfo) else "bds3"
        if self.dialect is None:
            self.dialect = dialect
            self._remember(dialect)
            self._event("rdss_dialect", f"RDSS terminal speaks dialect {dialect}", dialect=dialect)
        elif self.dialect != dialect:
            self.counters["card_other_dialect"] += 1
            return
        self._answered_at = time.monotonic()
        card = _card(record)
        changed = card != self.card
        self.card = card
        if not card.present:
            if not self._no_card_reported:
                self._no_card_reported = True
                self._event(
                    "rdss_no_card",
                    "the RDSS terminal reports no card: sends fail until one is inserted",
                    severity="warning",
                )
        elif changed:
            self._no_card_reported = False
            self._event(
                "rdss_card",
                f"RDSS card {card.user_id}: level {card.level}, interval {card.interval_s}s",
                **card.as_dict(),
            )
        self._wake.set()

    def _set_beams(self, values: list[int], kind: str) -> None:
        self.beams = values
        self._beam_kind = kind
        self._beams_at = time.monotonic()
        self.counters["beam_reports"] += 1
        if self.beams_ok():
            self._wake.set()

    async def _receive(self, record: Received | Received3, sentence: Sentence) -> None:
        now = self._read_at
        if isinstance(record, Received):
            dialect: Dialect = "2.1" if self.dialect != "bds3" else "bds3"
            code, content, info = record.mode, record.content, INFO_CLASS.get(record.info_class)
            sender, to, sent_at = record.sender, None, record.sent_at
            mode = mode_of("2.1", code)
        else:
            dialect = "bds3"
            code, content, info = record.code_type, record.content, "normal"
            sender, to, sent_at = record.sender, record.recipient, record.time
            mode = mode_of("bds3", code)
        sender = sender.lstrip("0").zfill(7)
        key = (sender, str(code), content)
        mono = now
        window = self.cfg.duplicate_window_s
        while self._recent and next(iter(self._recent.values())) < mono - window:
            self._recent.popitem(last=False)
        if key in self._recent:
            self.counters["rx_duplicates"] += 1
            self._recent[key] = mono
            return
        self._recent[key] = mono
        decoded = decode_content(content, mode)
        self._rx_seq += 1
        raw = sentence.raw.decode("ascii")
        payload = BdsReceived(
            id=stable_id(round(now * 1000), f"bds|{self._rx_seq}|{raw}".encode()),
            received=iso_utc(now),
            sender=sender,
            to=to,
            mode=mode or "unknown",
            text=decoded.text,
            data=decoded.data,
            reason=decoded.reason,
            info_class=info or "unknown",
            sent_at=sent_at,
            dialect=dialect,
            raw=raw,
        )
        if decoded.reason is not None and mode in ("chinese", "mixed"):
            self.counters["rx_undecodable"] += 1
        await self._store_rx(payload)

    async def _store_rx(self, payload: BdsReceived) -> bool:
        try:
            await self._sink.put(self._topics.of(payload), payload, sync=True)
        except StoreError as exc:
            self.counters["rx_store_failed"] += 1
            self._log.error("bds_rx_not_stored", error=str(exc), id=payload.id)
            if payload not in self._unstored and len(self._unstored) < 1000:
                self._unstored.append(payload)
            return False
        self.counters["rx"] += 1
        self._log.info("bds_rx", id=payload.id, sender=payload.sender, mode=payload.mode)
        return True

    # ---- ticker ---------------------------------------------------------------------

    async def _ticker(self, port: TerminalPort) -> None:
        while True:
            if self._on_progress is not None:
                self._on_progress()
            if port.state is PortState.OPEN:
                if port.opens != self._opens_seen:
                    self._opens_seen = port.opens
                    # Ask again at once: the terminal (or its card) may have changed. The
                    # card known so far stands meanwhile: sends are sized by it, not by the
                    # configured fallback.
                    self._asked_at = -float("inf")
                if self.asks_card:
                    await self._ask_card(port)
            if time.monotonic() - self._usage_at > 60.0:
                # Today's sends: the count starts again at 00:00 UTC.
                self._usage_at = time.monotonic()
                with contextlib.suppress(StoreError):
                    await self._refresh_usage()
            if self._unstored:
                held, self._unstored = self._unstored, []
                for payload in held:
                    await self._store_rx(payload)
            await self._maybe_status()
            await asyncio.sleep(TICK_S)

    async def _ask_card(self, port: TerminalPort) -> None:
        mono = time.monotonic()
        since_ask = mono - self._asked_at
        unanswered = self._answered_at < self._asked_at
        quiet = mono - self._heard_at > self.cfg.stale_after_s / 2
        asked = self._asked_at != -float("inf")
        pending = self.card is None or unanswered
        due = (
            not asked
            or (pending and since_ask > self.cfg.answer_timeout_s)
            or since_ask > self.cfg.card_query_interval_s
            or (quiet and since_ask > 5.0)
        )
        if not due:
            return
        auto = self.cfg.dialect == "auto"
        if auto and unanswered and self.dialect is not None and asked:
            # The remembered dialect did not answer: ask in both again.
            self.counters["dialect_redetect"] += 1
            self.dialect = None
        dialects: tuple[Dialect, ...] = (self.dialect,) if self.dialect else ("2.1", "bds3")
        await self._query(port, dialects)

    async def _query(self, port: TerminalPort, dialects: tuple[Dialect, ...]) -> None:
        self._asked_at = time.monotonic()
        for d in dialects:
            query = CardQuery() if d == "2.1" else CardQuery3()
            beams = OutputControl("BSI" if d == "2.1" else "PWI", 2, self.cfg.beam_interval_s)
            try:
                await self._write(port, build(query))
                await self._write(port, build(beams))
            except TransportError:
                return
        self.counters["card_queries"] += 1

    async def _write(self, port: TerminalPort, data: bytes) -> None:
        await port.write(data)
        if self._tap is not None:
            self._tap(">", data, self._clock())

    async def _maybe_status(self, force: bool = False) -> None:
        key = (
            self.state,
            self.dialect,
            self.card,
            self.beams_ok(),
            self.last_send,
            self.next_send,
            self.queue_depth,
        )
        mono = time.monotonic()
        if (
            not force
            and key == self._status_key
            and mono - self._status_at < self.cfg.status_interval_s
        ):
            return
        try:
            status = self.status_payload()
            await self._sink.put(self._topics.of(status), status, retain=True, sync=False)
        except StoreError as exc:
            self._log.warning("rdss_status_not_stored", error=str(exc))
            return
        self._status_key = key
        self._status_at = mono

    # ---- sender ---------------------------------------------------------------------

    async def _sender(self, port: TerminalPort) -> None:
        while True:
            self._wake.clear()
            now = self._clock()
            try:
                self.queue_depth = await self.store.depth()
                job, next_at = await self.store.next_due(now)
                if job is not None:
                    wait = await self._attempt(port, job)
                    if wait is None:
                        continue
                    next_at = now + wait
            except StoreError as exc:
                self._log.error("bds_store_failed", error=str(exc))
                next_at = now + 5.0
            wait_s = 60.0 if next_at is None else min(60.0, max(0.05, next_at - self._clock()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._wake.wait()

    async def progress(
        self,
        job: BdsJob,
        state: str,
        *,
        planned: Planned | None = None,
        may_send_at: float | None = None,
        code: str | None = None,
        reason: str | None = None,
        reason_code: int | None = None,
        reason_name: str | None = None,
    ) -> None:
        """Report a job's progress on `bds/tx/{id}` (through the outbox, committed)."""
        now = self._clock()
        payload = BdsSendProgress(
            id=new_id(int(now * 1000)),
            time=iso_utc(now),
            bds_id=job.id,
            state=state,
            to=job.to,
            mode=planned.mode if planned is not None else job.mode,
            bits=None if planned is None else planned.bits,
            limit_bits=None if planned is None else planned.limit,
            attempts=job.attempts,
            may_send_at=None if may_send_at is None else iso_utc(may_send_at),
            code=code if code is not None else (job.code if state == "failed" else None),
            reason=reason if reason is not None else (job.reason if state == "failed" else None),
            reason_code=reason_code
            if reason_code is not None
            else (job.reason_code if state == "failed" else None),
            reason_name=reason_name,
        )
        await self._put_progress(payload)

    async def _put_progress(self, payload: BdsSendProgress) -> None:
        try:
            await self._sink.put(self._topics.of(payload), payload, sync=True)
        except StoreError as exc:
            self.counters["progress_lost"] += 1
            self._log.error("bds_progress_not_stored", error=str(exc))

    async def _fail(self, job: BdsJob, code: str, reason: str, **kw: Any) -> None:
        refund = bool(kw.pop("refund", False))
        job = await self.store.finish(
            job.id,
            "failed",
            now=self._clock(),
            code=code,
            reason=reason,
            reason_code=kw.get("reason_code"),
            refund=refund,
        )
        self.counters["tx_failed"] += 1
        self._log.warning("bds_failed", bds_id=job.id, code=code, reason=reason)
        await self.progress(job, "failed", code=code, reason=reason, **kw)

    async def _refresh_usage(self) -> tuple[int, int]:
        now = self._clock()
        hour, day, today, last = await self.store.usage(now, day_start(now))
        self.sends_today = today
        if last is not None and (self.last_send is None or last > self.last_send):
            self.last_send = last
        if self.last_send is not None:
            self.next_send = self.last_send + self.interval_s()
        return hour, day

    async def _attempt(self, port: TerminalPort, job: BdsJob) -> float | None:
        """One step for `job`; None when the next job may be looked at at once, else the
        seconds to wait before looking again."""
        cfg = self.cfg
        waiting = self._waiting
        card_pending = self.card is None and (
            time.monotonic() - self._started < cfg.answer_timeout_s * 3
        )
        if self.dialect is None or card_pending:
            # Capacity and pacing come from the card: give it time to answer first.
            if waiting.get(job.id) != "terminal":
                waiting[job.id] = "terminal"
                await self.progress(
                    job,
                    "waiting_signal",
                    code="no_signal",
                    reason="waiting for the terminal to answer the card query",
                )
            return 1.0
        if self.card is not None and not self.card.present:
            await self._fail(job, "no_card", _REASON_TEXT["no_card"])
            return None
        try:
            self.check_to(job.to)
            planned = self.plan(
                text=job.text,
                data=job.data,
                mode=job.mode,  # type: ignore[arg-type]
                cls=job.cls,
                strict=True,
            )
        except CommandError as exc:
            await self._fail(job, exc.code, str(exc))
            return None
        hour, day = await self._refresh_usage()
        if hour >= cfg.max_sends_per_hour or day >= cfg.max_sends_per_day:
            self.counters["tx_rate_limited"] += 1
            await self._fail(
                job,
                "rate_limited",
                f"cost guard: {hour} of {cfg.max_sends_per_hour} sends in the last hour,"
                f" {day} of {cfg.max_sends_per_day} in the last day (rdss.max_sends_per_*)",
            )
            return None
        now = self._clock()
        may = max(self.next_send or 0.0, job.next_at)
        if now < may:
            if waiting.get(job.id) != f"interval@{may:.3f}":
                waiting[job.id] = f"interval@{may:.3f}"
                await self.progress(job, "waiting_interval", planned=planned, may_send_at=may)
            return may - now
        if self.beams_ok() is False:
            if waiting.get(job.id) != "signal":
                waiting[job.id] = "signal"
                self.counters["tx_waiting_signal"] += 1
                await self.progress(
                    job,
                    "waiting_signal",
                    planned=planned,
                    code="no_signal",
                    reason="no beam at the configured minimum power (rdss.min_beam_*)",
                )
            return 1.0
        if port.state is not PortState.OPEN:
            if waiting.get(job.id) != "port":
                waiting[job.id] = "port"
                await self.progress(
                    job, "waiting_signal", planned=planned, code="port", reason=port.reason
                )
            return 1.0
        return await self._hand_over(port, job, planned)

    def _sentence(self, job: BdsJob, planned: Planned) -> bytes:
        assert self.dialect is not None
        mode: Mode = planned.mode
        if self.dialect == "2.1":
            klass = (
                self.cfg.comm_class_express if job.cls == "express" else self.cfg.comm_class_normal
            )
            return build(
                SendRequest(job.to.zfill(7), klass, mode_code("2.1", mode), planned.content)
            )
        return build(
            SendRequest3(
                job.to.zfill(7),
                self.cfg.frequency_point,
                self.cfg.inbound_ack,
                mode_code("bds3", mode),
                planned.content,
                0,
            )
        )

    async def _hand_over(self, port: TerminalPort, job: BdsJob, planned: Planned) -> float | None:
        cfg = self.cfg
        try:
            line = self._sentence(job, planned)
        except (SentenceError, CommandError) as exc:
            await self._fail(job, "invalid", str(exc))
            return None
        job = await self.store.handing_over(job.id, self._clock())
        self._waiting.pop(job.id, None)
        await self.progress(job, "sending", planned=planned)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Feedback | Feedback3] = loop.create_future()
        self._feedback = fut
        try:
            try:
                await self._write(port, line)
            except TransportError as exc:
                job = await self.store.not_sent(
                    job.id, self._clock() + 1.0, self._clock(), code="port", reason=str(exc)
                )
                await self.progress(job, "waiting_signal", code="port", reason=str(exc))
                return 1.0
            sent_at = self._clock()
            try:
                async with asyncio.timeout(cfg.feedback_timeout_s):
                    fb = await fut
            except TimeoutError:
                self.counters["tx_unconfirmed"] += 1
                self.sends_today += 1  # in the ledger: it may have been transmitted
                self.last_send = sent_at
                self.next_send = sent_at + self.interval_s()
                await self._fail(
                    job,
                    "unconfirmed",
                    f"no BDFKI within {cfg.feedback_timeout_s:g}s: it may have gone out,"
                    " so it is not sent again",
                )
                return None
        finally:
            self._feedback = None
        return await self._after_feedback(job, planned, fb, sent_at)

    def _reason(self, fb: Feedback | Feedback3) -> tuple[str | None, int | None]:
        """(reason name, reason code) of a feedback; (None, None): executed."""
        if isinstance(fb, Feedback):
            if fb.executed and not fb.suppression:
                return None, None
            if fb.suppression:
                return SUPPRESSION.get(fb.suppression, "suppressed"), None
            return ("interval" if fb.wait_s > 0 else "refused"), None
        name: str | None = self.cfg.reasons.get(str(fb.reason)) if fb.reason else None
        if fb.executed:
            if fb.reason and name is not None:
                # Vendors differ (a Y with reason 5 is seen): a known reason is the more
                # specific word, and a refused send must not be reported sent.
                self.counters["feedback_inconsistent"] += 1
                return name, fb.reason
            return None, None
        if name is None:
            name = "interval" if fb.wait_s > 0 else "refused"
        return name, fb.reason or None

    async def _after_feedback(
        self, job: BdsJob, planned: Planned, fb: Feedback | Feedback3, sent_at: float
    ) -> float | None:
        cfg = self.cfg
        name, code = self._reason(fb)
        if name is None:
            job = await self.store.finish(job.id, "sent", now=self._clock())
            self.counters["tx_sent"] += 1
            self.last_send = sent_at
            self.next_send = sent_at + self.interval_s()
            self.sends_today += 1
            self._log.info("bds_sent", bds_id=job.id, bits=planned.bits)
            await self.progress(job, "sent", planned=planned)
            await self._maybe_status(force=True)
            return None
        self.counters[f"feedback_{name}"] += 1
        text = _REASON_TEXT.get(name, name)
        if fb.wait_s:
            text += f" (terminal: wait {fb.wait_s}s)"
        extra: dict[str, Any] = {"reason_code": code, "reason_name": name if code else None}
        if name in _WAIT_REASONS and job.attempts < cfg.max_tries:
            self.counters["tx_retries"] += 1
            # The wait counts from when the terminal said it (a replay reads on meanwhile).
            now = min(self._clock(), self._feedback_at)
            if name == "interval":
                at = now + max(fb.wait_s, 1)
                self.next_send = at
                state = "waiting_interval"
            else:
                at = now + max(fb.wait_s, cfg.suppression_retry_s)
                state = "waiting_signal"
            job = await self.store.not_sent(
                job.id, at, now, code=name, reason=text, reason_code=code
            )
            self._waiting[job.id] = f"{state}@{at:.3f}"
            await self.progress(
                job,
                state,
                planned=planned,
                may_send_at=at,
                code=name,
                reason=text,
                **extra,
            )
            return max(0.05, at - now)
        if name in _WAIT_REASONS:
            text += f" (gave up after {job.attempts} tries: rdss.max_tries)"
        await self._fail(job, name, text, refund=True, **extra)
        return None

    # ---- helpers --------------------------------------------------------------------

    def _load_dialect(self) -> None:
        if self.cfg.dialect != "auto":
            return
        try:
            data = json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            return
        if isinstance(data, dict) and data.get("dialect") in ("2.1", "bds3"):
            self.dialect = data["dialect"]
            self._remembered = self.dialect

    def _remember(self, dialect: Dialect) -> None:
        if self.cfg.dialect != "auto" or self._remembered == dialect:
            return
        try:
            self._state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"dialect": dialect, "port": self.cfg.port}))
            tmp.replace(self._state_file)
            self._remembered = dialect
        except OSError as exc:
            self._log.warning("rdss_dialect_not_saved", error=str(exc))

    def _event(self, kind: str, message: str, *, severity: str = "info", **data: Any) -> None:
        self._log.info(kind, message=message)
        if self._events is not None:
            self._events(
                make_event(kind, message, now=self._clock(), severity=severity, **data)  # type: ignore[arg-type]
            )
