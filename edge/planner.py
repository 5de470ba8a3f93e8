"""Request planning: merge a device's fields into as few Modbus reads as possible.

For fields at holding addresses [0-1, 2-3, 4, 5, 6, 40] with max_gap 10 we read
(0, 7) and (40, 1): the gap 7..39 is wider than max_gap, so it is not read.
A read never exceeds 125 registers or 2000 bits (the Modbus PDU limits).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from edge.modbus_pdu import Request
from urbansense.config import FieldSpec
from urbansense.schema import FieldValue

MAX_REGISTERS = 125
MAX_BITS = 2000


@dataclass(slots=True)
class ReadRequest:
    table: str  # holding | input | coil | discrete
    address: int
    count: int
    fields: list[FieldSpec] = field(default_factory=list)
    #: (profile, [(name, offset, registers, decoder)]): built by edge.decoding on first use.
    compiled: tuple[object, list[tuple[str, int, int, Callable[[Sequence[int]], FieldValue]]]] | None = \
        field(default=None, compare=False, repr=False)
    #: (unit, request PDU) of the last read built for it: the same bytes every poll.
    request: tuple[int, Request] | None = field(default=None, compare=False, repr=False)
    #: (profile, the whole-read decoder or None): built by edge.decoding on first use.
    fast: tuple[object, Callable[[bytes], dict[str, FieldValue]] | None] | None = \
        field(default=None, compare=False, repr=False)

    @property
    def end(self) -> int:
        return self.address + self.count


def plan_reads(fields: list[FieldSpec], *, max_gap: int = 10, max_registers: int = MAX_REGISTERS,
               max_bits: int = MAX_BITS) -> list[ReadRequest]:
    requests: list[ReadRequest] = []
    by_table: dict[str, list[FieldSpec]] = {}
    for f in fields:
        if f.address is not None:
            by_table.setdefault(f.table, []).append(f)
    for table in ("holding", "input", "coil", "discrete"):
        limit = max_bits if table in ("coil", "discrete") else max_registers
        current: ReadRequest | None = None
        for f in sorted(by_table.get(table, []), key=lambda s: (s.address, s.registers)):
            assert f.address is not None
            f_end = f.address + f.registers
            if current is not None and f.address - current.end <= max_gap and \
                    max(current.end, f_end) - current.address <= limit:
                current.count = max(current.end, f_end) - current.address
                current.fields.append(f)
                continue
            current = ReadRequest(table, f.address, f.registers, [f])
            requests.append(current)
    return requests


def split_per_field(request: ReadRequest) -> list[ReadRequest]:
    """The fallback for a device that refuses a merged read ("illegal data address",
    typically because the gap holds unmapped registers): one read per field."""
    return [ReadRequest(request.table, f.address, f.registers, [f])
            for f in request.fields if f.address is not None]


def requests_per_field(fields: list[FieldSpec]) -> int:
    """What a one-request-per-field poller would send (the baseline we beat)."""
    return sum(1 for f in fields if f.address is not None)
