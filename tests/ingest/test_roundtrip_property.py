"""Property: arbitrary valid identifiers, metric names and field values (strings with
quotes, backslashes, commas, spaces, equals signs, newlines, any Unicode) go through the
ingester into the real InfluxDB and come back exactly."""

from __future__ import annotations

import itertools
import threading
import zlib
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from application.stack import Stack
from ingest.service import Ingester
from tests.ingest.harness import Publisher, isolated_settings, now_ms, unique, wait_for
from tests.security.strategies import identifiers, metric_names
from urbansense import topics
from urbansense.identifiers import MEASUREMENTS
from urbansense.influx import InfluxClient
from urbansense.mqtt import MqttSettings

pytestmark = pytest.mark.integration

texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=120) | st.sampled_from(
    ['"', "\\", "\\\\", 'a "quoted" \\ path', "a,b=c d", "line\nbreak\r\n", "trailing\\", " ", ""])
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)


def _value_for(name: str) -> st.SearchStrategy[Any]:
    # One type per field name across all examples: InfluxDB fixes a field's type per shard.
    return (texts, finite, int64, st.booleans())[zlib.crc32(name.encode()) % 4]


@st.composite
def samples(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(metric_names, min_size=1, max_size=4, unique=True))
    return {"dev": draw(identifiers), "m": draw(st.sampled_from(MEASUREMENTS)),
            "f": {name: draw(_value_for(name)) for name in names}}


@pytest.fixture(scope="module")
def ingester(stack: Stack) -> Iterator[tuple[Ingester, InfluxClient]]:
    database = unique("prop").replace("-", "_")
    influx = InfluxClient(stack.influx_url, database)
    influx.create_database()
    ing = Ingester(MqttSettings.from_url(stack.mqtt_url), stack.influx_url, database=database,
                   instance=unique("prop"), settings=isolated_settings(batch_delay_s=0.05))
    thread = threading.Thread(target=ing.run, daemon=True)
    thread.start()
    assert ing.mqtt.wait_connected(10)
    wait_for(lambda: ing.mqtt.stats.extra.get("subacks", 0) >= 2, 10, "the ingester's subscriptions")
    yield ing, influx
    ing.stop()
    thread.join(30)
    influx.query(f'DROP DATABASE "{database}"', database="")
    influx.close()


_clock = itertools.count()


# No shrinking: each example is a round trip through the broker and the database, and
# shrinking one failure can take minutes; the failing example is printed as drawn.
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(district=identifiers, gateway=identifiers, batch=st.lists(samples(), min_size=1, max_size=5))
def test_arbitrary_valid_batches_round_trip_exactly(
        ingester: tuple[Ingester, InfluxClient], stack: Stack,
        district: str, gateway: str, batch: list[dict[str, Any]]) -> None:
    ing, influx = ingester
    # distinct times per example and per sample, so that no two land on the same point
    t_lo = now_ms() - 3_600_000 + next(_clock) * 100
    for i, sample in enumerate(batch):
        sample["t"] = t_lo + i
    payload = orjson.dumps({"v": 1, "gw": gateway, "district": district, "seq": 1, "sent": now_ms(),
                            "samples": batch})
    before = ing.stats.messages
    pub = Publisher(stack.mqtt_url)
    try:
        pub.publish_all([(topics.telemetry(district, gateway), payload)])
    finally:
        pub.close()
    wait_for(lambda: ing.stats.messages > before and ing.held == 0, 20, "the batch written")
    assert ing.stats.deadletters == 0

    got: dict[tuple[str, str, str, str, int], dict[str, Any]] = {}
    for m in {s["m"] for s in batch}:
        for series in influx.query(f'SELECT * FROM "{m}" WHERE time >= {t_lo}ms AND time <= '
                                   f"{t_lo + len(batch)}ms GROUP BY *"):
            for row in series.rows():
                fields = {k: v for k, v in row.items() if k != "time" and v is not None}
                got[(m, series.tags["district"], series.tags["gateway"], series.tags["device"],
                     row["time"])] = fields
    want = {(s["m"], district, gateway, s["dev"], s["t"]): s["f"] for s in batch}
    assert got.keys() == want.keys()
    for key, fields in want.items():
        assert got[key].keys() == fields.keys(), key
        for name, value in fields.items():
            stored = got[key][name]
            if isinstance(value, float):
                # InfluxDB's JSON writes 4.9e16 as 49041338552721540, which Python reads
                # as an int: the stored float is exact, its JSON spelling is not typed
                assert isinstance(stored, int | float) and float(stored) == value, (name, value, stored)
            else:  # == would let 1 == 1.0 == True pass: check the type too
                assert type(stored) is type(value) and stored == value, (name, value, stored)
