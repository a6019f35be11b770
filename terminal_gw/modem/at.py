"""AT engine: a pure line parser (bytes in, events out) and the one owner of the modem port.

`LineParser` turns byte chunks into events: final result codes, information lines, the `> `
prompt, command echo, unsolicited result codes (URCs, with the PDU line that follows `+CMT`
and `+CDS`) and garbage. It knows which command is running (set by the engine) because the
same line is an answer or a URC depending on that: `+CREG: 1,...` answers `AT+CREG?` but is
a URC at any other time.

`AtEngine` sends one command at a time and routes each event: answers to the caller, URCs to
`on_urc`. Only validated command strings, digits and PDU hex are ever written to the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Self

import structlog
from structlog.typing import FilteringBoundLogger

from terminal_gw.errors import CommandError, ModemError, TransportError
from terminal_gw.modem.results import cme_error, cms_error
from terminal_gw.transport.port import Port

__all__ = [
    "AtEngine",
    "AtPort",
    "Echo",
    "Event",
    "Final",
    "FinalResult",
    "Garbage",
    "InfoLine",
    "LineParser",
    "ModemResultError",
    "ModemTimeoutError",
    "Prompt",
    "Response",
    "Urc",
    "split_args",
]

MAX_LINE = 2048  # longest line kept: a UCS2 +CUSD or +CMGL PDU line fits with room to spare

# ---------------------------------------------------------------------------
# Events.


class Final(StrEnum):
    """Kinds of final result code (TS 27.007 §5.7, §9.2; TS 27.005 §3.2.5; V.250)."""

    OK = "OK"
    CONNECT = "CONNECT"
    ERROR = "ERROR"
    CME_ERROR = "+CME ERROR"
    CMS_ERROR = "+CMS ERROR"
    NO_CARRIER = "NO CARRIER"
    BUSY = "BUSY"
    NO_ANSWER = "NO ANSWER"
    NO_DIALTONE = "NO DIALTONE"


@dataclass(frozen=True, slots=True)
class FinalResult:
    """The line that ends a command's answer; `code`/`reason` for the error forms."""

    kind: Final
    line: str
    code: int | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        """The command succeeded."""
        return self.kind in (Final.OK, Final.CONNECT)


@dataclass(frozen=True, slots=True)
class InfoLine:
    """A line of the running command's answer."""

    text: str


@dataclass(frozen=True, slots=True)
class Echo:
    """The modem repeating what was written (echo on, or modems that echo after ATE0)."""

    text: str


@dataclass(frozen=True, slots=True)
class Prompt:
    """The `> ` that asks for the PDU of `AT+CMGS` (no line ending after it)."""


@dataclass(frozen=True, slots=True)
class Urc:
    """An unsolicited result code: `name` (`+CMTI`, `RING`, `^MODE`), `args` after the colon,
    and `body`, the line that follows `+CMT`/`+CDS`/`+CBM` (the PDU hex in PDU mode)."""

    name: str
    args: str
    line: str
    body: str | None = None

    @property
    def fields(self) -> list[str]:
        """The arguments split on commas, quotes removed."""
        return split_args(self.args)


@dataclass(frozen=True, slots=True)
class Garbage:
    """Bytes that formed no usable line: counted and dropped."""

    reason: str
    text: str = ""


Event = FinalResult | InfoLine | Echo | Prompt | Urc | Garbage

# ---------------------------------------------------------------------------
# Tables.

# Whole-line final result codes. The two vendor spellings are ERROR with extra words (Huawei,
# ZTE), and must end a command rather than leave it to time out.
FINAL_LINES: dict[str, Final] = {
    "OK": Final.OK,
    "ERROR": Final.ERROR,
    "NO CARRIER": Final.NO_CARRIER,
    "BUSY": Final.BUSY,
    "NO ANSWER": Final.NO_ANSWER,
    "NO DIALTONE": Final.NO_DIALTONE,
    "NO DIAL TONE": Final.NO_DIALTONE,
    "CONNECT": Final.CONNECT,
    "COMMAND NOT SUPPORT": Final.ERROR,
    "TOO MANY PARAMETERS": Final.ERROR,
}

# Final result codes that carry an argument.
# Some modems drop the `+` of the error forms; `MODEM ERROR: <n>` is a vendor ERROR with a code.
FINAL_PREFIXES: tuple[tuple[str, Final], ...] = (
    ("+CME ERROR:", Final.CME_ERROR),
    ("+CMS ERROR:", Final.CMS_ERROR),
    ("CME ERROR:", Final.CME_ERROR),
    ("CMS ERROR:", Final.CMS_ERROR),
    ("MODEM ERROR:", Final.ERROR),
    ("CONNECT ", Final.CONNECT),
)
_ERROR_STARTS = ("+CME ERROR", "+CMS ERROR", "CME ERROR:", "CMS ERROR:", "MODEM ERROR:")
# Answers whose quoted text may hold line breaks: the lines are joined until the quote closes.
_MULTILINE = frozenset({"+CUSD"})
MAX_JOINED_LINES = 32


class Body(StrEnum):
    """Whether a URC's header line is followed by a body line."""

    NONE = "none"
    ALWAYS = "always"
    IF_LENGTH = "if_length"  # PDU mode sends `<length>` then the PDU; text mode one line


# Known URCs (TS 27.007, 27.005 and common vendor ones). While a command runs, a line with one
# of these names is a URC unless the command expects exactly that name; `^` lines likewise.
URCS: dict[str, Body] = {
    "+CMTI": Body.NONE,
    "+CMT": Body.ALWAYS,
    "+CDS": Body.IF_LENGTH,
    "+CDSI": Body.NONE,
    "+CBM": Body.ALWAYS,
    "+CBMI": Body.NONE,
    "+CREG": Body.NONE,
    "+CEREG": Body.NONE,
    "+CGREG": Body.NONE,
    "+C5GREG": Body.NONE,
    "RING": Body.NONE,
    "+CRING": Body.NONE,
    "+CLIP": Body.NONE,
    "+CCWA": Body.NONE,
    "+CUSD": Body.NONE,
    "+CSSI": Body.NONE,
    "+CSSU": Body.NONE,
    "+CIEV": Body.NONE,
    "+CGEV": Body.NONE,
    "+CTZV": Body.NONE,
    "+CTZE": Body.NONE,
    "+CTZU": Body.NONE,
    "+NITZ": Body.NONE,
    "+CMGRMI": Body.NONE,
    "+QIND": Body.NONE,
    "+QUSIM": Body.NONE,
    "+CPIN": Body.NONE,
    "+CFUN": Body.NONE,
    "RDY": Body.NONE,
    "SMS DONE": Body.NONE,
    "PB DONE": Body.NONE,
    "CALL READY": Body.NONE,
    "SMS READY": Body.NONE,
    "POWERED DOWN": Body.NONE,
    "NORMAL POWER DOWN": Body.NONE,
}

# Bare words accepted as URCs when no command runs (others without `+`/`^` are garbage).
_IDLE_WORDS = frozenset(k for k in URCS if not k.startswith("+")) | {
    "NO CARRIER",
    "BUSY",
    "NO ANSWER",
}

_CR, _LF, _GT, _SP = 0x0D, 0x0A, 0x3E, 0x20
# Bytes dropped from lines: NUL, 0xFF (line noise, idle UART), C0 controls other than TAB
# (Ctrl-Z and ESC come back in the echo of a PDU), DEL.
_DROP = frozenset([*range(0x09), *range(0x0B, 0x0D), *range(0x0E, 0x20), 0x7F, 0xFF])
_HEXLINE = re.compile(r"(?:[0-9A-Fa-f]{2})+")


def split_args(text: str) -> list[str]:
    """Split `a,"b,c",d` into ['a', 'b,c', 'd']; an unclosed quote runs to the end."""
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur).strip())
    return out


def _name_args(line: str) -> tuple[str, str]:
    head, sep, rest = line.partition(":")
    if sep and (head.startswith(("+", "^")) or " " not in head.strip()):
        return head.strip().upper(), rest.strip()
    return line.strip().upper(), ""


def _final(line: str) -> FinalResult | None:
    upper = line.upper()
    kind = FINAL_LINES.get(upper)
    if kind is not None:
        return FinalResult(kind, line)
    for prefix, kind in FINAL_PREFIXES:
        if upper.startswith(prefix):
            arg = line[len(prefix) :].strip()
            if kind is Final.CME_ERROR:
                code, reason = cme_error(arg)
            elif kind is Final.CMS_ERROR:
                code, reason = cms_error(arg)
            elif kind is Final.ERROR:
                code = int(arg) if arg.isdigit() else None
                return FinalResult(kind, line, code, f"modem error {arg}".strip())
            else:
                return FinalResult(kind, line)
            return FinalResult(kind, line, code, reason)
    return None


# ---------------------------------------------------------------------------
# Line parser.


class LineParser:
    """Bytes to events; split anywhere, the events are the same. Bounded, never raises."""

    def __init__(self, *, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._discarding = False
        self._skip_space = False
        self._prompt = False
        self._command: str | None = None
        self._expect: str | None = None
        self._echo: frozenset[str] = frozenset()
        self._waiting: tuple[Urc, Body] | None = None
        self._late: str | None = None
        self._joined: list[str] | None = None  # lines of a quoted text that spans lines

    def set_command(
        self,
        command: str | None,
        *,
        expect: str | None = None,
        echo: Iterable[str] = (),
        prompt: bool = False,
        abandoned: bool = False,
    ) -> None:
        """Say which command runs now (None: idle), its answer prefix, echoes, and whether a
        `> ` prompt is due. `abandoned`: the last command timed out, so lines with its answer
        prefix that come while idle are its late answer, not URCs."""
        self._late = self._expect if command is None and abandoned else None
        self._command = command
        self._expect = expect.upper() if expect else None
        texts = [command] if command else []
        self._echo = frozenset(t.strip().upper() for t in [*texts, *echo])
        self._prompt = prompt

    def feed(self, data: bytes) -> list[Event]:
        """Events completed by `data`."""
        events: list[Event] = []
        buf = self._buf
        for b in data:
            if self._skip_space:
                self._skip_space = False
                if b == _SP:
                    continue
            if b in (_CR, _LF):
                if self._discarding:
                    self._discarding = False
                elif buf:
                    raw = bytes(buf)
                    buf.clear()
                    self._line(raw, events)
                continue
            if b in _DROP or self._discarding:
                continue
            if b == _GT and not buf and self._prompt:
                self._prompt = False
                self._skip_space = True
                events.append(Prompt())
                continue
            if len(buf) >= self.max_line:
                buf.clear()
                self._discarding = True
                events.append(Garbage(f"line longer than {self.max_line} bytes dropped"))
                continue
            buf.append(b)
        return events

    def _line(self, raw: bytes, events: list[Event]) -> None:
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            events.append(Garbage("line is not UTF-8", raw.decode("utf-8", "replace")[:80]))
            return
        if not line:
            return
        if self._joined is not None:
            if _final(line) is None:
                self._joined.append(line)
                joined = "\n".join(self._joined)
                if joined.count('"') % 2 and (
                    len(self._joined) < MAX_JOINED_LINES and len(joined) < self.max_line
                ):
                    return
                line, self._joined = joined, None
                self._emit(line, events)
                return
            # A final result ends the answer: the quote never closed; keep what came.
            partial, self._joined = "\n".join(self._joined), None
            self._emit(partial, events)
        elif _name_args(line)[0] in _MULTILINE and line.count('"') % 2:
            self._joined = [line]
            return
        self._emit(line, events)

    def _emit(self, line: str, events: list[Event]) -> None:
        if self._waiting is not None:
            urc, body = self._waiting
            self._waiting = None
            if _final(line) is None and _name_args(line)[0] not in URCS:
                events.append(Urc(urc.name, urc.args, urc.line, line.strip('"') if body else None))
                return
            events.append(urc)  # the body never came; what came is a line of its own
        events.append(self._classify(line))
        last = events[-1]
        if isinstance(last, FinalResult) and self._command is not None:
            # The command is over: what follows in the same read (a `+CREG` URC right after
            # the OK of `AT+CREG?`) is unsolicited, not more of its answer.
            self.set_command(None)
        if isinstance(last, Urc):
            body = URCS.get(last.name, Body.NONE)
            if body is Body.ALWAYS or (body is Body.IF_LENGTH and last.args.strip().isdigit()):
                events.pop()
                self._waiting = (last, body)

    def _classify(self, line: str) -> Event:
        upper = line.upper()
        name, args = _name_args(line)
        if self._command is None:
            if upper in ("OK", "ERROR") or upper.startswith(_ERROR_STARTS):
                return Garbage("final result with no command running", line[:80])
            if self._late is not None and name == self._late:
                return Garbage("late answer to a command that timed out", line[:80])
            if line.startswith(("+", "^")) or upper in _IDLE_WORDS:
                return Urc(name, args, line)
            return Garbage("unexpected line with no command running", line[:80])
        if upper in self._echo:
            return Echo(line)
        final = _final(line)
        if final is not None:
            return final
        if self._expect is not None and name == self._expect:
            return InfoLine(line)
        if name in URCS or line.startswith("^"):
            return Urc(name, args, line)
        return InfoLine(line)


# ---------------------------------------------------------------------------
# Engine.


#: What the engine reads and writes: the transport's one port interface (serial ports, the
#: recording wrapper and capture playback all fit).
AtPort = Port


class ModemTimeoutError(ModemError):
    """The modem did not answer (or show the prompt) in time."""


class ModemResultError(ModemError):
    """The modem answered ERROR, +CME ERROR or +CMS ERROR (or a call result code)."""

    def __init__(self, command: str, final: FinalResult) -> None:
        reason = final.reason or final.kind.value.lower()
        code = "" if final.code is None else f" {final.code}"
        super().__init__(
            f"{command}: {final.kind.value}{code} ({reason})",
            command=command,
            code=final.code,
            reason=reason,
        )
        self.final = final


@dataclass(frozen=True, slots=True)
class Response:
    """A command's information lines and its final result."""

    command: str
    lines: tuple[str, ...]
    final: FinalResult

    def values(self, prefix: str) -> list[str]:
        """The text after `prefix:` of each line that starts with it."""
        p = prefix.upper().rstrip(":") + ":"
        return [ln[len(p) :].strip() for ln in self.lines if ln.upper().startswith(p)]


@dataclass(slots=True)
class _Pending:
    command: str
    done: asyncio.Future[FinalResult]
    prompt: asyncio.Future[FinalResult | None] | None = None  # None: the prompt came
    lines: list[str] = field(default_factory=list)


# A command: `AT` and printable ASCII. No `;` (no chaining), no `+++`, quotes balanced.
_COMMAND = re.compile(r"AT[\x20-\x3A\x3C-\x7E]{0,250}", re.IGNORECASE)
_EXPECT = re.compile(r"[+^][A-Z0-9]{1,16}", re.IGNORECASE)
_PDU_HEX = re.compile(r"(?:[0-9A-F]{2}){2,200}")
_CMGS = re.compile(r"\+CMGS:\s*(\d+)", re.IGNORECASE)
_CTRL_Z, _ESC_BYTE = b"\x1a", b"\x1b"


def _check_command(command: str) -> str:
    if (
        not _COMMAND.fullmatch(command)
        or "+++" in command
        or command.count('"') % 2
        or command.upper().startswith("AT+CMGS")  # only send_pdu may start a send
    ):
        raise CommandError(
            f"refused to write AT command {command[:60]!r}: not a single printable AT command",
            code="invalid",
        )
    return command


class AtEngine:
    """The only owner of the modem port: one command at a time, URCs to `on_urc`.

    Run it with `async with engine:` (reader in its own TaskGroup) or put `engine.run()` in the
    supervisor's TaskGroup. `command()` and `send_pdu()` raise `ModemResultError` on an error
    result, `ModemTimeoutError` when the modem stays silent; both are `ModemError`s.
    """

    def __init__(
        self,
        port: AtPort,
        *,
        on_urc: Callable[[Urc], None],
        log: FilteringBoundLogger | None = None,
        on_alive: Callable[[], None] | None = None,
        write_timeout: float = 5.0,
        max_line: int = MAX_LINE,
    ) -> None:
        self._port = port
        self._on_urc = on_urc
        self._on_alive = on_alive
        self._log: FilteringBoundLogger = log or structlog.get_logger("terminal_gw.modem.at")
        self._write_timeout = write_timeout
        self._parser = LineParser(max_line=max_line)
        self._lock = asyncio.Lock()
        self._pending: _Pending | None = None
        self._running = False
        self._tg: asyncio.TaskGroup | None = None
        self._reader: asyncio.Task[None] | None = None
        self.counters: dict[str, int] = {
            "commands": 0,
            "errors": 0,
            "timeouts": 0,
            "urcs": 0,
            "garbage": 0,
            "stray": 0,
        }

    # -- life ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        self._reader = self._tg.create_task(self.run(), name="at-reader")
        await asyncio.sleep(0)  # let the reader start, so a command right away is read
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._tg is None or self._reader is None:
            return
        self._reader.cancel()
        try:
            await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            self._tg = self._reader = None
            await self._port.close()

    @property
    def running(self) -> bool:
        """The reader is running, so commands can be answered."""
        return self._running

    async def run(self) -> None:
        """Read the port until cancelled; a dead port raises TransportError."""
        self._running = True
        try:
            while True:
                try:
                    data = await self._port.read()
                except OSError as e:
                    raise TransportError(f"modem port read failed: {e}", reason="error") from e
                if not data:
                    raise TransportError("modem port closed", reason="closed")
                for event in self._parser.feed(data):
                    self._dispatch(event)
        finally:
            self._running = False
            p = self._pending
            if p is not None and not p.done.done():
                p.done.set_exception(
                    ModemError("modem port reader stopped", command=p.command, reason="stopped")
                )

    # -- commands -----------------------------------------------------------------------

    async def command(
        self,
        command: str,
        *,
        timeout: float,  # noqa: ASYNC109 - each command has its own answer time
        expect: str | None = None,
    ) -> Response:
        """Send `command` and wait for its final result; `expect` is its answer prefix (`+CSQ`)
        so a line with that name is read as the answer, not as a URC."""
        _check_command(command)
        if expect is not None and not _EXPECT.fullmatch(expect):
            raise CommandError(f"bad expected prefix {expect!r}", code="invalid")
        async with self._lock:
            pending = self._start(command, expect=expect)
            try:
                await self._write(command.encode("ascii") + b"\r", command)
                final = await self._wait(pending.done, timeout, command, "answer")
            finally:
                self._finish()
        return self._result(pending, final)

    async def send_pdu(
        self,
        length: int,
        pdu_hex: str,
        timeout: float,  # noqa: ASYNC109 - a satellite send takes long; the caller knows how long
        *,
        prompt_timeout: float = 10.0,
    ) -> int:
        """`AT+CMGS=<length>`, wait for `> `, write the PDU hex and Ctrl-Z; the message
        reference from `+CMGS: <mr>`. ESC aborts when the prompt does not come."""
        pdu_hex = pdu_hex.upper()
        if not _PDU_HEX.fullmatch(pdu_hex):
            raise CommandError("PDU must be 4-400 hex digits", code="invalid")
        raw = bytes.fromhex(pdu_hex)
        if not 1 <= length <= 255 or len(raw) - 1 - raw[0] != length:
            raise CommandError(
                f"TPDU length {length} does not match the PDU ({len(raw) - 1 - raw[0]} octets "
                "after the SMSC)",
                code="invalid",
            )
        command = f"AT+CMGS={length:d}"
        async with self._lock:
            pending = self._start(command, expect="+CMGS", echo=[pdu_hex], prompt=True)
            try:
                await self._write(command.encode("ascii") + b"\r", command)
                try:
                    await self._wait_prompt(pending, prompt_timeout, command)
                except ModemTimeoutError:
                    # ESC cancels a half-open send, so the next command is not read as text.
                    with contextlib.suppress(ModemError, TransportError):
                        await self._write(_ESC_BYTE, command)
                    raise
                await self._write(pdu_hex.encode("ascii") + _CTRL_Z, command)
                final = await self._wait(pending.done, timeout, command, "+CMGS")
            finally:
                self._finish()
        response = self._result(pending, final)
        for line in response.lines:
            m = _CMGS.match(line)
            if m:
                return int(m.group(1))
        raise ModemError(
            f"{command}: OK without a +CMGS message reference",
            command=command,
            reason="no message reference",
        )

    # -- internals ----------------------------------------------------------------------

    def _start(
        self,
        command: str,
        *,
        expect: str | None,
        echo: Iterable[str] = (),
        prompt: bool = False,
    ) -> _Pending:
        if not self._running:
            raise ModemError(
                f"{command}: the AT engine is not running", command=command, reason="not running"
            )
        loop = asyncio.get_running_loop()
        pending = _Pending(command, loop.create_future(), loop.create_future() if prompt else None)
        self._pending = pending
        self._parser.set_command(command, expect=expect, echo=echo, prompt=prompt)
        self.counters["commands"] += 1
        return pending

    def _finish(self) -> None:
        p = self._pending
        self._pending = None
        # A timeout cancels the awaited future: cancelled or still open means no answer came.
        abandoned = p is not None and (not p.done.done() or p.done.cancelled())
        self._parser.set_command(None, abandoned=abandoned)
        if p is not None:
            for fut in (p.done, p.prompt):
                if fut is None:
                    continue
                if not fut.done():
                    fut.cancel()
                elif not fut.cancelled():
                    fut.exception()  # mark a failure nobody waited for as seen

    async def _write(self, data: bytes, command: str) -> None:
        # Last line of defence: only what the engine itself built may reach the port.
        body = data.rstrip(b"\r\x1a")
        if not (
            data == _ESC_BYTE
            or (data.endswith(b"\r") and _COMMAND.fullmatch(body.decode("ascii", "replace")))
            or (data.endswith(_CTRL_Z) and _PDU_HEX.fullmatch(body.decode("ascii", "replace")))
        ):
            raise CommandError("refused to write unexpected bytes to the modem", code="invalid")
        try:
            async with asyncio.timeout(self._write_timeout):
                await self._port.write(data)
        except TimeoutError:
            self.counters["timeouts"] += 1
            raise ModemTimeoutError(
                f"{command}: write timed out after {self._write_timeout:g}s",
                command=command,
                reason="write timeout",
            ) from None

    async def _wait(
        self, fut: asyncio.Future[FinalResult], within_s: float, command: str, what: str
    ) -> FinalResult:
        try:
            async with asyncio.timeout(within_s):
                return await fut
        except TimeoutError:
            self.counters["timeouts"] += 1
            raise ModemTimeoutError(
                f"{command}: no {what} within {within_s:g}s", command=command, reason="timeout"
            ) from None

    async def _wait_prompt(self, pending: _Pending, within_s: float, command: str) -> None:
        if pending.prompt is None:
            return
        try:
            async with asyncio.timeout(within_s):
                final = await pending.prompt
        except TimeoutError:
            self.counters["timeouts"] += 1
            raise ModemTimeoutError(
                f"{command}: no '> ' prompt within {within_s:g}s",
                command=command,
                reason="no prompt",
            ) from None
        if final is not None:  # the modem refused before asking for the PDU
            self.counters["errors"] += 1
            raise ModemResultError(command, final)

    def _result(self, pending: _Pending, final: FinalResult) -> Response:
        if not final.ok:
            self.counters["errors"] += 1
            raise ModemResultError(pending.command, final)
        return Response(pending.command, tuple(pending.lines), final)

    def _dispatch(self, event: Event) -> None:
        p = self._pending
        if isinstance(event, Urc):
            self.counters["urcs"] += 1
            try:
                self._on_urc(event)
            except Exception:  # noqa: BLE001 - a handler's bug must not stop the reader
                self._log.exception("urc handler failed", urc=event.line[:80])
        elif isinstance(event, Garbage):
            self.counters["garbage"] += 1
            self._log.debug("modem garbage", reason=event.reason, text=event.text)
        elif isinstance(event, Echo):
            pass
        elif p is None:
            self.counters["stray"] += 1
            self._log.debug("modem line with no command", line=repr(event)[:80])
        elif isinstance(event, InfoLine):
            p.lines.append(event.text)
        elif isinstance(event, Prompt):
            if p.prompt is not None and not p.prompt.done():
                p.prompt.set_result(None)
        elif not p.done.done():
            if p.prompt is not None and not p.prompt.done():
                p.prompt.set_result(event)
            p.done.set_result(event)
            if self._on_alive is not None:
                self._on_alive()
