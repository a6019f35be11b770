"""The link state machine: birth and last will, reconnect with backoff, downlink commands.

One MQTT connection at a time (`uplink.mqtt`, the only module that uses the MQTT library). Each
connection announces the device online with a retained status (the offline one is the last
will), subscribes to `{prefix}/{device}/cmd/#` and drains the outbox (`uplink.drain`). The link
profile (`uplink.links`) is chosen by the interface the route to the broker takes, looked at
again while connected; a change makes the connection again under the new profile.

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
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from structlog.typing import FilteringBoundLogger

from terminal_gw.backoff import Backoff, Retry
from terminal_gw.config import Config, MqttConfig
from terminal_gw.errors import ConfigError, StoreError, UplinkError
from terminal_gw.models import EventSink, Status, iso_utc, make_event, new_id
from terminal_gw.topics import Topics
from terminal_gw.uplink import compact, links
from terminal_gw.uplink.drain import Drain, LinkDown, UplinkCounters
from terminal_gw.uplink.inbox import Inbox, InboxEntry, Received
from terminal_gw.uplink.mqtt import (
    Failure,
    Incoming,
    LinkError,
    LinkOptions,
    MqttLink,
    Will,
)

__all__ = [
    "LONG_BACKOFF",
    "CommandHandler",
    "CommandMeta",
    "Link",
    "LinkState",
    "inbox_path",
    "ledger_path",
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


class Link:
    """The MQTT session: connect, announce, run the drain, take commands, reconnect."""

    def __init__(
        self,
        config: Config,
        drain: Drain,
        *,
        counters: UplinkCounters,
        ledger: links.LinkLedger,
        events: EventSink,
        health: Callable[[], dict[str, Any]],
        on_command: CommandHandler | None,
        log: FilteringBoundLogger,
        clock: Callable[[], float],
    ) -> None:
        self._cfg = config.mqtt
        self._profiles = list(config.links)
        self._drain = drain
        self._events = events
        self._health = health
        self._on_command = on_command
        self._log = log
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
        self.counters = counters

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
        self._inbox = Inbox(inbox_path(config), clock=clock)
        self._rx: list[Incoming] = []  # received, not yet stored in the inbox
        self._rx_wake = asyncio.Event()
        self._cmd_wake = asyncio.Event()  # new rows in the inbox
        # Link profiles: the one in use, one forced by command, and today's use of each.
        self.profile = self._profiles[-1]
        self.interface: str | None = None
        self._forced: str | None = None
        self._broker_addresses: list[str] = []
        #: The interface carrying the broker's traffic (the kernel's routes; replaceable).
        self.interface_probe: Callable[[], str | None] = self._kernel_interface
        #: How often the route is looked at again while connected (seconds).
        self.route_check_s = 30.0
        self.ledger = ledger
        self._wire_seen = 0  # bytes of the current connection already in the ledger

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
            await self._drain.flush_acks(timeout=self._final_ack_s())
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
            except LinkDown as down:
                if self._stop.is_set():
                    break
                await self._back_off(down, time.monotonic() - session_start)
            else:
                break

    async def wait_acked(self, timeout: float) -> None:  # noqa: ASYNC109 - a bound for a pacer
        """Until delivered records are next handed back to the outbox, `timeout` s at most."""
        acked = self._drain.acked
        acked.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await acked.wait()

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

    def _final_ack_s(self) -> float:
        """How long the last ack of a connection or of the run may take: a fifth of stop()'s."""
        return max(0.2, self._stop_budget_s * 0.2)

    def backoff_delay(self, failure: Failure) -> float:
        """The wait before the next attempt: capped exponential with jitter; longest for auth."""
        if failure in LONG_BACKOFF:
            return self._auth_backoff.delay(0)
        return self._retry.next_delay()

    async def _back_off(self, down: LinkDown, session_s: float) -> None:
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
        self._drain.end("lost: the link profile was changed")
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
        self._drain.end(f"lost: {reason}")
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
                raise LinkDown(
                    Failure.TLS, f"tls: cannot load the CA, certificate or key: {exc}"
                ) from exc
        password: str | None = None
        if cfg.username:
            try:
                password = await asyncio.to_thread(cfg.effective_password) or None
            except ConfigError as exc:
                raise LinkDown(Failure.AUTH, f"auth: {exc}") from exc
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
        except LinkDown:
            self.counters.connect_failures += 1
            raise
        self._link = client
        self._rx.clear()
        self._rx_wake.clear()
        try:
            if self._stop.is_set():
                raise LinkDown(Failure.LOST, "stopping")
            session_present = await client.connect()
        except LinkError as exc:
            self.counters.connect_failures += 1
            self._link = None
            raise LinkDown.of(exc) from exc
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
        except LinkDown:
            self.counters.links_lost += 1
            raise
        finally:
            self._client = None
            await self._end_session(client, clean=clean)
            self._link = None

    async def _end_session(self, client: MqttLink, *, clean: bool) -> None:
        self._count_wire(client)
        try:
            await self._drain.close(self._final_ack_s())
        finally:
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
        self._drain.born(self.profile, birth)
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
            raise LinkDown(
                exc.failure, f"{exc.failure}: announcing the device failed: {exc}"
            ) from exc

    async def _serve(self, client: MqttLink) -> None:
        """Receive, drain and acknowledge until stop or a failure."""
        window = self._drain.open()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._receive(client), name="uplink-receive")
                tg.create_task(self._drain.ack_loop(), name="uplink-ack")
                tg.create_task(self._drain.watch_records(window), name="uplink-watch")
                tg.create_task(self._wire_loop(client), name="uplink-wire")
                drain = tg.create_task(self._drain.run(client, window), name="uplink-drain")
                await self._stop.wait()
                # Take no more records; let those in flight get their PUBACK, for a while.
                drain.cancel()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.2, self._stop_budget_s * 0.4)):
                        await self._drain.idle.wait()
                raise _Closing
        except BaseExceptionGroup as group:
            if group.subgroup(_Closing) is not None and group.subgroup(LinkDown) is None:
                return
            down = group.subgroup(LinkDown)
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
                raise LinkDown.of(client.closed.result())
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
