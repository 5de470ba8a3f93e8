"""Turn the raw words of a read into engineering values, as the profile says."""

from __future__ import annotations

from collections.abc import Sequence

from edge.planner import ReadRequest
from urbansense import registers
from urbansense.config import FieldSpec, Profile
from urbansense.schema import FieldValue


def field_value(spec: FieldSpec, profile: Profile, words: Sequence[int]) -> FieldValue:
    raw = registers.decode(spec.type, words, spec.order_in(profile), bit=spec.bit)
    if isinstance(raw, bool | str):
        return raw
    if spec.enum is not None:
        return spec.enum.get(int(raw), f"unknown-{int(raw)}")
    if isinstance(raw, int) and spec.scale == 1.0 and spec.offset == 0.0:
        return raw
    return round(float(raw) * spec.scale + spec.offset, 9)


def decode_read(request: ReadRequest, profile: Profile, data: Sequence[int]) -> dict[str, FieldValue]:
    out: dict[str, FieldValue] = {}
    for spec in request.fields:
        assert spec.address is not None
        start = spec.address - request.address
        out[spec.name] = field_value(spec, profile, data[start : start + spec.registers])
    return out


class WriteRefused(ValueError):
    """A command value that cannot be written to this field."""


def encode_write(spec: FieldSpec, profile: Profile, value: FieldValue) -> list[int]:
    """Engineering value -> raw words (or [0/1] for a coil) as the profile lays it out."""
    if spec.type in ("bit", "bool"):
        if spec.table == "holding":
            raise WriteRefused(f"{spec.name} is a bit inside a register; write the whole register instead")
        if isinstance(value, bool) or value in (0, 1):
            return [int(bool(value))]
        raise WriteRefused(f"{spec.name} is an on/off coil; send true or false, not {value!r}")
    if spec.type == "string":
        return registers.encode("string", str(value), spec.order_in(profile), length=spec.length)
    if spec.enum is not None and isinstance(value, str):
        reverse = {name: code for code, name in spec.enum.items()}
        if value not in reverse:
            raise WriteRefused(f"{spec.name} accepts {', '.join(reverse)}; not {value!r}")
        value = reverse[value]
    if isinstance(value, bool | str):
        raise WriteRefused(f"{spec.name} takes a number, not {value!r}")
    raw = (float(value) - spec.offset) / spec.scale
    try:
        return registers.encode(spec.type, raw, spec.order_in(profile), length=spec.length)
    except registers.RegisterCodecError as exc:
        raise WriteRefused(str(exc)) from None
