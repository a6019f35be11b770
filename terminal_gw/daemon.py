"""The daemon: stages wired into one supervisor (`terminal-gw run`).

The daemon composes stages that live in their own modules: gnss (`gnss.stage`: serial ->
pipeline -> reporting policy), modem (SMS in, signal, registration) and rdss feed the outbox,
as does the daemon's event queue; the uplink drains it and hands downlink commands to the
command runner, which sends SMS through the modem; the daemon's status stage writes the local
status file and refreshes the retained status topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from structlog.typing import FilteringBoundLogger

from terminal_gw.clock import ClockWatch
from terminal_gw.commands import CommandRunner, CommandStore
from terminal_gw.commands.link import link_set_spec
from terminal_gw.config import Config, load_config
from terminal_gw.errors import (
    ConfigError,
    ModemError,
    OutboxFullError,
    StoreError,
    TransportError,
)
from terminal_gw.fallback import FallbackSender, ShoreSink
from terminal_gw.gnss.stage import GnssStage
from terminal_gw.logs import get_logger
from terminal_gw.models import Event, Payload, Status, iso_utc, make_event
from terminal_gw.modem.sms import SubmitPdu
from terminal_gw.modem.tiantong import TiantongModem
from terminal_gw.outbox import CLASS_PRIORITY, Outbox
from terminal_gw.rdss.command import bds_send_spec
from terminal_gw.rdss.driver import RdssDriver
from terminal_gw.rdss.store import RdssStore
from terminal_gw.sdnotify import Notifier
from terminal_gw.serve import Serving
from terminal_gw.status import MetricsServer, StatusBoard, StatusFile
from terminal_gw.supervisor import Stage, Supervisor
from terminal_gw.topics import Topics
from terminal_gw.transport.capture import CaptureWriter, Direction
from terminal_gw.transport.playback import RecordingPort
from terminal_gw.transport.port import Port
from terminal_gw.transport.serial import SerialPort
from terminal_gw.uplink import LinkState, Uplink

#: Events waiting for the outbox; beyond this they are counted and dropped (a flood guard).
EVENT_QUEUE_MAX = 10_000
#: The longest the GNSS stage's next read waits for PUBACKs (`Daemon.pace_input`): a few
#: round trips on a good link. At 20,000 lines/s, 5 ms kept every record off the disk and cost
#: less CPU than 20 ms (longer waits let the input pile up into bursts).
PACE_MAX_S = 0.005


#: +CMS ERROR 302, "operation not allowed": a permanent failure, so an SMS is not retried.
_NOT_ALLOWED = 302


class NoModem:
    """Stands in for the modem when `[modem] port = "none"`: every send fails for good."""

    async def send_sms(self, pdus: Sequence[SubmitPdu]) -> list[int]:
        """Refuse: there is no modem to send with."""
        raise ModemError(
            "no modem configured ([modem] port = none)",
            code=_NOT_ALLOWED,
            reason="no modem configured",
        )

    async def poll_now(self) -> None:
        """Refuse: there is no modem to poll."""
        raise ModemError("no modem configured ([modem] port = none)", reason="no modem")


class TapWriter(CaptureWriter):
    """The daemon's capture tap: a capture that cannot be written (full disk) is counted and
    logged, and never stops the port it records."""

    errors = 0

    def write(self, port: str, direction: Direction, data: bytes, ts: float | None = None) -> None:
        """Append one chunk, or count the failure."""
        try:
            super().write(port, direction, data, ts)
        except (TransportError, OSError) as exc:
            self.errors += 1
            get_logger("record").warning("capture write failed", error=str(exc))


class CountingSink:
    """The outbox as the modem and the command runner see it: every record accepted is
    counted by class (the health report's "records in"); refusals reach the caller."""

    def __init__(self, outbox: Outbox, counts: Counter[str]) -> None:
        self.outbox = outbox
        self.counts = counts

    async def put(
        self, topic: str, payload: Payload, *, retain: bool = False, sync: bool | None = None
    ) -> None:
        """Store through the outbox and count it."""
        try:
            await self.outbox.put(topic, payload, retain=retain, sync=sync)
        except StoreError:
            self.counts[f"refused_{payload.record_class}"] += 1
            raise
        except asyncio.CancelledError:
            # Cancelled (a shutdown) while the commit its record triggered ran: the record
            # is in and will be committed, so it is counted as accepted.
            if self.outbox.took(payload.id):
                self.counts[payload.record_class] += 1
            raise
        self.counts[payload.record_class] += 1


class Daemon:
    """Everything `terminal-gw run` runs, for one config."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: Path | None = None,
        notifier: Notifier | None = None,
        log: FilteringBoundLogger | None = None,
        extra_stages: list[Stage] | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.log = log or get_logger("daemon")
        self.topics = Topics.of_config(config)
        self.board = StatusBoard(config.device.id, stall_s=config.status.stall_s)
        self.status_file = StatusFile(config.status.path)
        self.supervisor = Supervisor(
            self.board,
            events=self.emit,
            notifier=notifier,
            backoff_min_s=config.daemon.restart_backoff_min_s,
            backoff_max_s=config.daemon.restart_backoff_max_s,
        )
        self.extra_stages = extra_stages or []
        self.clock = ClockWatch(config.clock.skew_threshold_s, config.clock.chrony_socket)
        # The receiver served to the tools on board (gpsd protocol, NMEA out); off by default.
        self.serving = Serving(config, bps=self._gnss_bps)
        self.outbox = Outbox(config.outbox, events=self.emit, log=get_logger("outbox"))
        self.records_in: Counter[str] = Counter()
        self.sink: CountingSink | ShoreSink = CountingSink(self.outbox, self.records_in)
        # A shore station: track reports received from known senders become their fixes.
        self.fallback_counters: Counter[str] = Counter()
        if config.fallback.senders:
            self.sink = ShoreSink(
                self.sink,
                prefix=config.mqtt.prefix,
                senders=config.fallback.senders,
                counters=self.fallback_counters,
                log=get_logger("fallback"),
            )
        self.gnss = GnssStage(
            config.gnss,
            self.sink,
            topics=self.topics,
            clock=self.clock,
            events=self.emit,
            counts=self.records_in,
            observers=self.serving.payload_observers,
            sentence_observers=self.serving.sentence_observers,
            binary_observers=self.serving.binary_observers,
            capture=self.capture_writer,
            on_progress=lambda: self.board.progress("gnss"),
            pace=self.pace_input,
            log=self.log,
        )
        self.modem: TiantongModem | None = None
        if config.modem.port != "none":
            self.modem = TiantongModem(
                config.modem,
                self.sink,
                topics=self.topics,
                events=self.emit,
                on_progress=lambda: self.board.progress("modem"),
                port_factory=self._open_modem_port,
                log=get_logger("modem"),
                parts_path=config.outbox.path.parent / "sms_parts.db",
            )
            # Messages left on the SIM while the store could not take them: at once.
            self.outbox.on_recovered(self.modem.collect_now)
        self.command_store = CommandStore(config.commands.path)
        self.commands = CommandRunner(
            config,
            self.command_store,
            self.sink,
            self.modem if self.modem is not None else NoModem(),
            log=get_logger("commands"),
        )
        self.uplink = Uplink(
            config,
            self.outbox,
            events=self.emit,
            health=self.health_summary,
            on_command=self.commands.handle,
            log=get_logger("uplink"),
        )
        self.commands.responder = self.uplink
        # BeiDou short messages: the driver, its send queue, and the bds/send command.
        self.rdss: RdssDriver | None = None
        if config.rdss.port != "none":
            state_dir = config.outbox.path.parent
            self.rdss = RdssDriver(
                config.rdss,
                self.sink,
                RdssStore(config.rdss.path or state_dir / "rdss.db"),
                topics=self.topics,
                state_dir=state_dir,
                events=self.emit,
                on_progress=lambda: self.board.progress("rdss"),
                tap=self._rdss_tap if config.rdss.record else None,
                log=get_logger("rdss"),
            )
            self.commands.commands["bds/send"] = bds_send_spec(self.rdss)
        self.commands.commands["link/set"] = link_set_spec(self.uplink)
        # Positions over short messages while MQTT is unreachable ([fallback]).
        self.fallback: FallbackSender | None = None
        if config.fallback.channel != "none":
            self.fallback = FallbackSender(
                config.fallback,
                connected=lambda: self.uplink.state is LinkState.CONNECTED,
                rdss=self.rdss,
                sms=self.commands,
                state_path=config.outbox.path.parent / "fallback.json",
                events=self.emit,
                log=get_logger("fallback"),
            )
            self.gnss.fix_observers.append(self.fallback.observe)
        self.recorder: TapWriter | None = None
        self._events: asyncio.Queue[Event] = asyncio.Queue(EVENT_QUEUE_MAX)
        self._register_health()

    # --- records --------------------------------------------------------------------------

    def records_stored(self) -> int:
        """Records accepted into the outbox since start, all classes."""
        return sum(n for cls, n in self.records_in.items() if cls in CLASS_PRIORITY)

    def emit(self, event: Event) -> None:
        """Queue an event for the outbox; never blocks (a flood past the queue is counted)."""
        try:
            self._events.put_nowait(event)
        except asyncio.QueueFull:
            self.records_in["event_dropped_queue_full"] += 1

    async def store(self, payload: Payload, *, retain: bool = False) -> bool:
        """Put a record into the outbox; False (counted, logged) when it was refused."""
        try:
            await self.sink.put(self.topics.of(payload), payload, retain=retain)
        except OutboxFullError as exc:
            self.log.warning("outbox refused a record", cls=payload.record_class, reason=str(exc))
            return False
        except StoreError as exc:
            self.log.error("outbox cannot store", cls=payload.record_class, reason=str(exc))
            return False
        return True

    async def pace_input(self) -> None:
        """After a chunk of receiver input: while the link is up and the records held in
        memory reach half a commit (`outbox.commit_bytes`), wait for PUBACKs to take some
        off, `PACE_MAX_S` at most. Input faster than the link takes it (a receiver's
        backlog, a replay) then waits in the port's buffer for a few ms instead of going to
        disk only to be deleted a moment later; records that stay undelivered are committed
        as always."""
        outbox, uplink = self.outbox, self.uplink
        limit = self.config.outbox.commit_bytes // 2
        if outbox.held_bytes < limit or uplink.state is not LinkState.CONNECTED:
            return
        until = time.monotonic() + PACE_MAX_S
        while outbox.held_bytes >= limit and uplink.state is LinkState.CONNECTED:
            left = until - time.monotonic()
            if left <= 0:
                return
            await uplink.wait_acked(left)

    # --- stages ---------------------------------------------------------------------------

    def _gnss_bps(self) -> int | None:
        port = self.gnss.port
        return None if port is None else port.baud

    def capture_writer(self, port: str) -> TapWriter | None:
        """The daemon's capture file: every port with `record = true` writes into this one
        file, so a GNSS and modem session replays together. None (with an event) when it
        cannot be created: recording never stops a port."""
        if self.recorder is None:
            rec = self.config.record
            name = time.strftime("session-%Y%m%dT%H%M%SZ.cap", time.gmtime())
            try:
                rec.dir.mkdir(parents=True, exist_ok=True)
                self.recorder = TapWriter(rec.dir / name, max_bytes=rec.max_bytes, keep=rec.keep)
            except (TransportError, OSError) as exc:
                self.emit(
                    make_event(
                        "record",
                        f"cannot record {port}: {exc}",
                        now=time.time(),
                        severity="warning",
                        port=port,
                        dir=str(rec.dir),
                    )
                )
                return None
        return self.recorder

    async def _open_modem_port(self) -> Port:
        """The modem's port: the configured serial device, recorded when `[modem] record`."""
        port = await SerialPort.open(self.config.modem.port, self.config.modem.baud)
        writer = self.capture_writer("modem") if self.config.modem.record else None
        return port if writer is None else RecordingPort(port, writer, name="modem")

    def _rdss_tap(self, direction: Direction, data: bytes, ts: float) -> None:
        writer = self.capture_writer("rdss")
        if writer is not None:
            writer.write("rdss", direction, data, ts)

    async def rdss_stage(self) -> None:
        """The BeiDou short-message terminal: card, beams, messages in, the send queue."""
        assert self.rdss is not None
        await self.rdss.run()

    async def events_stage(self) -> None:
        """Move queued events into the outbox."""
        while True:
            event = await self._events.get()
            await self.store(event)
            self.board.progress("events")

    async def outbox_stage(self) -> None:
        """The outbox's timed commits, retries, age limits and reports."""
        await self.outbox.run(on_progress=lambda: self.board.progress("outbox"))

    async def modem_stage(self) -> None:
        """The Tiantong modem: init, polls, SMS in, recovery ladder."""
        assert self.modem is not None
        await self.modem.run()

    async def commands_stage(self) -> None:
        """Downlink commands' SMS send queue."""
        await self.commands.run()

    async def uplink_stage(self) -> None:
        """The MQTT session."""
        await self.uplink.run()

    async def status_stage(self) -> None:
        """Write the local status file; refresh the retained status topic now and then."""
        cfg = self.config.status
        next_publish = time.monotonic() + cfg.publish_interval_s
        problems: dict[str, str] = {}
        while True:
            self._liveness()
            snapshot = self.board.snapshot()
            if snapshot["problems"] != problems:
                # A problem found or gone (disk full, read-only): the retained status says so
                # now, not at the next refresh.
                problems = snapshot["problems"]
                next_publish = 0.0
            number = self.status_file.take()
            try:
                await asyncio.to_thread(self.status_file.write, snapshot, number)
            except OSError as exc:
                self.log.warning("cannot write status file", path=str(cfg.path), error=str(exc))
            if time.monotonic() >= next_publish:
                next_publish = time.monotonic() + cfg.publish_interval_s
                await self.store(self.status_payload("online"), retain=True)
            self.board.progress("status")
            await asyncio.sleep(cfg.interval_s)

    def _liveness(self) -> None:
        # Stages that wait on the outside world are alive while they wait: the gnss stage
        # while its port is down or reopening (the port reports why), the others while their
        # task runs (each wait inside them has its own timeout). The outbox and the modem
        # report their own progress, so a disk write or a modem that hangs is seen.
        if self.gnss.port_down():
            self.board.progress("gnss")
        for name in ("uplink", "events", "metrics", "commands", *self.serving.stage_names()):
            info = self.board.stages.get(name)
            if info is not None and info.state == "running":
                self.board.progress(name)

    async def metrics_stage(self) -> None:
        """Prometheus metrics on localhost (when configured)."""
        cfg = self.config.status
        await MetricsServer(self.board, cfg.metrics_host, cfg.metrics_port).run()

    # --- health ---------------------------------------------------------------------------

    def _register_health(self) -> None:
        b = self.board
        b.add_counters("sentences", lambda: self.gnss.pipeline.counters)
        b.add_counters("records_in", lambda: self.records_in)
        b.add_counters("uplink", self.uplink.counters.as_dict)
        b.add_gauge("link_profile", self.uplink.link_summary)
        b.add_counters("commands", lambda: self.commands.counters)
        if self.fallback is not None or self.config.fallback.senders:
            fb = self.fallback
            b.add_counters(
                "fallback",
                lambda: self.fallback_counters + (fb.counters if fb is not None else Counter()),
            )
        if self.serving.stages():
            b.add_counters("serve", self.serving.counters)
        if self.modem is not None:
            modem = self.modem
            b.add_counters("modem", lambda: modem.counters)
            b.add_gauge("modem", lambda: f"{modem.state}: {modem.reason}")
            b.add_gauge("modem_rssi", lambda: modem.rssi)
            b.add_gauge("modem_registration", lambda: modem.reg)
        if self.rdss is not None:
            rdss = self.rdss
            b.add_counters("rdss", lambda: rdss.counters)
            b.add_counters("rdss_framer", lambda: rdss.framer.counters)
            b.add_gauge("rdss", rdss.summary)
            b.add_gauge("rdss_beams_ok", rdss.beams_ok)
            b.add_gauge("rdss_sends_today", lambda: rdss.sends_today)
            b.add_gauge(
                "rdss_next_send",
                lambda: None if rdss.next_send is None else iso_utc(rdss.next_send),
            )
        b.add_gauge("outbox_depth", lambda: self.outbox.depth)
        b.add_gauge("outbox_oldest_age_s", self._outbox_age)
        b.add_gauge("outbox_error", lambda: self.outbox.store_error)
        b.add_gauge("outbox_limit_bytes", lambda: self.outbox.limit_bytes)
        b.add_gauge("outbox_disk_free_bytes", lambda: self.outbox.disk_free_bytes)
        b.add_check("outbox", lambda: self.outbox.health_problem)
        b.add_gauge("link", lambda: str(self.uplink.state))
        b.add_gauge("link_reason", lambda: self.uplink.state_reason)
        gnss = self.gnss
        b.add_gauge("last_fix_age_s", gnss.fix_age)
        b.add_gauge("last_fix_mode", lambda: None if gnss.last_fix is None else gnss.last_fix.mode)
        b.add_gauge("clock_offset_s", self._clock_offset)
        b.add_gauge("gnss_port", gnss.port_state)
        b.add_gauge(
            "capture_errors", lambda: None if self.recorder is None else self.recorder.errors
        )

    def _outbox_age(self) -> float | None:
        age = self.outbox.oldest_age_s()
        return None if age is None else round(age, 1)

    def _clock_offset(self) -> float | None:
        off = self.clock.offset_s
        return None if off is None else round(off, 3)

    def health_summary(self) -> dict[str, Any]:
        """The health summary carried by the retained status topic."""
        snap = self.board.snapshot()
        for key in ("pid", "updated", "device"):
            snap.pop(key, None)
        return snap

    def status_payload(self, state: str) -> Status:
        """A Status payload stamped with GNSS-corrected time when known."""
        now = self.clock.corrected(time.time())
        return Status(
            time=iso_utc(now),
            state="online" if state == "online" else "offline",
            health=self.health_summary(),
            clock="gnss" if self.clock.source == "gnss" else "system",
        )

    # --- life -----------------------------------------------------------------------------

    def stages(self) -> list[Stage]:
        """The stages this config runs."""
        stages = [
            Stage("outbox", self.outbox_stage),
            Stage("events", self.events_stage),
            Stage("uplink", self.uplink_stage),
            Stage("status", self.status_stage),
        ]
        if self.config.gnss.port != "none":
            stages.insert(0, Stage("gnss", self.gnss.run, input=True))
        if self.modem is not None:
            stages.insert(0, Stage("modem", self.modem_stage, input=True))
        if self.rdss is not None:
            stages.insert(0, Stage("rdss", self.rdss_stage, input=True))
        stages.append(Stage("commands", self.commands_stage, input=True))
        if self.fallback is not None:
            stages.append(Stage("fallback", self.fallback.run))
        if self.config.status.metrics_port:
            stages.append(Stage("metrics", self.metrics_stage))
        return stages + self.serving.stages() + self.extra_stages

    async def on_stopping(self) -> None:
        """Shutdown: keep what the pipeline holds, commit, publish offline, disconnect."""
        await self.gnss.flush(time.time())
        while not self._events.empty():
            await self.store(self._events.get_nowait())
        with contextlib.suppress(StoreError):
            await self.outbox.flush()
        await self.uplink.stop(timeout=max(0.5, self.config.daemon.shutdown_timeout_s - 1.0))

    async def on_reload(self) -> None:
        """SIGHUP: re-read the config; apply what is safe, report what needs a restart."""
        if self.config_path is None:
            return
        try:
            new = await asyncio.to_thread(load_config, self.config_path)
        except ConfigError as exc:
            problems = [f"{loc}: {msg}" for loc, msg in exc.problems]
            self.log.error("reload refused: config invalid", problems=problems)
            self.emit(
                make_event(
                    "config_reload",
                    "new config is invalid; keeping the running one",
                    now=time.time(),
                    severity="error",
                    problems=problems,
                )
            )
            return
        applied: list[str] = []
        if new.gnss.reporting != self.config.gnss.reporting:
            self.gnss.set_reporting(new.gnss.reporting)
            applied.append("gnss.reporting")
        if new.clock.skew_threshold_s != self.config.clock.skew_threshold_s:
            self.clock.threshold_s = new.clock.skew_threshold_s
            applied.append("clock.skew_threshold_s")
        needs_restart = _changed_sections(self.config, new, ignore=set(applied))
        self.config = self.config.model_copy(
            update={
                "gnss": self.config.gnss.model_copy(update={"reporting": new.gnss.reporting}),
                "clock": self.config.clock.model_copy(
                    update={"skew_threshold_s": new.clock.skew_threshold_s}
                ),
            }
        )
        self.log.info("config reloaded", applied=applied, needs_restart=needs_restart)
        self.emit(
            make_event(
                "config_reload",
                "config reloaded"
                + (f"; restart to apply {', '.join(needs_restart)}" if needs_restart else ""),
                now=time.time(),
                severity="warning" if needs_restart else "info",
                applied=applied,
                needs_restart=needs_restart,
            )
        )

    def _warn_if_no_device(self) -> None:
        """With both device ports "none" nothing is read: say so, in the log and as an event."""
        ports = (self.config.gnss.port, self.config.modem.port, self.config.rdss.port)
        if any(port != "none" for port in ports):
            return
        message = (
            'no device stage runs: [gnss] port and [modem] port are both "none", so nothing is'
            " read; set a port (e.g. /dev/beidou0) to forward positions or SMS"
        )
        self.log.warning(message)
        self.emit(
            make_event(
                "no_devices",
                message,
                now=time.time(),
                severity="warning",
                gnss=self.config.gnss.port,
                modem=self.config.modem.port,
            )
        )

    async def run(self, *, handle_signals: bool = True) -> None:
        """Open the outbox, run every stage until stopped, close cleanly."""
        for path in (
            self.config.outbox.path.parent,
            self.config.status.path.parent,
            self.config.commands.path.parent,
        ):
            path.mkdir(parents=True, exist_ok=True)
        await self.outbox.open()
        try:
            await self.command_store.open()
            if self.rdss is not None:
                await self.rdss.open()
        except StoreError:
            await self.command_store.close()
            await self.outbox.close()
            raise
        self.log.info(
            "terminal-gw starting",
            device=self.config.device.id,
            gnss=self.config.gnss.port,
            modem=self.config.modem.port,
            broker=f"{self.config.mqtt.host}:{self.config.mqtt.port}",
        )
        self._warn_if_no_device()
        try:
            await self.supervisor.run(
                self.stages(),
                on_reload=self.on_reload,
                on_stopping=self.on_stopping,
                shutdown_timeout_s=self.config.daemon.shutdown_timeout_s,
                handle_signals=handle_signals,
            )
        finally:
            await self.command_store.close()
            if self.rdss is not None:
                await self.rdss.close()
            await self.outbox.close()
            self.clock.close()
            if self.recorder is not None:
                self.recorder.close()
            with contextlib.suppress(OSError):
                snapshot = self.board.snapshot()
                snapshot["healthy"] = False
                snapshot["stopped"] = True
                self.status_file.write(snapshot, self.status_file.take())
            self.log.info("terminal-gw stopped")


def _changed_sections(old: Config, new: Config, ignore: set[str]) -> list[str]:
    """Dotted names of settings that differ, except those in `ignore`."""
    changed: list[str] = []
    a = old.model_dump()
    b = new.model_dump()
    for section, values in b.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            name = f"{section}.{key}"
            if name in ignore or any(i.startswith(name + ".") for i in ignore):
                continue
            if a.get(section, {}).get(key) != value:
                changed.append(name)
    return changed
