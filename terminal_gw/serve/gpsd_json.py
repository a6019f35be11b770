"""gpsd's JSON protocol as data: the objects it sends and the requests it reads.

Pure: payload models in, JSON lines out; request text in, parsed requests out. The objects
follow gpsd 3.22 (Debian 12's, protocol 3.14): the same classes, field names, field order and
number formats, so a client written for gpsd reads them unchanged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from terminal_gw.models import Fix, Sky

#: The gpsd release and protocol version this server speaks (Debian 12's gpsd).
GPSD_RELEASE = "3.22"
PROTO_MAJOR = 3
PROTO_MINOR = 14

#: gpsd refuses a request line longer than this (its GPS_JSON_COMMAND_MAX is 80; WATCH with a
#: device path runs longer, so allow more, but a bounded amount).
MAX_REQUEST_BYTES = 4096

#: TPV fields: (name, format) in gpsd's order; a field the fix lacks is left out.
_TPV_FIELDS: tuple[tuple[str, str], ...] = (
    ("lat", "{:.9f}"),
    ("lon", "{:.9f}"),
    ("altHAE", "{:.4f}"),
    ("altMSL", "{:.4f}"),
    ("alt", "{:.4f}"),  # gpsd 3.22 still sends the old name beside altMSL
    ("epv", "{:.3f}"),
    ("track", "{:.4f}"),
    ("magvar", "{:.1f}"),
    ("speed", "{:.3f}"),
    ("climb", "{:.3f}"),
    ("geoidSep", "{:.3f}"),
    ("eph", "{:.3f}"),
)

_SKY_DOPS = ("vdop", "hdop", "pdop")


def _num(fmt: str, value: float | None) -> str | None:
    if value is None or not math.isfinite(value):
        return None
    return fmt.format(value)


def _obj(parts: Iterable[str]) -> bytes:
    return ("{" + ",".join(parts) + "}\r\n").encode()


def _str(value: str) -> str:
    return json.dumps(value, ensure_ascii=True)


def tpv_line(fix: Fix, device: str) -> bytes:
    """A TPV report as gpsd sends it, one line with CRLF.

    `time` is sent only when it came from the receiver (`clock` is `gnss`): a client may set
    a clock from it, and a time the system clock filled in must not pass for GNSS time.
    """
    parts = ['"class":"TPV"', f'"device":{_str(device)}']
    if fix.status is not None:
        parts.append(f'"status":{fix.status}')
    parts.append(f'"mode":{fix.mode}')
    if fix.time is not None and fix.clock == "gnss":
        parts.append(f'"time":{_str(fix.time)}')
    values = {
        "lat": fix.lat,
        "lon": fix.lon,
        "altHAE": fix.altHAE,
        "altMSL": fix.altMSL,
        "alt": fix.altMSL,
        "epv": fix.epv,
        "track": fix.track,
        "magvar": fix.magvar,
        "speed": fix.speed,
        "climb": fix.climb,
        "geoidSep": fix.geoidSep,
        "eph": fix.eph,
    }
    for name, fmt in _TPV_FIELDS:
        text = _num(fmt, values[name])
        if text is not None:
            parts.append(f'"{name}":{text}')
    return _obj(parts)


def sky_line(sky: Sky, device: str) -> bytes:
    """A SKY report as gpsd sends it, one line with CRLF.

    Satellites carry gpsd's numbering (PRN, gnssid, svid); el, az and ss only when the
    receiver gave them. `sigid` is left out: the payload's is the NMEA signal id, which gpsd
    numbers differently.
    """
    parts = ['"class":"SKY"', f'"device":{_str(device)}']
    if sky.time is not None and sky.clock == "gnss":
        parts.append(f'"time":{_str(sky.time)}')
    for name in _SKY_DOPS:
        text = _num("{:.2f}", getattr(sky, name))
        if text is not None:
            parts.append(f'"{name}":{text}')
    parts.append(f'"nSat":{sky.nSat}')
    parts.append(f'"uSat":{sky.uSat}')
    sats: list[str] = []
    for s in sky.satellites:
        sat = [f'"PRN":{s.PRN}']
        for name, value in (("el", s.el), ("az", s.az), ("ss", s.ss)):
            text = _num("{:.1f}", value)
            if text is not None:
                sat.append(f'"{name}":{text}')
        sat.append(f'"used":{"true" if s.used else "false"}')
        sat.append(f'"gnssid":{s.gnssid}')
        sat.append(f'"svid":{s.svid}')
        sats.append("{" + ",".join(sat) + "}")
    parts.append('"satellites":[' + ",".join(sats) + "]")
    return _obj(parts)


def version_line(rev: str) -> bytes:
    """The VERSION object: sent on connect and in answer to ?VERSION."""
    return _obj(
        [
            '"class":"VERSION"',
            f'"release":{_str(GPSD_RELEASE)}',
            f'"rev":{_str(rev)}',
            f'"proto_major":{PROTO_MAJOR}',
            f'"proto_minor":{PROTO_MINOR}',
        ]
    )


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What a DEVICE object says of the receiver."""

    path: str
    activated: str | None = None
    """ISO time the receiver's data was first seen; None while nothing came."""
    bps: int | None = None
    seen_gps: bool = False


def _device_parts(dev: DeviceInfo) -> list[str]:
    parts = ['"class":"DEVICE"', f'"path":{_str(dev.path)}']
    if dev.activated is None:
        return parts
    if dev.seen_gps:
        parts.append('"driver":"NMEA0183"')
    parts.append(f'"activated":{_str(dev.activated)}')
    if dev.seen_gps:
        parts.append('"flags":1')
    parts.append('"native":0')
    if dev.bps is not None:
        parts.append(f'"bps":{dev.bps}')
    parts += ['"parity":"N"', '"stopbits":1', '"cycle":1.00']
    return parts


def device_line(dev: DeviceInfo) -> bytes:
    """The DEVICE object (answer to ?DEVICE)."""
    return _obj(_device_parts(dev))


def devices_line(devices: Sequence[DeviceInfo]) -> bytes:
    """The DEVICES object (answer to ?DEVICES, first part of the answer to ?WATCH)."""
    inner = ",".join("{" + ",".join(_device_parts(d)) + "}" for d in devices)
    return _obj(['"class":"DEVICES"', f'"devices":[{inner}]'])


@dataclass(frozen=True, slots=True)
class WatchPolicy:
    """A client's WATCH settings; a ?WATCH changes only the keys it gives."""

    enable: bool = False
    json: bool = False
    nmea: bool = False
    raw: int = 0
    scaled: bool = False
    timing: bool = False
    split24: bool = False
    pps: bool = False
    device: str | None = None

    @property
    def wants_json(self) -> bool:
        """TPV and SKY reports are sent."""
        return self.enable and self.json

    @property
    def wants_sentences(self) -> bool:
        """The receiver's sentences are passed through (nmea, or raw 1 and 2)."""
        return self.enable and (self.nmea or self.raw > 0)


_WATCH_BOOLS = ("enable", "json", "nmea", "scaled", "timing", "split24", "pps")


def apply_watch(policy: WatchPolicy, args: dict[str, Any]) -> WatchPolicy:
    """The policy after a `?WATCH={...}`; ValueError (gpsd's words) on a wrong type.

    As in gpsd, `enable` is true unless the request says otherwise, and keys gpsd does not
    know are ignored.
    """
    changes: dict[str, Any] = {"enable": True}
    for key, value in args.items():
        if key in _WATCH_BOOLS:
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be true or false")
            changes[key] = value
        elif key == "raw":
            number = int(value) if isinstance(value, bool) else value
            if not isinstance(number, int) or not 0 <= number <= 2:
                raise ValueError("raw must be 0, 1 or 2")
            changes[key] = number
        elif key == "device":
            if not isinstance(value, str):
                raise ValueError("device must be a string")
            changes[key] = value
    return replace(policy, **changes)


def watch_line(policy: WatchPolicy) -> bytes:
    """The WATCH object: the client's settings now."""

    def b(v: bool) -> str:
        return "true" if v else "false"

    parts = [
        '"class":"WATCH"',
        f'"enable":{b(policy.enable)}',
        f'"json":{b(policy.json)}',
        f'"nmea":{b(policy.nmea)}',
        f'"raw":{policy.raw}',
        f'"scaled":{b(policy.scaled)}',
        f'"timing":{b(policy.timing)}',
        f'"split24":{b(policy.split24)}',
        f'"pps":{b(policy.pps)}',
    ]
    if policy.device is not None:
        parts.append(f'"device":{_str(policy.device)}')
    return _obj(parts)


def poll_line(now_iso: str, active: int, tpv: bytes | None, sky: bytes | None) -> bytes:
    """The POLL object: the last TPV and SKY, as gpsd answers ?POLL."""

    def inner(line: bytes | None) -> str:
        return "" if line is None else line.decode().rstrip("\r\n")

    return _obj(
        [
            '"class":"POLL"',
            f'"time":{_str(now_iso)}',
            f'"active":{active}',
            f'"tpv":[{inner(tpv)}]',
            '"gst":[]',
            f'"sky":[{inner(sky)}]',
        ]
    )


def error_line(message: str) -> bytes:
    """An ERROR object."""
    return _obj(['"class":"ERROR"', f'"message":{_str(message)}'])


@dataclass(frozen=True, slots=True)
class Request:
    """One client request: `?NAME;` or `?NAME={json};`."""

    name: str
    args: dict[str, Any] | None = None
    error: str | None = None
    """Why the request cannot be read (gpsd's ERROR message), or None."""
    text: str = ""
    """The request as sent (for the ERROR of an unknown one)."""


@dataclass(slots=True)
class RequestReader:
    """Splits what a client sends into requests; bounded, never raises on input.

    A request is `?` + name, then `=` + a JSON object, then `;` or a line end. Text outside a
    request is skipped, as gpsd does. A request still missing its end waits for more bytes;
    a line longer than MAX_REQUEST_BYTES is refused.
    """

    _buf: str = ""
    overlong: int = field(default=0)

    def feed(self, data: bytes) -> list[Request]:
        """Requests completed by `data`, in order."""
        self._buf += data.decode("latin-1")
        out: list[Request] = []
        while True:
            nl = self._buf.find("\n")
            if nl < 0:
                break
            line, self._buf = self._buf[:nl], self._buf[nl + 1 :]
            out.extend(_parse_line(line, final=True)[0])
        # A request ended by `;` (or a whole JSON object) with no line end yet: gpsd answers
        # it at once, and some clients never send a line end.
        if self._buf:
            reqs, rest = _parse_line(self._buf, final=False)
            out.extend(reqs)
            self._buf = rest
        if len(self._buf) > MAX_REQUEST_BYTES:
            self.overlong += 1
            out.append(Request("", error="request too long", text=self._buf[:80]))
            self._buf = ""
        return out


def _parse_line(line: str, *, final: bool) -> tuple[list[Request], str]:
    """Requests in `line`, and the unfinished rest (only when not `final`)."""
    out: list[Request] = []
    pos = 0
    n = len(line)
    decoder = json.JSONDecoder()
    while pos < n:
        ch = line[pos]
        if ch != "?":
            q = line.find("?", pos)
            if q < 0:
                return out, ""
            pos = q
            continue
        start = pos
        end = pos + 1
        while end < n and line[end].isalpha():
            end += 1
        name = line[pos + 1 : end].upper()
        if end < n and line[end] == "=":
            try:
                args, after = decoder.raw_decode(line, end + 1)
            except json.JSONDecodeError as exc:
                if not final:
                    return out, line[start:]
                out.append(Request(name, error=exc.msg, text=line[start:]))
                return out, ""
            if not isinstance(args, dict):
                out.append(Request(name, error="expected a JSON object", text=line[start:]))
                return out, ""
            pos = after
        elif (end < n and line[end] in ";\r \t") or (end >= n and final):
            args = None
            pos = end
        elif end >= n:
            return out, line[start:]
        else:
            # `?FOO,bar`: not a request gpsd knows; say so with the text.
            args = None
            stop = line.find(";", end)
            pos = n if stop < 0 else stop
            out.append(Request(name, error="unrecognized", text=line[start : pos + 1]))
            pos += 1
            continue
        while pos < n and line[pos] in "; \t\r":
            pos += 1
        out.append(Request(name, args=args, text=line[start:pos]))
    return out, ""
