"""Epoch assembler (through GnssPipeline): one Fix and one Sky per epoch, dates, events."""

from __future__ import annotations

from typing import Any

from terminal_gw.gnss.framer import nmea_checksum
from terminal_gw.gnss.pipeline import GnssPipeline
from terminal_gw.models import Event, Fix, Payload, Sky


def nmea(*bodies: str) -> bytes:
    out = b""
    for body in bodies:
        raw = body.encode()
        out += b"$%s*%02X\r\n" % (raw, nmea_checksum(raw))
    return out


def run(*bodies: str, now: float = 1_000.0) -> list[Payload]:
    p = GnssPipeline()
    return p.feed(nmea(*bodies), now) + p.flush(now)


def of(kind: type[Any], records: list[Payload]) -> list[Any]:
    return [r for r in records if isinstance(r, kind)]


EPOCH = (
    "GNRMC,223745.00,A,3806.62964,N,12237.61382,W,0.040,77.5,110720,,,D,V",
    "GNGGA,223745.00,3806.62964,N,12237.61382,W,2,12,0.54,83.1,M,-29.5,M,,0000",
    "GNGSA,A,3,29,20,18,,,,,,,,,,0.99,0.54,0.83,1",
    "GNGSA,A,3,82,73,,,,,,,,,,,0.99,0.54,0.83,2",
    "GNGSA,A,3,27,30,,,,,,,,,,,0.99,0.54,0.83,4",
    "GPGSV,1,1,04,29,46,133,43,20,63,235,37,18,68,358,39,05,01,047,,1",
    "GPGSV,1,1,02,29,46,133,40,20,63,235,,6",
    "GLGSV,1,1,02,82,51,077,39,73,13,282,27,1",
    "GBGSV,1,1,03,27,78,059,44,30,37,312,36,33,20,043,27,1",
    "GBGSV,1,1,01,27,78,059,47,5",
    "GNGST,223745.00,228650,2.5,2.4,126,0.98,1.0,3.1",
    "GNZDA,223745.00,11,07,2020,00,00",
)


def test_one_fix_and_one_sky_per_epoch_with_gpsd_fields() -> None:
    records = run(*EPOCH)
    (fix,) = of(Fix, records)
    (sky,) = of(Sky, records)
    j = fix.to_json_dict()
    assert j["class"] == "TPV"
    assert j["time"] == "2020-07-11T22:37:45.000Z"
    assert j["mode"] == 3
    assert j["status"] == 2  # DGPS
    assert abs(j["lat"] - 38.110494) < 1e-9
    assert abs(j["lon"] + 122.626897) < 1e-9
    assert j["altMSL"] == 83.1
    assert j["geoidSep"] == -29.5
    assert abs(j["altHAE"] - 53.6) < 1e-9
    assert j["speed"] == 0.021  # 0.040 kn in m/s
    assert j["track"] == 77.5
    assert (j["pdop"], j["hdop"], j["vdop"]) == (0.99, 0.54, 0.83)
    assert j["eph"] == round((0.98**2 + 1.0**2) ** 0.5, 3)
    assert j["epv"] == 3.1
    assert j["used"] == {"gps": 3, "glo": 2, "bds": 2}
    assert j["uSat"] == 7
    assert j["nSat"] == 9
    assert j["clock"] == "gnss"
    assert "climb" not in j  # first epoch: nothing to derive it from
    s = sky.to_json_dict()
    assert s["class"] == "SKY"
    assert s["time"] == j["time"]
    sats = {(x["gnssid"], x["svid"]): x for x in s["satellites"]}
    # Merged across signal ids: one row per satellite, strongest signal kept.
    assert len(s["satellites"]) == s["nSat"] == 9
    assert sats[(3, 27)]["PRN"] == 427
    assert sats[(3, 27)]["ss"] == 47
    assert sats[(3, 27)]["sigid"] == 5
    assert sats[(3, 27)]["used"] is True
    assert sats[(3, 33)]["used"] is False
    assert sats[(6, 18)]["PRN"] == 82
    assert sats[(6, 18)]["used"] is True
    assert sats[(0, 20)]["ss"] == 37
    assert "ss" not in sats[(0, 5)]  # empty SNR: absent, not 0
    assert s["uSat"] == 7


def test_no_fix_epoch_leaves_position_absent_not_zero() -> None:
    records = run(
        "GPGGA,212406.000,0000.0000000,N,00000.0000000,E,0,00,0.0,0.000,M,0.000,M,,0000",
        "GPGSA,A,1,,,,,,,,,,,,,0.0,0.0,0.0",
        "GPRMC,212406.000,V,0000.0000000,N,00000.0000000,E,000.0,000.0,280316,,,N",
        "GPVTG,000.0,T,,M,000.0,N,000.0,K,N",
        "GPGST,212406.000,,,,,,,",
    )
    (fix,) = of(Fix, records)
    j = fix.to_json_dict()
    assert j["mode"] == 1
    assert j["time"] == "2016-03-28T21:24:06.000Z"
    for absent in ("lat", "lon", "altMSL", "altHAE", "speed", "track", "eph", "epv", "hdop"):
        assert absent not in j, absent


def test_epochs_split_on_time_of_day_and_climb_is_derived() -> None:
    records = run(
        "GNRMC,120000.00,A,3806.62964,N,12237.61382,W,0.0,,110720,,,A,V",
        "GNGGA,120000.00,3806.62964,N,12237.61382,W,1,08,1.0,80.0,M,-29.5,M,,",
        "GNRMC,120001.00,A,3806.62964,N,12237.61382,W,0.0,,110720,,,A,V",
        "GNGGA,120001.00,3806.62964,N,12237.61382,W,1,08,1.0,81.5,M,-29.5,M,,",
    )
    fixes = of(Fix, records)
    assert [f.time for f in fixes] == ["2020-07-11T12:00:00.000Z", "2020-07-11T12:00:01.000Z"]
    assert fixes[1].climb == 1.5


def test_midnight_rollover_advances_the_date() -> None:
    records = run(
        "GPRMC,235959.50,A,3806.62964,N,12237.61382,W,0.0,,311224,,,A",
        "GPGGA,235959.50,3806.62964,N,12237.61382,W,1,08,1.0,80.0,M,-29.5,M,,",
        # GGA-only epochs after midnight: no new date sent yet
        "GPGGA,000000.00,3806.62964,N,12237.61382,W,1,08,1.0,80.0,M,-29.5,M,,",
        "GPGGA,000000.50,3806.62964,N,12237.61382,W,1,08,1.0,80.0,M,-29.5,M,,",
        "GPRMC,000001.00,A,3806.62964,N,12237.61382,W,0.0,,010125,,,A",
    )
    assert [f.time for f in of(Fix, records)] == [
        "2024-12-31T23:59:59.500Z",
        "2025-01-01T00:00:00.000Z",
        "2025-01-01T00:00:00.500Z",
        "2025-01-01T00:00:01.000Z",
    ]


def test_a_small_step_back_in_time_of_day_does_not_change_the_date() -> None:
    records = run(
        "GPRMC,120001.00,A,3806.62964,N,12237.61382,W,0.0,,110720,,,A",
        "GPGGA,120000.00,3806.62964,N,12237.61382,W,1,08,1.0,80.0,M,-29.5,M,,",
    )
    assert [f.time for f in of(Fix, records)][-1] == "2020-07-11T12:00:00.000Z"


def test_without_any_gnss_date_time_comes_from_the_system_clock_and_says_so() -> None:
    (fix,) = of(
        Fix,
        run("GPGGA,120000.00,3806.62964,N,12237.61382,W,1,08,1.0,80.0,M,,M,,", now=86_400.5),
    )
    assert fix.clock == "system"
    assert fix.time == "1970-01-02T00:00:00.500Z"
    assert fix.mode == 3
    assert fix.altMSL == 80.0
    assert fix.altHAE is None  # no geoid separation sent


def test_antenna_event_only_when_the_state_changes() -> None:
    p = GnssPipeline()
    events: list[Event] = []
    for i, text in enumerate(
        [
            "GPTXT,01,01,01,ANTENNA OK",
            "GPTXT,01,01,01,ANTENNA OK",
            "GPTXT,01,01,01,ANTENNA OPEN",
            "GPTXT,01,01,01,ANTENNA OPEN",
            "GNTXT,01,01,02,ANTSTATUS=SHORT",
            "GNTXT,01,01,02,ANTSTATUS=OK",
            "GNTXT,01,01,02,some other text",
            "GNTXT,01,01,02,ANTSTATUS=OK",
        ]
    ):
        events.extend(of(Event, p.feed(nmea(text), now=100.0 + i)))
    assert [(e.kind, e.data["state"], e.severity) for e in events] == [
        ("antenna", "open", "warning"),
        ("antenna", "short", "warning"),
        ("antenna", "ok", "info"),
    ]
    assert events[0].data["previous"] == "ok"
    assert events[0].time == "1970-01-01T00:01:42.000Z"  # stamped with `now`, not the clock
    assert p.counters["events"] == 3


def test_first_antenna_report_is_an_event_only_when_not_ok() -> None:
    (event,) = of(Event, run("GNTXT,01,01,02,ANTSTATUS=OPEN"))
    assert event.data == {"state": "open", "previous": None}


def test_sky_keeps_the_last_view_when_a_receiver_sends_gsv_every_few_epochs() -> None:
    p = GnssPipeline()
    out = p.feed(
        nmea(
            "GPGGA,120000.00,3806.62964,N,12237.61382,W,1,08,1.0,80.0,M,-29.5,M,,",
            "GPGSA,A,3,29,20,,,,,,,,,,,0.99,0.54,0.83",
            "GPGSV,1,1,02,29,46,133,43,20,63,235,37",
        ),
        now=10.0,
    )
    out += p.feed(
        nmea(
            "GPGGA,120001.00,3806.62964,N,12237.61382,W,1,08,1.0,80.0,M,-29.5,M,,",
            "GPGSA,A,3,29,,,,,,,,,,,,0.99,0.54,0.83",
        ),
        now=11.0,
    )
    out += p.flush(now=11.0)
    skies = of(Sky, out)
    assert len(skies) == 2
    assert [(s.svid, s.used) for s in skies[1].satellites] == [(29, True), (20, False)]


def test_no_sky_without_a_satellite_view() -> None:
    records = run(
        "GPGGA,120000.00,3806.62964,N,12237.61382,W,1,08,1.0,80.0,M,-29.5,M,,",
        "GPGSA,A,3,29,20,,,,,,,,,,,0.99,0.54,0.83",
    )
    assert len(of(Fix, records)) == 1
    assert of(Sky, records) == []


def test_counters_cover_every_outcome() -> None:
    p = GnssPipeline()
    p.feed(nmea(*EPOCH) + b"\x00garbage$GPGGA,bad*00\r\n$GYOACC,1*00\r\n", now=1.0)
    p.flush(now=2.0)
    c = p.counters
    for key in (
        "good",
        "bad_checksum",
        "no_checksum",
        "overlong",
        "garbage_bytes",
        "unknown_talker",
        "unknown_type",
        "decode_error",
        "proprietary",
        "epochs",
        "fixes",
        "skies",
    ):
        assert key in c, key
    assert c["good"] == len(EPOCH)
    assert c["bad_checksum"] == 2
    assert c["garbage_bytes"] == len(b"\x00garbage")
    assert (c["epochs"], c["fixes"], c["skies"]) == (1, 1, 1)
    assert p.last_valid_sentence == 1.0


def test_a_stream_without_times_cannot_grow_an_epoch_without_bound() -> None:
    p = GnssPipeline()
    gsv = nmea("GPGSV,1,1,01,29,46,133,43")
    out: list[Payload] = []
    for _ in range(1000):
        out += p.feed(gsv, now=1.0)
    assert p.counters["epochs_oversized"] == 3
    assert len(of(Sky, out)) == 3
