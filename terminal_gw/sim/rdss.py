"""BeiDou RDSS terminal simulator on a pty: either dialect (2.1 or BDS-3), a card (id, level,
service interval, or none), beam output, incoming short messages, and faults on demand.

It answers the card query of its dialect only (CCICA -> BDICI, or CCICR -> BDICP), turns beam
output (BDBSI, BDPWI) on with CCRMO, and answers each send (CCTXA, CCTCQ) with BDFKI: refused
with the time left when the service interval has not passed since the last send, refused for
suppression, radio silence or no card, else executed. Its sentences are written and read by
code of its own, not the daemon's tables, so tests check the daemon against an independent
writer.

Faults: nocard, interval (the next send is refused with a wait whatever the timing),
suppressed, silence, nobeams, fragments (output one byte at a time), duplicates (every
received message output twice), garbage (noise between sentences), hangup (unplug, then a new
pty under the same link).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from terminal_gw.transport.pty import PtyDevice

__all__ = ["FAULTS", "RdssSimulator", "SentMessage", "sim_sentence"]

SimDialect = Literal["2.1", "bds3"]
FAULTS = (
    "nocard",
    "interval",
    "suppressed",
    "silence",
    "nobeams",
    "fragments",
    "duplicates",
    "garbage",
    "hangup",
)


def sim_sentence(body: str) -> bytes:
    """`$body*hh\\r\\n` with the XOR checksum (the simulator's own writer)."""
    x = 0
    for b in body.encode("ascii"):
        x ^= b
    return f"${body}*{x:02X}\r\n".encode("ascii")


@dataclass(frozen=True, slots=True)
class SentMessage:
    """A send the terminal executed."""

    to: str
    mode: int  # 2.1 transfer mode, or BDS-3 code type
    content: str  # hex as written by the host
    at: float  # monotonic
    raw: bytes


@dataclass
class RdssSimulator:
    """An RDSS terminal answering on `device` (see module doc)."""

    device: PtyDevice
    dialect: SimDialect = "2.1"
    user_id: str = "0242286"
    level: int = 3
    interval_s: float = 60.0
    encrypted: bool = False
    card: bool = True
    seed: int = 1
    on_recreate: Callable[[str], None] | None = None
    faults: set[str] = field(default_factory=set)
    #: Also answer card queries and output control with BDFKI (some terminals do).
    feedback_all: bool = False
    #: Seconds before a send is answered (the terminal transmitting).
    answer_delay_s: float = 0.0
    #: False: sends are transmitted but never answered with BDFKI (a mute terminal).
    answer_sends: bool = True
    sent: list[SentMessage] = field(default_factory=list)
    commands: list[bytes] = field(default_factory=list)
    refused: list[bytes] = field(default_factory=list)  # lines not answered
    refusals: list[str] = field(default_factory=list)  # sends refused by BDFKI N, why

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)  # noqa: S311 - noise, not security
        self._buf = bytearray()
        self._out: deque[bytes] = deque()
        self._last_send: float | None = None
        self._beam_every: float | None = None
        self._next_beam = 0.0
        self._unplugged_until: float | None = None
        self._interval_wait_s = 0

    # -- control ------------------------------------------------------------------------

    def set_fault(self, name: str, on: bool = True) -> None:
        """Turn a fault on or off (hangup: see `unplug`)."""
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}")
        (self.faults.add if on else self.faults.discard)(name)

    def refuse_next_send(self, wait_s: int) -> None:
        """The next send is refused with `wait_s` whatever the timing (fault "interval")."""
        self._interval_wait_s = wait_s
        self.faults.add("interval")

    def unplug(self, seconds: float) -> None:
        """Hang up the pty; a new one appears under the same link after `seconds`."""
        self.device.hangup()
        self._unplugged_until = time.monotonic() + seconds
        self._buf.clear()
        self._out.clear()

    def deliver(
        self,
        sender: str,
        *,
        text: str | None = None,
        data: bytes | None = None,
        mode: Literal["chinese", "code", "mixed"] = "mixed",
        info_class: int = 1,
    ) -> bytes:
        """Output a received message (BDTXR or BDTCI); returns the sentence."""
        if text is not None:
            raw = text.encode("gb2312")
            if mode == "mixed":
                raw = b"\xa4" + raw
        else:
            raw = data or b""
        content = raw.hex().upper()
        if self.dialect == "2.1":
            code = {"chinese": 0, "code": 1, "mixed": 2}[mode]
            line = sim_sentence(f"BDTXR,{info_class},{sender.zfill(7)},{code},,{content}")
        else:
            code = {"chinese": 1, "code": 2, "mixed": 3}[mode]
            hms = datetime.now(UTC).strftime("%H%M%S")
            line = sim_sentence(
                f"BDTCI,{sender.zfill(8)},{self.user_id},2,{hms},{code},0,{content}"
            )
        self._emit(line)
        if "duplicates" in self.faults:
            self._emit(line)
        return line

    def beams(self) -> None:
        """Output the beam sentence of the dialect now."""
        low = "nobeams" in self.faults
        if self.dialect == "2.1":
            powers = [0] * 10 if low else [3, 2, 2, 0, 3, 0, 0, 3, 0, 0]
            self._emit(sim_sentence("BDBSI,01,03," + ",".join(map(str, powers))))
        else:
            hms = datetime.now(UTC).strftime("%H%M%S.00")
            groups = [(2, 51, 44, 0), (4, 50, 43, 0), (11, 48, 41, 0), (16, 51, 44, 0)]
            if low:
                groups = [(b, 20, 18, 0) for b, _, _, _ in groups]
            body = ",".join(",".join(map(str, g)) for g in groups)
            self._emit(sim_sentence(f"BDPWI,{hms},00,{len(groups):02d},{body}"))

    # -- running ------------------------------------------------------------------------

    async def run(
        self,
        duration: float | None = None,
        *,
        incoming_every: float | None = None,
        sender: str = "0166166",
    ) -> None:
        """Answer the host until `duration` ends (or forever), with incoming messages."""
        end = None if duration is None else time.monotonic() + duration
        next_in = None if incoming_every is None else time.monotonic() + incoming_every
        n = 0
        while end is None or time.monotonic() < end:
            now = time.monotonic()
            if self._unplugged_until is not None:
                if now < self._unplugged_until:
                    await asyncio.sleep(0.02)
                    continue
                self._unplugged_until = None
                self.device.recreate()
                if self.on_recreate is not None:
                    self.on_recreate(self.device.slave_path)
            if next_in is not None and now >= next_in:
                n += 1
                self._demo_message(n, sender)
                next_in = now + (incoming_every or 1.0)
            if self._beam_every is not None and now >= self._next_beam:
                self.beams()
                self._next_beam = now + max(self._beam_every, 0.2)
            await self._flush()
            data = await self.device.read(0.02)
            if data:
                self.feed(data)

    def _demo_message(self, n: int, sender: str) -> None:
        kind = n % 3
        if kind == 1:
            self.deliver(sender, text="船位正常，风力三级。", mode="chinese")
        elif kind == 2:
            self.deliver(sender, data=bytes([0x12, 0x34, 0x56, n % 256]), mode="code")
        else:
            self.deliver(sender, text=f"Report {n}: 渔获良好 OK", mode="mixed")

    def feed(self, data: bytes) -> None:
        """Bytes from the host: sentences end with CR or LF."""
        for b in data:
            if b in (0x0D, 0x0A):
                if self._buf:
                    line = bytes(self._buf)
                    self._buf.clear()
                    self._command(line)
                continue
            if len(self._buf) < 8192:
                self._buf.append(b)

    # -- internals ----------------------------------------------------------------------

    def _emit(self, line: bytes) -> None:
        if "garbage" in self.faults:
            self._out.append(bytes(self._rng.choice(b"\x00\xff#@!~?,*") for _ in range(5)))
        self._out.append(line)

    async def _flush(self) -> None:
        while self._out and self.device.is_up:
            chunk = self._out.popleft()
            if "fragments" in self.faults:
                for i in range(len(chunk)):
                    self.device.write(chunk[i : i + 1])
                    await asyncio.sleep(0.0005)
            else:
                self.device.write(chunk)

    def _command(self, line: bytes) -> None:
        self.commands.append(line)
        text = line.decode("ascii", "replace")
        star = text.rfind("*")
        if not text.startswith("$") or star < 0:
            self.refused.append(line)
            return
        body = text[1:star]
        x = 0
        for b in body.encode("ascii", "replace"):
            x ^= b
        if text[star + 1 : star + 3].upper() != f"{x:02X}":
            self.refused.append(line)
            return
        parts = body.split(",")
        name, args = parts[0], parts[1:]
        if self.feedback_all and name in ("CCICA", "CCRMO", "CCICR"):
            if self.dialect == "2.1":
                self._emit(sim_sentence(f"BDFKI,{name[2:]},Y,Y,0,0000"))
            else:
                hms = datetime.now(UTC).strftime("%H%M%S")
                self._emit(sim_sentence(f"BDFKI,{hms},{name[2:]},Y,0,0"))
        if name == "CCICA" and self.dialect == "2.1":
            self._card_21()
        elif name == "CCICR" and self.dialect == "bds3":
            self._card_3()
        elif name == "CCRMO" and len(args) >= 2:
            wanted = "BSI" if self.dialect == "2.1" else "PWI"
            if args[0] == wanted:
                if args[1] in ("2", "4"):
                    every = float(args[2]) if len(args) > 2 and args[2].isdigit() else 1.0
                    self._beam_every = every or 1.0
                    self._next_beam = 0.0
                elif args[1] in ("1", "3"):
                    self._beam_every = None
        elif name == "CCTXA" and self.dialect == "2.1" and len(args) == 4:
            self._send(line, args[0], args[2], args[3])
        elif name == "CCTCQ" and self.dialect == "bds3" and len(args) == 6:
            self._send(line, args[0], args[3], args[4])
        else:
            self.refused.append(line)

    def _card_21(self) -> None:
        if self.card and "nocard" not in self.faults:
            enc = "E" if self.encrypted else "N"
            serial = self.user_id.zfill(8)
            every = round(self.interval_s)
            body = f"BDICI,{self.user_id},{serial},0000011,6,{every},{self.level},{enc},0"
        else:
            body = "BDICI,0000000,00000000,0000000,0,0,0,N,0"
        self._emit(sim_sentence(body))

    def _card_3(self) -> None:
        fields = ["0"] * 23
        fields[7] = "N"
        if self.card and "nocard" not in self.faults:
            fields[0] = self.user_id
            fields[5] = "E" if self.encrypted else "N"
            fields[13] = f"{round(self.interval_s)}"
            fields[14] = str(self.level)
        else:
            fields[0] = "0000000"
            fields[5] = "N"
        self._emit(sim_sentence("BDICP," + ",".join(fields)))

    def _feedback(self, ok: bool, *, wait: int = 0, why: str = "") -> None:
        if not ok:
            self.refusals.append(why)
        if self.dialect == "2.1":
            suppression = {"suppressed": 1, "silence": 2}.get(why, 0)
            yn = "Y" if ok else "N"
            self._emit(sim_sentence(f"BDFKI,TXA,{yn},Y,{suppression},{wait:04d}"))
        else:
            reason = {"interval": 1, "suppressed": 2, "silence": 3, "nocard": 5}.get(why, 0)
            hms = datetime.now(UTC).strftime("%H%M%S")
            yn = "Y" if ok else "N"
            self._emit(sim_sentence(f"BDFKI,{hms},TCQ,{yn},{reason},{wait}"))

    def _send(self, line: bytes, to: str, mode: str, content: str) -> None:
        if self.answer_delay_s > 0:
            loop = asyncio.get_running_loop()
            loop.call_later(self.answer_delay_s, self._answer_send, line, to, mode, content)
        else:
            self._answer_send(line, to, mode, content)

    def _answer_send(self, line: bytes, to: str, mode: str, content: str) -> None:
        now = time.monotonic()
        if not self.card or "nocard" in self.faults:
            self._feedback(False, why="nocard")
            return
        for why in ("suppressed", "silence"):
            if why in self.faults:
                self._feedback(False, why=why)
                return
        if "interval" in self.faults:
            self.faults.discard("interval")
            self._feedback(
                False, wait=self._interval_wait_s or int(self.interval_s), why="interval"
            )
            return
        if self._last_send is not None and now - self._last_send < self.interval_s:
            left = max(1, round(self.interval_s - (now - self._last_send)))
            self._feedback(False, wait=left, why="interval")
            return
        self._last_send = now
        self.sent.append(SentMessage(to, int(mode) if mode.isdigit() else -1, content, now, line))
        if self.answer_sends:
            self._feedback(True)
