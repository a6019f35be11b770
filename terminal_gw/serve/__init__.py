"""Serving the receiver to the tools on board: a gpsd-protocol server and NMEA 0183 out.

Once terminal-gw owns the receiver's serial port, OpenCPN, Signal K, chrony (through gpsd
clients) and a crew's `cgps` read it from here instead. Everything is off by default; when
off, nothing is hooked into the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable

from terminal_gw.config import Config
from terminal_gw.gnss.framer import BinaryFrame, Sentence
from terminal_gw.logs import get_logger
from terminal_gw.models import Payload
from terminal_gw.supervisor import Stage


class Serving:
    """The local servers a config asks for, with their stages and counters."""

    def __init__(self, config: Config, *, bps: Callable[[], int | None]) -> None:
        self.sentence_observers: list[Callable[[Sentence], None]] = []
        self.payload_observers: list[Callable[[Payload], None]] = []
        self.binary_observers: list[Callable[[BinaryFrame], None]] = []
        self._stages: list[Stage] = []
        self._counters: dict[str, Callable[[], dict[str, int]]] = {}
        gcfg = config.gpsd_server
        if gcfg.enabled:
            from terminal_gw.serve.gpsd_server import GpsdServer

            gpsd = GpsdServer(
                gcfg,
                device_path=gcfg.device or config.gnss.port,
                bps=bps,
                log=get_logger("gpsd_server"),
            )
            self.gpsd: GpsdServer | None = gpsd
            self.sentence_observers.append(gpsd.on_sentence)
            self.payload_observers.append(gpsd.on_payload)
            self.binary_observers.append(gpsd.on_binary)
            self._stages.append(Stage("gpsd_server", gpsd.run))
            self._counters["gpsd"] = lambda: dict(gpsd.counters, clients=len(gpsd.peers))
        else:
            self.gpsd = None
        ncfg = config.nmea_out
        if ncfg.tcp_port:
            from terminal_gw.serve.nmea_out import NmeaTcpServer

            tcp = NmeaTcpServer(ncfg, log=get_logger("nmea_out"))
            self.nmea_tcp: NmeaTcpServer | None = tcp
            self.sentence_observers.append(tcp.on_sentence)
            self._stages.append(Stage("nmea_tcp", tcp.run))
            self._counters["nmea_tcp"] = lambda: dict(tcp.counters, clients=len(tcp.peers))
        else:
            self.nmea_tcp = None
        if ncfg.udp_host:
            from terminal_gw.serve.nmea_out import NmeaUdpSender

            udp = NmeaUdpSender(ncfg, log=get_logger("nmea_out"))
            self.nmea_udp: NmeaUdpSender | None = udp
            self.sentence_observers.append(udp.on_sentence)
            self._stages.append(Stage("nmea_udp", udp.run))
            self._counters["nmea_udp"] = lambda: dict(udp.counters)
        else:
            self.nmea_udp = None

    def stages(self) -> list[Stage]:
        """The stages of the servers that are on (none by default)."""
        return list(self._stages)

    def stage_names(self) -> list[str]:
        """Names of those stages (alive while they run: a listener waits on clients)."""
        return [s.name for s in self._stages]

    def counters(self) -> dict[str, int]:
        """Clients, reports sent, clients dropped, per server, in one flat mapping."""
        out: dict[str, int] = {}
        for name, source in self._counters.items():
            for key, value in source().items():
                out[f"{name}_{key}"] = value
        return out
