"""GNSS receiver simulator on a pty: a moving vessel's NMEA 4.10 output (GPS + BeiDou), or a
capture played at real time, with faults on demand (silent, garbage, no fix, hang-up).

The sentence builders are pure (state in, bytes out); `GnssSimulator` paces them onto a
`PtyDevice`, whose stable symlink the daemon opens like a /dev/serial/by-id path.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import reduce
from operator import xor
from pathlib import Path
from typing import Literal, get_args

from terminal_gw.transport.capture import CaptureReader, Chunk
from terminal_gw.transport.pty import PtyDevice

Fault = Literal["silent", "garbage", "nofix", "hangup"]
FAULTS: tuple[str, ...] = get_args(Fault)

KNOT_MPS = 1852.0 / 3600.0
_M_PER_DEG_LAT = 111_320.0

#: NMEA 4.10 system ids (GSA field 18) and the GSV signal id sent for each system.
SYSTEM_ID = {"GP": 1, "BDS": 4}
SIGNAL_ID = {"GP": 1, "BDS": 1}  # GPS L1 C/A; BeiDou B1I

# --- sentences ------------------------------------------------------------------------


def sentence(*fields: str) -> bytes:
    """One NMEA sentence: `$`, the comma-joined fields, `*`, the checksum, CR LF."""
    body = ",".join(fields).encode("ascii")
    return b"$%s*%02X\r\n" % (body, reduce(xor, body, 0))


def _time(t: datetime) -> str:
    return t.strftime("%H%M%S.") + f"{t.microsecond // 10_000:02d}"


def _lat(lat: float) -> tuple[str, str]:
    d = abs(lat)
    deg = int(d)
    return f"{deg:02d}{(d - deg) * 60:08.5f}", "N" if lat >= 0 else "S"


def _lon(lon: float) -> tuple[str, str]:
    d = abs(lon)
    deg = int(d)
    return f"{deg:03d}{(d - deg) * 60:08.5f}", "E" if lon >= 0 else "W"


@dataclass(frozen=True)
class Vessel:
    """Where the simulated vessel is at `time`."""

    time: datetime
    lat: float
    lon: float
    speed_kn: float
    course_deg: float
    alt_m: float = 12.0
    geoid_sep_m: float = 9.6


@dataclass(frozen=True)
class Satellite:
    """A satellite in view: `system` is "GP" or "BDS"."""

    system: str
    prn: int
    el: float
    az: float
    snr: int | None

    @property
    def used(self) -> bool:
        """Satellites above 10 degrees with a signal go into the fix."""
        return self.el >= 10 and self.snr is not None


@dataclass(frozen=True)
class Dops:
    """Dilution of precision: position, horizontal, vertical."""

    pdop: float
    hdop: float
    vdop: float


def gga(v: Vessel, used: int, dops: Dops, *, fix: bool) -> bytes:
    """GGA: time, position, quality, satellites used, HDOP, altitude, geoid separation."""
    if not fix:
        return sentence(
            "GNGGA", _time(v.time), "", "", "", "", "0", "00", "", "", "", "", "", "", ""
        )
    return sentence(
        "GNGGA",
        _time(v.time),
        *_lat(v.lat),
        *_lon(v.lon),
        "1",
        f"{min(used, 99):02d}",
        f"{dops.hdop:.2f}",
        f"{v.alt_m:.1f}",
        "M",
        f"{v.geoid_sep_m:.1f}",
        "M",
        "",
        "",
    )


def rmc(v: Vessel, *, fix: bool) -> bytes:
    """RMC (NMEA 4.10: mode and navigational status fields)."""
    date = v.time.strftime("%d%m%y")
    if not fix:
        return sentence("GNRMC", _time(v.time), "V", "", "", "", "", "", "", date, "", "", "N", "V")
    return sentence(
        "GNRMC",
        _time(v.time),
        "A",
        *_lat(v.lat),
        *_lon(v.lon),
        f"{v.speed_kn:.3f}",
        f"{v.course_deg:.2f}",
        date,
        "",
        "",
        "A",
        "V",
    )


def vtg(v: Vessel, *, fix: bool) -> bytes:
    """VTG: course and speed over ground."""
    if not fix:
        return sentence("GNVTG", "", "T", "", "M", "", "N", "", "K", "N")
    kmh = v.speed_kn * 1.852
    return sentence(
        "GNVTG",
        f"{v.course_deg:.2f}",
        "T",
        "",
        "M",
        f"{v.speed_kn:.3f}",
        "N",
        f"{kmh:.3f}",
        "K",
        "A",
    )


def zda(v: Vessel) -> bytes:
    """ZDA: date and time (the receiver's clock runs on without a fix)."""
    t = v.time
    return sentence(
        "GNZDA", _time(t), f"{t.day:02d}", f"{t.month:02d}", f"{t.year:04d}", "00", "00"
    )


def gst(v: Vessel, *, fix: bool) -> bytes:
    """GST: pseudorange error statistics (1-sigma errors in metres)."""
    if not fix:
        return sentence("GNGST", _time(v.time), "", "", "", "", "", "", "")
    return sentence("GNGST", _time(v.time), "4.1", "2.9", "1.8", "37.5", "1.9", "2.6", "4.3")


def gsa(system: str, sats: Sequence[Satellite], dops: Dops, *, fix: bool) -> bytes:
    """GSA for one system, NMEA 4.10: up to 12 PRNs used, DOPs, system id."""
    prns = [f"{s.prn:02d}" for s in sats if s.used][:12] if fix else []
    prns += [""] * (12 - len(prns))
    if not fix:
        return sentence("GNGSA", "A", "1", *prns, "", "", "", str(SYSTEM_ID[system]))
    return sentence(
        "GNGSA",
        "A",
        "3",
        *prns,
        f"{dops.pdop:.2f}",
        f"{dops.hdop:.2f}",
        f"{dops.vdop:.2f}",
        str(SYSTEM_ID[system]),
    )


def gsv(talker: str, system: str, sats: Sequence[Satellite]) -> list[bytes]:
    """GSV sentences for one system: four satellites each, signal id last (NMEA 4.10)."""
    groups = [sats[i : i + 4] for i in range(0, len(sats), 4)] or [[]]
    out = []
    for n, group in enumerate(groups, 1):
        fields = [f"{talker}GSV", str(len(groups)), str(n), f"{len(sats):02d}"]
        for s in group:
            snr = "" if s.snr is None else f"{s.snr:02d}"
            fields += [f"{s.prn:02d}", f"{round(s.el):02d}", f"{round(s.az) % 360:03d}", snr]
        fields.append(str(SIGNAL_ID[system]))
        out.append(sentence(*fields))
    return out


def dops_for(used: int) -> Dops:
    """Plausible DOPs for a count of satellites used."""
    hdop = round(max(0.5, 6.0 / math.sqrt(max(used, 1))), 2)
    vdop = round(hdop * 1.5, 2)
    return Dops(round(math.hypot(hdop, vdop), 2), hdop, vdop)


def epoch(
    v: Vessel,
    sats: Sequence[Satellite],
    *,
    fix: bool = True,
    with_gst: bool = False,
    bds_talker: str = "GB",
) -> list[bytes]:
    """The sentences of one epoch, in a receiver's usual order."""
    gps = [s for s in sats if s.system == "GP"]
    bds = [s for s in sats if s.system == "BDS"]
    used = sum(s.used for s in sats) if fix else 0
    dops = dops_for(used)
    out = [rmc(v, fix=fix), vtg(v, fix=fix), gga(v, used, dops, fix=fix)]
    out += [gsa("GP", gps, dops, fix=fix), gsa("BDS", bds, dops, fix=fix)]
    out += gsv("GP", "GP", gps) + gsv(bds_talker, "BDS", bds)
    if with_gst:
        out.append(gst(v, fix=fix))
    out.append(zda(v))
    return out


# --- the vessel and the sky -----------------------------------------------------------


@dataclass
class Track:
    """A vessel under way: constant speed, course weaving slowly around `course_deg`."""

    lat: float = 24.45  # off Xiamen
    lon: float = 118.07
    speed_kn: float = 8.0
    course_deg: float = 135.0
    weave_deg: float = 25.0
    weave_period_s: float = 900.0

    def course_at(self, elapsed_s: float) -> float:
        """The course steered `elapsed_s` after the start."""
        weave = self.weave_deg * math.sin(2 * math.pi * elapsed_s / self.weave_period_s)
        return (self.course_deg + weave) % 360

    def start(self, t: datetime) -> Vessel:
        """The vessel at the start time."""
        return Vessel(t, self.lat, self.lon, self.speed_kn, self.course_at(0.0))

    def step(self, v: Vessel, dt: float, elapsed_s: float) -> Vessel:
        """The vessel `dt` seconds later (flat-earth steps: fine at these distances)."""
        dist = v.speed_kn * KNOT_MPS * dt
        rad = math.radians(v.course_deg)
        lat = v.lat + dist * math.cos(rad) / _M_PER_DEG_LAT
        lon = v.lon + dist * math.sin(rad) / (_M_PER_DEG_LAT * math.cos(math.radians(v.lat)))
        return replace(
            v,
            time=v.time + timedelta(seconds=dt),
            lat=lat,
            lon=lon,
            course_deg=self.course_at(elapsed_s + dt),
        )


class Sky:
    """Ten GPS and ten BeiDou satellites drifting slowly across the sky."""

    GPS_PRNS = (2, 5, 7, 13, 15, 18, 20, 24, 29, 30)
    BDS_PRNS = (6, 9, 14, 16, 21, 23, 26, 33, 39, 42)

    def __init__(self, seed: int = 1) -> None:
        rng = random.Random(seed)  # noqa: S311 - a reproducible sky, not security
        self._rng = rng
        self._orbits = [
            (system, prn, rng.uniform(5, 85), rng.uniform(0, 360), rng.uniform(0, 2 * math.pi))
            for system, prns in (("GP", self.GPS_PRNS), ("BDS", self.BDS_PRNS))
            for prn in prns
        ]

    def at(self, elapsed_s: float) -> list[Satellite]:
        """The satellites in view `elapsed_s` after the start."""
        out = []
        for system, prn, el0, az0, phase in self._orbits:
            el = max(1.0, min(89.0, el0 + 8 * math.sin(elapsed_s / 3000 + phase)))
            az = (az0 + elapsed_s * 0.004) % 360
            snr: int | None = round(18 + el * 0.3 + self._rng.uniform(-2, 2))
            if el < 8 and self._rng.random() < 0.5:
                snr = None  # low satellites drop in and out of tracking
            out.append(Satellite(system, prn, el, az, snr))
        return out


# --- captures -------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """Bytes to send at capture time `t` (seconds: unix time, or time of day from sentences)."""

    t: float | None
    data: bytes


_TIME_FIELD = {b"GGA": 1, b"RMC": 1, b"GNS": 1, b"ZDA": 1, b"GST": 1, b"GBS": 1, b"GLL": 5}


def sentence_time(line: bytes) -> float | None:
    """Seconds of the day a sentence is stamped with, if it carries a time."""
    start = line.find(b"$")
    if start < 0 or len(line) < start + 6:
        return None
    index = _TIME_FIELD.get(line[start + 3 : start + 6])
    if index is None:
        return None
    fields = line[start:].split(b"*", 1)[0].split(b",")
    if len(fields) <= index:
        return None
    hhmmss = fields[index]
    try:
        if len(hhmmss) < 6:
            return None
        return int(hhmmss[0:2]) * 3600 + int(hhmmss[2:4]) * 60 + float(hhmmss[4:])
    except ValueError:
        return None


def capture_steps(chunks: Iterable[Chunk], port: str = "gnss") -> list[Step]:
    """A capture as timed steps: own captures by their timestamps; raw ones grouped per epoch
    (a new step where the sentence time changes)."""
    steps: list[Step] = []
    current: list[bytes] = []
    current_t: float | None = None
    for chunk in chunks:
        if chunk.port != port or chunk.direction != "<":
            continue
        if chunk.ts is not None:
            steps.append(Step(chunk.ts, chunk.data))
            continue
        t = sentence_time(chunk.data)
        if t is not None and current and current_t is not None and t != current_t:
            steps.append(Step(current_t, b"".join(current)))
            current = []
        if t is not None:
            current_t = t
        current.append(chunk.data)
    if current:
        steps.append(Step(current_t, b"".join(current)))
    return steps


def load_capture(path: Path, port: str = "gnss") -> list[Step]:
    """The steps of a capture file (raw, or the project's capture format)."""
    return capture_steps(CaptureReader(path), port)


# --- the simulator --------------------------------------------------------------------


class GnssSimulator:
    """Writes NMEA to a PtyDevice at real time; faults via `set_fault()`."""

    def __init__(
        self,
        device: PtyDevice,
        *,
        rate_hz: float = 1.0,
        start: datetime | None = None,
        track: Track | None = None,
        capture: Sequence[Step] | None = None,
        speed: float = 1.0,
        with_gst: bool = False,
        bds_talker: str = "GB",
        hangup_s: float = 3.0,
        seed: int = 1,
        on_recreate: Callable[[str], None] | None = None,
    ) -> None:
        if not 1 <= rate_hz <= 10:
            raise ValueError("rate_hz must be between 1 and 10")
        if capture is not None and not capture:
            raise ValueError("the capture holds no data for this port")
        self.device = device
        self.period = 1.0 / rate_hz
        self.track = track or Track()
        self.capture = list(capture) if capture is not None else None
        self.speed = speed
        self.with_gst = with_gst
        self.bds_talker = bds_talker
        self.hangup_s = hangup_s
        self.on_recreate = on_recreate
        self.fault: Fault | None = None
        self.vessel = self.track.start(start or datetime.now(UTC))
        self.sky = Sky(seed)
        self._rng = random.Random(seed)  # noqa: S311 - fault noise, not security
        self._hangup_until = 0.0
        self.epochs = 0
        self.bytes_written = 0

    def set_fault(self, fault: Fault | None) -> None:
        """Start a fault (None ends it). "hangup" closes the pty now and re-creates it (same
        symlink) after `hangup_s`, then the fault ends by itself."""
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        if fault == "nofix" and self.capture is not None:
            raise ValueError("'nofix' needs the generated track, not a capture")
        self.fault = fault
        if fault == "hangup" and self.device.is_up:
            self.device.hangup()
            self._hangup_until = time.monotonic() + self.hangup_s

    def next_epoch(self) -> list[bytes]:
        """The sentences of the next generated epoch (and advance the vessel)."""
        elapsed = self.epochs * self.period
        sats = self.sky.at(elapsed)
        out = epoch(
            self.vessel,
            sats,
            fix=self.fault != "nofix",
            with_gst=self.with_gst,
            bds_talker=self.bds_talker,
        )
        self.vessel = self.track.step(self.vessel, self.period, elapsed)
        self.epochs += 1
        return out

    def garbage(self) -> bytes:
        """What a receiver at the wrong rate or in a binary mode looks like: no valid sentence."""
        noise = self._rng.randbytes(self._rng.randint(50, 300)).replace(b"$", b"\xa4")
        good = sentence("GNGGA", _time(self.vessel.time), "", "", "", "", "0", "00", "", "", "")
        broken = good[:10] + bytes([good[10] ^ 0x01]) + good[11:]  # checksum no longer matches
        return noise + broken

    def _emit(self, data: bytes) -> None:
        if self.fault in ("silent", "hangup") or not self.device.is_up:
            return
        if self.fault == "garbage":
            data = self.garbage()
        self.bytes_written += self.device.write(data)

    def _revive(self) -> None:
        hung_up = self.fault == "hangup" and not self.device.is_up
        if hung_up and time.monotonic() >= self._hangup_until:
            self.device.recreate()
            self.fault = None
            if self.on_recreate is not None:
                self.on_recreate(self.device.slave_path)

    async def run(self, duration_s: float | None = None) -> None:
        """Send until cancelled, or for `duration_s` seconds."""
        loop_start = time.monotonic()
        end = None if duration_s is None else loop_start + duration_s
        next_at = loop_start
        index = 0
        while end is None or time.monotonic() < end:
            self._revive()
            if self.capture is None:
                self._emit(b"".join(self.next_epoch()))
                delay = self.period
            else:
                step = self.capture[index % len(self.capture)]
                following = self.capture[(index + 1) % len(self.capture)]
                self._emit(step.data)
                self.epochs += 1
                index += 1
                delay = self._capture_delay(step, following, wrapped=index % len(self.capture) == 0)
            next_at += delay
            wait = next_at - time.monotonic()
            if end is not None:
                wait = min(wait, end - time.monotonic())
            if wait < -1.0:
                next_at = time.monotonic()  # fell far behind (suspended?): do not burst
            await asyncio.sleep(max(0.0, wait))

    def _capture_delay(self, step: Step, following: Step, *, wrapped: bool) -> float:
        """Seconds between two capture steps at the chosen speed."""
        if wrapped or step.t is None or following.t is None:
            return self.period
        gap = following.t - step.t
        if gap < 0:
            gap += 86400  # midnight in time-of-day stamps
        if gap > 30:
            gap = self.period  # a pause in the capture: do not make the user wait
        return gap / self.speed
