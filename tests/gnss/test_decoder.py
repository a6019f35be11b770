"""Decoder and satellite numbering: talkers, quirks, gpsd's numbers, empty fields."""

from __future__ import annotations

import datetime as dt

import pytest

from terminal_gw.gnss.decoder import GGA, GSA, GSV, RMC, Decoder
from terminal_gw.gnss.framer import Framer, nmea_checksum
from terminal_gw.gnss.numbering import SatId, normalise, system_of


def sentence(body: str) -> bytes:
    raw = body.encode()
    return b"$%s*%02X\r\n" % (raw, nmea_checksum(raw))


def decode(*bodies: str) -> tuple[list[object], Decoder]:
    framer, decoder = Framer(), Decoder()
    out = []
    for body in bodies:
        for s in framer.feed(sentence(body)):
            msg = decoder.decode(s)
            if msg is not None:
                out.append(msg)
    return out, decoder


# (NMEA satellite number, system id, expected (gnssid, svid, PRN)); system 0 = unknown (GN).
NUMBERING = [
    # BeiDou in all three schemes, always gnssid 3, svid 1-63, PRN 400+svid
    (1, 4, (3, 1, 401)),
    (14, 4, (3, 14, 414)),
    (63, 4, (3, 63, 463)),
    (201, 4, (3, 1, 401)),
    (214, 4, (3, 14, 414)),
    (263, 4, (3, 63, 463)),
    (214, 0, (3, 14, 414)),
    (209, 1, (3, 9, 409)),
    (401, 4, (3, 1, 401)),
    (437, 4, (3, 37, 437)),
    (437, 0, (3, 37, 437)),
    # GPS
    (1, 1, (0, 1, 1)),
    (32, 0, (0, 32, 32)),
    # SBAS: NMEA 33-64 are PRN 120-151 (gpsd keeps the NMEA number as PRN)
    (44, 1, (1, 131, 44)),
    (51, 0, (1, 138, 51)),
    (133, 0, (1, 133, 133)),
    # Galileo
    (5, 3, (2, 5, 305)),
    (305, 0, (2, 5, 305)),
    # GLONASS
    (82, 2, (6, 18, 82)),
    (82, 0, (6, 18, 82)),
    (3, 2, (6, 3, 67)),
    # QZSS
    (1, 5, (5, 1, 193)),
    (193, 5, (5, 1, 193)),
    (194, 1, (5, 2, 194)),
    # NavIC
    (4, 6, (7, 4, 504)),
]


@pytest.mark.parametrize(("num", "system", "expected"), NUMBERING)
def test_numbering_table(num: int, system: int, expected: tuple[int, int, int]) -> None:
    assert normalise(num, system) == SatId(*expected)


@pytest.mark.parametrize(("num", "system"), [(0, 4), (64, 4), (99, 0), (264, 0), (500, 0)])
def test_numbers_outside_every_scheme_are_rejected(num: int, system: int) -> None:
    assert normalise(num, system) is None


def test_system_id_field_beats_talker_but_a_float_there_is_ignored() -> None:
    assert system_of("GN", "4") == 4
    assert system_of("BD", "1.2") == 4  # SiRF-TriG float: fall back to the talker
    assert system_of("GN", "1.2") == 0
    assert system_of("GB", "") == 4


@pytest.mark.parametrize("talker", ["GP", "GL", "GA", "GB", "BD", "GQ", "QZ", "GI", "GN"])
def test_every_talker_is_decoded(talker: str) -> None:
    (msg,), dec = decode(f"{talker}GGA,223745.00,3806.62964,N,12237.61382,W,1,08,1.0,83.1,M,,M,,")
    assert isinstance(msg, GGA)
    assert msg.talker == talker
    assert dec.counters["decoded"] == 1


def test_bd_and_gb_gsv_give_the_same_beidou_satellites() -> None:
    (bd, gb), _ = decode(
        "BDGSV,1,1,02,01,30,046,22,14,31,261,49",
        "GBGSV,1,1,02,201,30,046,22,214,31,261,49",
    )
    assert isinstance(bd, GSV)
    assert isinstance(gb, GSV)
    assert [v.sat for v in bd.sats] == [v.sat for v in gb.sats] == [(3, 1, 401), (3, 14, 414)]


def test_quectel_pq_sentences_take_the_system_from_the_trailing_field() -> None:
    (gsv, gsa, qz), dec = decode(
        "PQGSV,1,1,02,11,40,120,38,12,20,300,,4",
        "PQGSA,A,3,11,12,,,,,,,,,,,1.5,0.9,1.2,4",
        "PQGSV,1,1,01,02,40,120,38,5",
    )
    assert isinstance(gsv, GSV)
    assert [v.sat for v in gsv.sats] == [(3, 11, 411), (3, 12, 412)]
    assert gsv.sats[1].ss is None
    assert isinstance(gsa, GSA)
    assert gsa.used == ((3, 11, 411), (3, 12, 412))
    assert isinstance(qz, GSV)
    assert [v.sat for v in qz.sats] == [(5, 2, 194)]
    assert dec.counters["proprietary"] == 0


def test_invalid_talkers_and_proprietary_sentences_are_counted_and_skipped() -> None:
    out, dec = decode(
        "GYOACC,090624,000653.10,0.004960,-0.001510,0.005386,100",
        "SNRSTAT,1,1,0,0",
        "PSRFEPE,074150.799,V,,,,,",
        "PSRFEPE,074151.799,V,,,,,",
        "PSTI,030,212406.000,V",
        "GNGBS,223745.00,1.0,1.0,3.1,,,,,,",
    )
    assert out == []
    c = dec.counters
    assert c["unknown_talker"] == 2
    assert c["proprietary"] == 3
    assert c["proprietary.PSRFEPE"] == 2
    assert c["proprietary.PSTI"] == 1
    assert c["unknown_type"] == 1
    assert c["decoded"] == 0


def test_empty_fields_become_none_never_zero() -> None:
    (gga, rmc), _ = decode(
        "GNGGA,074150.799,,,,,0,00,,,M,,M,,0000",
        "GNRMC,074150.799,V,,,,,,,250215,,,N",
    )
    assert isinstance(gga, GGA)
    assert (gga.lat, gga.lon, gga.alt, gga.sep, gga.hdop) == (None, None, None, None, None)
    assert isinstance(rmc, RMC)
    assert (rmc.speed_kn, rmc.course, rmc.magvar) == (None, None, None)
    assert rmc.date == dt.date(2015, 2, 25)
    assert rmc.valid is False


def test_gsv_signal_id_and_empty_snr() -> None:
    (gsv,), _ = decode("GBGSV,1,1,02,27,78,059,44,28,29,115,,B")
    assert isinstance(gsv, GSV)
    assert [(v.sat.prn, v.ss, v.sigid) for v in gsv.sats] == [(427, 44.0, 11), (428, None, 11)]


def test_gsa_float_system_id_falls_back_to_talker() -> None:
    (gp, bd), _ = decode(
        "GPGSA,A,3,25,32,14,12,,,,,,,,,2.1,1.1,1.8,1.2",
        "BDGSA,A,3,02,03,04,,,,,,,,,,2.1,1.1,1.8,1.2",
    )
    assert isinstance(gp, GSA)
    assert isinstance(bd, GSA)
    assert [s.prn for s in gp.used] == [25, 32, 14, 12]
    assert [s.prn for s in bd.used] == [402, 403, 404]
    assert (bd.pdop, bd.hdop, bd.vdop) == (2.1, 1.1, 1.8)


def test_dops_of_zero_or_99_mean_absent() -> None:
    (a, b), _ = decode(
        "GPGSA,A,1,,,,,,,,,,,,,0.0,0.0,0.0",
        "GNGSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99,1",
    )
    assert isinstance(a, GSA)
    assert isinstance(b, GSA)
    assert (a.pdop, a.hdop, a.vdop) == (None, None, None)
    assert (b.pdop, b.hdop, b.vdop) == (None, None, None)


def test_garbled_fields_count_as_decode_error() -> None:
    out, dec = decode("GPGSV,1,1,01,xx,40,120,38", "GPZDA,223745.00,41,13,2020,00,00")
    assert out == []
    assert dec.counters["decode_error"] == 2


def test_gsa_layouts_short_standard_and_24_satellites() -> None:
    navior = "GPGSA,A,3,27,23,13,07,25,,,,,,,,,,,,,,,,,,,,07.9,06.0,05.2"
    (short, standard, long_form), dec = decode(
        "GPGSA,A,1,,,,",
        "GNGSA,A,3,13,12,22,19,08,21,,,,,,,1.05,0.64,0.83,4",
        navior,
    )
    assert isinstance(short, GSA)
    assert (short.nav_mode, short.used, short.pdop) == (1, (), None)
    assert isinstance(standard, GSA)
    assert [s.prn for s in standard.used] == [413, 412, 422, 419, 408, 421]
    assert standard.vdop == 0.83
    assert isinstance(long_form, GSA)
    assert [s.prn for s in long_form.used] == [27, 23, 13, 7, 25]
    assert (long_form.pdop, long_form.hdop, long_form.vdop) == (7.9, 6.0, 5.2)
    assert dec.counters["decoded"] == 3


def test_proprietary_counters_by_type_stay_bounded() -> None:
    _, dec = decode(*(f"PX{i:04d},1" for i in range(100)))
    assert dec.counters["proprietary"] == 100
    assert dec.counters["proprietary.PX0000"] == 1
    assert dec.counters["proprietary.other"] == 100 - 32
    assert len(dec.counters) <= 5 + 32 + 1


def test_garmin_pgrmz_is_decoded_and_still_counted_as_proprietary() -> None:
    from terminal_gw.gnss.decoder import PGRMZ

    msgs, dec = decode("PGRMZ,246,f,3", "PGRMZ,,f,1")
    assert msgs == [PGRMZ("PG", 246, 3), PGRMZ("PG", None, 1)]
    assert dec.counters["proprietary.PGRMZ"] == 2


def test_a_time_field_that_is_not_a_time_makes_the_sentence_a_decode_error() -> None:
    msgs, dec = decode(
        "GPGGA,|19322|1.00,|2037.|72792,N,08704.08478,W,1,04,1.7,-30.40,M,-13.9,M,,",
        "GPGGA,,,,,,0,,,,M,,M,,",
    )
    assert len(msgs) == 1
    assert isinstance(msgs[0], GGA)
    assert msgs[0].time is None  # empty: no time, not an error
    assert dec.counters["decode_error"] == 1
