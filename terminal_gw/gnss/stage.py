"""The GNSS stage: the receiver's port, the pipeline, and where each record goes.

One chunk read from the receiver goes, all in this module: the capture tap, the pipeline
(framer, decoder, assembler), the id derived from the device and the GNSS time, the local
servers (gpsd, NMEA out) and the fallback's track, the clock check (a skew event), the
reporting policy, and the record sink (the outbox). The daemon builds it, runs `run()` as its
"gnss" stage and calls `flush()` at shutdown, like the modem's driver.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable

import structlog
from structlog.typing import FilteringBoundLogger

from terminal_gw.clock import ClockWatch
from terminal_gw.config import GnssConfig, ReportingConfig
from terminal_gw.errors import OutboxFullError, StoreError
from terminal_gw.gnss.framer import BinaryFrame, Framer, Sentence
from terminal_gw.gnss.pipeline import GnssPipeline
from terminal_gw.gnss.policy import ReportingPolicy
from terminal_gw.logs import get_logger
from terminal_gw.models import EventSink, Fix, Payload, RecordSink
from terminal_gw.topics import Topics
from terminal_gw.transport.capture import CaptureWriter
from terminal_gw.transport.serial import COALESCE_S, PortState, ReconnectingPort, Validator
from terminal_gw.uplink.compact import derive_id

__all__ = ["GnssStage", "framer_validator"]


def framer_validator(config: GnssConfig) -> Validator:
    """A fresh check for auto-baud: True once a checksum-valid sentence or binary frame
    (UBX, CASIC) framed."""
    framer = Framer(max_sentence_len=config.max_sentence_len, allow_no_checksum=False)

    def valid(chunk: bytes) -> bool:
        framer.feed(chunk)
        c = framer.counters
        return c.get("good", 0) + c.get("ubx_good", 0) + c.get("casic_good", 0) > 0

    return valid


class GnssStage:
    """The receiver: `run()` in the supervisor's TaskGroup; `flush()` at shutdown; `last_fix`,
    `fix_age()` and `port_state()` for the health report."""

    def __init__(
        self,
        config: GnssConfig,
        sink: RecordSink,
        *,
        topics: Topics,
        clock: ClockWatch,
        events: EventSink,
        counts: Counter[str] | None = None,
        observers: Iterable[Callable[[Payload], None]] = (),
        sentence_observers: Iterable[Callable[[Sentence], None]] = (),
        binary_observers: Iterable[Callable[[BinaryFrame], None]] = (),
        capture: Callable[[str], CaptureWriter | None] | None = None,
        on_progress: Callable[[], None] | None = None,
        pace: Callable[[], Awaitable[None]] | None = None,
        log: FilteringBoundLogger | None = None,
    ) -> None:
        self.config = config
        self._sink = sink
        self.topics = topics
        self.clock = clock
        self._events = events
        #: Records the policy thinned, by class (`fix_thinned_by_policy`): the daemon's
        #: "records in" counters.
        self.counts: Counter[str] = Counter() if counts is None else counts
        self._capture = capture
        self._on_progress = on_progress
        #: Awaited after each chunk's records were stored: the daemon holds the next read back
        #: while the uplink catches up (`Daemon.pace_input`).
        self._pace = pace
        self._log: FilteringBoundLogger = log or structlog.get_logger("terminal_gw.gnss")
        self.policy = ReportingPolicy(config.reporting)
        self.pipeline = GnssPipeline(
            max_sentence_len=config.max_sentence_len,
            allow_no_checksum=config.allow_no_checksum,
            prefer=config.prefer,
        )
        # The receiver served to the tools on board: every epoch reaches them, before the
        # reporting policy. Nothing is hooked when no server is on.
        self.pipeline.sentence_observers.extend(sentence_observers)
        self.pipeline.binary_observers.extend(binary_observers)
        #: Called with every fix and sky (id derived), before the reporting policy.
        self.observers: list[Callable[[Payload], None]] = list(observers)
        #: Called with every fix, after `observers` (the fallback's track).
        self.fix_observers: list[Callable[[Fix], None]] = []
        if not self.observers:
            # Only the reporting policy reads sky views: build one only when it would go out.
            self.pipeline.assembler.sky_wanted = lambda: self.policy.sky_due(time.monotonic())
        self.port: ReconnectingPort | None = None
        self.last_fix: Fix | None = None
        self.last_fix_mono: float | None = None

    def set_reporting(self, config: ReportingConfig) -> None:
        """A new reporting policy (a reload): it starts afresh."""
        self.config = self.config.model_copy(update={"reporting": config})
        self.policy = ReportingPolicy(config)

    async def run(self) -> None:
        """Read the receiver until cancelled: frame, decode, assemble, report."""
        cfg = self.config
        port = ReconnectingPort(
            cfg.port,
            cfg.baud,
            name="gnss",
            validator=lambda: framer_validator(cfg),
            init=cfg.init,
            stale_after_s=cfg.stale_after_s,
            events=self._events,
            log=get_logger("serial", port="gnss"),
            coalesce_s=COALESCE_S,  # a wake-up per few lines, not per line
        )
        self.port = port
        recorder = self._capture("gnss") if cfg.record and self._capture is not None else None
        pipeline = self.pipeline
        async with port:
            while True:
                chunk = await port.read()
                now = time.time()
                if recorder is not None:
                    recorder.write("gnss", "<", chunk, now)
                before = pipeline.last_valid_sentence
                records = pipeline.feed(chunk, now)
                if pipeline.last_valid_sentence != before:
                    port.mark_alive()
                for payload in records:
                    await self.accept(payload, now)
                if self._on_progress is not None:
                    self._on_progress()
                # One chunk a pass of the event loop: when the port always has more (input
                # faster than real time), the uplink's PUBACKs and sends still interleave.
                await asyncio.sleep(0)
                if self._pace is not None:
                    await self._pace()

    async def flush(self, now: float) -> None:
        """Shutdown: the epoch the pipeline still holds, reported like any other."""
        for payload in self.pipeline.flush(now):
            await self.accept(payload, now)

    async def accept(self, payload: Payload, now: float) -> None:
        """A record of the pipeline (`now`: the system time it was read at): observers, clock
        check, reporting policy, the sink."""
        # A fix or sky with a GNSS time gets the id derived from the device and that time
        # (stable, and free in a compact batch); untimed ones keep their random id.
        payload = derive_id(payload, self.topics.device)
        for observe in self.observers:
            observe(payload)
        if isinstance(payload, Fix):
            self.last_fix_mono = time.monotonic()
            self.last_fix = payload
            for see in self.fix_observers:
                see(payload)
            event = self.clock.observe(payload, now)
            if event is not None:
                self._events(event)
        if self.policy.should_report(payload, time.monotonic()):
            await self._store(payload)
        else:
            self.counts[f"{payload.record_class}_thinned_by_policy"] += 1

    async def _store(self, payload: Payload) -> None:
        try:
            await self._sink.put(self.topics.of(payload), payload)
        except OutboxFullError as exc:
            self._log.warning("outbox refused a record", cls=payload.record_class, reason=str(exc))
        except StoreError as exc:
            self._log.error("outbox cannot store", cls=payload.record_class, reason=str(exc))

    # --- health ---------------------------------------------------------------------------

    def port_down(self) -> bool:
        """Whether the port is down or reopening (the stage is waiting on it, not stalled)."""
        return self.port is not None and self.port.state is not PortState.OPEN

    def port_state(self) -> str | None:
        """The port's state and why, once the stage has started."""
        port = self.port
        return None if port is None else f"{port.state}: {port.reason}"

    def fix_age(self) -> float | None:
        """Seconds since the last fix (reported or not), to 0.1 s."""
        if self.last_fix_mono is None:
            return None
        return round(time.monotonic() - self.last_fix_mono, 1)
