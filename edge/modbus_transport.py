"""Modbus masters for the two physical links: TCP (MBAP framing) and RTU (serial, CRC).

Why our own and not pymodbus's client: the agent needs a timeout per device on a shared
connection, must drop a late answer instead of pairing it with the next request, and
must never close the shared connection because one unit is silent (pymodbus closes it
after a few timeouts, which stalls every other device on the endpoint). Both masters
are small. The RTU tests run against pymodbus' RTU server; the simulators' TCP slave is
our own too, and is itself tested against mbpoll (libmodbus) and pymodbus' client.

A TCP link with `pipeline: true` sends a device's reads back to back with distinct
transaction ids (`transact_many`) and waits for all answers: one round trip per poll
instead of one per read. Only for devices (or gateways) that queue requests; the
default is one transaction at a time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar, cast

from edge.modbus_pdu import (
    ModbusLinkError,
    ModbusProtocolError,
    ModbusTimeout,
    Request,
    expected_length,
)
from urbansense import modbus_framing as framing
from urbansense.modbus_framing import crc16

__all__ = ["FramedTcpMaster", "ModbusMaster", "RtuMaster", "TcpMaster", "crc16", "rtu_frame"]


class ModbusMaster(Protocol):
    requests: int

    async def transact(self, request: Request, timeout_s: float) -> bytes: ...

    async def transact_many(self, requests: Sequence[Request], timeout_s: float) -> list[bytes]: ...

    async def transact_batches(self, batches: Sequence[tuple[Sequence[Request], float]]
                               ) -> list[list[bytes] | Exception]: ...

    async def close(self) -> None: ...


# --------------------------------------------------------------------------- TCP

#: Timeouts in a row, with no unit on the endpoint answering in between, after which the
#: TCP connection is replaced. A single silent unit never triggers it while others answer.
RECONNECT_AFTER_TIMEOUTS = 3
#: An MBAP length counts the unit id and the PDU: 2 (unit, function code) to 254 (a
#: 253-byte PDU). Anything else means the byte stream is out of step.
_MBAP_LENGTHS = range(2, 255)
log = logging.getLogger("urbansense.edge")
_MBAP = struct.Struct(">HHHB")
_MBAP_HEAD = struct.Struct(">HHH")
#: What ends one device's batch in `transact_batches` without failing the others.
_DEVICE_ERRORS = (ModbusTimeout, ModbusLinkError, ModbusProtocolError)


P = TypeVar("P", bound=asyncio.Protocol)


async def _open(factory: Callable[[], P], host: str, port: int, timeout_s: float, *,
                tls: ssl.SSLContext | None = None, server_name: str | None = None, what: str = "") -> P:
    """A TCP (or TLS) connection with its protocol; every failure as ModbusLinkError."""
    loop = asyncio.get_running_loop()
    try:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
        # that arrives as the awaited future completes, and the agent would never stop.
        async with asyncio.timeout(timeout_s):
            if tls is None:
                _transport, proto = await loop.create_connection(factory, host, port)
            else:
                _transport, proto = await loop.create_connection(factory, host, port, ssl=tls,
                                                                 server_hostname=server_name or host)
    except ssl.SSLError as exc:
        raise ModbusLinkError(f"TLS with {host}:{port} failed: {exc.reason or exc}; check the link's ca_file, "
                              "cert_file and key_file against the device's certificate") from None
    except (TimeoutError, OSError) as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ModbusLinkError(f"cannot connect to {what}{host}:{port}: {why}") from None
    return proto


class _Exchange:
    """The answers to one coalesced write (`transact_batches`): a single completion for
    every request in it instead of a future each. Each batch (one device's reads) keeps
    its own deadline; the exchange completes when every request is answered or given up."""

    __slots__ = ("answers", "batches", "expired", "future", "pending", "waiting")

    def __init__(self, future: asyncio.Future[None], pending: dict[int, asyncio.Future[bytes] | _Exchange]) -> None:
        self.future = future
        self.pending = pending  # the connection's transaction ids -> what waits on them
        self.answers: dict[int, bytes] = {}
        self.batches: list[tuple[float, list[int]]] = []  # (deadline, transaction ids)
        self.expired: set[int] = set()  # batches whose deadline passed before all answers came
        self.waiting = 0  # answers still expected

    def answered(self, tid: int, frame: bytes) -> None:
        self.answers[tid] = frame
        self.waiting -= 1
        if not self.waiting and not self.future.done():
            self.future.set_result(None)

    def expire(self, now: float) -> float:
        """Give up the requests of every batch whose deadline has passed (a late answer
        then finds no slot and is dropped); the next deadline still to come."""
        upcoming = math.inf
        for i, (deadline, tids) in enumerate(self.batches):
            if i in self.expired:
                continue
            if deadline > now:
                upcoming = min(upcoming, deadline)
                continue
            self.expired.add(i)
            for tid in tids:
                if self.pending.get(tid) is self:
                    del self.pending[tid]
                    self.waiting -= 1
        if not self.waiting and not self.future.done():
            self.future.set_result(None)
        return upcoming


class _MbapProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[bytes] | _Exchange] = {}
        self.buffer = b""
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not isinstance: uvloop's transports do not derive from asyncio's.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        pending = self.pending
        pos, end = 0, len(buf)
        while end - pos >= 7:
            tid, _proto, length = _MBAP_HEAD.unpack_from(buf, pos)
            if length not in _MBAP_LENGTHS:
                # Not an answer a device can send: no later byte can be trusted to start a
                # frame. Hang up; the waiting requests fail and the next poll reconnects.
                log.warning("Modbus TCP answer with an MBAP length of %d (2..254 allowed): the stream is "
                            "out of step; reconnecting", length)
                self.buffer = b""
                if self.transport is not None:
                    self.transport.close()
                return
            if end - pos < 6 + length:
                break
            frame = buf[pos + 6 : pos + 6 + length]
            pos += 6 + length
            # A late answer to a request already given up has no slot: dropped.
            slot = pending.pop(tid, None)
            if slot is None:
                continue
            if isinstance(slot, _Exchange):
                slot.answered(tid, frame)
            elif not slot.done():
                slot.set_result(frame)
        self.buffer = buf[pos:] if pos < end else b""

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        error = ModbusLinkError(f"connection closed: {exc or 'by peer'}")
        for slot in self.pending.values():
            fut = slot.future if isinstance(slot, _Exchange) else slot
            if not fut.done():
                fut.set_exception(error)
        self.pending.clear()


class TcpMaster:
    """One TCP connection per endpoint, shared by every unit id behind it."""

    def __init__(self, host: str, port: int, connect_timeout_s: float = 3.0, *,
                 tls: ssl.SSLContext | None = None, server_name: str | None = None) -> None:
        self.host = host
        self.port = port
        self.connect_timeout_s = connect_timeout_s
        self.tls = tls
        self.server_name = server_name
        self.requests = 0
        self._protocol: _MbapProtocol | None = None
        self._tid = 0
        self._timeouts = 0  # in a row, across all units: one healthy answer resets it
        self._deadlines: dict[int, tuple[float, asyncio.Future[bytes]]] = {}  # tid -> (deadline, answer)
        self._exchanges: set[_Exchange] = set()  # coalesced writes still waiting for answers
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    async def _connection(self) -> _MbapProtocol:
        proto = self._protocol
        if proto is not None and not proto.lost:
            return proto
        fresh = await _open(_MbapProtocol, self.host, self.port, self.connect_timeout_s, tls=self.tls,
                            server_name=self.server_name)
        self._protocol = fresh
        return fresh

    async def transact(self, request: Request, timeout_s: float) -> bytes:
        """One transaction (the common poll: one read of one device): `transact_many`
        without its lists."""
        proto = self._protocol
        if proto is None or proto.lost:
            proto = await self._connection()
        loop = asyncio.get_running_loop()
        self._tid = tid = self._tid % 0xFFFF + 1
        fut: asyncio.Future[bytes] = loop.create_future()
        proto.pending[tid] = fut
        deadline = loop.time() + timeout_s
        self._deadlines[tid] = (deadline, fut)
        assert proto.transport is not None
        proto.transport.write(_MBAP.pack(tid, 0, len(request.pdu) + 1, request.unit) + request.pdu)
        self.requests += 1
        if deadline < self._timer_at or self._timer_loop is not loop:
            self._arm(loop, deadline)
        try:
            try:
                answer = await fut
            except ModbusTimeout:
                raise await self._timed_out(timeout_s) from None
            self._timeouts = 0
            if answer[0] != request.unit:
                raise ModbusProtocolError(f"answer from unit {answer[0]}, asked unit {request.unit}")
            return answer[1:]
        finally:
            proto.pending.pop(tid, None)  # a late answer then has no future: dropped
            self._deadlines.pop(tid, None)

    async def transact_many(self, requests: Sequence[Request], timeout_s: float) -> list[bytes]:
        """Send the requests back to back in one write (Modbus TCP pipelining: distinct
        transaction ids) and return their answers in order. All share one deadline.
        Raises the first failure."""
        result = (await self.transact_batches([(requests, timeout_s)]))[0]
        if isinstance(result, Exception):
            raise result
        return result

    async def transact_batches(self, batches: Sequence[tuple[Sequence[Request], float]]
                               ) -> list[list[bytes] | Exception]:
        """Several devices' requests in one write (link `coalesce_ms`): each batch (one
        device's reads, its own time-out) gets its answers or the error that ended it; a
        batch that fails does not fail the others. One completion for the whole exchange
        (`_Exchange`): no future, timer or task wake-up per request."""
        proto = self._protocol
        if proto is None or proto.lost:
            proto = await self._connection()
        loop = asyncio.get_running_loop()
        pending = proto.pending
        exchange = _Exchange(loop.create_future(), pending)
        now = loop.time()
        tid = self._tid
        frames: list[bytes] = []
        for requests, timeout_s in batches:
            tids: list[int] = []
            for request in requests:
                tid = tid % 0xFFFF + 1
                pending[tid] = exchange
                tids.append(tid)
                frames.append(_MBAP.pack(tid, 0, len(request.pdu) + 1, request.unit) + request.pdu)
            exchange.batches.append((now + timeout_s, tids))
        self._tid = tid
        exchange.waiting = len(frames)
        assert proto.transport is not None
        proto.transport.write(b"".join(frames))
        self.requests += len(frames)
        if not frames:
            exchange.future.set_result(None)
        self._exchanges.add(exchange)
        earliest = min((deadline for deadline, _tids in exchange.batches), default=math.inf)
        if earliest < math.inf and (earliest < self._timer_at or self._timer_loop is not loop):
            self._arm(loop, earliest)
        lost: ModbusLinkError | None = None
        try:
            await exchange.future
        except ModbusLinkError as exc:
            lost = exc
        finally:
            self._exchanges.discard(exchange)
            if exchange.waiting:  # cancelled or the connection lost: nothing left pending
                for _deadline, tids in exchange.batches:
                    for t in tids:
                        if pending.get(t) is exchange:
                            del pending[t]
            self._disarm_if_idle()
        return await self._outcomes(exchange, batches, lost)

    async def _outcomes(self, exchange: _Exchange, batches: Sequence[tuple[Sequence[Request], float]],
                        lost: ModbusLinkError | None) -> list[list[bytes] | Exception]:
        """Each batch's answers in request order, or the error that ended it; counts the
        time-outs in a row (`_timed_out`)."""
        answers = exchange.answers
        results: list[list[bytes] | Exception] = []
        for (_deadline, tids), (requests, timeout_s) in zip(exchange.batches, batches, strict=True):
            out: list[bytes] = []
            error: Exception | None = None
            for t, request in zip(tids, requests, strict=True):
                answer = answers.get(t)
                if answer is None:
                    error = lost or await self._timed_out(timeout_s)
                    break
                self._timeouts = 0
                if answer[0] != request.unit:
                    error = ModbusProtocolError(f"answer from unit {answer[0]}, asked unit {request.unit}")
                    break
                out.append(answer[1:])
            results.append(out if error is None else error)
        return results

    async def _timed_out(self, timeout_s: float) -> ModbusTimeout:
        """Count a time-out in a row (any answer resets the count); after
        RECONNECT_AFTER_TIMEOUTS no unit on this endpoint answers any more, and the
        connection itself may be dead without a reset (gateway rebooted, NAT dropped it):
        start a new one. Returns the error to raise or report."""
        self._timeouts += 1
        if self._timeouts >= RECONNECT_AFTER_TIMEOUTS:
            await self.close()
            self._timeouts = 0
        return ModbusTimeout(f"no answer within {timeout_s:g} s")

    def _disarm_if_idle(self) -> None:
        """After an exchange, when nothing waits for an answer any more: the timer need not
        fire (a scan whose answers all came would otherwise wake the loop once more at its
        deadline). Not after single transactions: there the armed timer serves the next
        ones too, cheaper than a timer made and cancelled per request."""
        if self._timer is not None and not self._exchanges and not self._deadlines:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at, self._timer_loop = when, loop
        self._timer = loop.call_at(when, self._expire_due, loop)

    def _expire_due(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail the transactions whose deadline has passed; re-arm for the next one."""
        self._timer, self._timer_at = None, math.inf
        now = loop.time() + 0.001  # call_at may fire up to the clock's resolution early
        upcoming = math.inf
        for deadline, fut in list(self._deadlines.values()):
            if deadline <= now:
                if not fut.done():
                    fut.set_exception(ModbusTimeout("timed out"))
            else:
                upcoming = min(upcoming, deadline)
        for exchange in list(self._exchanges):
            upcoming = min(upcoming, exchange.expire(now))
        if upcoming < math.inf:
            self._arm(loop, upcoming)

    async def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None


# --------------------------------------------------------------------------- RTU


def rtu_frame(request: Request) -> bytes:
    return framing.rtu_frame(request.unit, request.pdu)


class _InTurn:
    """A master that carries one transaction at a time (a serial bus behind it)."""

    async def transact(self, request: Request, timeout_s: float) -> bytes:
        raise NotImplementedError

    async def transact_many(self, requests: Sequence[Request], timeout_s: float) -> list[bytes]:
        """A serial line carries one transaction at a time: in turn."""
        return [await self.transact(request, timeout_s) for request in requests]

    async def transact_batches(self, batches: Sequence[tuple[Sequence[Request], float]]
                               ) -> list[list[bytes] | Exception]:
        """In turn too (the link only coalesces Modbus TCP; here for the protocol's sake)."""
        results: list[list[bytes] | Exception] = []
        for requests, timeout_s in batches:
            try:
                results.append(await self.transact_many(requests, timeout_s))
            except _DEVICE_ERRORS as exc:
                results.append(exc)
        return results


class RtuMaster(_InTurn):
    """A serial port: blocking pyserial I/O in a worker thread, one transaction at a time."""

    def __init__(self, port: str, *, baudrate: int = 9600, parity: str = "N", stopbits: int = 1,
                 bytesize: int = 8, framing: str = "rtu") -> None:
        self.port = port
        self.framing = framing
        self.settings = {"baudrate": baudrate, "parity": parity, "stopbits": stopbits, "bytesize": bytesize}
        self.requests = 0
        self._serial: object | None = None
        self._lock = threading.Lock()
        # 3.5 character times of silence end a frame (at least 1.75 ms above 19200 baud).
        self.frame_gap_s = max(3.5 * 11 / baudrate, 0.00175)

    def _open(self) -> object:
        import serial  # pyserial

        if self._serial is None:
            try:
                self._serial = serial.Serial(self.port, **self.settings)
            except (serial.SerialException, OSError) as exc:
                raise ModbusLinkError(f"cannot open serial port {self.port}: {exc}") from None
        return self._serial

    def _transact_blocking(self, request: Request, timeout_s: float) -> bytes:
        import serial

        with self._lock:
            port = self._open()
            assert isinstance(port, serial.Serial)
            try:
                port.reset_input_buffer()  # drop a late answer to an earlier request
                time.sleep(self.frame_gap_s)
                port.timeout = timeout_s
                if self.framing == "ascii":
                    port.write(framing.ascii_frame(request.unit, request.pdu))
                    line = port.read_until(b"\n")
                    if not line.endswith(b"\n"):
                        raise ModbusTimeout(f"no answer within {timeout_s:g} s" if not line else
                                            f"answer cut short after {len(line)} characters")
                    return _checked(request, line, "ascii")
                port.write(rtu_frame(request))
                head = port.read(3)
                if len(head) < 3:
                    raise ModbusTimeout(f"no answer within {timeout_s:g} s")
                need = expected_length(request.function, head[1:3])
                assert need is not None
                rest = port.read(need - 2 + 2)  # rest of the PDU and the CRC
            except ModbusTimeout:
                raise
            except (serial.SerialException, OSError) as exc:  # note: TimeoutError is an OSError
                self._serial = None
                raise ModbusLinkError(f"serial port {self.port}: {exc}") from None
            frame = head + rest
            if len(frame) < need + 3:
                raise ModbusTimeout(f"answer cut short after {len(frame)} bytes")
            return _checked(request, frame, "rtu")

    async def transact(self, request: Request, timeout_s: float) -> bytes:
        self.requests += 1
        return await asyncio.to_thread(self._transact_blocking, request, timeout_s)

    def _close_blocking(self) -> None:
        with self._lock:  # not while a transaction is using the port
            port, self._serial = self._serial, None
            if port is not None:
                port.close()  # type: ignore[attr-defined]

    async def close(self) -> None:
        await asyncio.to_thread(self._close_blocking)


def _checked(request: Request, frame: bytes, kind: str) -> bytes:
    """The answer PDU of a serial-line frame (RTU or ASCII) to `request`."""
    try:
        unit, pdu = framing.read_ascii(frame) if kind == "ascii" else framing.read_rtu(frame)
    except framing.FramingError as exc:
        raise ModbusProtocolError(str(exc)) from None
    if unit != request.unit:
        raise ModbusProtocolError(f"answer from unit {unit}, asked unit {request.unit}")
    return pdu


# --------------------------------------------------------------------------- serial server


class _SerialFrameProtocol(asyncio.Protocol):
    """A TCP connection to a transparent serial server: answers arrive as RTU or ASCII
    frames, one transaction at a time."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiting: tuple[int, asyncio.Future[bytes]] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not isinstance: uvloop's transports do not derive from asyncio's.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiting is None:
            self.buffer.clear()  # nobody asked: a late answer, dropped
            return
        function, fut = self.waiting
        if self.kind == "ascii":
            end = self.buffer.find(b"\n")
            if end < 0:
                return
            whole = bytes(self.buffer[:end + 1])
        else:
            need = framing.rtu_response_length(function, bytes(self.buffer[:3]))
            if need is None or len(self.buffer) < need:
                return
            whole = bytes(self.buffer[:need])
        self.buffer.clear()
        self.waiting = None
        if not fut.done():
            fut.set_result(whole)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiting is not None and not self.waiting[1].done():
            self.waiting[1].set_exception(ModbusLinkError(f"connection closed: {exc or 'by peer'}"))
        self.waiting = None


class FramedTcpMaster(_InTurn):
    """Modbus RTU or ASCII frames over TCP, as a transparent serial device server
    forwards them to and from its RS-485 bus unchanged (no MBAP header, no transaction
    id): one transaction at a time; bytes that arrive when nothing is asked (a late
    answer) are dropped, and after three time-outs in a row the connection is replaced."""

    def __init__(self, host: str, port: int, kind: str, connect_timeout_s: float = 3.0) -> None:
        self.host = host
        self.port = port
        self.kind = kind
        self.connect_timeout_s = connect_timeout_s
        self.requests = 0
        self._protocol: _SerialFrameProtocol | None = None
        self._lock = asyncio.Lock()
        self._timeouts = 0

    async def _connection(self) -> _SerialFrameProtocol:
        proto = self._protocol
        if proto is not None and not proto.lost:
            return proto
        fresh = await _open(lambda: _SerialFrameProtocol(self.kind), self.host, self.port, self.connect_timeout_s,
                            what="serial server ")
        self._protocol = fresh
        return fresh

    async def transact(self, request: Request, timeout_s: float) -> bytes:
        async with self._lock:
            proto = await self._connection()
            fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            proto.buffer.clear()
            proto.waiting = (request.function, fut)
            assert proto.transport is not None
            proto.transport.write(framing.frame(self.kind, request.unit, request.pdu))
            self.requests += 1
            try:
                async with asyncio.timeout(timeout_s):
                    whole = await fut
            except TimeoutError:
                proto.waiting = None
                self._timeouts += 1
                if self._timeouts >= RECONNECT_AFTER_TIMEOUTS:
                    await self.close()
                    self._timeouts = 0
                raise ModbusTimeout(f"no answer within {timeout_s:g} s") from None
            self._timeouts = 0
            return _checked(request, whole, self.kind)

    async def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None
