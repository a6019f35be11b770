"""MQTT uplink: birth and last will, reconnect with backoff, drain the outbox, downlink commands.

One MQTT session at a time (aiomqtt 2). Each connection announces the device online with a
retained status (the offline one is the last will), subscribes to `{prefix}/{device}/cmd/#` and
drains the outbox: records in the outbox's order, a window of QoS 1 publishes in flight and a
token bucket on messages and bytes. A record leaves the outbox only after its PUBACK. New
records go out as they arrive, before the outbox commits them and while others are in flight.

Order within a class: publishes of one connection reach the broker in the order they were
sent, so a subscriber sees each class in the outbox's order even with many in flight. A
publish that fails or gets no PUBACK in time ends the connection (it is never retried alone
while later records go on), and each connection is a new MQTT session (paho retransmits
nothing of an old one): every record not yet acknowledged is sent again, in order, from the
outbox's head on the next connection. A subscriber may then see records twice (same `id`),
never a record before one that preceded it. (With `outbox.live_window_s` the outbox itself
sends the newest fix and sky ahead of their backlog.)

A PUBACK carrying an MQTT 5 failure reason code is not a delivery: a final refusal (not
authorized, invalid topic, too large, bad payload format) drops the record with an error event,
so it cannot hold up the queue forever; any other ends the connection and the record is sent
again. MQTT 3.1.1 has no such codes: there a broker that drops a message still acknowledges it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Protocol

import aiomqtt
import structlog
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from structlog.typing import FilteringBoundLogger

from terminal_gw.config import Config, MqttConfig
from terminal_gw.errors import ConfigError, TerminalGwError, UplinkError
from terminal_gw.models import SCHEMA_VERSION, EventSink, Status, iso_utc, make_event, new_id


class LinkState(StrEnum):
    """Where the uplink is; `Uplink.state_reason` says why."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKING_OFF = "backing_off"
    STOPPED = "stopped"


class Failure(StrEnum):
    """Why a connection failed or ended."""

    AUTH = "auth"  # credentials refused (or the password file unreadable)
    TLS = "tls"  # handshake failed: certificate not trusted, client certificate refused
    CONFIG = "config"  # the broker refused the client id or protocol version
    REFUSED = "refused"  # refused for a passing reason (server unavailable, busy)
    NETWORK = "network"  # no route, connection refused or reset
    TIMEOUT = "timeout"  # no CONNACK or PUBACK within publish_timeout_s
    LOST = "lost"  # an established connection broke


#: Failures a retry soon will not fix: wait auth_backoff_s and raise an event.
LONG_BACKOFF = frozenset({Failure.AUTH, Failure.TLS, Failure.CONFIG})

# CONNACK reason codes (MQTT 5 numbering; paho maps 3.1.1 return codes 4 and 5 to 134, 135).
_CONNACK_FAILURE: dict[int, Failure] = {
    132: Failure.CONFIG,  # unsupported protocol version
    133: Failure.CONFIG,  # client identifier not valid
    134: Failure.AUTH,  # bad user name or password
    135: Failure.AUTH,  # not authorized
    138: Failure.AUTH,  # banned
    140: Failure.AUTH,  # bad authentication method
}


# PUBACK reason codes (MQTT 5) after which sending the same record again cannot succeed:
# not authorized (ACL), topic name invalid, packet too large, payload format invalid.
PERMANENT_REFUSALS = frozenset({0x87, 0x90, 0x95, 0x99})

# The packet id of the last publish a task made (aiomqtt does not return it): each publish
# runs in its own task, so each sees its own.
_last_mid: ContextVar[int | None] = ContextVar("_last_mid", default=None)


class OutboxRecord(Protocol):
    """What the uplink reads of an outbox record (`terminal_gw.outbox.Record`)."""

    @property
    def seq(self) -> int: ...
    @property
    def cls(self) -> str: ...
    @property
    def topic(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def created(self) -> float: ...
    @property
    def retain(self) -> bool: ...


class DrainSource(Protocol):
    """The part of the outbox the uplink drains (`terminal_gw.outbox.Outbox`).

    `wait_for_records` returns True as soon as records wait that the last `next_batch` did
    not hand out (the uplink also waits on it while records are in flight), and seqs may be
    negative (records handed out before their commit).
    """

    async def next_batch(
        self, limit: int, exclude: Collection[int] = ()
    ) -> Sequence[OutboxRecord]: ...
    async def ack(self, seqs: Iterable[int]) -> None: ...
    async def wait_for_records(self, timeout: float) -> bool: ...  # noqa: ASYNC109 - the outbox's interface


@dataclass(frozen=True, slots=True)
class CommandMeta:
    """How a downlink command arrived; MQTT 5 response topic and correlation data when given."""

    topic: str
    qos: int
    response_topic: str | None = None
    correlation_data: bytes | None = None


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
    commands_ignored: int = 0  # retained command messages (stale) are not run
    refused: int = 0  # records the broker refused for good (MQTT 5 PUBACK reason code)

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


class _Closing(Exception):  # noqa: N818 - a control-flow signal
    """Ends a session's task group on stop()."""


class _SocketFailed(aiomqtt.MqttError):
    """paho reported a socket error before the CONNACK (e.g. a TLS alert from the broker)."""


class _PahoLog(logging.Handler):
    """paho's log for one client: warnings go to structlog, a socket error fails the connect.

    paho logs a TLS alert that arrives after the handshake (TLS 1.3 refuses a client
    certificate that way) and then waits for a CONNACK that never comes; failing the pending
    connect at once gives the real reason instead of a timeout.
    """

    def __init__(self, log: FilteringBoundLogger, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.WARNING)
        self._log = log
        self._loop = loop
        self.connecting: asyncio.Future[None] | None = None
        self.last_error: str | None = None
        # MQTT 5 PUBACKs with a failure reason code, by packet id, until their task reads them.
        self.refused: dict[int, ReasonCode] = {}

    def emit(self, record: logging.LogRecord) -> None:
        """Remember and forward one paho log line."""
        message = record.getMessage()
        self.last_error = message
        self._log.debug("mqtt_client_log", message=message)
        if message.startswith("failed to receive on socket"):
            self.closed_early(message)

    def closed_early(self, message: str) -> None:
        """The connection ended; if no CONNACK came yet, fail the pending connect with `message`."""
        fut = self.connecting
        if fut is not None:
            self._loop.call_soon_threadsafe(_fail_future, fut, message)


def _register_write(client: aiomqtt.Client, loop: asyncio.AbstractEventLoop) -> Any:
    """paho's socket_register_write callback, replacing aiomqtt's.

    aiomqtt schedules `add_writer(fd)` for later even on the loop's own thread; when the
    socket closes first (the link breaks while sending) the late call fails with EBADF, or
    registers on a new socket that reused the number, and the loop spins on it. This one
    registers at once on the loop's thread, and from another thread only if the socket is
    still the client's when the call runs.
    """
    loop_thread = threading.get_ident()

    def on_register_write(paho_client: Any, userdata: Any, sock: Any) -> None:
        def write() -> None:
            try:
                paho_client.loop_write()
            except Exception as exc:  # noqa: BLE001 - as aiomqtt: a failed write ends the link
                disconnected = client._disconnected
                if not disconnected.done():
                    disconnected.set_exception(exc)

        def register() -> None:
            if paho_client.socket() is sock:
                loop.add_writer(sock, write)

        if threading.get_ident() == loop_thread:
            register()
        else:
            loop.call_soon_threadsafe(register)

    return on_register_write


def _fail_future(fut: asyncio.Future[None], message: str) -> None:
    if not fut.done():
        fut.set_exception(_SocketFailed(message))


def _describe_ssl(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    return str(exc.reason or exc)


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
        self._outbox = outbox
        self._events = events
        self._health = health
        self._on_command = on_command
        self._log: FilteringBoundLogger = log or structlog.get_logger("terminal_gw.uplink")
        self._clock = clock
        base = f"{self._cfg.prefix}/{config.device.id}"
        self.status_topic = f"{base}/status"
        self.command_filter = f"{base}/cmd/#"
        self._command_prefix = f"{base}/cmd/"
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
        self._client: aiomqtt.Client | None = None
        self._attempt = 0
        self._reported: str | None = None  # reason of the last failure event, to not repeat it
        self._refusals_reported: set[tuple[str, int]] = set()
        self._handler: _PahoLog | None = None  # the current connection's
        # Seqs published and not yet removed from the outbox: never fetched twice meanwhile.
        self._inflight: set[int] = set()
        self._acked: list[int] = []  # PUBACKed, waiting for outbox.ack
        self._ack_wake = asyncio.Event()
        self._progress = asyncio.Event()  # set when acked records leave the outbox
        self._publishing = 0
        self._idle = asyncio.Event()
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
        finally:
            await self._flush_acks(final=True)
            self._set_state(LinkState.STOPPED, "stopped")
            self._running = False
            self._done.set()

    async def stop(self, timeout: float = 3.0) -> None:  # noqa: ASYNC109 - a shutdown budget, split between steps
        """Publish offline (retained) if connected and disconnect cleanly, within `timeout`."""
        self._stop_budget_s = timeout
        self._stop.set()
        if not self._running:
            return
        if self._handler is not None:
            self._handler.closed_early("stopping")  # no use waiting for a CONNACK now
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
        properties: Properties | None = None
        if correlation_data is not None and self._cfg.protocol == "5":
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho has no annotation here
            properties.CorrelationData = correlation_data
        try:
            await client.publish(
                topic,
                payload,
                qos=qos,
                retain=retain,
                properties=properties,
                timeout=self._cfg.publish_timeout_s,
            )
        except aiomqtt.MqttError as exc:
            raise UplinkError(f"publish to {topic} failed: {exc}", reason=str(exc)) from exc

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
            return self._cfg.auth_backoff_s * random.uniform(0.9, 1.0)  # noqa: S311 - jitter
        base = min(self._cfg.backoff_max_s, self._cfg.backoff_min_s * 2.0 ** min(self._attempt, 30))
        self._attempt += 1
        return base * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not security

    async def _back_off(self, down: _LinkDown, session_s: float) -> None:
        # A link that stayed up longer than the longest wait was healthy: start over, but a
        # broker that accepts and drops at once (a duplicate client id) keeps growing the wait.
        if self.state is LinkState.CONNECTED and session_s >= min(self._cfg.backoff_max_s, 60.0):
            self._attempt = 0
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
        status = Status(
            id=new_id(int(now * 1000)),
            time=iso_utc(now),
            state="online" if state == "online" else "offline",
            health=self._health() if state == "online" else {},
        )
        return status.to_json().encode()

    async def _make_client(self) -> tuple[aiomqtt.Client, _PahoLog]:
        cfg = self._cfg
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
        handler = _PahoLog(self._log, asyncio.get_running_loop())
        # A logger outside the logging registry, so one per connection attempt is not kept.
        paho_logger = logging.Logger("terminal_gw.mqtt", logging.WARNING)  # noqa: LOG001 - see above
        paho_logger.propagate = False
        paho_logger.addHandler(handler)
        v5 = cfg.protocol == "5"
        client = aiomqtt.Client(
            cfg.host,
            cfg.port,
            username=cfg.username or None,
            password=password,
            logger=paho_logger,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            will=aiomqtt.Will(
                self.status_topic, self._status_payload("offline"), qos=1, retain=True
            ),
            # Each connection starts clean: the outbox, not the broker, keeps what is unsent.
            clean_session=None if v5 else True,
            timeout=cfg.publish_timeout_s,
            keepalive=cfg.keepalive_s,
            max_inflight_messages=cfg.inflight,
            tls_context=context,
        )
        client.pending_calls_threshold = cfg.inflight + 10
        # aiomqtt ignores a connection closed before the CONNACK and waits for its timeout
        # (publish_timeout_s, long on satellite links): fail the pending connect at once.
        paho_client = client._client
        aiomqtt_on_disconnect = paho_client.on_disconnect

        def on_disconnect(*args: Any) -> None:
            if aiomqtt_on_disconnect is not None:
                aiomqtt_on_disconnect(*args)
            handler.closed_early("the broker closed the connection before accepting it")

        paho_client.on_disconnect = on_disconnect
        # aiomqtt drops a PUBACK's reason code: keep failures, by packet id, for _publish.
        aiomqtt_on_publish = paho_client.on_publish
        paho_publish = paho_client.publish

        def on_publish(*args: Any) -> None:
            if len(args) >= 4 and isinstance(args[3], ReasonCode) and args[3].is_failure:
                handler.refused[int(args[2])] = args[3]
            if aiomqtt_on_publish is not None:
                aiomqtt_on_publish(*args)

        def publish(*args: Any, **kwargs: Any) -> Any:
            info = paho_publish(*args, **kwargs)
            _last_mid.set(info.mid)
            return info

        paho_client.on_publish = on_publish
        paho_client.publish = publish  # type: ignore[method-assign]
        paho_client.on_socket_register_write = _register_write(client, asyncio.get_running_loop())
        # TCP connect and TLS handshake share paho's connect timeout (5 s by default): too
        # short for a satellite link.
        client._client.connect_timeout = cfg.publish_timeout_s
        return client, handler

    async def _connect(self, client: aiomqtt.Client, handler: _PahoLog) -> None:
        handler.connecting = client._connected  # aiomqtt's CONNACK future; see _PahoLog
        try:
            await client.__aenter__()
        except MqttConnectError as exc:
            code = exc.rc.value if isinstance(exc.rc, ReasonCode) else (exc.rc or 0)
            failure = _CONNACK_FAILURE.get(code, Failure.REFUSED)
            raise _LinkDown(
                failure, f"{failure}: the broker refused the connection: {exc}"
            ) from exc
        except aiomqtt.MqttError as exc:
            context = exc.__context__
            if isinstance(context, ssl.SSLError):
                raise _LinkDown(Failure.TLS, f"tls: {_describe_ssl(context)}") from exc
            text = str(exc)
            if isinstance(exc, _SocketFailed):
                failure = Failure.TLS if "SSL" in text or "alert" in text else Failure.NETWORK
                raise _LinkDown(failure, f"{failure}: {text}") from exc
            if "timed out" in text:
                raise _LinkDown(
                    Failure.TIMEOUT,
                    f"timeout: no answer from the broker within {self._cfg.publish_timeout_s:g} s",
                ) from exc
            raise _LinkDown(Failure.NETWORK, f"network: {text}") from exc
        finally:
            handler.connecting = None

    async def _abort(self, client: aiomqtt.Client) -> None:
        """Drop the connection without DISCONNECT, so the broker publishes the last will."""
        # aiomqtt has no abort: close paho's socket; that also schedules the cancel of
        # aiomqtt's housekeeping task, awaited here so no task outlives the connection.
        client._client._sock_close()
        misc = client._misc_task
        if misc is not None:
            await asyncio.wait({misc}, timeout=1.0)
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(1.0):
                await client.__aexit__(None, None, None)

    async def _connect_and_serve(self) -> None:
        client, handler = await self._make_client()
        self._handler = handler
        try:
            await self._connect(client, handler)
        except _LinkDown:
            self.counters.connect_failures += 1
            await self._abort(client)
            raise
        self.counters.connects += 1
        if self.counters.connects > 1:
            self.counters.reconnects += 1
        self._reported = None
        self._client = client
        self._set_state(LinkState.CONNECTED, f"connected to {self._cfg.host}:{self._cfg.port}")
        self._log.info(
            "mqtt_connected",
            broker=f"{self._cfg.host}:{self._cfg.port}",
            tls=self._cfg.tls,
            protocol=self._cfg.protocol,
            client_id=self.client_id,
        )
        clean = False
        try:
            await self._serve(client)
            clean = True
        except _LinkDown:
            self.counters.links_lost += 1
            raise
        finally:
            self._client = None
            await self._end_session(client, clean=clean)

    async def _end_session(self, client: aiomqtt.Client, *, clean: bool) -> None:
        try:
            await self._flush_acks(final=True)
        finally:
            # Whatever is not acknowledged now is sent again on the next connection.
            self._inflight = set(self._acked)
            self._publishing = 0
            self._idle.set()
            if clean:
                await self._say_offline(client)
            else:
                await self._abort(client)

    async def _say_offline(self, client: aiomqtt.Client) -> None:
        budget = max(0.2, self._stop_budget_s * 0.4)
        try:
            async with asyncio.timeout(budget):
                await client.publish(
                    self.status_topic, self._status_payload("offline"), qos=1, retain=True
                )
                await client.__aexit__(None, None, None)
        except (aiomqtt.MqttError, TimeoutError):
            # Out of time: drop the socket and let the will say offline.
            await self._abort(client)
        except asyncio.CancelledError:
            await self._abort(client)
            raise

    # --- session ----------------------------------------------------------------------------

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Birth, subscribe, then receive, drain and acknowledge until stop or a failure."""
        try:
            await client.publish(
                self.status_topic, self._status_payload("online"), qos=1, retain=True
            )
            await client.subscribe(self.command_filter, qos=1)
        except aiomqtt.MqttError as exc:
            raise _LinkDown(Failure.LOST, f"lost: announcing the device failed: {exc}") from exc
        window = asyncio.Semaphore(self._cfg.inflight)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._receive(client), name="uplink-receive")
                tg.create_task(self._ack_loop(), name="uplink-ack")
                drain = tg.create_task(self._drain(client, tg, window), name="uplink-drain")
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

    async def _receive(self, client: aiomqtt.Client) -> None:
        try:
            async for message in client.messages:
                await self._dispatch(message)
        except aiomqtt.MqttError as exc:
            cause = exc.__cause__ or exc
            raise _LinkDown(Failure.LOST, f"lost: {cause}") from exc
        raise _LinkDown(Failure.LOST, "lost: the message stream ended")

    async def _dispatch(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        if not topic.startswith(self._command_prefix):
            return
        if message.retain:
            # A retained command would run again at every connection: never act on one.
            self.counters.commands_ignored += 1
            self._log.warning("mqtt_command_retained_ignored", topic=topic)
            return
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        meta = CommandMeta(
            topic=topic,
            qos=message.qos,
            response_topic=response_topic,
            correlation_data=bytes(correlation) if correlation is not None else None,
        )
        payload = message.payload
        data = payload if isinstance(payload, bytes) else str(payload or "").encode()
        self.counters.commands += 1
        if self._on_command is None:
            self._log.info("mqtt_command_unhandled", topic=topic)
            return
        try:
            await self._on_command(topic[len(self._command_prefix) :], data, meta)
        except Exception:  # noqa: BLE001 - a failing command must not cut the link
            self._log.exception("mqtt_command_failed", topic=topic)

    async def _drain(
        self, client: aiomqtt.Client, tg: asyncio.TaskGroup, window: asyncio.Semaphore
    ) -> None:
        cfg = self._cfg
        limit = max(cfg.inflight, cfg.batch_max) if cfg.batch_backlog else cfg.inflight
        woke = False  # the outbox said new records wait
        while True:
            try:
                records = await self._outbox.next_batch(limit, exclude=self._inflight)
            except TerminalGwError as exc:
                self._log.warning("outbox_read_failed", error=str(exc))
                await asyncio.sleep(1.0)
                continue
            if not records:
                if woke:
                    # Records said to wait but none came: do not spin on a stale signal.
                    woke = False
                    await asyncio.sleep(0.05)
                elif self._inflight:
                    woke = await self._wait_for_work(0.25)
                else:
                    woke = await self._outbox.wait_for_records(1.0)
                continue
            woke = False
            messages = plan_messages(
                records,
                now=self._clock(),
                batch=cfg.batch_backlog,
                batch_max=cfg.batch_max,
                batch_min_age_s=cfg.batch_min_age_s,
                hold_tail=len(records) >= limit,
            )
            for msg in messages:
                await window.acquire()
                delay = max(
                    self._msg_bucket.reserve(1), self._byte_bucket.reserve(len(msg.payload))
                )
                if delay > 0:
                    await asyncio.sleep(delay)
                self._inflight.update(msg.seqs)
                self._publishing += 1
                self._idle.clear()
                tg.create_task(self._publish(client, msg, window), name="uplink-publish")

    async def _wait_for_work(self, timeout: float) -> bool:  # noqa: ASYNC109 - a bound, not a deadline
        """Until acks come or new records wait (True), `timeout` at most.

        New records go out at once, not after the PUBACKs of those in flight (a round trip
        on a slow link).
        """
        self._progress.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), asyncio.TaskGroup() as tg:
                acks = tg.create_task(self._progress.wait(), name="uplink-wait-acks")
                new = tg.create_task(
                    self._outbox.wait_for_records(timeout), name="uplink-wait-records"
                )
                await asyncio.wait({acks, new}, return_when=asyncio.FIRST_COMPLETED)
                acks.cancel()
                new.cancel()
                return new.done() and not new.cancelled() and new.result()
        return False

    async def _publish(
        self, client: aiomqtt.Client, msg: Outgoing, window: asyncio.Semaphore
    ) -> None:
        try:
            _last_mid.set(None)
            await client.publish(
                msg.topic,
                msg.payload,
                qos=1,
                retain=msg.retain,
                timeout=self._cfg.publish_timeout_s,
            )
        except aiomqtt.MqttError as exc:
            if "timed out" in str(exc):
                raise _LinkDown(
                    Failure.TIMEOUT,
                    f"timeout: no PUBACK within {self._cfg.publish_timeout_s:g} s",
                ) from exc
            raise _LinkDown(Failure.LOST, f"lost: publish failed: {exc}") from exc
        finally:
            window.release()
            self._publishing -= 1
            if self._publishing <= 0:
                self._idle.set()
        mid = _last_mid.get()
        refusal = self._handler.refused.pop(mid, None) if self._handler and mid else None
        if refusal is not None:
            self._refused(msg, refusal)
        else:
            self.counters.published += 1
            self.counters.bytes += len(msg.payload)
            if msg.batch:
                self.counters.batches += 1
        self._acked.extend(msg.seqs)
        self._ack_wake.set()

    def _refused(self, msg: Outgoing, code: ReasonCode) -> None:
        """The broker refused a record: drop it if that is final, else end the session."""
        reason = f"the broker refused a publish to {msg.topic}: {code} ({code.value:#04x})"
        if code.value not in PERMANENT_REFUSALS:
            raise _LinkDown(Failure.REFUSED, f"refused: {reason}")
        # Sending it again would be refused again and hold up what follows: drop and report.
        self.counters.refused += len(msg.seqs)
        self._log.error("mqtt_publish_refused", topic=msg.topic, reason=str(code))
        key = (msg.topic, code.value)
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
                    code=code.value,
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
            self._inflight.difference_update(batch)
            self.counters.records += len(batch)
            self._progress.set()
        return True
