"""Positions over a short message or an SMS: an error-bounded track simplification and a
compact report that fits one message of N bytes, with its decoder and a recogniser.

Standard library only (a shore station decodes with it). The layout is in
docs/wire-format.md, "Track reports".

- `simplify(points, max_error_m)`: Douglas-Peucker on the time-synchronised distance: the kept
  points, joined by straight lines *in time* (the position at any time is interpolated
  between the two kept points around it), stay within `max_error_m` of every fix.
- `encode_report(points, max_error_m=10, max_bytes=78)`: the newest part of the track that
  fits `max_bytes` within `max_error_m` (simplification plus the grid the points are written
  on), as bytes starting with `REPORT_MAGIC`.
- `decode_report(data)` -> the points; `is_report(data)` tells a report from any other
  message (a text message cannot start with the magic: it is not UTF-8).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from terminal_gw.errors import ParseError
from terminal_gw.wire.codec import _iso as _iso_ms
from terminal_gw.wire.codec import _ms, derived_id

__all__ = [
    "BDS_SHORT_MESSAGE_BYTES",
    "REPORT_MAGIC",
    "SMS_BYTES",
    "Point",
    "Report",
    "ReportError",
    "decode_report",
    "encode_report",
    "is_report",
    "points_from_fixes",
    "report_fixes",
    "simplify",
    "split_reports",
    "track_errors",
]

#: "T" then 0x81 (report format 1): never the start of a UTF-8 or GSM text.
REPORT_MAGIC = b"T\x81"
#: A BeiDou RDSS short message at a typical card level, and an 8-bit SMS.
BDS_SHORT_MESSAGE_BYTES = 78
SMS_BYTES = 140

_M_PER_DEG = 111_195.0  # metres per degree of latitude (mean Earth radius 6371.0 km)
_LL_SCALE = 100_000  # the first point's lat/lon in 1e-5 degree
_MAX_POINTS = 255
_TOL_STEPS = 5
#: How close the search for the longest track that fits comes: within 1/64 of its length.
_SEARCH_SLACK = 64


class ReportError(ParseError):
    """A track report could not be decoded."""


@dataclass(frozen=True)
class Point:
    """A position at a time: unix seconds, degrees."""

    t: float
    lat: float
    lon: float


@dataclass(frozen=True)
class Report:
    """An encoded report and what it covers."""

    data: bytes
    points: tuple[Point, ...]  # as the receiver decodes them
    first_fix: int  # index of the oldest input fix covered (older ones did not fit)
    grid_m: float
    fixes: int = 0  # input fixes covered, from first_fix on


# --- local metric coordinates ----------------------------------------------------------------


class _Plane:
    """Equirectangular metres around an origin; longitudes unwrapped across the antimeridian."""

    def __init__(self, lat0: float, lon0: float) -> None:
        self.lat0, self.lon0 = lat0, lon0
        self.kx = _M_PER_DEG * max(math.cos(math.radians(lat0)), 1e-6)

    def xy(self, lat: float, lon: float) -> tuple[float, float]:
        dlon = (lon - self.lon0 + 180.0) % 360.0 - 180.0
        return dlon * self.kx, (lat - self.lat0) * _M_PER_DEG

    def ll(self, x: float, y: float) -> tuple[float, float]:
        lat = max(-90.0, min(90.0, self.lat0 + y / _M_PER_DEG))
        lon = (self.lon0 + x / self.kx + 180.0) % 360.0 - 180.0
        return lat, lon


# --- simplification --------------------------------------------------------------------------


def _sed(
    xy: Sequence[tuple[float, float]], ts: Sequence[float], a: int, b: int
) -> tuple[float, int]:
    """The largest time-synchronised distance of points a+1..b-1 from the segment a-b."""
    (xa, ya), (xb, yb) = xy[a], xy[b]
    ta, span = ts[a], ts[b] - ts[a]
    worst, at = -1.0, a
    for i in range(a + 1, b):
        f = (ts[i] - ta) / span if span > 0 else 0.0
        d = math.hypot(xy[i][0] - (xa + f * (xb - xa)), xy[i][1] - (ya + f * (yb - ya)))
        if d > worst:
            worst, at = d, i
    return worst, at


def _plane_xy(points: Sequence[Point]) -> tuple[list[tuple[float, float]], list[float]]:
    plane = _Plane(points[0].lat, points[0].lon)
    return [plane.xy(p.lat, p.lon) for p in points], [p.t for p in points]


def simplify(points: Sequence[Point], max_error_m: float) -> list[int]:
    """Indices of the points to keep (first and last always) so that the track interpolated in
    time between them is within `max_error_m` of every point."""
    n = len(points)
    if n <= 2:
        return list(range(n))
    xy, ts = _plane_xy(points)
    keep = {0, n - 1}
    stack = [(0, n - 1)]
    while stack:
        a, b = stack.pop()
        if b - a < 2:
            continue
        worst, at = _sed(xy, ts, a, b)
        if worst > max_error_m:
            keep.add(at)
            stack += [(a, at), (at, b)]
    return sorted(keep)


def _split_levels(points: Sequence[Point]) -> list[float]:
    """For each point, the largest tolerance at which `simplify` still keeps it (endpoints:
    infinity), so that `simplify(points, tol)` is the points whose level exceeds tol: one pass
    for every tolerance."""
    n = len(points)
    levels = [math.inf] * n
    if n <= 2:
        return levels
    xy, ts = _plane_xy(points)
    for i in range(1, n - 1):
        levels[i] = 0.0
    stack = [(0, n - 1, math.inf)]
    while stack:
        a, b, cap = stack.pop()
        if b - a < 2:
            continue
        worst, at = _sed(xy, ts, a, b)
        if worst <= 0.0:
            continue  # every point between lies on the line: never needed
        level = min(worst, cap)
        levels[at] = level
        stack += [(a, at, level), (at, b, level)]
    return levels


def _max_error(
    plane: _Plane,
    xy: Sequence[tuple[float, float]],
    ts: Sequence[float],
    report: Sequence[Point],
    limit: float,
) -> float:
    """The largest distance of the fixes (metres in `plane`, times `ts`) from the report's
    positions at their times, the same figure as max(track_errors(...)), faster; the first one
    over `limit` as soon as it is seen."""
    rxy = [plane.xy(p.lat, p.lon) for p in report]
    rts = [p.t for p in report]
    last = len(report) - 1
    worst = 0.0
    j = 0
    hypot = math.hypot
    for (px, py), t in zip(xy, ts, strict=True):
        while j < last - 1 and rts[j + 1] < t:
            j += 1
        k = j + 1 if j < last else j
        span = rts[k] - rts[j]
        f = (t - rts[j]) / span if span > 0 else 0.0
        f = 0.0 if f < 0.0 else 1.0 if f > 1.0 else f
        (xa, ya), (xb, yb) = rxy[j], rxy[k]
        d = hypot(px - xa - f * (xb - xa), py - ya - f * (yb - ya))
        if d > worst:
            if d > limit:
                return d
            worst = d
    return worst


def track_errors(track: Sequence[Point], report: Sequence[Point]) -> list[float]:
    """For every fix of `track` within the report's time span, its distance in metres from the
    report's position at the same time (interpolated between report points)."""
    if not report or not track:
        return []
    plane = _Plane(report[0].lat, report[0].lon)
    rxy = [plane.xy(p.lat, p.lon) for p in report]
    out: list[float] = []
    j = 0
    for p in track:
        if p.t < report[0].t - 0.5 or p.t > report[-1].t + 0.5:
            continue
        while j < len(report) - 2 and report[j + 1].t < p.t:
            j += 1
        a, b = report[j], report[min(j + 1, len(report) - 1)]
        span = b.t - a.t
        f = min(1.0, max(0.0, (p.t - a.t) / span)) if span > 0 else 0.0
        x = rxy[j][0] + f * (rxy[min(j + 1, len(report) - 1)][0] - rxy[j][0])
        y = rxy[j][1] + f * (rxy[min(j + 1, len(report) - 1)][1] - rxy[j][1])
        px, py = plane.xy(p.lat, p.lon)
        out.append(math.hypot(px - x, py - y))
    return out


# --- bits ------------------------------------------------------------------------------------


class _Bits:
    def __init__(self) -> None:
        self.value = 0
        self.n = 0

    def put(self, v: int, width: int) -> None:
        self.value = self.value << width | (v & ((1 << width) - 1))
        self.n += width

    def golomb(self, z: int, k: int) -> None:
        """Exp-Golomb of order k of a non-negative integer."""
        q = (z >> k) + 1
        self.put(0, q.bit_length() - 1)
        self.put(q, q.bit_length())
        self.put(z, k)

    def bytes(self) -> bytes:
        pad = -self.n % 8
        return (self.value << pad).to_bytes((self.n + pad) // 8, "big")


class _BitReader:
    def __init__(self, data: bytes) -> None:
        self.value = int.from_bytes(data, "big")
        self.left = len(data) * 8

    def get(self, width: int) -> int:
        if width > self.left:
            raise ReportError("track report ends early", reason="truncated")
        self.left -= width
        return self.value >> self.left & ((1 << width) - 1)

    def golomb(self, k: int) -> int:
        zeros = 0
        while self.get(1) == 0:
            zeros += 1
            if zeros > 40:
                raise ReportError("bad code in track report", reason="bad_code")
        q = (1 << zeros | self.get(zeros)) - 1
        return q << k | self.get(k)


def _zz(n: int) -> int:
    return n << 1 if n >= 0 else (-n << 1) - 1


def _unzz(z: int) -> int:
    return z >> 1 if not z & 1 else -((z + 1) >> 1)


def _golomb_bits(zs: Sequence[int], k: int) -> int:
    return sum(2 * ((z >> k) + 1).bit_length() - 1 + k for z in zs)


def _best_k(zs: Sequence[int]) -> int:
    sizes = [_golomb_bits(zs, k) for k in range(16)]
    return sizes.index(min(sizes))


# --- the report ------------------------------------------------------------------------------
#
# The layout is in docs/wire-format.md ("Track reports"); k_dt = 15 means "even times": the
# intervals are one step and a last one, both in the header, no time bits per point.

_EVEN = 15


def _predict(gx: list[int], gy: list[int], dts: list[int], dt: int) -> tuple[int, int]:
    """Where the next grid point is expected: with three intervals alike, the previous point
    plus its velocity plus its change (a steady turn); else plus the velocity scaled to this
    interval. Integers only, so every decoder predicts the very same point."""
    if len(gx) < 2 or dts[-1] <= 0:
        return (gx[-1], gy[-1]) if gx else (0, 0)
    if len(gx) >= 3 and dt == dts[-1] == dts[-2]:
        return 3 * gx[-1] - 3 * gx[-2] + gx[-3], 3 * gy[-1] - 3 * gy[-2] + gy[-3]
    d = dts[-1]
    vx, vy = gx[-1] - gx[-2], gy[-1] - gy[-2]
    return gx[-1] + (2 * vx * dt + d) // (2 * d), gy[-1] + (2 * vy * dt + d) // (2 * d)


def _encode(points: Sequence[Point], grid_dm: int) -> bytes | None:
    first = points[0]
    t0 = round(first.t)
    lat0 = round(first.lat * _LL_SCALE)
    lon0 = round(first.lon * _LL_SCALE)
    if not 0 <= t0 < 1 << 32 or len(points) > _MAX_POINTS + 1:
        return None
    plane = _Plane(lat0 / _LL_SCALE, lon0 / _LL_SCALE)
    q = grid_dm / 10
    gx, gy, dts = [0], [0], [0]
    zdt: list[int] = []
    zx: list[int] = []
    zy: list[int] = []
    t_prev = t0
    for p in points[1:]:
        t = round(p.t)
        dt = t - t_prev
        if dt <= 0:
            return None
        x, y = plane.xy(p.lat, p.lon)
        px, py = _predict(gx, gy, dts, dt)
        rx, ry = round(x / q) - px, round(y / q) - py
        zdt.append(_zz(dt - dts[-1]))
        zx.append(_zz(rx))
        zy.append(_zz(ry))
        gx.append(px + rx)
        gy.append(py + ry)
        dts.append(dt)
        t_prev = t
    intervals = dts[1:]
    even = len(intervals) >= 2 and all(d == intervals[0] for d in intervals[:-1])
    ks = [_EVEN if even else min(_best_k(zdt), _EVEN - 1), _best_k(zx), _best_k(zy)]
    bits = _Bits()
    bits.put(t0, 32)
    bits.put(lat0, 25)
    bits.put(lon0, 26)
    bits.put(grid_dm, 8)
    bits.put(len(points) - 1, 8)
    for k in ks:
        bits.put(k, 4)
    if even:
        bits.golomb(intervals[0] - 1, 0)
        bits.golomb(intervals[-1] - 1, 0)
    for a, b, c in zip(zdt, zx, zy, strict=True):
        if not even:
            bits.golomb(a, ks[0])
        bits.golomb(b, ks[1])
        bits.golomb(c, ks[2])
    return REPORT_MAGIC + bits.bytes()


def is_report(data: bytes) -> bool:
    """Whether a received message (its bytes) is a track report."""
    return bytes(data[:2]) == REPORT_MAGIC and len(data) >= 2 + 14


def decode_report(data: bytes) -> list[Point]:
    """The points of a track report, oldest first."""
    if not is_report(data):
        raise ReportError("not a track report", reason="bad_magic")
    r = _BitReader(bytes(data[2:]))
    t0 = r.get(32)
    lat0 = r.get(25)
    lat0 -= (lat0 >> 24) << 25
    lon0 = r.get(26)
    lon0 -= (lon0 >> 25) << 26
    grid_dm = r.get(8)
    n = r.get(8) + 1
    ks = [r.get(4) for _ in range(3)]
    if grid_dm == 0 or abs(lat0) > 90 * _LL_SCALE or abs(lon0) > 180 * _LL_SCALE:
        raise ReportError("bad track report header", reason="bad_header")
    plane = _Plane(lat0 / _LL_SCALE, lon0 / _LL_SCALE)
    q = grid_dm / 10
    gx, gy, dts = [0], [0], [0]
    t = t0
    out = [Point(float(t0), lat0 / _LL_SCALE, lon0 / _LL_SCALE)]
    even = (r.golomb(0) + 1, r.golomb(0) + 1) if ks[0] == _EVEN else None
    for i in range(1, n):
        if even is not None:
            dt = even[1] if i == n - 1 else even[0]
        else:
            dt = dts[-1] + _unzz(r.golomb(ks[0]))
        if dt <= 0:
            raise ReportError("track report time goes back", reason="bad_time")
        px, py = _predict(gx, gy, dts, dt)
        gx.append(px + _unzz(r.golomb(ks[1])))
        gy.append(py + _unzz(r.golomb(ks[2])))
        dts.append(dt)
        t += dt
        lat, lon = plane.ll(gx[-1] * q, gy[-1] * q)
        out.append(Point(float(t), lat, lon))
    if r.left >= 8:
        raise ReportError("bytes after the last point", reason="trailing")
    return out


def _attempt(points: Sequence[Point], max_error_m: float, max_bytes: int) -> Report | None:
    """The smallest encoding of all of `points` within `max_error_m`, if one fits."""
    best: Report | None = None
    # Share the error between the simplification and the grid (a grid point is at most
    # grid/sqrt(2) off its fix; the first point up to 0.8 m at 1e-5 degree): that sum is a
    # bound, the error seldom reaches it, so the simplification's tolerance is then raised
    # as far as the error measured on every fix stays within `max_error_m`.
    budget = max_error_m - 0.8
    if budget <= 0.2:
        return None
    levels = _split_levels(points)
    plane = _Plane(points[0].lat, points[0].lon)
    xy = [plane.xy(p.lat, p.lon) for p in points]
    ts = [p.t for p in points]

    def error(report: Report) -> float:
        return _max_error(plane, xy, ts, report.points, max_error_m)

    for share in (0.2, 0.35, 0.5):
        grid_dm = max(1, min(255, int(budget * share * math.sqrt(2) * 10)))
        safe = budget - grid_dm / 10 / math.sqrt(2)
        for found in (
            _dp_within(
                points, levels, grid_dm=grid_dm, safe_tol=safe, max_error_m=max_error_m, error=error
            ),
            _uniform_within(points, grid_dm=grid_dm, max_error_m=max_error_m, error=error),
        ):
            if found is None or len(found.data) > max_bytes:
                continue
            if best is None or len(found.data) < len(best.data):
                best = found
    return best


def _every(points: Sequence[Point], step_s: int) -> list[Point]:
    """The first fix at or after each multiple of `step_s` from the first, and the last: points
    a constant time apart cost one bit each for their time."""
    out = [points[0]]
    due = round(points[0].t) + step_s
    for p in points[1:-1]:
        if round(p.t) >= due:
            out.append(p)
            due = round(p.t) + step_s
    if len(points) > 1:
        out.append(points[-1])
    return out


def _uniform_within(
    points: Sequence[Point],
    *,
    grid_dm: int,
    max_error_m: float,
    error: Callable[[Report], float],
) -> Report | None:
    """Points evenly spaced in time, as far apart as the error allows (searched)."""

    def build(step: int) -> Report | None:
        data = _encode(_every(points, step), grid_dm)
        if data is None:
            return None
        report = Report(data, tuple(decode_report(data)), 0, grid_dm / 10)
        return report if error(report) <= max_error_m else None

    span = round(points[-1].t - points[0].t)
    lo = max(1, -(-span // (_MAX_POINTS - 1)))  # no more points than a report holds
    hi = max(lo + 1, span + 1)
    good = build(lo)
    if good is None:
        return None
    while hi - lo > 1:  # the error grows with the step, not strictly: the last good is kept
        mid = (lo + hi) // 2
        candidate = build(mid)
        if candidate is None:
            hi = mid
        else:
            lo = mid
            if len(candidate.data) <= len(good.data):
                good = candidate
    return good


def _dp_within(
    points: Sequence[Point],
    levels: Sequence[float],
    *,
    grid_dm: int,
    safe_tol: float,
    max_error_m: float,
    error: Callable[[Report], float],
) -> Report | None:
    def build(tol: float) -> Report | None:
        data = _encode([p for p, level in zip(points, levels, strict=True) if level > tol], grid_dm)
        return None if data is None else Report(data, tuple(decode_report(data)), 0, grid_dm / 10)

    good = build(safe_tol)
    if good is None:
        return None
    lo, hi = safe_tol, max_error_m
    for _ in range(_TOL_STEPS):
        mid = (lo + hi) / 2
        candidate = build(mid)
        if candidate is not None and error(candidate) <= max_error_m:
            lo, good = mid, candidate if len(candidate.data) <= len(good.data) else good
        else:
            hi = mid
    return good


def encode_report(
    points: Sequence[Point], *, max_error_m: float = 10.0, max_bytes: int = BDS_SHORT_MESSAGE_BYTES
) -> Report | None:
    """The newest part of the track (points oldest first, 1 s apart or more) that fits one
    message of `max_bytes` within `max_error_m`; None when not even the last fix fits."""
    if not points:
        return None
    n = len(points)
    # From the newest fix back, doubling, then halving the step: the cost of an attempt grows
    # with its length, so the long ones that cannot fit are tried once at most.
    found = _attempt(points[n - 1 :], max_error_m, max_bytes)
    if found is None:
        return None
    good, bad = 1, n + 1  # the newest `good` fixes fit; the newest `bad` do not (or too many)
    size = 64
    while good < n:
        size = min(size, n)
        attempt = _attempt(points[n - size :], max_error_m, max_bytes)
        if attempt is None:
            bad = size
            break
        good, found = size, attempt
        size *= 2
    while bad - good > max(1, good // _SEARCH_SLACK) and good < n:
        mid = (good + bad) // 2
        attempt = _attempt(points[n - mid :], max_error_m, max_bytes)
        if attempt is None:
            bad = mid
        else:
            good, found = mid, attempt
    return Report(found.data, found.points, n - good, found.grid_m, good)


def split_reports(
    points: Sequence[Point], *, max_error_m: float = 10.0, max_bytes: int = BDS_SHORT_MESSAGE_BYTES
) -> list[Report]:
    """The whole track as consecutive reports, oldest first, each as long as fits one message
    (for a backlog of reports, and to measure what a channel carries)."""
    out: list[Report] = []
    start, guess = 0, 64
    while start < len(points):
        lo = start + 1
        first = _attempt(points[start:lo], max_error_m, max_bytes)
        if first is None:
            start += 1  # a lone fix that cannot be written (before 1970, say): skipped
            continue
        best = first
        hi = min(len(points), start + guess)
        while hi > lo:  # grow until it does not fit or the track ends
            attempt = _attempt(points[start:hi], max_error_m, max_bytes)
            if attempt is None:
                break
            lo, best = hi, attempt
            hi = min(len(points), start + 2 * (hi - start))
        else:
            hi = len(points) + 1
        # points[start:lo] fits, points[start:hi] does not
        while hi - lo > max(1, (lo - start) // _SEARCH_SLACK):
            mid = (lo + hi) // 2
            attempt = _attempt(points[start:mid], max_error_m, max_bytes)
            if attempt is None:
                hi = mid
            else:
                lo, best = mid, attempt
        out.append(replace(best, first_fix=start, fixes=lo - start))
        guess = max(2, lo - start)
        start = lo
    return out


def points_from_fixes(fixes: Iterable[Mapping[str, Any]]) -> list[Point]:
    """The positions of TPV payloads (2D or 3D fixes with a time), oldest first, one a second
    at most (the first fix of each second is kept)."""
    out: list[Point] = []
    for fix in fixes:
        ms = _ms(fix.get("time"))
        lat, lon, mode = fix.get("lat"), fix.get("lon"), fix.get("mode")
        if ms is None or not isinstance(mode, int) or mode < 2:
            continue
        if not isinstance(lat, int | float) or not isinstance(lon, int | float):
            continue
        t = ms / 1000
        if out and round(t) <= round(out[-1].t):
            continue
        out.append(Point(t, float(lat), float(lon)))
    return out


def report_fixes(points: Sequence[Point], device: str, source: str) -> list[dict[str, Any]]:
    """A decoded report's points as TPV payloads for `gnss/fix` (mode 2, `source` saying how
    they came), with ids derived from the device and time: the same report decoded twice
    gives the same ids, so consumers drop the copy."""
    out = []
    for p in points:
        ms = round(p.t * 1000)
        out.append(
            {
                "id": derived_id(device, "TPV", ms),
                "v": 1,
                "class": "TPV",
                "time": _iso_ms(ms),
                "mode": 2,
                "lat": round(p.lat, 7),
                "lon": round(p.lon, 7),
                "clock": "gnss",
                "source": source,
            }
        )
    return out
