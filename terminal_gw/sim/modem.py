"""Tiantong terminal simulator on a pty: the 3GPP TS 27.007/27.005 command set the driver uses,
SIM storage with a capacity, incoming SMS (single, concatenated, UCS2), and faults on demand
(hang, ERROR storms, garbage, registration lost, unplug).

`deliver_pdus()` builds SMS-DELIVER PDUs with an encoder of its own (not the daemon's codec),
so tests check the daemon's decoder against an independent writer.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

import gsm0338  # noqa: F401 - registers the "gsm03.38" codec

from terminal_gw.transport.pty import PtyDevice

__all__ = [
    "ModemSimulator",
    "SentSms",
    "StoredSms",
    "deliver_pdus",
]

# ---------------------------------------------------------------------------
# SMS-DELIVER encoder (TS 23.040 §9.2.2.1).


def _bcd(digits: str) -> bytes:
    padded = digits + ("F" if len(digits) % 2 else "")
    return bytes(int(padded[i + 1] + padded[i], 16) for i in range(0, len(padded), 2))


def _address(number: str) -> bytes:
    digits = number.lstrip("+")
    if not digits.isdigit():
        raise ValueError(f"sender must be digits with an optional +: {number!r}")
    toa = 0x91 if number.startswith("+") else 0x81
    return bytes([len(digits), toa]) + _bcd(digits)


def _scts(t: datetime) -> bytes:
    offset = t.utcoffset() or timedelta(0)
    quarters = int(offset.total_seconds() // 900)
    digits = t.strftime("%y%m%d%H%M%S")
    body = _bcd(digits)
    q = abs(quarters)
    tz = ((q % 10) << 4) | (q // 10) | (0x08 if quarters < 0 else 0)
    return body + bytes([tz])


def _pack7(septets: bytes, skip: int) -> bytes:
    n = 0
    for i, s in enumerate(septets):
        n |= s << (7 * (skip + i))
    nbytes = ((skip + len(septets)) * 7 + 7) // 8
    # The first (skip * 7) // 8 octets are the header's room: the caller puts the header there.
    return n.to_bytes(nbytes, "little")[(skip * 7) // 8 :]


def _gsm_units(text: str) -> list[bytes] | None:
    units: list[bytes] = []
    for ch in text:
        try:
            units.append(ch.encode("gsm03.38"))
        except UnicodeEncodeError:
            return None
    return units


def _chunks(units: list[bytes], limit: int) -> list[bytes]:
    out: list[bytes] = []
    cur = b""
    for u in units:
        if len(cur) + len(u) > limit:
            out.append(cur)
            cur = b""
        cur += u
    out.append(cur)
    return out


def deliver_pdus(
    sender: str,
    text: str,
    *,
    timestamp: datetime,
    ref: int = 0,
    smsc: str = "+8613800000000",
    force_parts: int | None = None,
    pid: int = 0x00,
) -> list[str]:
    """SMS-DELIVER PDU hex (with SMSC) for `text` from `sender`: GSM 7-bit when it fits, else
    UCS2; split with an 8-bit concatenation header when long (or into `force_parts` parts)."""
    gsm = _gsm_units(text)
    if gsm is not None:
        units, single, per_part, dcs = gsm, 160, 153, 0x00
    else:
        units = [ch.encode("utf-16-be") for ch in text]
        single, per_part, dcs = 140, 134, 0x08
    total_len = sum(len(u) for u in units)
    if force_parts is not None and force_parts > 1:
        size = -(-total_len // force_parts)
        parts = _chunks(units, max(size, *(len(u) for u in units)))
    elif total_len <= single:
        parts = [b"".join(units)]
    else:
        parts = _chunks(units, per_part)
    sc = _address(smsc)
    sc_field = bytes([len(sc) - 1]) + sc[1:]  # SMSC length counts octets, not digits
    out: list[str] = []
    for seq, chunk in enumerate(parts, start=1):
        multi = len(parts) > 1
        fo = 0x04 | (0x40 if multi else 0)  # TP-MMS set: no more messages waiting
        header = bytes([5, 0x00, 3, ref & 0xFF, len(parts), seq]) if multi else b""
        tpdu = bytearray([fo]) + _address(sender) + bytes([pid, dcs]) + _scts(timestamp)
        if dcs == 0x00:
            skip = (len(header) * 8 + 6) // 7
            packed = _pack7(chunk, skip)
            tpdu.append(skip + len(chunk))
            tpdu += header + packed if header else packed
        else:
            tpdu.append(len(header) + len(chunk))
            tpdu += header + chunk
        out.append((sc_field + bytes(tpdu)).hex().upper())
    return out


def status_report_pdu(
    recipient: str,
    mr: int,
    *,
    submitted: datetime,
    discharged: datetime,
    status: int = 0x00,
    zone: int | None = None,
    smsc: str = "+8613800000000",
) -> str:
    """SMS-STATUS-REPORT PDU hex (with SMSC) for the message `mr` sent to `recipient`. `zone`
    replaces the service-centre timestamp's time-zone octet (service centres send 0xE1)."""
    sc = _address(smsc)
    scts = _scts(submitted)
    if zone is not None:
        scts = scts[:6] + bytes([zone])
    tpdu = bytes([0x06, mr & 0xFF]) + _address(recipient) + scts + _scts(discharged)
    return (bytes([len(sc) - 1]) + sc[1:] + tpdu + bytes([status])).hex().upper()


# ---------------------------------------------------------------------------
# The simulator.


@dataclass
class StoredSms:
    """One SIM storage slot: 0 received unread, 1 received read, 2 stored unsent, 3 stored
    sent."""

    stat: int
    pdu: str

    @property
    def length(self) -> int:
        """TPDU length in octets (the PDU less its SMSC field)."""
        raw = bytes.fromhex(self.pdu)
        return len(raw) - 1 - raw[0]


@dataclass(frozen=True)
class SentSms:
    """What the client sent with AT+CMGS: the declared length, the PDU hex, the reference."""

    length: int
    pdu: str
    mr: int


@dataclass
class _Faults:
    hang: bool = False
    hang_until_reset: bool = False
    hang_until: float | None = None  # monotonic
    error_storm: bool = False
    garbage: bool = False


_CMD = re.compile(rb"^AT(.*)$", re.IGNORECASE | re.DOTALL)
_CTRL_Z, _ESC = 0x1A, 0x1B


@dataclass
class ModemSimulator:
    """A Tiantong terminal on `device`: answers AT commands, stores and announces SMS."""

    device: PtyDevice
    imei: str = "860123456789012"
    imsi: str = "460110123456789"
    firmware: str = "TT-SIM 1.2.0"
    operator: str = "CHINA TELECOM TIANTONG"
    capacity: int = 30
    rssi: int = 18
    ber: int = 0
    reg: int = 1
    pin: str = "READY"  # AT+CPIN? state; "NOT INSERTED" answers +CME ERROR 10
    answer_delay_s: float = 0.0
    reset_s: float = 0.2  # time a CFUN reset keeps the terminal silent
    seed: int = 1
    on_recreate: Callable[[str], None] | None = None
    # Firmware quirks seen on real modems: "inline_cmgr" (the PDU on the +CMGR header line),
    # "listing_urcs" (*PSUTTZ and DST lines between a +CMGR/+CMGL header and its PDU),
    # "creg_urc_after_ok" (a +CREG URC in the same write as AT+CREG?'s OK).
    quirks: set[str] = field(default_factory=set)
    # How error results are spelled: "plus" (+CME ERROR: n), "bare" (CME ERROR: n), "modem"
    # (MODEM ERROR: n).
    error_style: str = "plus"
    # The network's answer to AT+CUSD=1,...: sent as a +CUSD URC after OK (may hold CR LF).
    ussd_reply: str = "Balance: 10.00\r\nValid to 2026-12-31"
    # State visible to tests.
    echo: bool = True
    cmee: int = 0
    cmgf: int = 0
    cnmi: tuple[int, ...] = (0, 0, 0, 0, 0)
    creg_n: int = 0
    cfun: int = 1
    storage: dict[int, StoredSms] = field(default_factory=dict)
    sent: list[SentSms] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    resets: int = 0
    creg_urcs_sent: int = 0
    rejected: int = 0  # incoming SMS refused: storage full
    faults: _Faults = field(default_factory=_Faults)

    def __post_init__(self) -> None:
        self._buf = bytearray()
        self._pdu_for: int | None = None  # AT+CMGS=<n> waiting for its PDU
        self._mr = 0
        self._rng = random.Random(self.seed)  # noqa: S311 - simulated noise, not security
        self._silent_until = 0.0
        self._unplugged_until: float | None = None
        self._ref = 0
        self._outgoing: list[bytes] = []  # URCs held back while hung or reset

    # -- the Python API --------------------------------------------------------------

    def deliver(
        self,
        sender: str,
        text: str,
        *,
        timestamp: datetime | None = None,
        force_parts: int | None = None,
        direct: bool = False,
    ) -> list[int]:
        """An incoming message: stored on the SIM and announced with +CMTI (or sent with +CMT
        when `direct` or AT+CNMI mt=2). The storage indexes used ([] when not stored)."""
        self._ref = (self._ref + 1) % 256
        ts = timestamp or datetime.now(UTC).replace(microsecond=0).astimezone(
            timezone(timedelta(hours=8))
        )
        pdus = deliver_pdus(sender, text, timestamp=ts, ref=self._ref, force_parts=force_parts)
        return self.deliver_pdus(pdus, direct=direct)

    def deliver_pdus(self, pdus: list[str], *, direct: bool = False) -> list[int]:
        """Deliver ready-made PDUs (with SMSC), each as one incoming message part."""
        used: list[int] = []
        for pdu in pdus:
            if direct or (len(self.cnmi) > 1 and self.cnmi[1] == 2):
                length = StoredSms(0, pdu).length
                self._urc(f"+CMT: ,{length}\r\n{pdu}".encode())
                continue
            idx = self.store(pdu)
            if idx is None:
                self.rejected += 1
                continue
            used.append(idx)
            if len(self.cnmi) > 1 and self.cnmi[1] in (1, 3):
                self._urc(f'+CMTI: "SM",{idx}'.encode())
        return used

    def status_report(self, pdu: str, *, direct: bool = True) -> int | None:
        """A status report PDU (with SMSC): sent with +CDS, or stored and announced with +CDSI.
        The storage index (None when sent directly or storage is full)."""
        if direct:
            length = StoredSms(0, pdu).length
            self._urc(f"+CDS: {length}\r\n{pdu}".encode())
            return None
        idx = self.store(pdu)
        if idx is not None:
            self._urc(f'+CDSI: "SM",{idx}'.encode())
        return idx

    def store(self, pdu: str, stat: int = 0) -> int | None:
        """Put a PDU in the first free slot without announcing it; None when full."""
        for idx in range(1, self.capacity + 1):
            if idx not in self.storage:
                self.storage[idx] = StoredSms(stat, pdu)
                return idx
        return None

    def set_signal(self, rssi: int, ber: int = 0) -> None:
        """Change what AT+CSQ reports (99 = unknown)."""
        self.rssi, self.ber = rssi, ber

    def set_registration(self, stat: int) -> None:
        """Change the registration state; a +CREG URC when AT+CREG=1/2 asked for them."""
        if stat != self.reg:
            self.reg = stat
            if self.creg_n:
                self._urc(f"+CREG: {stat}".encode())

    def hang(self, *, seconds: float | None = None, until_reset: bool = False) -> None:
        """Stop answering: for `seconds`, until AT+CFUN reset (the reset still gets through),
        or until `unhang()`."""
        f = self.faults
        f.hang = True
        f.hang_until_reset = until_reset
        f.hang_until = None if seconds is None else time.monotonic() + seconds

    def unhang(self) -> None:
        """Answer again."""
        self.faults.hang = False
        self.faults.hang_until_reset = False
        self.faults.hang_until = None

    def error_storm(self, on: bool = True) -> None:
        """Answer ERROR to every command."""
        self.faults.error_storm = on

    def garbage(self, on: bool = True) -> None:
        """Put line noise before every answer."""
        self.faults.garbage = on

    def unplug(self, seconds: float) -> None:
        """Hang up the pty (a pulled USB cable); plug a new one in after `seconds`."""
        self.device.hangup()
        self._unplugged_until = time.monotonic() + seconds
        self._buf.clear()
        self._pdu_for = None

    @property
    def hung(self) -> bool:
        """Not answering right now."""
        f = self.faults
        if f.hang and f.hang_until is not None and time.monotonic() >= f.hang_until:
            self.unhang()
        return self.faults.hang

    # -- running ----------------------------------------------------------------------

    async def run(
        self, duration: float | None = None, *, incoming_every: float | None = None
    ) -> None:
        """Answer the client until `duration` ends (or forever)."""
        end = None if duration is None else time.monotonic() + duration
        next_incoming = None if incoming_every is None else time.monotonic() + incoming_every
        n = 0
        while end is None or time.monotonic() < end:
            if self._unplugged_until is not None:
                if time.monotonic() >= self._unplugged_until:
                    self._unplugged_until = None
                    self.device.recreate()
                    if self.on_recreate is not None:
                        self.on_recreate(self.device.slave_path)
                else:
                    await asyncio.sleep(0.02)
                    continue
            if next_incoming is not None and time.monotonic() >= next_incoming:
                n += 1
                self._demo_message(n)
                next_incoming = time.monotonic() + (incoming_every or 1.0)
            self._flush_held()
            if self.faults.garbage and self._rng.random() < 0.3:
                self._write(self._noise() + b"\r\n")  # noise on an idle line too
            data = await self.device.read(0.05)
            if data:
                self.feed(data)

    def _demo_message(self, n: int) -> None:
        kind = n % 3
        if kind == 1:
            self.deliver("+8613912345678", f"Position report request #{n}")
        elif kind == 2:
            self.deliver("+8613912345678", "船舶状态正常，请回复当前位置。" + f"#{n}")
        else:
            body = " ".join(f"Long message {n} part of a weather bulletin." for _ in range(8))
            self.deliver("10659000", body)

    def feed(self, data: bytes) -> None:
        """Bytes from the client: commands end with CR; a PDU after the prompt with Ctrl-Z."""
        for b in data:
            if self._pdu_for is not None:
                if b == _CTRL_Z:
                    self._finish_send(bytes(self._buf))
                    self._buf.clear()
                elif b == _ESC:
                    self._pdu_for = None
                    self._buf.clear()
                    self._reply(b"\r\nOK\r\n")
                elif b not in (0x0D, 0x0A):
                    self._buf.append(b)
                continue
            if b in (0x0D, 0x0A):
                if self._buf:
                    line = bytes(self._buf)
                    self._buf.clear()
                    self._command(line)
                continue
            if len(self._buf) < 1024:
                self._buf.append(b)

    # -- internals --------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.device.is_up:
            self.device.write(data)

    def _urc(self, body: bytes) -> None:
        msg = b"\r\n" + body + b"\r\n"
        if self.hung or time.monotonic() < self._silent_until:
            self._outgoing.append(msg)
        else:
            self._write(msg)

    def _flush_held(self) -> None:
        if self._outgoing and not self.hung and time.monotonic() >= self._silent_until:
            held, self._outgoing = self._outgoing, []
            for msg in held:
                self._write(msg)

    def _reply(self, data: bytes) -> None:
        if self.faults.garbage:
            data = self._noise() + b"\r\n" + data
        if self.answer_delay_s > 0:
            loop = asyncio.get_running_loop()
            loop.call_later(self.answer_delay_s, self._write, data)
        else:
            self._write(data)

    def _noise(self) -> bytes:
        return bytes(self._rng.choice(b"\x00\xff#@!~?") for _ in range(self._rng.randint(3, 9)))

    def _error(self, cme: int, text: str, *, cms: bool = False) -> bytes:
        kind = "+CMS ERROR" if cms else "+CME ERROR"
        if self.error_style == "modem":
            return f"\r\nMODEM ERROR: {cme}\r\n".encode()
        if self.error_style == "bare":
            kind = kind[1:]
        if self.cmee == 2:
            return f"\r\n{kind}: {text}\r\n".encode()
        if self.cmee == 1 or cms:
            return f"\r\n{kind}: {cme}\r\n".encode()
        return b"\r\nERROR\r\n"

    def _command(self, line: bytes) -> None:
        text = line.decode("ascii", "replace").strip()
        self.commands.append(text)
        upper = text.upper()
        resetting = upper in ("AT+CFUN=1,1", "AT+CFUN=0", "AT+CFUN=1")
        if self.hung and not (self.faults.hang_until_reset and resetting):
            return
        if time.monotonic() < self._silent_until:
            return  # rebooting
        if self.echo:
            self._write(line + b"\r")
        if self.faults.error_storm and not resetting:
            self._reply(b"\r\nERROR\r\n")
            return
        m = _CMD.match(line)
        if m is None:
            self._reply(b"\r\nERROR\r\n")
            return
        answer = self._answer(upper[2:])
        if answer is not None:
            self._reply(answer)

    def _answer(self, cmd: str) -> bytes | None:
        ok = b"\r\nOK\r\n"
        if cmd == "":
            return ok
        if cmd in ("E0", "E1"):
            self.echo = cmd == "E1"
            return ok
        if cmd.startswith("+CMEE="):
            v = cmd[6:]
            if v not in ("0", "1", "2"):
                return self._error(50, "incorrect parameters")
            self.cmee = int(v)
            return ok
        if cmd == "+CMGF=0":
            self.cmgf = 0
            return ok
        if cmd.startswith("+CMGF="):
            return self._error(303, "operation not supported", cms=True)
        if cmd.startswith("+CNMI="):
            try:
                self.cnmi = tuple(int(x) if x else 0 for x in cmd[6:].split(","))
            except ValueError:
                return self._error(50, "incorrect parameters")
            return ok
        if cmd.startswith("+CREG="):
            self.creg_n = int(cmd[6:]) if cmd[6:].isdigit() else 0
            return ok
        if cmd == "+CSQ":
            return f"\r\n+CSQ: {self.rssi},{self.ber}\r\n".encode() + ok
        if cmd == "+CREG?":
            answer = f"\r\n+CREG: {self.creg_n},{self.reg}\r\n".encode() + ok
            if "creg_urc_after_ok" in self.quirks:
                # Real firmware: a registration URC (stat, lac, ci) in the very write that ends
                # the answer, once. Read as an answer (<n>,<stat>) it would say stat 5.
                self.quirks.discard("creg_urc_after_ok")
                self.creg_urcs_sent += 1
                answer += b'\r\n+CREG: 2,"0005","0001"\r\n'
            return answer
        if cmd == "+COPS?":
            if self.reg in (1, 5):
                return f'\r\n+COPS: 0,0,"{self.operator}"\r\n'.encode() + ok
            return b"\r\n+COPS: 0\r\n" + ok
        if cmd == "+CPIN?":
            if self.pin == "NOT INSERTED":
                return self._error(10, "SIM not inserted")
            return f"\r\n+CPIN: {self.pin}\r\n".encode() + ok
        if cmd == "+CGSN":
            return f"\r\n{self.imei}\r\n".encode() + ok
        if cmd == "+CIMI":
            return f"\r\n{self.imsi}\r\n".encode() + ok
        if cmd == "+CGMR":
            return f"\r\n{self.firmware}\r\n".encode() + ok
        if cmd == "+CFUN?":
            return f"\r\n+CFUN: {self.cfun}\r\n".encode() + ok
        if cmd.startswith("+CFUN="):
            return self._cfun(cmd[6:])
        if cmd.startswith("+CMGR="):
            return self._cmgr(cmd[6:])
        if cmd.startswith("+CMGD="):
            return self._cmgd(cmd[6:])
        if cmd.startswith("+CMGL"):
            return self._cmgl(cmd[5:])
        if cmd.startswith("+CMGS="):
            return self._cmgs(cmd[6:])
        if cmd == "+CNMA":
            return ok
        if cmd.startswith("+CUSD=1"):
            loop = asyncio.get_running_loop()
            urc = f'+CUSD: 0,"{self.ussd_reply}",15'.encode()
            loop.call_soon(self._urc, urc)
            return ok
        if cmd.startswith("+CPMS"):
            used = len(self.storage)
            return f'\r\n+CPMS: "SM",{used},{self.capacity}\r\n'.encode() + ok
        return b"\r\nERROR\r\n"

    def _cfun(self, arg: str) -> bytes:
        if arg not in ("0", "1", "1,1", "4"):
            return self._error(50, "incorrect parameters")
        if arg == "1,1" or (arg == "1" and self.cfun == 0):
            self.resets += 1
            if self.faults.hang_until_reset:
                self.unhang()
            self.faults.error_storm = False
            self._write(b"\r\nOK\r\n")
            # A reset: silent for a moment, settings back to their power-on values.
            self._silent_until = time.monotonic() + self.reset_s
            self.echo, self.cmee, self.cnmi, self.creg_n = True, 0, (0, 0, 0, 0, 0), 0
            self.cfun = 1
            return b""
        self.cfun = int(arg[0])
        return b"\r\nOK\r\n"

    def _index(self, arg: str) -> int | None:
        return int(arg) if arg.isdigit() else None

    def _cmgr(self, arg: str) -> bytes:
        idx = self._index(arg)
        if idx is None or not 1 <= idx <= self.capacity:
            return self._error(321, "invalid memory index", cms=True)
        slot = self.storage.get(idx)
        if slot is None:
            return b"\r\nOK\r\n"  # an empty slot: OK without data, as most modems answer
        if "inline_cmgr" in self.quirks:
            out = f"\r\n+CMGR: {slot.stat},,{slot.length} {slot.pdu}\r\n\r\nOK\r\n".encode()
        else:
            sep = self._listing_urcs()
            head = f"\r\n+CMGR: {slot.stat},,{slot.length}\r\n{sep}"
            out = f"{head}{slot.pdu}\r\n\r\nOK\r\n".encode()
        if slot.stat == 0:
            slot.stat = 1
        return out

    def _cmgd(self, arg: str) -> bytes:
        first = arg.split(",", maxsplit=1)[0]
        idx = self._index(first)
        if idx is None or not 1 <= idx <= self.capacity:
            return self._error(321, "invalid memory index", cms=True)
        self.storage.pop(idx, None)
        return b"\r\nOK\r\n"

    def _cmgl(self, arg: str) -> bytes:
        want = arg.lstrip("=")
        if want not in ("0", "1", "4"):
            return self._error(302, "operation not allowed", cms=True)
        out = bytearray()
        for idx in sorted(self.storage):
            slot = self.storage[idx]
            if want != "4" and slot.stat != int(want):
                continue
            sep = self._listing_urcs()
            out += f"\r\n+CMGL: {idx},{slot.stat},,{slot.length}\r\n{sep}{slot.pdu}".encode()
            if slot.stat == 0:
                slot.stat = 1
        if out:
            out += b"\r\n"
        return bytes(out) + b"\r\nOK\r\n"

    def _listing_urcs(self) -> str:
        if "listing_urcs" not in self.quirks:
            return ""
        return '*PSUTTZ: 2026,12,2,4,30,0,"+32",0\r\nDST: 0\r\n'

    def _cmgs(self, arg: str) -> bytes:
        if not arg.isdigit() or not 1 <= int(arg) <= 255:
            return self._error(304, "invalid PDU mode parameter", cms=True)
        if self.reg not in (1, 5):
            return self._error(331, "no network service", cms=True)
        self._pdu_for = int(arg)
        return b"\r\n> "

    def _finish_send(self, body: bytes) -> None:
        length = self._pdu_for or 0
        self._pdu_for = None
        pdu = body.decode("ascii", "replace").strip().upper()
        try:
            raw = bytes.fromhex(pdu)
        except ValueError:
            self._reply(self._error(304, "invalid PDU mode parameter", cms=True))
            return
        if not raw or len(raw) - 1 - raw[0] != length:
            self._reply(self._error(304, "invalid PDU mode parameter", cms=True))
            return
        self._mr = (self._mr + 1) % 256
        self.sent.append(SentSms(length, pdu, self._mr))
        self._reply(f"\r\n+CMGS: {self._mr}\r\n\r\nOK\r\n".encode())
