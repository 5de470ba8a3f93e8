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
import struct
import threading
import time
from collections.abc import Sequence
from typing import Protocol

from edge.modbus_pdu import (
    ModbusLinkError,
    ModbusProtocolError,
    ModbusTimeout,
    Request,
    expected_length,
)


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

    def __init__(self, host: str, port: int, connect_timeout_s: float = 3.0) -> None:
        self.host = host
        self.port = port
        self.connect_timeout_s = connect_timeout_s
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
        loop = asyncio.get_running_loop()
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that arrives as the awaited future completes, and the agent would never stop.
            async with asyncio.timeout(self.connect_timeout_s):
                _transport, fresh = await loop.create_connection(_MbapProtocol, self.host, self.port)
        except (TimeoutError, OSError) as exc:
            why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            raise ModbusLinkError(f"cannot connect to {self.host}:{self.port}: {why}") from None
        self._protocol = fresh
        return fresh

    async def transact(self, request: Request, timeout_s: float) -> bytes:
        return (await self.transact_many([request], timeout_s))[0]

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


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """Modbus RTU CRC (poly 0xA001, init 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ b) & 0xFF]
    return crc


def rtu_frame(request: Request) -> bytes:
    body = bytes([request.unit]) + request.pdu
    return body + struct.pack("<H", crc16(body))


class RtuMaster:
    """A serial port: blocking pyserial I/O in a worker thread, one transaction at a time."""

    def __init__(self, port: str, *, baudrate: int = 9600, parity: str = "N", stopbits: int = 1,
                 bytesize: int = 8) -> None:
        self.port = port
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
                port.write(rtu_frame(request))
                port.timeout = timeout_s
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
            if crc16(frame[:-2]) != struct.unpack("<H", frame[-2:])[0]:
                raise ModbusProtocolError("CRC mismatch (noise on the line or wrong baud rate?)")
            if frame[0] != request.unit:
                raise ModbusProtocolError(f"answer from unit {frame[0]}, asked unit {request.unit}")
            return frame[1:-2]

    async def transact(self, request: Request, timeout_s: float) -> bytes:
        self.requests += 1
        return await asyncio.to_thread(self._transact_blocking, request, timeout_s)

    async def transact_many(self, requests: Sequence[Request], timeout_s: float) -> list[bytes]:
        """A serial line carries one transaction at a time: in turn."""
        return [await self.transact(request, timeout_s) for request in requests]

    async def transact_batches(self, batches: Sequence[tuple[Sequence[Request], float]]
                               ) -> list[list[bytes] | Exception]:
        """In turn too (the link only coalesces on TCP; here for the protocol's sake)."""
        results: list[list[bytes] | Exception] = []
        for requests, timeout_s in batches:
            try:
                results.append(await self.transact_many(requests, timeout_s))
            except _DEVICE_ERRORS as exc:
                results.append(exc)
        return results

    def _close_blocking(self) -> None:
        with self._lock:  # not while a transaction is using the port
            port, self._serial = self._serial, None
            if port is not None:
                port.close()  # type: ignore[attr-defined]

    async def close(self) -> None:
        await asyncio.to_thread(self._close_blocking)
