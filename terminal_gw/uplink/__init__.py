"""MQTT uplink: birth and last will, reconnect with backoff, drain the outbox, downlink commands.

One MQTT connection at a time (`uplink.mqtt`, the only module that uses the MQTT library). Each
connection announces the device online with a retained status (the offline one is the last
will), subscribes to `{prefix}/{device}/cmd/#` and drains the outbox: records in the outbox's
order, a window of QoS 1 publishes in flight and a token bucket on messages and bytes. A record
leaves the outbox only after its PUBACK. New records go out as they arrive, before the outbox
commits them and while others are in flight.

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

Commands: the session is persistent (MQTT 5 session expiry `mqtt.session_expiry_s`, or
clean_session=false on 3.1.1; a stable client id; `cmd/#` at QoS 1), so the broker queues
commands while the daemon is away and hands them over when it is back. Each received command is
committed to the command inbox (`uplink.inbox`) before its PUBACK is sent, then run from there
in order: a kill at any moment loses none, and a command handed over again is not run again
(see `uplink.inbox` for the one window, after a run and before its mark, that re-runs). Retained
commands and empty payloads (clearing a retained command) are acknowledged and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import structlog
from structlog.typing import FilteringBoundLogger

from terminal_gw import wire
from terminal_gw.backoff import Backoff, Retry
from terminal_gw.config import Config, MqttConfig
from terminal_gw.errors import ConfigError, StoreError, TerminalGwError, UplinkError
from terminal_gw.models import SCHEMA_VERSION, EventSink, Status, iso_utc, make_event, new_id
from terminal_gw.topics import Topics
from terminal_gw.uplink import compact, links
from terminal_gw.uplink.inbox import Inbox, InboxEntry, Received
from terminal_gw.uplink.mqtt import (
    Failure,
    Incoming,
    LinkError,
    LinkOptions,
    MqttLink,
    Refusal,
    Will,
)

__all__ = [
    "LONG_BACKOFF",
    "PERMANENT_REFUSALS",
    "CommandHandler",
    "CommandMeta",
    "DrainSource",
    "Failure",
    "LinkState",
    "OutboxRecord",
    "Outgoing",
    "TokenBucket",
    "Uplink",
    "UplinkCounters",
    "batch_payload",
    "inbox_path",
    "plan_messages",
    "tls_context",
]


class LinkState(StrEnum):
    """Where the uplink is; `Uplink.state_reason` says why."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKING_OFF = "backing_off"
    STOPPED = "stopped"


#: Failures a retry soon will not fix: wait auth_backoff_s and raise an event.
LONG_BACKOFF = frozenset({Failure.AUTH, Failure.TLS, Failure.CONFIG})

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


@dataclass(frozen=True, slots=True)
class CommandMeta:
    """How a downlink command arrived; MQTT 5 response topic and correlation data when given."""

    topic: str
    qos: int
    response_topic: str | None = None
    correlation_data: bytes | None = None
    #: The payload's size as the broker sent it (MQTT 3.1.1 may deliver a larger command
    #: than the limit: only the limit plus one byte of it is kept).
    size: int | None = None
    #: Names the stored command across restarts (`Inbox` row): answers take ids from it.
    receipt: str | None = None


CommandHandler = Callable[[str, bytes, CommandMeta], Awaitable[None]]


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


class _LinkDown(Exception):  # noqa: N818 - a control-flow signal, not an error for callers
    """A connection attempt failed or a session ended; carries the cause for the state."""

    def __init__(self, failure: Failure, reason: str) -> None:
        super().__init__(reason)
        self.failure = failure
        self.reason = reason

    @classmethod
    def of(cls, error: LinkError) -> _LinkDown:
        """The same cause, from the MQTT adapter's error."""
        return cls(error.failure, error.reason)


class _Closing(Exception):  # noqa: N818 - a control-flow signal
    """Ends a session's task group on stop()."""


def ledger_path(config: Config) -> Path:
    """Where each link profile's use today is kept: beside the outbox."""
    return config.outbox.path.parent / "links.json"


def inbox_path(config: Config) -> Path:
    """Where received commands are stored: `mqtt.inbox_path`, else beside the outbox."""
    return config.mqtt.inbox_path or config.outbox.path.parent / "inbox.db"


def tls_context(cfg: MqttConfig) -> ssl.SSLContext:
    """The TLS context for the broker: verification on unless `tls_insecure`."""
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(cfg.ca_file) if cfg.ca_file else None
    )
    if cfg.cert_file is not None and cfg.key_file is not None:
        context.load_cert_chain(str(cfg.cert_file), str(cfg.key_file))
    if cfg.tls_insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _Window:
    """One connection's QoS 1 messages awaiting their PUBACK, and what wakes the drain.

    PUBACKs arrive through the link's callback (no task and no timer per message); the drain
    waits on the one event, with the oldest message's deadline as its bound: one timer a
    connection rings the event by then, armed again only when a wait needs it sooner (a wake
    earlier than needed is harmless: the drain looks at the window and waits again).
    """

    def __init__(
        self,
        size: int,
        published: Callable[[_Window, int, Refusal | None, LinkError | None], None],
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


class Uplink:
    """The MQTT session: connect, announce, drain the outbox, take commands, reconnect."""

    def __init__(
        self,
        config: Config,
        outbox: DrainSource,
        *,
        events: EventSink,
        health: Callable[[], dict[str, Any]] = dict,
        on_command: CommandHandler | None = None,
        log: FilteringBoundLogger | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cfg = config.mqtt
        self._profiles = list(config.links)
        self._outbox = outbox
        self._events = events
        self._health = health
        self._on_command = on_command
        self._log: FilteringBoundLogger = log or structlog.get_logger("terminal_gw.uplink")
        self._clock = clock
        topics = Topics.of_config(config)
        self.device = config.device.id
        self.batch_topic = topics.batch
        self.status_topic = topics.status
        self.command_filter = topics.command_filter
        self._command_prefix = topics.command_prefix
        self.client_id = self._cfg.client_id or f"terminal-gw-{config.device.id}"

        self.state = LinkState.STOPPED
        self.state_reason: str | None = None
        self.failure: Failure | None = None
        self.retry_at: float | None = None  # unix time of the next attempt while backing off
        self.counters = UplinkCounters()

        self._msg_bucket = TokenBucket(
            self._cfg.rate_msgs_per_s, max(1.0, self._cfg.rate_msgs_per_s)
        )
        self._byte_bucket = TokenBucket(
            float(self._cfg.rate_bytes_per_s), float(max(1, self._cfg.rate_bytes_per_s))
        )
        self._stop = asyncio.Event()
        self._done = asyncio.Event()
        self._running = False
        self._stop_budget_s = 3.0
        self._client: MqttLink | None = None  # while connected
        self._link: MqttLink | None = None  # the current connection, also while connecting
        self._retry = Retry(Backoff(self._cfg.backoff_min_s, self._cfg.backoff_max_s))
        # A refused password or certificate waits the longest, spread over its last tenth.
        self._auth_backoff = Backoff(self._cfg.auth_backoff_s, self._cfg.auth_backoff_s, jitter=0.1)
        self._reported: str | None = None  # reason of the last failure event, to not repeat it
        self._refusals_reported: set[tuple[str, int]] = set()
        self._inbox = Inbox(inbox_path(config), clock=clock)
        self._rx: list[Incoming] = []  # received, not yet stored in the inbox
        self._rx_wake = asyncio.Event()
        self._cmd_wake = asyncio.Event()  # new rows in the inbox
        self._acked: list[int] = []  # lease keys PUBACKed (or dropped), waiting for outbox.ack
        self._dropped: set[int] = set()  # keys of the current read dropped unsent
        self._ack_wake = asyncio.Event()
        self._window: _Window | None = None  # the current connection's messages in flight
        # Link profiles: the one in use, one forced by command, and today's use of each.
        self.profile = self._profiles[-1]
        self.interface: str | None = None
        self._forced: str | None = None
        self._broker_addresses: list[str] = []
        #: The interface carrying the broker's traffic (the kernel's routes; replaceable).
        self.interface_probe: Callable[[], str | None] = self._kernel_interface
        #: How often the route is looked at again while connected (seconds).
        self.route_check_s = 30.0
        self.ledger = links.LinkLedger(ledger_path(config), clock=clock)
        self._wire_seen = 0  # bytes of the current connection already in the ledger
        self._budget_reported: set[tuple[str, str]] = set()
        self._position_slots: dict[int, None] = {}  # position_interval_s slots sent, bounded
        self._slot_of: dict[int, int] = {}  # seq -> slot of the fixes kept by the last read
        self._birth_at = 0.0  # when this connection's birth status was made
        self._status_sent: tuple[str, float] | None = None  # compact links: last status sent
        self._idle = asyncio.Event()  # no message awaits its PUBACK
        self._idle.set()

    # --- life -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, announce, drain and reconnect until stop() or cancellation."""
        if self._running:
            raise UplinkError("the uplink is already running")
        self._running = True
        # _stop stays set once stop() was called, even before run() started: a supervisor
        # restarting the stage during shutdown must not bring the link back.
        self._done.clear()
        if self._cfg.tls and self._cfg.tls_insecure:
            self._log.warning(
                "mqtt_tls_insecure",
                message="tls_insecure is set: the broker's certificate is NOT verified",
            )
        try:
            try:
                await self._inbox.open()
            except StoreError as exc:
                # Without the inbox a command could be acknowledged and lost: fail the stage
                # (the supervisor restarts it) rather than take commands.
                raise UplinkError(f"cannot open the command inbox: {exc}") from exc
            with contextlib.suppress(StoreError):
                # Rows of commands run are kept only to recognise a copy handed over again:
                # none comes after the broker dropped the session.
                await self._inbox.prune(keep_s=max(86400.0, float(self._cfg.session_expiry_s)))
            async with asyncio.TaskGroup() as tg:
                commands = tg.create_task(self._run_commands(), name="uplink-commands")
                try:
                    await self._sessions()
                finally:
                    commands.cancel()
        finally:
            await self._flush_acks(final=True)
            with contextlib.suppress(StoreError):
                await self._inbox.close()
            self._set_state(LinkState.STOPPED, "stopped")
            self._running = False
            self._done.set()

    async def _sessions(self) -> None:
        while not self._stop.is_set():
            self._set_state(
                LinkState.CONNECTING, f"connecting to {self._cfg.host}:{self._cfg.port}"
            )
            session_start = time.monotonic()
            try:
                await self._connect_and_serve()
            except _LinkDown as down:
                if self._stop.is_set():
                    break
                await self._back_off(down, time.monotonic() - session_start)
            else:
                break

    async def stop(self, timeout: float = 3.0) -> None:  # noqa: ASYNC109 - a shutdown budget, split between steps
        """Publish offline (retained) if connected and disconnect cleanly, within `timeout`."""
        self._stop_budget_s = timeout
        self._stop.set()
        if not self._running:
            return
        link = self._link
        if link is not None and not link.connected:
            link.abort("stopping")  # no use waiting for a CONNACK now
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._done.wait()

    async def publish_now(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        qos: int = 1,
        correlation_data: bytes | None = None,
    ) -> None:
        """Publish at once, bypassing the outbox (command responses); UplinkError when offline.

        `correlation_data` is sent as the MQTT 5 property (a request's own, echoed back);
        MQTT 3.1.1 has no properties, so there it is left out.
        """
        client = self._client
        if client is None or self.state is not LinkState.CONNECTED:
            raise UplinkError(f"cannot publish to {topic}: not connected", reason="offline")
        try:
            refusal = await client.publish(
                topic,
                payload,
                qos=qos,
                retain=retain,
                correlation_data=correlation_data,
                timeout=self._cfg.publish_timeout_s,
            )
        except LinkError as exc:
            raise UplinkError(f"publish to {topic} failed: {exc}", reason=exc.reason) from exc
        if refusal is not None:
            raise UplinkError(
                f"the broker refused a publish to {topic}: {refusal}", reason=str(refusal)
            )

    # --- state and backoff ------------------------------------------------------------------

    def _set_state(
        self, state: LinkState, reason: str | None, failure: Failure | None = None
    ) -> None:
        self.state = state
        self.state_reason = reason
        self.failure = failure
        if state is not LinkState.BACKING_OFF:
            self.retry_at = None

    def backoff_delay(self, failure: Failure) -> float:
        """The wait before the next attempt: capped exponential with jitter; longest for auth."""
        if failure in LONG_BACKOFF:
            return self._auth_backoff.delay(0)
        return self._retry.next_delay()

    async def _back_off(self, down: _LinkDown, session_s: float) -> None:
        # A link that stayed up longer than the longest wait was healthy: start over, but a
        # broker that accepts and drops at once (a duplicate client id) keeps growing the wait.
        if self.state is LinkState.CONNECTED and session_s >= min(self._cfg.backoff_max_s, 60.0):
            self._retry.reset()
        delay = self.backoff_delay(down.failure)
        self._set_state(LinkState.BACKING_OFF, down.reason, down.failure)
        self.retry_at = self._clock() + delay
        self._log.warning(
            "mqtt_link_down",
            failure=str(down.failure),
            reason=down.reason,
            retry_in_s=round(delay, 3),
        )
        if down.failure in LONG_BACKOFF and down.reason != self._reported:
            self._reported = down.reason
            self._events(
                make_event(
                    "uplink",
                    f"MQTT connection refused ({down.failure}): {down.reason}; "
                    f"next attempt in {delay:.0f} s",
                    now=self._clock(),
                    severity="error",
                    failure=str(down.failure),
                    reason=down.reason,
                    broker=f"{self._cfg.host}:{self._cfg.port}",
                    retry_in_s=round(delay, 1),
                )
            )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stop.wait()

    # --- connection -------------------------------------------------------------------------

    def _status_payload(self, state: str) -> bytes:
        now = self._clock()
        health = self._health() if state == "online" else {}
        if health and self.profile.encoding == "compact":
            health = compact.compact_health(health, self.profile.name)
        status = Status(
            id=new_id(int(now * 1000)),
            time=iso_utc(now),
            state="online" if state == "online" else "offline",
            health=health,
        )
        return status.to_json().encode()

    def force_profile(self, name: str | None) -> None:
        """Use the named profile from the next connection on (None: choose by interface);
        the current connection is dropped so that the change takes effect now."""
        if name is not None and name not in {p.name for p in self._profiles}:
            raise UplinkError(f"no link profile named {name!r}")
        self._forced = name
        window = self._window
        if window is not None and window.error is None:
            window.error = _LinkDown(Failure.LOST, "lost: the link profile was changed")
            window.wake.set()
        if self._client is not None:
            self._client.abort("link profile changed")

    def profile_names(self) -> list[str]:
        """The configured link profiles, in their order."""
        return [p.name for p in self._profiles]

    def _kernel_interface(self) -> str | None:
        """The interface the kernel routes the broker's address through now."""
        routes = links.read_routes()
        for address in self._broker_addresses:
            interface = links.interface_for(address, routes)
            if interface is not None:
                return interface
        return None

    def _choose_profile(self) -> None:
        if self._forced is not None:
            self.profile = next(p for p in self._profiles if p.name == self._forced)
            self.interface = None
            return
        self._broker_addresses = links.resolve(self._cfg.host)
        self.interface = self.interface_probe()
        self.profile = links.choose_profile(self._profiles, self.interface)

    async def _recheck_route(self) -> None:
        """The route to the broker moved to another interface whose profile differs (a
        Tiantong modem took over from the LAN): make the connection again under it."""
        if self._forced is not None:
            return
        interface = await asyncio.to_thread(self.interface_probe)
        profile = links.choose_profile(self._profiles, interface)
        if profile.name == self.profile.name:
            self.interface = interface
            return
        reason = (
            f"the route to the broker moved to {interface or 'no interface'}:"
            f" link profile {profile.name} (was {self.profile.name})"
        )
        self._log.info("link_profile_changed", interface=interface, profile=profile.name)
        self._events(make_event("uplink", reason, now=self._clock(), profile=profile.name))
        window = self._window
        if window is not None and window.error is None:
            window.error = _LinkDown(Failure.LOST, f"lost: {reason}")
            window.wake.set()
        if self._client is not None:
            self._client.abort("link profile changed")

    def link_summary(self) -> dict[str, Any]:
        """The active link profile and its use today (for the status)."""
        if self._client is not None:
            self._count_wire(self._client)
        out: dict[str, Any] = {
            "profile": self.profile.name,
            "interface": self.interface,
            "forced": self._forced is not None,
            "encoding": self.profile.encoding,
        }
        out.update(self.ledger.summary(self.profile))
        out["over_budget"] = self.ledger.over_budget(self.profile)
        return out

    def _count_wire(self, client: MqttLink) -> None:
        """Add what the connection carried since the last count to today's ledger."""
        count = client.wire_count()
        if count is None:
            return
        total = count.total
        self.ledger.add(self.profile.name, nbytes=total - self._wire_seen)
        self._wire_seen = total

    async def _wire_loop(self, client: MqttLink) -> None:
        """Count the link's bytes every second; save the ledger every 10 s; look at the
        route to the broker every `route_check_s`."""
        n = 0
        checked = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            self._count_wire(client)
            n += 1
            if n % 10 == 0:
                await asyncio.to_thread(self.ledger.save)
            if time.monotonic() - checked >= self.route_check_s:
                checked = time.monotonic()
                await self._recheck_route()

    async def _make_link(self) -> MqttLink:
        cfg = self._cfg
        await asyncio.to_thread(self._choose_profile)
        self._wire_seen = 0
        context: ssl.SSLContext | None = None
        if cfg.tls:
            try:
                context = await asyncio.to_thread(tls_context, cfg)
            except (OSError, ssl.SSLError) as exc:
                raise _LinkDown(
                    Failure.TLS, f"tls: cannot load the CA, certificate or key: {exc}"
                ) from exc
        password: str | None = None
        if cfg.username:
            try:
                password = await asyncio.to_thread(cfg.effective_password) or None
            except ConfigError as exc:
                raise _LinkDown(Failure.AUTH, f"auth: {exc}") from exc
        options = LinkOptions(
            host=cfg.host,
            port=cfg.port,
            client_id=self.client_id,
            protocol=cfg.protocol,
            keepalive_s=self.profile.keepalive_s or cfg.keepalive_s,
            # TCP connect, TLS handshake and CONNACK: a satellite link needs more than 5 s.
            timeout_s=cfg.publish_timeout_s,
            inflight=cfg.inflight,
            session_expiry_s=cfg.session_expiry_s,
            max_packet_bytes=cfg.max_command_bytes,
            will=Will(self.status_topic, self._status_payload("offline"), qos=1, retain=True),
            username=cfg.username or None,
            password=password,
            tls_context=context,
        )
        return MqttLink(options, on_message=self._received, on_lost=self._lost, log=self._log)

    def _received(self, message: Incoming) -> None:
        self._rx.append(message)
        self._rx_wake.set()

    def _lost(self, error: LinkError) -> None:
        self._rx_wake.set()

    async def _connect_and_serve(self) -> None:
        try:
            client = await self._make_link()
        except _LinkDown:
            self.counters.connect_failures += 1
            raise
        self._link = client
        self._rx.clear()
        self._rx_wake.clear()
        try:
            if self._stop.is_set():
                raise _LinkDown(Failure.LOST, "stopping")
            session_present = await client.connect()
        except LinkError as exc:
            self.counters.connect_failures += 1
            self._link = None
            raise _LinkDown.of(exc) from exc
        self.counters.connects += 1
        if self.counters.connects > 1:
            self.counters.reconnects += 1
        self._reported = None
        self._client = client
        clean = False
        try:
            await self._announce(client)
            # Connected once the subscription stands: a command sent from now on arrives.
            self._set_state(LinkState.CONNECTED, f"connected to {self._cfg.host}:{self._cfg.port}")
            self._log.info(
                "mqtt_connected",
                broker=f"{self._cfg.host}:{self._cfg.port}",
                tls=self._cfg.tls,
                protocol=self._cfg.protocol,
                client_id=self.client_id,
                session_present=session_present,
            )
            await self._serve(client)
            clean = True
        except _LinkDown:
            self.counters.links_lost += 1
            raise
        finally:
            self._client = None
            await self._end_session(client, clean=clean)
            self._link = None

    async def _end_session(self, client: MqttLink, *, clean: bool) -> None:
        self._count_wire(client)
        try:
            await self._flush_acks(final=True)
        finally:
            # Whatever is not acknowledged now is sent again on the next connection (acks
            # passed to the outbox have ended their leases already).
            self._outbox.release_all()
            self._window = None
            self._idle.set()
            if clean:
                await self._say_offline(client)
            self._count_wire(client)
            if not clean:
                client.abort()
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.ledger.save)

    async def _say_offline(self, client: MqttLink) -> None:
        budget = max(0.2, self._stop_budget_s * 0.4)
        start = time.monotonic()
        try:
            await client.publish(
                self.status_topic,
                self._status_payload("offline"),
                qos=1,
                retain=True,
                timeout=budget,
            )
            await client.disconnect(max(0.05, budget - (time.monotonic() - start)))
        except LinkError:
            # Out of time: drop the socket and let the will say offline.
            client.abort()
        except asyncio.CancelledError:
            client.abort()
            raise

    # --- session ----------------------------------------------------------------------------

    async def _announce(self, client: MqttLink) -> None:
        """Birth (retained online) and the command subscription."""
        timeout = self._cfg.publish_timeout_s
        birth = self._status_payload("online")
        self._birth_at = self._clock()
        if self.profile.encoding == "compact":
            self._status_sent = (compact.status_key(birth), time.monotonic())
        try:
            await client.publish(
                self.status_topic,
                birth,
                qos=1,
                retain=True,
                timeout=timeout,
            )
            # Also on a resumed session: the subscription may predate a changed prefix or QoS.
            await client.subscribe(self.command_filter, qos=1, timeout=timeout)
        except LinkError as exc:
            raise _LinkDown(
                exc.failure, f"{exc.failure}: announcing the device failed: {exc}"
            ) from exc

    async def _serve(self, client: MqttLink) -> None:
        """Receive, drain and acknowledge until stop or a failure."""
        window = self._window = _Window(self._cfg.inflight, self._published)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._receive(client), name="uplink-receive")
                tg.create_task(self._ack_loop(), name="uplink-ack")
                tg.create_task(self._watch_records(window), name="uplink-watch")
                tg.create_task(self._wire_loop(client), name="uplink-wire")
                drain = tg.create_task(self._drain(client, window), name="uplink-drain")
                await self._stop.wait()
                # Take no more records; let those in flight get their PUBACK, for a while.
                drain.cancel()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.2, self._stop_budget_s * 0.4)):
                        await self._idle.wait()
                raise _Closing
        except BaseExceptionGroup as group:
            if group.subgroup(_Closing) is not None and group.subgroup(_LinkDown) is None:
                return
            down = group.subgroup(_LinkDown)
            if down is not None:
                first = down.exceptions[0]
                while isinstance(first, BaseExceptionGroup):
                    first = first.exceptions[0]
                raise first from None
            raise
        finally:
            window.close()

    async def _receive(self, client: MqttLink) -> None:
        """Store what arrives in the inbox, then acknowledge it, until the link ends."""
        while True:
            await self._rx_wake.wait()
            self._rx_wake.clear()
            if client.closed.done():
                # Not acknowledged: the broker hands those over again on the next connection.
                self._rx.clear()
                raise _LinkDown.of(client.closed.result())
            batch, self._rx = self._rx, []
            if batch:
                await self._take(client, batch)

    async def _take(self, client: MqttLink, batch: list[Incoming]) -> None:
        commands: list[Incoming] = []
        for m in batch:
            if not m.topic.startswith(self._command_prefix):
                continue
            if m.retain:
                # A retained command would run again at every connection: never act on one.
                self.counters.commands_ignored += 1
                self._log.warning("mqtt_command_retained_ignored", topic=m.topic)
            elif m.size == 0:
                # An empty payload clears a retained command: nothing to run, nothing to answer.
                self.counters.commands_ignored += 1
                self._log.info("mqtt_command_empty_ignored", topic=m.topic)
            else:
                commands.append(m)
        if commands:
            try:
                fresh = await self._inbox.add(
                    [
                        Received(
                            topic=m.topic,
                            payload=m.payload,
                            size=m.size,
                            qos=m.qos,
                            mid=m.mid,
                            dup=m.dup,
                            response_topic=m.response_topic,
                            correlation_data=m.correlation_data,
                        )
                        for m in commands
                    ]
                )
            except StoreError as exc:
                # The disk refuses (full, read-only): run them now, unstored, and acknowledge
                # each only once its handler returned, so the requester still gets an answer
                # (on its response topic; the command names the store's trouble) and a kill
                # meanwhile leaves them with the broker, which hands them over again.
                self.counters.commands_unstored += len(commands)
                self._log.error("mqtt_command_not_stored", error=str(exc), commands=len(commands))
                for m in commands:
                    await self._dispatch(
                        InboxEntry(
                            seq=0,
                            topic=m.topic,
                            payload=m.payload,
                            size=m.size,
                            qos=m.qos,
                            response_topic=m.response_topic,
                            correlation_data=m.correlation_data,
                        )
                    )
            else:
                self.counters.commands_duplicate += fresh.count(False)
                self._cmd_wake.set()
        # In the order received (MQTT requires PUBACKs in that order), once all are on disk.
        for m in batch:
            client.ack(m.mid, m.qos)

    async def _run_commands(self) -> None:
        """Run stored commands in order, each marked done after its handler returned."""
        while True:
            self._cmd_wake.clear()
            try:
                entries = await self._inbox.pending()
            except StoreError as exc:
                self._log.error("mqtt_command_inbox_failed", error=str(exc))
                await asyncio.sleep(1.0)
                continue
            if not entries:
                await self._cmd_wake.wait()
                continue
            for entry in entries:
                await self._dispatch(entry)
                while True:
                    try:
                        await self._inbox.done(entry.seq)
                        break
                    except StoreError as exc:
                        self._log.error("mqtt_command_inbox_failed", error=str(exc))
                        await asyncio.sleep(1.0)

    async def _dispatch(self, entry: InboxEntry) -> None:
        topic = entry.topic
        meta = CommandMeta(
            topic=topic,
            qos=entry.qos,
            response_topic=entry.response_topic,
            correlation_data=entry.correlation_data,
            size=entry.size,
            receipt=entry.receipt if entry.seq > 0 else None,  # 0: run without being stored
        )
        if entry.size > self._cfg.max_command_bytes:
            # Only MQTT 3.1.1 gets here (MQTT 5 brokers drop it): the payload was cut to the
            # limit plus one byte, enough for the handler to refuse it as too large.
            self.counters.commands_over_limit += 1
            self._log.warning("mqtt_command_over_limit", topic=topic, size=entry.size)
        self.counters.commands += 1
        if self._on_command is None:
            self._log.info("mqtt_command_unhandled", topic=topic)
            return
        try:
            await self._on_command(topic[len(self._command_prefix) :], entry.payload, meta)
        except Exception:  # noqa: BLE001 - a failing command must not stop the others
            self._log.exception("mqtt_command_failed", topic=topic)

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

    async def _drain(self, client: MqttLink, window: _Window) -> None:
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
                for msg in messages:
                    while window.free <= 0:
                        await self._wait(window, cfg.publish_timeout_s)
                    delay = max(
                        self._msg_bucket.reserve(1), self._byte_bucket.reserve(len(msg.payload))
                    )
                    if delay > 0:
                        await asyncio.sleep(delay)
                    self._check_window(window)
                    if self._classes_now() != classes:
                        break  # a budget was reached: read again with what may still go
                    self._send(client, window, msg)
                    sent.update(msg.seqs)
            finally:
                # What this read did not send (a held-back tail, a batch not yet due, what
                # a reached budget stopped) goes back to the outbox, in its place.
                self._outbox.release(k for k in leased if k not in sent and k not in self._dropped)

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

    def _send(self, client: MqttLink, window: _Window, msg: Outgoing) -> None:
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
        self._idle.clear()
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
            raise _LinkDown.of(exc) from exc

    def _published(
        self,
        window: _Window,
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
        window.wake.set()
        if not window.sent:
            self._idle.set()
        if error is not None:
            if window.error is None:
                window.error = _LinkDown.of(error)
            return
        if refusal is not None:
            try:
                self._refused(msg, refusal)
            except _LinkDown as down:
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

    def _check_window(self, window: _Window) -> None:
        """Raise what ended this connection's drain: a link error, or a PUBACK overdue."""
        if window.error is not None:
            raise window.error
        deadline = window.oldest_deadline()
        if deadline is not None and time.monotonic() >= deadline:
            timeout = self._cfg.publish_timeout_s
            raise _LinkDown(Failure.TIMEOUT, f"timeout: no PUBACK within {timeout:g} s")

    async def _wait(self, window: _Window, bound: float, *, records: bool = False) -> bool:
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

    async def _watch_records(self, window: _Window) -> None:
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
            raise _LinkDown(Failure.REFUSED, f"refused: {reason}")
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

    async def _ack_loop(self) -> None:
        while True:
            await self._ack_wake.wait()
            self._ack_wake.clear()
            if not await self._flush_acks():
                await asyncio.sleep(1.0)

    async def _flush_acks(self, *, final: bool = False) -> bool:
        """Remove PUBACKed records from the outbox; True when none are left waiting."""
        while self._acked:
            batch, self._acked = self._acked, []
            # Shielded: a delete that commits while its caller is cancelled must still be
            # counted by the outbox; on cancel the batch is kept and acked again (harmless).
            try:
                if final:
                    async with asyncio.timeout(max(0.2, self._stop_budget_s * 0.2)):
                        await asyncio.shield(self._outbox.ack(batch))
                else:
                    await asyncio.shield(self._outbox.ack(batch))
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
