"""The daemon's gpsd server and NMEA out, read by real clients at once: gpspipe -w and -r
(Debian's gpsd-clients), gpsd's Python library, a raw TCP reader, an NMEA TCP reader and a UDP
receiver; what they get compared with the capture and, through the comparator, with gpsd's own
output for it."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from tests.broker import Broker
from tests.conftest import SHARED
from tests.serve.support import M9N, Expected, Served, json_lines, serving
from tests.waiting import wait_until

GPSPIPE = shutil.which("gpspipe")
SYSTEM_PYTHON = "/usr/bin/python3"
COMPARE = SHARED / "tools" / "gpsd_compare.py"
HERE = Path(__file__).resolve().parent


def _has_gps_library() -> bool:
    try:
        subprocess.run(
            [SYSTEM_PYTHON, "-c", "import gps"], check=True, capture_output=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return True


needs_gpspipe = pytest.mark.skipif(
    GPSPIPE is None, reason="gpspipe missing: apt-get install gpsd-clients"
)


class Output:
    """What a client process printed, line by line, as it comes."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    async def collect(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.lines.append(line.decode("latin-1").rstrip("\r\n"))

    def classes(self, cls: str) -> list[dict[str, Any]]:
        return [o for o in json_lines("\n".join(self.lines)) if o.get("class") == cls]

    def sentences(self) -> list[str]:
        return [line for line in self.lines if line.startswith("$")]


@asynccontextmanager
async def client_process(*argv: str) -> AsyncIterator[Output]:
    """A client process whose stdout is collected until it is stopped."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out = Output()
    assert proc.stdout is not None
    reader = asyncio.create_task(out.collect(proc.stdout), name=f"collect {argv[0]}")
    try:
        yield out
    finally:
        with suppress(ProcessLookupError):
            proc.terminate()
        await proc.wait()
        await reader


class TcpReader:
    """A raw TCP client: sends its requests, keeps every byte it is sent."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.got = asyncio.Event()

    async def run(self, port: int, request: bytes = b"") -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            if request:
                writer.write(request)
                await writer.drain()
            while chunk := await reader.read(65536):
                self.data += chunk
        finally:
            writer.close()
            with suppress(OSError):
                await writer.wait_closed()

    def lines(self) -> list[str]:
        return bytes(self.data).decode("latin-1").split("\r\n")


class UdpReceiver:
    """Keeps every datagram sent to its port: a plain socket read by a thread of its own, so
    the test's event loop being busy does not overflow the socket's buffer."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.datagrams: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="udp receiver")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.datagrams.append(self.sock.recv(4096))
            except TimeoutError:
                continue

    def __enter__(self) -> UdpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def compare(tmp_path: Path, name: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The comparator's figures for `records` (TPV/SKY objects) against gpsd's for M9N."""
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = subprocess.run(
        [sys.executable, str(COMPARE), f"{M9N}.chk", str(path), str(M9N)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    figures: dict[str, Any] = json.loads(result.stdout)
    figures.pop("examples")
    return figures


def watching(served: Served, json_n: int, sentences_n: int) -> bool:
    gpsd = served.daemon.serving.gpsd
    assert gpsd is not None
    peers = [p for p in gpsd.peers if hasattr(p, "policy")]
    return (
        sum(p.policy.wants_json for p in peers) >= json_n  # type: ignore[attr-defined]
        and sum(p.policy.wants_sentences for p in peers) >= sentences_n  # type: ignore[attr-defined]
    )


@needs_gpspipe
async def test_real_clients_at_once_get_every_epoch_and_sentence(
    tmp_path: Path, broker: Broker
) -> None:
    assert GPSPIPE is not None
    exp = Expected.of(M9N)
    assert exp.tpv > 50
    udp = UdpReceiver()
    with_library = _has_gps_library()
    raw = TcpReader()
    nmea = TcpReader()
    lib: Output | None = None
    with udp:
        async with AsyncExitStack() as stack:
            s = await stack.enter_async_context(serving(tmp_path, broker.port, udp_port=udp.port))
            where = f"127.0.0.1:{s.gpsd_port}"
            pipe_w = await stack.enter_async_context(client_process(GPSPIPE, "-w", where))
            pipe_r = await stack.enter_async_context(client_process(GPSPIPE, "-r", where))
            if with_library:
                lib = await stack.enter_async_context(
                    client_process(SYSTEM_PYTHON, str(HERE / "gps_client.py"), str(s.gpsd_port))
                )
            tg = await stack.enter_async_context(asyncio.TaskGroup())
            watch = b'?WATCH={"enable":true,"json":true,"nmea":true};\n'
            raw_task = tg.create_task(raw.run(s.gpsd_port, watch), name="raw reader")
            nmea_task = tg.create_task(nmea.run(s.nmea_port), name="nmea reader")
            json_n = 3 if with_library else 2
            await wait_until(lambda: watching(s, json_n, 2), what="every gpsd client watches")
            nmea_tcp = s.daemon.serving.nmea_tcp
            assert nmea_tcp is not None
            await wait_until(lambda: len(nmea_tcp.peers) == 1, what="the NMEA client connects")

            await s.feed(exp)

            n = len(exp.sentences)
            await wait_until(lambda: len(pipe_w.classes("TPV")) >= exp.tpv, what="gpspipe -w TPV")
            await wait_until(lambda: len(pipe_w.classes("SKY")) >= exp.sky, what="gpspipe -w SKY")
            await wait_until(lambda: len(pipe_r.sentences()) >= n, what="gpspipe -r")
            await wait_until(lambda: raw.data.count(b"\r\n$") >= n, what="the raw reader")
            await wait_until(lambda: nmea.data.count(b"\r\n") >= n, what="NMEA over TCP")
            await wait_until(lambda: len(udp.datagrams) >= n, what="NMEA over UDP")
            if lib is not None:
                got = lib
                await wait_until(
                    lambda: sum('"TPV"' in line for line in got.lines) >= exp.tpv,
                    what="the gps library's TPVs",
                )
            daemon = s.daemon
            serve = daemon.board.snapshot()["counters"]["serve"]
            raw_task.cancel()
            nmea_task.cancel()

    expected_sentences = [x.decode() for x in exp.sentences]
    # Every epoch reached the gpsd clients, though MQTT was thinned by the policy.
    assert len(pipe_w.classes("TPV")) == exp.tpv
    assert len(pipe_w.classes("SKY")) == exp.sky
    assert daemon.records_in["fix_thinned_by_policy"] >= exp.tpv - 3
    # The health report counts what was served.
    assert serve["gpsd_tpv"] == exp.tpv
    assert serve["gpsd_clients"] == (4 if with_library else 3)
    assert serve["nmea_tcp_sentences"] == len(exp.sentences)
    assert serve["nmea_udp_datagrams"] == len(exp.sentences)
    # gpspipe -w saw what a gpsd 3.22 client sees first.
    first = json_lines("\n".join(pipe_w.lines[:3]))
    assert [o["class"] for o in first] == ["VERSION", "DEVICES", "WATCH"]
    assert first[0]["proto_major"] == 3
    assert first[1]["devices"][0]["path"] == s.device.path
    assert first[2]["enable"] is True
    assert first[2]["json"] is True
    assert all(o["device"] == s.device.path for o in pipe_w.classes("TPV"))
    # The sentences, exactly as received, in order, to every NMEA reader.
    assert pipe_r.sentences() == expected_sentences
    assert [x.decode().rstrip("\r\n") for x in udp.datagrams] == expected_sentences
    assert nmea.lines()[:-1] == expected_sentences
    raw_lines = [line for line in raw.lines() if line]
    assert raw_lines[0].startswith('{"class":"VERSION"')
    assert [line for line in raw_lines if line.startswith("$")] == expected_sentences
    raw_tpv = [json.loads(line) for line in raw_lines if line.startswith('{"class":"TPV"')]
    assert len(raw_tpv) == exp.tpv
    # Each TPV follows the sentences of its epoch (as gpsd's do): the first after an RMC.
    first_tpv = next(i for i, line in enumerate(raw_lines) if line.startswith('{"class":"TPV"'))
    assert any("RMC" in line for line in raw_lines[1:first_tpv])
    if lib is not None:
        seen = [json.loads(line) for line in lib.lines]
        tpvs = [o for o in seen if o["class"] == "TPV"]
        assert seen[0] == {"class": "VERSION", "release": "3.22"}
        assert len(tpvs) == exp.tpv
        fixes = [r for r in exp.records if r["class"] == "TPV"]
        for got, want in zip(tpvs, fixes, strict=True):
            assert got["mode"] == want["mode"]
            assert got["time"] == want["time"]
            if want.get("lat") is not None:
                assert got["lat"] == pytest.approx(want["lat"], abs=1e-9)
                assert got["lon"] == pytest.approx(want["lon"], abs=1e-9)
        skies = [o for o in seen if o["class"] == "SKY"]
        assert len(skies) == exp.sky
        assert skies[-1]["satellites"] > 0

    # Content: what gpspipe -w printed agrees with gpsd's own output exactly as well as the
    # pipeline's records do (the server loses or bends nothing), and that is every epoch.
    served = pipe_w.classes("TPV") + pipe_w.classes("SKY")
    ours = compare(tmp_path, "served", served)
    pipeline = compare(tmp_path, "pipeline", exp.records)
    assert ours == pipeline
    assert ours["fix_match_any"] >= exp.tpv - 1
    assert ours["false_fixes"] == 0
    assert ours["sky_exact"] >= exp.sky - 1
