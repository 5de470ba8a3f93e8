"""A simulated device's data tables, built from the same profile the edge agent reads.

`set("pressure_mpa", 0.31)` turns the engineering value into raw registers exactly as the
profile says (scale, offset, type, byte/word order), so the edge agent decoding the
same profile gets the value back.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from simulators.readout import clamp_raw
from urbansense import registers
from urbansense.config import FieldSpec, Profile
from urbansense.schema import FieldValue

TABLES = ("holding", "input", "coil", "discrete")
ILLEGAL_DATA_ADDRESS = 2
ILLEGAL_DATA_VALUE = 3


class DeviceTables:
    def __init__(self, profile: Profile, *, strict_map: bool = False) -> None:
        self.profile = profile
        #: Refuse reads that touch unmapped addresses (like many real devices do).
        self.strict_map = strict_map
        #: A device that stops answering (link fault); the server stays silent for it.
        self.silent = False
        #: Modbus exception code to answer every request with (0: none).
        self.exception_code = 0
        self._lock = threading.Lock()
        self.tables: dict[str, dict[int, int]] = {t: {} for t in TABLES}
        self.values: dict[str, float | int | str | bool] = {}
        #: Engineering values a Modbus master wrote (e.g. lamp_on); the scenario honours them.
        self.commands: dict[str, FieldValue] = {}
        #: Bumped whenever a register changes; the TCP server's cached read answers
        #: (`responses`: request PDU -> (version, response PDU)) are valid for one version.
        self.version = 0
        self.responses: dict[bytes, tuple[int, bytes]] = {}
        self._specs = {spec.name: spec for spec in profile.fields}
        for spec in profile.fields:
            self.set(spec.name, spec.sim.get("initial", 0))

    def _raw(self, spec: FieldSpec, value: float | int | str | bool) -> float | int | str | bool:
        if spec.type in ("string", "bit", "bool"):
            return value
        if spec.enum is not None and isinstance(value, str):
            reverse = {name: code for code, name in spec.enum.items()}
            return reverse[value]
        # A transmitter saturates at the ends of its register's range.
        return clamp_raw(spec, (float(value) - spec.offset) / spec.scale)

    def update(self, values: Mapping[str, FieldValue]) -> None:
        """Set several fields at once (one scenario step)."""
        current = self.values
        for name, value in values.items():
            # An unchanged value leaves its registers (and the cached answers) as they are.
            if name in self._specs and (name not in current or current[name] != value
                                        or type(current[name]) is not type(value)):
                self.set(name, value)

    def set(self, name: str, value: float | int | str | bool) -> None:
        """Set a field to an engineering value."""
        spec = self._specs.get(name) or self.profile.field(name)
        assert spec.address is not None
        raw = self._raw(spec, value)
        table = self.tables[spec.table]
        with self._lock:
            self.values[name] = value
            self.version += 1
            if spec.type in ("bit", "bool") and spec.bit is not None:
                word = table.get(spec.address, 0)
                mask = 1 << spec.bit
                table[spec.address] = (word | mask) if raw else (word & ~mask)
                return
            words = registers.encode(spec.type, raw, spec.order_in(self.profile), length=spec.length)
            for i, word in enumerate(words):
                table[spec.address + i] = word

    def read(self, table: str, address: int, count: int) -> list[int] | None:
        """Raw words/bits for a read, or None when the range touches unmapped addresses
        and the device is strict (answered with ILLEGAL DATA ADDRESS)."""
        data = self.tables[table]
        with self._lock:
            if self.strict_map:
                if any(a not in data for a in range(address, address + count)):
                    return None
            elif data:
                top = max(data)
                if address + count - 1 > top or address < 0:
                    return None
            return [data.get(a, 0) for a in range(address, address + count)]

    def write(self, table: str, address: int, values: list[int]) -> int:
        """A master writes registers/coils. Returns 0 when accepted, else the Modbus
        exception code a real device answers: 2 (ILLEGAL DATA ADDRESS) for a field the
        profile does not mark writable, 3 (ILLEGAL DATA VALUE) outside its min..max."""
        writable = {
            spec.address + i
            for spec in self.profile.fields
            if spec.writable and spec.table == table and spec.address is not None
            for i in range(spec.registers)
        }
        if any(address + i not in writable for i in range(len(values))):
            return ILLEGAL_DATA_ADDRESS
        with self._lock:
            staged = dict(self.tables[table])
            for i, v in enumerate(values):
                staged[address + i] = int(v)
            decoded: dict[str, FieldValue] = {}
            for spec in self.profile.fields:
                if spec.table == table and spec.address is not None and spec.address in range(
                    address, address + len(values)
                ):
                    words = [staged.get(spec.address + k, 0) for k in range(spec.registers)]
                    raw = registers.decode(spec.type, words, spec.order_in(self.profile), bit=spec.bit)
                    if isinstance(raw, int | float) and not isinstance(raw, bool):
                        value = raw * spec.scale + spec.offset
                        if (spec.min is not None and value < spec.min) or (spec.max is not None and value > spec.max):
                            return ILLEGAL_DATA_VALUE
                        decoded[spec.name] = value
                    else:
                        decoded[spec.name] = raw
            self.tables[table] = staged
            self.version += 1
            self.values.update(decoded)
            self.commands.update(decoded)
        return 0
