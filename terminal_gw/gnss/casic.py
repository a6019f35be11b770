"""CASIC binary (CASIC/ZKW chips: Quectel L76K, ATGM336H): checked frames in, NavMessages out.

No maintained library decodes CASIC, so the layouts are a table here, from the CASIC
multimode receiver protocol specification (V4.2) and checked against real captures. All
fields are little-endian; every NAV message starts with `runTime` (U4, ms since power-on),
which stamps its epoch.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Any

from terminal_gw.gnss.binary import (
    RANK_PART,
    RANK_SOLUTION,
    BinarySat,
    NavMessage,
    ubx_sat,
    utc_ms,
)
from terminal_gw.gnss.framer import BinaryFrame
from terminal_gw.gnss.numbering import GNSS_BEIDOU, GNSS_GLONASS, GNSS_GPS


class CasicLayout:
    """One message's fixed part: name, struct format and field names (in order)."""

    def __init__(self, name: str, fmt: str, fields: str) -> None:
        self.name = name
        self.struct = struct.Struct("<" + fmt)
        self.fields = tuple(fields.split())
        if len(self.fields) != len(self.struct.unpack(bytes(self.struct.size))):
            raise ValueError(f"{name}: fields do not match the format")

    def unpack(self, payload: bytes) -> dict[str, Any]:
        """Field name -> value of the fixed part (the payload must be long enough)."""
        return dict(zip(self.fields, self.struct.unpack_from(payload), strict=True))


#: (class, id) -> layout of the fixed part. `x` bytes are reserved.
LAYOUTS: dict[tuple[int, int], CasicLayout] = {
    (0x01, 0x01): CasicLayout("NAV-DOP", "I6f", "runTime pDop hDop vDop nDop eDop tDop"),
    (0x01, 0x03): CasicLayout(
        "NAV-PV",
        "IBBBBBBBx f dd ff ff fffff f ff",
        "runTime posValid velValid system numSV numSVGPS numSVBDS numSVGLN "
        "pDop lon lat height sepGeoid hAcc vAcc "
        "velN velE velU speed3D speed2D heading sAcc cAcc",
    ),
    (0x01, 0x10): CasicLayout(
        "NAV-TIMEUTC",
        "Iff HHBBBBBBBB",
        "runTime tAcc msErr ms year month day hour min sec valid timeSrc dateValid",
    ),
    # NAV-GPSINFO / BDSINFO / GLNINFO: this head, then numViewSv rows of SAT_ROW.
    (0x01, 0x20): CasicLayout("NAV-GPSINFO", "IBBBx", "runTime numViewSv numFixSv system"),
    (0x01, 0x21): CasicLayout("NAV-BDSINFO", "IBBBx", "runTime numViewSv numFixSv system"),
    (0x01, 0x22): CasicLayout("NAV-GLNINFO", "IBBBx", "runTime numViewSv numFixSv system"),
}
#: One satellite row of NAV-*INFO: channel (0xFF: not tracked), svid, flags (bit 0: used in
#: the solution), quality, C/N0 dB-Hz, elevation deg, azimuth deg, pseudorange residual m.
SAT_ROW = struct.Struct("<BBBBBbhf")
_SAT_INFO_GNSS = {0x20: GNSS_GPS, 0x21: GNSS_BEIDOU, 0x22: GNSS_GLONASS}

#: NAV-PV posValid / velValid: 6 2D, 7 3D, 8 GNSS + dead reckoning; 0-5 no usable solution.
FIX_2D, FIX_3D, FIX_GNSSDR = 6, 7, 8
#: NAV-TIMEUTC valid bits: time of week, week and leap seconds all valid.
TIME_VALID = 0x07
#: NAV-PV cAcc when the receiver has no course accuracy.
CACC_UNKNOWN = 1.0e6


def _sigma(variance: float) -> float | None:
    # The accuracies are variances; 0 means "not computed", not a perfect fix.
    return round(math.sqrt(variance), 3) if variance > 0 and math.isfinite(variance) else None


def _pv(f: dict[str, Any], _payload: bytes) -> NavMessage:
    pos, vel = f["posValid"], f["velValid"]
    values: dict[str, float | int] = {}
    if pos in (FIX_2D, FIX_3D, FIX_GNSSDR):
        values["mode"] = 2 if pos == FIX_2D else 3
        values["status"] = 6 if pos == FIX_GNSSDR else 1
        values["lat"], values["lon"] = f["lat"], f["lon"]
        eph = _sigma(f["hAcc"])
        if eph is not None:
            values["eph"] = eph
        if pos != FIX_2D:
            hae, sep = f["height"], f["sepGeoid"]
            values["altHAE"] = round(hae, 4)
            values["geoidSep"] = round(sep, 3)
            values["altMSL"] = round(hae - sep, 4)
            epv = _sigma(f["vAcc"])
            if epv is not None:
                values["epv"] = epv
    else:
        values["mode"] = 1
        values["status"] = 0
    if vel in (FIX_2D, FIX_3D, FIX_GNSSDR) and pos in (FIX_2D, FIX_3D, FIX_GNSSDR):
        values["speed"] = round(f["speed2D"], 3)
        values["track"] = round(f["heading"], 4)
        if vel != FIX_2D:
            values["climb"] = round(f["velU"], 3)
    if 0 < f["pDop"] < 99:
        values["pdop"] = round(f["pDop"], 2)
    values["uSat"] = f["numSV"]
    return NavMessage("casic", "NAV-PV", f["runTime"], RANK_SOLUTION, values)


def _dop(f: dict[str, Any], _payload: bytes) -> NavMessage:
    values: dict[str, float | int] = {}
    for key, name in (("pDop", "pdop"), ("hDop", "hdop"), ("vDop", "vdop")):
        if 0 < f[key] < 99:
            values[name] = round(f[key], 2)
    return NavMessage("casic", "NAV-DOP", f["runTime"], RANK_PART, values)


def _timeutc(f: dict[str, Any], _payload: bytes) -> NavMessage:
    t = None
    if f["valid"] & TIME_VALID == TIME_VALID and f["dateValid"] != 0:
        t = utc_ms(f["year"], f["month"], f["day"], f["hour"], f["min"], f["sec"])
        if t is not None:
            t += f["ms"]
    return NavMessage("casic", "NAV-TIMEUTC", f["runTime"], RANK_PART, time_ms=t)


def _satinfo(gnssid: int, name: str) -> Callable[[dict[str, Any], bytes], NavMessage]:
    def decode(f: dict[str, Any], payload: bytes) -> NavMessage:
        count = f["numViewSv"]
        if len(payload) < 8 + SAT_ROW.size * count:
            raise ValueError(f"{name}: {count} satellites do not fit {len(payload)} bytes")
        sats: list[BinarySat] = []
        for _chn, svid, flags, _quality, cno, elev, azim, _res in SAT_ROW.iter_unpack(
            payload[8 : 8 + SAT_ROW.size * count]
        ):
            sat = ubx_sat(gnssid, svid)
            if sat is None:
                continue
            sats.append(
                BinarySat(
                    sat,
                    float(azim) if 0 <= azim < 360 else None,
                    float(elev) if abs(elev) <= 90 else None,
                    float(cno),
                    bool(flags & 0x01),
                )
            )
        return NavMessage(
            "casic", name, f["runTime"], RANK_PART, sats=tuple(sats), sats_part=gnssid
        )

    return decode


_DECODERS: dict[tuple[int, int], Callable[[dict[str, Any], bytes], NavMessage]] = {
    (0x01, 0x01): _dop,
    (0x01, 0x03): _pv,
    (0x01, 0x10): _timeutc,
    **{(0x01, i): _satinfo(g, LAYOUTS[(0x01, i)].name) for i, g in _SAT_INFO_GNSS.items()},
}


def decode_casic(frame: BinaryFrame) -> NavMessage | None:
    """The NavMessage of a checked CASIC frame; None for a message not used for fixes.

    Raises ValueError (or struct.error) when the payload is shorter than its layout."""
    key = (frame.msg_class, frame.msg_id)
    layout = LAYOUTS.get(key)
    if layout is None:
        return None
    payload = frame.payload
    if len(payload) < layout.struct.size:
        raise ValueError(f"{layout.name}: {len(payload)} bytes, needs {layout.struct.size}")
    return _DECODERS[key](layout.unpack(payload), payload)
