"""The drain: the outbox to the broker over one MQTT connection at a time.

Records in the outbox's order, a window of QoS 1 publishes in flight and a token bucket on
messages and bytes. A record leaves the outbox only after its PUBACK. New records go out as
they arrive, before the outbox commits them and while others are in flight.

Order within a class: publishes of one connection reach the broker in the order they were sent,
so a subscriber sees each class in the outbox's order even with many in flight. A publish that
fails or gets no PUBACK in time ends the connection (it is never retried alone while later
records go on), and each connection starts its publishes afresh (nothing of an old connection
is retransmitted by the client): every record not yet acknowledged is sent again, in order,
from the outbox's head on the next connection. A subscriber may then see records twice (same
`id`), never a record before one that preceded it. (With `outbox.live_window_s` the outbox
itself sends the newest fix and sky ahead of their backlog.)

A PUBACK carrying an MQTT 5 failure reason code is not a delivery: a final refusal (not
authorized, invalid topic, too large, bad payload format) drops the record with an error event,
so it cannot hold up the queue forever; any other ends the connection and the record is sent
again. MQTT 3.1.1 has no such codes: there a broker that drops a message still acknowledges it.

One `Drain` an uplink (its buckets, fix slots and reports outlive a connection); the link
(`uplink.link`) opens a `Window` for each connection and runs the drain's tasks in it.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

from structlog.typing import FilteringBoundLogger

from terminal_gw import wire
from terminal_gw.config import LinkProfileConfig, MqttConfig
from terminal_gw.errors import TerminalGwError
from terminal_gw.models import SCHEMA_VERSION, EventSink, make_event, new_id
from terminal_gw.uplink import compact, links
from terminal_gw.uplink.mqtt import Failure, LinkError, MqttLink, Refusal

__all__ = [
    "BATCH_TOPIC_SUFFIX",
    "CLASSES",
    "PERMANENT_REFUSALS",
    "Drain",
    "DrainSource",
    "LinkDown",
    "OutboxRecord",
    "Outgoing",
    "TokenBucket",
    "UplinkCounters",
    "Window",
    "batch_payload",
    "plan_messages",
]

# PUBACK reason codes (MQTT 5) after which sending the same record again cannot succeed:
# not authorized (ACL), topic name invalid, packet too large, payload format invalid.
PERMANENT_REFUSALS = frozenset({0x87, 0x90, 0x95, 0x99})
#: The outbox's record classes (`terminal_gw.outbox.CLASS_PRIORITY`).
CLASSES = ("sms", "bds", "command", "event", "status", "fix", "sky")


#: What the uplink reads of an outbox record (`terminal_gw.outbox.Record`).
OutboxRecord = compact.Record


class DrainSource(Protocol):
    """The part of the outbox the uplink drains (`terminal_gw.outbox.Outbox`).

    The outbox keeps the ledger: `lease` hands out records in drain order, each once until
    it is acked or released; a record's `seq` is its lease key (opaque). `ack` ends the
    leases at the call (the awaitable deletes the records), `release` gives back records
    not sent, `release_all` every lease when the link goes down. `wait_for_records` returns
    True as soon as records wait that the last lease did not hand out (the uplink also
    waits on it while records are in flight).
    """

    async def lease(
        self, n: int, classes: Collection[str] | None = None
    ) -> Sequence[OutboxRecord]: ...
    def ack(self, records: Iterable[int]) -> Awaitable[None]: ...
    def release(self, records: Iterable[int]) -> None: ...
    def release_all(self) -> None: ...
    async def wait_for_records(self, timeout: float) -> bool: ...  # noqa: ASYNC109 - the outbox's interface


@dataclass
class UplinkCounters:
    """Counters for the status board and metrics."""

    connects: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    links_lost: int = 0
    published: int = 0  # MQTT messages acknowledged (PUBACK)
    records: int = 0  # outbox records delivered and removed
    batches: int = 0  # of those messages, fix batches
    bytes: int = 0  # payload bytes acknowledged
    commands: int = 0
    commands_ignored: int = 0  # retained (stale) or empty (a retained one cleared): not run
    commands_duplicate: int = 0  # a command handed over again after a kill: stored once, run once
    commands_unstored: int = 0  # run without being stored: the inbox's disk refused them
    thinned: int = 0  # fixes not sent on a link whose profile keeps one per position_interval_s
    budget_reached: int = 0  # times a link profile's daily budget held records back
    commands_over_limit: int = 0  # larger than mqtt.max_command_bytes (3.1.1 cannot refuse them)
    refused: int = 0  # records the broker refused for good (MQTT 5 PUBACK reason code)
    unencodable: int = 0  # fix/sky records a compact batch could not carry: sent as JSON
    status_skipped: int = 0  # compact links: retained statuses superseded or saying nothing new

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain mapping."""
        return asdict(self)


class TokenBucket:
    """`rate` units a second, bursts up to `burst`; a reservation may run into debt."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._t = clock()

    def reserve(self, amount: float) -> float:
        """Take `amount` now; return how many seconds to wait before using it."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
        self._t = now
        self._tokens -= amount
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One MQTT message to publish and the outbox records it delivers."""

    topic: str
    payload: bytes
    retain: bool
    seqs: tuple[int, ...]
    batch: bool = False
    content_type: str | None = None  # MQTT 5 content type (compact batches)


BATCH_TOPIC_SUFFIX = "/batch"


def batch_payload(records: Sequence[OutboxRecord], batch_id: str) -> bytes:
    """A TPV_BATCH payload (`models.FixBatch`) made of the stored fix payloads, in order."""
    head = (
        f'{{"id":"{batch_id}","v":{SCHEMA_VERSION},"class":"TPV_BATCH",'
        f'"count":{len(records)},"fixes":['
    )
    return head.encode() + b",".join(r.payload for r in records) + b"]}"


def plan_messages(
    records: Iterable[OutboxRecord],
    *,
    now: float,
    batch: bool = False,
    batch_max: int = 50,
    batch_min_age_s: float = 60.0,
    hold_tail: bool = False,
) -> list[Outgoing]:
    """The messages for records in drain order: backlog fixes grouped when `batch`, else one each.

    A fix is backlog when it waited at least `batch_min_age_s`; live fixes always go singly.
    Groups keep the records' order and never reach across another record. With `hold_tail`
    (more records wait than were read), a trailing group not yet full is left for the next
    read, unless it is all there is.
    """
    out: list[Outgoing] = []
    run: list[OutboxRecord] = []

    def flush() -> None:
        if len(run) == 1:
            r = run[0]
            out.append(Outgoing(r.topic, r.payload, r.retain, (r.seq,)))
        elif run:
            out.append(
                Outgoing(
                    run[0].topic + BATCH_TOPIC_SUFFIX,
                    batch_payload(run, new_id(int(now * 1000))),
                    retain=False,
                    seqs=tuple(r.seq for r in run),
                    batch=True,
                )
            )
        run.clear()

    for r in records:
        if batch and r.cls == "fix" and not r.retain and now - r.created >= batch_min_age_s:
            if run and (len(run) >= batch_max or run[0].topic != r.topic):
                flush()
            run.append(r)
            continue
        flush()
        out.append(Outgoing(r.topic, r.payload, r.retain, (r.seq,)))
    if hold_tail and out and 0 < len(run) < batch_max:
        run.clear()
    flush()
    return out


class LinkDown(Exception):  # noqa: N818 - a control-flow signal, not an error for callers
    """A connection attempt failed or a session ended; carries the cause for the state."""

    def __init__(self, failure: Failure, reason: str) -> None:
        super().__init__(reason)
        self.failure = failure
        self.reason = reason

    @classmethod
    def of(cls, error: LinkError) -> LinkDown:
        """The same cause, from the MQTT adapter's error."""
        return cls(error.failure, error.reason)


class Window:
    """One connection's QoS 1 messages awaiting their PUBACK, and what wakes the drain.

    PUBACKs arrive through the link's callback (no task and no timer per message); the drain
    waits on the one event, with the oldest message's deadline as its bound: one timer a
    connection rings the event by then, armed again only when a wait needs it sooner (a wake
    earlier than needed is harmless: the drain looks at the window and waits again).
    """

    def __init__(
        self,
        size: int,
        published: Callable[[Window, int, Refusal | None, LinkError | None], None],
    ) -> None:
        #: The link's callback for a message of this window (one bound once, not one a message).
        self.done = functools.partial(published, self)
        self.free = size
        self.sent: dict[int, tuple[Outgoing, float]] = {}  # key -> (message, deadline)
        self.next_key = 0
        self.error: BaseException | None = None  # the link ended, a PUBACK timed out, ...
        self.wake = asyncio.Event()
        self.timer: asyncio.TimerHandle | None = None  # rings `wake` at a wait's bound
        self.records = False  # the outbox says records wait
        self.read = asyncio.Event()  # the drain read the outbox since the watcher last woke it

    def ring_by(self, when: float) -> None:
        """Have `wake` set by `when` (time.monotonic(), the event loop's clock) at the latest."""
        timer = self.timer
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self.timer = asyncio.get_running_loop().call_at(when, self._ring)

    def _ring(self) -> None:
        self.timer = None
        self.wake.set()

    def close(self) -> None:
        """The connection ended: no more rings."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def oldest_deadline(self) -> float | None:
        for _msg, deadline in self.sent.values():
            return deadline
        return None


class Drain:
    """The outbox to the broker: planning, the window, the buckets, PUBACKs and acks.

    One an uplink. For each connection the link calls `born` (with its link profile) and
    `open`, runs `run`, `watch_records` and `ack_loop` in the connection's task group and
    `close` when the connection ends.
    """

    def __init__(
        self,
        cfg: MqttConfig,
        outbox: DrainSource,
        *,
        counters: UplinkCounters,
        ledger: links.LinkLedger,
        events: EventSink,
        log: FilteringBoundLogger,
        clock: Callable[[], float],
        device: str,
        batch_topic: str,
        status_topic: str,
        profile: LinkProfileConfig,
    ) -> None:
        self._cfg = cfg
        self._outbox = outbox
        self.counters = counters
        self.ledger = ledger
        self._events = events
        self._log = log
        self._clock = clock
        self.device = device
        self.batch_topic = batch_topic
        self.status_topic = status_topic
        #: The current connection's link profile (`open`).
        self.profile = profile
        self._msg_bucket = TokenBucket(
            self._cfg.rate_msgs_per_s, max(1.0, self._cfg.rate_msgs_per_s)
        )
        self._byte_bucket = TokenBucket(
            float(self._cfg.rate_bytes_per_s), float(max(1, self._cfg.rate_bytes_per_s))
        )
        self._refusals_reported: set[tuple[str, int]] = set()
        self._acked: list[int] = []  # lease keys PUBACKed (or dropped), waiting for outbox.ack
        self._dropped: set[int] = set()  # keys of the current read dropped unsent
        self._ack_wake = asyncio.Event()
        self._window: Window | None = None  # the current connection's messages in flight
        self._budget_reported: set[tuple[str, str]] = set()
        self._position_slots: dict[int, None] = {}  # position_interval_s slots sent, bounded
        self._slot_of: dict[int, int] = {}  # seq -> slot of the fixes kept by the last read
        self._birth_at = 0.0  # when this connection's birth status was made
        self._status_sent: tuple[str, float] | None = None  # compact links: last status sent
        # The messages of the current read not yet sent, in order, and what sends them
        # (`_pump`): the drain's task, and the link after each read from the broker.
        self._queue: deque[Outgoing] = deque()
        self._pumping: tuple[MqttLink, Window, frozenset[str] | None, set[int]] | None = None
        self._reserved = False  # the head's tokens are taken: it goes at `_not_before`
        self._not_before = 0.0
        self._halted = False  # a budget was reached: the rest of the read goes back
        self._in_pump = False
        #: No message awaits its PUBACK.
        self.idle = asyncio.Event()
        self.idle.set()
        #: Set each time delivered records are handed back to the outbox (they leave its
        #: memory then, before their rows, if any, are deleted).
        self.acked = asyncio.Event()

    # --- connection -------------------------------------------------------------------------

    def born(self, profile: LinkProfileConfig, birth: bytes) -> None:
        """A connection under `profile` announces the device with `birth`, made now."""
        self.profile = profile
        self._birth_at = self._clock()
        if self.profile.encoding == "compact":
            self._status_sent = (compact.status_key(birth), time.monotonic())

    def open(self) -> Window:
        """The announced connection starts draining: its window of messages in flight."""
        window = self._window = Window(self._cfg.inflight, self._published)
        return window

    def end(self, reason: str) -> None:
        """End the current connection's drain (the link is being dropped): `reason` says why."""
        window = self._window
        if window is not None and window.error is None:
            window.error = LinkDown(Failure.LOST, reason)
            window.wake.set()

    async def close(self, timeout: float) -> None:  # noqa: ASYNC109 - the final ack's budget
        """The connection ended: ack what was acknowledged (`timeout` at most), give the rest
        back to the outbox."""
        try:
            await self.flush_acks(timeout=timeout)
        finally:
            # Whatever is not acknowledged now is sent again on the next connection (acks
            # passed to the outbox have ended their leases already).
            self._outbox.release_all()
            self._window = None
            self.idle.set()

    # --- planning and sending ---------------------------------------------------------------

    def _classes_now(self) -> frozenset[str] | None:
        """The classes the link may carry now (profile and budget); None: every class."""
        profile = self.profile
        if (
            profile.classes is None
            and profile.budget_bytes_per_day is None
            and profile.budget_messages_per_day is None
        ):
            return None  # nothing to look up (the drain asks before every message)
        over = self.ledger.over_budget(profile)
        if over:
            key = (profile.name, self.ledger.day)
            if key not in self._budget_reported:
                self._budget_reported.add(key)
                self.counters.budget_reached += 1
                self._log.warning("link_budget_reached", profile=profile.name)
                self._events(
                    make_event(
                        "uplink",
                        f"link profile {profile.name}: today's budget is used up; only"
                        f" {', '.join(profile.over_budget_classes)} go until UTC midnight",
                        now=self._clock(),
                        severity="warning",
                        profile=profile.name,
                        **self.ledger.summary(profile),
                    )
                )
        return links.allowed_classes(profile, over_budget=over, all_classes=CLASSES)

    def _thin(self, records: Sequence[OutboxRecord]) -> list[OutboxRecord]:
        """Keep one fix per `position_interval_s` of the profile; ack the others unsent."""
        interval = self.profile.position_interval_s
        if interval <= 0:
            return list(records)
        kept: list[OutboxRecord] = []
        dropped: list[int] = []
        self._slot_of.clear()  # what a held-back record claimed is claimed again next read
        claimed: set[int] = set()
        for rec in records:
            if rec.cls != "fix":
                kept.append(rec)
                continue
            slot = int(rec.created // interval)
            if slot in self._position_slots or slot in claimed:
                dropped.append(rec.seq)
                continue
            claimed.add(slot)
            self._slot_of[rec.seq] = slot
            kept.append(rec)
        if dropped:
            self.counters.thinned += len(dropped)
            self._drop_unsent(dropped)
        return kept

    async def run(self, client: MqttLink, window: Window) -> None:
        cfg = self._cfg
        profile = self.profile
        batch = cfg.batch_backlog or profile.batch_max_records is not None
        batch_max = profile.batch_max_records or cfg.batch_max
        if profile.encoding == "compact":
            batch, batch_max = True, profile.batch_max_records or compact.DEFAULT_MAX_RECORDS
        batch_min_age_s = (
            cfg.batch_min_age_s if profile.batch_max_age_s is None else profile.batch_max_age_s
        )
        # Read ahead of the window: one outbox read (a thread hop) feeds several round trips.
        limit = 4 * (max(cfg.inflight, batch_max) if batch else cfg.inflight)
        woke = False  # the outbox said new records wait
        while True:
            self._check_window(window)
            window.records = False
            classes = self._classes_now()
            try:
                if classes is None:
                    records = await self._outbox.lease(limit)
                else:
                    records = await self._outbox.lease(limit, classes=classes)
            except TerminalGwError as exc:
                self._log.warning("outbox_read_failed", error=str(exc))
                await asyncio.sleep(1.0)
                continue
            finally:
                window.read.set()
            if not records:
                if woke:
                    # Records said to wait but none came: do not spin on a stale signal.
                    woke = False
                    await asyncio.sleep(0.05)
                else:
                    woke = await self._wait(window, 1.0, records=True)
                continue
            woke = False
            full = len(records) >= limit
            leased = [r.seq for r in records]
            sent: set[int] = set()
            self._dropped = set()
            try:
                records = self._thin(records)
                if profile.encoding == "compact":
                    messages, due = self._plan_compact(records, full)
                    if not messages:
                        # A batch waits for more records, until its oldest is old enough.
                        bound = 1.0 if due is None else max(0.01, due - self._clock())
                        woke = await self._wait(window, bound, records=True)
                        continue
                else:
                    messages = plan_messages(
                        records,
                        now=self._clock(),
                        batch=batch,
                        batch_max=batch_max,
                        batch_min_age_s=batch_min_age_s,
                        hold_tail=full,
                    )
                await self._send_all(client, window, messages, classes, sent)
            finally:
                # What this read did not send (a held-back tail, a batch not yet due, what
                # a reached budget stopped) goes back to the outbox, in its place.
                self._outbox.release(k for k in leased if k not in sent and k not in self._dropped)

    async def _send_all(
        self,
        client: MqttLink,
        window: Window,
        messages: Iterable[Outgoing],
        classes: frozenset[str] | None,
        sent: set[int],
    ) -> None:
        """Send `messages` in order as the window and the buckets allow (their seqs into
        `sent`); stop early when a budget is reached. The link pumps too, right after the
        read that brought PUBACKs (`MqttLink.after_read`): a freed slot takes the next
        message in the same pass of the event loop, no wake-up of this task between."""
        self._queue.extend(messages)
        self._pumping = (client, window, classes, sent)
        self._reserved = self._halted = False
        client.after_read = self._pump
        try:
            while True:
                self._check_window(window)
                self._pump()
                client.flush()  # this pass's publishes now, not after the other callbacks
                if not self._queue or self._halted:
                    break
                self._check_window(window)  # the link's end, a PUBACK overdue
                if window.free > 0:
                    # The buckets hold the next message back until `_not_before`.
                    await asyncio.sleep(max(0.0, self._not_before - time.monotonic()))
                    continue
                await self._wait(window, self._cfg.publish_timeout_s)
        finally:
            client.after_read = None
            self._pumping = None
            self._queue.clear()

    def _pump(self) -> None:
        """Send the queued messages that may go now: a slot free in the window, the buckets'
        tokens, no PUBACK overdue and the classes unchanged (else `_halted`). The task is woken
        for anything but a full window (a PUBACK pumps again)."""
        ctx = self._pumping
        if ctx is None or self._in_pump:
            return
        client, window, classes, sent = ctx
        queue = self._queue
        self._in_pump = True
        full = False
        try:
            while queue and window.error is None:
                if window.free <= 0:
                    full = True
                    break
                msg = queue[0]
                now = time.monotonic()
                if self._reserved:
                    if now < self._not_before:
                        break
                else:
                    delay = max(
                        self._msg_bucket.reserve(1), self._byte_bucket.reserve(len(msg.payload))
                    )
                    if delay > 0:
                        self._reserved = True
                        self._not_before = now + delay
                        break
                deadline = window.oldest_deadline()
                if deadline is not None and now >= deadline:
                    break  # the task raises the timeout
                if self._classes_now() != classes:
                    self._halted = True  # a budget was reached: read again with what may go
                    break
                queue.popleft()
                self._reserved = False
                self._send(client, window, msg)
                sent.update(msg.seqs)
        except LinkDown as down:
            if window.error is None:
                window.error = down
        finally:
            self._in_pump = False
            if not full:
                window.wake.set()

    def _plan_compact(
        self, records: Sequence[OutboxRecord], full: bool
    ) -> tuple[list[Outgoing], float | None]:
        profile = self.profile
        records = self._statuses_needed(records)
        plan = compact.plan_compact(
            records,
            now=self._clock(),
            device=self.device,
            topic=self.batch_topic,
            batch_max=profile.batch_max_records or compact.DEFAULT_MAX_RECORDS,
            max_age_s=(
                compact.DEFAULT_MAX_AGE_S
                if profile.batch_max_age_s is None
                else profile.batch_max_age_s
            ),
            hold_tail=full,
        )
        if plan.unencodable:
            self.counters.unencodable += plan.unencodable
            self._log.warning("compact_batch_unencodable", records=plan.unencodable)
        messages = [
            Outgoing(
                topic,
                payload,
                retain,
                seqs,
                batch=is_batch,
                content_type=wire.CONTENT_TYPE if is_batch else None,
            )
            for topic, payload, retain, seqs, is_batch in plan.messages
        ]
        return messages, plan.due

    def _statuses_needed(self, records: Sequence[OutboxRecord]) -> list[OutboxRecord]:
        """On a compact link, the retained statuses worth sending, made small: one stored
        before this connection's birth or followed by a newer one on its topic is superseded,
        and one that says nothing new (`compact.status_key`) within STATUS_REFRESH_S of the
        last is not needed; those are removed unsent."""
        newest: dict[str, int] = {}
        for rec in records:
            if rec.cls == "status" and rec.retain:
                newest[rec.topic] = rec.seq
        if not newest:
            return list(records)
        kept: list[OutboxRecord] = []
        dropped: list[int] = []
        for rec in records:
            if not (rec.cls == "status" and rec.retain):
                kept.append(rec)
                continue
            if newest[rec.topic] != rec.seq or (
                rec.topic == self.status_topic and rec.created <= self._birth_at
            ):
                dropped.append(rec.seq)
                continue
            small = compact.compact_status(rec.payload, self.profile.name)
            if small is None:
                kept.append(rec)
                continue
            if rec.topic == self.status_topic:
                key = compact.status_key(small)
                last = self._status_sent
                now = time.monotonic()
                if last is not None and last[0] == key and now - last[1] < compact.STATUS_REFRESH_S:
                    dropped.append(rec.seq)
                    continue
                self._status_sent = (key, now)
            kept.append(compact.Stored(rec.seq, rec.cls, rec.topic, small, rec.created, True))
        if dropped:
            self.counters.status_skipped += len(dropped)
            self._drop_unsent(dropped)
        return kept

    def _drop_unsent(self, keys: Sequence[int]) -> None:
        """Records of this read not worth sending: acked unsent."""
        self._dropped.update(keys)
        self._acked.extend(keys)
        self._ack_wake.set()

    def _send(self, client: MqttLink, window: Window, msg: Outgoing) -> None:
        if self._slot_of:
            for seq in msg.seqs:
                slot = self._slot_of.pop(seq, None)
                if slot is not None:
                    self._position_slots[slot] = None
            while len(self._position_slots) > 4096:
                del self._position_slots[next(iter(self._position_slots))]
        key = window.next_key
        window.next_key += 1
        window.sent[key] = (msg, time.monotonic() + self._cfg.publish_timeout_s)
        window.free -= 1
        self.ledger.add(self.profile.name, messages=1)
        self.idle.clear()
        try:
            client.publish_nowait(
                msg.topic,
                msg.payload,
                retain=msg.retain,
                content_type=msg.content_type,
                alias=True,
                done=window.done,
                key=key,
            )
        except LinkError as exc:
            window.sent.pop(key, None)
            window.free += 1
            raise LinkDown.of(exc) from exc

    def _published(
        self,
        window: Window,
        key: int,
        refusal: Refusal | None,
        error: LinkError | None,
    ) -> None:
        """A PUBACK (or the end of the link) for one message: from the link's callback."""
        sent = window.sent.pop(key, None)
        if sent is None:
            return
        msg = sent[0]
        window.free += 1
        if error is not None or not self._queue or self._pumping is None:
            window.wake.set()  # else the link pumps the next message after this read
        if not window.sent:
            self.idle.set()
        if error is not None:
            if window.error is None:
                window.error = LinkDown.of(error)
            return
        if refusal is not None:
            try:
                self._refused(msg, refusal)
            except LinkDown as down:
                if window.error is None:
                    window.error = down
                return
        else:
            self.counters.published += 1
            self.counters.bytes += len(msg.payload)
            if msg.batch:
                self.counters.batches += 1
        self._acked.extend(msg.seqs)
        self._ack_wake.set()

    def _check_window(self, window: Window) -> None:
        """Raise what ended this connection's drain: a link error, or a PUBACK overdue."""
        if window.error is not None:
            raise window.error
        deadline = window.oldest_deadline()
        if deadline is not None and time.monotonic() >= deadline:
            timeout = self._cfg.publish_timeout_s
            raise LinkDown(Failure.TIMEOUT, f"timeout: no PUBACK within {timeout:g} s")

    async def _wait(self, window: Window, bound: float, *, records: bool = False) -> bool:
        """Until a PUBACK, the end of the link or (with `records`) new records in the outbox,
        `bound` seconds at most and never past the oldest PUBACK's deadline. True when the
        outbox said records wait."""
        window.wake.clear()
        if records and window.records:
            return True
        now = time.monotonic()
        until = now + bound
        deadline = window.oldest_deadline()
        if deadline is not None and deadline < until:
            until = deadline
        if until > now:
            window.ring_by(until)
            await window.wake.wait()
        self._check_window(window)
        return records and window.records

    async def watch_records(self, window: Window) -> None:
        """Wake the drain when the outbox has records it has not read (one task a connection)."""
        while True:
            if await self._outbox.wait_for_records(60.0):
                window.records = True
                window.wake.set()
                # Signalled until the drain reads: wait for that read before asking again.
                window.read.clear()
                await window.read.wait()

    def _refused(self, msg: Outgoing, code: Refusal) -> None:
        """The broker refused a record: drop it if that is final, else end the session."""
        reason = f"the broker refused a publish to {msg.topic}: {code} ({code.code:#04x})"
        if code.code not in PERMANENT_REFUSALS:
            raise LinkDown(Failure.REFUSED, f"refused: {reason}")
        # Sending it again would be refused again and hold up what follows: drop and report.
        self.counters.refused += len(msg.seqs)
        self._log.error("mqtt_publish_refused", topic=msg.topic, reason=str(code))
        key = (msg.topic, code.code)
        # Reporting a refused event as an event could loop; the log has it.
        if key not in self._refusals_reported and not msg.topic.endswith("/event"):
            self._refusals_reported.add(key)
            self._events(
                make_event(
                    "uplink",
                    f"{reason}; records on this topic are dropped",
                    now=self._clock(),
                    severity="error",
                    failure="refused",
                    topic=msg.topic,
                    reason=str(code),
                    code=code.code,
                )
            )

    # --- acknowledgements -------------------------------------------------------------------

    async def ack_loop(self) -> None:
        while True:
            await self._ack_wake.wait()
            self._ack_wake.clear()
            if not await self.flush_acks():
                await asyncio.sleep(1.0)

    async def flush_acks(self, *, timeout: float | None = None) -> bool:  # noqa: ASYNC109 - a budget for the last ack only
        """Remove PUBACKed records from the outbox, each call within `timeout` when given; True
        when none are left waiting."""
        while self._acked:
            batch, self._acked = self._acked, []
            # Shielded: a delete that commits while its caller is cancelled must still be
            # counted by the outbox; on cancel the batch is kept and acked again (harmless).
            try:
                deleting = self._outbox.ack(batch)
                self.acked.set()
                if timeout is not None:
                    async with asyncio.timeout(timeout):
                        await asyncio.shield(deleting)
                else:
                    await asyncio.shield(deleting)
            except (TerminalGwError, TimeoutError) as exc:
                self._acked[:0] = batch
                self._log.warning("outbox_ack_failed", error=str(exc), records=len(batch))
                return False
            except BaseException:
                # Cancelled half way: the records may or may not be removed; ack them again.
                self._acked[:0] = batch
                raise
            self.counters.records += len(batch)
        return True
