"""What the edge agent reads back from a simulated device.

Live, a value goes through the device's registers (simulators/device.py) and the edge
decodes it (edge/decoding.py): integers are rounded to the register's resolution,
float32 loses precision, enums come back as their names. Offline play must give exactly
those values without the round trip, so this module applies the same quantisation
directly; a test checks it against registers.encode/decode for every profile field.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from urbansense.config import FieldSpec, Profile
from urbansense.schema import FieldValue

Quantiser = Callable[[FieldValue], FieldValue]
_INT_RANGE = {"int16": (-(1 << 15), (1 << 15) - 1), "uint16": (0, (1 << 16) - 1),
              "int32": (-(1 << 31), (1 << 31) - 1), "uint32": (0, (1 << 32) - 1),
              "int64": (-(1 << 63), (1 << 63) - 1), "uint64": (0, (1 << 64) - 1)}


def clamp_raw(spec: FieldSpec, raw: float) -> float:
    """Keep a raw value inside its register type (a real transmitter saturates)."""
    lo, hi = _INT_RANGE.get(spec.type, (None, None))
    if lo is None or hi is None:
        return raw
    return float(min(hi, max(lo, raw)))


def _quantiser(spec: FieldSpec) -> Quantiser:
    scale, offset = spec.scale, spec.offset
    if spec.type in ("bit", "bool"):
        return lambda v: bool(v)
    if spec.type == "string":
        return lambda v: str(v)
    if spec.enum is not None:
        enum = spec.enum
        names = {name: code for code, name in enum.items()}

        def enum_q(v: FieldValue) -> FieldValue:
            code = names[v] if isinstance(v, str) else round(clamp_raw(spec, (float(v) - offset) / scale))
            return enum.get(int(code), f"unknown-{int(code)}")
        return enum_q
    if spec.type in ("float32", "float64"):
        fmt = ">f" if spec.type == "float32" else ">d"

        def float_q(v: FieldValue) -> FieldValue:
            raw = struct.unpack(fmt, struct.pack(fmt, (float(v) - offset) / scale))[0]
            return round(float(raw) * scale + offset, 9)
        return float_q
    plain = scale == 1.0 and offset == 0.0

    def int_q(v: FieldValue) -> FieldValue:
        raw = round(clamp_raw(spec, (float(v) - offset) / scale))
        return raw if plain else round(float(raw) * scale + offset, 9)
    return int_q


def modbus_quantisers(profile: Profile) -> dict[str, Quantiser]:
    return {spec.name: _quantiser(spec) for spec in profile.fields}
