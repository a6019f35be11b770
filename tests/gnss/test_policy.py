"""Reporting policy: stories of a vessel at anchor, cruising, turning, losing its fix."""

from __future__ import annotations

import math
import random

import pytest

from terminal_gw.config import ReportingConfig
from terminal_gw.gnss.policy import ReportingPolicy, haversine_m, heading_change_deg
from terminal_gw.models import Fix, Sky, make_event

M_PER_DEG_LAT = 111_195.0  # on the mean-radius sphere


def fix_at(
    north_m: float,
    east_m: float,
    *,
    speed: float | None = None,
    track: float | None = None,
    mode: int = 3,
    lat0: float = 30.0,
    lon0: float = 120.0,
) -> Fix:
    """A fix at an offset in metres from a reference point."""
    lat = lat0 + north_m / M_PER_DEG_LAT
    lon = lon0 + east_m / (M_PER_DEG_LAT * math.cos(math.radians(lat0)))
    return Fix(lat=lat, lon=lon, speed=speed, track=track, mode=mode)  # type: ignore[arg-type]


def reported_times(policy: ReportingPolicy, fixes: list[tuple[float, Fix]]) -> list[float]:
    return [t for t, f in fixes if policy.should_report(f, t)]


def test_vessel_at_anchor_reports_only_the_heartbeat() -> None:
    rng = random.Random(7)
    policy = ReportingPolicy(ReportingConfig())  # 1 s .. 60 s, 25 m, 15 deg, 0.5 m/s
    fixes = [
        (
            float(t),
            fix_at(
                rng.uniform(-3, 3),
                rng.uniform(-3, 3),
                speed=rng.uniform(0.0, 0.3),  # swinging on the chain: noisy speed, any track
                track=rng.uniform(0, 360),
            ),
        )
        for t in range(3601)
    ]
    times = reported_times(policy, fixes)
    assert times == [float(t) for t in range(0, 3601, 60)]


def test_cruising_straight_reports_every_distance_step() -> None:
    policy = ReportingPolicy(ReportingConfig(distance_m=25.0))
    # 2 m/s due east: 25 m takes 12.5 s, so the fix at 13 s is the first far enough.
    fixes = [(float(t), fix_at(0.0, 2.0 * t, speed=2.0, track=90.0)) for t in range(601)]
    times = reported_times(policy, fixes)
    assert times == [float(t) for t in range(0, 601, 13)]


def test_turning_vessel_reports_often() -> None:
    policy = ReportingPolicy(ReportingConfig(distance_m=25.0, heading_deg=15.0))
    # 2 m/s, turning 6 deg/s (circling at about 19 m radius): 15 deg takes 2.5 s.
    fixes = []
    north = east = 0.0
    for t in range(601):
        track = (6.0 * t) % 360.0
        fixes.append((float(t), fix_at(north, east, speed=2.0, track=track)))
        north += 2.0 * math.cos(math.radians(track))
        east += 2.0 * math.sin(math.radians(track))
    times = reported_times(policy, fixes)
    assert times == [float(t) for t in range(0, 601, 3)]
    # The same vessel going straight reports about four times less often.
    assert len(times) > 4 * 47


def test_turning_below_the_heading_speed_is_only_a_heartbeat() -> None:
    policy = ReportingPolicy(ReportingConfig(min_speed_for_heading_mps=0.5))
    fixes = [(float(t), fix_at(0.0, 0.0, speed=0.3, track=(20.0 * t) % 360)) for t in range(181)]
    assert reported_times(policy, fixes) == [0.0, 60.0, 120.0, 180.0]


def test_fast_boat_is_held_to_the_minimum_interval() -> None:
    policy = ReportingPolicy(ReportingConfig(min_interval_s=5.0, distance_m=25.0))
    fixes = [(float(t), fix_at(0.0, 20.0 * t, speed=20.0, track=90.0)) for t in range(31)]
    assert reported_times(policy, fixes) == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0]


def test_losing_and_regaining_the_fix_is_reported_at_once() -> None:
    policy = ReportingPolicy(ReportingConfig())
    fixes: list[tuple[float, Fix]] = [(float(t), fix_at(0.0, 0.0, speed=0.0)) for t in range(10)]
    fixes += [(float(t), Fix(mode=1)) for t in range(10, 20)]
    fixes += [(float(t), fix_at(0.0, 1.0, speed=0.0, mode=2)) for t in range(20, 25)]
    fixes += [(float(t), fix_at(0.0, 1.0, speed=0.0, mode=3)) for t in range(25, 30)]
    assert reported_times(policy, fixes) == [0.0, 10.0, 20.0, 25.0]


def test_starting_to_move_from_anchor_is_reported() -> None:
    policy = ReportingPolicy(ReportingConfig())
    assert policy.should_report(fix_at(0, 0, speed=0.0), 0.0)
    assert not policy.should_report(fix_at(0, 0, speed=0.1), 1.0)
    # Now under way with a course; the anchored fix had none.
    assert policy.should_report(fix_at(0, 1, speed=1.5, track=45.0), 2.0)
    assert not policy.should_report(fix_at(0, 2, speed=1.5, track=50.0), 3.0)


def test_sky_at_most_every_sky_interval() -> None:
    policy = ReportingPolicy(ReportingConfig(sky_interval_s=300.0))
    times = [float(t) for t in range(0, 1000, 1) if policy.should_report(Sky(), float(t))]
    assert times == [0.0, 300.0, 600.0, 900.0]
    every = ReportingPolicy(ReportingConfig(sky_interval_s=0.0))
    assert all(every.should_report(Sky(), float(t)) for t in range(10))


def test_sky_and_fix_are_timed_separately() -> None:
    policy = ReportingPolicy(ReportingConfig())
    assert policy.should_report(Sky(), 0.0)
    assert policy.should_report(fix_at(0, 0), 0.5)
    assert not policy.should_report(Sky(), 1.0)


def test_events_are_always_reported() -> None:
    policy = ReportingPolicy(ReportingConfig())
    event = make_event("antenna", "antenna open", now=1_700_000_000.0, severity="warning")
    assert all(policy.should_report(event, 0.0) for _ in range(5))


def test_clock_running_backwards_restarts_timing() -> None:
    policy = ReportingPolicy(ReportingConfig())
    assert policy.should_report(fix_at(0, 0), 1000.0)
    assert not policy.should_report(fix_at(0, 0), 1010.0)
    assert policy.should_report(fix_at(0, 0), 5.0)
    assert not policy.should_report(fix_at(0, 0), 6.0)


def test_distance_and_heading_helpers() -> None:
    assert haversine_m(0.0, 0.0, 1.0, 0.0) == pytest.approx(111_195, rel=1e-4)
    assert haversine_m(30.0, 120.0, 30.0, 120.0) == 0.0
    assert heading_change_deg(350.0, 10.0) == pytest.approx(20.0)
    assert heading_change_deg(10.0, 350.0) == pytest.approx(20.0)
    assert heading_change_deg(0.0, 180.0) == pytest.approx(180.0)


def test_sky_views_are_built_only_when_the_policy_would_publish_them() -> None:
    from terminal_gw.gnss.pipeline import GnssPipeline
    from tests.conftest import GNSS_CORPUS

    data = (GNSS_CORPUS / "ublox-neo-m9n-nmea.log").read_bytes()
    lines = b"".join(line + b"\n" for line in data.splitlines() if not line.startswith(b"#"))
    every = GnssPipeline()
    all_skies = [p for p in every.feed(lines, 0.0) + every.flush(0.0) if isinstance(p, Sky)]
    assert len(all_skies) > 10

    policy = ReportingPolicy(ReportingConfig(sky_interval_s=300.0))
    clock = [0.0]
    asked = GnssPipeline()
    asked.assembler.sky_wanted = lambda: policy.sky_due(clock[0])
    published: list[Sky] = []
    built = 0
    for n, line in enumerate(lines.splitlines(keepends=True)):
        clock[0] = n * 0.5  # half a second a sentence: 1,400 sentences span ~700 s
        for p in asked.feed(line, clock[0]):
            if isinstance(p, Sky):
                built += 1
                if policy.should_report(p, clock[0]):
                    published.append(p)
    # Only the views the policy publishes were built, and each has the satellites of its epoch.
    assert built == len(published) == 3
    by_time = {s.time: s for s in all_skies}
    for sky in published:
        assert sky.satellites == by_time[sky.time].satellites
