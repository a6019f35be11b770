"""Tiantong-1 modem driver: init, identity, status polls, SMS in, SMS send, recovery ladder.

One `run()` owns the port: it opens it, runs an `AtEngine` and the driver's loop in one
TaskGroup, and opens it again when it is lost. The loop runs the init sequence (again after a
recovery or a modem restart), reads identity, polls signal/registration/operator, publishes the
retained `modem/status`, and takes received SMS from the SIM into the outbox.

SMS in never loses a message: `+CMTI` -> `AT+CMGR` -> decode -> (join parts) -> `outbox.put(...,
sync=True)` -> only then `AT+CMGD`. Parts of a concatenated message stay on the SIM until the
joined message is stored. At start and every `sweep_interval_s`, `AT+CMGL=4` picks up what
arrived while the daemon was down; also as soon as the store takes records again after it
could not (`collect_now`), so messages left on the SIM meanwhile do not wait for the sweep.
The payload id is derived from the message (sender, service centre time, concatenation
reference and parts, content) and the SIM slots it was read from, so a message read again after
a crash carries the same id and consumers drop the repeat, while two identical messages
received in the same second (in two slots) get two ids.

The storage status is looked at before the PDU: a stored SMS-SUBMIT (stat 2/3, a sent or unsent
copy) is never taken nor deleted. Status reports (`+CDS`, or stored) are published as
`type: "status_report"`. Silent (PID 0x40) and SIM data download (0x7C, 0x7F) messages are
counted with an event, not published. Parts of a concatenated `+CMT` message (acknowledged, on
no SIM) are kept in a small SQLite table (`parts_path`) until the joined message is stored, so
they survive a restart.

Recovery ladder after a timeout (or a run of error answers): `AT` ping -> init again -> reset
(`AT+CFUN=1,1`, or `=0` then `=1`) -> close and reopen the port -> back off. Resets and reopens
are capped per hour; beyond the cap the ladder only backs off. Each step is an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import structlog
from structlog.typing import FilteringBoundLogger

from terminal_gw.backoff import Backoff, Retry
from terminal_gw.config import ModemConfig
from terminal_gw.errors import ModemError, StoreError, TransportError
from terminal_gw.models import (
    EventSink,
    ModemStatus,
    Payload,
    RecordSink,
    SmsReceived,
    iso_utc,
    make_event,
    stable_id,
)
from terminal_gw.modem.at import AtEngine, AtPort, ModemResultError, ModemTimeoutError, Urc
from terminal_gw.modem.parts import PartStore
from terminal_gw.modem.sms import (
    Message,
    PduError,
    Reassembler,
    SmsDeliver,
    SmsStatusReport,
    SmsSubmit,
    StoredPdu,
    SubmitPdu,
    decode_pdu,
    parse_stored,
)
from terminal_gw.topics import Topics
from terminal_gw.transport.port import PortFactory, open_with_retry

__all__ = [
    "REG_TEXT",
    "ModemState",
    "PortFactory",
    "RecordSink",
    "TiantongModem",
    "parse_cops",
    "parse_creg",
    "parse_csq",
]

#: AT+CREG stat values (TS 27.007 §7.2) in words.
REG_TEXT: dict[int, str] = {
    0: "not registered",
    1: "registered, home",
    2: "searching",
    3: "registration denied",
    4: "unknown",
    5: "registered, roaming",
    6: "registered for SMS only, home",
    7: "registered for SMS only, roaming",
}
REGISTERED = frozenset({1, 5, 6, 7})

#: Error answers in a row (an ERROR storm) that start the recovery ladder like a timeout.
ERRORS_BEFORE_RECOVERY = 5
#: A recovery that did not hold this long: the next one goes on from the step after it.
RECOVERY_HOLD_S = 60.0
#: Work items (URCs) waiting for the loop; beyond this they are dropped: the sweep finds them.
WORK_QUEUE_MAX = 1000
#: How long closing a port may take before it is given up.
CLOSE_TIMEOUT_S = 5.0
#: The loop reports progress (for the stall watchdog) at least this often, waits included.
PROGRESS_S = 5.0
#: After the outbox refused the status, it is offered again this much later.
STATUS_RETRY_S = 10.0
#: Reassembly is checked this often while parts wait.
EXPIRE_CHECK_S = 1.0
#: `+CMGL`/`+CMGR` stat values of messages this gateway did not receive (TS 27.005 §3.1).
STORED_OUTGOING = frozenset({2, 3})  # STO UNSENT, STO SENT
#: TP-PID values of messages that are not for the user (TS 23.040 §9.2.3.9).
NOT_FOR_USER_PID: dict[int, str] = {
    0x40: "short message type 0 (silent)",
    0x7C: "ANSI-136 R-DATA",
    0x7F: "SIM data download",
}
#: Direct (`+CMT`) messages remembered to tell identical ones in the same second apart.
CMT_SEEN_MAX = 1024


class ModemState(StrEnum):
    """Where the driver is."""

    DOWN = "down"  # port not open
    STARTING = "starting"  # init, identity, sweep
    OK = "ok"
    RECOVERING = "recovering"
    BACKOFF = "backoff"


class _Reopen(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Leave the session so the port is closed and opened again."""


# ---------------------------------------------------------------------------
# Answer parsers (pure).

_CSQ = re.compile(r"(\d+)\s*,\s*(\d+)")
_DIGITS = re.compile(r"\d{6,20}")


def parse_csq(text: str) -> tuple[int | None, int | None]:
    """`+CSQ: <rssi>,<ber>` (text after the colon) as (rssi 0-31, ber 0-7); 99 is None."""
    m = _CSQ.search(text)
    if m is None:
        return None, None
    rssi, ber = int(m.group(1)), int(m.group(2))
    return (rssi if rssi <= 31 else None), (ber if ber <= 7 else None)


def parse_creg(text: str, *, answer: bool) -> int | None:
    """The stat of `+CREG:`; an answer to `AT+CREG?` starts with <n>, a URC does not."""
    fields = [f.strip().strip('"') for f in text.split(",")]
    pos = 1 if answer else 0
    if len(fields) <= pos or not fields[pos].isdigit():
        return None
    return int(fields[pos])


def parse_cops(text: str) -> str | None:
    """The operator name of `+COPS: <mode>[,<format>,<oper>[,<AcT>]]`, None when absent."""
    parts = re.findall(r'"([^"]*)"|([^,]+)', text)
    fields: list[str] = [str(q or u).strip() for q, u in parts]
    if len(fields) < 3 or not fields[2]:
        return None
    return fields[2]


def _identity(lines: Sequence[str]) -> str | None:
    for line in lines:
        m = _DIGITS.search(line)
        if m:
            return m.group()
    return None


def _firmware(lines: Sequence[str]) -> str | None:
    for line in lines:
        text = re.sub(r"^\+CGMR:\s*", "", line.strip(), flags=re.IGNORECASE)
        if text:
            return text[:80]
    return None


# ---------------------------------------------------------------------------
# The driver.


@dataclass(frozen=True, slots=True)
class _Work:
    kind: Literal["read", "cmt", "cds", "cdsi", "creg", "restarted", "check", "sweep"]
    index: int | None = None
    pdu: str | None = None


class TiantongModem:
    """The modem stage: `run()` in the supervisor's TaskGroup; `send_sms()` and `poll_now()`
    for the command stage; `status()` and `counters` for the health report."""

    def __init__(
        self,
        config: ModemConfig,
        outbox: RecordSink,
        *,
        topics: Topics,
        events: EventSink | None = None,
        port_factory: PortFactory | None = None,
        on_status_report: Callable[[SmsStatusReport], None] | None = None,
        on_progress: Callable[[], None] | None = None,
        log: FilteringBoundLogger | None = None,
        clock: Callable[[], float] = time.time,
        parts_path: Path | None = None,
    ) -> None:
        self._cfg = config
        self._outbox = outbox
        self._topics = topics
        self._events = events
        self._factory = port_factory or self._open_serial
        # A fixed wait between opens, as configured (a modem port is one local device).
        self._reopen = Retry(Backoff(config.reopen_backoff_s, config.reopen_backoff_s, jitter=0.0))
        self._on_status_report = on_status_report
        self._on_progress = on_progress
        self._log: FilteringBoundLogger = log or structlog.get_logger("terminal_gw.modem")
        self._clock = clock
        self._engine: AtEngine | None = None
        self._work: asyncio.Queue[_Work] = asyncio.Queue(WORK_QUEUE_MAX)
        self._reasm = Reassembler(timeout=config.sms_reassembly_timeout_s)
        # SIM indexes of parts waiting for their siblings, by (sender, ref, total).
        self._held: dict[tuple[str, int, int], set[int]] = {}
        self._held_idx: set[int] = set()
        # Parts of +CMT messages, kept durably (None: in memory only, lost on restart).
        self._parts = PartStore(parts_path) if parts_path is not None else None
        self._parts_loaded = False
        # Direct messages seen, by content key: the second identical one gets another id.
        self._cmt_seen: OrderedDict[str, int] = OrderedDict()
        self._level = 0  # the next recovery step
        self._fixed_by = 0  # the step that brought the modem back last time
        self._recovered_at = -float("inf")
        self._disruptions: deque[float] = deque()  # monotonic times of resets and reopens
        self._errors_in_row = 0
        self._need_start = True
        self._due: dict[str, float] = {}
        self._last_status: tuple[Any, ...] | None = None
        self._last_status_at = -float("inf")
        self._port_down_reported = False
        self.state = ModemState.DOWN
        self.reason = "not started"
        self.since = time.time()
        self.rssi: int | None = None
        self.ber: int | None = None
        self.reg: int | None = None
        self.operator: str | None = None
        self.imei: str | None = None
        self.imsi: str | None = None
        self.firmware: str | None = None
        self.sim: str | None = None
        self.last_answer: float | None = None  # unix time of the last good final result
        self.counters: Counter[str] = Counter()

    # -- public interface ---------------------------------------------------------------

    def topic(self, payload: Payload) -> str:
        """The full MQTT topic of a payload."""
        return self._topics.of(payload)

    def status(self) -> dict[str, Any]:
        """A snapshot for the health report."""
        return {
            "state": str(self.state),
            "reason": self.reason,
            "since": iso_utc(self.since),
            "port": self._cfg.port,
            "rssi": self.rssi,
            "dbm": _dbm(self.rssi),
            "reg": self.reg,
            "reg_text": None if self.reg is None else REG_TEXT.get(self.reg, "unknown"),
            "operator": self.operator,
            "imei": self.imei,
            "sim": self.sim,
            "last_answer": None if self.last_answer is None else iso_utc(self.last_answer),
            "sms_parts_waiting": self._reasm.pending,
            "resets_last_hour": len(self._recent_disruptions()),
            "counters": dict(self.counters),
            "at": dict(self._engine.counters) if self._engine is not None else {},
        }

    async def send_sms(self, pdus: Sequence[SubmitPdu]) -> list[int]:
        """Send each PDU with AT+CMGS; the message references. Raises ModemError (with the
        3GPP reason) on the first part that fails; the parts before it were sent."""
        engine = self._ready()
        refs: list[int] = []
        for pdu in pdus:
            try:
                mr = await engine.send_pdu(
                    pdu.tpdu_length,
                    pdu.hex,
                    self._cfg.send_timeout_s,
                    prompt_timeout=self._cfg.command_timeout_s,
                )
            except ModemTimeoutError:
                self.counters["sms_send_failed"] += 1
                self._queue(_Work("check"))  # a silent modem: let the loop run the ladder
                raise
            except ModemError:
                self.counters["sms_send_failed"] += 1
                raise
            refs.append(mr)
            self.counters["sms_parts_sent"] += 1
        return refs

    async def poll_now(self) -> None:
        """Poll signal, registration and operator now and publish the status if it changed."""
        engine = self._ready()
        try:
            await self._poll(engine, "signal")
            await self._poll(engine, "registration")
            await self._poll(engine, "operator")
        except ModemTimeoutError:
            self._queue(_Work("check"))
            raise
        await self._publish_status()

    def collect_now(self) -> None:
        """Take what waits on the SIM at once (`AT+CMGL=4`), not at the next periodic sweep:
        called when the store takes records again after messages were left on the SIM."""
        self.counters["sweeps_requested"] += 1
        self._queue(_Work("sweep"))

    async def run(self) -> None:
        """Own the port until cancelled: open, run the session, reopen when it ends."""
        try:
            await self._run()
        finally:
            if self._parts is not None:
                self._parts.close()

    async def _run(self) -> None:
        await self._load_parts()

        async def open_once() -> AtPort:
            async with asyncio.timeout(self._cfg.command_timeout_s * 2):
                return await self._factory()

        def failed(exc: Exception, delay: float) -> None:
            self.counters["port_open_failures"] += 1
            self._port_down(f"cannot open {self._cfg.port}: {exc}")

        while True:
            port = await open_with_retry(open_once, self._reopen, failed=failed, wait=self._sleep)
            assert port is not None  # never stopped: the loop ends when the stage is cancelled
            self._reopen.reset()
            if self._port_down_reported:
                self._port_down_reported = False
                self._event("modem_port", f"modem port {self._cfg.port} open", port=self._cfg.port)
            self.counters["port_opens"] += 1
            reopen = await self._session(port)
            if not reopen:
                await self._publish_status()  # "down", retained until the modem is back
                await self._sleep(self._cfg.reopen_backoff_s)

    # -- session --------------------------------------------------------------------------

    async def _open_serial(self) -> AtPort:
        from terminal_gw.transport.serial import SerialPort

        return await SerialPort.open(self._cfg.port, self._cfg.baud)

    async def _session(self, port: AtPort) -> bool:
        """Run the engine and the loop on one open port; True when the ladder asked to reopen."""
        engine = AtEngine(
            port,
            on_urc=self._on_urc,
            on_alive=self._alive,
            log=self._log,
        )
        reopen = False
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(engine.run(), name="modem-reader")
                tg.create_task(self._main(engine), name="modem-loop")
        except* _Reopen:
            reopen = True
        except* TransportError as eg:
            self._port_down(str(eg.exceptions[0]))
        except* ModemError as eg:
            # The command that was waiting when the reader stopped (the port failed with it).
            self._port_down(str(eg.exceptions[0]))
        finally:
            self._engine = None
            with contextlib.suppress(TransportError, OSError, TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await port.close()
        return reopen

    def _port_down(self, reason: str) -> None:
        self._set_state(ModemState.DOWN, reason)
        self._need_start = True
        if not self._port_down_reported:
            self._port_down_reported = True
            self._log.warning("modem port down", port=self._cfg.port, reason=reason)
            self._event(
                "modem_port",
                f"modem port {self._cfg.port} down: {reason}",
                severity="warning",
                port=self._cfg.port,
                reason=reason,
            )

    async def _main(self, engine: AtEngine) -> None:
        self._engine = engine
        self._need_start = True
        while True:
            try:
                if self._need_start:
                    await self._start(engine)
                await self._tick(engine)
            except ModemTimeoutError as exc:
                await self._recover(engine, f"timeout: {exc}")
            except ModemResultError as exc:
                self.counters["error_answers"] += 1
                self._log.warning("modem error answer", error=str(exc))
                if self._errors_in_row >= ERRORS_BEFORE_RECOVERY:
                    self._errors_in_row = 0
                    if self._level == 0:
                        self._level = 1  # it answers, so a ping proves nothing: start higher
                    await self._recover(engine, f"{ERRORS_BEFORE_RECOVERY} errors in a row: {exc}")

    async def _start(self, engine: AtEngine) -> None:
        """Init, identity, first polls, sweep: on open, after recovery, after a modem restart."""
        self._set_state(ModemState.STARTING, "init")
        await self._init(engine)
        await self._read_identity(engine)
        now = time.monotonic()
        for what in ("signal", "registration", "operator"):
            await self._poll(engine, what)
        self._due = {
            "signal": now + self._cfg.poll_signal_s,
            "registration": now + self._cfg.poll_registration_s,
            "operator": now + self._cfg.poll_operator_s,
            "sweep": now,
        }
        self._need_start = False
        self._level = 0
        self._set_state(ModemState.OK, "ready")
        await self._publish_status()

    async def _init(self, engine: AtEngine) -> bool:
        """The init sequence; True when every command answered OK (timeouts raise)."""
        all_ok = True
        for command in self._cfg.init:
            try:
                await engine.command(command, timeout=self._cfg.command_timeout_s)
            except ModemResultError as exc:
                all_ok = False
                self.counters["init_errors"] += 1
                self._log.warning("modem init command refused", command=command, error=str(exc))
        return all_ok

    async def _read_identity(self, engine: AtEngine) -> None:
        t = self._cfg.command_timeout_s
        for command, attr, parse in (
            ("AT+CGSN", "imei", _identity),
            ("AT+CIMI", "imsi", _identity),
            ("AT+CGMR", "firmware", _firmware),
        ):
            try:
                resp = await engine.command(command, timeout=t, expect=command[2:])
            except ModemResultError:
                continue  # a terminal without that command: the field stays absent
            value = parse(resp.lines)
            if value is not None:
                setattr(self, attr, value)
        await self._read_sim(engine)

    async def _read_sim(self, engine: AtEngine) -> None:
        """The SIM state: without a ready SIM no SMS comes in, whatever the signal says."""
        try:
            resp = await engine.command(
                "AT+CPIN?", timeout=self._cfg.command_timeout_s, expect="+CPIN"
            )
        except ModemResultError as exc:
            state = exc.reason or "error"
        else:
            values = resp.values("+CPIN")
            state = values[0] if values else "unknown"
        if state != self.sim:
            was, self.sim = self.sim, state
            if state != "READY":
                self._event(
                    "modem_sim",
                    f"modem SIM: {state}",
                    severity="error",
                    state=state,
                    previous=was,
                )

    async def _tick(self, engine: AtEngine) -> None:
        """Handle one work item, or whatever is due."""
        due = dict(self._due)
        status_due = self._last_status_at + self._cfg.status_interval_s
        due["status"] = status_due
        if self._reasm.pending:
            due["expire"] = time.monotonic() + EXPIRE_CHECK_S
        wait = min(PROGRESS_S, max(0.0, min(due.values()) - time.monotonic()))
        self._progress()
        item: _Work | None = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                item = await self._work.get()
        if item is not None:
            await self._handle(engine, item)
            return
        now = time.monotonic()
        for what, interval in (
            ("signal", self._cfg.poll_signal_s),
            ("registration", self._cfg.poll_registration_s),
            ("operator", self._cfg.poll_operator_s),
        ):
            if now >= self._due[what]:
                self._due[what] = now + interval
                await self._poll(engine, what)
        if now >= self._due["sweep"]:
            self._due["sweep"] = now + self._cfg.sweep_interval_s
            await self._sweep(engine)
        if self._reasm.pending:
            await self._expire(engine)
        await self._publish_status()

    async def _handle(self, engine: AtEngine, item: _Work) -> None:
        if item.kind == "read" and item.index is not None:
            await self._read_index(engine, item.index)
        elif item.kind == "cmt" and item.pdu is not None:
            await self._direct(engine, item.pdu)
        elif item.kind == "cdsi" and item.index is not None:
            await self._read_index(engine, item.index)
        elif item.kind == "cds" and item.pdu is not None:
            await self._direct_report(engine, item.pdu)
        elif item.kind == "creg":
            await self._poll(engine, "registration")
            await self._publish_status()
        elif item.kind == "restarted":
            self._event("modem_restart", "the modem restarted by itself; init again")
            self._need_start = True
        elif item.kind == "sweep":
            if "sweep" in self._due:
                self._due["sweep"] = time.monotonic() + self._cfg.sweep_interval_s
            await self._sweep(engine)
        elif item.kind == "check" and not await self._ping(engine):
            await self._recover(engine, "no answer to a command")

    # -- URCs -----------------------------------------------------------------------------

    def _alive(self) -> None:
        self.last_answer = self._clock()
        self._progress()

    def _progress(self) -> None:
        if self._on_progress is not None:
            self._on_progress()

    async def _sleep(self, seconds: float) -> None:
        """Wait, reporting progress meanwhile: waiting out a backoff is not a stall."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self._progress()
            await asyncio.sleep(min(left, PROGRESS_S))

    def _queue(self, item: _Work) -> None:
        try:
            self._work.put_nowait(item)
        except asyncio.QueueFull:
            self.counters["urcs_dropped"] += 1

    def _on_urc(self, urc: Urc) -> None:
        name = urc.name
        fields = urc.fields
        if name in ("+CMTI", "+CDSI"):
            if len(fields) >= 2 and fields[-1].isdigit():
                self._queue(_Work("read" if name == "+CMTI" else "cdsi", index=int(fields[-1])))
            else:
                self.counters["urcs_bad"] += 1
        elif name == "+CMT":
            if urc.body:
                self._queue(_Work("cmt", pdu=urc.body))
            else:
                self.counters["urcs_bad"] += 1
        elif name == "+CDS":
            if urc.body:
                self._queue(_Work("cds", pdu=urc.body))
            else:
                self.counters["status_reports_bad"] += 1
        elif name in ("+CREG", "+CEREG"):
            self._queue(_Work("creg"))
        elif name in ("RDY", "+CPIN", "+CFUN", "SMS READY", "CALL READY"):
            self._queue(_Work("restarted"))
        else:
            self.counters["urcs_other"] += 1

    async def _direct_report(self, engine: AtEngine, pdu: str) -> None:
        """A status report delivered with +CDS (not stored): publish, then acknowledge."""
        try:
            report = decode_pdu(pdu)
        except PduError as exc:
            self.counters["status_reports_bad"] += 1
            self._log.warning("undecodable status report", error=exc.reason, pdu=pdu[:400])
            await self._store(self._undecodable(pdu, exc))
        else:
            if isinstance(report, SmsStatusReport):
                await self._report(report)
            else:
                self.counters["status_reports_bad"] += 1
                self._log.warning("+CDS without a status report", pdu=pdu[:400])
        await self._ack_cmt(engine)

    async def _report(self, report: SmsStatusReport) -> bool:
        """A status report into the outbox (and to `on_status_report`); False when refused."""
        self.counters["status_reports"] += 1
        if self._on_status_report is not None:
            self._on_status_report(report)
        return await self._store(self._report_payload(report))

    # -- polls and status -----------------------------------------------------------------

    async def _poll(self, engine: AtEngine, what: str) -> None:
        """One status poll; an error answer is counted, and raised only in a run of them."""
        self.counters["polls"] += 1
        try:
            await self._poll_once(engine, what)
        except ModemResultError:
            self._errors_in_row += 1
            self.counters["poll_errors"] += 1
            if self._errors_in_row >= ERRORS_BEFORE_RECOVERY:
                raise
            return
        self._errors_in_row = 0

    async def _poll_once(self, engine: AtEngine, what: str) -> None:
        t = self._cfg.command_timeout_s
        if what == "signal":
            resp = await engine.command("AT+CSQ", timeout=t, expect="+CSQ")
            for v in resp.values("+CSQ"):
                self.rssi, self.ber = parse_csq(v)
        elif what == "registration":
            resp = await engine.command("AT+CREG?", timeout=t, expect="+CREG")
            for v in resp.values("+CREG"):
                stat = parse_creg(v, answer=True)
                if stat is not None:
                    self._registration(stat)
        elif what == "operator":
            resp = await engine.command("AT+COPS?", timeout=t, expect="+COPS")
            for v in resp.values("+COPS"):
                self.operator = parse_cops(v)

    def _registration(self, stat: int) -> None:
        old, self.reg = self.reg, stat
        if old == stat:
            return
        text = REG_TEXT.get(stat, "unknown")
        lost = old in REGISTERED and stat not in REGISTERED
        self._log.info("modem registration", stat=stat, text=text, was=old)
        self._event(
            "registration",
            f"modem {text}" + ("" if old is None else f" (was {REG_TEXT.get(old, 'unknown')})"),
            severity="warning" if lost else "info",
            stat=stat,
            text=text,
            previous=old,
            registered=stat in REGISTERED,
        )

    def _status_payload(self) -> ModemStatus:
        state: Literal["ok", "recovering", "down"]
        if self.state is ModemState.OK:
            state = "ok"
        elif self.state is ModemState.DOWN:
            state = "down"
        else:
            state = "recovering"
        return ModemStatus(
            time=iso_utc(self._clock()),
            state=state,
            rssi=self.rssi,
            dbm=_dbm(self.rssi),
            ber=self.ber,
            reg=self.reg,
            reg_text=None if self.reg is None else REG_TEXT.get(self.reg, "unknown"),
            registered=self.reg in REGISTERED,
            operator=self.operator,
            imei=self.imei,
            imsi=self.imsi,
            firmware=self.firmware,
            sim=self.sim,
        )

    async def _publish_status(self) -> None:
        """Publish the retained status when it changed, or when status_interval_s passed."""
        payload = self._status_payload()
        signature = tuple(payload.model_dump(exclude={"id", "time"}).values())
        now = time.monotonic()
        if signature == self._last_status and now < (
            self._last_status_at + self._cfg.status_interval_s
        ):
            return
        try:
            await self._outbox.put(self.topic(payload), payload, retain=True)
        except StoreError as exc:
            self._log.warning("modem status not stored", error=str(exc))
            # Try again on the next change, or after STATUS_RETRY_S: not on every loop turn.
            self._last_status = None
            self._last_status_at = now - self._cfg.status_interval_s + STATUS_RETRY_S
            return
        self._last_status = signature
        self._last_status_at = now
        self.counters["status_published"] += 1

    # -- SMS in ---------------------------------------------------------------------------

    async def _sweep(self, engine: AtEngine) -> None:
        """Take every stored message (AT+CMGL=4): those that came while nobody listened."""
        self.counters["sweeps"] += 1
        resp = await engine.command(
            "AT+CMGL=4", timeout=self._cfg.command_timeout_s * 3, expect="+CMGL"
        )
        for stored in parse_stored(resp.lines):
            if stored.index is not None:
                await self._accept(engine, stored.index, stored)

    async def _read_index(self, engine: AtEngine, idx: int) -> None:
        resp = await engine.command(
            f"AT+CMGR={idx:d}", timeout=self._cfg.command_timeout_s, expect="+CMGR"
        )
        stored = parse_stored(resp.lines)
        if not stored:
            self.counters["sms_empty_slot"] += 1
            return
        await self._accept(engine, idx, stored[0])

    async def _accept(self, engine: AtEngine, idx: int, stored: StoredPdu) -> None:
        if idx in self._held_idx:
            return  # a part already waiting for its siblings
        if stored.stat in STORED_OUTGOING:
            # A sent or unsent copy: not ours to take, whether or not it decodes.
            self.counters["sms_outgoing_stored"] += 1
            return
        try:
            sms = stored.decode()
        except PduError as exc:
            self.counters["sms_undecodable"] += 1
            payload = self._undecodable(stored.pdu, exc)
            if await self._store(payload):
                await self._delete(engine, [idx])
            return
        if isinstance(sms, SmsStatusReport):
            if await self._report(sms):
                await self._delete(engine, [idx])
            return
        if isinstance(sms, SmsSubmit):
            self.counters["sms_outgoing_stored"] += 1  # a draft or sent copy: not ours to take
            return
        self.counters["sms_parts_read"] += 1
        if self._not_for_user(sms, idx):
            await self._delete(engine, [idx])
            return
        message = self._reasm.add(sms, time.monotonic())
        key = _concat_key(sms)
        if message is None:
            if key is not None:
                self._held.setdefault(key, set()).add(idx)
                self._held_idx.add(idx)
            return
        indexes = {idx}
        if key is not None:
            indexes |= self._held.pop(key, set())
            self._held_idx -= indexes
        await self._publish(engine, message, sorted(indexes))

    def _not_for_user(self, sms: SmsDeliver, idx: int | None) -> bool:
        """A silent or SIM data download message: counted, an event, never published."""
        what = NOT_FOR_USER_PID.get(sms.pid)
        if what is None:
            return False
        self.counters["sms_not_for_user"] += 1
        self._log.info("sms not for the user", pid=sms.pid, kind=what, index=idx)
        self._event(
            "sms_not_for_user",
            f"an SMS with PID {sms.pid:#04x} ({what}) from {sms.sender.number} was not published",
            pid=sms.pid,
            what=what,
            sender=sms.sender.number,
        )
        return True

    async def _direct(self, engine: AtEngine, pdu: str) -> None:
        """A message delivered with +CMT (not stored): store, then acknowledge."""
        try:
            sms = decode_pdu(pdu)
        except PduError as exc:
            self.counters["sms_undecodable"] += 1
            await self._store(self._undecodable(pdu, exc))
            await self._ack_cmt(engine)
            return
        if isinstance(sms, SmsStatusReport):
            await self._report(sms)
        elif isinstance(sms, SmsDeliver) and not self._not_for_user(sms, None):
            self.counters["sms_parts_read"] += 1
            key = _concat_key(sms)
            if key is not None:
                # Acknowledged below, on no SIM: the table is all that holds it until joined.
                await self._keep_part(key, sms, pdu, self._clock())
            message = self._reasm.add(sms, time.monotonic())
            if message is not None:
                await self._publish(engine, message, [], direct=True)
        await self._ack_cmt(engine)

    async def _keep_part(
        self, key: tuple[str, int, int], sms: SmsDeliver, pdu: str, first_seen: float
    ) -> None:
        if self._parts is None or sms.concat is None:
            return
        try:
            await asyncio.to_thread(
                self._parts.add, _key_text(key), sms.concat.seq, pdu, first_seen
            )
        except (sqlite3.Error, OSError) as exc:
            self.counters["sms_parts_store_failed"] += 1
            self._log.error("sms part not kept on disk", error=str(exc))
            self._event(
                "sms_parts",
                f"a part of an SMS could not be kept on disk ({exc}); it waits in memory only",
                severity="error",
                reason=str(exc),
            )

    async def _forget_parts(self, message: Message) -> None:
        if self._parts is None or message.ref is None or message.total <= 1:
            return
        key = (message.sender.number, message.ref, message.total)
        try:
            await asyncio.to_thread(self._parts.remove, _key_text(key))
        except (sqlite3.Error, OSError) as exc:
            self.counters["sms_parts_store_failed"] += 1
            self._log.error("sms parts not removed from disk", error=str(exc))

    async def _load_parts(self) -> None:
        """Parts of +CMT messages kept by an earlier run, back into reassembly."""
        if self._parts is None or self._parts_loaded:
            return
        self._parts_loaded = True
        try:
            parts = await asyncio.to_thread(self._parts.load)
        except (sqlite3.Error, OSError) as exc:
            self.counters["sms_parts_store_failed"] += 1
            self._log.error("sms parts on disk not read", error=str(exc))
            self._event(
                "sms_parts",
                f"parts of SMS kept on disk could not be read ({exc})",
                severity="error",
                reason=str(exc),
            )
            return
        wall, mono = self._clock(), time.monotonic()
        for part in parts:
            try:
                sms = decode_pdu(part.pdu)
            except PduError:
                self.counters["sms_parts_bad"] += 1
                continue
            if isinstance(sms, SmsDeliver):
                # Its age carries over, so the reassembly timeout counts from when it came.
                self._reasm.add(sms, mono - max(0.0, wall - part.first_seen))
                self.counters["sms_parts_restored"] += 1

    async def _ack_cmt(self, engine: AtEngine) -> None:
        if self._cfg.ack_cmt:
            await engine.command("AT+CNMA", timeout=self._cfg.command_timeout_s)

    async def _expire(self, engine: AtEngine) -> None:
        for message in self._reasm.expire(time.monotonic()):
            key = (message.sender.number, message.ref or 0, message.total)
            indexes = self._held.pop(key, set())
            self._held_idx -= indexes
            self.counters["sms_incomplete"] += 1
            await self._publish(engine, message, sorted(indexes), direct=not indexes)

    async def _publish(
        self, engine: AtEngine, message: Message, indexes: list[int], *, direct: bool = False
    ) -> None:
        payload, seen_key = self._payload(message, indexes, direct=direct)
        if await self._store(payload):
            self.counters["sms_received"] += 1
            if seen_key is not None:
                self._cmt_seen[seen_key] = self._cmt_seen.get(seen_key, 0) + 1
                self._cmt_seen.move_to_end(seen_key)
                while len(self._cmt_seen) > CMT_SEEN_MAX:
                    self._cmt_seen.popitem(last=False)
            await self._forget_parts(message)
            await self._delete(engine, indexes)

    async def _store(self, payload: SmsReceived) -> bool:
        """Into the outbox, durably; False (the SIM keeps the message) when refused."""
        try:
            await self._outbox.put(self.topic(payload), payload, sync=True)
        except StoreError as exc:
            self.counters["sms_store_failed"] += 1
            self._log.error("sms not stored; left on the SIM", error=str(exc))
            self._event(
                "sms_store",
                f"a received SMS could not be stored ({exc}); it stays on the SIM",
                severity="error",
                reason=str(exc),
            )
            return False
        return True

    async def _delete(self, engine: AtEngine, indexes: Sequence[int]) -> None:
        for idx in indexes:
            await engine.command(f"AT+CMGD={idx:d}", timeout=self._cfg.command_timeout_s)
            self.counters["sms_deleted"] += 1

    def _payload(
        self, message: Message, indexes: Sequence[int], *, direct: bool = False
    ) -> tuple[SmsReceived, str | None]:
        """The payload, and (direct messages) the content key to count once it is stored."""
        sender = message.sender.number
        ts = message.timestamp
        first = message.parts[0]
        encoding = first.dcs.alphabet.value
        data_hex = None if message.text is not None else message.data.hex().upper()
        ts_ms = 0 if ts is None else int(ts.timestamp() * 1000)
        seqs = ",".join(str(p.concat.seq) for p in message.parts if p.concat is not None)
        key = "|".join(
            [
                "sms",
                sender,
                str(ts_ms),
                str(message.ref),
                str(message.total),
                seqs,
                message.data.hex(),
            ]
        )
        seen_key: str | None = None
        if indexes:
            # The SIM slots: a re-read of the same stored message has them, a second identical
            # message sits in other slots.
            key += "|slots=" + ",".join(str(i) for i in sorted(indexes))
        elif direct:
            # No slot: the n-th identical direct message of this run gets the n-th id; the
            # first keeps the plain content id, as a repeat by the network after a restart.
            seen_key = key
            n = self._cmt_seen.get(key, 0)
            if n:
                key += f"|cmt={n}"
        smsc = first.smsc.number if first.smsc is not None else None
        truncated = any(p.truncated for p in message.parts)
        odd_zone = any(isinstance(p, SmsDeliver) and p.odd_zone for p in message.parts)
        payload = SmsReceived(
            id=stable_id(ts_ms, key.encode()),
            time=None if ts is None else iso_utc(ts.timestamp()),
            received=iso_utc(self._clock()),
            sender=sender,
            text=message.text,
            data=data_hex,
            encoding=encoding,
            parts=message.total,
            ref=message.ref,
            complete=message.complete,
            missing=list(message.missing) or None,
            smsc=smsc,
            truncated=truncated or None,
            odd_zone=odd_zone or None,
        )
        return payload, seen_key

    def _report_payload(self, report: SmsStatusReport) -> SmsReceived:
        scts = report.timestamp.timestamp()
        discharge = report.discharge_time.timestamp()
        key = "|".join(
            ["sms-report", report.recipient.number, str(report.mr), str(scts), str(discharge)]
        )
        key += f"|{report.status}"
        return SmsReceived(
            id=stable_id(int(discharge * 1000), key.encode()),
            time=iso_utc(scts),
            received=iso_utc(self._clock()),
            sender=report.recipient.number,
            smsc=report.smsc.number if report.smsc is not None else None,
            type="status_report",
            mr=report.mr,
            status=report.status,
            status_text=report.reason,
            delivered=report.delivered,
            final=report.final,
            discharge=iso_utc(discharge),
            odd_zone=report.odd_zone or None,
        )

    def _undecodable(self, pdu: str, exc: PduError) -> SmsReceived:
        # Published raw rather than dropped: the id comes from the PDU alone (no time in it).
        return SmsReceived(
            id=stable_id(0, b"sms-raw|" + pdu.encode()),
            received=iso_utc(self._clock()),
            sender="",
            pdu=pdu[:400],
            error=exc.reason,
            complete=False,
        )

    # -- recovery ladder ------------------------------------------------------------------

    def _recent_disruptions(self) -> deque[float]:
        cutoff = time.monotonic() - 3600.0
        while self._disruptions and self._disruptions[0] < cutoff:
            self._disruptions.popleft()
        return self._disruptions

    def _may_disrupt(self) -> bool:
        return len(self._recent_disruptions()) < self._cfg.max_resets_per_hour

    async def _ping(self, engine: AtEngine) -> bool:
        try:
            await engine.command("AT", timeout=self._cfg.ping_timeout_s)
        except ModemError:
            return False
        return True

    async def _recover(self, engine: AtEngine, cause: str) -> None:
        """Climb the ladder until the modem answers; raises _Reopen for the reopen step."""
        self.counters["recoveries"] += 1
        if self._level == 0 and time.monotonic() - self._recovered_at < RECOVERY_HOLD_S:
            self._level = min(self._fixed_by + 1, 4)  # what helped last time did not hold
        self._set_state(ModemState.RECOVERING, cause)
        self._log.warning("modem not answering", cause=cause, step=self._level)
        await self._publish_status()
        while True:
            step = self._level
            if step == 0:
                self._step("ping", cause)
                ok = await self._ping(engine)
            elif step == 1:
                self._step("reinit", cause)
                ok = await self._try(self._init(engine)) and await self._ping(engine)
            elif step == 2 and self._may_disrupt():
                self._step("reset", cause)
                await self._reset(engine)
                ok = await self._ping(engine) and await self._try(self._init(engine))
            elif step == 3 and self._may_disrupt():
                self._step("reopen", cause)
                self._disruptions.append(time.monotonic())
                self.counters["reopens"] += 1
                self._level = 4  # if the reopened port does not help, back off next
                raise _Reopen
            else:
                if step in (2, 3):
                    self.counters["capped"] += 1
                    self._step(
                        "capped",
                        cause,
                        message=f"{self._cfg.max_resets_per_hour} resets/reopens in the last "
                        "hour: no more until the hour has passed",
                        severity="error",
                    )
                self._step("backoff", cause, wait_s=self._cfg.recovery_backoff_s)
                self._set_state(ModemState.BACKOFF, cause)
                await self._publish_status()
                await self._sleep(self._cfg.recovery_backoff_s)
                self._set_state(ModemState.RECOVERING, cause)
                self._level = 0
                continue
            if ok:
                self._event(
                    "modem_recovery",
                    f"modem answers again after step {self._step_name(step)}",
                    step="recovered",
                    by=self._step_name(step),
                )
                self._level = 0
                self._fixed_by = step
                self._recovered_at = time.monotonic()
                self._need_start = True
                self._drain_stale_work()
                return
            self._level = step + 1

    @staticmethod
    def _step_name(step: int) -> str:
        return ("ping", "reinit", "reset", "reopen", "backoff")[min(step, 4)]

    async def _try(self, coro: Awaitable[bool]) -> bool:
        try:
            return await coro
        except ModemError:
            return False

    async def _reset(self, engine: AtEngine) -> None:
        self._disruptions.append(time.monotonic())
        self.counters["resets"] += 1
        commands = (
            ["AT+CFUN=1,1"] if self._cfg.reset_mode == "restart" else ["AT+CFUN=0", "AT+CFUN=1"]
        )
        for command in commands:
            with contextlib.suppress(ModemError):
                await engine.command(command, timeout=self._cfg.command_timeout_s)
        await self._sleep(self._cfg.reset_wait_s)

    def _drain_stale_work(self) -> None:
        # Restart notices queued while recovering are answered by the start that follows.
        keep: list[_Work] = []
        while not self._work.empty():
            item = self._work.get_nowait()
            if item.kind not in ("restarted", "check"):
                keep.append(item)
        for item in keep:
            self._queue(item)

    def _step(
        self,
        step: str,
        cause: str,
        *,
        message: str | None = None,
        severity: Literal["info", "warning", "error"] = "warning",
        **data: Any,
    ) -> None:
        self._log.warning("modem recovery", step=step, cause=cause)
        self._event(
            "modem_recovery",
            message or f"modem recovery: {step} ({cause})",
            severity=severity,
            step=step,
            cause=cause,
            **data,
        )

    # -- helpers --------------------------------------------------------------------------

    def _ready(self) -> AtEngine:
        engine = self._engine
        if engine is None or self.state is not ModemState.OK:
            raise ModemError(
                f"modem not ready: {self.state} ({self.reason})", reason=f"modem {self.state}"
            )
        return engine

    def _set_state(self, state: ModemState, reason: str) -> None:
        if state is not self.state:
            self.since = time.time()
        self.state = state
        self.reason = reason

    def _event(
        self,
        kind: str,
        message: str,
        *,
        severity: Literal["info", "warning", "error"] = "info",
        **data: Any,
    ) -> None:
        if self._events is not None:
            self._events(make_event(kind, message, now=self._clock(), severity=severity, **data))


def _dbm(rssi: int | None) -> int | None:
    return None if rssi is None else -113 + 2 * rssi


def _key_text(key: tuple[str, int, int]) -> str:
    return f"{key[0]}|{key[1]}|{key[2]}"


def _concat_key(sms: SmsDeliver) -> tuple[str, int, int] | None:
    c = sms.concat
    if c is None or c.total == 1:
        return None
    return (sms.party.number, c.ref, c.total)
