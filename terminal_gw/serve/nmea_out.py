"""NMEA 0183 out: the receiver's checksum-valid sentences, as received, over TCP and UDP.

For chartplotters and Signal K, which read NMEA over IP (port 10110 by custom). TCP: every
client of the listen port gets every sentence (what it sends is ignored; a client that lags
past `max_queue_bytes` is dropped). UDP: one datagram per sentence to a configured address,
unicast or broadcast; while the socket cannot take more (asyncio's 64 KiB buffer full) a
datagram is counted and dropped.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter

from structlog.typing import FilteringBoundLogger

from terminal_gw.config import NmeaOutConfig
from terminal_gw.gnss.framer import Sentence
from terminal_gw.serve.peers import Peer, PeerSet


class NmeaTcpServer(PeerSet):
    """Listens on [nmea_out] tcp_host:tcp_port and streams sentences to each client."""

    def __init__(self, config: NmeaOutConfig, *, log: FilteringBoundLogger) -> None:
        super().__init__(
            "nmea-tcp",
            max_clients=config.max_clients,
            max_queue_bytes=config.max_queue_bytes,
            send_buffer_bytes=config.send_buffer_bytes,
            log=log,
        )
        self.config = config
        self.counters.update(sentences=0)

    async def run(self) -> None:
        """Serve until cancelled."""
        await self.serve(lambda: Peer(self), self.config.tcp_host, self.config.tcp_port)

    def on_sentence(self, sentence: Sentence) -> None:
        """A sentence from the receiver: to every client, if checksum-valid."""
        if not sentence.checked or not self.peers:
            return
        self.counters["sentences"] += 1
        line = sentence.raw + b"\r\n"
        for peer in list(self.peers):
            peer.send(line)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, counters: Counter[str]) -> None:
        self.counters = counters
        self.paused = False

    def pause_writing(self) -> None:
        # The socket's buffer and asyncio's (64 KiB) are full: datagrams are dropped until
        # it drains, never queued without bound.
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def error_received(self, exc: Exception) -> None:
        # A unicast target with nothing listening answers ICMP "port unreachable": normal
        # while a chartplotter is off. Counted, never fatal.
        self.counters["send_errors"] += 1


class NmeaUdpSender:
    """Sends each sentence as one datagram to [nmea_out] udp_host:udp_port."""

    def __init__(self, config: NmeaOutConfig, *, log: FilteringBoundLogger) -> None:
        self.config = config
        self.log = log
        self.counters: Counter[str] = Counter(datagrams=0, send_errors=0, dropped_busy=0)
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol: _Datagrams | None = None

    async def run(self) -> None:
        """Open the socket, then send as sentences come until cancelled."""
        loop = asyncio.get_running_loop()
        cfg = self.config
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self.counters),
            remote_addr=(cfg.udp_host, cfg.udp_port),
            family=socket.AF_UNSPEC,
            allow_broadcast=True,
        )
        self._transport = transport
        self._protocol = protocol
        self.log.info("sending NMEA datagrams", host=cfg.udp_host, port=cfg.udp_port)
        try:
            await loop.create_future()  # until cancelled
        finally:
            self._transport = None
            transport.close()

    def on_sentence(self, sentence: Sentence) -> None:
        """A sentence from the receiver: one datagram, if checksum-valid."""
        t = self._transport
        if t is None or self._protocol is None or not sentence.checked:
            return
        if self._protocol.paused:
            self.counters["dropped_busy"] += 1
            return
        try:
            t.sendto(sentence.raw + b"\r\n")
        except OSError:
            self.counters["send_errors"] += 1
            return
        self.counters["datagrams"] += 1
