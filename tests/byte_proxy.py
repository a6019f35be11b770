"""A TCP relay in front of the broker that counts what the client's connection carries.

Payload bytes both ways as relayed, and the kernel's segment counts of the client-facing
socket (TCP_INFO), so that bytes on the wire = payload + 52 B of IP/TCP headers a segment.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from terminal_gw.uplink import links
from tests.broker import free_port


@dataclass
class Count:
    up: int = 0  # client -> broker payload bytes
    down: int = 0  # broker -> client
    segments: int = 0  # both ways, of connections closed so far
    connections: int = 0

    @property
    def wire(self) -> int:
        """Bytes on the wire, IP/TCP headers included."""
        return self.up + self.down + self.segments * links.SEGMENT_OVERHEAD


class ByteProxy:
    """Relay 127.0.0.1:port to the broker's port, counting (`count`)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.count = Count()
        self._server: asyncio.Server | None = None
        self._open: dict[asyncio.StreamWriter, int] = {}  # client writer -> segments seen

    async def __aenter__(self) -> ByteProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._open):
            w.transport.abort()
        await self._server.wait_closed()

    @property
    def connections_open(self) -> int:
        """Connections relayed now."""
        return len(self._open)

    def segments_now(self) -> int:
        """Segments of closed connections plus those of the open ones so far."""
        return self.count.segments + sum(self._open.values())

    def wire_now(self) -> int:
        return self.count.up + self.count.down + self.segments_now() * links.SEGMENT_OVERHEAD

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.count.connections += 1
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._open[writer] = 0
        sock = writer.get_extra_info("socket")

        def snapshot() -> None:
            c = links.wire_count(sock)
            if c is not None:
                self._open[writer] = c.segments

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, up: bool) -> None:
            with contextlib.suppress(OSError):
                while data := await r.read(65536):
                    if up:
                        self.count.up += len(data)
                    else:
                        self.count.down += len(data)
                    w.write(data)
                    await w.drain()
                    snapshot()
            snapshot()
            w.close()

        try:
            await asyncio.gather(pipe(reader, up_w, True), pipe(up_r, writer, False))
        finally:
            self.count.segments += self._open.pop(writer, 0)
            writer.transport.abort()
            up_w.transport.abort()
