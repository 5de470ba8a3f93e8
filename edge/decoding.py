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
