"""The gpsd server's requests and replies over a real socket, against what gpsd 3.22 sends.

The gpsd lines below were printed by Debian 12's gpsd 3.22 (under gpsfake, fed
ublox-neo-m9n-nmea.log) to the same requests: the keys and their order must match.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from terminal_gw.config import GpsdServerConfig
from terminal_gw.gnss.framer import BinaryFrame, Framer
from terminal_gw.logs import get_logger
from terminal_gw.models import Fix, Satellite, Sky
from terminal_gw.serve.gpsd_server import GpsdServer
from tests.waiting import wait_until

GPSD_VERSION = '{"class":"VERSION","release":"3.22","rev":"3.22","proto_major":3,"proto_minor":14}'
GPSD_DEVICES_IDLE = '{"class":"DEVICES","devices":[{"class":"DEVICE","path":"/dev/pts/1"}]}'
GPSD_DEVICES = (
    '{"class":"DEVICES","devices":[{"class":"DEVICE","path":"/dev/pts/1","driver":"NMEA0183",'
    '"activated":"2026-12-02T17:03:09.390Z","flags":1,"native":0,"bps":4800,"parity":"N",'
    '"stopbits":1,"cycle":1.00}]}'
)
GPSD_WATCH = (
    '{"class":"WATCH","enable":true,"json":true,"nmea":false,"raw":0,"scaled":false,'
    '"timing":false,"split24":false,"pps":false}'
)
GPSD_TPV = (
    '{"class":"TPV","device":"/dev/pts/3","status":2,"mode":3,"time":"2020-07-11T22:37:46.000Z",'
    '"ept":0.005,"lat":38.110494333,"lon":-122.626897333,"altHAE":53.5000,"altMSL":83.0000,'
    '"alt":83.0000,"epx":1.000,"epy":1.000,"epv":3.000,"magvar":13.4,"speed":0.031,"eps":2.00,'
    '"epc":6.10,"geoidSep":-29.500,"eph":2.660,"sep":4.940}'
)
GPSD_POLL_KEYS = ["class", "time", "active", "tpv", "gst", "sky"]

SENTENCE = b"$GNGLL,3806.62964,N,12237.61382,W,223745.00,A,D*6C"
FIX = Fix(
    time="2020-07-11T22:37:46.000Z",
    mode=3,
    status=2,
    lat=38.110494333,
    lon=-122.626897333,
    altHAE=53.5,
    altMSL=83.0,
    geoidSep=-29.5,
    speed=0.031,
    epv=3.0,
    eph=2.66,
    magvar=13.4,
    hdop=0.56,
    used={"gps": 8},
)
SKY = Sky(
    time="2020-07-11T22:37:46.000Z",
    satellites=[
        Satellite(PRN=13, gnssid=0, svid=13, az=62.0, el=22.0, ss=23.0, used=True),
        Satellite(PRN=5, gnssid=0, svid=5, az=47.0, el=1.0, used=False),
        Satellite(PRN=427, gnssid=3, svid=27, az=59.0, el=78.0, ss=44.0, used=True),
    ],
    nSat=3,
    uSat=2,
    hdop=0.54,
)


def keys(line: str) -> list[str]:
    return list(json.loads(line))


class Client:
    """A raw TCP client of the server: requests out, reply lines in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, text: bytes) -> None:
        self.writer.write(text)
        await self.writer.drain()

    async def line(self) -> str:
        async with asyncio.timeout(10):
            raw = await self.reader.readline()
        assert raw.endswith(b"\r\n"), raw  # gpsd's line end; its Python library needs it
        return raw.decode()[:-2]

    async def obj(self) -> dict[str, Any]:
        return dict(json.loads(await self.line()))

    async def closed(self) -> bool:
        async with asyncio.timeout(10):
            return await self.reader.read() == b""


@asynccontextmanager
async def server(**cfg: Any) -> AsyncIterator[GpsdServer]:
    config = GpsdServerConfig(enabled=True, port=0, **cfg)
    srv = GpsdServer(config, device_path="/dev/gnss0", bps=lambda: 9600, log=get_logger("t"))
    task = asyncio.create_task(srv.run(), name="gpsd server")
    try:
        await wait_until(lambda: srv.port != 0, what="listening")
        yield srv
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@asynccontextmanager
async def client(srv: GpsdServer) -> AsyncIterator[Client]:
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    try:
        yield Client(reader, writer)
    finally:
        writer.close()
        await asyncio.gather(writer.wait_closed(), return_exceptions=True)


def sentence() -> Any:
    (s,) = Framer().feed(SENTENCE + b"\r\n")
    return s


async def test_greeting_and_idle_replies_are_gpsd_s() -> None:
    async with server() as srv, client(srv) as c:
        version = await c.line()
        assert keys(version) == keys(GPSD_VERSION)
        assert json.loads(version)["proto_major"] == 3
        assert json.loads(version)["proto_minor"] == 14
        await c.send(b"?VERSION;\n")
        assert await c.line() == version
        # No data from the receiver yet: gpsd lists the device by its path only.
        await c.send(b"?DEVICES;\n")
        idle = await c.obj()
        assert list(idle["devices"][0]) == list(json.loads(GPSD_DEVICES_IDLE)["devices"][0])
        assert idle["devices"][0]["path"] == "/dev/gnss0"
        await c.send(b"?POLL;\n")
        poll = await c.obj()
        assert list(poll) == GPSD_POLL_KEYS
        assert (poll["active"], poll["tpv"], poll["sky"]) == (0, [], [])
        await c.send(b"?WATCH;\n")
        assert (await c.obj())["class"] == "DEVICES"
        watch = await c.obj()
        assert watch["enable"] is False
        assert list(watch) == keys(GPSD_WATCH)


async def test_watch_json_then_nmea_then_off() -> None:
    async with server() as srv, client(srv) as c:
        await c.line()
        srv.on_sentence(sentence())
        srv.on_payload(FIX)  # nobody watches yet: nothing is sent
        await c.send(b'?WATCH={"enable":true,"json":true};\n')
        devices = await c.obj()
        assert list(devices["devices"][0]) == list(json.loads(GPSD_DEVICES)["devices"][0])
        assert devices["devices"][0]["bps"] == 9600
        watch = await c.line()
        assert watch == GPSD_WATCH
        srv.on_sentence(sentence())  # json only: no sentence
        srv.on_payload(FIX)
        srv.on_payload(SKY)
        tpv = await c.line()
        gpsd_tpv = keys(GPSD_TPV)
        ours = keys(tpv)
        # The same keys in the same order, less those gpsd derives and we do not send.
        assert ours == [k for k in gpsd_tpv if k in ours]
        assert set(gpsd_tpv) - set(ours) == {"ept", "epx", "epy", "eps", "epc", "sep"}
        assert '"lat":38.110494333,"lon":-122.626897333,"altHAE":53.5000' in tpv
        assert "hdop" not in tpv  # payload fields that are not gpsd's TPV stay out
        sky = await c.obj()
        assert sky["class"] == "SKY"
        assert sky["satellites"][1] == {
            "PRN": 5,
            "el": 1.0,
            "az": 47.0,
            "used": False,
            "gnssid": 0,
            "svid": 5,
        }
        assert (sky["nSat"], sky["uSat"], sky["hdop"]) == (3, 2, 0.54)

        await c.send(b'?WATCH={"nmea":true};\n')
        await c.obj()
        assert (await c.obj())["nmea"] is True
        srv.on_sentence(sentence())
        assert (await c.line()).encode() == SENTENCE

        await c.send(b'?WATCH={"enable":false};\n')
        await c.obj()
        off = await c.obj()
        assert (off["enable"], off["json"], off["nmea"]) == (False, True, True)  # as gpsd
        srv.on_sentence(sentence())
        srv.on_payload(FIX)
        await c.send(b"?VERSION;\n")
        assert (await c.obj())["class"] == "VERSION"  # nothing came in between

        await c.send(b"?POLL;\n")
        poll = await c.obj()
        assert poll["active"] == 1
        assert poll["tpv"][0]["lat"] == FIX.lat
        assert poll["sky"][0]["uSat"] == 2


async def test_raw_watch_gets_sentences_as_received() -> None:
    async with server() as srv, client(srv) as c:
        await c.line()
        await c.send(b'?WATCH={"enable":true,"raw":1};\n')
        await c.obj()
        assert (await c.obj())["raw"] == 1
        srv.on_sentence(sentence())
        srv.on_payload(FIX)  # raw without json: no TPV
        srv.on_sentence(sentence())
        assert (await c.line()).encode() == SENTENCE
        assert (await c.line()).encode() == SENTENCE


async def test_bad_requests_answered_with_gpsd_errors() -> None:
    async with server() as srv, client(srv) as c:
        await c.line()
        await c.send(b"?FOO;\n")
        assert await c.obj() == {"class": "ERROR", "message": "Unrecognized request '?FOO;'"}
        await c.send(b'?WATCH={"enable":"yes"}\n')
        err = await c.obj()
        assert err["class"] == "ERROR"
        assert err["message"].startswith("Invalid WATCH:")
        assert (await c.obj())["class"] == "DEVICES"
        assert (await c.obj())["enable"] is False  # unchanged
        await c.send(b"?WATCH={garbage\n")
        assert (await c.obj())["message"].startswith("Invalid WATCH:")
        await c.obj()
        await c.obj()
        await c.send(b"hello there\n")  # not a request: ignored, as gpsd does
        await c.send(b"?" + b"W" * 5000)
        assert (await c.obj())["class"] == "ERROR"  # too long: refused, not buffered on
        await c.send(b"\n?VERSION;\n")
        assert (await c.obj())["class"] == "VERSION"


async def test_requests_split_at_every_byte() -> None:
    text = b'?VERSION;?WATCH={"enable":true,"json":true};\n?DEVICES;'
    for cut in range(1, len(text)):
        async with server() as srv, client(srv) as c:
            await c.line()
            await c.send(text[:cut])
            await c.send(text[cut:])
            classes = [(await c.obj())["class"] for _ in range(4)]
            assert classes == ["VERSION", "DEVICES", "WATCH", "DEVICES"], cut


async def test_several_clients_each_with_its_own_watch() -> None:
    async with server() as srv, client(srv) as a, client(srv) as b, client(srv) as other:
        for c in (a, b, other):
            await c.line()
        await a.send(b'?WATCH={"enable":true,"json":true};\n')
        await b.send(b'?WATCH={"enable":true,"nmea":true};\n')
        await other.send(b'?WATCH={"enable":true,"json":true,"device":"/dev/ttyUSB9"};\n')
        for c in (a, b, other):
            await c.obj()
            await c.obj()
        srv.on_sentence(sentence())
        srv.on_payload(FIX)
        assert (await a.obj())["class"] == "TPV"
        assert (await b.line()).encode() == SENTENCE
        await other.send(b"?VERSION;\n")
        assert (await other.obj())["class"] == "VERSION"  # another device: nothing for it


async def test_clients_past_max_clients_are_refused() -> None:
    async with server(max_clients=2) as srv, client(srv) as a, client(srv) as b:
        await a.line()
        await b.line()
        async with client(srv) as c:
            assert await c.closed()
        assert srv.counters["refused_max_clients"] == 1
        async with client(srv) as a_again:
            assert await a_again.closed()


async def test_time_from_the_system_clock_is_not_passed_on() -> None:
    async with server() as srv, client(srv) as c:
        await c.line()
        await c.send(b'?WATCH={"enable":true,"json":true};\n')
        await c.obj()
        await c.obj()
        srv.on_payload(FIX.model_copy(update={"clock": "system", "mode": 1, "lat": None}))
        tpv = await c.obj()
        assert "time" not in tpv
        assert "lat" not in tpv
        assert tpv["mode"] == 1


# UBX NAV-EOE (class 0x01, id 0x61) with a 4-byte iTOW, checksum included.
UBX_FRAME = bytes.fromhex("b5620161040000000000") + bytes([0x66, 0xC7])


def binary_frame() -> Any:
    framer = Framer()
    frames = framer.feed(UBX_FRAME) + framer.flush()
    (frame,) = [f for f in frames if isinstance(f, BinaryFrame)]
    return frame


async def test_raw_watchers_get_binary_frames_as_gpsd_gives_them() -> None:
    frame = binary_frame()
    assert frame.raw == UBX_FRAME
    async with server() as srv, client(srv) as hexed, client(srv) as verbatim, client(srv) as nmea:
        for c, watch in (
            (hexed, b'{"enable":true,"raw":1}'),
            (verbatim, b'{"enable":true,"raw":2}'),
            (nmea, b'{"enable":true,"nmea":true}'),
        ):
            await c.line()
            await c.send(b"?WATCH=" + watch + b";\n")
            await c.obj()
            await c.obj()
        srv.on_binary(frame)
        srv.on_sentence(sentence())
        # raw 1: the frame as one line of hex, then the sentence.
        assert await hexed.line() == UBX_FRAME.hex()
        assert (await hexed.line()).encode() == SENTENCE
        # raw 2: the frame's bytes as received, then the sentence.
        async with asyncio.timeout(10):
            got = await verbatim.reader.readexactly(len(UBX_FRAME))
        assert got == UBX_FRAME
        assert (await verbatim.line()).encode() == SENTENCE
        # nmea: sentences only.
        assert (await nmea.line()).encode() == SENTENCE
        assert srv.counters["binary_frames"] == 1
