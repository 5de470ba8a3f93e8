"""Serve many simulated devices (unit ids) on one Modbus TCP port.

The TCP hot path is our own lean asyncio slave (`MbapServerProtocol`): MBAP framing,
function codes 1/2/3/4 (reads), 5/6/15/16 (writes), exception answers for an illegal
function, address or value, and unit-id routing to the devices behind the port. A
device can answer like a faulty one: silence (the master times out) or a Modbus
exception. Read answers are cached per device and request until the scenario next
changes that device's registers (`DeviceTables.version`), so a device polled many times
per tick costs one dictionary lookup per request. See docs/ARCHITECTURE.md ("package
choices") for why this replaced pymodbus's TCP server: per request it spent ~80 us of
Python in the simulator, which capped the district-scale soak.

pymodbus still serves Modbus RTU where a test needs it: `UnitsContext` plugs the same
devices into pymodbus's server as a datastore (the "old simulator" path).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
import threading
from collections.abc import Sequence
from typing import cast

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException

from simulators.device import DeviceTables
from urbansense import modbus_framing as framing

log = logging.getLogger(__name__)
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

_FC_TABLE = {1: "coil", 2: "discrete", 3: "holding", 4: "input",
             5: "coil", 15: "coil", 6: "holding", 16: "holding", 22: "holding", 23: "holding"}
_READ_TABLE = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}
#: Largest quantity per read (Modbus application protocol 1.1b3, 6.1-6.4).
_MAX_READ = {1: 2000, 2: 2000, 3: 125, 4: 125}
ILLEGAL_FUNCTION = 1
ILLEGAL_DATA_ADDRESS = 2
ILLEGAL_DATA_VALUE = 3
_MBAP = struct.Struct(">HHHB")
_ADDR_COUNT = struct.Struct(">HH")


class UnitsContext(ModbusServerContext):
    """All devices behind one Modbus endpoint, by unit id (also pymodbus's datastore for RTU)."""

    def __init__(self, units: dict[int, DeviceTables]) -> None:  # no super(): we replace it
        self.units = units
        self.old_simulator = True
        self.simdevices = []
        self.requests = 0
        #: TCP segments answered (a pipelining master sends several requests in one).
        self.segments = 0

    def _device(self, unit: int) -> DeviceTables:
        dev = self.units.get(unit)
        if dev is None or dev.silent:
            # With ignore_missing_devices the server sends nothing: the master times out.
            raise NoSuchIdException(f"unit {unit} does not answer")
        return dev

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        self.requests += 1
        dev = self._device(device_id)
        if dev.exception_code:
            return ExcCodes(dev.exception_code)
        table = _FC_TABLE.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        values = dev.read(table, address, count)
        if values is None:
            return ExcCodes.ILLEGAL_ADDRESS
        if table in ("coil", "discrete"):
            return [bool(v) for v in values]
        return values

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: Sequence[int] | Sequence[bool]
    ) -> ExcCodes | None:
        dev = self._device(device_id)
        if dev.exception_code:
            return ExcCodes(dev.exception_code)
        table = _FC_TABLE.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        code = dev.write(table, address, [int(v) for v in values])
        return ExcCodes(code) if code else None

    def device_ids(self) -> list[int]:
        return list(self.units)


# --------------------------------------------------------------------------- PDUs


def _exception(function: int, code: int) -> bytes:
    return bytes((function | 0x80, code))


def _pack_bits(values: Sequence[int]) -> bytes:
    out = bytearray((len(values) + 7) // 8)
    for i, v in enumerate(values):
        if v:
            out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


def _read(dev: DeviceTables, function: int, pdu: bytes) -> bytes:
    if len(pdu) != 5:
        return _exception(function, ILLEGAL_DATA_VALUE)
    address, count = _ADDR_COUNT.unpack_from(pdu, 1)
    if not 1 <= count <= _MAX_READ[function]:
        return _exception(function, ILLEGAL_DATA_VALUE)
    values = dev.read(_READ_TABLE[function], address, count)
    if values is None:
        return _exception(function, ILLEGAL_DATA_ADDRESS)
    data = _pack_bits(values) if function <= 2 else struct.pack(f">{count}H", *(v & 0xFFFF for v in values))
    return bytes((function, len(data))) + data


def _write(dev: DeviceTables, function: int, pdu: bytes) -> bytes:
    if function in (5, 6):
        if len(pdu) != 5:
            return _exception(function, ILLEGAL_DATA_VALUE)
        address, value = _ADDR_COUNT.unpack_from(pdu, 1)
        if function == 5:
            if value not in (0xFF00, 0x0000):
                return _exception(function, ILLEGAL_DATA_VALUE)
            table, values = "coil", [1 if value else 0]
        else:
            table, values = "holding", [value]
        echo = pdu
    else:
        if len(pdu) < 6:
            return _exception(function, ILLEGAL_DATA_VALUE)
        address, count = _ADDR_COUNT.unpack_from(pdu, 1)
        nbytes = pdu[5]
        data = pdu[6:]
        if function == 15:
            ok = 1 <= count <= 1968 and nbytes == (count + 7) // 8 == len(data)
            table, values = "coil", [(data[i >> 3] >> (i & 7)) & 1 for i in range(count)] if ok else []
        else:
            ok = 1 <= count <= 123 and nbytes == 2 * count == len(data)
            table, values = "holding", list(struct.unpack(f">{count}H", data)) if ok else []
        if not ok:
            return _exception(function, ILLEGAL_DATA_VALUE)
        echo = pdu[:5]
    code = dev.write(table, address, values)
    return _exception(function, code) if code else echo


def answer(context: UnitsContext, unit: int, pdu: bytes) -> bytes | None:
    """The response PDU for a request PDU to `unit`, or None to stay silent."""
    context.requests += 1
    dev = context.units.get(unit)
    if dev is None or dev.silent or not pdu:
        return None
    function = pdu[0]
    if dev.exception_code:
        return _exception(function, dev.exception_code)
    if function in _READ_TABLE:
        cache = dev.responses
        version = dev.version
        hit = cache.get(pdu)
        if hit is not None and hit[0] == version:
            return hit[1]
        response = _read(dev, function, pdu)
        if len(cache) > 64:  # a client sweeping addresses must not grow it without bound
            cache.clear()
        cache[pdu] = (version, response)
        return response
    if function in (5, 6, 15, 16):
        return _write(dev, function, pdu)
    return _exception(function, ILLEGAL_FUNCTION)


class _EndpointConnection(asyncio.Protocol):
    """One client connection of an endpoint (closed with it)."""

    def __init__(self, endpoint: ModbusEndpoint) -> None:
        self.endpoint = endpoint
        self.context = endpoint.context
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not isinstance: uvloop's transports do not derive from asyncio's.
        self.transport = cast(asyncio.Transport, transport)
        self.endpoint.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.endpoint.connections.discard(self)


class MbapServerProtocol(_EndpointConnection):
    """One client connection: MBAP frames in, answers out (several frames per segment
    are answered in one write)."""

    def __init__(self, endpoint: ModbusEndpoint) -> None:
        super().__init__(endpoint)
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        out: list[bytes] = []
        context = self.context
        while len(buf) >= 8:
            tid, proto, length, unit = _MBAP.unpack_from(buf)
            if proto != 0 or not 2 <= length <= 254:
                # Not Modbus TCP: nothing after this can be framed; drop the client.
                log.warning("Modbus TCP client sent a bad MBAP header (protocol %d, length %d); closing",
                            proto, length)
                assert self.transport is not None
                self.transport.close()
                self.buffer = b""
                return
            end = 6 + length
            if len(buf) < end:
                break
            response = answer(context, unit, buf[7:end])
            if response is not None:
                out.append(_MBAP.pack(tid, 0, len(response) + 1, unit) + response)
            buf = buf[end:]
        self.buffer = buf
        if out:
            context.segments += 1
        if out and self.transport is not None:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])


class SerialServerProtocol(_EndpointConnection):
    """One client of a transparent serial device server: RTU or ASCII frames in, the bus's
    answers out in the same framing. A frame with a bad CRC or LRC gets no answer, as on
    the bus (the master times out)."""

    def __init__(self, endpoint: ModbusEndpoint) -> None:
        super().__init__(endpoint)
        self.kind = endpoint.framing
        self.serial_buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self.serial_buffer += data
        out: list[bytes] = []
        while self.serial_buffer:
            if self.kind == "ascii":
                end = self.serial_buffer.find(b"\n")
                if end < 0:
                    break
                whole = bytes(self.serial_buffer[:end + 1])
            else:
                need = framing.rtu_request_length(bytes(self.serial_buffer[:7]))
                if need is None or len(self.serial_buffer) < need:
                    break
                whole = bytes(self.serial_buffer[:need])
            del self.serial_buffer[:len(whole)]
            try:
                unit, pdu = framing.read_ascii(whole) if self.kind == "ascii" else framing.read_rtu(whole)
            except framing.FramingError:
                self.serial_buffer.clear()  # resynchronise on the next request, as a bus does after a gap
                break
            response = answer(self.context, unit, pdu)
            if response is not None:
                out.append(framing.frame(self.kind, unit, response))
        if len(self.serial_buffer) > 600:
            self.serial_buffer.clear()
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


class ModbusEndpoint:
    """One TCP port serving a set of units; runs in the caller's asyncio loop. With
    framing rtu or ascii it is a transparent serial device server (the units on its bus
    answer RTU or ASCII frames over TCP); with `tls` it serves Modbus/TCP Security."""

    def __init__(self, host: str, port: int, units: dict[int, DeviceTables], *, framing: str = "mbap",
                 tls: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.port = port
        self.framing = framing
        self.tls = tls
        self.context = UnitsContext(units)
        self.connections: set[_EndpointConnection] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        factory: type[MbapServerProtocol | SerialServerProtocol] = (
            MbapServerProtocol if self.framing == "mbap" else SerialServerProtocol)
        self._server = await loop.create_server(lambda: factory(self), self.host, self.port,
                                                reuse_address=True, ssl=self.tls)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.close()
            await self._server.wait_closed()
            self._server = None


class ThreadedModbusServer:
    """Runs endpoints in a background thread with its own event loop (tests, tools)."""

    def __init__(self, endpoints: list[ModbusEndpoint]) -> None:
        self.endpoints = endpoints
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="modbus-sim")

    def start(self) -> None:
        self._thread.start()
        for ep in self.endpoints:
            asyncio.run_coroutine_threadsafe(ep.start(), self._loop).result(10)

    def stop(self) -> None:
        for ep in self.endpoints:
            asyncio.run_coroutine_threadsafe(ep.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
