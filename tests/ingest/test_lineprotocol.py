"""Line protocol escaping, table-driven; the stored result checked on the real InfluxDB."""

from __future__ import annotations

import pytest

from urbansense.influx import InfluxClient
from urbansense.lineprotocol import LineProtocolError, encode_fields, encode_point, format_field

CASES = [
    # (measurement, tags, fields, expected line)
    ("water", {"district": "pudong"}, {"p": 0.31, "n": 3}, "water,district=pudong p=0.31,n=3i 1"),
    ("we ird,m", {"k ey": "v,a=l"}, {"f=x": 1.0}, r"we\ ird\,m,k\ ey=v\,a\=l f\=x=1.0 1"),
    ("m", {"b": "2", "a": "1", "empty": ""}, {"ok": True, "bad": False}, "m,a=1,b=2 ok=true,bad=false 1"),
    ("m", {"t": "back\\slash"}, {"s": 'say "hi" \\ bye'}, r'm,t=back\slash s="say \"hi\" \\ bye" 1'),
    ("m", {}, {"s": "line\nbreak"}, 'm s="line\nbreak" 1'),  # newline kept inside quotes
    ("m", {"t": "a\nb"}, {"i": -(2**63)}, r"m,t=a\nb i=-9223372036854775808i 1"),
]


@pytest.mark.parametrize(("measurement", "tags", "fields", "expected"), CASES)
def test_encode_point(measurement: str, tags: dict[str, str], fields: dict[str, object], expected: str) -> None:
    assert encode_point(measurement, tags, fields, 1) == expected


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_refused_with_reason(value: float) -> None:
    with pytest.raises(LineProtocolError, match="NaN/infinity"):
        format_field(value)
    with pytest.raises(LineProtocolError):
        encode_fields({"x": value})


@pytest.mark.parametrize("name", ["m\\", "a b\\", "a\\,b", "a\\ b", "a\\=b"])
def test_trailing_backslash_in_names_refused(name: str) -> None:
    with pytest.raises(LineProtocolError, match="cannot carry exactly"):
        encode_point(name, {}, {"x": 1.0}, 1)
    with pytest.raises(LineProtocolError, match="cannot carry exactly"):
        encode_point("m", {"t": name}, {"x": 1.0}, 1)
    with pytest.raises(LineProtocolError, match="cannot carry exactly"):
        encode_point("m", {}, {name: 1.0}, 1)


def test_no_fields_and_unknown_types_refused() -> None:
    with pytest.raises(LineProtocolError, match="at least one field"):
        encode_point("m", {}, {}, 1)
    with pytest.raises(LineProtocolError, match="unsupported field type list"):
        encode_fields({"x": [1]})


@pytest.mark.integration
def test_hard_strings_stored_exactly(influx_db: InfluxClient) -> None:
    values = ['"', "\\", "\\\\", "a\\", 'x"\\"y', "a,b=c d", "line\nbreak\r\n", "tab\tnul\x00", "日本"]
    tag = "v=, x\\y\\\\z=,"  # backslashes, and the characters that need escaping
    lines = [encode_point("m", {"t k": tag}, {"s v": v, "i": i}, 1000 + i) for i, v in enumerate(values)]
    influx_db.write("\n".join(lines))
    series = influx_db.query('SELECT "s v", "i" FROM m GROUP BY *')
    assert series[0].tags == {"t k": tag}
    assert [row[1] for row in series[0].values] == values
    assert [row[2] for row in series[0].values] == list(range(len(values)))
