"""A TCP server that devices connect to and push framed messages over (HJ 212 stations,
JT/T 808 terminals). Each connection gets a session that cuts the byte stream into
messages and answers them; a message that cannot be read is logged with the device's
address and counted, and the connection goes on with the next one. A connection silent
for the link's `idle_timeout_s` is closed; nothing a connection sends can stop another."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

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


class StreamServerInput(PushedInput):
    def __init__(self, link: LinkSpec, *, sink: SampleSink, telemetry: SelfTelemetry) -> None:
        super().__init__(sink=sink, telemetry=telemetry)
        self.link = link
        self.connections = 0
        self.server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def session(self, peer: str) -> Session:
        raise NotImplementedError

    async def start(self) -> asyncio.Server:
        self.server = await asyncio.start_server(self._serve, self.link.host, self.link.port)
        return self.server

    async def run(self) -> None:
        try:
            server = self.server or await self.start()
        except OSError as exc:
            log.error("%s link %s cannot listen on %s:%d: %s; fix: free the port or set the link's port",
                      self.link.transport, self.link.name, self.link.host, self.link.port, exc.strerror or exc)
            raise
        try:
            async with server:
                await server.serve_forever()
        finally:
            # the devices must see the agent go (they hold their data until it is back)
            for writer in list(self._writers):
                writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        addr = writer.get_extra_info("peername")
        peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
        session = self.session(peer)
        self.connections += 1
        self._writers.add(writer)
        try:
            while True:
                try:
                    async with asyncio.timeout(self.link.idle_timeout_s):
                        data = await reader.read(65536)
                except TimeoutError:
                    log.info("%s link %s: %s silent for %.0f s, closed", self.link.transport, self.link.name,
                             peer, self.link.idle_timeout_s)
                    break
                if not data:
                    break
                try:
                    answers = session.feed(data)
                except Exception:  # a bug must not cost the device its connection or others theirs
                    log.exception("%s link %s: %s: message handling failed", self.link.transport,
                                  self.link.name, peer)
                    self.telemetry.protocol_error(self.link.name, "internal")
                    continue
                if answers:
                    writer.write(b"".join(answers))
                    await writer.drain()
        except (ConnectionError, OSError) as exc:
            log.info("%s link %s: %s dropped: %s", self.link.transport, self.link.name, peer, exc)
        finally:
            self.connections -= 1
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
