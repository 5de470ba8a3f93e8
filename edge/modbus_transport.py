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
import math
import ssl
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

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
_MBAP = struct.Struct(">HHHB")
_MBAP_HEAD = struct.Struct(">HHH")
_Sent = tuple[int, "asyncio.Future[bytes]", Request]
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


class _MbapProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[bytes]] = {}
        self.buffer = b""
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        self.buffer = buf
        while len(self.buffer) >= 7:
            tid, _proto, length = _MBAP_HEAD.unpack_from(self.buffer)
            if len(self.buffer) < 6 + length:
                return
            frame, self.buffer = self.buffer[6 : 6 + length], self.buffer[6 + length :]
            fut = self.pending.pop(tid, None)
            # A late answer to a request that already timed out has no future: dropped.
            if fut is not None and not fut.done():
                fut.set_result(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ModbusLinkError(f"connection closed: {exc or 'by peer'}"))
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
            return (await self._collect([(tid, fut, request)], timeout_s))[0]
        finally:
            proto.pending.pop(tid, None)  # a late answer then has no future: dropped
            self._deadlines.pop(tid, None)

    def _send(self, proto: _MbapProtocol, loop: asyncio.AbstractEventLoop,
              batches: Sequence[tuple[Sequence[Request], float]]) -> list[list[_Sent]]:
        """Write every batch's requests in one write (distinct transaction ids); each
        batch has its own deadline. Returns each batch's (tid, answer, request)."""
        now = loop.time()
        earliest = math.inf
        out: list[list[_Sent]] = []
        frames: list[bytes] = []
        for requests, timeout_s in batches:
            deadline = now + timeout_s
            earliest = min(earliest, deadline)
            sent: list[_Sent] = []
            for request in requests:
                self._tid = tid = self._tid % 0xFFFF + 1
                fut: asyncio.Future[bytes] = loop.create_future()
                proto.pending[tid] = fut
                self._deadlines[tid] = (deadline, fut)
                sent.append((tid, fut, request))
                frames.append(_MBAP.pack(tid, 0, len(request.pdu) + 1, request.unit) + request.pdu)
            out.append(sent)
        assert proto.transport is not None
        proto.transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
        self.requests += len(frames)
        # Not asyncio.timeout (never wait_for: see _connection): one timer per transaction,
        # cancelled a millisecond later, costs more than the rest of the transaction; the
        # master's single timer (_arm) fires only when the earliest deadline has passed.
        if earliest < self._timer_at or self._timer_loop is not loop:
            self._arm(loop, earliest)
        return out

    async def _collect(self, sent: list[_Sent], timeout_s: float) -> list[bytes]:
        """The answers of one batch, in order; raises on the first that fails."""
        answers: list[bytes] = []
        for _tid, fut, request in sent:
            try:
                answer = await fut
            except ModbusTimeout:
                self._timeouts += 1
                if self._timeouts >= RECONNECT_AFTER_TIMEOUTS:
                    # No unit on this endpoint answers any more: the connection itself may be
                    # dead without a reset (gateway rebooted, NAT dropped it). Start a new one.
                    await self.close()
                    self._timeouts = 0
                raise ModbusTimeout(f"no answer within {timeout_s:g} s") from None
            self._timeouts = 0
            if answer[0] != request.unit:
                raise ModbusProtocolError(f"answer from unit {answer[0]}, asked unit {request.unit}")
            answers.append(answer[1:])
        return answers

    def _forget(self, proto: _MbapProtocol, sent: list[_Sent], ok: bool) -> None:
        for tid, fut, _request in sent:
            proto.pending.pop(tid, None)  # a late answer then has no future: dropped
            self._deadlines.pop(tid, None)
            if not ok and fut.done() and not fut.cancelled():
                fut.exception()  # the ones after the failure: retrieved, so asyncio does not log them

    async def transact_many(self, requests: Sequence[Request], timeout_s: float) -> list[bytes]:
        """Send the requests back to back in one write (Modbus TCP pipelining: distinct
        transaction ids) and return their answers in order; one request is a plain
        transaction. All share one deadline. Raises on the first that fails."""
        proto = await self._connection()
        sent = self._send(proto, asyncio.get_running_loop(), [(requests, timeout_s)])[0]
        ok = False
        try:
            answers = await self._collect(sent, timeout_s)
            ok = True
        finally:
            self._forget(proto, sent, ok)
        return answers

    async def transact_batches(self, batches: Sequence[tuple[Sequence[Request], float]]
                               ) -> list[list[bytes] | Exception]:
        """Several devices' requests in one write (link `coalesce_ms`): each batch (one
        device's reads, its own time-out) gets its answers or the error that ended it; a
        batch that fails does not fail the others. The answers are collected as they come."""
        proto = await self._connection()
        sent_all = self._send(proto, asyncio.get_running_loop(), batches)
        results: list[list[bytes] | Exception] = []
        try:
            for sent, (_requests, timeout_s) in zip(sent_all, batches, strict=True):
                ok = False
                try:
                    results.append(await self._collect(sent, timeout_s))
                    ok = True
                except _DEVICE_ERRORS as exc:
                    results.append(exc)
                finally:
                    self._forget(proto, sent, ok)
        finally:
            for sent in sent_all[len(results):]:  # cancelled part-way: nothing left pending
                self._forget(proto, sent, False)
        return results

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
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

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
