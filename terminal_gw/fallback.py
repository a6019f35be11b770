"""Positions over BeiDou short messages when there is no IP link, and their shore side.

Vessel side (`FallbackSender`, a daemon stage): when the MQTT uplink has not been connected for
`fallback.after_s`, every `fallback.interval_s` the track since the last report (fixes seen by
the GNSS stage) goes as one track report (`terminal_gw.wire.track`: an error-bounded
simplification within `max_error_m`, the newest part that fits) to `fallback.to`, through the
RDSS driver's durable, paced send queue and its cost guard, sized for the card's capacity (the
driver says it). At most `max_per_day` reports a UTC day, counted in `fallback.json` beside the
outbox so a restart keeps counting.

Shore side (`ShoreSink`, around the daemon's record sink): a received short message (`bds/rx`,
its content as `data`) or SMS (`sms/rx`, a report as base64 text) that is a track report from a
sender in `fallback.senders` also becomes fixes of that sender's device, published on
`{prefix}/{device}/gnss/fix` with `source` ("bds:<sender>" or "sms:<sender>") saying how they
came; ids are derived from device and time, so a report received twice gives the same fixes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import time
from collections import Counter, deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import structlog
from structlog.typing import FilteringBoundLogger

from terminal_gw.config import FallbackConfig
from terminal_gw.errors import CommandError, StoreError
from terminal_gw.models import (
    BdsReceived,
    EventSink,
    Fix,
    Payload,
    RecordSink,
    ReportedFix,
    SmsReceived,
    make_event,
    new_id,
)
from terminal_gw.rdss.driver import RdssDriver
from terminal_gw.topics import Topics
from terminal_gw.wire.track import (
    SMS_BYTES,
    Point,
    ReportError,
    decode_report,
    encode_report,
    is_report,
    points_from_fixes,
    report_fixes,
)

__all__ = [
    "SMS_REPORT_BYTES",
    "FallbackSender",
    "ReportedFix",
    "ShoreSink",
    "SmsQueue",
    "report_of",
]

#: A report as base64 in one 7-bit SMS: 160 characters carry 120 bytes.
SMS_REPORT_BYTES = SMS_BYTES * 8 // 7 // 4 * 3


def report_of(payload: Payload) -> tuple[str, str, bytes] | None:
    """(channel, sender, report bytes) when a received message is a track report."""
    if isinstance(payload, BdsReceived) and payload.data:
        try:
            raw = bytes.fromhex(payload.data)
        except ValueError:
            return None
        return ("bds", payload.sender, raw) if is_report(raw) else None
    if isinstance(payload, SmsReceived) and payload.type is None:
        raw = b""
        if payload.data:
            with contextlib.suppress(ValueError):
                raw = bytes.fromhex(payload.data)
        elif payload.text:
            with contextlib.suppress(binascii.Error, ValueError):
                raw = base64.b64decode(payload.text.strip(), validate=True)
        return ("sms", payload.sender, raw) if is_report(raw) else None
    return None


def _sender_key(channel: str, sender: str) -> str:
    return sender.lstrip("0") if channel == "bds" else sender


class ShoreSink:
    """The record sink of a shore station: everything passes; track reports from known
    senders also become the remote device's fixes."""

    def __init__(
        self,
        inner: RecordSink,
        *,
        prefix: str,
        senders: dict[str, str],
        counters: Counter[str],
        log: FilteringBoundLogger | None = None,
    ) -> None:
        self.inner = inner
        self.prefix = prefix
        self.senders = {k.lstrip("0") if k.isdigit() else k: v for k, v in senders.items()}
        self.counters = counters
        self._log = log or structlog.get_logger("terminal_gw.fallback")

    async def put(
        self, topic: str, payload: Payload, *, retain: bool = False, sync: bool | None = None
    ) -> None:
        await self.inner.put(topic, payload, retain=retain, sync=sync)
        found = report_of(payload)
        if found is None:
            return
        channel, sender, raw = found
        device = self.senders.get(_sender_key(channel, sender))
        if device is None:
            self.counters["report_unknown_sender"] += 1
            self._log.info("track_report_unknown_sender", channel=channel, sender=sender)
            return
        try:
            points = decode_report(raw)
        except ReportError as exc:
            self.counters["report_undecodable"] += 1
            self._log.warning("track_report_undecodable", sender=sender, error=str(exc))
            return
        self.counters["report_received"] += 1
        topics = Topics(self.prefix, device)
        for fix in report_fixes(points, device, f"{channel}:{sender}"):
            reported = ReportedFix.model_validate(fix)
            try:
                await self.inner.put(topics.of(reported), reported)
            except StoreError as exc:
                self.counters["report_fix_refused"] += 1
                self._log.error("track_report_fix_refused", error=str(exc))
                return
            self.counters["report_fixes"] += 1


class SmsQueue(Protocol):
    """The command runner's SMS queue (`CommandRunner.queue_sms`)."""

    async def queue_sms(self, sms_id: str, to: str, text: str) -> None: ...


def _day(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d")


class FallbackSender:
    """Track reports over the RDSS channel while MQTT is unreachable."""

    def __init__(
        self,
        cfg: FallbackConfig,
        *,
        connected: Callable[[], bool],
        rdss: RdssDriver | None,
        sms: SmsQueue | None = None,
        state_path: Path,
        events: EventSink,
        clock: Callable[[], float] = time.time,
        log: FilteringBoundLogger | None = None,
    ) -> None:
        self.cfg = cfg
        self._connected = connected
        self._rdss = rdss
        self._sms = sms
        self._path = state_path
        self._events = events
        self._clock = clock
        self._log = log or structlog.get_logger("terminal_gw.fallback")
        self.points: deque[Point] = deque(maxlen=7 * 86400)
        self.counters: Counter[str] = Counter()
        self.day, self.sent_today, self.last_t = self._load()
        self.down_since: float | None = None
        self.next_at = 0.0
        self.last_report: dict[str, Any] | None = None

    def _load(self) -> tuple[str, int, float]:
        try:
            data = json.loads(self._path.read_text())
            return str(data["day"]), int(data["sent"]), float(data.get("last_t", 0.0))
        except (OSError, ValueError, KeyError, TypeError):
            return _day(self._clock()), 0, 0.0

    def _save(self) -> None:
        tmp = self._path.with_name(self._path.name + ".tmp")
        try:
            tmp.write_text(
                json.dumps({"day": self.day, "sent": self.sent_today, "last_t": self.last_t})
            )
            tmp.replace(self._path)
        except OSError as exc:
            self._log.warning("fallback_state_not_saved", error=str(exc))

    def observe(self, payload: Payload) -> None:
        """A record of the GNSS stage: its position joins the track."""
        if not isinstance(payload, Fix):
            return
        for p in points_from_fixes([payload.model_dump(mode="json", by_alias=True)]):
            if not self.points or p.t > self.points[-1].t:
                self.points.append(p)

    def capacity(self) -> int:
        """Bytes one message may carry on the channel (the card's capacity for bds)."""
        if self.cfg.channel == "sms" or self._rdss is None:
            return SMS_REPORT_BYTES
        planned = self._rdss.plan(text=None, data="00", mode="code", cls="normal", strict=True)
        return int(planned.limit) // 8

    async def run(self) -> None:
        """Watch the uplink; send a report when it is due."""
        while True:
            await asyncio.sleep(min(1.0, self.cfg.interval_s))
            await self.tick()

    async def tick(self) -> None:
        """One check: note the link, send when due."""
        now = self._clock()
        if self._connected():
            self.down_since = None
            return
        if self.down_since is None:
            self.down_since = now
        if now - self.down_since < self.cfg.after_s or now < self.next_at:
            return
        today = _day(now)
        if today != self.day:
            self.day, self.sent_today = today, 0
        if self.sent_today >= self.cfg.max_per_day:
            self.counters["over_daily_cap"] += 1
            self.next_at = now + self.cfg.interval_s
            return
        track = [p for p in self.points if p.t > self.last_t]
        if not track:
            return
        self.next_at = now + self.cfg.interval_s
        await self.send(track)

    async def _queue(self, report_id: str, data: bytes) -> None:
        if self.cfg.channel == "sms":
            if self._sms is None:
                raise CommandError("no SMS queue", code="unavailable")
            # The SMS queue sends text: the report as base64 in one 7-bit SMS.
            await self._sms.queue_sms(report_id, self.cfg.to, base64.b64encode(data).decode())
            return
        if self._rdss is None:
            raise CommandError("no RDSS terminal ([rdss] port)", code="unavailable")
        await self._rdss.enqueue(report_id, self.cfg.to, data=data.hex().upper(), mode="code")

    async def send(self, track: list[Point]) -> bool:
        """Queue one report of `track` (oldest first); True when queued."""
        report = encode_report(track, max_error_m=self.cfg.max_error_m, max_bytes=self.capacity())
        if report is None:
            self.counters["report_empty"] += 1
            return False
        report_id = f"fallback-{new_id()[-12:]}"
        try:
            await self._queue(report_id, report.data)
        except CommandError as exc:
            self.counters["report_refused"] += 1
            self._log.warning("fallback_report_refused", error=str(exc), code=exc.code)
            self._events(
                make_event(
                    "fallback",
                    f"track report not sent: {exc}",
                    now=self._clock(),
                    severity="warning",
                    code=exc.code,
                )
            )
            return False
        self.sent_today += 1
        self.last_t = report.points[-1].t
        self.counters["report_queued"] += 1
        self.last_report = {
            "id": report_id,
            "bytes": len(report.data),
            "fixes": report.fixes,
            "points": len(report.points),
            "from": report.points[0].t,
            "to": report.points[-1].t,
        }
        self._log.info("fallback_report_queued", **self.last_report)
        await asyncio.to_thread(self._save)
        return True
