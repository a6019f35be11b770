"""A client that stops reading is dropped at its bound; the pipeline and the other clients
never wait for it."""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
from pathlib import Path

import pytest

from tests.broker import Broker
from tests.serve.support import M9N, Expected, json_lines, serving
from tests.serve.test_real_clients import client_process
from tests.waiting import wait_until

GPSPIPE = shutil.which("gpspipe")


class ThreadReader:
    """A client that reads all it is sent, as fast as it can, in a thread of its own (as a
    separate program would: the test's busy event loop does not slow it)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, port: int, request: bytes) -> None:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(request)
        sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._run, args=(sock,), name="fast reader")
        self._thread.start()

    def _run(self, sock: socket.socket) -> None:
        with sock:
            while not self._stop.is_set():
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                self.data += chunk

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def stalled_client(port: int, request: bytes) -> socket.socket:
    """A client with a tiny receive buffer that sends `request` and then never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect(("127.0.0.1", port))
    if request:
        sock.sendall(request)
    return sock


def was_cut(sock: socket.socket) -> bool:
    """True when the server has closed the connection (whatever it had sent is drained)."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


@pytest.mark.skipif(GPSPIPE is None, reason="gpspipe missing: apt-get install gpsd-clients")
async def test_slow_clients_dropped_fast_ones_get_every_tpv(tmp_path: Path, broker: Broker) -> None:
    assert GPSPIPE is not None
    exp = Expected.of(M9N)
    # Room for an epoch's burst (about 5 KB with sentences) and not much more; a stalled
    # client fills it within a few epochs.
    bounds = {"max_queue_bytes": 16384, "send_buffer_bytes": 8192}
    fast = ThreadReader()
    async with (
        serving(tmp_path, broker.port, gpsd_server=bounds, nmea_out=bounds) as s,
        client_process(GPSPIPE, "-w", f"127.0.0.1:{s.gpsd_port}") as pipe_w,
    ):
        gpsd = s.daemon.serving.gpsd
        nmea_tcp = s.daemon.serving.nmea_tcp
        assert gpsd is not None
        assert nmea_tcp is not None
        watch = b'?WATCH={"enable":true,"json":true,"nmea":true};\n'
        slow = stalled_client(s.gpsd_port, watch)
        slow_nmea = stalled_client(s.nmea_port, b"")
        fast.start(s.gpsd_port, watch)
        try:
            await wait_until(
                lambda: sum(p.policy.wants_json for p in gpsd.peers) == 3,  # type: ignore[attr-defined]
                what="three gpsd clients watch",
            )
            await wait_until(lambda: len(nmea_tcp.peers) == 1, what="the NMEA client connects")

            await s.feed(exp)

            await wait_until(lambda: len(pipe_w.classes("TPV")) >= exp.tpv, what="gpspipe TPVs")
            await wait_until(
                lambda: fast.data.count(b'{"class":"TPV"') >= exp.tpv, what="fast reader"
            )
            assert gpsd.counters["dropped_too_slow"] == 1
            assert nmea_tcp.counters["dropped_too_slow"] == 1
            assert len(gpsd.peers) == 2
            assert not nmea_tcp.peers
            await wait_until(lambda: was_cut(slow), what="the slow gpsd client is cut off")
            await wait_until(lambda: was_cut(slow_nmea), what="the slow NMEA client is cut off")
        finally:
            slow.close()
            slow_nmea.close()
            fast.stop()
        # Every epoch reached the clients that kept reading, in order.
        tpv = pipe_w.classes("TPV")
        assert len(tpv) == exp.tpv
        want = [r["time"] for r in exp.records if r["class"] == "TPV"]
        assert [o["time"] for o in tpv] == want
        fast_tpv = [o for o in json_lines(bytes(fast.data).decode()) if o.get("class") == "TPV"]
        assert [o["time"] for o in fast_tpv] == want
        # The daemon's own path went on as well: every sentence was read and counted.
        assert s.daemon.gnss.pipeline.framer.counters["good"] == len(exp.sentences)


async def test_a_client_that_never_reads_is_dropped_within_its_bound(
    tmp_path: Path, broker: Broker
) -> None:
    """With only a stalled client, the daemon reads on; the client's backlog stays bounded."""
    exp = Expected.of(M9N)
    bounds = {"max_queue_bytes": 4096, "send_buffer_bytes": 4096}
    async with serving(tmp_path, broker.port, gpsd_server=bounds) as s:
        gpsd = s.daemon.serving.gpsd
        assert gpsd is not None
        slow = stalled_client(s.gpsd_port, b'?WATCH={"enable":true,"json":true,"raw":1};\n')
        try:
            await wait_until(lambda: gpsd.counters["requests"] == 1, what="the WATCH is read")
            peer = next(iter(gpsd.peers))
            backlog: list[int] = []
            real_send = peer.send

            def measured(data: bytes) -> None:
                real_send(data)
                if peer.transport is not None and not peer.dropped:
                    backlog.append(peer.transport.get_write_buffer_size())

            peer.send = measured  # type: ignore[method-assign]
            await s.feed(exp)
            assert peer.dropped
            assert gpsd.counters["dropped_too_slow"] == 1
            # Never more than the bound and one report waited for the client.
            assert backlog
            assert max(backlog) <= 4096
            with contextlib.suppress(OSError):
                slow.recv(1)
        finally:
            slow.close()
        assert s.daemon.gnss.pipeline.framer.counters["good"] == len(exp.sentences)
