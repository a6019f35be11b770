"""The one module that speaks to the MQTT library: paho-mqtt 2 through its public API, on asyncio.

aiomqtt (2.5) cannot acknowledge a received message after the application stored it, report a
PUBACK's reason code, or drop a connection without DISCONNECT; paho 2 can (`manual_ack`,
`on_publish` with the reason code, closing `socket()`), so paho is driven directly with the
external-loop hooks it documents: `on_socket_open/close/register_write/unregister_write` plus
`loop_read`, `loop_write` and `loop_misc` (paho's own asyncio example). Only `connect()` blocks
(TCP connect and TLS handshake): it runs in a thread with a timeout; everything else runs on
the event loop's thread.

One `MqttLink` is one network connection: connect, publish (returns the PUBACK reason code),
subscribe, ack, then `disconnect()` (clean) or `abort()` (no DISCONNECT: the broker sends the
last will). A PUBACK resolves its future, or calls `publish_nowait`'s callback, from paho's
`on_publish`: no task, timer or closure per message. What paho queues during one pass of the
event loop is written at the end of it by one `loop_write` (corked, so the kernel sends it in
full segments); a writer is registered only while the socket's buffer is full. A sender can
hook `after_read`: called after each read from the broker, what it publishes there (the next
messages, for the window slots the read's PUBACKs freed) is written at once, and `flush()`
writes what was queued so far without waiting for the end of the pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from structlog.typing import FilteringBoundLogger

from terminal_gw.uplink.links import WireCount, wire_count


class Failure(StrEnum):
    """Why a connection failed or ended."""

    AUTH = "auth"  # credentials refused (or the password file unreadable)
    TLS = "tls"  # handshake failed: certificate not trusted, client certificate refused
    CONFIG = "config"  # the broker refused the client id or protocol version
    REFUSED = "refused"  # refused for a passing reason (server unavailable, busy)
    NETWORK = "network"  # no route, connection refused or reset
    TIMEOUT = "timeout"  # no CONNACK or PUBACK within publish_timeout_s
    LOST = "lost"  # an established connection broke


# CONNACK reason codes (MQTT 5 numbering; paho maps 3.1.1 return codes 4 and 5 to 134, 135).
CONNACK_FAILURE: dict[int, Failure] = {
    132: Failure.CONFIG,  # unsupported protocol version
    133: Failure.CONFIG,  # client identifier not valid
    134: Failure.AUTH,  # bad user name or password
    135: Failure.AUTH,  # not authorized
    138: Failure.AUTH,  # banned
    140: Failure.AUTH,  # bad authentication method
}


class LinkError(Exception):
    """The connection failed or ended; `failure` says why, `reason` in words."""

    def __init__(self, failure: Failure, reason: str) -> None:
        super().__init__(reason)
        self.failure = failure
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Will:
    """The last will: published by the broker when the connection ends without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class LinkOptions:
    """Everything one connection needs."""

    host: str
    port: int
    client_id: str
    protocol: str  # "5" or "3.1.1"
    keepalive_s: int
    timeout_s: float  # TCP connect + TLS handshake, and the CONNACK
    inflight: int
    session_expiry_s: int  # MQTT 5: how long the broker keeps the session; 0 = clean session
    max_packet_bytes: int  # MQTT 5: the largest packet the broker may send us
    will: Will | None  # None: no last will (the fleet side's ingest has none to announce)
    username: str | None = None
    password: str | None = None
    tls_context: ssl.SSLContext | None = None
    receive_maximum: int = 0  # MQTT 5: unacknowledged messages the broker may send; 0: its default


@dataclass(frozen=True, slots=True)
class Refusal:
    """A PUBACK with an MQTT 5 failure reason code: the broker did not take the message."""

    code: int
    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Incoming:
    """One received PUBLISH. `size` is the payload's size as sent; `payload` may be cut to
    `max_packet_bytes + 1` on MQTT 3.1.1 (no size limit can be advertised there)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    mid: int
    size: int
    response_topic: str | None = None
    correlation_data: bytes | None = None


class _Packed(Properties):
    """PUBLISH properties packed once: paho packs a message's properties at every publish (a
    walk over every property name, tens of µs), and a drain sends the same few over and over
    (a topic alias, a content type). Set them through the public attributes, then `freeze()`;
    `pack()` (paho's public serialisation) returns the bytes made then."""

    def freeze(self) -> _Packed:
        """Pack the properties as they are now; later `pack()` calls return those bytes."""
        object.__setattr__(self, "packed", bytes(super().pack()))  # type: ignore[no-untyped-call]  # paho has no annotation here
        return self

    def pack(self) -> bytes:
        """The bytes `freeze()` made (paho's own packing before that)."""
        packed: bytes | None = self.__dict__.get("packed")
        if packed is None:
            return bytes(super().pack())  # type: ignore[no-untyped-call]  # paho has no annotation here
        return packed


#: TCP_CORK (Linux): hold partial segments until uncorked; None where the platform has none.
_CORK: int | None = getattr(socket, "TCP_CORK", None)

#: publish_nowait's callback: (key, refusal, error), for a PUBACK or the end of the link.
Done = Callable[[int, Refusal | None, LinkError | None], None]


def _describe_ssl(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    return str(exc)


class _SocketErrors(logging.Handler):
    """Keeps the last socket exception paho logs (it logs the exception object, then reports
    only "connection lost"): a TLS alert after the handshake is then told from a reset by type."""

    def __init__(self, log: FilteringBoundLogger) -> None:
        super().__init__(logging.WARNING)
        self._log = log
        self.last: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        """Remember an exception among the record's arguments; forward the line at debug."""
        args = record.args if isinstance(record.args, tuple) else ()
        for arg in args:
            if isinstance(arg, BaseException):
                self.last = arg
        self._log.debug("mqtt_client_log", message=record.getMessage())


class MqttLink:
    """One MQTT connection driven from the asyncio loop; see the module docstring."""

    def __init__(
        self,
        options: LinkOptions,
        *,
        on_message: Callable[[Incoming], None],
        on_lost: Callable[[LinkError], None] | None = None,
        log: FilteringBoundLogger,
    ) -> None:
        self.options = options
        self._on_message = on_message
        self._on_lost = on_lost
        self._log = log
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._v5 = options.protocol == "5"
        self._errors = _SocketErrors(log)
        # A logger outside the logging registry, so one per connection is not kept forever.
        plog = logging.Logger("terminal_gw.mqtt", logging.WARNING)  # noqa: LOG001 - see above
        plog.propagate = False
        plog.addHandler(self._errors)
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=options.client_id,
            protocol=paho.MQTTv5 if self._v5 else paho.MQTTv311,
            # 3.1.1: keep the session (queued commands) across connections when asked to.
            clean_session=None if self._v5 else options.session_expiry_s == 0,
            manual_ack=True,
            # A 3.1.1 CONNACK "bad protocol" would make paho reconnect, blocking, on the loop.
            reconnect_on_failure=False,
        )
        client.enable_logger(plog)
        client.connect_timeout = options.timeout_s
        client.max_inflight_messages_set(options.inflight)
        if options.username:
            client.username_pw_set(options.username, options.password)
        if options.tls_context is not None:
            client.tls_set_context(options.tls_context)
        will = options.will
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_publish = self._handle_publish
        client.on_subscribe = self._handle_subscribe
        client.on_message = self._handle_message
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write
        self._client = client
        self._sock: Any = None  # the socket registered with the loop
        self._misc: asyncio.TimerHandle | None = None
        self._connack: asyncio.Future[bool] = self._loop.create_future()
        self.closed: asyncio.Future[LinkError] = self._loop.create_future()
        self._acks: dict[int, asyncio.Future[Refusal | None]] = {}
        self._callbacks: dict[int, tuple[Done, int]] = {}
        # publish_nowait's (topic, content type, alias) -> (topic name, properties) once settled.
        self._routes: dict[tuple[str, str | None, bool], tuple[str, _Packed | None]] = {}
        self._writing = False  # the socket is registered for writing (its buffer was full)
        self._queued = 0  # publishes queued since the last write
        self._early_acks: dict[int, Refusal | None] = {}
        self._subacks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self.session_present = False
        self._aborted = threading.Event()
        # MQTT 5 topic aliases of this connection (the broker's TopicAliasMaximum, from the
        # CONNACK): a topic's first publish names it and its alias, later ones the alias only.
        self.topic_alias_max = 0
        self._aliases: dict[str, int] = {}
        #: Called after each read from the broker (its PUBACKs handled): what it publishes is
        #: written at once, in the same pass of the event loop.
        self.after_read: Callable[[], None] | None = None

    # --- life -------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True between the CONNACK and the end of the connection."""
        return self._connack.done() and not self.closed.done()

    async def connect(self) -> bool:
        """Connect and wait for the CONNACK; True when the broker resumed a stored session.

        LinkError with the failure's cause (auth, tls, config, refused, network, timeout).
        """
        opts = self.options
        properties: Properties | None = None
        kwargs: dict[str, Any] = {}
        if self._v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho has no annotation here
            if opts.session_expiry_s > 0:
                properties.SessionExpiryInterval = opts.session_expiry_s
            properties.MaximumPacketSize = opts.max_packet_bytes
            if opts.receive_maximum > 0:
                properties.ReceiveMaximum = opts.receive_maximum
            kwargs = {"clean_start": opts.session_expiry_s == 0, "properties": properties}
        try:
            async with asyncio.timeout(opts.timeout_s):
                try:
                    rc = await self._connect_in_thread(kwargs)
                except ssl.SSLError as exc:
                    raise LinkError(Failure.TLS, f"tls: {_describe_ssl(exc)}") from exc
                except TimeoutError as exc:
                    raise LinkError(
                        Failure.TIMEOUT,
                        f"timeout: no answer from the broker within {opts.timeout_s:g} s",
                    ) from exc
                except OSError as exc:
                    raise LinkError(Failure.NETWORK, f"network: {exc}") from exc
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    raise LinkError(  # noqa: TRY301 - one translation for every connect failure
                        Failure.NETWORK, f"network: {paho.error_string(rc)}"
                    )
                self._schedule_misc()
                self.session_present = await self._connack
        except TimeoutError as exc:
            self.abort()
            raise LinkError(
                Failure.TIMEOUT,
                f"timeout: no answer from the broker within {opts.timeout_s:g} s",
            ) from exc
        except BaseException:
            self.abort()
            raise
        return self.session_present

    async def _connect_in_thread(self, kwargs: dict[str, Any]) -> MQTTErrorCode:
        """paho's blocking connect in a worker thread; given up at once when aborted (stop)."""
        thread = self._loop.run_in_executor(None, self._blocking_connect, kwargs)
        # Read by this call, or nobody once given up: no warning about a lost exception.
        thread.add_done_callback(_consume)
        either: set[asyncio.Future[Any]] = {thread, self.closed}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not thread.done():
            # Aborted: the thread closes what it opened when its connect returns.
            raise self.closed.result()
        return thread.result()

    def _blocking_connect(self, kwargs: dict[str, Any]) -> MQTTErrorCode:
        opts = self.options
        rc = self._client.connect(opts.host, opts.port, opts.keepalive_s, **kwargs)
        if self._aborted.is_set():
            # Given up on (timeout, stop) while this thread connected: close what it opened.
            sock = self._client.socket()
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        return rc

    def abort(self, reason: str = "aborted") -> None:
        """Drop the connection at once without DISCONNECT: the broker publishes the last will."""
        self._aborted.set()
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        sock = self._client.socket()
        self._unregister(sock)
        if isinstance(sock, socket.socket):  # an SSLSocket is one too
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        self._closed(LinkError(Failure.LOST, f"lost: {reason}"), report=False)

    async def disconnect(self, timeout: float) -> None:  # noqa: ASYNC109 - a budget, then abort
        """Send DISCONNECT (the session and its queued commands stay on the broker)."""
        if self.closed.done():
            return
        self._client.disconnect()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self.closed)
        except TimeoutError:
            pass
        self.abort("disconnected")

    # --- operations -------------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        correlation_data: bytes | None = None,
        timeout: float,  # noqa: ASYNC109 - the PUBACK deadline
    ) -> Refusal | None:
        """Publish and wait until the broker has it (PUBACK for QoS 1, written for QoS 0).

        Returns None when taken, or the refusal an MQTT 5 PUBACK carried (3.1.1 has none).
        LinkError(TIMEOUT) without a PUBACK in time, LinkError(LOST) when the link ends.
        """
        self._check_open()
        properties: Properties | None = None
        if correlation_data is not None and self._v5:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho has no annotation here
            properties.CorrelationData = correlation_data
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_QUEUE_SIZE):
            raise LinkError(Failure.LOST, f"lost: publish failed: {paho.error_string(info.rc)}")
        if info.mid in self._early_acks:
            return self._early_acks.pop(info.mid)
        fut: asyncio.Future[Refusal | None] = self._loop.create_future()
        self._acks[info.mid] = fut
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError as exc:
            raise LinkError(Failure.TIMEOUT, f"timeout: no PUBACK within {timeout:g} s") from exc
        finally:
            self._acks.pop(info.mid, None)

    def publish_nowait(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        content_type: str | None = None,
        alias: bool = False,
        done: Done,
        key: int = 0,
    ) -> None:
        """Queue a QoS 1 publish; `done(key, refusal, None)` runs when its PUBACK arrives, or
        `done(key, None, error)` when the link ends first. No task, no timer, no closure: the
        caller keeps its own deadline (the drain checks the oldest message in flight) and
        tells its messages apart by `key`. `content_type` is sent as the MQTT 5 property
        (3.1.1 has none: left out). With `alias`, the topic goes by an MQTT 5 topic alias
        while the broker allows one more (`topic_alias`). The packets queued in one pass of
        the event loop are written together at its end (`_register_write`)."""
        self._check_open()
        route = self._routes.get((topic, content_type, alias))
        if route is None:
            name, props, final = self._route(topic, content_type, alias)
            if final:
                self._routes[topic, content_type, alias] = (name, props)
        else:
            name, props = route
        info = self._client.publish(name, payload, qos=1, retain=retain, properties=props)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_QUEUE_SIZE):
            raise LinkError(Failure.LOST, f"lost: publish failed: {paho.error_string(info.rc)}")
        mid = info.mid
        if mid in self._early_acks:
            done(key, self._early_acks.pop(mid), None)
            return
        self._callbacks[mid] = (done, key)
        self._queued += 1

    def _route(
        self, topic: str, content_type: str | None, alias: bool
    ) -> tuple[str, _Packed | None, bool]:
        """The topic name and properties to publish `topic` with, and whether later publishes
        use the same (False for the one that makes a topic alias known to the broker)."""
        props: _Packed | None = None
        if content_type is not None and self._v5:
            props = _Packed(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho has no annotation here
            props.ContentType = content_type
        name = topic
        known = True
        if alias:
            number, known = self.topic_alias(topic)
            if number is None:
                known = True  # no alias now or later on this connection: always the name
            else:
                if props is None:
                    props = _Packed(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho has no annotation here
                props.TopicAlias = number
                if known:
                    name = ""  # the alias alone names the topic
        return name, None if props is None else props.freeze(), known

    def topic_alias(self, topic: str) -> tuple[int | None, bool]:
        """The alias for `topic` on this connection and whether the broker knows it already;
        (None, False) on 3.1.1, when the broker allows no aliases, or all are taken."""
        if not self._v5:
            return None, False
        number = self._aliases.get(topic)
        if number is not None:
            return number, True
        if len(self._aliases) >= self.topic_alias_max:
            return None, False
        number = len(self._aliases) + 1
        self._aliases[topic] = number
        return number, False

    async def subscribe(self, topic: str, qos: int, timeout: float) -> int:  # noqa: ASYNC109 - the SUBACK deadline
        """Subscribe and wait for the SUBACK: the QoS granted, or LinkError(REFUSED)."""
        self._check_open()
        rc, mid = self._client.subscribe(topic, qos=qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise LinkError(Failure.LOST, f"lost: subscribe failed: {paho.error_string(rc)}")
        fut: asyncio.Future[list[ReasonCode]] = self._loop.create_future()
        self._subacks[mid] = fut
        try:
            async with asyncio.timeout(timeout):
                codes = await fut
        except TimeoutError as exc:
            raise LinkError(Failure.TIMEOUT, f"timeout: no SUBACK within {timeout:g} s") from exc
        finally:
            self._subacks.pop(mid, None)
        code = codes[0]
        if code.is_failure:
            raise LinkError(Failure.REFUSED, f"refused: subscribing to {topic} failed: {code}")
        return int(code.value)

    def wire_count(self) -> WireCount | None:
        """What this connection carried so far, by the kernel's TCP counters."""
        sock = self._client.socket()
        return None if sock is None else wire_count(sock)

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge a received message (PUBACK): the broker forgets it."""
        if qos > 0 and not self.closed.done():
            self._client.ack(mid, qos)

    def _check_open(self) -> None:
        if self.closed.done():
            raise self.closed.result()
        if not self._connack.done():
            raise LinkError(Failure.LOST, "lost: not connected")

    # --- paho callbacks (loop thread) -------------------------------------------------------

    def _handle_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self._connack.done():
            return
        if reason.is_failure:
            failure = CONNACK_FAILURE.get(reason.value, Failure.REFUSED)
            self._connack.set_exception(
                LinkError(
                    failure,
                    f"{failure}: the broker refused the connection: {reason} ({reason.value:#04x})",
                )
            )
        else:
            if self._v5 and properties is not None:
                self.topic_alias_max = int(getattr(properties, "TopicAliasMaximum", 0) or 0)
            self._connack.set_result(bool(flags.session_present))

    def _handle_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._unregister(self._sock)
        if not self._connack.done():
            last = self._errors.last
            if isinstance(last, ssl.SSLError):
                error = LinkError(Failure.TLS, f"tls: {_describe_ssl(last)}")
            elif last is not None:
                error = LinkError(Failure.NETWORK, f"network: {last}")
            else:
                error = LinkError(
                    Failure.NETWORK,
                    f"network: the broker closed the connection before accepting it ({reason})",
                )
            self._closed(error, report=False)
            return
        last = self._errors.last
        if flags.is_disconnect_packet_from_server:
            text = f"lost: the broker disconnected: {reason}"
        else:
            text = f"lost: {last}" if last is not None else f"lost: {reason}"
        self._closed(LinkError(Failure.LOST, text), report=True)

    def _handle_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        code = Refusal(reason.value, str(reason)) if self._v5 and reason.is_failure else None
        callback = self._callbacks.pop(mid, None)
        if callback is not None:
            callback[0](callback[1], code, None)
            return
        fut = self._acks.get(mid)
        if fut is None:
            self._early_acks[mid] = code
        elif not fut.done():
            fut.set_result(code)

    def _handle_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        fut = self._subacks.get(mid)
        if fut is not None and not fut.done():
            fut.set_result(reasons)

    def _handle_message(
        self, client: paho.Client, userdata: Any, message: paho.MQTTMessage
    ) -> None:
        payload = message.payload
        size = len(payload)
        limit = self.options.max_packet_bytes
        if size > limit:
            # MQTT 3.1.1 cannot advertise a limit: keep only enough to refuse it, drop the rest now.
            payload = payload[: limit + 1]
        props = message.properties
        response = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        self._on_message(
            Incoming(
                topic=message.topic,
                payload=bytes(payload),
                qos=message.qos,
                retain=bool(message.retain),
                dup=bool(message.dup),
                mid=message.mid,
                size=size,
                response_topic=response,
                correlation_data=bytes(correlation) if correlation is not None else None,
            )
        )

    def _closed(self, error: LinkError, *, report: bool) -> None:
        if self.closed.done():
            return
        self.closed.set_result(error)
        if not self._connack.done():
            self._connack.set_exception(error)
            # Read by connect(), or nobody: do not warn about an unretrieved exception.
            self._connack.add_done_callback(_consume)
        for ack in self._acks.values():
            if not ack.done():
                ack.set_exception(error)
        for suback in self._subacks.values():
            if not suback.done():
                suback.set_exception(error)
        callbacks = list(self._callbacks.values())
        self._callbacks.clear()
        for done, key in callbacks:
            done(key, None, error)
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        if report and self._on_lost is not None:
            self._on_lost(error)

    # --- socket glue ------------------------------------------------------------------------

    def _on_loop(self, fn: Callable[[], None]) -> None:
        if threading.get_ident() == self._loop_thread:
            fn()
        else:
            self._loop.call_soon_threadsafe(fn)

    def _socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        def register() -> None:
            # The socket may be closed again before this runs (connect failed in its thread).
            if self._current(client, sock) and not self.closed.done():
                self._sock = sock
                self._loop.add_reader(sock, self._read)

        self._on_loop(register)

    def _socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # paho calls this before it closes the socket, so it is still registered by number.
        if threading.get_ident() == self._loop_thread:
            self._unregister(sock)

    def _register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # paho has packets to send (the first since it last wrote all): write them once the
        # callbacks of this loop pass ran, so that every publish of the pass goes out in one
        # go, and without a writer registered (two epoll calls) when the socket takes them.
        if threading.get_ident() == self._loop_thread:
            self._loop.call_soon(self._flush, sock)
        else:
            self._loop.call_soon_threadsafe(self._flush, sock)

    def _unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        def unregister() -> None:
            if self._writing and self._current(client, sock):
                self._writing = False
                self._loop.remove_writer(sock)

        self._on_loop(unregister)

    def _flush(self, sock: Any) -> None:
        """Write what paho queued; wait for the socket to take the rest when its buffer is full."""
        client = self._client
        if self.closed.done() or not self._current(client, sock) or self._writing:
            return
        queued, self._queued = self._queued, 0
        if not queued and not client.want_write():
            return  # written already (`flush`)
        # paho writes each packet with its own send(): corked, the kernel sends them as one
        # stream of full segments when uncorked (fewer segments on a link paid by the byte,
        # and the work of a transmit once instead of once a message).
        cork = queued > 1 and _CORK is not None and isinstance(sock, socket.socket)
        if cork:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, _CORK, 1)
        try:
            self._write()
        finally:
            if cork:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, _CORK, 0)
        if not self.closed.done() and client.want_write() and self._current(client, sock):
            self._writing = True
            self._loop.add_writer(sock, self._write)

    @staticmethod
    def _current(client: paho.Client, sock: Any) -> bool:
        current: Any = client.socket()
        return current is sock

    def _unregister(self, sock: Any) -> None:
        if sock is None or sock is not self._sock:
            return
        self._sock = None
        self._writing = False
        with contextlib.suppress(OSError, ValueError):
            self._loop.remove_reader(sock)
        with contextlib.suppress(OSError, ValueError):
            self._loop.remove_writer(sock)

    def _read(self) -> None:
        try:
            self._client.loop_read()
        except Exception as exc:  # noqa: BLE001 - a broken read ends the connection, never the loop
            self.abort(f"read failed: {exc}")
            return
        after = self.after_read
        if after is not None and not self.closed.done():
            after()
            if self._queued:
                self.flush()

    def flush(self) -> None:
        """Write the publishes queued so far now, rather than at the end of the loop's pass."""
        sock = self._sock
        if sock is not None and self._queued:
            self._flush(sock)

    def _write(self) -> None:
        try:
            self._client.loop_write()
        except Exception as exc:  # noqa: BLE001 - a broken write ends the connection, never the loop
            self.abort(f"write failed: {exc}")

    def _schedule_misc(self) -> None:
        self._misc = self._loop.call_later(1.0, self._run_misc)

    def _run_misc(self) -> None:
        self._misc = None
        if self.closed.done():
            return
        if self._client.loop_misc() == MQTTErrorCode.MQTT_ERR_NO_CONN:
            return
        self._schedule_misc()


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
