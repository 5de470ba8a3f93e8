"""The plain fast path (codec.decode_plain_batch + points.transcode_plain) against the
full path (codec.decode_batch_lenient + LineEncoder.encode): whenever the fast path
takes a payload, it gives the same points; anything unusual it leaves to the full path."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.points import EncodedBatch, LineEncoder, TimeWindow, transcode_plain
from tests.security.strategies import identifiers, metric_names
from urbansense import codec
from urbansense.identifiers import MEASUREMENTS, RESERVED_FIELDS
from urbansense.influx import InfluxClient

NOW = 1_764_190_000_000
WINDOW = TimeWindow(future_ms=5 * 60_000, retention_ms=30 * 86_400_000)


def full_path(payload: bytes) -> tuple[list[str], list[str]] | str:
    """(lines, reasons) from the full path, or the envelope's refusal."""
    try:
        decoded, problems = codec.decode_batch_lenient(payload)
    except codec.PayloadError as exc:
        return str(exc)
    encoded = LineEncoder(WINDOW).encode(decoded, NOW)
    return encoded.all_lines(), problems + encoded.problems


def fast_path(payload: bytes) -> EncodedBatch | None:
    plain = codec.decode_plain_batch(payload)
    return None if plain is None else transcode_plain(plain, WINDOW, NOW)


def _point(line: str) -> tuple[str, list[tuple[str, object]], str]:
    """A plain line with its float values as numbers (1e16 and 1e+16 are one number)."""
    series, fields, t = line.split(" ")
    values: list[tuple[str, object]] = []
    for field in fields.split(","):
        key, value = field.split("=")
        values.append((key, value if value in ("true", "false") or value.endswith("i") else float(value)))
    return series, values, t


def assert_same(payload: bytes) -> bool:
    """True when the fast path took the payload (and agreed with the full path)."""
    fast = fast_path(payload)
    if fast is None:
        return False
    full = full_path(payload)
    assert not isinstance(full, str), f"fast path took a batch the full path refuses: {full}"
    lines, problems = full
    assert problems == [] and fast.problems == []
    assert fast.points == len(lines)
    assert [_point(x) for x in fast.all_lines()] == [_point(x) for x in lines]
    return True


def _batch(samples: list[Any], **envelope: Any) -> bytes:
    # json, not orjson: it also writes integers beyond 64 bits
    return json.dumps({"v": 1, "gw": "pd-gw-01", "district": "pudong", "seq": 7, "sent": NOW,
                       **envelope, "samples": samples}, separators=(",", ":")).encode()


def _sample(**over: Any) -> dict[str, Any]:
    return {"dev": "wp-0007", "m": "water", "t": NOW, "f": {"pressure_mpa": 0.312, "on": True},
            "q": "good", **over}


def test_ordinary_batch_is_transcoded_to_the_same_text() -> None:
    samples = [_sample(dev=f"wp-{i:04d}", t=NOW - i, f={"pressure_mpa": 0.3 + i / 1e5, "flow_m3h": 120.5 + i,
                                                        "valve_open": i % 2 == 0}) for i in range(50)]
    payload = _batch(samples)
    fast = fast_path(payload)
    assert fast is not None
    full = full_path(payload)
    assert not isinstance(full, str)
    assert fast.all_lines() == full[0]  # orjson and msgspec spell these floats alike
    assert fast.all_lines()[1] == ("water,device=wp-0001,district=pudong,gateway=pd-gw-01 "
                                   f"pressure_mpa=0.30001,flow_m3h=121.5,valve_open=false {NOW - 1}")


def test_field_names_like_the_sample_keys() -> None:
    """The transcoder's replacements find the sample's own keys, never a field's."""
    payload = _batch([_sample(f={"dev": 1.5, "f": 2.5, "t": True, "m": 0.5}), _sample(dev="wp-8")])
    fast = fast_path(payload)
    assert fast is not None and assert_same(payload)
    assert fast.all_lines()[0] == ("water,device=wp-0007,district=pudong,gateway=pd-gw-01 "
                                   f"dev=1.5,f=2.5,t=true,m=0.5 {NOW}")


def test_empty_batch() -> None:
    assert assert_same(_batch([]))


@pytest.mark.parametrize("payload", [
    _batch([_sample(f={"count": 3})]),                        # integer field: written as 3i
    _batch([_sample(f={"state": "open"})]),                   # string field
    _batch([_sample(q="uncertain")]),                         # gains quality_uncertain=true
    _batch([_sample(q="bad", f={}, err="timeout")]),          # device_error="timeout"
    _batch([_sample(err="ignored")]),
    _batch([_sample(urgent=True)]),
    _batch([_sample(f={})]),                                  # refused: needs a field
    _batch([_sample(f={"time": 1.0})]),                       # reserved names: refused
    _batch([_sample(f={"device": 1.0})]),
    _batch([_sample(f={"Pressure": 1.0})]),                   # not a metric name
    _batch([_sample(f={"a b": 1.0})]),
    _batch([_sample(dev="WP_7")]),                            # not an identifier
    _batch([_sample(dev="a,b c=d")]),
    _batch([_sample(m="sewage")]),
    _batch([_sample(t=0)]),
    _batch([_sample(t=1.5)]),
    _batch([_sample(t=NOW + 5 * 60_000 + 1)]),                # outside the time window
    _batch([_sample(t=NOW - 31 * 86_400_000)]),
    _batch([_sample(f={"big": 2**70})]),                      # integer beyond 64 bits
    _batch([_sample(), "not an object"]),
    _batch([_sample()], gw="Bad Gateway"),
    _batch([_sample()], seq=-1),
    _batch([_sample()], v=2),
    _batch([_sample()], v=1.0),                               # == 1: the full path takes it
    b'{"v":1,"gw":"pd-gw-01","district":"pudong","seq":1,"sent":1,"samples":[{"dev":"wp-1","m":"water",'
    b'"t":1764190000000,"f":{"x":1e999}}]}',                  # infinity
    b'{"v":1,"gw":"pd-gw-01","district":"pudong","seq":1,"sent":1,"samples":[{"dev":"wp-1","m":"water",'
    b'"t":1764190000000,"f":{"x":1.5,"x":true}}]}',           # repeated key: the last one counts
    b'{"v":1,"gw":"pd-gw-01","district":"pudong","seq":1,"sent":1,"samples":[{"dev":"WP","dev":"wp-1",'
    b'"m":"water","t":1764190000000,"f":{"x":1.5},"extra":[1,{"a":2}]}],"more":null}',
    b'{"v":1,"gw":"pd-gw-01","district":"pudong","seq":1,"sent":1,"samples":[{"dev":"wp-1","m":"water",'
    b'"t":1764190000000,"f":{"x\\u0022":1.5}}]}',             # an escaped quote in a name
    b'  {"samples":[{"f":{"x":1.5},"t":1764190000000,"m":"gas","dev":"g-1"}],"sent":1,"seq":0,'
    b'"district":"pudong","gw":"pd-gw-01","v":1}  ',           # other key order, white space
    b'{"v":1,"gw":"pd-gw-01","district":"pudong"}',
    b'not json',
    b'[]',
])
def test_unusual_payloads_agree_or_take_the_full_path(payload: bytes) -> None:
    assert_same(payload)


def test_what_the_fast_path_leaves_to_the_full_path() -> None:
    for payload in (_batch([_sample(f={"count": 3})]), _batch([_sample(q="uncertain")]),
                    _batch([_sample(t=NOW + 5 * 60_000 + 1)]), _batch([_sample(urgent=True)]),
                    _batch([_sample(f={"time": 1.0})]), _batch([_sample(dev="WP_7")])):
        assert fast_path(payload) is None, payload
    assert codec.decode_plain_batch(_batch([_sample()]), max_bytes=10) is None


floats = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [0.0, -0.0, 1e16, 1e22, 1e-7, 5e-324, 1.7976931348623157e308, 0.1 + 0.2, 123456789.0])
values = floats | st.booleans() | st.integers() | st.text(max_size=5)
names = metric_names | st.sampled_from([*sorted(RESERVED_FIELDS), "a b", "X", ""])


@st.composite
def raw_samples(draw: st.DrawFn) -> dict[str, Any]:
    sample: dict[str, Any] = {
        "dev": draw(identifiers | st.sampled_from(["WP", "a,b", "", "wp 1"])),
        "m": draw(st.sampled_from((*MEASUREMENTS, "sewage"))),
        "t": draw(st.integers(NOW - 31 * 86_400_000, NOW + 6 * 60_000) | st.sampled_from([0, -1, 2**64])),
        "f": draw(st.dictionaries(names, floats | st.booleans(), max_size=4) | st.dictionaries(names, values)),
    }
    for key, strategy in (("q", st.sampled_from(["good", "uncertain", "bad", "nope"])),
                          ("err", st.none() | st.text(max_size=5)), ("urgent", st.booleans() | st.just(1))):
        if draw(st.booleans()):
            sample[key] = draw(strategy)
    keys = draw(st.permutations(list(sample)))
    return {key: sample[key] for key in keys}


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(samples=st.lists(raw_samples(), max_size=6), gw=identifiers, district=identifiers,
       seq=st.integers(-1, 2**63))
def test_fast_path_equals_full_path(samples: list[dict[str, Any]], gw: str, district: str, seq: int) -> None:
    assert_same(_batch(samples, gw=gw, district=district, seq=seq))


@settings(max_examples=300, deadline=None)
@given(samples=st.lists(st.fixed_dictionaries({
    "dev": identifiers, "m": st.sampled_from(MEASUREMENTS), "t": st.integers(NOW - 86_400_000, NOW),
    "f": st.dictionaries(metric_names, floats | st.booleans(), min_size=1, max_size=4)}), min_size=1, max_size=6))
def test_ordinary_batches_take_the_fast_path(samples: list[dict[str, Any]]) -> None:
    assert assert_same(_batch(samples))


def test_fast_path_floats_are_stored_exactly(influx_db: InfluxClient) -> None:
    """msgspec spells some floats unlike orjson (1e16, not 1e+16): InfluxDB reads them alike."""
    numbers = [1e16, 1e22, 1e-7, 5e-324, 1.7976931348623157e308, -0.0, 0.1 + 0.2, 123456789.0, -2.5e-300]
    samples = [_sample(dev=f"d-{i}", f={"x": x, "ok": i % 2 == 0}) for i, x in enumerate(numbers)]
    fast = transcode_plain(codec.decode_plain_batch(_batch(samples)) or pytest.fail("not plain"), WINDOW, NOW)
    assert fast is not None
    influx_db.write("\n".join(fast.all_lines()))
    rows = influx_db.rows('SELECT "x", "ok", "device" FROM water')
    stored = {row["device"]: (row["x"], row["ok"]) for row in rows}
    for i, x in enumerate(numbers):
        value, ok = stored[f"d-{i}"]
        assert value == x
        assert ok is (i % 2 == 0)
