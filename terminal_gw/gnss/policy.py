"""Reporting policy for `run`: which fixes and sky views are worth publishing.

A vessel at anchor reports at the heartbeat interval; a moving or turning one as often as
`min_interval_s` allows. `replay` does not use it: it prints every epoch.
"""

from __future__ import annotations

import math

from terminal_gw.config import ReportingConfig
from terminal_gw.models import Fix, Payload, Sky

EARTH_RADIUS_M = 6_371_008.8  # mean radius (IUGG)


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres between two points given in degrees."""
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def heading_change_deg(a: float, b: float) -> float:
    """The smaller angle between two headings, 0-180 degrees."""
    d = abs(a - b) % 360.0
    return 360.0 - d if d > 180.0 else d


class ReportingPolicy:
    """Decides per payload whether `run` publishes it; remembers what was last published.

    Fix: published when `min_interval_s` has passed since the last published fix AND (it moved
    at least `distance_m`, OR its track turned at least `heading_deg` while the speed is at
    least `min_speed_for_heading_mps`, OR the fix mode changed); or when `max_interval_s` has
    passed (heartbeat). The first fix is always published. Sky: at most every
    `sky_interval_s`. Any other payload: always. `now` is seconds on one clock (monotonic in
    the daemon); if it runs backwards the next payload is published and timing restarts.
    """

    def __init__(self, config: ReportingConfig) -> None:
        self.config = config
        self._last_fix: Fix | None = None
        self._last_fix_at = 0.0
        self._last_sky_at: float | None = None

    def should_report(self, payload: Payload, now: float) -> bool:
        """True when `payload` should be published now; the decision is remembered."""
        if isinstance(payload, Fix):
            if self._fix_due(payload, now):
                self._last_fix = payload
                self._last_fix_at = now
                return True
            return False
        if isinstance(payload, Sky):
            last = self._last_sky_at
            if last is None or now < last or now - last >= self.config.sky_interval_s:
                self._last_sky_at = now
                return True
            return False
        return True

    def sky_due(self, now: float) -> bool:
        """Would a sky view be published now? Asked before one is built (nothing is recorded)."""
        last = self._last_sky_at
        return last is None or now < last or now - last >= self.config.sky_interval_s

    def _fix_due(self, fix: Fix, now: float) -> bool:
        last = self._last_fix
        if last is None:
            return True
        elapsed = now - self._last_fix_at
        cfg = self.config
        if elapsed < 0 or elapsed >= cfg.max_interval_s:
            return True
        if elapsed < cfg.min_interval_s:
            return False
        if fix.mode != last.mode:
            return True
        if (
            fix.lat is not None
            and fix.lon is not None
            and last.lat is not None
            and last.lon is not None
            and haversine_m(last.lat, last.lon, fix.lat, fix.lon) >= cfg.distance_m
        ):
            return True
        if (
            fix.speed is not None
            and fix.track is not None
            and fix.speed >= cfg.min_speed_for_heading_mps
        ):
            # A vessel that starts moving has a heading worth reporting even when the last
            # published fix (at anchor, or without course) had none.
            if last.track is None:
                return True
            return heading_change_deg(last.track, fix.track) >= cfg.heading_deg
        return False
