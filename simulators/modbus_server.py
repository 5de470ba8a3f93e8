"""Serve many simulated devices (unit ids) on one Modbus TCP port with pymodbus.

We plug our own datastore into pymodbus's server (a ModbusServerContext subclass taking
the "old simulator" path), so that one process can serve hundreds of devices whose
registers the scenario engine updates in place, and can answer like a faulty device:
silence (timeout), or a Modbus exception.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusTcpServer

from simulators.device import DeviceTables

log = logging.getLogger(__name__)
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

_FC_TABLE = {1: "coil", 2: "discrete", 3: "holding", 4: "input",
             5: "coil", 15: "coil", 6: "holding", 16: "holding", 22: "holding", 23: "holding"}


class UnitsContext(ModbusServerContext):
    """All devices behind one Modbus endpoint, by unit id."""

    def __init__(self, units: dict[int, DeviceTables]) -> None:  # no super(): we replace it
        self.units = units
        self.old_simulator = True
        self.simdevices = []
        self.requests = 0

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


class ModbusEndpoint:
    """One TCP port serving a set of units; runs in the caller's asyncio loop."""

    def __init__(self, host: str, port: int, units: dict[int, DeviceTables]) -> None:
        self.host = host
        self.port = port
        self.context = UnitsContext(units)
        self._server: ModbusTcpServer | None = None

    async def start(self) -> None:
        self._server = ModbusTcpServer(self.context, address=(self.host, self.port),
                                       ignore_missing_devices=True)
        await self._server.serve_forever(background=True)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
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
