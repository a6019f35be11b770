"""The compact batch format: every fix back at the format's units, ids exact, absent fields
absent, any input to the decoder refused with WireError only."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from terminal_gw.errors import ParseError
from terminal_gw.models import Fix, iso_utc, new_id
from terminal_gw.wire import (
    CONTENT_TYPE,
    WireError,
    decode_batch,
    encode_batch,
    fix_id,
    read_header,
    sky_summary,
)
from tests.conftest import REPO
from tests.wire.support import PLACES, at_units, corpus_records

DEVICE = "vessel-042"
T0_MS = 1_777_593_600_000  # 2026-05-01T00:00:00Z


def tpv(ms: int, **fields: Any) -> dict[str, Any]:
    """A TPV payload as the daemon publishes it, with a UUIDv7 id."""
    return {"id": new_id(ms), "v": 1, "class": "TPV", "time": iso_utc(ms / 1000), **fields}


def roundtrip(fixes: list[dict[str, Any]], *, compress: bool = True) -> list[dict[str, Any]]:
    return decode_batch(encode_batch(fixes, DEVICE, compress=compress))


# --- any track ------------------------------------------------------------------------------

_floats = {
    "lat": st.floats(-90, 90),
    "lon": st.floats(-180, 180),
    "altHAE": st.floats(-500, 20_000),
    "altMSL": st.floats(-500, 20_000),
    "geoidSep": st.floats(-120, 120),
    "speed": st.floats(0, 400),
    "track": st.floats(0, 360, exclude_max=True),
    "climb": st.floats(-100, 100),
    "magvar": st.floats(-180, 180),
    "eph": st.floats(0, 10_000),
    "epv": st.floats(0, 10_000),
    "hdop": st.floats(0, 99.99),
    "vdop": st.floats(0, 99.99),
    "pdop": st.floats(0, 99.99),
}
_ints = {
    "mode": st.sampled_from([0, 1, 2, 3]),
    "status": st.integers(0, 5),
    "nSat": st.integers(0, 200),
    "uSat": st.integers(0, 200),
}

_ORDER = [k for k in Fix.model_fields if k in _ints or k in _floats]


@st.composite
def fix_strategy(draw: st.DrawFn, ms: int) -> dict[str, Any]:
    rand = draw(st.integers(0, (1 << 74) - 1))
    value = ms << 80 | 0x7 << 76 | (rand >> 62) << 64 | 0b10 << 62 | (rand & ((1 << 62) - 1))
    h = f"{value:032x}"
    uuid7 = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    fix: dict[str, Any] = {"id": draw(st.sampled_from([uuid7, fix_id(DEVICE, ms)]))}
    fix |= {"v": 1, "class": "TPV", "time": iso_utc(ms / 1000)}
    strategies = _ints | _floats
    for key in _ORDER:  # the payloads' key order (the Fix model's)
        if draw(st.booleans()):
            fix[key] = draw(strategies[key])
    if draw(st.booleans()):
        names = ["gps", "sbas", "gal", "bds", "qzss", "glo", "navic"]
        fix["used"] = {n: draw(st.integers(0, 40)) for n in names if draw(st.booleans())}
    fix["clock"] = draw(st.sampled_from(["gnss", "system"]))
    return fix


@st.composite
def tracks(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Tracks with gaps, jumps, repeated and backward times, poles and the antimeridian."""
    n = draw(st.integers(1, 40))
    ms = draw(st.integers(0, 4_102_444_800_000))  # 1970 .. 2100
    out = []
    for _ in range(n):
        ms += draw(st.sampled_from([1000, 1000, 1000, 100, 0, -1000, 3_600_000, 1]))
        ms = max(ms, 0)
        fix = draw(fix_strategy(ms))
        if "lat" in fix and draw(st.booleans()):
            fix["lat"] = draw(st.sampled_from([90.0, -90.0, 89.9999999, -89.99999995]))
        if "lon" in fix and draw(st.booleans()):
            fix["lon"] = draw(st.sampled_from([180.0, -180.0, 179.99999999, -179.9999999]))
        out.append(fix)
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tracks(), st.booleans())
def test_any_track_comes_back_at_the_units(fixes: list[dict[str, Any]], compress: bool) -> None:
    assert roundtrip(fixes, compress=compress) == [at_units(f) for f in fixes]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tracks())
def test_absent_fields_stay_absent_and_keys_keep_their_order(fixes: list[dict[str, Any]]) -> None:
    for sent, got in zip(fixes, roundtrip(fixes), strict=True):
        assert list(got) == list(sent)
        assert all(type(got[k]) is float for k in got if k in PLACES)


def test_one_fix() -> None:
    fix = tpv(T0_MS, mode=3, lat=24.4498685, lon=118.0701426667, clock="gnss")
    [got] = roundtrip([fix])
    assert got == {**fix, "lon": 118.0701427}


def test_an_empty_batch() -> None:
    data = encode_batch([], DEVICE)
    assert decode_batch(data) == []
    assert read_header(data).count == 0


def test_100000_fixes() -> None:
    fixes = []
    lat, lon = 24.45, 179.9
    for i in range(100_000):
        lat += 3.6e-5 * math.sin(i / 500)
        lon = (lon + 3.6e-5 * math.cos(i / 700) + 180) % 360 - 180  # crosses the antimeridian
        fix = tpv(T0_MS + 1000 * i, mode=3, lat=lat, lon=lon, speed=4.12, track=(i / 10) % 360)
        if i % 97:
            fix["hdop"] = 0.9 + (i % 7) / 10
        fix["clock"] = "gnss"
        fixes.append(fix)
    data = encode_batch(fixes, DEVICE)
    assert decode_batch(data) == [at_units(f) for f in fixes]
    # The ids are random UUIDv7s: 10 of their bytes cannot be compressed; the rest is small.
    assert len(data) / len(fixes) < 16


# --- ids ------------------------------------------------------------------------------------


def test_ids_of_every_kind_come_back_exactly() -> None:
    fixes = [
        tpv(T0_MS, mode=1),
        {**tpv(T0_MS + 1000, mode=1), "id": fix_id(DEVICE, T0_MS + 1000)},
        {**tpv(T0_MS + 2000, mode=1), "id": "not-a-uuid/7"},
        {k: v for k, v in tpv(T0_MS + 3000, mode=1).items() if k != "id"},
        {**tpv(T0_MS + 4000, mode=1), "id": "01A237B7-9EAF-7349-BC2A-9F9848319311"},
        {"id": new_id(T0_MS), "v": 1, "class": "TPV", "mode": 1},  # no time: absolute id time
    ]
    assert roundtrip(fixes) == fixes


def test_derived_ids_cost_no_bytes() -> None:
    def track(derived: bool) -> list[dict[str, Any]]:
        out = []
        for i in range(600):
            ms = T0_MS + 1000 * i
            fix = tpv(ms, mode=3, lat=24.45 + i * 3e-5, lon=118.07 + i * 3e-5, clock="gnss")
            if derived:
                fix["id"] = fix_id(DEVICE, ms)
            out.append(fix)
        return out

    derived, random_ids = track(derived=True), track(derived=False)
    small = encode_batch(derived, DEVICE, compress=False)
    large = encode_batch(random_ids, DEVICE, compress=False)
    assert decode_batch(small) == [at_units(f) for f in derived]
    assert len(small) / 600 < 2.5  # time, mode, clock: runs; lat/lon: second differences
    assert len(large) - len(small) > 600 * 10  # 10 random bytes a UUIDv7
    # A derived id is a function of the device: the same fixes under another device id keep
    # their ids (carried in full), they are not re-derived.
    assert decode_batch(encode_batch(derived, "other-vessel")) == [at_units(f) for f in derived]


def test_fix_id_is_a_uuidv7_of_the_fix_time() -> None:
    ident = fix_id(DEVICE, T0_MS)
    assert ident == fix_id(DEVICE, T0_MS)
    assert ident != fix_id("other", T0_MS)
    assert int(ident.replace("-", "")[:12], 16) == T0_MS
    assert ident[14] == "7"
    assert ident[19] in "89ab"


# --- what the table cannot hold goes as JSON, exactly ------------------------------------


def test_unknown_and_odd_values_are_kept_exactly() -> None:
    odd = [
        tpv(T0_MS, mode=3, lat=24.0, sep="x", used={"gps": 3, "irnss?": 1}),
        {**tpv(T0_MS + 1000, mode=2), "time": "2026-05-01T00:00:01Z"},  # not the ms form
        {**tpv(T0_MS + 2000, mode=2), "class": "TPV2", "clock": "rtc", "status": True},
        tpv(T0_MS + 3000, mode=3, lat=None, hdop="1.2", nSat=2**70),
        {**tpv(T0_MS + 4000, mode=3), "id": 42},
    ]
    assert roundtrip(odd) == odd


def test_sky_summaries() -> None:
    sky = {
        "id": new_id(T0_MS),
        "v": 1,
        "class": "SKY",
        "time": iso_utc(T0_MS / 1000),
        "satellites": [
            {"PRN": 5, "gnssid": 0, "svid": 5, "used": True},
            {"PRN": 401, "gnssid": 3, "svid": 1, "used": True},
            {"PRN": 402, "gnssid": 3, "svid": 2, "used": False},
        ],
        "nSat": 3,
        "uSat": 2,
        "hdop": 0.9,
        "clock": "gnss",
    }
    summary = sky_summary(sky)
    assert "satellites" not in summary
    assert summary["seen"] == {"gps": 1, "bds": 2}
    assert summary["used"] == {"gps": 1, "bds": 1}
    fix = tpv(T0_MS, mode=3, lat=1.0, lon=2.0, clock="gnss")
    assert roundtrip([summary, fix]) == [summary, fix]


def test_every_corpus_fix_and_sky_summary() -> None:
    records = corpus_records("gnss/*.log", "gnss-gpsd/*.log")
    fixes = [r for r in records if r["class"] == "TPV"]
    skies = [sky_summary(r) for r in records if r["class"] == "SKY"]
    assert len(fixes) > 1000
    for batch in (fixes, skies):
        for start in range(0, len(batch), 500):
            part = batch[start : start + 500]
            assert roundtrip(part) == [at_units(f) for f in part]


# --- the header and bad input --------------------------------------------------------------


def test_header() -> None:
    fixes = [tpv(T0_MS + 1000 * i, mode=3, lat=1.0, lon=2.0, clock="gnss") for i in range(5)]
    data = encode_batch(fixes, DEVICE)
    head = read_header(data)
    assert (head.version, head.device, head.count, head.base_time_ms) == (1, DEVICE, 5, T0_MS)
    assert head.fields == ("v", "class", "time", "mode", "lat", "lon", "clock")
    assert data[:4] == b"TB\x01\x00"  # too small to be worth compressing
    assert CONTENT_TYPE == "application/vnd.terminal-gw.batch.v1"


@functools.cache
def _sample() -> bytes:
    fixes = [
        tpv(T0_MS + 1000 * i, mode=3, lat=1 + i / 1e5, lon=2.0, clock="gnss") for i in range(40)
    ]
    fixes[3]["extra_key"] = [1, 2]
    return encode_batch(fixes, DEVICE, compress=False)


@pytest.mark.parametrize("compress", [False, True])
def test_every_truncation_is_refused(compress: bool) -> None:
    fixes = [
        tpv(T0_MS + 1000 * i, mode=3, lat=1 + i / 1e5, lon=2.0, clock="gnss") for i in range(300)
    ]
    data = encode_batch(fixes, DEVICE, compress=compress)
    assert data[3] == int(compress)
    for end in range(len(data)):
        with pytest.raises(WireError):
            decode_batch(data[:end])


def test_trailing_bytes_and_bad_headers_are_refused() -> None:
    data = _sample()
    cases = {
        "trailing": data + b"\x00",
        "bad_magic": b"XB" + data[2:],
        "bad_version": data[:2] + b"\x02" + data[3:],
        "bad_flags": data[:3] + b"\x80" + data[4:],
        "no_dictionary": data[:3] + b"\x03\x07" + data[4:],
        "bad_type": "TB",
    }
    for reason, bad in cases.items():
        with pytest.raises(WireError) as info:
            decode_batch(bad)  # type: ignore[arg-type]
        assert info.value.reason == reason, reason
        assert isinstance(info.value, ParseError)


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_any_corruption_raises_wire_error_or_decodes(data: st.DataObject) -> None:
    raw = bytearray(_sample())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    try:
        out = decode_batch(bytes(raw))
    except WireError:
        return
    assert isinstance(out, list)
    json.dumps(out)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_after_the_magic(tail: bytes) -> None:
    for head in (b"TB\x01\x00", b"TB\x01\x01"):
        with contextlib.suppress(WireError):
            decode_batch(head + tail)


def test_extra_json_nested_too_deep_is_refused() -> None:
    fixes = [tpv(T0_MS, mode=1, note=[])]
    data = encode_batch(fixes, DEVICE, compress=False)
    deep = b'{"note":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    old = b'{"note":[]}'
    assert data.endswith(bytes([len(old)]) + old)
    n = len(deep)
    varint = bytes([n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14])
    with pytest.raises(WireError) as info:
        decode_batch(data[: -len(old) - 1] + varint + deep)
    assert info.value.reason == "bad_extra"


def test_a_huge_claimed_count_is_refused_before_allocating() -> None:
    with pytest.raises(WireError) as info:
        decode_batch(b"TB\x01\x00\x01x" + b"\xff\xff\xff\xff\x0f")
    assert info.value.reason == "too_many"


def test_a_decompression_bomb_is_refused() -> None:
    import zstandard

    body = b"\x00" * (70 << 20)
    bomb = b"TB\x01\x01" + zstandard.ZstdCompressor(level=1).compress(body)
    with pytest.raises(WireError) as info:
        decode_batch(bomb)
    assert info.value.reason == "too_large"


def test_the_encoder_refuses_what_it_cannot_carry() -> None:
    with pytest.raises(WireError):
        encode_batch([tpv(T0_MS, data=object())], DEVICE)
    with pytest.raises(WireError):
        encode_batch(["not a dict"], DEVICE)  # type: ignore[list-item]
    with pytest.raises(WireError):
        encode_batch([], "x" * 300)


# --- the decoder without the daemon -------------------------------------------------------

_ISOLATED = """
import sys
sys.path.insert(0, sys.argv[2])  # this checkout, before any installed copy
for name in ("pydantic", "pydantic_core", "structlog", "paho", "serial",
             "pynmeagps", "gsm0338", "aiomqtt", "psycopg"):
    sys.modules[name] = None  # any import of these fails
before = set(sys.modules)
from terminal_gw.wire import decode_batch
from terminal_gw.wire.track import decode_report, is_report
records = decode_batch(bytes.fromhex(sys.argv[1]))
allowed = set(sys.stdlib_module_names) | {"terminal_gw", "zstandard", "_cffi_backend"}
loaded = {name.split(".")[0] for name in set(sys.modules) - before}
foreign = sorted(loaded - allowed)
print(len(records), foreign)
"""


def test_the_decoders_need_only_the_standard_library_and_zstandard() -> None:
    fixes = [tpv(T0_MS + 1000 * i, mode=3, lat=1.0, lon=2.0, clock="gnss") for i in range(200)]
    data = encode_batch(fixes, DEVICE)
    assert data[3] == 1  # compressed: zstandard is loaded
    res = subprocess.run(
        [sys.executable, "-I", "-c", _ISOLATED, data.hex(), str(REPO)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["200", "[]"]
