"""Payload models: the MQTT contract. Every payload has `id`, `v` and `class`.

Fix and sky follow gpsd's JSON names (TPV, SKY) so tools that read gpsd read these.
Fields the receiver did not send are absent from the JSON, never zero.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

_id_lock = threading.Lock()
_last_ms = 0
_last_seq = 0


def new_id(unix_ms: int | None = None) -> str:
    """A UUIDv7 string: unique, and sortable by creation time within this process."""
    global _last_ms, _last_seq  # noqa: PLW0603 - one monotonic counter per process
    with _id_lock:
        ms = int(time.time() * 1000) if unix_ms is None else unix_ms
        if ms <= _last_ms:
            ms = _last_ms
            _last_seq += 1
            if _last_seq > 0xFFF:
                ms += 1
                _last_seq = 0
        else:
            _last_seq = int.from_bytes(os.urandom(2), "big") & 0x3FF
        _last_ms = ms
        seq = _last_seq
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | seq << 64 | 0b10 << 62 | rand
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def stable_id(unix_ms: int, key: bytes) -> str:
    """A UUIDv7-shaped id derived from a time and a key: the same input gives the same id."""
    digest = int.from_bytes(hashlib.blake2b(key, digest_size=10).digest(), "big")
    seq = digest >> 68 & 0xFFF
    rand = digest & ((1 << 62) - 1)
    value = (unix_ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | seq << 64 | 0b10 << 62 | rand
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Payload(BaseModel):
    """Base of every published payload."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    record_class: ClassVar[str] = "event"
    topic_suffix: ClassVar[str] = "event"

    id: str = Field(default_factory=new_id, description="UUIDv7: unique and sortable")
    v: int = Field(default=SCHEMA_VERSION, description="schema version")

    def topic_path(self) -> str:
        """Where it is published, below `{prefix}/{device}/`; payloads with per-record topics
        (an SMS's progress on `sms/tx/{id}`) override it."""
        return self.topic_suffix

    def to_json_dict(self) -> dict[str, Any]:
        """The payload as JSON-ready data, absent fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_json(self) -> str:
        """The payload as compact JSON text."""
        # pydantic's serializer in Rust: 4-5x faster than json.dumps on model_dump, the same
        # text, and a NaN becomes null instead of invalid JSON.
        return self.model_dump_json(by_alias=True, exclude_none=True)


Clock = Literal["gnss", "system"]
#: A fix or sky from a binary receiver protocol (absent when it came from NMEA 0183).
SourceProtocol = Literal["ubx", "casic"]


class Fix(Payload):
    """One fix per reported epoch, in gpsd TPV names."""

    record_class: ClassVar[str] = "fix"
    topic_suffix: ClassVar[str] = "gnss/fix"

    cls: Literal["TPV"] = Field(default="TPV", alias="class")
    time: str | None = Field(default=None, description="ISO 8601 UTC, ms")
    mode: Literal[0, 1, 2, 3] = Field(default=1, description="0 unknown, 1 no fix, 2 2D, 3 3D")
    status: int | None = Field(default=None, description="gpsd fix status")
    lat: float | None = None
    lon: float | None = None
    altHAE: float | None = None  # noqa: N815 - gpsd's name
    altMSL: float | None = None  # noqa: N815 - gpsd's name
    geoidSep: float | None = None  # noqa: N815 - gpsd's name
    speed: float | None = Field(default=None, description="m/s")
    track: float | None = Field(default=None, description="degrees true")
    climb: float | None = None
    magvar: float | None = None
    eph: float | None = None
    epv: float | None = None
    hdop: float | None = None
    vdop: float | None = None
    pdop: float | None = None
    nSat: int | None = None  # noqa: N815 - gpsd's name
    uSat: int | None = None  # noqa: N815 - gpsd's name
    used: dict[str, int] | None = Field(default=None, description="satellites used per system")
    clock: Clock = "gnss"
    source_protocol: SourceProtocol | None = Field(
        default=None, description="binary protocol the fix came from; absent: NMEA 0183"
    )


class Satellite(BaseModel):
    """One satellite (one row of gpsd's SKY list), merged across signals."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    PRN: int
    gnssid: int
    svid: int
    sigid: int | None = None
    az: float | None = None
    el: float | None = None
    ss: float | None = None
    used: bool = False


class Sky(Payload):
    """Satellites in view, in gpsd SKY names."""

    record_class: ClassVar[str] = "sky"
    topic_suffix: ClassVar[str] = "gnss/sky"

    cls: Literal["SKY"] = Field(default="SKY", alias="class")
    time: str | None = None
    satellites: list[Satellite] = Field(default_factory=list)
    nSat: int = 0  # noqa: N815 - gpsd's name
    uSat: int = 0  # noqa: N815 - gpsd's name
    hdop: float | None = None
    vdop: float | None = None
    pdop: float | None = None
    clock: Clock = "gnss"
    source_protocol: SourceProtocol | None = Field(
        default=None, description="binary protocol the view came from; absent: NMEA 0183"
    )

    def to_json(self) -> str:
        """The payload as compact JSON text: the same text as pydantic's, with the JSON of each
        satellite written once (a sky takes most of its Satellite models from the one before)."""
        if type(self) is Sky and _SKY_FIELDS_WRITTEN:
            text = _sky_json(self)
            if text is not None:
                return text
        return super().to_json()


#: The JSON text of recent satellite lists, by the list object, with the satellites it was
#: written for (checked on use: a list changed in place is written anew); the oldest goes when
#: it is full. Filled by the epoch assembler, which writes each satellite once and takes most
#: of a sky's from the sky before.
_SATELLITES_JSON: dict[int, tuple[tuple[Satellite, ...], str]] = {}
_SATELLITES_JSON_MAX = 16


def _json_float(x: object) -> str | None:
    """A float as pydantic writes it, where that is Python's repr (finite, not below 1e-4 nor
    from 1e16 in size, or zero); None for anything else (pydantic's own serializer decides)."""
    if type(x) is float and (1e-4 <= abs(x) < 1e16 or x == 0.0):
        return repr(x)
    return None


def _plain_str(s: object) -> bool:
    """True for a string JSON writes as is between quotes (printable ASCII, no `"` or `\\`)."""
    return type(s) is str and s.isascii() and s.isprintable() and '"' not in s and "\\" not in s


def satellite_json(sat: Satellite) -> str | None:
    """`sat` as compact JSON, absent fields left out, as a Sky's JSON holds it; None when only
    pydantic's serializer may write it (a value outside what this writes the same way)."""
    prn, gnssid, svid, sigid = sat.PRN, sat.gnssid, sat.svid, sat.sigid
    if not (type(sat) is Satellite and type(prn) is int and type(gnssid) is int):
        return None
    if type(svid) is not int:
        return None
    az, el, ss = sat.az, sat.el, sat.ss
    if (
        sigid is None
        and type(az) is float
        and type(el) is float
        and type(ss) is float
        and (1e-4 <= abs(az) < 1e16 or az == 0.0)
        and (1e-4 <= abs(el) < 1e16 or el == 0.0)
        and (1e-4 <= abs(ss) < 1e16 or ss == 0.0)
    ):
        # The common row, at once (the general case below writes the same).
        used = "true" if sat.used is True else "false"
        return (
            f'{{"PRN":{prn},"gnssid":{gnssid},"svid":{svid},'
            f'"az":{az!r},"el":{el!r},"ss":{ss!r},"used":{used}}}'
        )
    text = f'{{"PRN":{prn},"gnssid":{gnssid},"svid":{svid}'
    if sigid is not None:
        if type(sigid) is not int:
            return None
        text += f',"sigid":{sigid}'
    for name, value in (("az", az), ("el", el), ("ss", ss)):
        if value is not None:
            number = _json_float(value)
            if number is None:
                return None
            text += f',"{name}":{number}'
    return text + (',"used":true}' if sat.used is True else ',"used":false}')


def remember_satellites_json(satellites: list[Satellite], rows: list[str]) -> None:
    """Note the JSON of each satellite of a Sky's list (`satellite_json` of each, in order), for
    `Sky.to_json`."""
    table = _SATELLITES_JSON
    key = id(satellites)
    table.pop(key, None)  # an id used again (its list is gone) is the newest entry
    while len(table) >= _SATELLITES_JSON_MAX:
        del table[next(iter(table))]  # the oldest
    table[key] = (tuple(satellites), ",".join(rows))


def _sky_json(sky: Sky) -> str | None:
    """What `model_dump_json(by_alias=True, exclude_none=True)` gives for `sky`, when its
    satellites' JSON was noted and every other value is one written here as pydantic does;
    else None (the caller asks pydantic)."""
    sats = sky.satellites
    hit = _SATELLITES_JSON.get(id(sats))
    if hit is None or hit[0] != tuple(sats):
        return None
    ident, version, t, n_sat, u_sat = sky.id, sky.v, sky.time, sky.nSat, sky.uSat
    if not (
        _plain_str(ident)
        and (t is None or _plain_str(t))
        and type(version) is int
        and sky.cls == "SKY"
        and type(n_sat) is int
        and type(u_sat) is int
        and sky.clock in ("gnss", "system")
        and sky.source_protocol in (None, "ubx", "casic")
    ):
        return None
    text = f'{{"id":"{ident}","v":{version},"class":"SKY"'
    if t is not None:
        text += f',"time":"{t}"'
    text += f',"satellites":[{hit[1]}],"nSat":{n_sat},"uSat":{u_sat}'
    for name, value in (("hdop", sky.hdop), ("vdop", sky.vdop), ("pdop", sky.pdop)):
        if value is not None:
            number = _json_float(value)
            if number is None:
                return None
            text += f',"{name}":{number}'
    text += f',"clock":"{sky.clock}"'
    if sky.source_protocol is not None:
        text += f',"source_protocol":"{sky.source_protocol}"'
    return text + "}"


#: The fast path writes exactly these fields; a field added to Sky or Satellite turns it off
#: (pydantic writes every sky then) until `_sky_json` and `satellite_json` write it too.
_SKY_FIELDS_WRITTEN = list(Sky.model_fields) == [
    "id",
    "v",
    "cls",
    "time",
    "satellites",
    "nSat",
    "uSat",
    "hdop",
    "vdop",
    "pdop",
    "clock",
    "source_protocol",
] and list(Satellite.model_fields) == ["PRN", "gnssid", "svid", "sigid", "az", "el", "ss", "used"]


class Event(Payload):
    """A notable event: antenna change, records evicted, clock skew, store trouble, ..."""

    record_class: ClassVar[str] = "event"
    topic_suffix: ClassVar[str] = "event"

    cls: Literal["EVENT"] = Field(default="EVENT", alias="class")
    time: str
    kind: str = Field(description="machine name, e.g. antenna, evicted, clock_skew, store")
    severity: Literal["info", "warning", "error"] = "info"
    message: str
    data: dict[str, Any] = Field(default_factory=dict)
    clock: Clock = "system"


class Status(Payload):
    """The retained device status: online/offline and a health summary."""

    record_class: ClassVar[str] = "status"
    topic_suffix: ClassVar[str] = "status"

    cls: Literal["STATUS"] = Field(default="STATUS", alias="class")
    time: str
    state: Literal["online", "offline"]
    health: dict[str, Any] = Field(default_factory=dict)
    clock: Clock = "system"


class FixBatch(Payload):
    """Backlog fixes sent several to a message (mqtt.batch_backlog) to save per-message overhead.

    Published on `{prefix}/{device}/gnss/fix/batch`; each fix keeps its own `id`, so consumers
    drop duplicates by the fix ids, not by the batch id. Live fixes are always sent singly.
    """

    record_class: ClassVar[str] = "fix"
    topic_suffix: ClassVar[str] = "gnss/fix/batch"

    cls: Literal["TPV_BATCH"] = Field(default="TPV_BATCH", alias="class")
    count: int = Field(description="number of fixes in `fixes`")
    fixes: list[Fix] = Field(description="oldest first, each a complete TPV payload")


class SmsReceived(Payload):
    """A received SMS, concatenated parts joined, or (`type` "status_report") the network's
    delivery report for a sent one. The id is derived from the message itself and the SIM
    slots it was read from, so a message read again after a crash carries the same id."""

    record_class: ClassVar[str] = "sms"
    topic_suffix: ClassVar[str] = "sms/rx"

    cls: Literal["SMS"] = Field(default="SMS", alias="class")
    time: str | None = Field(default=None, description="service centre timestamp, ISO 8601 UTC")
    received: str = Field(description="when the gateway read it, ISO 8601 UTC (system clock)")
    sender: str = Field(alias="from", description="sender number (+ international) or name")
    text: str | None = Field(default=None, description="absent for 8-bit data")
    data: str | None = Field(default=None, description="8-bit user data as hex")
    encoding: Literal["gsm7", "ucs2", "8bit"] | None = None
    parts: int = Field(default=1, description="parts the message was sent in")
    ref: int | None = Field(default=None, description="concatenation reference")
    complete: bool = Field(default=True, description="false: parts missing after the timeout")
    missing: list[int] | None = Field(default=None, description="part numbers never received")
    smsc: str | None = None
    pdu: str | None = Field(default=None, description="the raw PDU, only when undecodable")
    error: str | None = Field(default=None, description="why the PDU could not be decoded")
    truncated: bool | None = Field(
        default=None, description="true: a part ended before its user data length said"
    )
    odd_zone: bool | None = Field(
        default=None,
        description="true: the time-zone octet had a non-decimal digit; time's offset is a guess",
    )
    type: Literal["status_report"] | None = Field(
        default=None, description="status_report: a delivery report; absent: a received SMS"
    )
    mr: int | None = Field(
        default=None, description="status report: message reference of the sent SMS"
    )
    status: int | None = Field(default=None, description="status report: TP-ST value 0-255")
    status_text: str | None = Field(default=None, description="status report: TP-ST in words")
    delivered: bool | None = Field(
        default=None, description="status report: the SMS reached the recipient"
    )
    final: bool | None = Field(
        default=None, description="status report: no further report will follow"
    )
    discharge: str | None = Field(
        default=None, description="status report: delivery (or status) time, ISO 8601 UTC"
    )


class ModemStatus(Payload):
    """The retained modem status: signal, registration, operator, identity."""

    record_class: ClassVar[str] = "status"
    topic_suffix: ClassVar[str] = "modem/status"

    cls: Literal["MODEM"] = Field(default="MODEM", alias="class")
    time: str
    state: Literal["ok", "recovering", "down"] = "ok"
    rssi: int | None = Field(default=None, description="AT+CSQ rssi 0-31; absent when unknown")
    dbm: int | None = Field(default=None, description="signal in dBm (-113 + 2 * rssi)")
    ber: int | None = Field(default=None, description="AT+CSQ bit error rate class 0-7")
    reg: int | None = Field(default=None, description="AT+CREG? stat: 1 home, 5 roaming")
    reg_text: str | None = None
    registered: bool = False
    operator: str | None = None
    imei: str | None = None
    imsi: str | None = None
    firmware: str | None = None
    sim: str | None = Field(
        default=None,
        description="AT+CPIN? state (READY, SIM PIN, ...) or the error, e.g. SIM not inserted",
    )
    clock: Clock = "system"


class SmsSendProgress(Payload):
    """Progress of an SMS sent by the `sms/send` command, on `{prefix}/{device}/sms/tx/{sms_id}`.

    States: queued (accepted, waiting; again after a transient failure, with `retry_at`),
    sending, sent (with the message reference of each part), failed (with `code` and the
    3GPP `reason`).
    """

    record_class: ClassVar[str] = "command"
    topic_suffix: ClassVar[str] = "sms/tx"

    cls: Literal["SMS_TX"] = Field(default="SMS_TX", alias="class")
    time: str
    sms_id: str = Field(description="the id given in the sms/send command")
    state: Literal["queued", "sending", "sent", "failed"]
    to: str
    parts: int = Field(description="SMS parts the text needs")
    mr: list[int] = Field(
        default_factory=list, description="message reference (+CMGS) of each part sent so far"
    )
    attempts: int = Field(default=0, description="send attempts started")
    code: str | None = Field(
        default=None,
        description="why it failed or waits: cms_error, cme_error, error, timeout, modem,"
        " rate_limited, interrupted, unconfirmed, invalid, resumed; for a send refused before"
        " it was queued (parts 0) the refusal's code: invalid_number, too_long, invalid,"
        " duplicate_key, response_topic_refused, store",
    )
    reason: str | None = Field(default=None, description="in words, the 3GPP meaning if any")
    error_code: int | None = Field(default=None, description="the +CMS/+CME ERROR number")
    retry_at: str | None = Field(default=None, description="queued for a retry at, ISO 8601")
    clock: Clock = "system"

    def topic_path(self) -> str:
        """`sms/tx/{sms_id}`."""
        return f"{self.topic_suffix}/{self.sms_id}"


class CommandResult(Payload):
    """The answer to a downlink command, on `{prefix}/{device}/cmd-result/{command}` and on the
    command's MQTT 5 response topic when it gave one."""

    record_class: ClassVar[str] = "command"
    topic_suffix: ClassVar[str] = "cmd-result"

    cls: Literal["CMD_RESULT"] = Field(default="CMD_RESULT", alias="class")
    time: str
    command: str = Field(description="the command's name (sms/send, ping, ...), or 'unknown'")
    command_id: str | None = Field(default=None, description="the `id` the command carried")
    ok: bool
    code: str | None = Field(
        default=None,
        description="when not ok: too_large, invalid_json, duplicate_key, invalid,"
        " unknown_command, foreign_topic, response_topic_refused, invalid_number, too_long,"
        " id_conflict, busy, timeout, modem, store",
    )
    reason: str | None = None
    result: dict[str, Any] = Field(default_factory=dict, description="what the command returns")
    correlation: str | None = Field(
        default=None, description="the MQTT 5 correlation data of the command, as hex"
    )
    clock: Clock = "system"

    def topic_path(self) -> str:
        """`cmd-result/{command}`."""
        return f"{self.topic_suffix}/{self.command}"


class BdsReceived(Payload):
    """A received BeiDou short message (RDSS `BDTXR` or `BDTCI`), stored the moment it was
    read; content that does not decode as its mode says comes as `data` with `reason`."""

    record_class: ClassVar[str] = "bds"
    topic_suffix: ClassVar[str] = "bds/rx"

    cls: Literal["BDS_RX"] = Field(default="BDS_RX", alias="class")
    received: str = Field(description="when the gateway read it, ISO 8601 UTC (system clock)")
    sender: str = Field(alias="from", description="the sender's user id (digits)")
    to: str | None = Field(default=None, description="BDS-3: the recipient's user id")
    mode: Literal["chinese", "code", "mixed", "compressed_chinese", "compressed_code", "unknown"]
    text: str | None = Field(default=None, description="the decoded text, when it is text")
    data: str | None = Field(default=None, description="the content as hex, when not text")
    reason: str | None = Field(default=None, description="why text mode content came as data")
    info_class: Literal["normal", "express", "broadcast", "query_result", "unknown"] = "normal"
    sent_at: str | None = Field(
        default=None, description="the time the terminal gives (hhmm or hhmmss, its clock)"
    )
    dialect: Literal["2.1", "bds3"]
    raw: str = Field(description="the sentence as read")
    clock: Clock = "system"


class BdsSendProgress(Payload):
    """Progress of a short message sent by `bds/send`, on `{prefix}/{device}/bds/tx/{bds_id}`.

    States: queued, waiting_interval (with `may_send_at`), waiting_signal, sending, sent,
    failed (with `code`, `reason` and, for BDS-3, the feedback `reason_code` and its name).
    """

    record_class: ClassVar[str] = "command"
    topic_suffix: ClassVar[str] = "bds/tx"

    cls: Literal["BDS_TX"] = Field(default="BDS_TX", alias="class")
    time: str
    bds_id: str = Field(description="the id given in the bds/send command")
    state: Literal["queued", "waiting_interval", "waiting_signal", "sending", "sent", "failed"]
    to: str
    mode: str | None = Field(default=None, description="the transfer mode used or asked for")
    bits: int | None = Field(default=None, description="bits the message takes on the air")
    limit_bits: int | None = Field(default=None, description="the card's limit for it")
    attempts: int = Field(default=0, description="times handed to the terminal")
    may_send_at: str | None = Field(
        default=None, description="waiting_interval: the earliest time it may go, ISO 8601"
    )
    code: str | None = Field(
        default=None,
        description="why it failed or waits: no_card, too_long, not_encodable, invalid,"
        " invalid_id, refused, suppressed, radio_silence, power_not_locked, no_permission,"
        " interval, no_signal, unconfirmed, interrupted, rate_limited, port, store,"
        " duplicate_key, response_topic_refused",
    )
    reason: str | None = None
    reason_code: int | None = Field(default=None, description="BDS-3 BDFKI reason code")
    reason_name: str | None = Field(default=None, description="the reason code's name")
    clock: Clock = "system"

    def topic_path(self) -> str:
        """`bds/tx/{bds_id}`."""
        return f"{self.topic_suffix}/{self.bds_id}"


class RdssStatus(Payload):
    """The retained BeiDou terminal status: dialect, card, beams, pacing, queue, counters."""

    record_class: ClassVar[str] = "status"
    topic_suffix: ClassVar[str] = "rdss/status"

    cls: Literal["RDSS"] = Field(default="RDSS", alias="class")
    time: str
    state: Literal["ok", "no_card", "detecting", "down"]
    reason: str | None = None
    dialect: Literal["2.1", "bds3"] | None = None
    card: dict[str, Any] | None = Field(
        default=None,
        description="user_id, serial, broadcast_id, level, interval_s, encrypted,"
        " subordinates, user_class (2.1); absent before the card answered",
    )
    beams: list[int] | None = Field(
        default=None, description="per beam: power 0-4 (2.1) or best C/N0 in dB-Hz (BDS-3)"
    )
    beams_ok: bool | None = Field(
        default=None, description="a beam at the configured minimum; absent: no recent beams"
    )
    last_send: str | None = Field(default=None, description="ISO 8601 UTC")
    next_send: str | None = Field(default=None, description="earliest next send, ISO 8601 UTC")
    interval_s: float | None = Field(default=None, description="the service interval in use")
    queue_depth: int = 0
    sends_today: int = Field(default=0, description="sends handed to the terminal since 00:00 UTC")
    counters: dict[str, int] = Field(default_factory=dict)
    clock: Clock = "system"


#: Where stages send events; called synchronously, must not block (the daemon queues them).
EventSink = Callable[[Event], None]


class RecordSink(Protocol):
    """Where records go: the outbox, or what the daemon wraps around it (counting, a shore
    station's track reports). Every stage that stores records is given one."""

    async def put(
        self, topic: str, payload: Payload, *, retain: bool = False, sync: bool | None = None
    ) -> None:
        """Store a record; with sync, return only once it is durable."""
        ...


def iso_utc(unix_s: float) -> str:
    """ISO 8601 UTC with milliseconds, like gpsd: 2020-07-11T22:37:45.000Z."""
    dt = datetime.fromtimestamp(unix_s, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def make_event(
    kind: str,
    message: str,
    *,
    now: float,
    severity: Literal["info", "warning", "error"] = "info",
    clock: Clock = "system",
    **data: Any,
) -> Event:
    """An Event stamped with `now` (unix seconds; `clock` says whether GNSS-corrected)."""
    return Event(
        id=new_id(int(now * 1000)),
        time=iso_utc(now),
        kind=kind,
        severity=severity,
        message=message,
        data=data,
        clock=clock,
    )


class ReportedFix(Fix):
    """A position of another device decoded from a track report received over a BeiDou short
    message or an SMS (`[fallback] senders`), on `{prefix}/{that device}/gnss/fix`; mode 2, the
    id derived from that device and the time."""

    source: str = Field(description="how it came: bds:<sender id> or sms:<sender number>")


#: Every payload model, for `terminal-gw schema` and the schema files in the repository.
PAYLOAD_MODELS: dict[str, type[Payload]] = {
    "fix": Fix,
    "sky": Sky,
    "event": Event,
    "status": Status,
    "fix_batch": FixBatch,
    "fix_reported": ReportedFix,
    "sms_tx": SmsSendProgress,
    "cmd_result": CommandResult,
    "sms_rx": SmsReceived,
    "modem_status": ModemStatus,
    "bds_rx": BdsReceived,
    "bds_tx": BdsSendProgress,
    "rdss_status": RdssStatus,
}


def payload_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of every payload, by name."""
    return {
        name: model.model_json_schema(by_alias=True, mode="serialization")
        for name, model in PAYLOAD_MODELS.items()
    }
