"""Turn the raw words of a read into engineering values, as the profile says."""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any

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


ReadDecoder = Callable[[bytes], dict[str, FieldValue]]


def read_decoder(request: ReadRequest, profile: Profile) -> ReadDecoder | None:
    """Every field of a register read decoded from the answer's data bytes in one struct
    call: the bytes each field needs, in the order its type and byte/word order want them,
    are gathered once (an index permutation worked out here) and unpacked by one format.
    None when a field needs the general path (strings, a type the family declares
    otherwise); then `decode_read` serves. Same values as `decode_read` (a test checks
    every shipped profile's reads in every order)."""
    if request.table not in ("holding", "input"):
        return None
    perm: list[int] = []
    fmt = ">"
    env: dict[str, Any] = {"round": round, "float": float, "bool": bool, "int": int}
    items: list[str] = []
    for k, spec in enumerate(request.fields):
        order = spec.order_in(profile)
        if spec.type == "string" or order not in registers.ORDER_ALIASES or spec.address is None:
            return None
        at = 2 * (spec.address - request.address)
        value = f"v[{k}]"
        if spec.type in ("bit", "bool"):
            perm += [at, at + 1]
            fmt += "H"
            expr = f"bool({value})" if spec.bit is None else f"bool({value} >> {int(spec.bit)} & 1)"
            items.append(f"{spec.name!r}: {expr}")
            continue
        n = registers.WORDS[spec.type]
        byte_order, word_order = registers.ORDER_ALIASES[order]
        for i in (range(n - 1, -1, -1) if word_order == "little" else range(n)):
            a = at + 2 * i
            perm += [a, a + 1] if byte_order == "big" else [a + 1, a]
        fmt += registers._STRUCT[spec.type][1:]
        enum, scale, offset = spec.enum, spec.scale, spec.offset
        plain = scale == 1.0 and offset == 0.0
        is_float = spec.type.startswith("float")
        declared = codec.FIELD_TYPES.get(profile.measurement, {}).get(spec.name)
        if declared is not None and enum is None and (declared == "int") != (plain and not is_float):
            return None  # converted to the declared type: the general path does it
        if enum is not None:
            env[f"e{k}"] = enum
            expr = f'e{k}.get(int({value}), "unknown-%d" % int({value}))'
        elif plain and not is_float:
            expr = value
        else:
            env[f"s{k}"], env[f"o{k}"] = scale, offset
            expr = f"round(float({value}) * s{k} + o{k}, 9)"
        items.append(f"{spec.name!r}: {expr}")
    env["gather"] = itemgetter(*perm)
    env["unpack"] = struct.Struct(fmt).unpack
    env["short"] = _short_answer(request)
    # One function per read, written once (as the standard library writes namedtuple and
    # dataclass methods): a dict display of the fields' expressions, no call per field.
    source = (f"def decode(data):\n"
              f"    if len(data) < {2 * request.count}:\n"
              f"        short(data)\n"
              f"    v = unpack(bytes(gather(data)))\n"
              f"    return {{{', '.join(items)}}}\n")
    exec(source, env)  # field names are validated identifiers; every constant comes from env
    decode: ReadDecoder = env["decode"]
    return decode


def _short_answer(request: ReadRequest) -> Callable[[bytes], None]:
    def short(data: bytes) -> None:
        raise ValueError(f"asked {request.count} registers of {request.table} {request.address}, "
                         f"got {len(data) // 2}")
    return short


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
