"""A TCP server that devices connect to and push framed messages over (HJ 212 stations,
JT/T 808 terminals). Each connection gets a session that cuts the byte stream into
messages and answers them; a message that cannot be read is logged with the device's
address and counted, and the connection goes on with the next one. A connection silent
for the link's `idle_timeout_s` is closed; nothing a connection sends can stop another."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import cast

from edge.link import SampleSink
from edge.pushed import PushedInput
from edge.telemetry import SelfTelemetry
from urbansense.config import LinkSpec

log = logging.getLogger("urbansense.edge")


class Session:
    """One device connection: feed() takes bytes off the socket and returns the answers
    to write back."""

    def __init__(self, server: StreamServerInput, peer: str) -> None:
        self.server = server
        self.peer = peer
        self.reasons: Counter[str] = Counter()
        #: When the connection last brought bytes (loop time): the idle sweep reads it.
        self.last_rx = 0.0

    def feed(self, data: bytes) -> list[bytes]:
        raise NotImplementedError

    def refuse(self, reason: str, message: str) -> None:
        """Count a refused message and log it (the first of each reason on a connection,
        then every hundredth)."""
        self.server.telemetry.protocol_error(self.server.link.name, reason)
        self.reasons[reason] += 1
        n = self.reasons[reason]
        if n == 1 or n % 100 == 0:
            more = f" ({n} so far on this connection)" if n > 1 else ""
            log.warning("%s link %s, %s: %s%s", self.server.link.transport, self.server.link.name, self.peer,
                        message, more)


class _DeviceConnection(asyncio.Protocol):
    """One device's TCP connection: bytes in to its session, answers out, no task or
    stream object per connection (one device message costs one callback)."""

    def __init__(self, server: StreamServerInput) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not isinstance: uvloop's transports do not derive from asyncio's.
        self.transport = cast(asyncio.Transport, transport)
        addr = transport.get_extra_info("peername")
        peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
        self.session = self.server.session(peer)
        self.session.last_rx = self.loop.time()
        self.server.connections[self] = self.session

    def data_received(self, data: bytes) -> None:
        session, transport = self.session, self.transport
        assert session is not None and transport is not None
        session.last_rx = self.loop.time()
        try:
            answers = session.feed(data)
        except Exception:  # a bug must not cost the device its connection or others theirs
            log.exception("%s link %s: %s: message handling failed", self.server.link.transport,
                          self.server.link.name, session.peer)
            self.server.telemetry.protocol_error(self.server.link.name, "internal")
            return
        if answers:
            transport.write(answers[0] if len(answers) == 1 else b"".join(answers))

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self.session is not None:
            log.info("%s link %s: %s dropped: %s", self.server.link.transport, self.server.link.name,
                     self.session.peer, exc)
        self.server.connections.pop(self, None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class StreamServerInput(PushedInput):
    def __init__(self, link: LinkSpec, *, sink: SampleSink, telemetry: SelfTelemetry) -> None:
        super().__init__(sink=sink, telemetry=telemetry)
        self.link = link
        self.server: asyncio.Server | None = None
        #: The open connections and their sessions.
        self.connections: dict[_DeviceConnection, Session] = {}

    def session(self, peer: str) -> Session:
        raise NotImplementedError

    async def start(self) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _DeviceConnection(self), self.link.host, self.link.port)
        return self.server

    async def run(self) -> None:
        try:
            server = self.server or await self.start()
        except OSError as exc:
            log.error("%s link %s cannot listen on %s:%d: %s; fix: free the port or set the link's port",
                      self.link.transport, self.link.name, self.link.host, self.link.port, exc.strerror or exc)
            raise
        sweep = asyncio.create_task(self._close_idle())
        try:
            async with server:
                await server.serve_forever()
        finally:
            sweep.cancel()
            # the devices must see the agent go (they hold their data until it is back)
            for connection in list(self.connections):
                connection.close()

    async def _close_idle(self) -> None:
        """Close the connections silent for `idle_timeout_s` (one sweep for all of them,
        not a timer per read)."""
        limit = self.link.idle_timeout_s
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(limit / 4, 30.0))
            now = loop.time()
            for connection, session in list(self.connections.items()):
                if now - session.last_rx >= limit:
                    log.info("%s link %s: %s silent for %.0f s, closed", self.link.transport, self.link.name,
                             session.peer, limit)
                    connection.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])
