"""Satellite numbering: NMEA talker / system id / satellite number to gpsd's scheme.

Receivers number satellites in several ways (BeiDou alone: 1-63 with system id 4, 201-263,
401-437). Everything is normalised to gpsd's convention so dashboards see one scheme:
(gnssid, svid, PRN) with gnssid as in u-blox/gpsd (0 GPS, 1 SBAS, 2 Galileo, 3 BeiDou,
5 QZSS, 6 GLONASS, 7 NavIC) and the PRN gpsd prints (BeiDou 400+svid, Galileo 300+svid,
GLONASS 64+svid, QZSS 192+svid, NavIC 500+svid, GPS and SBAS NMEA ids as sent).
"""

from __future__ import annotations

from typing import NamedTuple

# NMEA 4.10 system ids (GSA field 18, Quectel PQ trailing field).
SYS_UNKNOWN = 0
SYS_GPS = 1
SYS_GLONASS = 2
SYS_GALILEO = 3
SYS_BEIDOU = 4
SYS_QZSS = 5
SYS_NAVIC = 6

#: Talker id -> NMEA system id; GN (combined) says nothing about the system.
TALKER_SYSTEM: dict[str, int] = {
    "GP": SYS_GPS,
    "GL": SYS_GLONASS,
    "GA": SYS_GALILEO,
    "GB": SYS_BEIDOU,
    "BD": SYS_BEIDOU,
    "GQ": SYS_QZSS,
    "QZ": SYS_QZSS,
    "GI": SYS_NAVIC,
    "GN": SYS_UNKNOWN,
}

# gpsd / u-blox gnssid values.
GNSS_GPS = 0
GNSS_SBAS = 1
GNSS_GALILEO = 2
GNSS_BEIDOU = 3
GNSS_QZSS = 5
GNSS_GLONASS = 6
GNSS_NAVIC = 7

#: gnssid -> short constellation name used in `Fix.used`.
GNSS_NAMES: dict[int, str] = {
    GNSS_GPS: "gps",
    GNSS_SBAS: "sbas",
    GNSS_GALILEO: "gal",
    GNSS_BEIDOU: "bds",
    GNSS_QZSS: "qzss",
    GNSS_GLONASS: "glo",
    GNSS_NAVIC: "navic",
}


class SatId(NamedTuple):
    """A satellite in gpsd's numbering."""

    gnssid: int
    svid: int
    prn: int


# Satellite number ranges when the system is not known from talker or system id:
# (first, last, gnssid, svid offset, PRN base or None to keep the NMEA number).
_RANGES: tuple[tuple[int, int, int, int, int | None], ...] = (
    (1, 32, GNSS_GPS, 0, None),
    (33, 64, GNSS_SBAS, 87, None),  # NMEA 33-64 = SBAS PRN 120-151
    (65, 96, GNSS_GLONASS, -64, None),
    (120, 158, GNSS_SBAS, 0, None),
    (193, 199, GNSS_QZSS, -192, None),
    (201, 263, GNSS_BEIDOU, -200, 400),  # SiRF, Skytraq, Quectel LC79D, Telit
    (301, 336, GNSS_GALILEO, -300, None),
    (401, 463, GNSS_BEIDOU, -400, None),  # u-blox "extended" NMEA 2.x-4.0
)

# Known system: (gnssid, PRN base, max svid, offsets accepted for vendor numbering).
_SYSTEMS: dict[int, tuple[int, int, int, tuple[int, ...]]] = {
    SYS_GLONASS: (GNSS_GLONASS, 64, 32, (64,)),
    SYS_GALILEO: (GNSS_GALILEO, 300, 36, (100, 300)),
    SYS_BEIDOU: (GNSS_BEIDOU, 400, 63, (200, 400)),
    SYS_QZSS: (GNSS_QZSS, 192, 10, (192,)),
    SYS_NAVIC: (GNSS_NAVIC, 500, 14, ()),
}


def _by_range(num: int) -> SatId | None:
    for first, last, gnssid, offset, base in _RANGES:
        if first <= num <= last:
            svid = num + offset
            prn = num if base is None else base + svid
            return SatId(gnssid, svid, prn)
    return None


def normalise(num: int, system: int) -> SatId | None:
    """gpsd numbering of NMEA satellite `num` from `system` (0 = unknown); None if invalid."""
    if num < 1:
        return None
    spec = _SYSTEMS.get(system)
    if spec is None:
        # GPS talker/system id carries SBAS and QZSS too: the number range decides.
        return _by_range(num)
    gnssid, base, max_svid, offsets = spec
    svid = num
    for offset in offsets:
        if offset < num <= offset + max_svid:
            svid = num - offset
            break
    if not 1 <= svid <= max_svid:
        return None
    return SatId(gnssid, svid, base + svid)


def system_of(talker: str, system_field: str | None = None) -> int:
    """NMEA system id from a sentence's system-id field when it is a valid integer, else talker."""
    # SiRF-TriG writes a float here; only an integer 1-6 is a system id.
    if system_field and system_field.isdigit() and 1 <= int(system_field) <= SYS_NAVIC:
        return int(system_field)
    return TALKER_SYSTEM.get(talker, SYS_UNKNOWN)
