"""Epoch assembler: decoded messages in, one Fix (TPV) and one Sky (SKY) per epoch out.

Epochs follow the receiver's cycle:

* An epoch is the group of sentences sharing one UTC time of day; sentences without a time
  field (GSA, GSV, VTG, PGRMZ) belong to the epoch being read. A sentence of a timed type
  (GGA, RMC, GNS, GLL, ZDA, GST) with another time of day completes the epoch.
* Timed types sent with an empty time field (a receiver without a fix: `$GPRMC,,V,...`) form
  epochs of their own, one per cycle (a second sentence of one address starts the next): they
  never merge into the next epoch that has a time, so a stale no-fix RMC cannot hide the
  date (or the fix) of the first cycle that has one.
* An epoch with a time of day that closes before the receiver has sent any date (its GGA
  comes before the cycle's RMC, the Telit HE910's first fix) is held back until a date comes,
  at most MAX_UNDATED_EPOCHS epochs, and then published with that date; a date is never
  guessed. A receiver that sends no date at all gets system-clock times, marked
  `clock: "system"`.
* Like gpsd, the assembler learns the cycle's last sentence: once the same sentence has ended
  two epochs in a row (and appears once per epoch), its arrival completes the epoch at once.
  Untimed sentences that still follow it belong to the epoch just reported (the receiver sent
  them late: the rx210's occasional no-fix GSA after its GGA, the BU-353's GSV every few
  seconds after its ZDA): never the next epoch's fix; their GSA becomes the used set, their
  view a second Sky of the reported epoch; and the learned end is dropped.

A fix needs evidence. A position is reported (mode 2 or 3) only when a sentence vouches for
it: RMC or GLL with status A (and a mode indicator other than N), GNS with a mode other than
N, or GGA with quality 1 or more and at least 3 satellites used (or a 2D/3D GSA in the same
epoch). A GGA with quality 1 and 0 satellites (Hemisphere, without a fix) vouches for nothing.
When the sentences of one epoch disagree, the last one received wins, field by field, as in
gpsd's fix at the end of its cycle: the position is the last vouching sentence's (GGA, GNS,
GLL or RMC), speed and track each the last RMC (status A) or VTG that gives them, the altitude
GGA's (else GNS's). A chartplotter relaying GGA, GLL and RMC from different sources (B&G
Zeus² in the corpus) sends positions up to a second apart under one time; no sentence is
right in every part of that capture, and the last one is what gpsd reports.

Mode: the epoch's GSA (highest), else Garmin's PGRMZ, else 3 with an altitude (GGA, GNS or
PGRMZ), else 3 when the previous epoch was a 3D fix at most MODE_CARRY_MAX_GAP_S earlier
(receivers that send GGA every other second, or GLL between GGAs: the fix did not lose a
dimension in between), else 2.

Sky: the satellite view is built from GSV groups, which may span epochs (Garmin 17N); a group
starts with part 1 after a sentence that is not a GSV, and is complete at its last part. An
epoch reports the view completed in it, else the last complete view for up to SKY_HOLD_S
(receivers that send GSV once a minute, like the Ericsson GRU 04, get a view in every epoch).
A satellite is `used` when the newest GSA lists it and it has a signal (an SNR) in the view:
like gpsd, a satellite without SNR is not marked used (the view says it is not tracked).
Signals of one satellite are merged into one row (strongest SNR kept), used if any is.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, cast

from terminal_gw.gnss.decoder import (
    GGA,
    GLL,
    GNS,
    GSA,
    GST,
    GSV,
    PGRMZ,
    RMC,
    TXT,
    VTG,
    ZDA,
    Message,
    SatView,
)
from terminal_gw.gnss.numbering import GNSS_NAMES
from terminal_gw.models import (
    Clock,
    Fix,
    Payload,
    Satellite,
    Sky,
    iso_utc,
    make_event,
    new_id,
    remember_satellites_json,
    satellite_json,
)

KNOTS_TO_MPS = 1852.0 / 3600.0
FEET_TO_M = 0.3048
_DAY_MS = 86_400_000
_HALF_DAY_MS = _DAY_MS // 2
#: Epoch key of timed sentence types sent with an empty time field.
NO_TIME = -1
#: Longest gap between two epochs over which climb is still derived from altitude.
CLIMB_MAX_GAP_S = 10.0
#: Longest gap over which a 3D fix carries its mode to an epoch that says nothing of it.
MODE_CARRY_MAX_GAP_S = 10.0
#: How long a satellite view stays valid for epochs whose receiver sent no GSV: a receiver
#: that sends its view once a minute keeps one in every epoch; an older view is not repeated.
SKY_HOLD_S = 90.0
#: How long the newest GSA's satellites stay the used ones for a view without its own GSA.
USED_HOLD_S = SKY_HOLD_S
#: Most GSA + GSV sentences one epoch keeps (a 10-system, multi-signal receiver sends ~60):
#: a stream that never sends a time of day must not grow an epoch without bound.
MAX_EPOCH_SENTENCES = 256
#: Most epochs held back waiting for the receiver's first date (RMC or ZDA); a receiver that
#: sends none in that time gets its fixes stamped with the system clock, and says so.
MAX_UNDATED_EPOCHS = 10
#: Fewest satellites a GGA must count for its position to stand on its own.
GGA_MIN_SATELLITES = 3

#: GGA quality -> gpsd fix status (0 unknown, 1 GPS, 2 DGPS, 3 RTK fixed, 4 RTK float,
#: 5 dead reckoning, 6 GNSS+DR, 7 time only, 8 simulated).
GGA_STATUS: dict[int, int] = {0: 0, 1: 1, 2: 2, 3: 2, 4: 3, 5: 4, 6: 5, 7: 7, 8: 8}
#: FAA mode letter (RMC, GNS, VTG, GLL) -> gpsd fix status.
FAA_STATUS: dict[str, int] = {
    "A": 1,
    "D": 2,
    "P": 2,
    "R": 3,
    "F": 4,
    "E": 5,
    "M": 8,
    "S": 8,
    "N": 0,
}

#: Antenna status reports: CASIC `ANTENNA OK|OPEN|SHORT`, u-blox `ANTSTATUS=OK|OPEN|SHORT`.
_ANTENNA_RE = re.compile(r"\bANT(?:ENNA\s+|STATUS=)(OK|OPEN|SHORT)\b")


def _tod_ms(t: dt.time) -> int:
    return ((t.hour * 60 + t.minute) * 60 + t.second) * 1000 + t.microsecond // 1000


def _iso(date: dt.date, tod_ms: int) -> str:
    """ISO 8601 UTC with milliseconds, built without floating point."""
    s, ms = divmod(tod_ms, 1000)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{date.isoformat()}T{h:02d}:{m:02d}:{sec:02d}.{ms:03d}Z"


def _unix(date: dt.date, tod_ms: int) -> float:
    midnight = dt.datetime(date.year, date.month, date.day, tzinfo=dt.UTC)
    return midnight.timestamp() + tod_ms / 1000.0


#: Sentence types that carry a time of day (their arrival can complete an epoch).
_TIMED = (GGA, RMC, GNS, GLL, ZDA, GST)


@dataclass
class _Epoch:
    tod: int | None  # None: only untimed sentences so far; NO_TIME: timed types without time
    now: float
    gga: GGA | None = None
    rmc: RMC | None = None
    gns: GNS | None = None
    gll: GLL | None = None
    vtg: VTG | None = None
    zda: ZDA | None = None
    gst: GST | None = None
    pgrmz: PGRMZ | None = None
    # The position and velocity sentences kept above, in the order they came: where they
    # disagree, the last one wins (see the module docstring).
    order: list[GGA | RMC | GNS | GLL | VTG] = field(default_factory=list)
    gsa: list[GSA] = field(default_factory=list)
    view_rows: dict[tuple[int, int], _SatRow] | None = None  # a view completed in it
    view: list[_SatRow] | None = None  # its copy when the epoch closes
    timed: set[str] = field(default_factory=set)  # NO_TIME epochs: talker + type sent
    size: int = 0


#: A row built from its values without the Python-level NamedTuple `__new__`.
_new_row = tuple.__new__


#: A satellite row of a view, merged across signals: a GSV's row as it is when the view has
#: the satellite once (prn, gnssid, svid, sigid, az, el, ss).
_SatRow = SatView


#: A satellite of the last sky: its row, whether used, its model, the model's JSON and
#: whether the row holds a zero.
_SkySat = tuple[_SatRow, bool, Satellite, str | None, bool]


def _negative_zero(*values: float | None) -> bool:
    """Whether one of `values` is -0.0."""
    return any(v is not None and v == 0.0 and math.copysign(1.0, v) < 0.0 for v in values)


class EpochAssembler:
    """Group messages into epochs and build gpsd-style Fix and Sky records."""

    def __init__(self) -> None:
        #: Asked before a sky view is built; None: always (replay, the gpsd server). The
        #: daemon sets it to its reporting policy's `sky_due`.
        self.sky_wanted: Callable[[], bool] | None = None
        self._epoch: _Epoch | None = None
        # Untimed sentences received after a learned cycle end, before the next timed one.
        self._late: _Epoch | None = None
        self._date: dt.date | None = None
        self._last_tod: int | None = None
        self._last_alt: tuple[float, float] | None = None  # (unix time, altitude)
        self._last_mode: tuple[float, int] | None = None  # (time, mode) of the last fix
        # Satellite view: the group being read (merged rows by satellite) and the last
        # complete one with the clock and time of its epoch, GNSS time when known, so a replay
        # at any speed holds it as long as the live stream would.
        self._building: dict[tuple[int, int], _SatRow] = {}
        self._last_view: tuple[Clock, float, list[_SatRow]] | None = None
        self._sky_sats: dict[int, _SkySat] = {}  # the last sky's satellites, by PRN
        # Newest GSA group: satellites used, and the clock and time of its epoch.
        self._last_used: tuple[Clock, float, frozenset[tuple[int, int]]] | None = None
        self._after_gsv = False  # the previous sentence was a GSV
        self._antenna: str | None = None
        # Cycle-end learning: addresses seen in the epoch being read, the last one, and the
        # address that ended the previous epoch (candidate) or the last two (ender).
        self._seen: Counter[str] = Counter()
        self._last_address: str | None = None
        self._ender_candidate: str | None = None
        self._ender: str | None = None
        self._closed_tod: int | None = None
        self._closed_early = False
        self._closed_stamp: tuple[str, Clock, float] | None = None  # ISO time, clock, time
        # Epochs with a time of day closed before any date was known, waiting for one.
        self._undated: list[_Epoch] = []
        self._hold_given_up = False
        self.epochs = 0
        self.fixes = 0
        self.skies = 0
        self.events = 0
        self.oversized = 0

    @property
    def antenna(self) -> str | None:
        """Last antenna state reported by the receiver: ok, open, short (None: never seen)."""
        return self._antenna

    def add(self, msg: Message, now: float) -> list[Payload]:
        """Records completed by `msg` (the previous epoch when `msg` starts a new one)."""
        # Untimed, and most of the traffic: into the epoch being read when there is one with
        # room (what the general case below comes to for them).
        if type(msg) is GSV:
            ep = self._epoch
            if ep is not None and ep.size < MAX_EPOCH_SENTENCES:
                ep.size += 1
                self._gsv(ep, msg)
                return []
        elif type(msg) is GSA:
            ep = self._epoch
            if ep is not None and ep.size < MAX_EPOCH_SENTENCES:
                ep.size += 1
                ep.gsa.append(msg)
                return []
        if isinstance(msg, TXT):
            return self._antenna_event(msg, now)
        out: list[Payload] = []
        key: int | None = None
        address = ""
        if isinstance(msg, _TIMED):
            t = msg.time
            if t is not None:
                key = _tod_ms(t)
            else:
                key = NO_TIME
                address = msg.talker + type(msg).__name__
        ep = self._epoch
        if key is not None:
            if self._late is not None:
                out.extend(self._finish_late())
            if ep is not None and ep.tod is not None:
                if key != ep.tod:
                    self._learn_ender()
                    out.extend(self._close(ep))
                    ep = None
                elif key == NO_TIME and address in ep.timed:
                    # Without times a repeated sentence is the next cycle.
                    out.extend(self._close(ep))
                    ep = None
        elif ep is None and self._closed_early:
            # An untimed sentence after the learned cycle end: it belongs to the epoch just
            # reported, so that end was wrong; keep it out of the next epoch's fix.
            self._ender = self._ender_candidate = None
            if self._late is None:
                self._late = _Epoch(self._closed_tod, now)
            elif self._late.size >= MAX_EPOCH_SENTENCES:
                self.oversized += 1
                self._late = _Epoch(self._closed_tod, now)
            self._put(self._late, msg)
            return out
        if ep is not None and ep.size >= MAX_EPOCH_SENTENCES:
            self.oversized += 1
            out.extend(self._close(ep))
            ep = None
        if ep is None:
            if key is not None and key == self._closed_tod and self._closed_early:
                # More of an epoch already reported: the learned cycle end was wrong.
                self._ender = self._ender_candidate = None
            ep = self._epoch = _Epoch(key, now)
            self._closed_early = False
        elif ep.tod is None and key is not None:
            ep.tod = key
        if key == NO_TIME:
            ep.timed.add(address)
        self._put(ep, msg)
        return out

    def sentence_done(self, address: str) -> list[Payload]:
        """Note every framed sentence (decoded or not); reports the epoch if it ends the cycle."""
        kind = address[-3:]
        self._after_gsv = kind == "GSV"
        if len(self._seen) > MAX_EPOCH_SENTENCES:
            self._seen.clear()  # only bounds memory: such an epoch has no learnable end
        self._seen[address] += 1
        self._last_address = address
        ep = self._epoch
        if ep is None or address != self._ender or ep.tod is None:
            return []
        out = self._close(ep)
        self._closed_early = True
        return out

    def flush(self, now: float) -> list[Payload]:
        """Records of the epoch still open."""
        out = self._finish_late()
        ep = self._epoch
        if ep is not None:
            out.extend(self._close(ep))
        for held in self._undated:  # the stream ended before any date came
            out.extend(self._records(held, None))
        self._undated.clear()
        return out

    def _finish_late(self) -> list[Payload]:
        """Sentences that came after a reported epoch's learned end: their GSA becomes the
        used set, their satellite view a Sky of that epoch (a later one than it had)."""
        late, self._late = self._late, None
        if late is None:
            return []
        self._take_view(late)
        if self._undated and self._undated[-1].tod == late.tod:
            held = self._undated[-1]  # not reported yet: it simply gets them
            held.gsa.extend(late.gsa)
            held.view = late.view or held.view
            return []
        if self._closed_stamp is None:
            return []
        iso, clock, t = self._closed_stamp
        if late.gsa:
            self._last_used = (clock, t, frozenset(self._used_of(late)))
        if late.view is None:
            return []
        sky = self._sky(late, iso, clock, t)
        if sky is None:
            return []
        self.skies += 1
        return [sky]

    def _learn_ender(self) -> None:
        last = self._last_address
        if last is None or self._seen[last] != 1:
            self._ender_candidate = self._ender = None
        elif last == self._ender_candidate:
            self._ender = last
        else:
            self._ender_candidate, self._ender = last, None

    def _put(self, ep: _Epoch, msg: Message) -> None:
        # First of each kind wins: a second GGA in one epoch (e.g. GPGGA and GNGGA) repeats it.
        if isinstance(msg, GSA):
            ep.gsa.append(msg)
            ep.size += 1
        elif isinstance(msg, GSV):
            ep.size += 1
            self._gsv(ep, msg)
        elif isinstance(msg, GGA):
            if ep.gga is None:
                ep.gga = msg
                ep.order.append(msg)
        elif isinstance(msg, RMC):
            if ep.rmc is None:
                ep.rmc = msg
                ep.order.append(msg)
        elif isinstance(msg, GNS):
            if ep.gns is None:
                ep.gns = msg
                ep.order.append(msg)
        elif isinstance(msg, GLL):
            if ep.gll is None:
                ep.gll = msg
                ep.order.append(msg)
        elif isinstance(msg, VTG):
            if ep.vtg is None:
                ep.vtg = msg
                ep.order.append(msg)
        elif isinstance(msg, ZDA):
            ep.zda = ep.zda or msg
        elif isinstance(msg, GST):
            ep.gst = ep.gst or msg
        elif isinstance(msg, PGRMZ):
            ep.pgrmz = ep.pgrmz or msg

    def _gsv(self, ep: _Epoch, msg: GSV) -> None:
        """Merge one GSV part into the view being read; a last part completes it."""
        if msg.msg_num in (None, 1) and not self._after_gsv:
            self._building = {}
        rows = self._building
        for v in msg.sats:
            key = (v[1], v[2])  # gnssid, svid
            row = rows.get(key)
            if row is None:
                rows[key] = v
                continue
            # Keep the strongest signal's strength and id.
            prn, gnssid, svid, sigid, az, el, ss = row
            if v.ss is not None and (ss is None or v.ss > ss):
                ss, sigid = v.ss, v.sigid
            rows[key] = _new_row(
                _SatRow,
                (
                    prn,
                    gnssid,
                    svid,
                    sigid,
                    v.az if az is None else az,
                    v.el if el is None else el,
                    ss,
                ),
            )
        if msg.msg_num is None or msg.num_msg is None or msg.msg_num >= msg.num_msg:
            ep.view_rows = rows

    def _antenna_event(self, msg: TXT, now: float) -> list[Payload]:
        m = _ANTENNA_RE.search(msg.text.upper())
        if m is None:
            return []
        state = m.group(1).lower()
        previous = self._antenna
        self._antenna = state
        if state == previous or (previous is None and state == "ok"):
            return []
        severity: Literal["info", "warning"] = "info" if state == "ok" else "warning"
        self.events += 1
        return [
            make_event(
                "antenna",
                f"GNSS antenna {state}",
                now=now,
                severity=severity,
                state=state,
                previous=previous,
            )
        ]

    def _epoch_date(self, ep: _Epoch) -> dt.date | None:
        """The GNSS date of the epoch: its own ZDA/RMC date, else the last one carried over
        (a day later when the time of day jumped back by more than half a day)."""
        if ep.tod is None or ep.tod == NO_TIME:
            return None
        date = None
        if ep.zda is not None and ep.zda.date is not None:
            date = ep.zda.date
        elif ep.rmc is not None and ep.rmc.date is not None:
            date = ep.rmc.date
        if date is None and self._date is not None:
            date = self._date
            # Time of day jumped back by more than half a day: midnight passed.
            if self._last_tod is not None and self._last_tod - ep.tod > _HALF_DAY_MS:
                date += dt.timedelta(days=1)
        self._last_tod = ep.tod
        if date is not None:
            self._date = date
        return date

    def _close(self, ep: _Epoch) -> list[Payload]:
        self._epoch = None
        self._seen.clear()
        self._last_address = None
        self._closed_tod = ep.tod
        self._closed_early = False
        self.epochs += 1
        self._take_view(ep)
        date = self._epoch_date(ep)
        out: list[Payload] = []
        if date is None:
            if ep.tod not in (None, NO_TIME) and not self._hold_given_up:
                if len(self._undated) < MAX_UNDATED_EPOCHS:
                    # A time of day but no date yet: wait for the date (mostly the next
                    # epoch's RMC) rather than publish a guess.
                    self._undated.append(ep)
                    return out
                self._hold_given_up = True  # a receiver that sends no date at all
            for held in self._undated:
                out.extend(self._records(held, None))
            self._undated.clear()
            out.extend(self._records(ep, None))
            return out
        self._hold_given_up = False
        assert ep.tod is not None
        for held in self._undated:
            assert held.tod is not None
            # A held epoch later in the day than the dating one was before midnight.
            back = held.tod - ep.tod > _HALF_DAY_MS
            out.extend(self._records(held, date - dt.timedelta(days=1) if back else date))
        self._undated.clear()
        out.extend(self._records(ep, date))
        return out

    def _records(self, ep: _Epoch, date: dt.date | None) -> list[Payload]:
        """The Fix and Sky of a closed epoch, dated `date` (None: the system clock's time)."""
        out: list[Payload] = []
        clock: Clock = "gnss"
        if date is not None and ep.tod is not None:
            iso, unix = _iso(date, ep.tod), _unix(date, ep.tod)
            t = unix
        else:
            iso, clock, t = iso_utc(ep.now), "system", ep.now
        self._closed_stamp = (iso, clock, t)
        used = self._used_of(ep)
        if ep.gsa:
            self._last_used = (clock, t, frozenset(used))
        if ep.gga or ep.rmc or ep.gns or ep.gll or ep.vtg:
            out.append(self._fix(ep, iso, clock, t, gnss_time=date is not None, used=used))
            self.fixes += 1
        sky = self._sky(ep, iso, clock, t)
        if sky is not None:
            out.append(sky)
            self.skies += 1
        return out

    @staticmethod
    def _take_view(ep: _Epoch) -> None:
        # A copy: a group that goes on (another system's GSV, in the next epoch) must not
        # change a view already held for later epochs (rows are replaced, never changed).
        if ep.view_rows is not None:
            ep.view = list(ep.view_rows.values())
            ep.view_rows = None

    @staticmethod
    def _used_of(ep: _Epoch) -> set[tuple[int, int]]:
        return {(s.gnssid, s.svid) for g in ep.gsa for s in g.used}

    @staticmethod
    def _position(ep: _Epoch) -> tuple[float, float] | None:
        """The vouched-for position of the epoch (see the module docstring), or None: of the
        sentences that vouch for theirs, the last one received."""
        for msg in reversed(ep.order):
            if isinstance(msg, VTG) or msg.lat is None or msg.lon is None:
                continue
            if isinstance(msg, GLL):
                if msg.valid and msg.pos_mode != "N":
                    return msg.lat, msg.lon
            elif isinstance(msg, GGA):
                if msg.quality not in (None, 0) and (
                    (msg.num_sv is not None and msg.num_sv >= GGA_MIN_SATELLITES)
                    or any(g.nav_mode in (2, 3) for g in ep.gsa)
                ):
                    return msg.lat, msg.lon
            elif isinstance(msg, GNS):
                if msg.pos_mode and msg.pos_mode[0] != "N":
                    return msg.lat, msg.lon
            elif msg.valid and (msg.pos_mode or "A")[0] != "N":  # RMC
                return msg.lat, msg.lon
        return None

    @staticmethod
    def _velocity(ep: _Epoch) -> tuple[float | None, float | None]:
        """Speed (knots) and track of the epoch: each from the last RMC (status A) or VTG
        received that gives it."""
        speed_kn: float | None = None
        track: float | None = None
        for msg in reversed(ep.order):
            if isinstance(msg, RMC):
                if not msg.valid:
                    continue
                s, c = msg.speed_kn, msg.course
            elif isinstance(msg, VTG):
                s, c = msg.speed_kn, msg.course
                if s is None and msg.speed_kmh is not None:
                    s = msg.speed_kmh / 1.852
            else:
                continue
            if speed_kn is None:
                speed_kn = s
            if track is None:
                track = c
            if speed_kn is not None and track is not None:
                break
        return speed_kn, track

    def _fix(
        self,
        ep: _Epoch,
        iso: str,
        clock: Clock,
        t: float,
        *,
        gnss_time: bool,
        used: set[tuple[int, int]],
    ) -> Fix:
        gga, rmc, pgrmz = ep.gga, ep.rmc, ep.pgrmz
        position = self._position(ep)
        gsa_modes = [g.nav_mode for g in ep.gsa if g.nav_mode in (1, 2, 3)]
        alt_src = gga if gga is not None and gga.alt is not None else ep.gns
        alt = alt_src.alt if alt_src is not None else None
        sep = alt_src.sep if alt_src is not None else None
        if alt is None and pgrmz is not None and pgrmz.alt_ft is not None:
            alt = round(pgrmz.alt_ft * FEET_TO_M, 4)
        mode: Literal[1, 2, 3]
        if position is None:
            mode = 1
        elif gsa_modes:
            mode = 3 if max(gsa_modes) == 3 else 2 if max(gsa_modes) == 2 else 1
        elif pgrmz is not None and pgrmz.mode is not None:
            mode = 3 if pgrmz.mode == 3 else 2 if pgrmz.mode == 2 else 1
        elif alt is not None:
            mode = 3
        else:
            last = self._last_mode
            carried = last is not None and last[1] == 3 and 0 <= t - last[0] <= MODE_CARRY_MAX_GAP_S
            mode = 3 if carried else 2
        self._last_mode = (t, mode)
        values: dict[str, object] = {}
        if mode >= 2 and position is not None:
            values["lat"], values["lon"] = position
        if mode == 3 and alt is not None:
            values["altMSL"] = alt
            if sep is not None:
                values["geoidSep"] = sep
                values["altHAE"] = round(alt + sep, 4)
        speed_kn, track = self._velocity(ep)
        if mode >= 2 and speed_kn is not None:
            values["speed"] = round(speed_kn * KNOTS_TO_MPS, 3)
        if mode >= 2 and track is not None:
            values["track"] = track
        if rmc is not None and rmc.magvar is not None:
            values["magvar"] = rmc.magvar
        status = None
        if gga is not None and gga.quality is not None:
            status = GGA_STATUS.get(gga.quality)
        elif rmc is not None and rmc.pos_mode:
            status = FAA_STATUS.get(rmc.pos_mode[0])
        if status is not None:
            values["status"] = status
        alt_now = values.get("altMSL")  # always sent with a 3D fix; altHAE needs geoidSep too
        if gnss_time and isinstance(alt_now, float):
            if self._last_alt is not None:
                gap = t - self._last_alt[0]
                if 0 < gap <= CLIMB_MAX_GAP_S:
                    values["climb"] = round((alt_now - self._last_alt[1]) / gap, 3)
            self._last_alt = (t, alt_now)
        else:
            self._last_alt = None
        gst = ep.gst
        if gst is not None:
            if gst.std_lat is not None and gst.std_lon is not None:
                values["eph"] = round(math.hypot(gst.std_lat, gst.std_lon), 3)
            if gst.std_alt is not None:
                values["epv"] = gst.std_alt
        pdop, hdop, vdop = _dops(ep)
        if hdop is None and gga is not None:
            hdop = gga.hdop
        values.update(
            {k: v for k, v in (("pdop", pdop), ("hdop", hdop), ("vdop", vdop)) if v is not None}
        )
        if ep.gsa:
            values["uSat"] = len(used)
            counts: dict[int, int] = {}
            for gnssid, _svid in used:
                counts[gnssid] = counts.get(gnssid, 0) + 1
            per: dict[str, int] = {}
            for gnssid in sorted(counts):
                name = GNSS_NAMES.get(gnssid, str(gnssid))
                per[name] = per.get(name, 0) + counts[gnssid]
            values["used"] = per
        elif gga is not None and gga.num_sv is not None:
            values["uSat"] = gga.num_sv
        if ep.view is not None:
            values["nSat"] = len(ep.view)
        return Fix.model_validate(
            {"id": new_id(int(ep.now * 1000)), "time": iso, "mode": mode, "clock": clock, **values}
        )

    def _sky(self, ep: _Epoch, iso: str, clock: Clock, t: float) -> Sky | None:
        last = self._last_view
        if ep.view is not None:
            rows = ep.view
            self._last_view = (clock, t, rows)
        elif last is not None and last[0] == clock and 0 <= t - last[1] <= SKY_HOLD_S:
            rows = last[2]
        else:
            # No satellite view known: an empty list would claim none are in view.
            return None
        if self.sky_wanted is not None and not self.sky_wanted():
            return None  # the reporting policy would drop it: not built (the view is kept)
        lu = self._last_used
        used: frozenset[tuple[int, int]] = frozenset()
        if lu is not None and lu[0] == clock and 0 <= t - lu[1] <= USED_HOLD_S:
            used = lu[2]
        # Most satellites of a sky are as in the one before (83% in the corpus): their
        # (immutable) models and JSON text are taken again, found by PRN and checked against
        # the whole row; a row with a zero also for the zero's sign (-0.0 == 0.0, and the JSON
        # tells them apart). The others are validated with the Sky (one call for all, not one
        # each).
        previous = self._sky_sats
        copysign = math.copysign
        kept: dict[int, _SkySat] = {}
        sats: list[Satellite | dict[str, object]] = []
        rows_json: list[str | None] = []  # each one's JSON text (None: new, not yet written)
        new: list[tuple[int, _SatRow, bool]] = []  # index in sats, row, used
        u_sat = 0
        for r in rows:
            prn, gnssid, svid, sigid, az, el, ss = r
            is_used = ss is not None and ss > 0 and (gnssid, svid) in used
            u_sat += is_used
            entry = previous.get(prn)
            if (
                entry is None
                or entry[1] is not is_used
                or entry[0] != r
                or (
                    entry[4]  # the zeros of the row are +0.0: are they here too?
                    and (
                        (az == 0.0 and copysign(1.0, az) < 0.0)
                        or (el == 0.0 and copysign(1.0, el) < 0.0)
                        or (ss == 0.0 and copysign(1.0, ss) < 0.0)
                    )
                )
            ):
                new.append((len(sats), r, is_used))
                rows_json.append(None)
                sats.append(
                    {
                        "PRN": prn,
                        "gnssid": gnssid,
                        "svid": svid,
                        "sigid": sigid,
                        "az": az,
                        "el": el,
                        "ss": ss,
                        "used": is_used,
                    }
                )
            else:
                kept[prn] = entry
                sats.append(entry[2])
                rows_json.append(entry[3])
        pdop, hdop, vdop = _dops(ep)
        if hdop is None and ep.gga is not None:
            hdop = ep.gga.hdop
        sky = Sky.model_validate(
            {
                "id": new_id(int(ep.now * 1000)),
                "time": iso,
                "satellites": sats,
                "nSat": len(sats),
                "uSat": u_sat,
                "pdop": pdop,
                "hdop": hdop,
                "vdop": vdop,
                "clock": clock,
            }
        )
        models = sky.satellites
        for i, r, is_used in new:
            sat = models[i]
            rows_json[i] = text = satellite_json(sat)
            zero = 0.0 in (r.az, r.el, r.ss)
            if not (zero and _negative_zero(r.az, r.el, r.ss)):
                kept[r.prn] = (r, is_used, sat, text, zero)
        self._sky_sats = kept
        if None not in rows_json:
            remember_satellites_json(models, cast("list[str]", rows_json))
        return sky


def _dops(ep: _Epoch) -> tuple[float | None, float | None, float | None]:
    """Each DOP from the first of the epoch's GSA that gives it."""
    pdop = hdop = vdop = None
    for g in ep.gsa:
        if pdop is None:
            pdop = g.pdop
        if hdop is None:
            hdop = g.hdop
        if vdop is None:
            vdop = g.vdop
    return pdop, hdop, vdop
