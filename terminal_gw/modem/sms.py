"""SMS PDU codec (3GPP TS 23.040, 23.038): decode what `AT+CMGR`/`AT+CMGL`/`+CMT`/`+CDS`
give, encode SMS-SUBMIT for `AT+CMGS`, and join concatenated parts.

Pure: bytes or hex in, frozen records out; no I/O, no clock reads (callers pass `now`).
Every failure of the decoder is a `PduError` (a `ParseError`) naming what was wrong.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import StrEnum

import gsm0338  # noqa: F401 - registers the "gsm03.38" codec used to build the tables
import gsmcodecs  # noqa: F401 - registers the "gsm23.038-L-S" national language codecs

from terminal_gw.errors import CommandError, ParseError
from terminal_gw.modem.results import tp_status

__all__ = [
    "Address",
    "Alphabet",
    "Concat",
    "DataCoding",
    "InformationElement",
    "Message",
    "PduError",
    "Reassembler",
    "Sms",
    "SmsDeliver",
    "SmsStatusReport",
    "SmsSubmit",
    "StoredPdu",
    "SubmitPdu",
    "decode_pdu",
    "encode_submit",
    "parse_stored",
]


class PduError(ParseError):
    """An SMS PDU could not be decoded; `reason` says which field was wrong."""

    def __init__(self, reason: str, *, pdu: bytes | str | None = None) -> None:
        super().__init__(f"bad SMS PDU: {reason}", sentence=pdu, reason=reason)


# ---------------------------------------------------------------------------
# GSM 03.38 alphabet, as tables built once from the gsm0338 codec.

_ESC = 0x1B


def _build_alphabet() -> tuple[dict[int, str], dict[int, str], dict[str, bytes]]:
    basic: dict[int, str] = {}
    ext: dict[int, str] = {}
    for i in range(128):
        if i == _ESC:
            continue
        try:
            basic[i] = bytes([i]).decode("gsm03.38")
        except UnicodeDecodeError:  # pragma: no cover - the basic table is complete
            continue
        with contextlib.suppress(UnicodeDecodeError):
            ext[i] = bytes([_ESC, i]).decode("gsm03.38")
    encode: dict[str, bytes] = {}
    # Basic table first: a character present in both is sent unescaped (one septet).
    for i, ch in basic.items():
        encode.setdefault(ch, bytes([i]))
    for i, ch in ext.items():
        encode.setdefault(ch, bytes([_ESC, i]))
    return basic, ext, encode


_GSM_BASIC, _GSM_EXT, _GSM_ENCODE = _build_alphabet()


# National language shift tables (TS 23.038 §6.2.1.2, annex A), chosen by the user data
# header elements 0x25 (locking shift: replaces the basic table) and 0x24 (single shift:
# replaces the extension table). Language ids 1-13: Turkish, Spanish, Portuguese, Bengali,
# Gujarati, Hindi, Kannada, Malayalam, Oriya, Punjabi, Tamil, Telugu, Urdu. The tables come
# from gsmcodecs (TS 23.038 release 18, through its codecs: one septet per octet). Spanish has
# no locking shift table; an id without a table reads as the default tables, as 23.038
# §6.2.1.2.4 asks of a receiver without that table. A position a national table leaves
# reserved reads as U+FFFD.
_NATIONAL_IDS = range(1, 14)
_NO_LOCKING = frozenset({2})
_RESERVED = "\ufffd"
_IEI_SINGLE_SHIFT = 0x24
_IEI_LOCKING_SHIFT = 0x25


@functools.cache
def _locking_table(lang: int) -> dict[int, str]:
    table: dict[int, str] = {}
    for i in range(128):
        if i == _ESC:
            continue
        try:
            table[i] = bytes([i]).decode(f"gsm23.038-{lang}-0")
        except UnicodeDecodeError:
            table[i] = _RESERVED
    return table


@functools.cache
def _single_shift_table(lang: int) -> dict[int, str]:
    table: dict[int, str] = {}
    for i in range(128):
        if i == _ESC:
            continue  # ESC ESC: see _septets_to_text
        with contextlib.suppress(UnicodeDecodeError):
            table[i] = bytes([_ESC, i]).decode(f"gsm23.038-0-{lang}")
    return table


def _tables(udh: Iterable[InformationElement]) -> tuple[dict[int, str], dict[int, str]]:
    """The (basic, extension) tables the header elements select; the default ones otherwise."""
    basic, ext = _GSM_BASIC, _GSM_EXT
    for ie in udh:
        if len(ie.data) != 1:
            continue
        lang = ie.data[0]
        if lang not in _NATIONAL_IDS:
            continue
        if ie.iei == _IEI_LOCKING_SHIFT and lang not in _NO_LOCKING:
            basic = _locking_table(lang)
        elif ie.iei == _IEI_SINGLE_SHIFT:
            ext = _single_shift_table(lang)
    return basic, ext


def _septets_to_text(
    septets: bytes, basic: dict[int, str] | None = None, ext: dict[int, str] | None = None
) -> str:
    """GSM 7-bit septets to text; an unknown escape shows the basic character (23.038 §6.2.1.1)."""
    basic = _GSM_BASIC if basic is None else basic
    ext = _GSM_EXT if ext is None else ext
    out: list[str] = []
    i = 0
    n = len(septets)
    while i < n:
        s = septets[i]
        if s == _ESC:
            if i + 1 >= n:
                break  # a trailing escape has nothing to modify
            nxt = septets[i + 1]
            if nxt in ext:
                out.append(ext[nxt])
            elif nxt == _ESC:
                out.append(" ")  # ESC ESC is reserved for a further table: shown as space
            else:
                out.append(basic[nxt])
            i += 2
            continue
        out.append(basic[s])
        i += 1
    return "".join(out)


def _text_to_septets(text: str) -> list[bytes] | None:
    """One septet sequence per character, or None when the text does not fit GSM 7-bit."""
    out: list[bytes] = []
    for ch in text:
        seq = _GSM_ENCODE.get(ch)
        if seq is None:
            return None
        out.append(seq)
    return out


def _unpack_septets(data: bytes, count: int) -> bytes:
    n = int.from_bytes(data, "little")
    return bytes((n >> (7 * i)) & 0x7F for i in range(count))


def _pack_septets(septets: bytes, *, skip: int = 0, header: bytes = b"") -> bytes:
    """Pack septets after `skip` septets of room, the first of which hold `header` octets."""
    n = int.from_bytes(header, "little")
    for i, s in enumerate(septets):
        n |= s << (7 * (skip + i))
    nbytes = ((skip + len(septets)) * 7 + 7) // 8
    return n.to_bytes(nbytes, "little")


# ---------------------------------------------------------------------------
# Records.


class Alphabet(StrEnum):
    """Character set of the user data (TS 23.038 §4)."""

    GSM7 = "gsm7"
    DATA8 = "8bit"
    UCS2 = "ucs2"


@dataclass(frozen=True, slots=True)
class DataCoding:
    """A decoded TP-DCS octet."""

    raw: int
    alphabet: Alphabet
    message_class: int | None = None


@dataclass(frozen=True, slots=True)
class Address:
    """A phone number (`+` prefixed when international) or an alphanumeric sender."""

    number: str
    ton: int
    npi: int

    @property
    def alphanumeric(self) -> bool:
        """True for a text sender such as a bank or operator name."""
        return self.ton == 5

    def __str__(self) -> str:
        return self.number


@dataclass(frozen=True, slots=True)
class InformationElement:
    """One user data header element, kept whether or not this codec knows it."""

    iei: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Concat:
    """Concatenation info: part `seq` of `total` of the message `ref`."""

    ref: int
    total: int
    seq: int
    ref_bits: int = 8


@dataclass(frozen=True, slots=True)
class SmsDeliver:
    """An SMS-DELIVER: a message received from `sender`."""

    smsc: Address | None
    sender: Address
    timestamp: datetime
    pid: int
    dcs: DataCoding
    text: str | None  # None for 8-bit data
    data: bytes  # user data after the header: septet values (GSM7) or octets
    udh: tuple[InformationElement, ...] = ()
    concat: Concat | None = None
    truncated: bool = False  # the PDU ended before the user data length said
    odd_zone: bool = False  # the time-zone octet had a non-decimal nibble (see _read_timestamp)
    more_messages: bool = False
    reply_path: bool = False
    status_report_indication: bool = False

    @property
    def party(self) -> Address:
        """The other end of the conversation."""
        return self.sender


@dataclass(frozen=True, slots=True)
class SmsSubmit:
    """An SMS-SUBMIT, as stored in the modem's sent/unsent memory."""

    smsc: Address | None
    recipient: Address
    mr: int
    pid: int
    dcs: DataCoding
    text: str | None
    data: bytes
    validity: timedelta | datetime | bytes | None = None
    udh: tuple[InformationElement, ...] = ()
    concat: Concat | None = None
    truncated: bool = False
    status_report_request: bool = False
    reject_duplicates: bool = False
    reply_path: bool = False

    @property
    def party(self) -> Address:
        """The other end of the conversation."""
        return self.recipient


@dataclass(frozen=True, slots=True)
class SmsStatusReport:
    """An SMS-STATUS-REPORT for the message with reference `mr`."""

    smsc: Address | None
    mr: int
    recipient: Address
    timestamp: datetime  # when the SC received the original message
    discharge_time: datetime  # when it was delivered, or the status last changed
    status: int
    odd_zone: bool = False  # a time-zone octet had a non-decimal nibble

    @property
    def reason(self) -> str:
        """The TP-ST value in words."""
        return tp_status(self.status)

    @property
    def delivered(self) -> bool:
        """The transaction completed (TP-ST 0x00-0x1F)."""
        return self.status < 0x20

    @property
    def final(self) -> bool:
        """No further status will follow (delivered or given up)."""
        return not 0x20 <= self.status < 0x40


Sms = SmsDeliver | SmsSubmit | SmsStatusReport


# ---------------------------------------------------------------------------
# Decoder.


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise PduError(
                f"truncated in {what}: need {n} octets at {self.pos}, have "
                f"{len(self.data) - self.pos}"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def octet(self, what: str) -> int:
        return self.take(1, what)[0]

    def rest(self) -> bytes:
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk


_BCD_DIGITS = "0123456789*#abc"


def _bcd_number(data: bytes, ndigits: int | None, what: str) -> str:
    digits: list[str] = []
    for b in data:
        for nib in (b & 0x0F, b >> 4):
            if nib == 0x0F:
                continue  # filler (and the padding some SIMs write)
            digits.append(_BCD_DIGITS[nib])
    if ndigits is not None and len(digits) > ndigits:
        raise PduError(f"{what}: more digits than its length says")
    return "".join(digits)


def _read_type(r: _Reader, what: str) -> tuple[int, int]:
    toa = r.octet(f"{what} type")
    if not toa & 0x80:
        raise PduError(f"{what}: type-of-address octet {toa:#04x} lacks bit 8")
    return (toa >> 4) & 0x07, toa & 0x0F


def _address(digits: str, ton: int, npi: int) -> Address:
    if ton == 1 and digits:
        return Address("+" + digits, ton, npi)
    return Address(digits, ton, npi)


def _read_smsc(r: _Reader) -> Address | None:
    length = r.octet("SMSC length")
    if length == 0:
        return None
    if length > 11:
        raise PduError(f"SMSC length {length} octets is over the maximum of 11")
    ton, npi = _read_type(r, "SMSC")
    raw = r.take(length - 1, "SMSC address")
    if ton == 5:
        raise PduError("SMSC address is alphanumeric")
    return _address(_bcd_number(raw, None, "SMSC"), ton, npi)


def _read_address(r: _Reader, what: str) -> Address:
    ndigits = r.octet(f"{what} length")
    ton, npi = _read_type(r, what)
    if ton == 5:
        if ndigits > 22:
            raise PduError(f"{what}: alphanumeric length {ndigits} is over 22 semi-octets")
        raw = r.take((ndigits + 1) // 2, what)
        septets = _unpack_septets(raw, ndigits * 4 // 7)
        # A trailing "@" is a character (septet 0) of the name, not padding: the semi-octet
        # count says how many septets there are, so nothing is stripped.
        return Address(_septets_to_text(septets), ton, npi)
    if ndigits > 20:
        raise PduError(f"{what}: length {ndigits} digits is over the maximum of 20")
    raw = r.take((ndigits + 1) // 2, what)
    return _address(_bcd_number(raw, ndigits, what), ton, npi)


def _semi_octet(b: int, what: str) -> int:
    lo, hi = b & 0x0F, b >> 4
    if lo > 9 or hi > 9:
        raise PduError(f"{what}: octet {b:#04x} is not two decimal digits")
    return lo * 10 + hi


def _read_timestamp(r: _Reader, what: str) -> tuple[datetime, bool]:
    """A TP-SCTS-shaped field: (the time, True when its time-zone octet was not decimal)."""
    raw = r.take(7, what)
    yy, mo, dd, hh, mi, ss = (_semi_octet(b, what) for b in raw[:6])
    tz = raw[6]
    units = tz >> 4
    # Real service centres send zone octets such as 0xE1 and 0xA0 (a nibble over 9). The
    # date and time are still good; the nibbles are weighed as every other decoder does
    # (tens * 10 + units, at most 85 quarter-hours) and the zone is flagged as odd.
    odd = units > 9
    quarters = (tz & 0x07) * 10 + units
    if tz & 0x08:
        quarters = -quarters
    year = 1900 + yy if yy >= 90 else 2000 + yy
    try:
        zone = timezone(timedelta(minutes=15 * quarters))
        return datetime(year, mo, dd, hh, mi, ss, tzinfo=zone), odd
    except ValueError as e:
        raise PduError(f"{what}: invalid date or time ({e})") from None


def _decode_dcs(dcs: int) -> DataCoding:
    group = dcs >> 4
    if group <= 0x7:  # general data coding (0x) and automatic deletion (1x) groups
        if dcs & 0x20:
            raise PduError(f"DCS {dcs:#04x}: compressed user data is not supported")
        cls = dcs & 0x03 if dcs & 0x10 else None
        alpha = (dcs >> 2) & 0x03
        # 23.038 §4: the reserved alphabet value is to be read as the default alphabet.
        alphabet = {1: Alphabet.DATA8, 2: Alphabet.UCS2}.get(alpha, Alphabet.GSM7)
        return DataCoding(dcs, alphabet, cls)
    if group in (0xC, 0xD):  # message waiting indication, default alphabet
        return DataCoding(dcs, Alphabet.GSM7)
    if group == 0xE:  # message waiting indication, UCS2
        return DataCoding(dcs, Alphabet.UCS2)
    if group == 0xF:
        return DataCoding(dcs, Alphabet.DATA8 if dcs & 0x04 else Alphabet.GSM7, dcs & 0x03)
    # 0x80-0xBF are reserved coding groups: read as the default alphabet, as 23.038 asks.
    return DataCoding(dcs, Alphabet.GSM7)


def _parse_udh(header: bytes) -> tuple[tuple[InformationElement, ...], Concat | None]:
    ies: list[InformationElement] = []
    concat: Concat | None = None
    i = 0
    while i < len(header):
        if i + 2 > len(header):
            raise PduError("user data header: truncated element")
        iei, ln = header[i], header[i + 1]
        data = header[i + 2 : i + 2 + ln]
        if len(data) != ln:
            raise PduError(f"user data header: element {iei:#04x} overruns the header")
        ies.append(InformationElement(iei, data))
        if iei == 0x00 and ln == 3:
            c = Concat(data[0], data[1], data[2], 8)
        elif iei == 0x08 and ln == 4:
            c = Concat(int.from_bytes(data[:2], "big"), data[2], data[3], 16)
        else:
            c = None
        # 23.040 §9.2.3.24.1: an element with total 0 or seq out of range is ignored.
        if c is not None and c.total >= 1 and 1 <= c.seq <= c.total and concat is None:
            concat = c
        i += 2 + ln
    return tuple(ies), concat


def _ucs2_text(data: bytes) -> str:
    """UTF-16BE to text; a lone surrogate (a pair split across parts) becomes U+FFFD."""
    if len(data) % 2:
        data = data[:-1]  # an odd trailing octet cannot be a character
    text = data.decode("utf-16-be", "surrogatepass")
    return text.encode("utf-16-be", "surrogatepass").decode("utf-16-be", "replace")


def _text_of(alphabet: Alphabet, data: bytes, udh: Iterable[InformationElement] = ()) -> str | None:
    if alphabet is Alphabet.GSM7:
        return _septets_to_text(data, *_tables(udh))
    if alphabet is Alphabet.UCS2:
        return _ucs2_text(data)
    return None


@dataclass(frozen=True, slots=True)
class _UserData:
    text: str | None
    data: bytes
    udh: tuple[InformationElement, ...]
    concat: Concat | None
    truncated: bool


def _read_user_data(r: _Reader, dcs: DataCoding, udhi: bool) -> _UserData:
    udl = declared = r.octet("user data length")
    if dcs.alphabet is Alphabet.GSM7:
        if udl > 160:
            raise PduError(f"user data length {udl} septets is over 160")
        ud = r.rest()[: (udl * 7 + 7) // 8]
        # Captures cut a few octets short happen (copied from a terminal, SIM records);
        # the septets that are there are still worth having, flagged as truncated.
        udl = min(udl, len(ud) * 8 // 7)
    else:
        if udl > 140:
            raise PduError(f"user data length {udl} octets is over 140")
        ud = r.rest()[:udl]
        udl = len(ud)
    ies: tuple[InformationElement, ...] = ()
    concat: Concat | None = None
    header_octets = 0
    if udhi and udl > 0:  # a UDHI flag with no user data at all is seen and harmless
        udhl = ud[0]
        header_octets = 1 + udhl
        if header_octets > len(ud):
            raise PduError(f"user data header length {udhl} is longer than the user data")
        ies, concat = _parse_udh(ud[1:header_octets])
    if dcs.alphabet is Alphabet.GSM7:
        skip = (header_octets * 8 + 6) // 7
        if skip > udl:
            raise PduError("user data header is longer than the user data")
        data = _unpack_septets(ud, udl)[skip:]
    else:
        data = ud[header_octets:]
    return _UserData(_text_of(dcs.alphabet, data, ies), data, ies, concat, udl < declared)


def _read_validity(r: _Reader, vpf: int) -> timedelta | datetime | bytes | None:
    if vpf == 0:
        return None
    if vpf == 2:
        vp = r.octet("validity period")
        if vp <= 143:
            return timedelta(minutes=(vp + 1) * 5)
        if vp <= 167:
            return timedelta(hours=12, minutes=(vp - 143) * 30)
        if vp <= 196:
            return timedelta(days=vp - 166)
        return timedelta(weeks=vp - 192)
    if vpf == 3:
        return _read_timestamp(r, "validity period")[0]
    return r.take(7, "enhanced validity period")


def _decode_deliver(r: _Reader, smsc: Address | None, fo: int) -> SmsDeliver:
    sender = _read_address(r, "originating address")
    pid = r.octet("protocol identifier")
    dcs = _decode_dcs(r.octet("data coding scheme"))
    ts, odd_zone = _read_timestamp(r, "service centre timestamp")
    ud = _read_user_data(r, dcs, bool(fo & 0x40))
    return SmsDeliver(
        smsc=smsc,
        sender=sender,
        timestamp=ts,
        pid=pid,
        dcs=dcs,
        text=ud.text,
        data=ud.data,
        udh=ud.udh,
        concat=ud.concat,
        truncated=ud.truncated,
        odd_zone=odd_zone,
        more_messages=not fo & 0x04,
        reply_path=bool(fo & 0x80),
        status_report_indication=bool(fo & 0x20),
    )


def _decode_submit(r: _Reader, smsc: Address | None, fo: int) -> SmsSubmit:
    mr = r.octet("message reference")
    recipient = _read_address(r, "destination address")
    pid = r.octet("protocol identifier")
    dcs = _decode_dcs(r.octet("data coding scheme"))
    validity = _read_validity(r, (fo >> 3) & 0x03)
    ud = _read_user_data(r, dcs, bool(fo & 0x40))
    return SmsSubmit(
        smsc=smsc,
        recipient=recipient,
        mr=mr,
        pid=pid,
        dcs=dcs,
        text=ud.text,
        data=ud.data,
        validity=validity,
        udh=ud.udh,
        concat=ud.concat,
        truncated=ud.truncated,
        status_report_request=bool(fo & 0x20),
        reject_duplicates=bool(fo & 0x04),
        reply_path=bool(fo & 0x80),
    )


def _decode_status_report(r: _Reader, smsc: Address | None) -> SmsStatusReport:
    mr = r.octet("message reference")
    recipient = _read_address(r, "recipient address")
    scts, odd_scts = _read_timestamp(r, "service centre timestamp")
    dt, odd_dt = _read_timestamp(r, "discharge time")
    status = r.octet("status")
    # The optional TP-PI and what it announces are dropped: nothing here uses them.
    r.rest()
    return SmsStatusReport(
        smsc=smsc,
        mr=mr,
        recipient=recipient,
        timestamp=scts,
        discharge_time=dt,
        status=status,
        odd_zone=odd_scts or odd_dt,
    )


_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+")


def decode_pdu(pdu: str | bytes, *, smsc: bool = True) -> Sms:
    """Decode one PDU (hex text or raw octets) as given by `+CMGR`, `+CMGL`, `+CMT`, `+CDS`.

    `smsc=False` when the PDU starts at the TPDU (no service-centre address in front).
    """
    if isinstance(pdu, str):
        text = pdu.strip()
        if not _HEX.fullmatch(text):
            raise PduError("not an even number of hex digits", pdu=pdu[:400])
        raw = bytes.fromhex(text)
    else:
        raw = bytes(pdu)
    try:
        return _decode(raw, smsc)
    except PduError as e:
        # Re-raised with the whole PDU attached, for the log line that reports it.
        raise PduError(e.reason, pdu=raw.hex().upper()[:400]) from None


def _decode(raw: bytes, smsc: bool) -> Sms:
    r = _Reader(raw)
    sc = _read_smsc(r) if smsc else None
    fo = r.octet("first octet")
    mti = fo & 0x03
    # Stored messages are read back by the MS, so MTI is taken in the SC->MS sense
    # for 0 and 2 and the MS->SC sense for 1 (what `+CMGR` and `+CMGL` return).
    # TS 23.040 9.2.3.1: a reserved type (3) received by the MS is read as an SMS-DELIVER.
    if mti in (0, 3):
        return _decode_deliver(r, sc, fo)
    if mti == 1:
        return _decode_submit(r, sc, fo)
    return _decode_status_report(r, sc)


# ---------------------------------------------------------------------------
# `+CMGR` / `+CMGL` answers in PDU mode.


@dataclass(frozen=True, slots=True)
class StoredPdu:
    """One PDU from a `+CMGR`/`+CMGL` answer: index (CMGL), stat, declared length, hex."""

    index: int | None
    stat: int | None
    length: int | None
    pdu: str

    def decode(self) -> Sms:
        """Decode the PDU; raises `PduError`."""
        return decode_pdu(self.pdu)


def _int_or_none(field_text: str) -> int | None:
    field_text = field_text.strip()
    return int(field_text) if field_text.isdigit() else None


def _looks_like_urc(line: str) -> bool:
    """A line that is no PDU: `*PSUTTZ: ...`, `DST: 0`, `+CREG: 1`, `^MODE` and the like."""
    return ":" in line or line[:1] in ("+", "^", "*", "#", "$")


def parse_stored(lines: Iterable[str]) -> list[StoredPdu]:
    """Pair each `+CMGR:`/`+CMGL:` header with the PDU line after it; other lines are skipped.

    `+CMGR: <stat>,[<alpha>],<length>` and `+CMGL: <index>,<stat>,[<alpha>],<length>`. Some
    modems put the PDU on the header line after the length (`+CMGR: 1,,147 0791...`); an
    unsolicited line the modem slips in between a header and its PDU is passed over.
    """
    out: list[StoredPdu] = []
    header: tuple[int | None, int | None, int | None] | None = None
    for raw_line in lines:
        line = raw_line.strip()
        upper = line.upper()
        if upper.startswith(("+CMGR:", "+CMGL:")):
            fields = line[6:].split(",")
            if upper.startswith("+CMGL:"):
                index = _int_or_none(fields[0])
                fields = fields[1:]
            else:
                index = None
            stat = _int_or_none(fields[0]) if fields else None
            inline = ""
            if len(fields) > 1:
                last, _, inline = fields[-1].strip().partition(" ")
                length = _int_or_none(last)
                inline = inline.strip().strip('"').strip()
            else:
                length = None
            if inline and _HEX.fullmatch(inline):
                out.append(StoredPdu(index, stat, length, pdu=inline))
                header = None
            else:
                header = (index, stat, length)
            continue
        if header is not None and line:
            # Some modems close the PDU with a stray quote; the hex itself is intact.
            pdu = line.strip('"').strip()
            if not _HEX.fullmatch(pdu) and _looks_like_urc(pdu):
                continue
            out.append(StoredPdu(*header, pdu=pdu))
            header = None
    return out


# ---------------------------------------------------------------------------
# Encoder.

_NUMBER = re.compile(r"\+?[0-9]{3,20}")
GSM7_SINGLE = 160
GSM7_PART = 153  # 160 less the 7 septets of an 8-bit-reference concatenation header
UCS2_SINGLE = 70
UCS2_PART = 67


@dataclass(frozen=True, slots=True)
class SubmitPdu:
    """One SMS-SUBMIT ready for `AT+CMGS=<tpdu_length>` then `hex` and Ctrl-Z."""

    hex: str  # "00" (use the SMSC stored in the modem) + the TPDU, upper-case
    tpdu_length: int  # octets of the TPDU, excluding the SMSC octet(s)
    part: int
    total: int
    alphabet: Alphabet = field(default=Alphabet.GSM7)


def _encode_number(number: str) -> bytes:
    if not _NUMBER.fullmatch(number):
        raise CommandError(
            f"invalid phone number {number[:40]!r}: expected 3-20 digits with an optional +",
            code="invalid_number",
        )
    digits = number.lstrip("+")
    toa = 0x91 if number.startswith("+") else 0x81
    padded = digits + ("F" if len(digits) % 2 else "")
    bcd = bytes(int(padded[i + 1] + padded[i], 16) for i in range(0, len(padded), 2))
    return bytes([len(digits), toa]) + bcd


def _encode_validity(validity: timedelta) -> int:
    minutes = validity.total_seconds() / 60
    if minutes <= 0:
        raise CommandError("validity period must be positive", code="invalid")
    if minutes <= 720:
        return max(0, -(-int(minutes) // 5) - 1)
    if minutes <= 1440:
        return 143 + -(-int(minutes - 720) // 30)
    days = -(-int(minutes) // 1440)
    if days <= 30:
        return 166 + days
    return min(255, 192 + -(-days // 7))


def _split_units(units: Sequence[bytes], limit: int) -> list[bytes]:
    """Greedy split keeping each unit (an escape pair, a surrogate pair) whole."""
    parts: list[bytes] = []
    cur = bytearray()
    cur_len = 0
    for u in units:
        if cur_len + len(u) > limit:
            parts.append(bytes(cur))
            cur = bytearray()
            cur_len = 0
        cur += u
        cur_len += len(u)
    parts.append(bytes(cur))
    return parts


def encode_submit(
    to: str,
    text: str,
    *,
    max_parts: int,
    ref: int,
    request_status_report: bool = False,
    validity: timedelta | None = None,
) -> list[SubmitPdu]:
    """SMS-SUBMIT PDUs for `text` to `to`: GSM 7-bit when it fits, else UCS2, split as needed.

    `ref` (0-65535) is the concatenation reference; above 255 a 16-bit reference is used.
    `validity` None leaves the validity period to the network. Raises `CommandError`.
    """
    address = _encode_number(to)
    if not 0 <= ref <= 0xFFFF:
        raise CommandError(f"concatenation reference {ref} is outside 0-65535", code="invalid")
    if max_parts < 1:
        raise CommandError("max_parts must be at least 1", code="invalid")
    try:
        text.encode("utf-16-be")
    except UnicodeEncodeError:
        raise CommandError("text contains a lone surrogate code point", code="invalid") from None

    gsm = _text_to_septets(text)
    header_len = 6 if ref <= 0xFF else 7  # UDHL octet + element
    if gsm is not None:
        alphabet = Alphabet.GSM7
        units: Sequence[bytes] = gsm
        single, per_part = GSM7_SINGLE, GSM7_SINGLE - (header_len * 8 + 6) // 7
        total_len = sum(len(u) for u in gsm)
    else:
        alphabet = Alphabet.UCS2
        raw = text.encode("utf-16-be")
        units = [ch.encode("utf-16-be") for ch in text]
        single, per_part = UCS2_SINGLE * 2, (140 - header_len) // 2 * 2
        total_len = len(raw)

    chunks = [b"".join(units)] if total_len <= single else _split_units(units, per_part)
    total = len(chunks)
    if total > max_parts:
        raise CommandError(
            f"text needs {total} SMS parts, more than the limit of {max_parts}", code="too_long"
        )
    if total > 255:
        raise CommandError(f"text needs {total} SMS parts, over the 255 possible", code="too_long")

    out: list[SubmitPdu] = []
    for seq, chunk in enumerate(chunks, start=1):
        fo = 0x01
        if validity is not None:
            fo |= 0x10  # relative validity period
        if request_status_report:
            fo |= 0x20
        header = b""
        if total > 1:
            fo |= 0x40
            if ref <= 0xFF:
                header = bytes([5, 0x00, 3, ref, total, seq])
            else:
                header = bytes([6, 0x08, 4, ref >> 8, ref & 0xFF, total, seq])
        tpdu = bytearray([fo, 0x00])  # MR 0: the modem assigns the reference
        tpdu += address
        tpdu += bytes([0x00, 0x00 if alphabet is Alphabet.GSM7 else 0x08])
        if validity is not None:
            tpdu.append(_encode_validity(validity))
        if alphabet is Alphabet.GSM7:
            skip = (len(header) * 8 + 6) // 7
            tpdu.append(skip + len(chunk))
            tpdu += _pack_septets(chunk, skip=skip, header=header)
        else:
            tpdu.append(len(header) + len(chunk))
            tpdu += header + chunk
        out.append(
            SubmitPdu(
                hex="00" + bytes(tpdu).hex().upper(),
                tpdu_length=len(tpdu),
                part=seq,
                total=total,
                alphabet=alphabet,
            )
        )
    return out


# ---------------------------------------------------------------------------
# Reassembly of concatenated messages.


@dataclass(frozen=True, slots=True)
class Message:
    """A received message, its parts joined; `missing` lists part numbers never received."""

    sender: Address
    text: str | None
    data: bytes
    timestamp: datetime | None
    parts: tuple[SmsDeliver | SmsSubmit, ...]
    total: int = 1
    ref: int | None = None
    missing: tuple[int, ...] = ()

    @property
    def complete(self) -> bool:
        """Every part arrived."""
        return not self.missing


def _timestamp(part: SmsDeliver | SmsSubmit) -> datetime | None:
    return part.timestamp if isinstance(part, SmsDeliver) else None


def _join(parts: Sequence[SmsDeliver | SmsSubmit], complete: bool) -> tuple[str | None, bytes]:
    alphabets = {p.dcs.alphabet for p in parts}
    data = b"".join(p.data for p in parts)
    if complete and len(alphabets) == 1:
        # Decode the joined units: senders do split escapes and surrogate pairs.
        return _text_of(parts[0].dcs.alphabet, data, parts[0].udh), data
    if alphabets == {Alphabet.DATA8}:
        return None, data
    return "".join(p.text or "" for p in parts), data


@dataclass(slots=True)
class _Pending:
    first_seen: float
    parts: dict[int, SmsDeliver | SmsSubmit]


class Reassembler:
    """Joins concatenated parts keyed by (sender, ref, total); bounded, pure (`now` passed in)."""

    def __init__(self, *, timeout: float = 3600.0, max_pending: int = 64) -> None:
        self.timeout = timeout
        self.max_pending = max_pending
        self._pending: dict[tuple[str, int, int], _Pending] = {}
        self._evicted: list[Message] = []

    @property
    def pending(self) -> int:
        """Messages waiting for parts."""
        return len(self._pending)

    def add(self, part: SmsDeliver | SmsSubmit, now: float) -> Message | None:
        """Add a part; the joined message when it is complete (or was not concatenated)."""
        c = part.concat
        if c is None or c.total == 1:
            return Message(
                sender=part.party,
                text=part.text,
                data=part.data,
                timestamp=_timestamp(part),
                parts=(part,),
            )
        key = (part.party.number, c.ref, c.total)
        entry = self._pending.get(key)
        if entry is None:
            if len(self._pending) >= self.max_pending:
                oldest = min(self._pending, key=lambda k: self._pending[k].first_seen)
                self._evicted.append(self._finish(oldest, self._pending.pop(oldest)))
            entry = self._pending[key] = _Pending(now, {})
        entry.parts.setdefault(c.seq, part)  # a repeated delivery keeps the first copy
        if len(entry.parts) == c.total:
            del self._pending[key]
            return self._finish(key, entry)
        return None

    def expire(self, now: float) -> list[Message]:
        """Messages whose parts stopped coming (older than `timeout`), marked incomplete."""
        out, self._evicted = self._evicted, []
        for key in [k for k, e in self._pending.items() if now - e.first_seen >= self.timeout]:
            out.append(self._finish(key, self._pending.pop(key)))
        return out

    def _finish(self, key: tuple[str, int, int], entry: _Pending) -> Message:
        _, ref, total = key
        seqs = sorted(entry.parts)
        parts = tuple(entry.parts[s] for s in seqs)
        missing = tuple(s for s in range(1, total + 1) if s not in entry.parts)
        text, data = _join(parts, not missing)
        return Message(
            sender=parts[0].party,
            text=text,
            data=data,
            timestamp=_timestamp(entry.parts[seqs[0]]),
            parts=parts,
            total=total,
            ref=ref,
            missing=missing,
        )
