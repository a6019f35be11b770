"""A gpsd-protocol server: the receiver shared with cgps, OpenCPN, Signal K and gpspipe.

Every epoch's TPV and SKY goes to every watching client (before the reporting policy thins
what goes over MQTT: gpsd clients expect each epoch), and the receiver's checksum-valid
sentences to clients watching `nmea` or `raw`. Requests: ?VERSION, ?DEVICES, ?DEVICE,
?WATCH, ?POLL, answered as gpsd 3.22 answers them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from structlog.typing import FilteringBoundLogger

from terminal_gw import __version__
from terminal_gw.config import GpsdServerConfig
from terminal_gw.gnss.framer import BinaryFrame, Sentence
from terminal_gw.models import Fix, Payload, Sky, iso_utc
from terminal_gw.serve import gpsd_json as gj
from terminal_gw.serve.peers import Peer, PeerSet


class GpsdClient(Peer):
    """One gpsd client: its WATCH policy and its requests."""

    hub: GpsdServer

    def __init__(self, server: GpsdServer) -> None:
        super().__init__(server)
        self.policy = gj.WatchPolicy()
        self.reader = gj.RequestReader()

    def connected(self) -> None:
        """gpsd greets every client with its VERSION."""
        self.send(self.hub.version)

    def data_received(self, data: bytes) -> None:
        """Answer each complete request."""
        for request in self.reader.feed(data):
            self.hub.counters["requests"] += 1
            self.send(self.hub.answer(self, request))


class GpsdServer(PeerSet):
    """Listens on [gpsd_server] host:port; fed by the GNSS pipeline's observer hooks."""

    def __init__(
        self,
        config: GpsdServerConfig,
        *,
        device_path: str,
        bps: Callable[[], int | None],
        log: FilteringBoundLogger,
    ) -> None:
        super().__init__(
            "gpsd",
            max_clients=config.max_clients,
            max_queue_bytes=config.max_queue_bytes,
            send_buffer_bytes=config.send_buffer_bytes,
            log=log,
        )
        self.config = config
        self.device_path = device_path
        self._bps = bps
        self.version = gj.version_line(f"terminal-gw {__version__}")
        self.activated: str | None = None
        self.last_tpv: bytes | None = None
        self.last_sky: bytes | None = None
        self.counters.update(tpv=0, sky=0, sentences=0, binary_frames=0, requests=0)

    async def run(self) -> None:
        """Serve until cancelled."""
        await self.serve(lambda: GpsdClient(self), self.config.host, self.config.port)

    # --- the pipeline's hooks (synchronous, never wait) ----------------------------------

    def on_payload(self, payload: Payload) -> None:
        """A Fix or Sky of an epoch: to every client watching JSON."""
        if isinstance(payload, Fix):
            line = gj.tpv_line(payload, self.device_path)
            self.last_tpv = line
            self.counters["tpv"] += 1
        elif isinstance(payload, Sky):
            line = gj.sky_line(payload, self.device_path)
            self.last_sky = line
            self.counters["sky"] += 1
        else:
            return
        for peer in list(self.peers):
            if isinstance(peer, GpsdClient) and peer.policy.wants_json and self._mine(peer):
                peer.send(line)

    def on_sentence(self, sentence: Sentence) -> None:
        """A checksum-valid sentence: as received, to clients watching nmea or raw."""
        if self.activated is None:
            self.activated = iso_utc(time.time())
        if not sentence.checked:
            return
        self.counters["sentences"] += 1
        line: bytes | None = None
        for peer in list(self.peers):
            if isinstance(peer, GpsdClient) and peer.policy.wants_sentences and self._mine(peer):
                if line is None:
                    line = sentence.raw + b"\r\n"
                peer.send(line)

    def on_binary(self, frame: BinaryFrame) -> None:
        """A checked UBX or CASIC frame: verbatim to `raw: 2` clients, as one line of hex to
        `raw: 1` clients (gpsd's two raw modes); `nmea` watchers get no binary."""
        if self.activated is None:
            self.activated = iso_utc(time.time())
        self.counters["binary_frames"] += 1
        hexed: bytes | None = None
        for peer in list(self.peers):
            if not isinstance(peer, GpsdClient) or not self._mine(peer):
                continue
            policy = peer.policy
            if not policy.enable or policy.raw == 0:
                continue
            if policy.raw >= 2:
                peer.send(frame.raw)
            else:
                if hexed is None:
                    hexed = frame.raw.hex().encode() + b"\r\n"
                peer.send(hexed)

    def _mine(self, peer: GpsdClient) -> bool:
        # A WATCH naming another device gets nothing from this one, as in gpsd.
        return peer.policy.device is None or peer.policy.device == self.device_path

    # --- requests --------------------------------------------------------------------------

    def device(self) -> gj.DeviceInfo:
        """The receiver as DEVICE objects describe it."""
        return gj.DeviceInfo(
            path=self.device_path,
            activated=self.activated,
            bps=self._bps(),
            seen_gps=self.activated is not None,
        )

    def answer(self, client: GpsdClient, request: gj.Request) -> bytes:
        """The reply to one request (several objects for ?WATCH)."""
        name = request.name
        if request.error is not None and name != "WATCH":
            return gj.error_line(f"Unrecognized request '{request.text}'")
        if name == "VERSION":
            return self.version
        if name == "DEVICES":
            return gj.devices_line([self.device()])
        if name == "DEVICE":
            # Read-only: the receiver belongs to terminal-gw; a client may not reconfigure it.
            return gj.device_line(self.device())
        if name == "POLL":
            active = 1 if self.activated is not None else 0
            return gj.poll_line(iso_utc(time.time()), active, self.last_tpv, self.last_sky)
        if name == "WATCH":
            out = b""
            if request.error is not None:
                out = gj.error_line(f"Invalid WATCH: {request.error}")
            elif request.args is not None:
                try:
                    client.policy = gj.apply_watch(client.policy, request.args)
                except ValueError as exc:
                    out = gj.error_line(f"Invalid WATCH: {exc}")
            return out + gj.devices_line([self.device()]) + gj.watch_line(client.policy)
        return gj.error_line(f"Unrecognized request '{request.text}'")
