"""Turn the raw words of a read into engineering values, as the profile says."""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

from edge.planner import ReadRequest
from urbansense import codec, registers
from urbansense.config import FieldSpec, Profile
from urbansense.schema import FieldValue


def field_value(spec: FieldSpec, profile: Profile, words: Sequence[int]) -> FieldValue:
    """The engineering value, in the type the field's family declares where that loses
    nothing (codec.to_declared: the ingester stores declared fields in that type only)."""
    raw = registers.decode(spec.type, words, spec.order_in(profile), bit=spec.bit)
    if isinstance(raw, bool | str):
        return raw
    if spec.enum is not None:
        return spec.enum.get(int(raw), f"unknown-{int(raw)}")
    if isinstance(raw, int) and spec.scale == 1.0 and spec.offset == 0.0:
        return codec.to_declared(profile.measurement, spec.name, raw)
    return codec.to_declared(profile.measurement, spec.name, round(float(raw) * spec.scale + spec.offset, 9))


FieldDecoder = Callable[[Sequence[int]], FieldValue]


def field_decoder(spec: FieldSpec, profile: Profile) -> FieldDecoder:
    """`field_value` for one field with its type, order and scaling worked out once: the
    polling hot path calls this for every field of every poll. Same results as
    `field_value` (a test checks every shipped profile field)."""
    order = spec.order_in(profile)
    if spec.type == "string" or order not in registers.ORDER_ALIASES or spec.type not in registers.WORDS:
        return lambda words: field_value(spec, profile, words)
    if spec.type in ("bit", "bool"):
        bit = spec.bit
        if bit is None:
            return lambda words: bool(words[0])
        return lambda words: bool((words[0] >> bit) & 1)
    n = registers.WORDS[spec.type]
    byte_order, word_order = registers.ORDER_ALIASES[order]
    pack = struct.Struct(("<" if byte_order == "little" else ">") + f"{n}H").pack
    unpack = struct.Struct(registers._STRUCT[spec.type]).unpack
    reverse = word_order == "little" and n > 1
    enum, scale, offset = spec.enum, spec.scale, spec.offset
    plain = scale == 1.0 and offset == 0.0
    is_float = spec.type.startswith("float")
    declared = codec.FIELD_TYPES.get(profile.measurement, {}).get(spec.name)
    if declared is not None and enum is None and (declared == "int") != (plain and not is_float):
        return lambda words: field_value(spec, profile, words)  # converted to the declared type

    def decode(words: Sequence[int]) -> FieldValue:
        if len(words) != n:
            return field_value(spec, profile, words)  # raises the codec's error
        raw = unpack(pack(*(words[::-1] if reverse else words)))[0]
        if enum is not None:
            return enum.get(int(raw), f"unknown-{int(raw)}")
        if plain and not is_float:
            return raw
        return round(float(raw) * scale + offset, 9)
    return decode


def decode_read(request: ReadRequest, profile: Profile, data: Sequence[int]) -> dict[str, FieldValue]:
    compiled = request.compiled
    if compiled is None or compiled[0] is not profile:
        decoders = []
        for spec in request.fields:
            assert spec.address is not None
            decoders.append((spec.name, spec.address - request.address, spec.registers,
                             field_decoder(spec, profile)))
        compiled = request.compiled = (profile, decoders)
    return {name: decode(data[start : start + count]) for name, start, count, decode in compiled[1]}


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
