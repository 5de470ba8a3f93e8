"""Minimal signal generation for a gateway's devices: nominal value plus seeded noise.

Used by `urbansense sim serve` (the demo). Scenarios with incidents and faults run on
simulators/runner.py instead; see simulators/README.md.
"""

from __future__ import annotations

import random
from pathlib import Path

from simulators.device import DeviceTables
from simulators.modbus_server import ModbusEndpoint, ThreadedModbusServer
from urbansense.config import LoadedGateway, load_gateway


class SimulatedGateway:
    def __init__(self, gateway: LoadedGateway, seed: int = 1) -> None:
        self.gateway = gateway
        self.rng = random.Random(seed)
        self.devices: dict[str, DeviceTables] = {}
        endpoints: list[ModbusEndpoint] = []
        for link in gateway.config.links:
            if link.transport != "tcp":
                continue
            units: dict[int, DeviceTables] = {}
            for dev in link.devices:
                tables = DeviceTables(gateway.profiles[dev.profile])
                units[dev.unit] = tables
                self.devices[dev.id] = tables
            endpoints.append(ModbusEndpoint(link.host, link.port, units))
        self.server = ThreadedModbusServer(endpoints)

    @classmethod
    def from_config(cls, path: Path, seed: int = 1) -> SimulatedGateway:
        return cls(load_gateway(path), seed)

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def tick(self, pressure_override: float | None = None) -> None:
        """Advance every device by one step of noise around its nominal values."""
        for tables in self.devices.values():
            for spec in tables.profile.fields:
                nominal = spec.sim.get("nominal")
                if nominal is None:
                    continue
                value = float(nominal) + self.rng.gauss(0.0, float(spec.sim.get("noise", 0.0)))
                if spec.name == "pressure_mpa" and pressure_override is not None:
                    value = pressure_override + self.rng.gauss(0.0, 0.002)
                tables.set(spec.name, round(value, 4))
