"""Track reports: the simplification's bound, reports that fit their message and decode back
within the error, the recogniser, bad reports refused."""

from __future__ import annotations

import contextlib
import math
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from terminal_gw.errors import ParseError
from terminal_gw.models import Fix, iso_utc
from terminal_gw.sim.gnss import Track
from terminal_gw.wire.track import (
    BDS_SHORT_MESSAGE_BYTES,
    SMS_BYTES,
    Point,
    ReportError,
    decode_report,
    encode_report,
    is_report,
    points_from_fixes,
    report_fixes,
    simplify,
    split_reports,
    track_errors,
)

T0 = datetime(2026, 5, 1, tzinfo=UTC)


def vessel(seconds: int) -> list[Point]:
    """The simulator's vessel at 1 Hz, positions at 1e-7 degree."""
    track = Track()
    v = track.start(T0)
    out = []
    for i in range(seconds):
        out.append(Point(v.time.timestamp(), round(v.lat, 7), round(v.lon, 7)))
        v = track.step(v, 1.0, float(i))
    return out


def test_simplify_keeps_every_fix_within_the_bound() -> None:
    pts = vessel(1800)
    keep = simplify(pts, 5.0)
    assert keep[0] == 0
    assert keep[-1] == len(pts) - 1
    assert len(keep) < len(pts) / 20
    errors = track_errors(pts, [pts[i] for i in keep])
    assert len(errors) == len(pts)
    assert max(errors) <= 5.0


def test_an_hour_in_one_short_message_within_10_m() -> None:
    pts = vessel(3600)
    report = encode_report(pts, max_error_m=10.0, max_bytes=BDS_SHORT_MESSAGE_BYTES)
    assert report is not None
    assert (report.first_fix, report.fixes) == (0, 3600)  # all of it fits
    assert len(report.data) <= BDS_SHORT_MESSAGE_BYTES
    assert is_report(report.data)
    decoded = decode_report(report.data)
    assert decoded == list(report.points)
    assert decoded[0].t == pts[0].t
    assert decoded[-1].t == pts[-1].t
    errors = track_errors(pts, decoded)
    assert len(errors) == len(pts)
    assert max(errors) <= 10.0


def test_a_longer_track_gives_its_newest_part_and_splits_into_reports() -> None:
    pts = vessel(2 * 3600)
    short = encode_report(pts, max_error_m=10.0, max_bytes=BDS_SHORT_MESSAGE_BYTES)
    assert short is not None
    assert short.first_fix > 0
    assert short.first_fix + short.fixes == len(pts)
    decoded = decode_report(short.data)
    assert decoded[-1].t == pts[-1].t
    assert max(track_errors(pts[short.first_fix :], decoded)) <= 10.0
    reports = split_reports(pts, max_error_m=10.0, max_bytes=BDS_SHORT_MESSAGE_BYTES)
    assert sum(r.fixes for r in reports) == len(pts)
    assert 2 <= len(reports) <= 3
    start = 0
    for r in reports:
        assert r.first_fix == start
        assert len(r.data) <= BDS_SHORT_MESSAGE_BYTES
        assert max(track_errors(pts[start : start + r.fixes], decode_report(r.data))) <= 10.0
        start += r.fixes


def test_the_antimeridian_and_a_stationary_vessel() -> None:
    t = T0.timestamp()
    pts = [Point(t + i, -16.5, (179.9995 + i * 4e-5 + 180) % 360 - 180) for i in range(60)]
    pts += [Point(t + 60 + i, -16.5, pts[-1].lon) for i in range(600)]
    report = encode_report(pts, max_error_m=10.0, max_bytes=BDS_SHORT_MESSAGE_BYTES)
    assert report is not None
    assert report.first_fix == 0
    assert len(report.data) < 40
    assert max(track_errors(pts, decode_report(report.data))) <= 10.0


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 120), st.floats(-0.002, 0.002), st.floats(-0.002, 0.002)),
        min_size=1,
        max_size=80,
    ),
    st.floats(-60, 60),
    st.floats(-180, 180),
)
def test_any_track_decodes_within_the_error(
    steps: list[tuple[int, float, float]], lat: float, lon: float
) -> None:
    t = T0.timestamp()
    pts = [Point(t, lat, lon)]
    for dt, dlat, dlon in steps:
        t += dt
        lat = max(-60.0, min(60.0, lat + dlat))
        lon = (lon + dlon + 180) % 360 - 180
        pts.append(Point(t, lat, lon))
    report = encode_report(pts, max_error_m=10.0, max_bytes=SMS_BYTES)
    assert report is not None
    assert len(report.data) <= SMS_BYTES
    errors = track_errors(pts[report.first_fix :], decode_report(report.data))
    assert max(errors) <= 10.0 + 1e-6
    assert not math.isnan(max(errors))


def test_other_messages_are_not_reports() -> None:
    for text in (b"", b"T", b"Tide at 14:00", "天通".encode(), b"T\x81short"):
        assert not is_report(text)
        with pytest.raises(ReportError):
            decode_report(text)


def test_bad_reports_raise_report_error_only() -> None:
    report = encode_report(vessel(600), max_error_m=10.0, max_bytes=SMS_BYTES)
    assert report is not None
    data = report.data
    for end in range(len(data)):
        with pytest.raises(ReportError) as info:
            decode_report(data[:end])
        assert isinstance(info.value, ParseError)
    for i in range(2, len(data)):
        broken = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
        with contextlib.suppress(ReportError):  # anything else fails the test
            decode_report(broken)


def test_from_fixes_to_a_report_and_back_to_fixes() -> None:
    pts = vessel(600)
    fixes: list[dict[str, object]] = [
        {
            "class": "TPV",
            "time": iso_utc(p.t),
            "mode": 3,
            "lat": p.lat,
            "lon": p.lon,
        }
        for p in pts
    ]
    fixes.insert(
        6, {"class": "TPV", "time": iso_utc(pts[5].t + 0.2), "mode": 3, "lat": 0.0, "lon": 0.0}
    )
    fixes.insert(11, {"class": "TPV", "time": iso_utc(pts[9].t + 0.5), "mode": 1})
    assert points_from_fixes(fixes) == pts  # one a second, fixes only
    report = encode_report(pts, max_error_m=10.0, max_bytes=SMS_BYTES)
    assert report is not None
    decoded = decode_report(report.data)
    shore = report_fixes(decoded, "vessel-042", "bds")
    assert shore == report_fixes(decode_report(report.data), "vessel-042", "bds")
    assert len({f["id"] for f in shore}) == len(shore)
    first = shore[0]
    assert (first["class"], first["mode"], first["source"]) == ("TPV", 2, "bds")
    assert first["time"] == iso_utc(pts[0].t)
    assert Fix.model_validate({k: v for k, v in first.items() if k != "source"})


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=14, max_size=120))
def test_random_bytes_after_the_magic_raise_report_error_only(tail: bytes) -> None:
    with contextlib.suppress(ReportError):
        points = decode_report(b"T\x81" + tail)
        assert all(-90 <= p.lat <= 90 and -180 <= p.lon < 180 for p in points)
