"""Decoder: framed sentences in, typed messages out (pynmeagps for the field layouts).

Only the sentence types the assembler uses are decoded; everything else is counted and
skipped. Of the proprietary sentences only Garmin's `$PGRMZ` (altitude and fix mode, what
Garmin handhelds send instead of an altitude in GLL-only seconds) is decoded; it is still
counted as proprietary. Empty fields become None, never zero. GSA and GSV (most of the traffic, flat
layouts) are split from their field tables here; the other types go through pynmeagps.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from pynmeagps import NMEAReader
from pynmeagps.exceptions import NMEAMessageError, NMEAParseError, NMEATypeError

from terminal_gw.gnss.framer import Sentence, nmea_checksum
from terminal_gw.gnss.numbering import (
    SYS_UNKNOWN,
    TALKER_SYSTEM,
    SatId,
    normalise,
    system_of,
)

#: Talkers accepted (PROTOCOLS.md section 1); `PQ` (Quectel) is handled as a proprietary quirk.
TALKERS = frozenset(TALKER_SYSTEM)

#: Sentence types decoded; others with a valid talker count as unknown_type.
TYPES = frozenset({"GGA", "RMC", "GSA", "GSV", "VTG", "GLL", "ZDA", "GNS", "GST", "TXT"})

#: Decoder outcomes (keys of `Decoder.counters`, always present), plus `proprietary.<ADDR>`
#: for the first MAX_PROPRIETARY_KEYS proprietary addresses (later ones: `proprietary.other`).
DECODER_COUNTERS = ("decoded", "unknown_talker", "unknown_type", "proprietary", "decode_error")

# Quectel EG25-G/EC2x: $PQGSV/$PQGSA carry a trailing system id (4 BeiDou, 5 QZSS).
_PQ_TALKER = {"4": "GB", "5": "GQ"}

MAX_PROPRIETARY_KEYS = 32
_VALNONE = 0  # checksum already checked by the framer


class GGA(NamedTuple):
    """Fix data."""

    talker: str
    time: dt.time | None
    lat: float | None
    lon: float | None
    quality: int | None
    num_sv: int | None
    hdop: float | None
    alt: float | None
    sep: float | None


class RMC(NamedTuple):
    """Recommended minimum data."""

    talker: str
    time: dt.time | None
    valid: bool
    lat: float | None
    lon: float | None
    speed_kn: float | None
    course: float | None
    date: dt.date | None
    magvar: float | None
    pos_mode: str | None


class GNS(NamedTuple):
    """Fix data, one mode letter per constellation."""

    talker: str
    time: dt.time | None
    lat: float | None
    lon: float | None
    pos_mode: str | None
    num_sv: int | None
    hdop: float | None
    alt: float | None
    sep: float | None


class GLL(NamedTuple):
    """Position and time."""

    talker: str
    time: dt.time | None
    valid: bool
    lat: float | None
    lon: float | None
    pos_mode: str | None


class VTG(NamedTuple):
    """Course and speed over ground."""

    talker: str
    course: float | None
    speed_kn: float | None
    speed_kmh: float | None
    pos_mode: str | None


class ZDA(NamedTuple):
    """Date and time."""

    talker: str
    time: dt.time | None
    date: dt.date | None


class GST(NamedTuple):
    """Pseudorange error statistics (1-sigma, metres)."""

    talker: str
    time: dt.time | None
    std_lat: float | None
    std_lon: float | None
    std_alt: float | None


class GSA(NamedTuple):
    """DOP and satellites used, already in gpsd numbering."""

    talker: str
    nav_mode: int | None
    used: tuple[SatId, ...]
    pdop: float | None
    hdop: float | None
    vdop: float | None


class SatView(NamedTuple):
    """One satellite row of a GSV sentence (in the order of the assembler's satellite rows,
    which take it as it is when a view has the satellite once)."""

    prn: int
    gnssid: int
    svid: int
    sigid: int | None
    az: float | None
    el: float | None
    ss: float | None

    @property
    def sat(self) -> SatId:
        """The satellite, in gpsd's numbering."""
        return SatId(self.gnssid, self.svid, self.prn)


class GSV(NamedTuple):
    """One part of a satellites-in-view group."""

    talker: str
    num_msg: int | None
    msg_num: int | None
    num_sv: int | None
    sats: tuple[SatView, ...]


class PGRMZ(NamedTuple):
    """Garmin altitude: whole feet (as sent) and fix mode 1-3."""

    talker: str
    alt_ft: int | None
    mode: int | None


class TXT(NamedTuple):
    """Free text from the receiver."""

    talker: str
    text: str


Message = GGA | RMC | GNS | GLL | VTG | ZDA | GST | GSA | GSV | PGRMZ | TXT


def _a(m: Any, name: str) -> Any:
    # pynmeagps leaves attributes unset when a sentence has fewer fields: treat as empty.
    return getattr(m, name, "")


def _s(v: Any) -> str | None:
    return None if v == "" or v is None else str(v)


def _f(v: Any) -> float | None:
    if v == "" or v is None:
        return None
    return float(v)


def _i(v: Any) -> int | None:
    if v == "" or v is None:
        return None
    return int(v)


def _t(v: Any) -> dt.time | None:
    return v if isinstance(v, dt.time) else None


def _tf(m: Any, fields: tuple[str, ...], index: int) -> dt.time | None:
    """The time of day; None when the field is empty. A time field that is there but is not
    a time (corrupted in transit, checksum intact) makes the whole sentence untrustworthy."""
    t = _t(_a(m, "time"))
    if t is None and len(fields) > index and fields[index].strip():
        raise ValueError(f"not a time of day: {fields[index]!r}")
    return t


def _d(v: Any) -> dt.date | None:
    return v if isinstance(v, dt.date) else None


def _dop(v: Any) -> float | None:
    # 0 and 99.x are what receivers send for "no DOP".
    d = _f(v)
    return d if d is not None and 0 < d < 99 else None


def _gga(m: Any, talker: str, fields: tuple[str, ...]) -> GGA:
    return GGA(
        talker,
        _tf(m, fields, 0),
        _f(_a(m, "lat")),
        _f(_a(m, "lon")),
        _i(_a(m, "quality")),
        _i(_a(m, "numSV")),
        _dop(_a(m, "HDOP")),
        _f(_a(m, "alt")),
        _f(_a(m, "sep")),
    )


def _rmc(m: Any, talker: str, fields: tuple[str, ...]) -> RMC:
    mv = _f(_a(m, "mv"))
    if mv is not None and _a(m, "mvEW") == "W":
        mv = -mv
    return RMC(
        talker,
        _tf(m, fields, 0),
        _a(m, "status") == "A",
        _f(_a(m, "lat")),
        _f(_a(m, "lon")),
        _f(_a(m, "spd")),
        _f(_a(m, "cog")),
        _d(_a(m, "date")),
        mv,
        _s(_a(m, "posMode")),
    )


def _gns(m: Any, talker: str, fields: tuple[str, ...]) -> GNS:
    return GNS(
        talker,
        _tf(m, fields, 0),
        _f(_a(m, "lat")),
        _f(_a(m, "lon")),
        _s(_a(m, "posMode")),
        _i(_a(m, "numSV")),
        _dop(_a(m, "HDOP")),
        _f(_a(m, "alt")),
        _f(_a(m, "sep")),
    )


def _gll(m: Any, talker: str, fields: tuple[str, ...]) -> GLL:
    return GLL(
        talker,
        _tf(m, fields, 4),
        _a(m, "status") == "A",
        _f(_a(m, "lat")),
        _f(_a(m, "lon")),
        _s(_a(m, "posMode")),
    )


def _vtg(m: Any, talker: str, _fields: tuple[str, ...]) -> VTG:
    return VTG(
        talker, _f(_a(m, "cogt")), _f(_a(m, "sogn")), _f(_a(m, "sogk")), _s(_a(m, "posMode"))
    )


def _zda(m: Any, talker: str, fields: tuple[str, ...]) -> ZDA:
    date = None
    if _a(m, "day") != "" and _a(m, "month") != "" and _a(m, "year") != "":
        date = dt.date(int(_a(m, "year")), int(_a(m, "month")), int(_a(m, "day")))
    return ZDA(talker, _tf(m, fields, 0), date)


def _gst(m: Any, talker: str, fields: tuple[str, ...]) -> GST:
    return GST(
        talker, _tf(m, fields, 0), _f(_a(m, "stdLat")), _f(_a(m, "stdLong")), _f(_a(m, "stdAlt"))
    )


# Satellite numbers as sent -> gpsd numbering, per NMEA system id: a receiver uses a few
# dozen, so each is converted once (bounded: a stream of nonsense numbers is converted anew).
_SAT_CACHE_MAX = 1024
_SAT_CACHES: dict[int, dict[str, SatId | None]] = {}
_NEW: Any = object()


def _sat_cache(system: int) -> dict[str, SatId | None]:
    cache = _SAT_CACHES.get(system)
    if cache is None:
        cache = _SAT_CACHES[system] = {}
    return cache


def _new_sat(num: str, system: int) -> SatId | None:
    """`normalise(int(num), system)`, remembered (ValueError when `num` is no integer)."""
    sat = normalise(int(num), system)
    cache = _sat_cache(system)
    if len(cache) < _SAT_CACHE_MAX:
        cache[num] = sat
    return sat


#: A NamedTuple built from its values without the Python-level `__new__` (messages, and
#: satellite rows: several a sentence).
_new_tuple = tuple.__new__

# GSA and GSV are most of a receiver's output (one per system, several parts each) and have
# flat layouts: they are split here from their field table, about 10x cheaper than pynmeagps.
#
# GSA: 0 op mode, 1 nav mode (1-3), 2.. satellite numbers (12 by the standard; the Navior
# CH-4701 sends 24), then PDOP, HDOP, VDOP and, NMEA 4.10+, a system id.
_GSA_DOPS = 3


def _gsa(talker: str, fields: tuple[str, ...]) -> GSA:
    n = len(fields)
    system_field = None
    if n >= 2 + 12 + _GSA_DOPS:
        if n == 2 + 12 + _GSA_DOPS + 1:
            # Field 18 (index 17) is the system id; a float there (SiRF-TriG) is ignored.
            system_field = fields[-1]
            n -= 1
        sv_fields, dops = fields[2 : n - _GSA_DOPS], fields[n - _GSA_DOPS : n]
    else:
        # Short form (i.Trek M3 and others without a fix): satellites only, no DOPs.
        sv_fields, dops = fields[2:], ("", "", "")
    system = system_of(talker, system_field)
    sat_of = _sat_cache(system)
    used: list[SatId] = []
    for value in sv_fields:
        if value:
            sat = sat_of.get(value, _NEW)
            if sat is _NEW:
                sat = _new_sat(value, system)
            if sat is not None:
                used.append(sat)
    return _new_tuple(
        GSA,
        (
            talker,
            _i(fields[1]) if n > 1 else None,
            tuple(used),
            _dop(dops[0]),
            _dop(dops[1]),
            _dop(dops[2]),
        ),
    )


# GSV: 0 number of sentences, 1 sentence number, 2 satellites in view, then per satellite
# (number, elevation, azimuth, SNR), then, NMEA 4.10+, a signal id in hex.
_GSV_HEAD = 3
_GSV_SAT = 4


def _gsv(talker: str, fields: tuple[str, ...]) -> GSV:
    n = len(fields)
    if n < _GSV_HEAD:
        raise ValueError("GSV without its header fields")
    system = TALKER_SYSTEM.get(talker, SYS_UNKNOWN)  # system_of(talker): GSV has no system id
    extra = (n - _GSV_HEAD) % _GSV_SAT
    sigid = int(fields[-1], 16) if extra == 1 and fields[-1] else None
    sat_of = _SAT_CACHES.get(system) or _sat_cache(system)
    sats: list[SatView] = []
    # Whole groups of four only: a signal id is left out.
    it = iter(fields[_GSV_HEAD : n - extra])
    for num, el, az, ss in zip(it, it, it, it, strict=True):
        if not num:
            continue  # padding of a last sentence with fewer than 4 satellites
        sat = sat_of.get(num, _NEW)
        if sat is _NEW:
            sat = _new_sat(num, system)
        if sat is not None:
            gnssid, svid, prn = sat
            sats.append(
                _new_tuple(
                    SatView,
                    (
                        prn,
                        gnssid,
                        svid,
                        sigid,
                        float(az) if az else None,
                        float(el) if el else None,
                        float(ss) if ss else None,
                    ),
                )
            )
    head0, head1, head2 = fields[0], fields[1], fields[2]
    return _new_tuple(
        GSV,
        (
            talker,
            int(head0) if head0 else None,
            int(head1) if head1 else None,
            int(head2) if head2 else None,
            tuple(sats),
        ),
    )


def _pgrmz(fields: tuple[str, ...]) -> PGRMZ:
    # 0 altitude, 1 unit (`f`: feet, the only one Garmin sends), 2 fix mode (1 none, 2 2D, 3 3D)
    alt = None
    if len(fields) > 1 and fields[1] == "f" and fields[0]:
        alt = int(float(fields[0]))  # Garmin sends whole feet; gpsd reads them the same way
    mode = _i(fields[2]) if len(fields) > 2 else None
    return PGRMZ("PG", alt, mode if mode in (1, 2, 3) else None)


def _txt(m: Any, talker: str, _fields: tuple[str, ...]) -> TXT:
    return TXT(talker, str(_a(m, "text")))


# The hot types (GGA, RMC, GNS, GLL, VTG, ZDA, GST) and TXT are split from their field tables,
# with pynmeagps's own conversions (lat/lon `dmm2ddd`, `time2utc`, `date2utc`, float, int) done
# by slicing: a field in a form these do not take as given (a time with more than six decimal
# places, a position without four digits before the point) sends the whole sentence through
# pynmeagps instead, so the result is always pynmeagps's (tests/gnss/test_decoder_fast.py
# checks this on every sentence of both corpora).


class _SlowPathError(Exception):
    """This sentence takes the pynmeagps path."""


def _field(fields: tuple[str, ...], i: int) -> str:
    return fields[i] if i < len(fields) else ""


def _ff(fields: tuple[str, ...], i: int) -> float | None:
    v = fields[i] if i < len(fields) else ""
    return float(v) if v != "" else None


def _fi(fields: tuple[str, ...], i: int) -> int | None:
    v = fields[i] if i < len(fields) else ""
    return int(v) if v != "" else None


# The time and date fields of the last cycles, converted: an epoch's sentences repeat its time.
_CONVERTED_MAX = 64
_TIMES: dict[str, dt.time] = {}
_DATES: dict[str, dt.date] = {}


def _ftime(fields: tuple[str, ...], i: int) -> dt.time | None:
    v = fields[i] if i < len(fields) else ""
    if v == "":
        return None
    t = _TIMES.get(v)
    if t is None:
        t = _ftime_new(v)
        if len(_TIMES) >= _CONVERTED_MAX:
            _TIMES.clear()
        _TIMES[v] = t
    return t


def _ftime_new(v: str) -> dt.time:
    n = len(v)
    if n == 6:
        frac = ""
    elif 8 <= n <= 13 and v[6] == ".":
        frac = v[7:]
    else:
        raise _SlowPathError
    head = v[:6]
    digits = head.isascii() and head.isdigit()
    if not digits or (frac and not (frac.isascii() and frac.isdigit())):
        raise _SlowPathError
    try:
        micro = int(frac.ljust(6, "0")) if frac else 0
        return dt.time(int(v[0:2]), int(v[2:4]), int(v[4:6]), micro)
    except ValueError:
        # Not a time of day: pynmeagps gives none, and a time field that is there but is not
        # a time makes the sentence untrustworthy (see `_tf`).
        raise ValueError(f"not a time of day: {v!r}") from None


def _fdate(fields: tuple[str, ...], i: int) -> dt.date | None:
    v = fields[i] if i < len(fields) else ""
    if v == "":
        return None
    d = _DATES.get(v)
    if d is None:
        d = _fdate_new(v)
        if d is not None:
            if len(_DATES) >= _CONVERTED_MAX:
                _DATES.clear()
            _DATES[v] = d
    return d


def _fdate_new(v: str) -> dt.date | None:
    if len(v) != 6 or not v.isdigit() or not v.isascii():
        raise _SlowPathError
    yy = int(v[4:6])
    try:
        return dt.date(2000 + yy if yy < 69 else 1900 + yy, int(v[2:4]), int(v[0:2]))
    except ValueError:
        return None  # pynmeagps: an invalid date is no date


def _fpos(fields: tuple[str, ...], i: int, negative: str) -> float | None:
    """A (d)ddmm.mmmm field and its hemisphere letter after it, signed."""
    v = fields[i] if i < len(fields) else ""
    if v == "":
        return None
    dp = v.find(".")
    if dp < 4:
        raise _SlowPathError
    try:
        value = round(abs(float(v[0 : dp - 2])) + float(v[dp - 2 :]) / 60, 10)
    except ValueError:
        raise _SlowPathError from None
    return -value if _field(fields, i + 1) == negative else value


def _fdop(fields: tuple[str, ...], i: int) -> float | None:
    d = _ff(fields, i)
    return d if d is not None and 0 < d < 99 else None


def _fs(fields: tuple[str, ...], i: int) -> str | None:
    v = fields[i] if i < len(fields) else ""
    return v or None


def _fast_gga(talker: str, f: tuple[str, ...]) -> GGA:
    return _new_tuple(
        GGA,
        (
            talker,
            _ftime(f, 0),
            _fpos(f, 1, "S"),
            _fpos(f, 3, "W"),
            _fi(f, 5),
            _fi(f, 6),
            _fdop(f, 7),
            _ff(f, 8),
            _ff(f, 10),
        ),
    )


def _fast_rmc(talker: str, f: tuple[str, ...]) -> RMC:
    mv = _ff(f, 9)
    if mv is not None and _field(f, 10) == "W":
        mv = -mv
    return _new_tuple(
        RMC,
        (
            talker,
            _ftime(f, 0),
            _field(f, 1) == "A",
            _fpos(f, 2, "S"),
            _fpos(f, 4, "W"),
            _ff(f, 6),
            _ff(f, 7),
            _fdate(f, 8),
            mv,
            _fs(f, 11),
        ),
    )


def _fast_gns(talker: str, f: tuple[str, ...]) -> GNS:
    return _new_tuple(
        GNS,
        (
            talker,
            _ftime(f, 0),
            _fpos(f, 1, "S"),
            _fpos(f, 3, "W"),
            _fs(f, 5),
            _fi(f, 6),
            _fdop(f, 7),
            _ff(f, 8),
            _ff(f, 9),
        ),
    )


def _fast_gll(talker: str, f: tuple[str, ...]) -> GLL:
    return _new_tuple(
        GLL,
        (
            talker,
            _ftime(f, 4),
            _field(f, 5) == "A",
            _fpos(f, 0, "S"),
            _fpos(f, 2, "W"),
            _fs(f, 6),
        ),
    )


def _fast_vtg(talker: str, f: tuple[str, ...]) -> VTG:
    return _new_tuple(VTG, (talker, _ff(f, 0), _ff(f, 4), _ff(f, 6), _fs(f, 8)))


def _fast_zda(talker: str, f: tuple[str, ...]) -> ZDA:
    day, month, year = _fi(f, 1), _fi(f, 2), _fi(f, 3)
    date = None
    if day is not None and month is not None and year is not None:
        date = dt.date(year, month, day)
    return _new_tuple(ZDA, (talker, _ftime(f, 0), date))


def _fast_gst(talker: str, f: tuple[str, ...]) -> GST:
    return _new_tuple(GST, (talker, _ftime(f, 0), _ff(f, 5), _ff(f, 6), _ff(f, 7)))


def _fast_txt(talker: str, f: tuple[str, ...]) -> TXT:
    # 0 number of sentences, 1 sentence number, 2 text id (integers to pynmeagps), 3 text.
    for i in (0, 1, 2):
        v = _field(f, i)
        if v and not (v.isascii() and v.isdigit()):
            raise _SlowPathError
    return _new_tuple(TXT, (talker, _field(f, 3)))


_FAST_DECODERS: dict[str, Callable[[str, tuple[str, ...]], Message]] = {
    "GGA": _fast_gga,
    "RMC": _fast_rmc,
    "GNS": _fast_gns,
    "GLL": _fast_gll,
    "VTG": _fast_vtg,
    "ZDA": _fast_zda,
    "GST": _fast_gst,
    "TXT": _fast_txt,
}


_DECODERS: dict[str, Callable[[Any, str, tuple[str, ...]], Message]] = {
    "GGA": _gga,
    "RMC": _rmc,
    "GNS": _gns,
    "GLL": _gll,
    "VTG": _vtg,
    "ZDA": _zda,
    "GST": _gst,
    "TXT": _txt,
}

_FIELD_TABLE_DECODERS: dict[str, Callable[[str, tuple[str, ...]], Message]] = {
    "GSA": _gsa,
    "GSV": _gsv,
}


def _quick(
    fast: Callable[[str, tuple[str, ...]], Message], talker: str, fields: tuple[str, ...]
) -> Message | None:
    """The field-table decoding, or None when the sentence must go through pynmeagps."""
    try:
        return fast(talker, fields)
    except _SlowPathError:
        return None


_DECODE_ERRORS = (
    NMEAParseError,
    NMEAMessageError,
    NMEATypeError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    OverflowError,
)

_Route = tuple[str, Callable[[str, tuple[str, ...]], Message]]
#: Address -> (talker, field-table decoder) of every accepted talker's GSA and GSV, and with
#: the hot types (`Decoder.fast`): one lookup for most sentences.
_TABLE_ROUTES: dict[str, _Route] = {
    talker + kind: (talker, fn) for talker in TALKERS for kind, fn in _FIELD_TABLE_DECODERS.items()
}
_FAST_ROUTES: dict[str, _Route] = _TABLE_ROUTES | {
    talker + kind: (talker, fn) for talker in TALKERS for kind, fn in _FAST_DECODERS.items()
}


class Decoder:
    """Turn framed sentences into typed messages, counting what it skips."""

    def __init__(self) -> None:
        self._counters: Counter[str] = Counter(dict.fromkeys(DECODER_COUNTERS, 0))
        self._key_limit = len(DECODER_COUNTERS) + MAX_PROPRIETARY_KEYS
        #: Decode the hot types from their field tables (False: all through pynmeagps).
        self.fast = True

    @property
    def counters(self) -> Mapping[str, int]:
        """Outcome counts since creation (see DECODER_COUNTERS)."""
        return self._counters

    def decode(self, sentence: Sentence) -> Message | None:
        """The typed message of `sentence`, or None when it is skipped (and counted)."""
        route = (_FAST_ROUTES if self.fast else _TABLE_ROUTES).get(sentence.address)
        if route is None:
            return self._decode_other(sentence.address, sentence.fields)
        talker, table = route
        fields = sentence.fields
        try:
            decoded = table(talker, fields)
        except _SlowPathError:
            return self._convert(talker, sentence.address[2:], fields, quick=False)
        except _DECODE_ERRORS:
            self._counters["decode_error"] += 1
            return None
        counters = self._counters
        counters["decoded"] += 1
        return decoded

    def _decode_other(self, address: str, fields: tuple[str, ...]) -> Message | None:
        """Everything but a plain talker's GSA, GSV and (fast) hot types."""
        if address.startswith("PQ") and address[2:] in ("GSV", "GSA") and fields:
            talker = _PQ_TALKER.get(fields[-1])
            if talker is None:
                self._counters["decode_error"] += 1
                return None
            fields = fields[:-1]
            kind = address[2:]
        elif address[0] == "P":
            self._counters["proprietary"] += 1
            key = f"proprietary.{address}"
            if key not in self._counters and len(self._counters) >= self._key_limit:
                key = "proprietary.other"
            self._counters[key] += 1
            if address != "PGRMZ":
                return None
            try:
                return _pgrmz(fields)
            except (ValueError, OverflowError):
                self._counters["decode_error"] += 1
                return None
        else:
            talker, kind = address[:2], address[2:]
            if talker not in TALKERS:
                self._counters["unknown_talker"] += 1
                return None
            if kind not in TYPES:
                self._counters["unknown_type"] += 1
                return None
        return self._convert(talker, kind, fields, quick=self.fast)

    def _convert(
        self, talker: str, kind: str, fields: tuple[str, ...], *, quick: bool
    ) -> Message | None:
        """Decode from the field table where there is one (hot types: when `quick`, unless
        the sentence needs pynmeagps), else through pynmeagps; counted."""
        try:
            table = _FIELD_TABLE_DECODERS.get(kind)
            fast = _FAST_DECODERS.get(kind) if quick else None
            if table is not None:
                decoded = table(talker, fields)
            elif fast is not None and (done := _quick(fast, talker, fields)) is not None:
                decoded = done
            else:
                body = ",".join((talker + kind, *fields)).encode("ascii")
                raw = b"$%s*%02X\r\n" % (body, nmea_checksum(body))
                msg = NMEAReader.parse(raw, validate=_VALNONE)
                if msg is None:
                    self._counters["decode_error"] += 1
                    return None
                decoded = _DECODERS[kind](msg, talker, fields)
        except _DECODE_ERRORS:
            self._counters["decode_error"] += 1
            return None
        self._counters["decoded"] += 1
        return decoded
