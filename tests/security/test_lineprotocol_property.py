"""Bad input for the line protocol encoder (property-based, against the real InfluxDB
1.6.7): any measurement, tag and field name and any value either is refused by the
encoder with LineProtocolError, or makes exactly one line that InfluxDB accepts and
stores exactly as given. tests/ingest covers valid wire-contract names through the whole
ingester; here the encoder alone meets names and strings no contract would allow."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from application.stack import Stack
from tests.security.strategies import hostile_strings, int64
from urbansense.influx import InfluxClient
from urbansense.lineprotocol import LineProtocolError, encode_point

pytestmark = pytest.mark.integration
#: Any text but line breaks, which a name cannot hold (see test_a_line_break_in_a_name_...).
names = (st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\n\r"), min_size=1, max_size=24)
         | hostile_strings.filter(lambda s: s and "\n" not in s and "\r" not in s))
values = (st.text(st.characters(exclude_categories=["Cs"]), max_size=60) | hostile_strings
          | st.floats(allow_nan=False, allow_infinity=False) | int64 | st.booleans())
examples = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.function_scoped_fixture])
_measurements = itertools.count()


@pytest.fixture(scope="module")
def db(stack: Stack) -> Iterator[InfluxClient]:
    client = InfluxClient(stack.influx_url, "lpfuzz_" + uuid.uuid4().hex[:10])
    client.create_database()
    yield client
    client.query(f'DROP DATABASE "{client.database}"', database="")
    client.close()


def _write_raw(db: InfluxClient, line: str) -> requests.Response:
    return requests.post(f"{db.url}/write", params={"db": db.database, "precision": "ms"},
                         data=line.encode(), timeout=10)


@examples
@given(st.dictionaries(names, names, max_size=3), st.dictionaries(names, values, min_size=1, max_size=3))
def test_any_tags_and_fields_are_refused_or_stored_exactly(db: InfluxClient, tags: dict[str, str],
                                                           fields: dict[str, Any]) -> None:
    assume(not set(tags) & set(fields))  # one key cannot be both a tag and a field
    measurement = f"m{next(_measurements)}"  # its own measurement: no field-type clash between examples
    try:
        line = encode_point(measurement, tags, fields, 1_000)
    except LineProtocolError:
        return
    r = _write_raw(db, line)
    assert r.status_code == 204, f"InfluxDB refused {line!r}: {r.text}"
    series = db.query(f'SELECT * FROM "{measurement}" GROUP BY *')
    assert len(series) == 1 and len(series[0].values) == 1, line
    stored = dict(zip(series[0].columns, series[0].values[0], strict=True))
    assert stored.pop("time") == 1_000
    assert series[0].tags == {k: v for k, v in tags.items() if v != ""}, line
    assert stored.keys() == fields.keys(), line
    for key, value in fields.items():
        if isinstance(value, float):  # InfluxDB's JSON writes 1e16 as 10000000000000000
            assert isinstance(stored[key], int | float) and float(stored[key]) == value, line
        else:
            assert type(stored[key]) is type(value) and stored[key] == value, line


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(names, min_size=1, max_size=8, unique=True))
def test_any_measurement_name_is_refused_or_stored_exactly(stack: Stack, measurements: list[str]) -> None:
    db = InfluxClient(stack.influx_url, "lpm_" + uuid.uuid4().hex[:10])
    db.create_database()
    try:
        lines = []
        expected = set()
        for name in measurements:
            try:
                lines.append(encode_point(name, {}, {"v": 1.0}, 1_000))
                expected.add(name)
            except LineProtocolError:
                pass
        assume(lines)
        r = _write_raw(db, "\n".join(lines))
        assert r.status_code == 204, f"InfluxDB refused {lines!r}: {r.text}"
        shown = {row[0] for s in db.query("SHOW MEASUREMENTS") for row in s.values}
        assert shown == expected
    finally:
        db.query(f'DROP DATABASE "{db.database}"', database="")
        db.close()


@pytest.mark.parametrize("where", ["measurement", "tag key", "tag value", "field key"])
def test_a_line_break_in_a_name_cannot_inject_a_second_point(db: InfluxClient, where: str) -> None:
    """A name cannot hold a line break in line protocol; the encoder writes it as the two
    characters backslash-n, so a hostile name never becomes a second (forged) line."""
    evil = "x\nforged,device=victim v=666 1000\r"
    m = f"inj{next(_measurements)}"
    args: dict[str, Any] = {"measurement": m, "tags": {"t": "1"}, "fields": {"v": 1.0}}
    if where == "measurement":
        args["measurement"] = m + evil
    elif where == "tag key":
        args["tags"] = {evil: "1"}
    elif where == "tag value":
        args["tags"] = {"t": evil}
    else:
        args["fields"] = {evil: 1.0}
    line = encode_point(args["measurement"], args["tags"], args["fields"], 1_000)
    assert "\n" not in line and "\r" not in line
    assert _write_raw(db, line).status_code == 204
    assert not db.query('SELECT * FROM "forged"')
