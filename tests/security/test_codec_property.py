"""Bad input for the codec (property-based): whatever arrives on the wire, decoding
either returns a valid model or raises PayloadError with a message - never another
exception; valid batches round-trip exactly; the fast and the full validation paths agree."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.security.strategies import json_values, nearly_valid, valid_batches, valid_samples
from urbansense import codec
from urbansense.codec import PayloadError

DECODERS = (codec.decode_batch, codec.decode_batch_lenient, codec.decode_status, codec.decode_alert,
            codec.loads)
fast = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _json(value: Any) -> bytes:
    """Plain JSON (stdlib: also integers beyond 64 bits, which orjson cannot write)."""
    return json.dumps(value, ensure_ascii=False).encode()


def _only_payload_error(payload: bytes | str) -> None:
    for decode in DECODERS:
        try:
            decode(payload)
        except PayloadError as exc:
            assert str(exc), f"{decode.__name__}: empty refusal message"


@fast
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_payload_error(payload: bytes) -> None:
    _only_payload_error(payload)


@fast
@given(json_values)
def test_arbitrary_json_only_raises_payload_error(value: Any) -> None:
    _only_payload_error(_json(value))


@fast
@given(nearly_valid(valid_batches()))
def test_nearly_valid_batches_only_raise_payload_error(batch: dict[str, Any]) -> None:
    _only_payload_error(_json(batch))


@fast
@given(valid_batches())
def test_valid_batches_round_trip_exactly(raw: dict[str, Any]) -> None:
    batch = codec.decode_batch(_json(raw))
    again = codec.decode_batch(codec.encode_batch(batch))
    assert again == batch
    assert again.to_wire()["samples"] == [{**s, "urgent": True} if s.get("urgent") else
                                          {k: v for k, v in s.items() if k != "urgent"}
                                          for s in raw["samples"]]
    lenient, problems = codec.decode_batch_lenient(_json(raw))
    assert problems == [] and lenient == batch


@fast
@given(nearly_valid(valid_batches()))
def test_strict_and_lenient_decoding_agree(raw: dict[str, Any]) -> None:
    """The lenient decoder keeps exactly the samples the strict one accepts: its hot-path
    shortcut (`_fast_sample`) must never accept what full validation refuses."""
    payload = _json(raw)
    try:
        lenient, problems = codec.decode_batch_lenient(payload)
    except PayloadError:
        with pytest.raises(PayloadError):
            codec.decode_batch(payload)
        return
    for sample in lenient.samples:
        assert codec.check_sample(_NotPlainDict(sample.to_wire())) == sample
    if problems:
        with pytest.raises(PayloadError):
            codec.decode_batch(payload)
    else:
        assert codec.decode_batch(payload) == lenient


class _NotPlainDict(dict[str, Any]):
    pass


@fast
@given(nearly_valid(valid_samples()))
def test_fast_path_agrees_with_full_validation(sample: dict[str, Any]) -> None:
    shortcut = codec._fast_sample(sample)
    if shortcut is None:
        return  # the full path decides, with its exact messages
    # A dict subclass skips the shortcut (it tests `type(raw) is dict`): full validation.
    assert codec.check_sample(_NotPlainDict(sample), "s") == shortcut


def test_oversized_payload_refused_before_parsing() -> None:
    big = orjson.dumps({"v": 1, "pad": "x" * codec.MAX_PAYLOAD_BYTES})
    with pytest.raises(PayloadError, match="larger than the limit"):
        codec.decode_batch(big)
    with pytest.raises(PayloadError, match="larger than the limit of 100 bytes"):
        codec.decode_batch(b"{}" + b" " * 200, max_bytes=100)


@pytest.mark.parametrize("payload", [
    b"[" * 100_000 + b"]" * 100_000,  # deep nesting: orjson's recursion limit, not a crash
    b'{"v":1,"v":2}',  # duplicate keys
    b'\xef\xbb\xbf{"v":1}',  # UTF-8 byte-order mark
    b'{"v":1e400}', b'{"v":-0}', b"NaN", b'{"v":Infinity}',
    '{"gw":"\ud800"}'.encode("utf-8", "surrogatepass"),  # lone surrogate
])
def test_hostile_json_forms(payload: bytes) -> None:
    _only_payload_error(payload)
