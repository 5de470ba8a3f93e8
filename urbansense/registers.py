"""Register codec: Modbus registers <-> typed values, shared by the edge agent (decode)
and the simulators (encode), so that both read the profile the same way.

Byte order and word order are set separately. The usual aliases name the order in which
the four bytes A B C D of a big-endian 32-bit value appear on the wire:

    ABCD  big-endian bytes, big-endian words        (Modbus "standard")
    CDAB  big-endian bytes, little-endian words     ("word swapped", many meters)
    BADC  little-endian bytes, big-endian words     ("byte swapped")
    DCBA  little-endian bytes, little-endian words

Worked example: float32 123.456 is 0x42F6E979; ABCD gives registers [0x42F6, 0xE979],
CDAB [0xE979, 0x42F6], BADC [0xF642, 0x79E9], DCBA [0x79E9, 0xF642].
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Literal

RegisterType = Literal[
    "int16", "uint16", "int32", "uint32", "int64", "uint64",
    "float32", "float64", "string", "bit", "bool",
]
ORDER_ALIASES: dict[str, tuple[str, str]] = {
    # alias: (byte order within a word, word order)
    "ABCD": ("big", "big"),
    "CDAB": ("big", "little"),
    "BADC": ("little", "big"),
    "DCBA": ("little", "little"),
}
_STRUCT = {
    "int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I",
    "int64": ">q", "uint64": ">Q", "float32": ">f", "float64": ">d",
}
WORDS = {
    "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4,
    "float32": 2, "float64": 4, "bit": 1, "bool": 1,
}


class RegisterCodecError(ValueError):
    pass


def register_count(dtype: str, length: int = 1) -> int:
    """Registers a value occupies (strings: `length` registers, 2 characters each)."""
    if dtype == "string":
        return length
    return WORDS[dtype]


def _reorder(words: list[bytes], order: str) -> list[bytes]:
    byte_order, word_order = ORDER_ALIASES[order]
    if word_order == "little":
        words = words[::-1]
    if byte_order == "little":
        words = [w[::-1] for w in words]
    return words


def _to_words(data: bytes) -> list[bytes]:
    return [data[i : i + 2] for i in range(0, len(data), 2)]


def decode(
    dtype: str, registers: Sequence[int], order: str = "ABCD", *, bit: int | None = None
) -> int | float | str | bool:
    """Decode raw 16-bit registers into a value of `dtype` in byte/word `order`."""
    if order not in ORDER_ALIASES:
        raise RegisterCodecError(f"unknown order {order!r}; use one of {', '.join(ORDER_ALIASES)}")
    if dtype in ("bit", "bool"):
        if bit is None:
            return bool(registers[0])
        return bool((registers[0] >> bit) & 1)
    words = [struct.pack(">H", r & 0xFFFF) for r in registers]
    # Undo the wire order: reordering is its own inverse for these four permutations.
    data = b"".join(_reorder(words, order))
    if dtype == "string":
        return data.split(b"\x00", 1)[0].decode("ascii", errors="replace").rstrip()
    fmt = _STRUCT.get(dtype)
    if fmt is None:
        raise RegisterCodecError(f"unknown register type {dtype!r}")
    need = WORDS[dtype]
    if len(registers) != need:
        raise RegisterCodecError(f"{dtype} needs {need} registers, got {len(registers)}")
    value: int | float = struct.unpack(fmt, data)[0]
    return value


def encode(dtype: str, value: int | float | str | bool, order: str = "ABCD", *, length: int = 1) -> list[int]:
    """Encode a value into registers in wire order (inverse of :func:`decode`)."""
    if order not in ORDER_ALIASES:
        raise RegisterCodecError(f"unknown order {order!r}; use one of {', '.join(ORDER_ALIASES)}")
    if dtype in ("bit", "bool"):
        return [1 if value else 0]
    if dtype == "string":
        raw = str(value).encode("ascii")[: length * 2].ljust(length * 2, b"\x00")
    else:
        fmt = _STRUCT.get(dtype)
        if fmt is None:
            raise RegisterCodecError(f"unknown register type {dtype!r}")
        if dtype.startswith(("int", "uint")) and not isinstance(value, int):
            value = round(float(value))  # ints stay exact: float() would lose 64-bit precision
        try:
            raw = struct.pack(fmt, value)
        except struct.error as exc:
            raise RegisterCodecError(f"{value!r} does not fit in {dtype}: {exc}") from None
    return [struct.unpack(">H", w)[0] for w in _reorder(_to_words(raw), order)]


#: Types `decode_every_way` tries, narrowest first (the probe tool's rows).
PROBE_TYPES = ("int16", "uint16", "int32", "uint32", "float32", "int64", "uint64", "float64")


def decode_every_way(registers: Sequence[int]) -> dict[str, dict[str, int | float | str]]:
    """Every numeric type that fits at the start of `registers`, in every byte/word order:
    {type: {order: value}}. What you look at when a datasheet's word order is wrong;
    a plausible value in one column names the order to put in the profile."""
    out: dict[str, dict[str, int | float | str]] = {}
    for dtype in PROBE_TYPES:
        need = WORDS[dtype]
        if len(registers) < need:
            continue
        row: dict[str, int | float | str] = {}
        for order in ORDER_ALIASES:
            value = decode(dtype, registers[:need], order)
            assert not isinstance(value, bool)
            row[order] = value
        out[dtype] = row
    if registers:
        row = {}
        for order in ("ABCD", "BADC"):
            value = decode("string", registers, order)
            assert isinstance(value, str)
            row[order] = value
        out["string"] = row
    return out
