"""The C accelerator (ingest/_fastline.c) against the full path (codec.decode_batch_lenient
+ LineEncoder) and the Python plain path (codec.decode_plain_batch + points.transcode_plain):
whenever it takes a payload, the full path takes it too and gives the same points (floats
as numbers: the C path copies them as written); so does the plain path when the fields
are floats and booleans (it leaves integers and strings to the full path). Everything
else the C path leaves to them (None).

The payloads are valid batches written in many ways (white space, key order, float
spellings, integers and enumerated strings as real edges send them) and near misses of
them (escapes, non-ASCII, big integers, NaN-like words, huge exponents, missing, extra
and repeated keys, truncation, trailing bytes, deep nesting, wrong types), plus random
bytes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from application.stack import Stack
from ingest import points
from ingest.points import TimeWindow, transcode_plain
from ingest.service import Ingester
from tests.security.strategies import identifiers, metric_names
from urbansense import codec
from urbansense.identifiers import MEASUREMENTS
from urbansense.influx import InfluxClient
from urbansense.mqtt import MqttSettings

try:
    from ingest import _fastline
except ImportError:  # no C compiler where the package was installed: nothing to compare
    pytestmark = pytest.mark.skip(reason="the C accelerator ingest._fastline is not built "
                                         "(`pip install -e .` builds it where gcc and the Python headers exist)")

REPO = Path(__file__).resolve().parents[2]
NOW = 1_764_190_000_000
WINDOW = TimeWindow(future_ms=5 * 60_000, retention_ms=30 * 86_400_000)
EARLIEST, LATEST = NOW - WINDOW.retention_ms, NOW + WINDOW.future_ms


def c_path(payload: bytes, max_bytes: int = codec.MAX_PAYLOAD_BYTES) -> tuple[str, str, int, str, int, int] | None:
    return _fastline.transcode(payload, max_bytes, EARLIEST, LATEST)


def _point(line: str) -> tuple[str, list[tuple[str, object]], str]:
    """A line of names, booleans, floats (as numbers: 1E+16 and 1e16 are one number),
    integers (3i) and strings without escapes ("up")."""
    series, fields, t = line.split(" ")
    values: list[tuple[str, object]] = []
    for field in fields.split(","):
        key, value = field.split("=")
        if value in ("true", "false"):
            values.append((key, value))
        elif value.startswith('"'):
            assert value.endswith('"') and "\\" not in value, line
            values.append((key, ("string", value[1:-1])))
        elif value.endswith("i"):
            values.append((key, ("integer", int(value[:-1]))))
        else:
            number = float(value)
            assert math.isfinite(number), line
            values.append((key, number))
    return series, values, t


def _floats_and_booleans(point: tuple[str, list[tuple[str, object]], str]) -> bool:
    return all(not isinstance(value, tuple) for _key, value in point[1])


def agrees(payload: bytes) -> bool:
    """True when the C path took the payload; then the full path takes it too, with the
    same envelope and the same points, and so does the Python plain path when every
    value is a float or a boolean."""
    got = c_path(payload)
    if got is None:
        return False
    gw, district, seq, chunk, count, sent = got
    c_lines = chunk.split("\n") if chunk else []
    c_points = [_point(x) for x in c_lines]
    assert count == len(c_lines)
    full, problems = codec.decode_batch_lenient(payload)
    encoded = points.LineEncoder(WINDOW).encode(full, NOW)
    assert problems == [] and encoded.problems == [], "the C path took a batch the full path refuses in part"
    assert (gw, district, seq, sent) == (full.gw, full.district, full.seq, full.sent)
    # the same points; the full path writes the lines of samples with integers or strings
    # before the chunk of float-and-boolean samples, the C path all in payload order
    assert sorted(map(repr, map(_point, encoded.all_lines()))) == sorted(map(repr, c_points))
    plain = codec.decode_plain_batch(payload)
    if all(map(_floats_and_booleans, c_points)):
        assert plain is not None, "the C path took a float batch the Python plain path does not"
    if plain is not None:
        python = transcode_plain(plain, WINDOW, NOW)
        assert python is not None, "the C path took a sample outside the time window"
        assert (gw, district, seq, sent) == (plain.gw, plain.district, plain.seq, plain.sent)
        assert [_point(x) for x in python.all_lines()] == c_points
    return True


# ------------------------------------------------------------------ writing JSON by hand
@dataclass(frozen=True)
class Raw:
    """A JSON token written as it is (a float's spelling, a broken value)."""

    text: str


def write_json(value: object, spaces: list[str]) -> str:
    """JSON text with `spaces` (cycled) around every token; dicts given as lists of pairs
    (so keys may repeat)."""
    counter = iter(range(10**9))

    def ws() -> str:
        return spaces[next(counter) % len(spaces)] if spaces else ""

    def out(v: object) -> str:
        if isinstance(v, Raw):
            return v.text
        if isinstance(v, Pairs):
            return "{" + ",".join(f"{ws()}{json.dumps(k)}{ws()}:{ws()}{out(x)}{ws()}" for k, x in v.items) + "}"
        if isinstance(v, list):
            return "[" + ",".join(f"{ws()}{out(x)}{ws()}" for x in v) + "]"
        return json.dumps(v)

    return ws() + out(value) + ws()


@dataclass
class Pairs:
    items: list[tuple[str, object]]


finite = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [0.0, -0.0, 1e16, 1e22, 1e-7, 1e-307, 2.2250738585072014e-308, 5e-324, 1.7976931348623157e308,
     0.1 + 0.2, 123456789.0, 1e308, 9.999999999999999e307])


@st.composite
def float_tokens(draw: st.DrawFn) -> Raw:
    """A finite float spelled as JSON allows: repr, exponent forms, upper-case E, '+',
    trailing zeros, long mantissas. Zero or normal, below 1e308: the C path leaves
    numbers near the ends of the range (whatever the spelling) to Python."""
    x = draw(finite.filter(lambda x: x == 0 or 1e-306 <= abs(x) < 1e307))
    style = draw(st.sampled_from(["repr", "e17", "E", "e+", "zeros", "long", "fixed"]))
    text = repr(x)
    if style == "e17":
        text = f"{x:.17e}"
    elif style == "E":
        text = f"{x:.16E}"
    elif style == "e+" and "e" in text:
        text = text.replace("e", "e+").replace("e+-", "e-").replace("e++", "e+")
    elif style == "zeros" and "e" not in text:
        text += "000"
    elif style == "long":
        text = f"{x:.25e}"
    elif style == "fixed" and abs(x) < 1e15:
        text = f"{x:.20f}"
    if "." not in text and "e" not in text.lower():
        text += ".0"
    return Raw(text)


#: integers and enumerated states, as real edges send them (a counter, a floor, "up")
integer_values = st.integers(-(10**18) + 1, 10**18 - 1) | st.integers(-1000, 1000)
state_values = st.from_regex(r"[a-z0-9_-]{0,24}", fullmatch=True)
field_values = float_tokens() | st.booleans() | integer_values | state_values


@st.composite
def samples(draw: st.DrawFn) -> Pairs:
    items: list[tuple[str, object]] = [
        ("m", draw(st.sampled_from(MEASUREMENTS))),
        ("dev", draw(identifiers)),
        ("f", Pairs(list(draw(st.dictionaries(metric_names, field_values, min_size=1, max_size=5)).items()))),
        ("t", draw(st.integers(EARLIEST, LATEST))),
    ]
    for key, value in (("q", "good"), ("err", None), ("urgent", False)):
        if draw(st.booleans()):
            items.append((key, value))
    return Pairs(draw(st.permutations(items)))


@st.composite
def batches(draw: st.DrawFn) -> Pairs:
    items: list[tuple[str, object]] = [
        ("v", 1), ("gw", draw(identifiers)), ("district", draw(identifiers)),
        ("seq", draw(st.integers(0, 10**18 - 1))), ("sent", draw(st.integers(1, 10**18 - 1))),
        ("samples", draw(st.lists(samples(), max_size=5))),
    ]
    return Pairs(draw(st.permutations(items)))


spaces = st.lists(st.sampled_from(["", "", " ", "\n", "\t", "\r\n  "]), max_size=4)


# ------------------------------------------------------------------ valid batches
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches(), ws=spaces)
def test_valid_batches_take_the_c_path_and_give_the_same_points(batch: Pairs, ws: list[str]) -> None:
    assert agrees(write_json(batch, ws).encode())


def test_worked_example() -> None:
    payload = (b'{"v":1,"gw":"pd-gw-01","district":"pudong","seq":7,"sent":1764190000123,"samples":['
               b'{"dev":"wp-0007","m":"water","t":1764190000000,"f":{"pressure_mpa":0.312,"on":true}},'
               b'{"m":"gas","dev":"gs-1","t":1764190000001,"f":{"x":1E+16},"q":"good","err":null,"urgent":false}]}')
    assert c_path(payload) == (
        "pd-gw-01", "pudong", 7,
        "water,device=wp-0007,district=pudong,gateway=pd-gw-01 pressure_mpa=0.312,on=true 1764190000000\n"
        "gas,device=gs-1,district=pudong,gateway=pd-gw-01 x=1E+16 1764190000001", 2, 1764190000123)
    assert agrees(payload)


def test_samples_before_the_gateway_get_its_tags() -> None:
    payload = (b'{"samples":[{"f":{"x":1.5},"t":1764190000000,"m":"gas","dev":"g-1"}],"sent":1,"seq":0,'
               b'"district":"pudong","gw":"pd-gw-01","v":1}')
    got = c_path(payload)
    assert got is not None and got[3] == "gas,device=g-1,district=pudong,gateway=pd-gw-01 x=1.5 1764190000000"
    assert agrees(payload)


def test_empty_batch() -> None:
    payload = b'{"v":1,"gw":"g","district":"d","seq":0,"sent":1,"samples":[]}'
    assert c_path(payload) == ("g", "d", 0, "", 0, 1)
    assert agrees(payload)


# ------------------------------------------------------------------ near misses
def _plain(**over: Any) -> dict[str, Any]:
    return {"v": 1, "gw": "pd-gw-01", "district": "pudong", "seq": 7, "sent": NOW,
            "samples": [{"dev": "wp-0007", "m": "water", "t": NOW, "f": {"pressure_mpa": 0.312, "on": True}}],
            **over}


def _with_sample(**over: Any) -> bytes:
    batch = _plain()
    batch["samples"][0].update(over)
    return json.dumps(batch).encode()


BASE = json.dumps(_plain()).encode()
#: what real edges send beside floats and booleans: the C path takes them
FIELD_TAKEN = [
    _with_sample(f={"count": 3}), _with_sample(f={"count": -3}), _with_sample(f={"count": 0}),
    _with_sample(f={"count": 10**18 - 1}), _with_sample(f={"count": -(10**18) + 1}),
    _with_sample(f={"state": "open"}), _with_sample(f={"state": ""}), _with_sample(f={"fault": "unknown-7"}),
    _with_sample(f={"state": "a" * 1024}), _with_sample(f={"floor": 3, "direction": "up", "speed_ms": 1.5,
                                                          "running": True}),
]
FIELD_LEFT_TO_PYTHON = [
    _with_sample(f={"x": 2**70}), _with_sample(f={"x": 10**18}), _with_sample(f={"x": -(10**18)}),
    _with_sample(f={"x": 2**63}), _with_sample(f={"x": -(2**63) - 1}),   # 19 digits and more
    _with_sample(f={"state": "Open"}), _with_sample(f={"state": "a b"}), _with_sample(f={"state": "a,b=c"}),
    _with_sample(f={"state": 'say "hi"'}), _with_sample(f={"state": "back\\slash"}),
    _with_sample(f={"state": "line\nbreak"}), _with_sample(f={"state": "é"}), _with_sample(f={"state": "a" * 1025}),
    _with_sample(f={"x": None}), _with_sample(f={"x": [1.5]}), _with_sample(f={"x": {"y": 1.5}}),
    _with_sample(f={}), _with_sample(f=[]), _with_sample(f=None),
    _with_sample(f={"time": 1.0}), _with_sample(f={"device": 1.0}),  # reserved names
    _with_sample(f={"district": 1.0}), _with_sample(f={"gateway": 1.0}),
    _with_sample(f={"Pressure": 1.0}), _with_sample(f={"a b": 1.0}), _with_sample(f={"1x": 1.0}),
    _with_sample(f={"x-y": 1.0}), _with_sample(f={"": 1.0}), _with_sample(f={"x" * 64: 1.0}),
    _with_sample(f={f"x{i}": 1.5 for i in range(65)}),
    _with_sample(q="uncertain"), _with_sample(q="bad", f={}, err="timeout"), _with_sample(q=None),
    _with_sample(err="ignored"), _with_sample(urgent=True), _with_sample(urgent=1), _with_sample(urgent=None),
    _with_sample(dev="WP_7"), _with_sample(dev="a,b c=d"), _with_sample(dev="-wp"), _with_sample(dev="w" * 64),
    _with_sample(dev=7), _with_sample(m="sewage"), _with_sample(m="Water"),
    _with_sample(t=0), _with_sample(t=-1), _with_sample(t=1.5), _with_sample(t=str(NOW)), _with_sample(t=2**64),
    _with_sample(t=EARLIEST - 1), _with_sample(t=LATEST + 1),
    _with_sample(extra=1), _with_sample(dev="wp-ü"), _with_sample(dev="wp\u00007"),
]
ENVELOPE_LEFT_TO_PYTHON = [
    json.dumps(_plain(v=2)).encode(), json.dumps(_plain(v=1.0)).encode(), json.dumps(_plain(v=True)).encode(),
    json.dumps(_plain(v="1")).encode(), json.dumps(_plain(gw="Bad Gateway")).encode(),
    json.dumps(_plain(district="")).encode(), json.dumps(_plain(seq=-1)).encode(),
    json.dumps(_plain(seq=10**18)).encode(), json.dumps(_plain(seq=2**64)).encode(),
    json.dumps(_plain(sent=0)).encode(), json.dumps(_plain(samples={})).encode(),
    json.dumps(_plain(samples=None)).encode(), json.dumps(_plain(samples=[1])).encode(),
    json.dumps(_plain(extra={"a": [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]})).encode(),
    json.dumps(_plain(gw="pd-gw-01\u00e9")).encode(), json.dumps(_plain(gw="pd-gw-01é"), ensure_ascii=False).encode(),
    json.dumps({k: v for k, v in _plain().items() if k != "sent"}).encode(),
    b"[]", b"{}", b"null", b"", b" ", b"not json", b"\xef\xbb\xbf" + BASE,   # a byte-order mark
]
TEXT_LEFT_TO_PYTHON = [
    BASE.replace(b'"wp-0007"', b'"wp\\u002d0007"'),                  # an escape in a string
    BASE.replace(b'"pressure_mpa"', b'"pressure\\u005fmpa"'),
    BASE.replace(b'"pd-gw-01"', b'"pd-gw\\/01"'),
    BASE.replace(b"0.312", b"NaN"), BASE.replace(b"0.312", b"Infinity"), BASE.replace(b"0.312", b"-Infinity"),
    BASE.replace(b"0.312", b"nan"), BASE.replace(b"0.312", b"1e999"), BASE.replace(b"0.312", b"-1e309"),
    BASE.replace(b"0.312", b"1e308"), BASE.replace(b"0.312", b"1.8e308"),
    BASE.replace(b"0.312", b"1e-400"), BASE.replace(b"0.312", b"5e-324"), BASE.replace(b"0.312", b"1e-308"),
    BASE.replace(b"0.312", b"0e401"), BASE.replace(b"0.312", b"1e0000000000000000000000001"),
    BASE.replace(b"0.312", b"1." + b"0" * 60), BASE.replace(b"0.312", b"0.312e"), BASE.replace(b"0.312", b"0.312e+"),
    BASE.replace(b"0.312", b".312"), BASE.replace(b"0.312", b"00.312"), BASE.replace(b"0.312", b"+0.312"),
    BASE.replace(b"0.312", b"0.312.5"), BASE.replace(b"0.312", b"0x1p3"), BASE.replace(b"0.312", b"-0"),
    BASE.replace(b"0.312", b"0.312i"), BASE.replace(b"0.312", b"1.5 2.5"), BASE.replace(b"0.312", b"007"),
    BASE.replace(b"0.312", b"-"), BASE.replace(b"0.312", b"--3"), BASE.replace(b"0.312", b"3i"),
    BASE.replace(b"0.312", b'"up'), BASE.replace(b"0.312", b'"u\\p"'), BASE.replace(b"0.312", b'"\\u0075p"'),
    BASE.replace(b"0.312", b"'up'"), BASE.replace(b"0.312", b'"up""down"'),
    BASE.replace(b"true", b"True"), BASE.replace(b"true", b"tru"), BASE.replace(b"true", b"truex"),
    BASE.replace(b'"seq": 7', b'"seq": 07'), BASE.replace(b'"seq": 7', b'"seq": 7.0'),
    BASE.replace(b'"seq": 7', b'"seq": 7e0'), BASE.replace(b'"seq": 7', b'"seq": -0'),
    BASE.replace(b'"v": 1', b'"v": 1, "v": 1'),                      # repeated keys
    BASE.replace(b'"gw": "pd-gw-01"', b'"gw": "x", "gw": "pd-gw-01"'),
    BASE.replace(b'"dev": "wp-0007"', b'"dev": "WP", "dev": "wp-0007"'),
    BASE.replace(b'"on": true', b'"on": true, "on": false'),
    BASE.replace(b'"on": true', b'"pressure_mpa": true'),
    BASE.replace(b'"samples": [', b'"samples": [], "samples": ['),
    BASE.replace(b'"seq": 7, ', b""),                              # a missing key
    BASE.replace(b'"m": "water", ', b""),
    BASE.replace(b", ", b",,"), BASE.replace(b"}]}", b"},]}"), BASE.replace(b"}]}", b"}]},"),
    BASE.replace(b": ", b" "), BASE.replace(b'"water"', b"'water'"), BASE.replace(b'"water"', b'"water'),
    BASE.replace(b"pudong", b"pu\x00dong"), BASE.replace(b"pudong", b"pu\ndong"),
    BASE.replace(b" ", b"\x0b"), BASE.replace(b" ", b"\xc2\xa0"),   # not JSON's white space
    BASE + b"x", BASE + b"\x00", BASE + b"{}", BASE + b" \n\t\r",
    BASE[:-1], BASE[:1], BASE[: len(BASE) // 2],
]


@pytest.mark.parametrize("payload", FIELD_TAKEN + FIELD_LEFT_TO_PYTHON + ENVELOPE_LEFT_TO_PYTHON
                         + TEXT_LEFT_TO_PYTHON)
def test_near_misses_agree_or_are_left_to_python(payload: bytes) -> None:
    agrees(payload)


def test_what_the_c_path_leaves_to_python() -> None:
    assert agrees(BASE) and agrees(BASE + b" \n\t\r")
    assert all(agrees(p) for p in FIELD_TAKEN)
    assert agrees(BASE.replace(b"0.312", b"312").replace(b"pressure_mpa", b"count"))  # undeclared: 312i
    # water declares pressure_mpa a float: the C path leaves an integer there to Python,
    # which stores it as the float it is
    as_integer = BASE.replace(b"0.312", b"312")
    assert c_path(as_integer) is None and codec.decode_plain_batch(as_integer) is None
    assert codec.decode_batch_lenient(as_integer)[0].samples[0].f == {"pressure_mpa": 312.0, "on": True}
    for wrong in (b'"312"', b"true"):  # of another type: refused on every path, with the reason
        payload = BASE.replace(b"0.312", wrong)
        assert c_path(payload) is None and codec.decode_plain_batch(payload) is None
        batch, problems = codec.decode_batch_lenient(payload)
        assert not batch.samples and "water field pressure_mpa is a number (float" in problems[0]
    left = [p for p in FIELD_LEFT_TO_PYTHON + ENVELOPE_LEFT_TO_PYTHON + TEXT_LEFT_TO_PYTHON if c_path(p) is not None]
    # JSON allows both: trailing white space, leading zeros in an exponent (Go reads it too)
    assert left == [BASE.replace(b"0.312", b"1e0000000000000000000000001"), BASE + b" \n\t\r"]
    assert c_path(BASE, max_bytes=len(BASE) - 1) is None and c_path(BASE, max_bytes=len(BASE)) is not None


MUTATIONS = [b"\\", b'\\"', b"\\u0041", b"\xc3\xa9", b"\xff", b"1", b"-", b".", b"e", b"E+", b"0", b"00",
             b"NaN", b"Infinity", b"1e999", b"true", b"null", b'"', b"'", b",", b":", b"{", b"}", b"[", b"]",
             b'"x":1.5,', b'"extra":[[[[{}]]]],', b" ", b"\n", b"\x00", b"i", b"9" * 20]


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches(), ws=spaces, data=st.data())
def test_mutated_batches_agree_or_are_left_to_python(batch: Pairs, ws: list[str], data: st.DataObject) -> None:
    payload = write_json(batch, ws).encode()
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(payload)))
        kind = data.draw(st.sampled_from(["insert", "delete", "replace", "truncate"]))
        token = data.draw(st.sampled_from(MUTATIONS))
        if kind == "insert":
            payload = payload[:at] + token + payload[at:]
        elif kind == "delete":
            payload = payload[:at] + payload[at + data.draw(st.integers(1, 8)):]
        elif kind == "replace":
            payload = payload[:at] + token + payload[at + len(token):]
        else:
            payload = payload[:at]
    agrees(payload)


@settings(max_examples=1000, deadline=None)
@given(payload=st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_random_bytes_never_crash(payload: bytes) -> None:
    agrees(payload)


def test_deep_nesting_and_huge_inputs() -> None:
    for payload in (b"[" * 100_000, b"{" * 100_000, b'{"v":' + b"[" * 100_000, b'{"samples":[' * 20_000,
                    BASE.replace(b"0.312", b"1" * 100_000 + b".5"),
                    BASE.replace(b'"water"', b'"' + b"a" * 300_000 + b'"')):
        assert c_path(payload, max_bytes=10**7) is None


def test_bad_arguments_raise() -> None:
    with pytest.raises(TypeError):
        _fastline.transcode(bytearray(BASE), 10**6, 0, 2**62)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _fastline.transcode(BASE, 10**6, 0)  # type: ignore[call-arg]
    with pytest.raises(OverflowError):
        _fastline.transcode(BASE, 2**64, 0, 0)


# ------------------------------------------------------------------ in the ingester
def test_the_ingester_uses_the_built_accelerator() -> None:
    if os.environ.get(points.PURE_PYTHON_ENV, "") not in ("", "0"):
        pytest.skip(f"{points.PURE_PYTHON_ENV} is set")
    # a stale build (older _fastline.c) is not used; this says how to rebuild it
    assert points.ACCELERATOR == "C accelerator (ingest._fastline)", points.ACCELERATOR
    assert _fastline.SOURCE_SHA256 != "unknown"


def test_the_environment_variable_turns_it_off() -> None:
    code = "import ingest.points as p; print(p.ACCELERATOR); print(p.transcode_payload(b'{}', p.TimeWindow(), 0, 9))"
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**os.environ, points.PURE_PYTHON_ENV: "1"})
    assert run.stdout.splitlines() == ["pure Python (URBANSENSE_PURE_PYTHON is set)", "None"]


def test_ingester_decode_takes_the_c_path_then_python(stack: Stack) -> None:
    if points.ACCELERATOR != "C accelerator (ingest._fastline)":
        pytest.skip(points.ACCELERATOR)
    ingester = Ingester(MqttSettings.from_url(stack.mqtt_url), stack.influx_url, instance="fastline-test")
    t = int(time.time() * 1000) - 1000  # the ingester's time window is on the wall clock
    envelope, encoded, problems, path = ingester._decode(BASE.replace(str(NOW).encode(), str(t).encode()))
    assert isinstance(envelope, points.PlainEnvelope) and envelope.seq == 7 and problems == [] and path == "c"
    assert encoded.chunk == f"water,device=wp-0007,district=pudong,gateway=pd-gw-01 pressure_mpa=0.312,on=true {t}"
    # an integer and an enumerated state, as edges send them: the C path too
    decoded, encoded, problems, path = ingester._decode(_with_sample(f={"floor": 3, "direction": "up"}, t=t))
    assert path == "c" and problems == []
    assert encoded.all_lines() == [f'water,device=wp-0007,district=pudong,gateway=pd-gw-01 floor=3i,direction="up" {t}']
    # a string with a capital letter (needs no escaping, but the C path leaves every
    # doubt to Python): the full path
    decoded, encoded, problems, path = ingester._decode(_with_sample(f={"state": "Open"}, t=t))
    assert not isinstance(decoded, points.PlainEnvelope) and problems == [] and path == "full"
    assert encoded.all_lines() == [f'water,device=wp-0007,district=pudong,gateway=pd-gw-01 state="Open" {t}']


def test_without_the_accelerator_the_python_fast_path_decodes(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(points, "_fastline", None)  # as when it is not built or URBANSENSE_PURE_PYTHON is set
    assert not points.accelerator_in_use()
    ingester = Ingester(MqttSettings.from_url(stack.mqtt_url), stack.influx_url, instance="fastline-python")
    t = int(time.time() * 1000) - 1000
    envelope, encoded, problems, path = ingester._decode(BASE.replace(str(NOW).encode(), str(t).encode()))
    assert path == "python" and problems == [] and envelope.seq == 7
    line = f"water,device=wp-0007,district=pudong,gateway=pd-gw-01 pressure_mpa=0.312,on=true {t}"
    assert encoded.all_lines() == [line]


def test_c_path_floats_are_stored_exactly(influx_db: InfluxClient) -> None:
    """The C path copies floats as written: InfluxDB reads every JSON spelling as the number."""
    spellings = ["1e16", "1E+16", "1.0e16", "10000000000000000.0", "1e22", "1E-7", "0.0000001", "1e-307",
                 "2.2250738585072014e-307", "1.7976931348623157e307", "1.7976931348623157E+307", "-0.0", "0.0",
                 "0e400", "0.30000000000000004", "0.300000000000000044408920985006", "123456789.0",
                 "-2.5e-300", "0.312", "1.5E0", "1e0000000000000000000000001", "9.999999999999999e307",
                 "4.9406564584124654e-300"]
    samples = ",".join(f'{{"dev":"d-{i}","m":"water","t":{NOW - i},'
                       f'"f":{{"x":{x},"ok":{"true" if i % 2 else "false"}}}}}' for i, x in enumerate(spellings))
    payload = f'{{"v":1,"gw":"g-1","district":"d-1","seq":1,"sent":1,"samples":[{samples}]}}'.encode()
    got = c_path(payload)
    assert got is not None and got[4] == len(spellings)
    assert agrees(payload)
    influx_db.write(got[3])
    rows = influx_db.rows('SELECT "x", "ok", "device", "gateway", "district" FROM water')
    stored = {row["device"]: row for row in rows}
    assert len(stored) == len(spellings)
    for i, x in enumerate(spellings):
        row = stored[f"d-{i}"]
        assert row["x"] == float(x), x
        assert row["ok"] is (i % 2 == 1)
        assert (row["gateway"], row["district"]) == ("g-1", "d-1")


def test_c_path_integers_and_states_are_stored_as_such(influx_db: InfluxClient) -> None:
    """Integers stay integers (3i) and enumerated states strings, as on the full path."""
    values = [0, 3, -3, 10**18 - 1, -(10**18) + 1, 4_294_967_295]
    states = ["up", "", "unknown-7", "door_fails_to_close", "a" * 1024, "0"]
    samples = ",".join(f'{{"dev":"e-{i}","m":"elevator","t":{NOW - i},"f":{{"n":{n},"s":"{state}"}}}}'
                       for i, (n, state) in enumerate(zip(values, states, strict=True)))
    payload = f'{{"v":1,"gw":"g-1","district":"d-1","seq":1,"sent":1,"samples":[{samples}]}}'.encode()
    got = c_path(payload)
    assert got is not None and got[4] == len(values)
    assert agrees(payload)
    influx_db.write(got[3])
    stored = {row["device"]: row for row in influx_db.rows('SELECT "n", "s", "device" FROM elevator')}
    assert len(stored) == len(values)
    for i, (n, state) in enumerate(zip(values, states, strict=True)):
        row = stored[f"e-{i}"]
        assert type(row["n"]) is int and row["n"] == n
        assert row["s"] == state
    field_types = {s.values[i][0]: s.values[i][1] for s in influx_db.query("SHOW FIELD KEYS FROM elevator")
                   for i in range(len(s.values))}
    assert field_types == {"n": "integer", "s": "string"}
