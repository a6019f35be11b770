"""Binary epochs: decoded UBX and CASIC messages in, the same Fix and Sky records as NMEA out.

A binary receiver dates every navigation message with its epoch's time of week (UBX `iTOW`)
or run time (CASIC `runTime`), in ms. Messages whose stamps lie within EPOCH_SLOP_MS of each
other are one epoch; a message with another stamp closes the epoch being read. Like gpsd, the
assembler learns the cycle's last message (the one that preceded a new stamp twice in a row,
or UBX NAV-EOE, which says so) and reports the epoch as soon as it arrives.

Within an epoch each field comes from the message that ranks highest for it (a full
navigation solution, NAV-PVT or NAV-PV, over the older NAV-SOL / NAV-POSLLH / NAV-VELNED
trio), so a receiver sending several gives one record. Records carry `source_protocol`.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from terminal_gw.gnss.numbering import (
    GNSS_BEIDOU,
    GNSS_GALILEO,
    GNSS_GLONASS,
    GNSS_GPS,
    GNSS_NAMES,
    GNSS_NAVIC,
    GNSS_QZSS,
    GNSS_SBAS,
    SatId,
)
from terminal_gw.models import Clock, Fix, Payload, Satellite, Sky, iso_utc, new_id

Protocol = Literal["ubx", "casic"]

#: Stamps this close (ms) are one epoch: receivers jitter a little (gpsd allows the same).
EPOCH_SLOP_MS = 10
#: Field rank of a message: a field is taken from the highest-ranked message giving it.
RANK_SOLUTION = 3  # NAV-PVT, CASIC NAV-PV: one coherent solution
RANK_HIGH_RATE = 2  # HNR-PVT: the high-rate navigation output
RANK_PART = 1  # NAV-SOL, NAV-POSLLH, NAV-VELNED, NAV-DOP, ...

#: u-blox gnssId -> (PRN base, highest svid) for gpsd's PRN numbering.
_PRN_BASE: dict[int, tuple[int, int]] = {
    GNSS_GALILEO: (300, 36),
    GNSS_BEIDOU: (400, 63),
    GNSS_QZSS: (192, 10),
    GNSS_GLONASS: (64, 32),
    GNSS_NAVIC: (500, 14),
}


def ubx_sat(gnssid: int, svid: int) -> SatId | None:
    """gpsd numbering of a u-blox (gnssId, svId) pair (CASIC uses the same); None if invalid."""
    if svid < 1:
        return None
    if gnssid == GNSS_GPS:
        return SatId(GNSS_GPS, svid, svid) if svid <= 32 else None
    if gnssid == GNSS_SBAS:
        return SatId(GNSS_SBAS, svid, svid) if 120 <= svid <= 158 else None
    spec = _PRN_BASE.get(gnssid)
    if spec is None:
        return None
    base, top = spec
    if gnssid == GNSS_QZSS and svid > 192:
        svid -= 192  # old firmware numbers QZSS 193-202
    if gnssid == GNSS_GLONASS and svid == 255:
        return None  # slot unknown
    if not 1 <= svid <= top:
        return None
    return SatId(gnssid, svid, base + svid)


def svinfo_sat(number: int) -> SatId | None:
    """gpsd numbering of a UBX NAV-SVINFO satellite number (u-blox 6-8 'extended' scheme)."""
    if 1 <= number <= 32:
        return SatId(GNSS_GPS, number, number)
    if 33 <= number <= 64:
        return ubx_sat(GNSS_BEIDOU, number - 32)
    if 65 <= number <= 96:
        return ubx_sat(GNSS_GLONASS, number - 64)
    if 120 <= number <= 158:
        return SatId(GNSS_SBAS, number, number)
    if 159 <= number <= 163:
        return ubx_sat(GNSS_BEIDOU, number - 158)
    if 193 <= number <= 202:
        return ubx_sat(GNSS_QZSS, number - 192)
    if 211 <= number <= 246:
        return ubx_sat(GNSS_GALILEO, number - 210)
    if 401 <= number <= 463:
        return ubx_sat(GNSS_BEIDOU, number - 400)
    return None


@dataclass(frozen=True, slots=True)
class BinarySat:
    """One satellite of a binary satellite report."""

    sat: SatId
    az: float | None
    el: float | None
    ss: float | None
    used: bool


@dataclass(frozen=True, slots=True)
class NavMessage:
    """What one decoded binary message says about its epoch."""

    protocol: Protocol
    name: str
    """Message name, e.g. `NAV-PVT`."""
    tow: int | None
    """Epoch stamp in ms (UBX iTOW, CASIC runTime); None: not part of an epoch."""
    rank: int = RANK_PART
    values: Mapping[str, float | int] = field(default_factory=dict)
    """Fix fields in gpsd's names (mode, status, lat, lon, altHAE, altMSL, geoidSep, speed,
    track, climb, eph, epv, pdop, hdop, vdop, uSat)."""
    time_ms: int | None = None
    """UTC time of the epoch, unix ms, when this message dates it validly."""
    sats: tuple[BinarySat, ...] | None = None
    """Satellites in view this message reports (None: it reports none)."""
    sats_part: int | None = None
    """CASIC: the constellation (gnssid) these satellites are; None: the whole view."""
    ends_epoch: bool = False
    """UBX NAV-EOE: the receiver says its epoch is complete."""
    gps_week: int | None = None
    """GPS week with the time of week in `tow` (UBX NAV-TIMEGPS, NAV-SOL)."""
    leap_s: int | None = None
    """GPS-UTC leap seconds when valid (UBX NAV-TIMEGPS)."""


@dataclass
class _Epoch:
    protocol: Protocol
    tow: int
    now: float
    values: dict[str, float | int] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)
    time_ms: int | None = None
    time_rank: int = -1
    whole_view: tuple[BinarySat, ...] | None = None
    parts: dict[int, tuple[BinarySat, ...]] = field(default_factory=dict)
    gps_week: int | None = None


_GPS_EPOCH_MS = 315_964_800_000  # 1980-01-06 in unix ms
_WEEK_MS = 604_800_000


class BinaryAssembler:
    """Group binary messages into epochs and build Fix and Sky records."""

    def __init__(self) -> None:
        self._epoch: _Epoch | None = None
        self._last_name: str | None = None
        self._ender_candidate: str | None = None
        self._ender: str | None = None
        self._closed: tuple[Protocol, int] | None = None
        self._leap_s: int | None = None
        self.epochs = 0
        self.fixes = 0
        self.skies = 0

    def add(self, msg: NavMessage, now: float) -> list[Payload]:
        """Records completed by `msg` (the previous epoch when `msg` starts a new one)."""
        if msg.leap_s is not None:
            self._leap_s = msg.leap_s
        tow = msg.tow
        if tow is None:
            return []
        out: list[Payload] = []
        ep = self._epoch
        if ep is not None and (ep.protocol != msg.protocol or abs(tow - ep.tow) > EPOCH_SLOP_MS):
            self._learn_ender()
            out.extend(self._close(ep))
            ep = None
        if ep is None:
            closed = self._closed
            if (
                closed is not None
                and closed[0] == msg.protocol
                and abs(tow - closed[1]) <= EPOCH_SLOP_MS
            ):
                # More of an epoch already reported: the learned cycle end was wrong.
                self._ender = self._ender_candidate = None
            ep = self._epoch = _Epoch(msg.protocol, tow, now)
        self._put(ep, msg)
        self._last_name = msg.name
        if msg.ends_epoch or msg.name == self._ender:
            out.extend(self._close(ep))
        return out

    def flush(self) -> list[Payload]:
        """Records of the epoch still open."""
        ep = self._epoch
        return [] if ep is None else self._close(ep)

    def _learn_ender(self) -> None:
        last = self._last_name
        if last is not None and last == self._ender_candidate:
            self._ender = last
        else:
            self._ender_candidate, self._ender = last, None

    @staticmethod
    def _put(ep: _Epoch, msg: NavMessage) -> None:
        rank = msg.rank
        ranks = ep.ranks
        for key, value in msg.values.items():
            if rank >= ranks.get(key, 0):
                ep.values[key] = value
                ranks[key] = rank
        if msg.time_ms is not None and rank >= ep.time_rank:
            ep.time_ms, ep.time_rank = msg.time_ms, rank
        if msg.gps_week is not None:
            ep.gps_week = msg.gps_week
        if msg.sats is not None:
            if msg.sats_part is None:
                ep.whole_view = msg.sats
            else:
                ep.parts[msg.sats_part] = msg.sats

    def _close(self, ep: _Epoch) -> list[Payload]:
        self._epoch = None
        self._closed = (ep.protocol, ep.tow)
        self.epochs += 1
        unix_ms = ep.time_ms
        if unix_ms is None and ep.gps_week is not None and self._leap_s is not None:
            unix_ms = _GPS_EPOCH_MS + ep.gps_week * _WEEK_MS + ep.tow - self._leap_s * 1000
        clock: Clock = "gnss"
        if unix_ms is not None:
            iso = _iso_ms(unix_ms)
        else:
            iso, clock = iso_utc(ep.now), "system"
        sats: tuple[BinarySat, ...] | None = ep.whole_view
        if sats is None and ep.parts:
            sats = tuple(s for part in ep.parts.values() for s in part)
        out: list[Payload] = []
        values = ep.values
        if "mode" in values:
            out.append(self._fix(ep, iso, clock, sats))
            self.fixes += 1
        if sats:
            used = sum(s.used for s in sats)
            out.append(
                Sky(
                    id=new_id(int(ep.now * 1000)),
                    time=iso,
                    satellites=[
                        Satellite(
                            PRN=s.sat.prn,
                            gnssid=s.sat.gnssid,
                            svid=s.sat.svid,
                            az=s.az,
                            el=s.el,
                            ss=s.ss,
                            used=s.used,
                        )
                        for s in sats
                    ],
                    nSat=len(sats),
                    uSat=used,
                    pdop=_opt(values.get("pdop")),
                    hdop=_opt(values.get("hdop")),
                    vdop=_opt(values.get("vdop")),
                    clock=clock,
                    source_protocol=ep.protocol,
                )
            )
            self.skies += 1
        return out

    @staticmethod
    def _fix(ep: _Epoch, iso: str, clock: Clock, sats: tuple[BinarySat, ...] | None) -> Fix:
        values = dict(ep.values)
        mode = int(values.pop("mode"))
        if mode < 2:
            # No solution: a position the receiver marks invalid is not reported.
            for key in (
                "lat",
                "lon",
                "altHAE",
                "altMSL",
                "geoidSep",
                "speed",
                "track",
                "climb",
                "eph",
                "epv",
            ):
                values.pop(key, None)
        elif mode == 2:
            for key in ("altHAE", "altMSL", "geoidSep", "climb", "epv"):
                values.pop(key, None)
        data: dict[str, object] = {
            "id": new_id(int(ep.now * 1000)),
            "time": iso,
            "mode": mode,
            "clock": clock,
            "source_protocol": ep.protocol,
        }
        data.update(values)
        if sats:
            data["nSat"] = len(sats)
            used = sorted((s.sat.gnssid, s.sat.svid) for s in sats if s.used)
            if used:
                data["uSat"] = len(used)
                per: dict[str, int] = {}
                for gnssid, _svid in used:
                    name = GNSS_NAMES.get(gnssid, str(gnssid))
                    per[name] = per.get(name, 0) + 1
                data["used"] = per
        return Fix.model_validate(data)


def _opt(value: float | int | None) -> float | None:
    return None if value is None else float(value)


def _iso_ms(unix_ms: int) -> str:
    """ISO 8601 UTC with milliseconds from unix ms, without floating point."""
    days, ms = divmod(unix_ms, 86_400_000)
    date = dt.date(1970, 1, 1) + dt.timedelta(days=days)
    s, ms = divmod(ms, 1000)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{date.isoformat()}T{h:02d}:{m:02d}:{sec:02d}.{ms:03d}Z"


def utc_ms(  # noqa: PLR0917 - the calendar fields, in the order receivers send them
    year: int, month: int, day: int, hour: int, minute: int, second: int, nano: int = 0
) -> int | None:
    """Unix ms of a UTC calendar time (+ nanoseconds, rounded); None when not a valid time."""
    try:
        base = dt.datetime(year, month, day, hour, minute, min(second, 59), tzinfo=dt.UTC)
    except ValueError:
        return None
    # A leap second (60) is kept as :59 plus one second's worth of ms.
    extra = 1000 if second == 60 else 0
    return int(base.timestamp()) * 1000 + extra + round(nano / 1_000_000)


Prefer = Literal["nmea", "binary", "auto"]
#: A source counts as delivering a record class while its last record of that class is at
#: most this old (seconds of the pipeline's `now`): a receiver that stops one protocol
#: falls back to the other after this long.
SOURCE_HOLD_S = 3.0
#: How many epoch times per record class are remembered to drop an epoch told again (by the
#: other protocol, or by a receiver's low-rate messages arriving after its high-rate ones).
RECENT_TIMES = 16


class SourceSelector:
    """One fix and one sky per epoch from a receiver sending NMEA and binary at once.

    Per record class (fix, sky): the preferred source's records pass; the other source's
    pass only while the preferred one has delivered none of that class for SOURCE_HOLD_S. A
    record with the time of one of the last RECENT_TIMES passed of its class is the same
    epoch told again and is dropped. `auto` prefers binary: it carries the receiver's own
    solution at full precision, with its accuracy estimates, where NMEA rounds it.
    """

    def __init__(self, prefer: Prefer = "auto") -> None:
        self.prefer_binary = prefer != "nmea"
        self._seen: dict[tuple[bool, str], float] = {}
        self._recent: dict[str, deque[str]] = {}
        self.dropped = 0

    def admit(self, record: Payload, *, binary: bool, now: float) -> bool:
        """True when `record` (from the binary side when `binary`) is to be reported."""
        cls = record.record_class
        if cls not in ("fix", "sky"):
            return True
        self._seen[(binary, cls)] = now
        if binary != self.prefer_binary:
            other = self._seen.get((not binary, cls))
            if other is not None and 0 <= now - other <= SOURCE_HOLD_S:
                self.dropped += 1
                return False
        t = getattr(record, "time", None)
        if t is None:
            return True
        recent = self._recent.get(cls)
        if recent is None:
            recent = self._recent[cls] = deque(maxlen=RECENT_TIMES)
        elif t in recent:
            self.dropped += 1
            return False
        recent.append(t)
        return True
