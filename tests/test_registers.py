"""Register codec: every type in every byte/word order, against hand-computed words."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from urbansense import registers

# float32 123.456 = 0x42F6E979
FLOAT_WORDS = {"ABCD": [0x42F6, 0xE979], "CDAB": [0xE979, 0x42F6],
               "BADC": [0xF642, 0x79E9], "DCBA": [0x79E9, 0xF642]}


@pytest.mark.parametrize(("order", "words"), FLOAT_WORDS.items())
def test_float32_orders_hand_computed(order: str, words: list[int]) -> None:
    assert registers.encode("float32", 123.456, order) == words
    assert registers.decode("float32", words, order) == pytest.approx(123.456, rel=1e-7)


def test_int_types_hand_computed() -> None:
    assert registers.encode("int16", -2) == [0xFFFE]
    assert registers.decode("int16", [0xFFFE]) == -2
    assert registers.encode("uint32", 0x12345678, "CDAB") == [0x5678, 0x1234]
    assert registers.decode("uint32", [0x5678, 0x1234], "CDAB") == 0x12345678
    assert registers.encode("int64", -1) == [0xFFFF] * 4
    assert registers.encode("uint64", 0x0102030405060708, "DCBA") == [0x0807, 0x0605, 0x0403, 0x0201]


def test_bits_and_strings() -> None:
    assert registers.decode("bit", [0b1000], bit=3) is True
    assert registers.decode("bit", [0b1000], bit=2) is False
    assert registers.encode("string", "WP-01", length=4) == [0x5750, 0x2D30, 0x3100, 0x0000]
    assert registers.decode("string", [0x5750, 0x2D30, 0x3100, 0x0000]) == "WP-01"


def test_errors_are_clear() -> None:
    with pytest.raises(registers.RegisterCodecError, match="unknown order 'ABDC'"):
        registers.decode("float32", [0, 0], "ABDC")
    with pytest.raises(registers.RegisterCodecError, match="float32 needs 2 registers, got 1"):
        registers.decode("float32", [0])
    with pytest.raises(registers.RegisterCodecError, match="does not fit in uint16"):
        registers.encode("uint16", 70000)


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.sampled_from(list(registers.ORDER_ALIASES)))
def test_int64_round_trip(value: int, order: str) -> None:
    assert registers.decode("int64", registers.encode("int64", value, order), order) == value


@given(st.floats(allow_nan=False, width=32), st.sampled_from(list(registers.ORDER_ALIASES)))
def test_float32_round_trip(value: float, order: str) -> None:
    assert registers.decode("float32", registers.encode("float32", value, order), order) == value
