"""The adversarial suite (issue 16): hypothesis writes batches mixing hostile names,
types, numbers, strings and nesting, and sends each, from one gateway, through a real
ingester into a real InfluxDB beside an honest gateway's batch. For every message: each
sample the codec accepts is stored exactly as decoded or (an undeclared field InfluxDB
already holds in another type) dead-lettered with InfluxDB's reason, every refused one
is dead-lettered with a reason, and the honest gateway's readings of declared fields are
stored exactly, whatever came before them. (Agreement of the three decode paths on the same kinds of
input: tests/ingest/test_fastline.py and test_gateway_isolation.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from application.stack import Stack
from ingest.service import Ingester
from tests.ingest.harness import Collector, Publisher, isolated_settings, now_ms, running_ingester, unique, wait_for
from urbansense import codec, topics
from urbansense.influx import InfluxClient

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAMES = st.sampled_from([
    "pressure_kpa", "alarm_level", "valve_open", "temperature_c",     # gas declares these
    "vendor_diag", "x1",                                              # undeclared, plain
    "device_error", "quality_uncertain", "time", "device", "gateway",  # reserved
    "a b", "x,y", 'q"q', "k=v", "ü", "back\\slash", "new\nline", "1x", "", "n" * 70,  # not metric names
])
HOSTILE_TEXT = st.sampled_from(['"', "\\", "a,b=c d", "\n", "é中", "x" * 1100, "", "null", "1e999"])
LEAF = st.one_of(
    st.integers(-(2**70), 2**70), st.sampled_from([2**63, -(2**63) - 1, 2**63 - 1, 10**30, 2**53 + 1]),
    st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none(), HOSTILE_TEXT,
    st.text(alphabet="abz-_09", max_size=5),
)
VALUE = st.recursive(
    LEAF, lambda inner: st.one_of(st.lists(inner, max_size=2), st.dictionaries(st.text(max_size=2), inner, max_size=2)),
    max_leaves=6)
SAMPLE = st.fixed_dictionaries(
    {"dev": st.sampled_from(["gs-a1", "gs-a2", "GS-A3", "gs a4"]), "m": st.sampled_from(["gas", "gas", "sewer"]),
     "f": st.dictionaries(NAMES, VALUE, max_size=4)},
    optional={"q": st.sampled_from(["good", "uncertain", "bad", "worse"]), "err": st.one_of(st.none(), HOSTILE_TEXT),
              "urgent": st.sampled_from([True, False, 1])})


@pytest.fixture(scope="module")
def pipeline(stack: Stack) -> Iterator[tuple[Ingester, Publisher, Collector, InfluxClient]]:
    """One ingester, publisher and dead-letter watcher for every example, on a database of
    their own (so the fields' types in it are the examples' doing only)."""
    influx = InfluxClient(stack.influx_url, unique("t_adv").replace("-", "_"))
    influx.create_database()
    dead = Collector(stack.mqtt_url, topics.DEADLETTER)
    pub = Publisher(stack.mqtt_url)
    try:
        with running_ingester(stack.mqtt_url, stack.influx_url, influx.database, settings=isolated_settings()) as ing:
            yield ing, pub, dead, influx
    finally:
        pub.close()
        dead.close()
        influx.query(f'DROP DATABASE "{influx.database}"', database="")
        influx.close()


def _rows(influx: InfluxClient, district: str) -> dict[tuple[str, int], dict[str, Any]]:
    rows = influx.rows(f'SELECT * FROM "gas" WHERE "district" = \'{district}\'')
    return {(r["device"], r["time"]): {k: v for k, v in r.items() if v is not None and k not in
                                       ("time", "device", "district", "gateway")} for r in rows}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(SAMPLE, min_size=1, max_size=4))
def test_a_hostile_gateway_never_touches_another_s_data(
        pipeline: tuple[Ingester, Publisher, Collector, InfluxClient], samples: list[dict[str, Any]]) -> None:
    ing, pub, dead, influx = pipeline
    district = unique("adv")
    t = now_ms() - 120_000
    for i, s in enumerate(samples):
        s["t"] = t + i
    attack = json.dumps({"v": 1, "gw": "gw-a", "district": district, "seq": 1, "sent": now_ms(),
                         "samples": samples}).encode()
    honest = [{"dev": "gs-b1", "m": "gas", "t": t + 100, "f": {"pressure_kpa": 101.25, "alarm_level": 0,
                                                             "valve_open": True}},
              {"dev": "gs-b2", "m": "gas", "t": t + 100, "q": "bad", "f": {}, "err": "timeout"}]
    victim = json.dumps({"v": 1, "gw": "gw-b", "district": district, "seq": 1, "sent": now_ms(),
                         "samples": honest}).encode()
    before = ing.stats.messages
    pub.publish_all([(topics.telemetry(district, "gw-a"), attack), (topics.telemetry(district, "gw-b"), victim)])
    wait_for(lambda: ing.stats.messages >= before + 2 and ing.held == 0, 30, "both messages handled")

    try:
        expected, reasons = codec.decode_batch_lenient(attack)
        accepted = expected.samples
    except codec.PayloadError as exc:
        accepted, reasons = [], [str(exc)]
    attacker_topic = topics.telemetry(district, "gw-a")

    def letters(kind: str) -> list[dict[str, Any]]:
        return [d for d in dead.payloads if d["topic"] == attacker_topic and d["kind"] == kind]

    if reasons:  # what the codec refuses is dead-lettered, with the reason, once
        wait_for(lambda: letters("payload") or letters("samples"), 20, "the attacker's dead letter")
        refused = letters("payload") + letters("samples")
        assert len(refused) == 1 and refused[0]["reason"], refused
    def honest_stored() -> dict[tuple[str, int], dict[str, Any]] | None:
        got = _rows(influx, district)
        return got if ("gs-b1", t + 100) in got else None

    rows = wait_for(honest_stored, 20, "the honest rows")
    # the honest gateway's readings, exactly, and nothing of it dead-lettered
    assert rows[("gs-b1", t + 100)] == {"pressure_kpa": 101.25, "alarm_level": 0, "valve_open": True}
    assert rows[("gs-b2", t + 100)] == {"device_error": "timeout"}
    assert not any(d["topic"] == topics.telemetry(district, "gw-b") for d in dead.payloads)
    # every accepted attacker sample: stored as decoded, or refused by InfluxDB with its reason
    for sample in accepted:
        stored = rows.get((sample.dev, sample.t))
        if stored is None:
            assert any("field type conflict" in d["reason"] for d in letters("influx")), (sample, dead.payloads[-3:])
            assert all(codec.FIELD_TYPES["gas"].get(k) is None for k in sample.f), "a declared field reached InfluxDB"
            continue
        for key, value in sample.f.items():
            got = stored.get(key)  # InfluxDB's JSON writes a whole float without its ".0"
            assert got == value and isinstance(got, bool | str) == isinstance(value, bool | str), (key, value, got)
