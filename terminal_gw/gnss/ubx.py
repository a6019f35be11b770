"""u-blox UBX: checked frames in, NavMessages out.

pyubx2 decodes the messages of the older solution set (NAV-SOL, NAV-POSLLH, NAV-VELNED) and
the small per-epoch ones (NAV-DOP, NAV-TIMEUTC, NAV-TIMEGPS, NAV-EOE). The messages that
carry most of a receiver's traffic are decoded here from a struct table instead: pyubx2 builds
every field and bit flag as an attribute, which costs about 0.8 ms for a NAV-PVT and 4.6 ms
for a 22-satellite NAV-SAT (measured on this project's build machine), 100-400x a struct
unpack; at 10 Hz with NAV-SAT that would be a good part of a Raspberry Pi core. The tests check
the struct decoding against pyubx2 on real frames.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from terminal_gw.gnss.binary import (
    RANK_HIGH_RATE,
    RANK_PART,
    RANK_SOLUTION,
    BinarySat,
    NavMessage,
    svinfo_sat,
    ubx_sat,
    utc_ms,
)
from terminal_gw.gnss.framer import BinaryFrame

NAV = 0x01
HNR = 0x28

#: NAV-PVT, first 84 bytes (protocol 14+; the last 8 bytes of the 92-byte form hold the
#: vehicle heading and magnetic declination, read separately when present).
NAV_PVT = struct.Struct("<IHBBBBBBIiBBBBiiiiIIiiiiiIIH6x")
NAV_PVT_FIELDS = (
    *("iTOW", "year", "month", "day", "hour", "min", "sec", "valid", "tAcc", "nano"),
    *("fixType", "flags", "flags2", "numSV", "lon", "lat", "height", "hMSL", "hAcc", "vAcc"),
    *("velN", "velE", "velD", "gSpeed", "headMot", "sAcc", "headAcc", "pDOP"),
)
#: HNR-PVT (high-rate navigation, u-blox ADR/UDR), 72 bytes.
HNR_PVT = struct.Struct("<IHBBBBBBiBB2xiiiiiiiiIIII4x")
HNR_PVT_FIELDS = (
    *("iTOW", "year", "month", "day", "hour", "min", "sec", "valid", "nano", "gpsFix"),
    *("flags", "lon", "lat", "height", "hMSL", "gSpeed", "speed", "headMot", "headVeh"),
    *("hAcc", "vAcc", "sAcc", "headAcc"),
)
#: NAV-SAT: head (iTOW, version, numSvs, 2 reserved), then per satellite gnssId, svId,
#: cno dB-Hz, elev deg, azim deg, prRes 0.1 m, flags (bit 3: used for navigation).
NAV_SAT_HEAD = struct.Struct("<IBB2x")
NAV_SAT_ROW = struct.Struct("<BBBbhhI")
#: NAV-SVINFO (u-blox 6-8): head (iTOW, numCh, globalFlags, 2 reserved), then per channel
#: chn, svid (extended NMEA numbering), flags (bit 0: used), quality, cno, elev, azim, prRes cm.
NAV_SVINFO_HEAD = struct.Struct("<IBB2x")
NAV_SVINFO_ROW = struct.Struct("<BBBBBbhi")

#: fixType / gpsFix -> (gpsd mode, gpsd status): 5 time only (surveyed in) is a 3D fix, 4 GNSS
#: + dead reckoning 3D, 1 dead reckoning only 2D, 0 and others no fix (as gpsd).
FIX_TYPE: dict[int, tuple[int, int]] = {1: (2, 5), 2: (2, 1), 3: (3, 1), 4: (3, 6), 5: (3, 7)}
_VALID_DATE_TIME = 0x03
_DGPS = 0x02


def _mode_status(fix_type: int, flags: int, carr_soln: int = 0) -> tuple[int, int]:
    mode, status = FIX_TYPE.get(fix_type, (1, 0))
    if mode >= 2 and status == 1:
        if carr_soln == 2:
            status = 3  # RTK fixed
        elif carr_soln == 1:
            status = 4  # RTK float
        elif flags & _DGPS:
            status = 2
    return mode, status


def _position(f: dict[str, Any], values: dict[str, float | int], mode: int) -> None:
    if mode < 2:
        return
    values["lat"] = f["lat"] * 1e-7
    values["lon"] = f["lon"] * 1e-7
    values["eph"] = f["hAcc"] / 1000.0
    if mode == 3:
        hae, msl = f["height"] / 1000.0, f["hMSL"] / 1000.0
        values["altHAE"] = hae
        values["altMSL"] = msl
        values["geoidSep"] = round(hae - msl, 3)
        values["epv"] = f["vAcc"] / 1000.0
    values["speed"] = f["gSpeed"] / 1000.0
    values["track"] = f["headMot"] * 1e-5


def _nav_pvt(payload: bytes) -> NavMessage:
    if len(payload) < NAV_PVT.size:
        raise ValueError(f"NAV-PVT: {len(payload)} bytes, needs {NAV_PVT.size}")
    f = dict(zip(NAV_PVT_FIELDS, NAV_PVT.unpack_from(payload), strict=True))
    mode, status = _mode_status(f["fixType"], f["flags"], f["flags"] >> 6)
    values: dict[str, float | int] = {"mode": mode, "status": status, "uSat": f["numSV"]}
    _position(f, values, mode)
    if mode == 3:
        values["climb"] = -f["velD"] / 1000.0
    if 0 < f["pDOP"] < 9999:
        values["pdop"] = f["pDOP"] / 100.0
    if len(payload) >= 92 and payload[11] & 0x08:  # validMag
        (mag,) = struct.unpack_from("<h", payload, 88)
        values["magvar"] = mag / 100.0
    t = None
    if f["valid"] & _VALID_DATE_TIME == _VALID_DATE_TIME:
        t = utc_ms(f["year"], f["month"], f["day"], f["hour"], f["min"], f["sec"], f["nano"])
    return NavMessage("ubx", "NAV-PVT", f["iTOW"], RANK_SOLUTION, values, time_ms=t)


def _hnr_pvt(payload: bytes) -> NavMessage:
    if len(payload) < HNR_PVT.size:
        raise ValueError(f"HNR-PVT: {len(payload)} bytes, needs {HNR_PVT.size}")
    f = dict(zip(HNR_PVT_FIELDS, HNR_PVT.unpack_from(payload), strict=True))
    mode, status = _mode_status(f["gpsFix"], f["flags"])
    values: dict[str, float | int] = {"mode": mode, "status": status}
    _position(f, values, mode)
    t = None
    if f["valid"] & _VALID_DATE_TIME == _VALID_DATE_TIME:
        t = utc_ms(f["year"], f["month"], f["day"], f["hour"], f["min"], f["sec"], f["nano"])
    return NavMessage("ubx", "HNR-PVT", f["iTOW"], RANK_HIGH_RATE, values, time_ms=t)


def _nav_sat(payload: bytes) -> NavMessage:
    itow, _version, count = NAV_SAT_HEAD.unpack_from(payload)
    end = NAV_SAT_HEAD.size + NAV_SAT_ROW.size * count
    if len(payload) < end:
        raise ValueError(f"NAV-SAT: {count} satellites do not fit {len(payload)} bytes")
    sats: list[BinarySat] = []
    for gnssid, svid, cno, elev, azim, _res, flags in NAV_SAT_ROW.iter_unpack(
        payload[NAV_SAT_HEAD.size : end]
    ):
        sat = ubx_sat(gnssid, svid)
        if sat is not None:
            sats.append(_sat(sat, azim, elev, cno, bool(flags & 0x08)))
    return NavMessage("ubx", "NAV-SAT", itow, RANK_SOLUTION, sats=tuple(sats))


def _nav_svinfo(payload: bytes) -> NavMessage:
    itow, count, _flags = NAV_SVINFO_HEAD.unpack_from(payload)
    end = NAV_SVINFO_HEAD.size + NAV_SVINFO_ROW.size * count
    if len(payload) < end:
        raise ValueError(f"NAV-SVINFO: {count} channels do not fit {len(payload)} bytes")
    sats: list[BinarySat] = []
    for _chn, svid, flags, _quality, cno, elev, azim, _res in NAV_SVINFO_ROW.iter_unpack(
        payload[NAV_SVINFO_HEAD.size : end]
    ):
        sat = svinfo_sat(svid)
        if sat is not None:
            sats.append(_sat(sat, azim, elev, cno, bool(flags & 0x01)))
    # Ranked below NAV-SAT: a receiver sending both (u-blox 8) reports NAV-SAT's view.
    return NavMessage("ubx", "NAV-SVINFO", itow, RANK_PART, sats=tuple(sats))


def _sat(sat: Any, azim: int, elev: int, cno: int, used: bool) -> BinarySat:
    return BinarySat(
        sat,
        float(azim) if 0 <= azim < 360 else None,
        float(elev) if abs(elev) <= 90 else None,
        float(cno),
        used,
    )


# The messages pyubx2 decodes: (class, id) -> reader of its parsed message.
def _dop(m: Any) -> NavMessage:
    values: dict[str, float | int] = {}
    for attr, name in (("pDOP", "pdop"), ("hDOP", "hdop"), ("vDOP", "vdop")):
        v = float(getattr(m, attr))
        if 0 < v < 99.99:
            values[name] = v
    return NavMessage("ubx", "NAV-DOP", int(m.iTOW), RANK_SOLUTION, values)


def _timeutc(m: Any) -> NavMessage:
    t = None
    if m.validUTC:
        t = utc_ms(m.year, m.month, m.day, m.hour, m.min, m.sec, m.nano)
    return NavMessage("ubx", "NAV-TIMEUTC", int(m.iTOW), RANK_PART, time_ms=t)


def _timegps(m: Any) -> NavMessage:
    return NavMessage(
        "ubx",
        "NAV-TIMEGPS",
        int(m.iTOW),
        RANK_PART,
        gps_week=int(m.week) if m.weekValid and m.towValid else None,
        leap_s=int(m.leapS) if m.leapSValid else None,
    )


def _sol(m: Any) -> NavMessage:
    mode, status = _mode_status(int(m.gpsFix), 0x02 if m.diffSoln else 0)
    if not m.gpsfixOK:
        mode, status = 1, 0
    values: dict[str, float | int] = {"mode": mode, "status": status, "uSat": int(m.numSV)}
    if 0 < float(m.pDOP) < 99.99:
        values["pdop"] = float(m.pDOP)
    week = int(m.week) if m.wknSet and m.towSet else None
    return NavMessage("ubx", "NAV-SOL", int(m.iTOW), RANK_PART, values, gps_week=week)


def _posllh(m: Any) -> NavMessage:
    values: dict[str, float | int] = {
        "lat": float(m.lat),
        "lon": float(m.lon),
        "altHAE": m.height / 1000.0,
        "altMSL": m.hMSL / 1000.0,
        "geoidSep": round((m.height - m.hMSL) / 1000.0, 3),
        "eph": m.hAcc / 1000.0,
        "epv": m.vAcc / 1000.0,
    }
    return NavMessage("ubx", "NAV-POSLLH", int(m.iTOW), RANK_PART, values)


def _velned(m: Any) -> NavMessage:
    values: dict[str, float | int] = {
        "speed": m.gSpeed / 100.0,  # cm/s
        "track": float(m.heading),
        "climb": -m.velD / 100.0,
    }
    return NavMessage("ubx", "NAV-VELNED", int(m.iTOW), RANK_PART, values)


def _eoe(m: Any) -> NavMessage:
    return NavMessage("ubx", "NAV-EOE", int(m.iTOW), RANK_PART, ends_epoch=True)


#: Messages decoded from the struct table above.
STRUCT_DECODERS: dict[tuple[int, int], Callable[[bytes], NavMessage]] = {
    (NAV, 0x07): _nav_pvt,
    (NAV, 0x35): _nav_sat,
    (NAV, 0x30): _nav_svinfo,
    (HNR, 0x00): _hnr_pvt,
}
#: Messages decoded with pyubx2.
PYUBX2_DECODERS: dict[tuple[int, int], Callable[[Any], NavMessage]] = {
    (NAV, 0x04): _dop,
    (NAV, 0x21): _timeutc,
    (NAV, 0x20): _timegps,
    (NAV, 0x06): _sol,
    (NAV, 0x02): _posllh,
    (NAV, 0x12): _velned,
    (NAV, 0x61): _eoe,
}

#: Payload length of each message pyubx2 decodes: it reads a shorter payload as if padded
#: with zeros, so a runt is refused here first.
PYUBX2_LENGTHS: dict[tuple[int, int], int] = {
    (NAV, 0x04): 18,
    (NAV, 0x21): 20,
    (NAV, 0x20): 16,
    (NAV, 0x06): 52,
    (NAV, 0x02): 28,
    (NAV, 0x12): 36,
    (NAV, 0x61): 4,
}


def _parse(raw: bytes) -> Any:
    """pyubx2's parse of a checked frame; its errors become ValueError."""
    # Imported on first use: a receiver that sends none of these (NMEA only, CASIC, or UBX
    # with NAV-PVT and NAV-SAT only) does not pay for loading pyubx2 (about 2 MB).
    from pyubx2 import VALNONE, UBXReader
    from pyubx2.exceptions import (
        UBXMessageError,
        UBXParseError,
        UBXTypeError,
    )

    try:
        return UBXReader.parse(raw, validate=VALNONE)
    except (UBXParseError, UBXMessageError, UBXTypeError) as exc:
        raise ValueError(f"pyubx2: {exc}") from exc


def decode_ubx(frame: BinaryFrame) -> NavMessage | None:
    """The NavMessage of a checked UBX frame; None for a message not used for fixes.

    Raises ValueError or struct.error on a payload that does not fit its layout."""
    key = (frame.msg_class, frame.msg_id)
    own = STRUCT_DECODERS.get(key)
    if own is not None:
        return own(frame.payload)
    lib = PYUBX2_DECODERS.get(key)
    if lib is None:
        return None
    if len(frame.payload) < PYUBX2_LENGTHS[key]:
        raise ValueError(f"UBX {key}: {len(frame.payload)} bytes, needs {PYUBX2_LENGTHS[key]}")
    return lib(_parse(frame.raw))
