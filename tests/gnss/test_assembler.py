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


# -- rules decided against gpsd's corpus (see the assembler's docstring) ---------------------

GGA_FIX = "GPGGA,{t},4221.8237733,N,07101.9411707,W,1,{n},3.3,10.835,M,-33.320,M,,"


def test_a_gga_with_quality_1_and_no_satellites_is_not_a_fix() -> None:
    # Hemisphere without a fix: quality 1, 0 satellites, a position it does not vouch for.
    records = run(
        "GPZDA,194049.00,07,09,2018,00,00",
        GGA_FIX.format(t="194050.00", n="00"),
        "GPVTG,330.63,T,345.26,M,0.00,N,0.00,K,A",
        "GPZDA,194050.00,07,09,2018,00,00",
    )
    fix = of(Fix, records)[-1]
    assert fix.time == "2018-09-07T19:40:50.000Z"
    assert (fix.mode, fix.lat, fix.altMSL) == (1, None, None)
    four = of(Fix, run("GPZDA,194057.50,07,09,2018,00,00", GGA_FIX.format(t="194057.50", n="04")))
    assert (four[-1].mode, four[-1].altMSL) == (3, 10.835)


def test_no_fix_sentences_without_a_time_stay_out_of_the_first_timed_epoch() -> None:
    no_fix = ("GPGGA,,,,,,0,,,,M,,M,,", "GPGSA,A,1,,,,,,,,,,,,,,,", "GPRMC,,V,,,,,,,,,,N")
    records = run(
        *no_fix,
        *no_fix,
        "GPGGA,105153.71,5050.4122,N,00420.8266,E,1,04,2.25,109.44,M,,M,,",
        "GPGSA,A,3,15,17,24,28,,,,,,,,,4.00,2.25,3.25",
        "GPRMC,105153.71,A,5050.4122,N,00420.8266,E,0.14,303.60,120319,,,A",
    )
    fixes = of(Fix, records)
    assert [f.mode for f in fixes] == [1, 1, 3]  # one no-fix record per cycle
    assert [f.clock for f in fixes] == ["system", "system", "gnss"]
    assert fixes[-1].time == "2019-03-12T10:51:53.710Z"  # the date its own cycle brought


def test_a_late_no_fix_gsa_does_not_wipe_the_next_valid_fix() -> None:
    cycle = ("GNRMC,1840{s}.00,V,,,,,,,030416,,,N", "GNGGA,1840{s}.00,,,,,0,04,28.71,,,,,,")
    bodies = [b.format(s=s) for s in ("57", "58", "59") for b in cycle]
    bodies += [
        "GNGSA,A,1,31,21,,,,,,,,,,,53.32,28.64,44.97",  # after the learned end (GGA)
        "GNRMC,184102.00,A,5000.14318,N,00838.63715,E,0.419,,030416,,,A",
        "GNGGA,184102.00,5000.14318,N,00838.63715,E,1,05,3.62,159.6,M,47.6,M,,",
    ]
    fix = of(Fix, run(*bodies))[-1]
    assert fix.time == "2016-04-03T18:41:02.000Z"
    assert (fix.mode, fix.altMSL) == (3, 159.6)


def test_garmin_pgrmz_gives_the_altitude_and_mode_of_a_gll_second() -> None:
    records = run(
        "GPRMC,225308,A,4527.458,S,16709.165,E,000.0,094.5,060601,024.1,E",
        "GPGGA,225308,4527.458,S,16709.165,E,1,05,2.1,14.7,M,1.1,M,,",
        "GPGSA,A,3,01,,,,13,20,22,,,,28,,3.1,2.1,2.0",
        "GPGLL,4527.458,S,16709.165,E,225309,A",
        "PGRMZ,48,f,3",
    )
    gll = of(Fix, records)[-1]
    assert gll.time == "2001-06-06T22:53:09.000Z"
    assert (gll.mode, gll.altMSL) == (3, 14.6304)  # 48 ft


def test_when_positions_disagree_the_last_sentence_of_the_epoch_wins() -> None:
    # B&G Zeus² relay, first minute: RMC first (its position a second old), GLL last.
    records = run(
        "GPRMC,094737,A,5251.0093,N,00518.8170,E,5.6,230.5,200818,1.4,E,A",
        "GPGGA,094737,5251.0085,N,00518.8151,E,1,12,0.60,-4,M,46.8,M,,",
        "GPGLL,5251.0084,N,00518.8149,E,094737,A,A",
        "GPRMC,094738,A,5251.0084,N,00518.8149,E,5.8,235.1,200818,1.4,E,A",
        "GPGGA,094738,5251.0074,N,00518.8132,E,1,12,0.60,-4,M,46.8,M,,",
    )
    first, second = of(Fix, records)
    assert (round(first.lat or 0, 9), round(first.lon or 0, 9)) == (52.85014, 5.313581667)
    assert round(second.lat or 0, 9) == 52.850123333  # GGA before RMC
    assert first.speed == 2.881  # speed and track still from the RMC


def test_a_later_rmc_and_vtg_give_the_position_and_the_velocity() -> None:
    # The same relay a minute later: GGA and GLL first, then RMC, then a VTG that disagrees.
    records = run(
        "GPGGA,094855,5250.9360,N,00518.6511,E,1,12,0.60,-5,M,46.8,M,,",
        "GPGLL,5250.9359,N,00518.6508,E,094855,A,A",
        "GPGSA,A,3,07,08,10,16,20,21,26,27,29,76,75,70,1.10,0.60,0.90",
        "GPRMC,094855,A,5250.9358,N,00518.6506,E,6.3,232.6,200818,1.4,E,A",
        "GPVTG,222.3,T,220.9,M,6.6,N,12.2,K,A",
        "GPZDA,094855,20,08,2018,-01,00",
    )
    (fix,) = of(Fix, records)
    assert (round(fix.lat or 0, 9), round(fix.lon or 0, 9)) == (52.84893, 5.310843333)  # RMC
    assert (fix.speed, fix.track) == (3.395, 222.3)  # VTG's 6.6 kn, not RMC's 6.3
    assert fix.altMSL == -5.0  # the altitude is still the GGA's


def test_a_last_sentence_without_a_fix_does_not_replace_the_position() -> None:
    records = run(
        "GPGGA,120000,5250.9360,N,00518.6511,E,1,08,0.9,3.0,M,46.8,M,,",
        "GPRMC,120000,V,5250.0000,N,00518.0000,E,9.9,100.0,200818,,,N",
        "GPGLL,5250.0000,N,00518.0000,E,120000,V,N",
        "GPVTG,,T,,M,,N,,K,N",
    )
    (fix,) = of(Fix, records)
    assert (round(fix.lat or 0, 6), round(fix.lon or 0, 6)) == (52.848933, 5.310852)  # GGA's
    assert fix.speed is None  # the RMC without a fix vouches for no speed either


def test_a_second_with_only_rmc_keeps_the_3d_of_the_second_before() -> None:
    records = run(
        "GPRMC,045849.000,A,3519.9048,N,13640.2631,E,0.10,92.17,270705,,",
        "GPGSA,A,3,09,05,14,26,,,,,,,,,2.9,2.2,1.9",
        "GPRMC,045850.000,A,3519.9047,N,13640.2631,E,0.11,99.12,270705,,",
        "GPRMC,045851.000,A,3519.9046,N,13640.2631,E,0.12,114.35,270705,,",
    )
    assert [f.mode for f in of(Fix, records)] == [3, 3, 3]
    alone = of(Fix, run("GPRMC,045850.000,A,3519.9047,N,13640.2631,E,0.11,99.12,270705,,"))
    assert alone[0].mode == 2  # nothing says more than 2D


def test_a_satellite_without_snr_is_not_marked_used() -> None:
    records = run(
        "GPRMC,223251.00,A,3757.92653,N,12231.94543,W,0.068,338.51,210416,0.00,E,A,V",
        "GPGSA,A,3,07,30,15,,,,,,,,,,2.88,1.20,2.62,1",
        "GPGSV,1,1,03,07,32,111,29,30,61,093,28,15,18,314,,1",
    )
    (sky,) = of(Sky, records)
    assert [(s.svid, s.used) for s in sky.satellites] == [(7, True), (30, True), (15, False)]
    assert sky.uSat == 2


def test_a_view_sent_once_a_minute_is_repeated_until_it_is_too_old() -> None:
    p = GnssPipeline()
    out = p.feed(
        nmea(
            "GNGNS,213715.000,4111.59903,N,11156.54809,W,AANN,13,0.93,01482.5,-016.5,,",
            "GNZDA,213715.000,12,02,2026,,",
            "GPGSA,A,3,24,19,,,,,,,,,,,1.75,0.93,1.48",
            "GNGNS,213716.000,4111.59903,N,11156.54809,W,AANN,13,0.93,01482.5,-016.5,,",
            "GPGSV,1,1,02,24,35,234,31,19,42,060,26",
            "GNGNS,213816.000,4111.59903,N,11156.54809,W,AANN,13,0.93,01482.5,-016.5,,",
            "GNGNS,213847.000,4111.59903,N,11156.54809,W,AANN,13,0.93,01482.5,-016.5,,",
        ),
        now=1.0,
    )
    out += p.flush(now=2.0)
    skies = of(Sky, out)
    assert [s.time for s in skies] == ["2026-02-12T21:37:16.000Z", "2026-02-12T21:38:16.000Z"]
    assert all(s.used for s in skies[1].satellites)  # the GSA of the epoch before the view


def test_a_gsv_group_spread_over_several_epochs_is_one_view() -> None:
    records = run(
        "GPRMC,093801,A,4527.458,S,16709.165,E,000.0,094.5,160305,024.1,E",
        "GPGSV,2,1,05,01,78,221,47,03,09,042,40,04,05,242,38,06,04,149,30",
        "GPRMC,093802,A,4527.458,S,16709.165,E,000.0,094.5,160305,024.1,E",
        "GPGSV,2,2,05,13,37,235,48",
    )
    skies = of(Sky, records)
    assert [s.time for s in skies] == ["2005-03-16T09:38:02.000Z"]
    assert [s.svid for s in skies[0].satellites] == [1, 3, 4, 6, 13]


def test_the_first_fix_before_any_date_waits_for_the_date_instead_of_guessing() -> None:
    records = run(
        "GPGGA,094736,5251.0094,N,00518.8172,E,1,12,0.60,-4,M,46.8,M,,",
        "GPRMC,094737,A,5251.0093,N,00518.8170,E,5.6,230.5,200818,1.4,E,A",
    )
    assert [(f.time, f.clock) for f in of(Fix, records)] == [
        ("2018-08-20T09:47:36.000Z", "gnss"),
        ("2018-08-20T09:47:37.000Z", "gnss"),
    ]
    # A receiver that never sends a date: system time after the wait, and marked so.
    bodies = [GGA_FIX.format(t=f"1940{s:02d}.00", n="08") for s in range(15)]
    fixes = of(Fix, run(*bodies))
    assert len(fixes) == 15
    assert {f.clock for f in fixes} == {"system"}


def test_a_view_sent_after_the_learned_cycle_end_is_a_second_sky_of_that_epoch() -> None:
    cycle = (
        "GPGGA,0814{s}.000,5541.1965,N,03737.2923,E,1,6,2.56,66.2,M,14.5,M,,",
        "GNGSA,A,3,03,19,27,13,,,,,,,,,2.75,2.56,1.00",
        "GNRMC,0814{s}.000,A,5541.1965,N,03737.2923,E,0.39,332.00,260514,,,A",
        "GPZDA,0814{s}.000,26,05,2014,,",
    )
    bodies = [b.format(s=s) for s in ("12", "13", "14", "15") for b in cycle]
    bodies += [
        "GPGSV,1,1,02,03,27,059,14,19,24,073,16",  # after the ZDA that ends each cycle
        *[b.format(s="16") for b in cycle],
    ]
    records = run(*bodies)
    skies = of(Sky, records)
    assert [s.time for s in skies][:1] == ["2014-05-26T08:14:15.000Z"]
    assert [(s.svid, s.used) for s in skies[0].satellites] == [(3, True), (19, True)]
    fixes = of(Fix, records)
    assert [f.mode for f in fixes] == [3] * 5  # the late GSV changed no fix
