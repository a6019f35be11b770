"""TCP clients of the local servers: written to without waiting, dropped when they lag.

The GNSS pipeline hands each report to every client with a synchronous call that never
blocks: no client is ever awaited on the pipeline's path. What one chunk of receiver bytes
produces for a client (its sentences, the epoch's TPV and SKY) is gathered and written once,
at the end of the loop's turn: one system call and one TCP segment instead of one a
sentence. What a client does not read piles up in its transport's buffer; past
`max_queue_bytes` the client is dropped, so a stalled chartplotter costs a bounded amount of
memory and never slows the receiver or the other clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter
from collections.abc import Callable

from structlog.typing import FilteringBoundLogger


class Peer(asyncio.Protocol):
    """One connected client; subclasses read its requests."""

    def __init__(self, hub: PeerSet) -> None:
        self.hub = hub
        self.transport: asyncio.Transport | None = None
        self.name = "?"
        self.dropped = False
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Accept (or refuse, past max_clients) and bound the client's buffers."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.name = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if not self.hub.admit(self):
            transport.abort()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and self.hub.send_buffer_bytes:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.hub.send_buffer_bytes)
        transport.set_write_buffer_limits(high=self.hub.max_queue_bytes)
        self.connected()

    def pause_writing(self) -> None:
        """The client let `max_queue_bytes` pile up: drop it."""
        self.drop("too slow")

    def resume_writing(self) -> None:
        """Never reached: a paused client is dropped."""

    def connection_lost(self, exc: Exception | None) -> None:
        """Gone: forget it."""
        self.hub.forget(self)

    def data_received(self, data: bytes) -> None:
        """Requests from the client (ignored unless a subclass reads them)."""

    def eof_received(self) -> bool | None:
        """The client closed its side: close ours."""
        return None

    # --- for the servers -------------------------------------------------------------------

    def connected(self) -> None:
        """Called once the client is admitted (a greeting goes here)."""

    def send(self, data: bytes) -> None:
        """Queue `data` for the client; never blocks. Written at the end of this turn of the
        event loop with whatever else is queued by then."""
        t = self.transport
        if t is None or self.dropped or t.is_closing():
            return
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes + t.get_write_buffer_size() > self.hub.max_queue_bytes:
            self.drop("too slow")

    def _flush(self) -> None:
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        t = self.transport
        if t is None or self.dropped or t.is_closing():
            return
        t.write(data)  # past the bound, the transport calls pause_writing: dropped

    def drop(self, reason: str) -> None:
        """Disconnect at once, discarding what it had not read."""
        if self.dropped:
            return
        self.dropped = True
        self._pending.clear()
        self.hub.counters[f"dropped_{reason.replace(' ', '_')}"] += 1
        self.hub.log.warning("client dropped", server=self.hub.label, client=self.name, why=reason)
        if self.transport is not None:
            self.transport.abort()


class PeerSet:
    """The clients of one server, with its bounds and counters."""

    def __init__(
        self,
        label: str,
        *,
        max_clients: int,
        max_queue_bytes: int,
        send_buffer_bytes: int,
        log: FilteringBoundLogger,
    ) -> None:
        self.label = label
        self.max_clients = max_clients
        self.max_queue_bytes = max_queue_bytes
        self.send_buffer_bytes = send_buffer_bytes
        self.log = log
        self.peers: set[Peer] = set()
        self.counters: Counter[str] = Counter(connected=0, refused_max_clients=0)
        self.port = 0

    def admit(self, peer: Peer) -> bool:
        """True when there is room for another client."""
        if len(self.peers) >= self.max_clients:
            self.counters["refused_max_clients"] += 1
            self.log.warning("client refused: max_clients reached", server=self.label)
            return False
        self.peers.add(peer)
        self.counters["connected"] += 1
        self.log.info("client connected", server=self.label, client=peer.name)
        return True

    def forget(self, peer: Peer) -> None:
        """A client is gone."""
        if peer in self.peers:
            self.peers.discard(peer)
            self.log.info("client disconnected", server=self.label, client=peer.name)

    def close_all(self) -> None:
        """Disconnect every client (shutdown)."""
        for peer in list(self.peers):
            if peer.transport is not None:
                peer.transport.abort()
        self.peers.clear()

    async def serve(self, factory: Callable[[], Peer], host: str, port: int) -> None:
        """Listen until cancelled; on the way out every client is disconnected."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(factory, host, port, reuse_address=True)
        self.port = int(server.sockets[0].getsockname()[1])
        self.log.info("listening", server=self.label, host=host, port=self.port)
        try:
            await server.serve_forever()
        finally:
            server.close()
            self.close_all()
            with contextlib.suppress(OSError):
                await server.wait_closed()
