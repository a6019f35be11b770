"""UBX and CASIC binary receivers: framing, decoding per message type, epochs, one source."""

from __future__ import annotations

import itertools
import struct
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyubx2 import GET, UBXMessage, UBXReader

from terminal_gw.config import load_config
from terminal_gw.errors import ConfigError
from terminal_gw.gnss.binary import BinaryAssembler, SourceSelector, utc_ms
from terminal_gw.gnss.casic import LAYOUTS, decode_casic
from terminal_gw.gnss.framer import BinaryFrame, Framer, Sentence, nmea_checksum
from terminal_gw.gnss.pipeline import GnssPipeline
from terminal_gw.gnss.ubx import decode_ubx
from terminal_gw.models import Fix, Payload, Sky
from terminal_gw.transport.capture import CaptureReader
from tests.conftest import CORPUS

GPSD_CORPUS = CORPUS / "gnss-gpsd"


def ubx(msg_class: int, msg_id: int, payload: bytes) -> bytes:
    """A UBX frame, Fletcher checksum computed the plain way."""
    body = bytes((msg_class, msg_id)) + len(payload).to_bytes(2, "little") + payload
    a = b = 0
    for byte in body:
        a = (a + byte) & 0xFF
        b = (b + a) & 0xFF
    return b"\xb5\x62" + body + bytes((a, b))


def casic(msg_class: int, msg_id: int, payload: bytes) -> bytes:
    """A CASIC frame: checksum = (id << 24) + (class << 16) + length + payload words."""
    total = (msg_id << 24) + (msg_class << 16) + len(payload)
    for i in range(0, len(payload), 4):
        total += int.from_bytes(payload[i : i + 4], "little")
    head = len(payload).to_bytes(2, "little") + bytes((msg_class, msg_id))
    return b"\xba\xce" + head + payload + (total & 0xFFFFFFFF).to_bytes(4, "little")


def sentence(body: str) -> bytes:
    raw = body.encode()
    return b"$%s*%02X\r\n" % (raw, nmea_checksum(raw))


@cache
def corpus_bytes(name: str) -> bytes:
    """A gpsd corpus capture as the replay reads it (text comments left out)."""
    return b"".join(c.data for c in CaptureReader(GPSD_CORPUS / name))


@cache
def corpus_frames(name: str) -> tuple[BinaryFrame, ...]:
    f = Framer()
    out = f.feed(corpus_bytes(name)) + f.flush()
    return tuple(x for x in out if isinstance(x, BinaryFrame))


def first(name: str, msg_class: int, msg_id: int, index: int = 0) -> BinaryFrame:
    frames = [f for f in corpus_frames(name) if (f.msg_class, f.msg_id) == (msg_class, msg_id)]
    return frames[index]


def run(data: bytes, *, chunk: int | None = None, prefer: str = "auto") -> list[Payload]:
    p = GnssPipeline(prefer=prefer)  # type: ignore[arg-type]
    out: list[Payload] = []
    step = chunk or len(data) or 1
    for i in range(0, len(data), step):
        out += p.feed(data[i : i + step], now=100.0)
    return out + p.flush(now=100.0)


# --- framing ----------------------------------------------------------------------------


def test_framer_emits_checked_binary_frames_beside_sentences_in_order() -> None:
    gga = sentence("GPGGA,120000.00,2426.98900,N,11804.21200,E,1,08,1.0,10.0,M,-2.0,M,,")
    eoe = ubx(0x01, 0x61, (1000).to_bytes(4, "little"))
    dop = casic(0x01, 0x01, bytes(28))
    data = b"\x00junk" + eoe + gga + dop + b"\r\n" + gga
    f = Framer()
    out = f.feed(data) + f.flush()
    assert [type(x).__name__ for x in out] == ["BinaryFrame", "Sentence", "BinaryFrame", "Sentence"]
    a, _, c, _ = out
    assert isinstance(a, BinaryFrame)
    assert isinstance(c, BinaryFrame)
    assert (a.protocol, a.msg_class, a.msg_id, a.raw) == ("ubx", 0x01, 0x61, eoe)
    assert (c.protocol, c.payload, c.address) == ("casic", bytes(28), "CASIC-01-01")
    assert f.counters["ubx_good"] == 1
    assert f.counters["casic_good"] == 1
    assert f.counters["good"] == 2
    assert f.counters["garbage_bytes"] == 5


def test_bad_checksums_are_counted_and_the_stream_resynchronises() -> None:
    good = ubx(0x01, 0x61, (1000).to_bytes(4, "little"))
    bad_ubx = good[:-1] + bytes([good[-1] ^ 0xFF])
    good_c = casic(0x01, 0x01, bytes(28))
    bad_casic = good_c[:-1] + bytes([good_c[-1] ^ 0x01])
    f = Framer()
    out = f.feed(bad_ubx + good + bad_casic + good_c) + f.flush()
    assert [x.raw for x in out] == [good, good_c]
    assert f.counters["ubx_bad_checksum"] == 1
    assert f.counters["casic_bad_checksum"] == 1


def test_a_sentence_cut_short_by_a_binary_frame_is_dropped_and_the_frame_kept() -> None:
    gga = sentence("GPGGA,120000.00,2426.98900,N,11804.21200,E,1,08,1.0,10.0,M,-2.0,M,,")
    frame = ubx(0x01, 0x61, (7).to_bytes(4, "little"))
    f = Framer()
    out = f.feed(gga[:30] + frame + gga) + f.flush()
    assert [x.raw for x in out] == [frame, gga.rstrip(b"\r\n")]
    assert f.counters["truncated"] == 1
    # A frame longer than a sentence may be: the cut sentence is overlong, the frame kept.
    long_frame = ubx(0x01, 0x35, bytes(8 + 12 * 30))
    f = Framer()
    out = f.feed(gga[:30] + long_frame + gga) + f.flush()
    assert [x.raw for x in out] == [long_frame, gga.rstrip(b"\r\n")]
    assert f.counters["overlong"] == 1


def test_a_length_beyond_the_limit_is_a_false_sync_and_memory_stays_bounded() -> None:
    f = Framer(max_binary_len=100)
    fake = b"\xb5\x62\x01\x07\xff\x7f" + b"x" * 50
    out = f.feed(fake)
    assert out == []
    assert f.counters["binary_overlong"] == 1
    assert f.buffered <= 100 + 8


def test_a_frame_cut_by_the_end_of_the_stream_is_counted() -> None:
    frame = casic(0x01, 0x03, bytes(80))
    f = Framer()
    assert f.feed(frame[:-3]) == []
    assert f.flush() == []
    assert f.counters["binary_truncated"] == 1
    assert f.buffered == 0


# --- UBX: struct-table messages checked against pyubx2 on real frames --------------------


def test_nav_pvt_from_a_real_frame_agrees_with_pyubx2() -> None:
    frame = first("ublox-lea-m8f.log", 0x01, 0x07, 3)
    ref = UBXReader.parse(frame.raw)
    msg = decode_ubx(frame)
    assert msg is not None
    assert msg.tow == ref.iTOW
    v = msg.values
    assert v["lat"] == pytest.approx(ref.lat, abs=1e-9)
    assert v["lon"] == pytest.approx(ref.lon, abs=1e-9)
    assert v["altHAE"] == pytest.approx(ref.height / 1000)
    assert v["altMSL"] == pytest.approx(ref.hMSL / 1000)
    assert v["speed"] == pytest.approx(ref.gSpeed / 1000)
    assert v["track"] == pytest.approx(ref.headMot)
    assert v["uSat"] == ref.numSV
    assert (v["mode"], v["status"]) == (3, 7)  # fixType 5, time only: gpsd's 3D, status 7
    assert "pdop" not in v  # 99.99: none
    expected = utc_ms(ref.year, ref.month, ref.day, ref.hour, ref.min, ref.second, ref.nano)
    assert msg.time_ms == expected


def test_hnr_pvt_from_a_real_frame_agrees_with_pyubx2() -> None:
    frame = first("ublox-neo-m8l.log", 0x28, 0x00, 5)
    ref = UBXReader.parse(frame.raw)
    msg = decode_ubx(frame)
    assert msg is not None
    assert msg.name == "HNR-PVT"
    assert msg.values["lat"] == pytest.approx(ref.lat, abs=1e-9)
    assert msg.values["altMSL"] == pytest.approx(ref.hMSL / 1000)
    assert msg.values["track"] == pytest.approx(ref.headMot)
    assert (msg.values["mode"], msg.values["status"]) == (3, 6)  # GNSS + dead reckoning


@pytest.mark.parametrize(
    ("capture", "msg_id", "used_attr"),
    [("ublox-lea-m8f.log", 0x35, "svUsed"), ("ublox8-uniqid-monhw.log", 0x30, "svUsed")],
    ids=["NAV-SAT", "NAV-SVINFO"],
)
def test_satellite_messages_from_real_frames_agree_with_pyubx2(
    capture: str, msg_id: int, used_attr: str
) -> None:
    frame = first(capture, 0x01, msg_id, 2)
    ref = UBXReader.parse(frame.raw)
    msg = decode_ubx(frame)
    assert msg is not None
    assert msg.sats is not None
    count = ref.numSvs if msg_id == 0x35 else ref.numCh
    used_ref = sum(getattr(ref, f"{used_attr}_{i:02d}") for i in range(1, count + 1))
    assert sum(s.used for s in msg.sats) == used_ref > 0
    assert len(msg.sats) <= count
    by_id = {(s.sat.gnssid, s.sat.svid): s for s in msg.sats}
    if msg_id == 0x35:
        for i in range(1, count + 1):
            key = (getattr(ref, f"gnssId_{i:02d}"), getattr(ref, f"svId_{i:02d}"))
            s = by_id[key]
            assert s.ss == getattr(ref, f"cno_{i:02d}")
            assert s.used == bool(getattr(ref, f"svUsed_{i:02d}"))


# --- UBX: pyubx2 messages, frames built from its tables --------------------------------


def _built(name: str, **fields: object) -> BinaryFrame:
    raw = UBXMessage("NAV", name, GET, **fields).serialize()
    f = Framer()
    (frame,) = f.feed(raw)
    assert isinstance(frame, BinaryFrame)
    return frame


def test_nav_posllh_velned_sol_dop_timeutc_eoe_make_one_fix() -> None:
    tow = 487_912_000
    frames = [
        _built("NAV-SOL", iTOW=tow, week=2299, gpsFix=3, gpsfixOK=1, pDOP=1.5, numSV=9),
        _built(
            "NAV-POSLLH",
            iTOW=tow,
            lon=9.3117328,
            lat=48.7409605,
            height=311221,
            hMSL=263610,
            hAcc=5099,
            vAcc=11285,
        ),
        _built("NAV-VELNED", iTOW=tow, velD=-120, gSpeed=83, heading=250.9091),
        _built("NAV-DOP", iTOW=tow, pDOP=1.5, hDOP=0.8, vDOP=1.2),
        _built(
            "NAV-TIMEUTC",
            iTOW=tow,
            year=2024,
            month=1,
            day=30,
            hour=15,
            min=31,
            sec=34,
            validTOW=1,
            validWKN=1,
            validUTC=1,
        ),
        _built("NAV-EOE", iTOW=tow),
    ]
    out = run(b"".join(f.raw for f in frames))
    (fix,) = out
    assert isinstance(fix, Fix)
    assert fix.time == "2024-01-30T15:31:34.000Z"
    assert (fix.mode, fix.status, fix.source_protocol) == (3, 1, "ubx")
    assert fix.lat == pytest.approx(48.7409605)
    assert fix.altMSL == pytest.approx(263.61)
    assert fix.altHAE == pytest.approx(311.221)
    assert fix.speed == pytest.approx(0.83)
    assert fix.track == pytest.approx(250.9091)
    assert fix.climb == pytest.approx(1.2)
    assert (fix.pdop, fix.hdop, fix.vdop, fix.uSat) == (1.5, 0.8, 1.2, 9)


def test_nav_sol_time_from_the_gps_week_and_leap_seconds_without_utc() -> None:
    tow = 228_712_000  # Tuesday 15:31:52 GPS time of week 2299 (from Sunday 2024-01-28)
    raw = (
        _built(
            "NAV-TIMEGPS", iTOW=tow, week=2299, leapS=18, towValid=1, weekValid=1, leapSValid=1
        ).raw
        + _built(
            "NAV-SOL", iTOW=tow, week=2299, gpsFix=2, gpsfixOK=1, numSV=4, wknSet=1, towSet=1
        ).raw
        + _built("NAV-POSLLH", iTOW=tow, lon=1.0, lat=2.0, height=1000, hMSL=900).raw
    )
    (fix,) = run(raw)
    assert isinstance(fix, Fix)
    assert fix.time == "2024-01-30T15:31:34.000Z"
    assert fix.mode == 2
    assert fix.altMSL is None  # 2D: no altitude


# --- CASIC: layouts checked on real frames and on frames built from the table -----------


def test_casic_nav_pv_from_a_real_frame_gives_gpsds_position() -> None:
    # gpsd's TPV for 2026-08-06T07:18:05 (quectel-l76k-binary.log.chk).
    out = run(corpus_bytes("quectel-l76k-binary.log"))
    fix = next(r for r in out if isinstance(r, Fix) and r.time == "2026-08-06T07:18:05.000Z")
    assert fix.source_protocol == "casic"
    assert fix.mode == 3
    assert fix.lat == pytest.approx(47.661958473, abs=1e-6)
    assert fix.lon == pytest.approx(-122.326376312, abs=1e-6)
    assert fix.altHAE == pytest.approx(56.0180, abs=0.01)
    assert fix.altMSL == pytest.approx(77.6272, abs=0.01)
    assert fix.track == pytest.approx(286.3458, abs=0.01)
    assert fix.eph == pytest.approx(1.646, abs=0.01)
    sky = next(r for r in out if isinstance(r, Sky) and r.time == fix.time)
    assert (sky.nSat, sky.uSat, sky.source_protocol) == (24, 17, "casic")
    assert {s.PRN for s in sky.satellites} >= {1, 413, 427, 75}
    assert sky.hdop == pytest.approx(0.76, abs=0.01)


def _pack(key: tuple[int, int], **fields: float) -> bytes:
    layout = LAYOUTS[key]
    return layout.struct.pack(*(fields.get(name, 0) for name in layout.fields))


def test_casic_messages_built_from_the_layout_table() -> None:
    run_time = 285_437_835
    pv = _pack(
        (0x01, 0x03),
        runTime=run_time,
        posValid=6,
        velValid=6,
        numSV=5,
        pDop=2.5,
        lon=118.07,
        lat=24.45,
        height=30.0,
        sepGeoid=10.0,
        hAcc=4.0,
        speed2D=2.5,
        heading=90.0,
    )
    utc = _pack(
        (0x01, 0x10),
        runTime=run_time,
        ms=500,
        year=2026,
        month=3,
        day=1,
        hour=23,
        min=59,
        sec=59,
        valid=7,
        dateValid=3,
    )
    head = _pack((0x01, 0x21), runTime=run_time, numViewSv=2, numFixSv=1, system=1)
    rows = struct.pack("<BBBBBbhf", 1, 27, 0x01, 7, 40, 41, 172, 0.0) + struct.pack(
        "<BBBBBbhf", 0xFF, 38, 0x00, 0, 0, -91, 400, 0.0
    )
    data = casic(1, 3, pv) + casic(1, 0x10, utc) + casic(1, 0x21, head + rows)
    fix, sky = run(data)
    assert isinstance(fix, Fix)
    assert isinstance(sky, Sky)
    assert fix.time == "2026-03-01T23:59:59.500Z"
    assert (fix.mode, fix.lat, fix.lon, fix.speed, fix.track) == (2, 24.45, 118.07, 2.5, 90.0)
    assert fix.altMSL is None  # 2D
    assert fix.eph == 2.0  # sqrt of the variance
    assert [(s.PRN, s.used, s.el, s.az) for s in sky.satellites] == [
        (427, True, 41.0, 172.0),
        (438, False, None, None),
    ]


def test_casic_no_fix_gives_mode_1_without_a_position() -> None:
    pv = _pack((0x01, 0x03), runTime=5, posValid=0, velValid=0, lat=1.0, lon=1.0)
    (fix,) = run(casic(1, 3, pv))
    assert isinstance(fix, Fix)
    assert fix.mode == 1
    assert fix.lat is None
    assert fix.clock == "system"  # no valid UTC yet


def test_short_payloads_are_decode_errors_not_crashes() -> None:
    p = GnssPipeline()
    data = casic(1, 3, bytes(40)) + ubx(1, 7, bytes(20)) + ubx(1, 0x35, bytes([0] * 5 + [9, 0, 0]))
    data += casic(1, 0x20, bytes([0] * 4 + [9, 0, 0, 0]))  # 9 satellites announced, none sent
    data += ubx(1, 0x21, bytes(3))
    assert p.feed(data, now=1.0) + p.flush(now=1.0) == []
    assert p.counters["binary_decode_error"] == 5


def test_unused_messages_are_counted() -> None:
    p = GnssPipeline()
    p.feed(ubx(0x0A, 0x04, b"x" * 40) + casic(0x0A, 0x04, bytes(64)), now=1.0)
    assert p.counters["binary_unused"] == 2
    assert p.counters["binary_decoded"] == 0


def test_decoders_reject_other_protocols_frames_by_table() -> None:
    assert decode_casic(BinaryFrame("casic", 0x06, 0x00, bytes(8), b"")) is None
    assert decode_ubx(BinaryFrame("ubx", 0x27, 0x03, bytes(9), b"")) is None


# --- epochs and the choice of source ----------------------------------------------------


def test_the_learned_cycle_end_reports_an_epoch_as_its_last_message_arrives() -> None:
    frames = corpus_frames("quectel-l76k-binary.log")
    a = BinaryAssembler()
    reported_at: list[str] = []
    for frame in frames:
        msg = decode_casic(frame)
        if msg is not None and a.add(msg, 0.0):
            reported_at.append(msg.name)
    # The first epochs close when the next starts; then the cycle's last message ends them.
    assert reported_at[:2] == ["NAV-DOP", "NAV-DOP"]
    assert set(reported_at[3:]) == {"NAV-GLNINFO"}


def _mixed_stream() -> bytes:
    """A u-blox receiver sending NMEA and UBX for the same epochs."""
    return corpus_bytes("ublox8-uniqid-monhw.log")


@pytest.mark.parametrize("prefer", ["auto", "binary", "nmea"])
def test_a_receiver_sending_both_gives_one_record_per_epoch(prefer: str) -> None:
    out = run(_mixed_stream(), prefer=prefer)
    fixes = [r for r in out if isinstance(r, Fix) and r.mode >= 2]
    times = [r.time for r in fixes]
    # NMEA leaves out two epochs binary has (GGA quality 1 with an empty GSA: no fix).
    assert len(times) == len(set(times)) >= (6 if prefer == "nmea" else 8)
    skies = [r.time for r in out if isinstance(r, Sky)]
    assert len(skies) == len(set(skies))
    sources = {r.source_protocol for r in fixes[1:]}  # the first may come before binary
    assert sources == ({None} if prefer == "nmea" else {"ubx"})


def test_the_other_source_stands_in_when_the_preferred_one_stops() -> None:
    sel = SourceSelector("binary")
    fix = Fix(time="2026-01-01T00:00:01.000Z", mode=3)
    assert sel.admit(fix, binary=True, now=10.0)
    nmea = Fix(time="2026-01-01T00:00:02.000Z", mode=3)
    assert not sel.admit(nmea, binary=False, now=11.0)
    later = Fix(time="2026-01-01T00:00:10.000Z", mode=3)
    assert sel.admit(later, binary=False, now=19.0)
    assert sel.dropped == 1


# --- any bytes: only the project's own outcomes, and chunking does not matter -----------


@cache
def _fragments() -> tuple[bytes, ...]:
    frames = corpus_frames("quectel-l76k-binary.log")[:12] + corpus_frames("ublox-lea-m8f.log")[:20]
    gga = sentence("GNGGA,120000.00,2426.98900,N,11804.21200,E,1,08,1.0,10.0,M,-2.0,M,,")
    return (*(f.raw for f in frames), gga, b"\xb5\x62", b"\xba\xce", b"$", b"\r\n")


_parts = st.lists(
    st.one_of(
        st.sampled_from(range(36)).map(lambda i: _fragments()[i]),
        st.binary(max_size=30),
        st.sampled_from(range(32)).map(lambda i: _fragments()[i][: len(_fragments()[i]) // 2]),
    ),
    max_size=25,
)


def _json(records: list[Payload]) -> list[dict[str, object]]:
    return [{k: v for k, v in r.to_json_dict().items() if k != "id"} for r in records]


@settings(max_examples=150, deadline=None)
@given(_parts, st.lists(st.integers(min_value=1, max_value=4000), max_size=12))
def test_framer_and_binary_decoders_take_any_bytes_and_ignore_chunking(
    parts: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(parts)
    whole = GnssPipeline()
    a = whole.feed(data, now=7.0) + whole.flush(now=7.0)
    split = GnssPipeline()
    b: list[Payload] = []
    bounds = [0, *sorted({c for c in cuts if c < len(data)}), len(data)]
    for lo, hi in itertools.pairwise(bounds):
        b += split.feed(data[lo:hi], now=7.0)
    b += split.flush(now=7.0)
    assert _json(a) == _json(b)
    assert whole.counters == split.counters
    assert whole.framer.buffered == 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_after_a_sync_never_raise(tail: bytes) -> None:
    for sync_frame in (ubx(1, 7, tail[:200]), casic(1, 3, tail[: len(tail) // 4 * 4])):
        p = GnssPipeline()
        out = p.feed(sync_frame + tail, now=1.0) + p.flush(now=1.0)
        for r in out:
            assert isinstance(r, Fix | Sky)
        f = Framer()
        for x in f.feed(tail) + f.flush():
            assert isinstance(x, Sentence | BinaryFrame)


def test_binary_frames_count_as_valid_data_for_the_port() -> None:
    p = GnssPipeline()
    p.feed(casic(0x0A, 0x04, bytes(64)), now=5.0)
    assert p.last_valid_sentence == 5.0


def test_prefer_is_validated_with_the_config(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[device]\nid = "v1"\n[gnss]\nprefer = "nmea"\n')
    assert load_config(path).gnss.prefer == "nmea"
    path.write_text('[device]\nid = "v1"\n[gnss]\nprefer = "both"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert any(loc == "gnss.prefer" for loc, _msg in err.value.problems)


def test_a_raw_capture_keeps_binary_that_starts_a_line_with_a_hash(tmp_path: Path) -> None:
    frame = ubx(0x01, 0x61, b"\n#\x00\x01")  # iTOW bytes that hold "\n#"
    path = tmp_path / "raw.log"
    path.write_bytes(b"# Name: a text comment\n" + frame + b"\n# another comment\n")
    data = b"".join(c.data for c in CaptureReader(path))
    assert data == frame + b"\n"


def test_auto_baud_accepts_a_rate_at_which_only_binary_frames_arrive(tmp_path: Path) -> None:
    from terminal_gw.gnss.stage import framer_validator

    path = tmp_path / "c.toml"
    path.write_text('[device]\nid = "v1"\n')
    config = load_config(path)
    valid = framer_validator(config.gnss)
    assert not valid(b"\x00\xb5\x62\x01garbage at the wrong rate")
    assert valid(casic(0x01, 0x01, bytes(28)))
    assert framer_validator(config.gnss)(ubx(0x01, 0x61, bytes(4)))
