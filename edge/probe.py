"""`urbansense edge probe`: read raw registers and show them decoded in every type and
byte/word order, for the day the datasheet gets the word order wrong."""

from __future__ import annotations

import math

from edge.modbus_pdu import parse_response, read_request
from edge.modbus_transport import ModbusMaster
from urbansense.registers import ORDER_ALIASES, decode_every_way


async def read_raw(master: ModbusMaster, unit: int, table: str, address: int, count: int,
                   timeout_s: float) -> list[int]:
    request = read_request(unit, table, address, count)
    try:
        return parse_response(request, await master.transact(request, timeout_s), count)[:count]
    finally:
        await master.close()


def _fmt(value: int | float | str) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value) or (value != 0 and not 1e-6 <= abs(value) < 1e12):
            return f"{value:.4g}"
        return f"{value:.6g}"
    if isinstance(value, str):
        return repr(value if value.isprintable() else value.encode("unicode_escape").decode())
    return str(value)


def render(address: int, words: list[int], table: str = "holding") -> str:
    lines = []
    if table in ("coil", "discrete"):
        lines.append(f"{table} {address}..{address + len(words) - 1}: " + " ".join(str(b) for b in words))
        return "\n".join(lines)
    lines.append(f"{table} registers {address}..{address + len(words) - 1}")
    lines.append("  " + "  ".join(f"{address + i}=0x{w:04X} ({w})" for i, w in enumerate(words)))
    orders = list(ORDER_ALIASES)
    for start in range(len(words)):
        decoded = decode_every_way(words[start:])
        lines.append("")
        lines.append(f"starting at {address + start} (+{start})")
        lines.append(f"  {'type':8}" + "".join(f"{o:>24}" for o in orders))
        for dtype, row in decoded.items():
            lines.append(f"  {dtype:8}" + "".join(f"{_fmt(row[o]) if o in row else '-':>24}" for o in orders))
    lines.append("")
    lines.append("ABCD = big-endian (Modbus standard), CDAB = word swapped, BADC = byte swapped, "
                 "DCBA = both; put the order that gives a plausible value in the profile's `order:`.")
    return "\n".join(lines)
