"""`terminal-gw ingest`: a shared MQTT subscription into PostgreSQL, acknowledged after commit.

Three stages in one TaskGroup:

- `mqtt`: connects (MQTT 5, persistent session), subscribes `$share/{group}/{filter}` at QoS 1,
  and turns each message into rows (or a rejection) as it arrives; reconnects with backoff.
- `writer`: takes up to `batch_max_rows` rows once that many wait or the oldest has waited
  `batch_max_age_ms`, writes them in one transaction (in a worker thread, so reading goes on),
  and only then acknowledges their messages. Up to `db_connections` batches are written at
  once, each on its own connection (the next batch is copied while the one before commits);
  acknowledgements go in the order the messages came, a message's only once it and every
  one before it are stored. A database that is down is retried with backoff
  and nothing is acknowledged meanwhile: the broker stops sending once `receive_maximum`
  messages are unacknowledged (backpressure), and keeps the rest queued for this session.
- `status`: a log line every `status_interval_s` (rows/s, lag, rejected), and the same on the
  optional metrics port.

A kill at any moment loses nothing: what was not acknowledged is sent again by the broker, and
what was stored already is absorbed by the `id` keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from structlog.typing import FilteringBoundLogger

from terminal_gw.backoff import Backoff, Retry
from terminal_gw.errors import ConfigError
from terminal_gw.ingest.config import IngestConfig
from terminal_gw.ingest.records import Parsed, Rejection, parse_message, rejected_digest, tables_of
from terminal_gw.ingest.store import BadRowsError, DatabaseError, Rejected, Store, Written
from terminal_gw.status import MetricsServer, StatusBoard
from terminal_gw.uplink.mqtt import Failure, Incoming, LinkError, LinkOptions, MqttLink


@dataclass(slots=True)
class Item:
    """One received message: its rows or its rejection, and how to acknowledge it."""

    link: MqttLink
    mid: int
    qos: int
    topic: str
    payload: bytes
    received: datetime
    parsed: Parsed | None
    rejected: Rejected | None
    stored: bool = False  # its batch committed (acknowledged once every earlier one is)

    @property
    def rows(self) -> int:
        """Rows it stores (a rejection counts one)."""
        return self.parsed.count if self.parsed is not None else 1


@dataclass
class Counters:
    """Totals since start."""

    messages: int = 0
    rows: int = 0  # new rows stored
    duplicates: int = 0  # rows already stored (a redelivery or a duplicate publish)
    rejected: int = 0
    skipped: int = 0  # commands and cleared retained topics: read past, not stored
    batches: int = 0
    db_errors: int = 0
    bad_batches: int = 0  # batches split because the database refused a value
    mqtt_connects: int = 0
    mqtt_losses: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters by name."""
        return dict(self.__dict__)


@dataclass
class _Interval:
    """What happened since the last status line."""

    started: float
    rows: int = 0
    messages: int = 0
    rejected: int = 0
    lag_max: float = 0.0
    lags: deque[float] = field(default_factory=lambda: deque(maxlen=4096))


class Ingest:
    """The ingest process; `run()` until stopped (or, with `once`, until drained)."""

    def __init__(
        self,
        cfg: IngestConfig,
        *,
        log: FilteringBoundLogger,
        once: bool = False,
        client_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.log = log
        self.once = once
        self.client_id = client_id or cfg.effective_client_id()
        self.clock = clock
        self.counters = Counters()
        password = cfg.database_password()
        self.stores = [
            Store(cfg.dsn, password, cfg.connect_timeout_s) for _ in range(cfg.db_connections)
        ]
        self.store = self.stores[0]
        self.board = StatusBoard(self.client_id, stall_s=max(60.0, 3 * cfg.status_interval_s))
        self.board.add_counters("ingest", self.counters.as_dict)
        self.board.add_gauge("ingest_pending_messages", lambda: len(self._pending))
        self.board.add_gauge("ingest_rows_per_second", lambda: self._last_rate)
        self.board.add_gauge("ingest_lag_seconds", lambda: self._last_lag)
        self.board.add_gauge("ingest_database_up", lambda: self._db_connected)
        self.board.add_gauge("ingest_mqtt_up", lambda: self._link is not None)
        self.failure: str | None = None  # why --once gave up
        self._pending: deque[Item] = deque()  # received, not in a batch being written
        self._unacked: deque[Item] = deque()  # received, not acknowledged: in arrival order
        self._writing: dict[asyncio.Task[Written], tuple[list[Item], Store]] = {}
        self._pending_rows = 0
        self._oldest: float | None = None  # monotonic time the oldest pending item arrived
        self._last_rx = time.monotonic()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._link: MqttLink | None = None  # connected and subscribed
        self._rx_link: MqttLink | None = None  # the connection messages arrive on
        self._subscribed = asyncio.Event()
        self._writer_done = asyncio.Event()
        self._interval = _Interval(time.monotonic())
        self._db_retry = Retry(Backoff(cfg.backoff_min_s, cfg.backoff_max_s))
        self._last_rate = 0.0
        self._last_lag = 0.0

    # --- life ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask for a graceful stop (signal handlers call this)."""
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        """Serve until `stop()` (or drained, with `once`)."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._mqtt(), name="ingest-mqtt")
                writer = tg.create_task(self._writer(), name="ingest-writer")
                status = tg.create_task(self._status(), name="ingest-status")
                metrics = None
                if self.cfg.metrics_port:
                    server = MetricsServer(self.board, self.cfg.metrics_host, self.cfg.metrics_port)
                    metrics = tg.create_task(server.run(), name="ingest-metrics")
                await writer
                status.cancel()
                if metrics is not None:
                    metrics.cancel()
        finally:
            for sig in signals:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            self._status_line(final=True)
            for store in self.stores:
                await asyncio.to_thread(store.close)

    # --- MQTT ---------------------------------------------------------------------------

    def _options(self) -> LinkOptions:
        cfg = self.cfg
        context: ssl.SSLContext | None = None
        if cfg.tls:
            context = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH, cafile=str(cfg.ca_file) if cfg.ca_file else None
            )
            if cfg.cert_file is not None and cfg.key_file is not None:
                context.load_cert_chain(str(cfg.cert_file), str(cfg.key_file))
            if cfg.tls_insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        return LinkOptions(
            host=cfg.host,
            port=cfg.port,
            client_id=self.client_id,
            protocol="5",
            keepalive_s=cfg.keepalive_s,
            timeout_s=cfg.connect_timeout_s,
            inflight=20,
            session_expiry_s=cfg.session_expiry_s,
            max_packet_bytes=cfg.max_packet_bytes,
            will=None,
            username=cfg.username or None,
            password=(cfg.broker_password() or None) if cfg.username else None,
            tls_context=context,
            receive_maximum=cfg.effective_receive_maximum(),
        )

    async def _mqtt(self) -> None:
        cfg = self.cfg
        backoff = Retry(Backoff(cfg.backoff_min_s, cfg.backoff_max_s))
        filters = [f"$share/{cfg.group}/{f}" for f in cfg.topic_filters()]
        while not self._stop.is_set():
            wait = backoff.next_delay()
            try:
                options = await asyncio.to_thread(self._options)
            except (OSError, ssl.SSLError, ConfigError) as exc:
                self._give_up_or_log("mqtt_config", f"cannot load TLS files or password: {exc}")
                await self._sleep(cfg.auth_backoff_s)
                continue
            link = MqttLink(options, on_message=self._received, log=self.log)
            # A resumed session's queue arrives right after the CONNACK, before the SUBACK.
            self._rx_link = link
            try:
                resumed = await link.connect()
                # Even on a resumed session: mosquitto 2.0 does not restore shared
                # subscriptions from its persistence file after a restart.
                for topic in filters:
                    await self._subscribe(link, topic)
            except LinkError as exc:
                link.abort()
                if exc.failure in (Failure.AUTH, Failure.TLS, Failure.CONFIG):
                    wait = cfg.auth_backoff_s
                self.board.stage("mqtt").state = "backing_off"
                self.board.stage("mqtt").last_error = exc.reason
                self._give_up_or_log("mqtt_connect_failed", exc.reason, retry_in_s=round(wait, 2))
                await self._sleep(wait)
                continue
            backoff.reset()
            self._link = link
            self.counters.mqtt_connects += 1
            self.board.progress("mqtt")
            self.log.info(
                "ingest_subscribed",
                broker=f"{cfg.host}:{cfg.port}",
                client_id=self.client_id,
                session_resumed=resumed,
                topics=filters,
                receive_maximum=options.receive_maximum,
            )
            self._last_rx = time.monotonic()
            self._subscribed.set()
            stopping: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
            either: set[asyncio.Future[Any]] = {link.closed, stopping}
            try:
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
            if link.closed.done():
                error = link.closed.result()
                self._link = None
                self._subscribed.clear()
                self.counters.mqtt_losses += 1
                self.board.stage("mqtt").state = "backing_off"
                self.board.stage("mqtt").last_error = error.reason
                self._give_up_or_log("mqtt_lost", error.reason)
                self._wake.set()
                await self._sleep(backoff.next_delay())
                continue
            # Stopping: the writer stores (and acknowledges) what it can first.
            await self._writer_done.wait()
            await link.disconnect(2.0)
            self._link = None
            return

    async def _subscribe(self, link: MqttLink, topic: str) -> None:
        """Subscribe; LinkError(TIMEOUT) when no SUBACK came and nothing else either for
        `connect_timeout_s`. A resumed session's queue comes before the SUBACK, and reading a
        long one takes longer than any fixed deadline: while it flows, the wait goes on."""
        timeout = self.cfg.connect_timeout_s
        sub = asyncio.ensure_future(link.subscribe(topic, 1, 366 * 86400.0))
        try:
            while True:
                done, _ = await asyncio.wait({sub}, timeout=timeout)
                if done:
                    sub.result()
                    return
                if time.monotonic() - self._last_rx >= timeout:
                    raise LinkError(Failure.TIMEOUT, f"timeout: no SUBACK within {timeout:g} s")
        finally:
            sub.cancel()

    def _received(self, message: Incoming) -> None:
        received = datetime.fromtimestamp(self.clock(), UTC)
        self._last_rx = time.monotonic()
        self.counters.messages += 1
        link = self._rx_link
        if link is None:
            return
        parsed: Parsed | None = None
        rejected: Rejected | None = None
        try:
            if message.size > self.cfg.max_packet_bytes:
                raise Rejection(f"larger than max_packet_bytes ({message.size} bytes)")  # noqa: TRY301 - one path for every rejection
            parsed = parse_message(self.cfg.prefix, message.topic, message.payload, received)
        except Rejection as exc:
            device = _device_of(self.cfg.prefix, message.topic)
            rejected = Rejected(
                rejected_digest(message.topic, message.payload),
                received,
                message.topic,
                device,
                str(exc),
                message.payload,
            )
            self.log.warning(
                "ingest_rejected", topic=message.topic, reason=str(exc), bytes=message.size
            )
        if parsed is not None and parsed.skipped:
            self.counters.skipped += 1
            if not self._unacked:
                link.ack(message.mid, message.qos)
                return
        item = Item(
            link,
            message.mid,
            message.qos,
            message.topic,
            message.payload,
            received,
            parsed,
            rejected,
        )
        self._pending.append(item)
        self._unacked.append(item)
        self._pending_rows += item.rows
        if self._oldest is None:
            self._oldest = time.monotonic()
        if self._pending_rows >= self.cfg.batch_max_rows:
            self._wake.set()

    # --- writing ------------------------------------------------------------------------

    async def _writer(self) -> None:
        try:
            await self._write_loop()
        finally:
            for task in self._writing:
                task.cancel()
            self._writer_done.set()
            self.stop()

    async def _write_loop(self) -> None:
        cfg = self.cfg
        max_age = cfg.batch_max_age_ms / 1000
        idle = cfg.once_idle_ms / 1000
        backoff = self._db_retry
        while True:
            if self._stop.is_set():
                await self._settle()
                if self._pending and self.store.connected:
                    with contextlib.suppress(TimeoutError, DatabaseError):
                        async with asyncio.timeout(5.0):
                            await self._flush_once(self.store)
                return
            error = self._reap()
            if error is not None:
                # Every batch in flight ends before the retry, so theirs go back in order.
                error = await self._settle() or error
                await self._db_down(error, backoff)
                continue
            now = time.monotonic()
            ready = self._pending_rows >= cfg.batch_max_rows or (
                self._oldest is not None and now - self._oldest >= max_age
            )
            store = self._free_store() if ready else None
            if store is not None:
                if not store.connected:
                    try:
                        await asyncio.to_thread(store.connect)
                    except DatabaseError as exc:
                        await self._db_down(await self._settle() or exc, backoff)
                        continue
                    self.log.info("ingest_database_connected")
                batch = self._take()
                if batch:
                    task = asyncio.create_task(self._write(batch, store), name="ingest-batch")
                    task.add_done_callback(lambda _: self._wake.set())
                    self._writing[task] = (batch, store)
                continue
            if ready:
                timeout = 1.0  # every connection is busy: a batch's end wakes the loop
            elif self.once and self._subscribed.is_set() and not self._unacked:
                if now - self._last_rx >= idle:
                    self.log.info("ingest_drained", idle_s=idle)
                    return
                timeout = idle - (now - self._last_rx)
            elif self._oldest is not None:
                timeout = max_age - (now - self._oldest)
            else:
                timeout = idle if self.once else 1.0
            self._wake.clear()
            if any(task.done() for task in self._writing):
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.001, timeout)):
                    await self._wake.wait()

    def _free_store(self) -> Store | None:
        busy = {id(store) for _, store in self._writing.values()}
        for store in self.stores:
            if id(store) not in busy:
                return store
        return None

    def _reap(self) -> DatabaseError | None:
        """Take the results of the batches written: acknowledge what is stored (in arrival
        order), put back what is not (in arrival order, before what came since)."""
        error: DatabaseError | None = None
        failed: list[Item] = []
        for task in [t for t in self._writing if t.done()]:
            batch, _ = self._writing.pop(task)
            exc = task.exception()
            if exc is None:
                self._stored(batch, task.result())
                continue
            if not isinstance(exc, DatabaseError):
                raise exc
            error = exc
            failed.extend(batch)
        if failed:
            order = {id(item): k for k, item in enumerate(self._unacked)}
            failed.sort(key=lambda item: order.get(id(item), -1))
            self._pending.extendleft(reversed(failed))
            self._pending_rows += sum(item.rows for item in failed)
            self._oldest = time.monotonic()
        return error

    async def _settle(self) -> DatabaseError | None:
        """Wait for every batch being written and take their results."""
        if self._writing:
            await asyncio.wait(list(self._writing))
        return self._reap()

    def _stored(self, batch: list[Item], written: Written) -> None:
        committed = self.clock()
        for item in batch:
            item.stored = True
        unacked = self._unacked
        while unacked and unacked[0].stored:
            item = unacked.popleft()
            item.link.ack(item.mid, item.qos)
        self._account(batch, written, committed)
        self._db_retry.reset()
        self.board.progress("database")

    async def _db_down(self, exc: DatabaseError, backoff: Retry) -> None:
        self.counters.db_errors += 1
        wait = backoff.next_delay()
        self.board.stage("database").state = "backing_off"
        self.board.stage("database").last_error = str(exc)
        self._give_up_or_log(
            "ingest_database_down",
            str(exc),
            retry_in_s=round(wait, 2),
            pending_messages=len(self._pending),
        )
        await self._sleep(wait)

    def _take(self) -> list[Item]:
        batch: list[Item] = []
        rows = 0
        while self._pending and (
            not batch or rows + self._pending[0].rows <= self.cfg.batch_max_rows
        ):
            item = self._pending.popleft()
            rows += item.rows
            batch.append(item)
        self._pending_rows -= rows
        self._oldest = time.monotonic() if self._pending else None
        return batch

    async def _flush_once(self, store: Store) -> None:
        """Write one batch and acknowledge it; DatabaseError leaves it pending, in order."""
        batch = self._take()
        if not batch:
            return
        try:
            written = await self._write(batch, store)
        except BaseException:
            self._pending.extendleft(reversed(batch))
            self._pending_rows += sum(item.rows for item in batch)
            self._oldest = time.monotonic()
            raise
        self._stored(batch, written)

    async def _write(self, batch: list[Item], store: Store) -> Written:
        tables = tables_of(item.parsed for item in batch if item.parsed is not None)
        rejected = [item.rejected for item in batch if item.rejected is not None]
        try:
            return await asyncio.to_thread(store.write, tables, rejected)
        except BadRowsError as exc:
            self.counters.bad_batches += 1
            self.log.warning("ingest_batch_split", reason=str(exc), messages=len(batch))
        total = Written()
        for item in batch:
            one = await self._write_alone(item, store)
            total.offered += one.offered
            total.inserted += one.inserted
            total.rejected += one.rejected
        return total

    async def _write_alone(self, item: Item, store: Store) -> Written:
        if item.parsed is not None:
            try:
                return await asyncio.to_thread(store.write, tables_of([item.parsed]), [])
            except BadRowsError as exc:
                item.rejected = Rejected(
                    rejected_digest(item.topic, item.payload),
                    item.received,
                    item.topic,
                    _device_of(self.cfg.prefix, item.topic),
                    str(exc)[:500],
                    item.payload,
                )
                item.parsed = None
                self.log.warning("ingest_rejected", topic=item.topic, reason=str(exc))
        assert item.rejected is not None
        return await asyncio.to_thread(store.write, {}, [item.rejected])

    def _account(self, batch: list[Item], written: Written, committed: float) -> None:
        c = self.counters
        c.batches += 1
        c.rows += written.inserted
        c.duplicates += written.offered - written.inserted
        rejected = sum(1 for item in batch if item.rejected is not None)
        c.rejected += rejected
        iv = self._interval
        iv.rows += written.inserted
        iv.messages += len(batch)
        iv.rejected += rejected
        for item in batch:
            if item.parsed is not None:
                for t in item.parsed.fix_times:
                    lag = committed - t
                    iv.lags.append(lag)
                    iv.lag_max = max(iv.lag_max, lag)

    # --- status -------------------------------------------------------------------------

    async def _status(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.status_interval_s)
            self._status_line()

    def _status_line(self, *, final: bool = False) -> None:
        iv = self._interval
        now = time.monotonic()
        span = max(now - iv.started, 1e-6)
        self._last_rate = round(iv.rows / span, 1)
        lag_p50 = statistics.median(iv.lags) if iv.lags else None
        self._last_lag = round(lag_p50, 3) if lag_p50 is not None else 0.0
        fields: dict[str, Any] = {
            "rows_per_s": self._last_rate,
            "messages_per_s": round(iv.messages / span, 1),
            "lag_p50_s": None if lag_p50 is None else round(lag_p50, 3),
            "lag_max_s": round(iv.lag_max, 3) if iv.lags else None,
            "rejected": iv.rejected,
            "pending": len(self._pending),
            "database": "up" if self._db_connected else "down",
            "mqtt": "up" if self._link is not None else "down",
            "totals": self.counters.as_dict(),
        }
        self.log.info("ingest_stopped" if final else "ingest_status", **fields)
        self._interval = _Interval(now)

    # --- helpers ------------------------------------------------------------------------

    @property
    def _db_connected(self) -> bool:
        return any(store.connected for store in self.stores)

    def _give_up_or_log(self, event: str, reason: str, **fields: Any) -> None:
        if self.once:
            # A script waits for an answer: say why and stop (nothing unstored was acknowledged).
            self.failure = f"{event}: {reason}"
            self.log.error(event, reason=reason, **fields)
            self.stop()
            return
        self.log.warning(event, reason=reason, **fields)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()


def _device_of(prefix: str, topic: str) -> str | None:
    levels = topic.split("/")
    n = prefix.count("/") + 1
    if len(levels) > n and "/".join(levels[:n]) == prefix and levels[n]:
        return levels[n][:200]
    return None
