"""One gateway must never corrupt another's data (issue 16): reserved names, a sample's
own fields, integers beyond 64 bits, deep nesting and the input bounds, each checked on
the three decode paths - the C accelerator (points.transcode_payload), the plain path
(codec.decode_plain_batch + points.transcode_plain) and the full path
(codec.decode_batch_lenient + LineEncoder) - which must agree: the same points, or the
C and plain paths leave the payload to the full path, which refuses it with a reason.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from application.stack import Stack
from ingest.deadletter import declared_conflict
from ingest.points import LineEncoder, accelerator_in_use, configure_accelerator, status_line, transcode_payload
from tests.ingest.harness import (
    Collector,
    Publisher,
    isolated_settings,
    now_ms,
    running_ingester,
    unique,
    wait_for,
)
from tests.ingest.test_fastline import _point
from tests.ingest.test_transcode import NOW, WINDOW, _batch, _sample, assert_same, fast_path, full_path
from urbansense import codec, topics
from urbansense.identifiers import MEASUREMENTS, RESERVED_FIELDS, RESERVED_STATUS_FIELDS
from urbansense.influx import InfluxClient
from urbansense.schema import GatewayStatus, Sample, TelemetryBatch

INT64_MAX = 2**63 - 1


def c_result(payload: bytes, max_bytes: int = codec.MAX_PAYLOAD_BYTES) -> list[str] | None:
    got = transcode_payload(payload, WINDOW, NOW, max_bytes)
    return None if got is None else got[1].all_lines()


def refused_everywhere(payload: bytes, reason: str, max_bytes: int = codec.MAX_PAYLOAD_BYTES) -> None:
    """The C and plain paths leave it alone; the full path stores nothing and says why."""
    assert c_result(payload, max_bytes) is None
    assert codec.decode_plain_batch(payload, max_bytes=max_bytes) is None
    try:
        decoded, problems = codec.decode_batch_lenient(payload, max_bytes=max_bytes)
    except codec.PayloadError as exc:
        assert reason in str(exc), str(exc)
        return
    encoded = LineEncoder(WINDOW).encode(decoded, NOW)
    assert encoded.all_lines() == [], "a refused sample was written"
    assert any(reason in p for p in problems + encoded.problems), problems + encoded.problems


# ---------------------------------------------------------------- 1. reserved names


@pytest.mark.parametrize("name", sorted(RESERVED_FIELDS))
@pytest.mark.parametrize("q", ["good", "uncertain"])
def test_no_sample_may_use_a_name_the_ingester_writes(name: str, q: str) -> None:
    """device_error as a number in gas would make every bad sample of the shard a type
    conflict; quality_uncertain likewise for every uncertain one."""
    payload = _batch([_sample(m="gas", q=q, f={name: 5.0, "pressure_kpa": 3.0})])
    refused_everywhere(payload, "are reserved: the ingester writes them itself")


def test_a_status_may_not_override_the_fields_the_ingester_computes() -> None:
    for name in sorted(RESERVED_STATUS_FIELDS):
        raw = {"v": 1, "state": "online", "t": NOW, "devices": {"a": "ok"}, "stats": {name: 7.5}}
        with pytest.raises(codec.PayloadError, match="computed by the ingester"):
            codec.decode_status(json.dumps(raw))
    # built in code rather than decoded: the computed values still win
    line = status_line("pudong", "gw-1", GatewayStatus("online", NOW, devices={"a": "ok"},
                                                       stats={"online": 0.0, "devices_ok": 7.5, "wal_depth": 2}))
    assert line == ("gateway_status,district=pudong,gateway=gw-1 online=true,devices_ok=1i,devices_fail=0i,"
                    f"wal_depth=2.0 {NOW}")


# ---------------------------------------------------------------- 2. a sample's own fields


def test_an_uncertain_sample_keeps_its_reason() -> None:
    payload = _batch([_sample(q="uncertain", f={"pressure_mpa": 0.31}, err="unreadable: flow_m3h")])
    assert c_result(payload) is None and fast_path(payload) is None
    full = full_path(payload)
    assert not isinstance(full, str)
    assert full == ([f'water,device=wp-0007,district=pudong,gateway=pd-gw-01 pressure_mpa=0.31,'
                     f'quality_uncertain=true,quality_reason="unreadable: flow_m3h" {NOW}'], [])


def test_a_good_sample_with_an_error_text_is_refused_not_stripped() -> None:
    refused_everywhere(_batch([_sample(err="sensor fouled")]), 'only a sample with q="bad" or q="uncertain"')
    assert assert_same(_batch([_sample(err=None)]))  # null is no text
    full = full_path(_batch([_sample(err="")]))  # nor is ""
    assert not isinstance(full, str) and full[1] == [] and len(full[0]) == 1


# ---------------------------------------------------------------- 3. integers


@pytest.mark.parametrize(("text", "stored"), [
    ("9223372036854775807", "9223372036854775807i"),
    ("-9223372036854775808", "-9223372036854775808i"),
    ("123456789012345678", "123456789012345678i"),  # 18 digits: the C path's own limit
    ("9223372036854775808", None),
    ("-9223372036854775809", None),
    ("18446744073709551616", None),
    ("123456789012345678901234567890", None),
])
def test_integers_follow_one_rule_on_every_path(text: str, stored: str | None) -> None:
    """int64 is stored as an integer; anything beyond is refused on every path, never
    rounded to a float (orjson would have read 2**64 as 1.8446744073709552e19)."""
    payload = _batch([_sample(f={"count": "N"})]).replace(b'"N"', text.encode())
    if stored is None:
        refused_everywhere(payload, "does not fit in 64 bits")
        return
    line = f"water,device=wp-0007,district=pudong,gateway=pd-gw-01 count={stored} {NOW}"
    full = full_path(payload)
    assert full == ([line], [])
    assert fast_path(payload) is None  # integers are not plain
    c = c_result(payload)
    assert c in (None, [line])  # the C path takes up to 18 digits
    assert (c is not None) == (len(text.lstrip("-")) <= 18 and accelerator_in_use())


@pytest.mark.parametrize("where", ["seq", "sent", "t"])
def test_envelope_and_time_integers_are_int64_too(where: str) -> None:
    big = 2**64
    payload = (_batch([_sample(t="N")]) if where == "t" else _batch([_sample()], **{where: "N"})).replace(
        b'"N"', str(big).encode())
    refused_everywhere(payload, "does not fit in 64 bits")


# ---------------------------------------------------------------- 4. nesting and bounds


def _nested(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize("where", ["envelope", "sample"])
def test_deep_nesting_is_refused_with_a_reason_never_a_crash(where: str) -> None:
    """~1,000 nested arrays under an unknown key crashed the plain decoder with
    RecursionError (an internal error, the good sample lost, a traceback per message)."""
    for levels in (20, 1000, 100_000):
        body = _batch([_sample()]).decode()
        if where == "envelope":
            body = body[:-1] + f',"extra":{_nested(levels)}}}'
        else:
            body = body.replace('"q":"good"', f'"q":"good","extra":{_nested(levels)}')
        refused_everywhere(body.encode(), f"nested deeper than {codec.MAX_DEPTH} levels",
                           max_bytes=1_000_000)


def test_nesting_within_the_limit_under_an_unknown_key_is_ignored_alike() -> None:
    payload = (_batch([_sample()]).decode()[:-1] + f',"extra":{_nested(codec.MAX_DEPTH - 2)}}}').encode()
    assert c_result(payload) is None and fast_path(payload) is None  # unknown keys: the full path
    full = full_path(payload)
    assert not isinstance(full, str) and full[1] == [] and len(full[0]) == 1


def test_the_bounds_are_the_same_on_every_path() -> None:
    most = {f"m{i}": float(i) for i in range(codec.MAX_FIELDS)}
    assert assert_same(_batch([_sample(f=most)]))
    if accelerator_in_use():
        assert c_result(_batch([_sample(f=most)])) is not None
    refused_everywhere(_batch([_sample(f={**most, "one_more": 1.0})]),
                       f"{codec.MAX_FIELDS + 1} fields, more than the limit of {codec.MAX_FIELDS}")
    small = {"dev": "a", "m": "air", "t": NOW, "f": {"x": 1.0}}
    big = 10_000_000
    at_limit = _batch([small] * codec.MAX_SAMPLES)
    assert codec.decode_plain_batch(at_limit, max_bytes=big) is not None
    if accelerator_in_use():
        assert c_result(at_limit, big) is not None
    refused_everywhere(_batch([small] * (codec.MAX_SAMPLES + 1)),
                       f"{codec.MAX_SAMPLES + 1} samples, more than the limit", max_bytes=big)
    text = "a" * (codec.MAX_STRING_FIELD + 1)
    refused_everywhere(_batch([_sample(f={"state": text})]), "exceeds 1024")
    refused_everywhere(_batch([_sample(q="bad", f={}, err=text)]), "exceeds 1024")


def test_the_accelerator_is_configured_from_the_contract() -> None:
    if not accelerator_in_use():
        pytest.skip("the C accelerator is not built here (pure-Python path only)")
    from ingest import _fastline

    assert (_fastline.MAX_FIELDS, _fastline.MAX_STRING_FIELD) == (codec.MAX_FIELDS, codec.MAX_STRING_FIELD)
    with pytest.raises(ValueError, match="reserved names are ASCII strings of 1 to 63"):
        _fastline.configure(("ok", "x" * 64), MEASUREMENTS, 10)
    with pytest.raises(ValueError, match="at most 32 measurements"):
        _fastline.configure((), tuple(f"n{i}" for i in range(33)), 10)
    # a refused call changes nothing: the contract's sets are still in force
    good = _batch([_sample()])
    assert c_result(good) is not None
    assert c_result(_batch([_sample(f={"device_error": 1.0})])) is None


# ---------------------------------------------------------------- the whole ingester


def _gas(district: str, gw: str, seq: int, samples: list[dict[str, Any]]) -> bytes:
    """A batch sent now (a gateway stamps `sent` as it publishes, whenever its readings were taken)."""
    return json.dumps({"v": 1, "gw": gw, "district": district, "seq": seq, "sent": now_ms(),
                       "samples": samples}).encode()


def _attack(stack: Stack, influx_db: InfluxClient, district: str, attacker: list[tuple[str, bytes]],
            victim: list[tuple[str, bytes]], letters: int) -> list[dict[str, Any]]:
    """The attacker's messages through a real ingester first, then the victim's; returns
    the district's dead letters once `letters` of them have arrived."""
    dead = Collector(stack.mqtt_url, topics.DEADLETTER)
    pub = Publisher(stack.mqtt_url)
    try:
        with running_ingester(stack.mqtt_url, stack.influx_url, influx_db.database,
                              settings=isolated_settings()) as ing:
            pub.publish_all(attacker)
            wait_for(lambda: ing.stats.messages >= len(attacker) and ing.held == 0, 30, "attacker handled")
            pub.publish_all(victim)
            wait_for(lambda: ing.stats.messages >= len(attacker) + len(victim) and ing.held == 0, 30, "all handled")

        def mine() -> list[dict[str, Any]]:
            return [d for d in dead.payloads if f"/{district}/" in d["topic"]]

        wait_for(lambda: len(mine()) >= letters, 20, "dead letters")
        return mine()
    finally:
        pub.close()
        dead.close()


@pytest.mark.integration
def test_one_gateway_cannot_poison_another_s_fields(stack: Stack, influx_db: InfluxClient) -> None:
    """Gateway A sends device_error as a number, quality_uncertain as a number and a
    status whose stats override `online`; gateway B's bad and uncertain samples and its
    status are still stored, and each of A's messages is dead-lettered with the reason."""
    district = unique("iso")
    t = now_ms() - 60_000
    attacker = [
        (topics.telemetry(district, "gw-a"), _gas(district, "gw-a", 1, [
            {"dev": "gs-a1", "m": "gas", "t": t, "f": {"device_error": 5.0, "pressure_kpa": 3.0}}])),
        (topics.telemetry(district, "gw-a"), _gas(district, "gw-a", 2, [
            {"dev": "gs-a1", "m": "gas", "t": t + 1, "q": "uncertain", "f": {"quality_uncertain": 5.0}}])),
        (topics.status(district, "gw-a"), json.dumps(
            {"v": 1, "state": "online", "t": t, "devices": {}, "stats": {"online": 0.0}}).encode()),
    ]
    victim = [
        (topics.telemetry(district, "gw-b"), _gas(district, "gw-b", 1, [
            {"dev": "gs-b1", "m": "gas", "t": t + 10, "q": "bad", "f": {}, "err": "timeout"},
            {"dev": "gs-b2", "m": "gas", "t": t + 10, "q": "uncertain", "f": {"pressure_kpa": 3.1},
             "err": "unreadable: outlet_kpa"}])),
        (topics.status(district, "gw-b"), json.dumps(
            {"v": 1, "state": "online", "t": t + 10, "devices": {"gs-b1": "fail", "gs-b2": "ok"}}).encode()),
    ]
    letters = {d["topic"]: d["reason"] for d in _attack(stack, influx_db, district, attacker, victim, 3)}
    assert "device_error are reserved" in letters[topics.telemetry(district, "gw-a")] or \
        "quality_uncertain are reserved" in letters[topics.telemetry(district, "gw-a")]
    assert "computed by the ingester" in letters[topics.status(district, "gw-a")]
    assert all("gw-b" not in topic for topic in letters)
    rows = influx_db.rows(f"SELECT device_error, quality_uncertain, quality_reason, pressure_kpa FROM gas "
                          f"WHERE district = '{district}'")
    stored = {(r["device_error"], r["quality_uncertain"], r["quality_reason"], r["pressure_kpa"]) for r in rows}
    assert stored == {("timeout", None, None, None), (None, True, "unreadable: outlet_kpa", 3.1)}
    status = influx_db.rows(f"SELECT online, devices_ok, devices_fail FROM gateway_status "
                            f"WHERE district = '{district}'")
    assert [(s["online"], s["devices_ok"], s["devices_fail"]) for s in status] == [(True, 1, 1)]


def test_samples_built_in_code_are_checked_by_the_encoder_too() -> None:
    batch = TelemetryBatch("gw-1", "pudong", 1, NOW, [Sample("gs-1", "gas", NOW, {"device_error": 1.0})])
    encoded = LineEncoder(WINDOW).encode(batch, NOW)
    assert encoded.all_lines() == [] and "device_error are reserved" in encoded.problems[0]


def test_the_accelerator_takes_its_measurements_at_start_up() -> None:
    """No family is compiled into the C path: one it was never built with is taken once
    configure() names it (as the domain registry will), and refused again without it."""
    if not accelerator_in_use():
        pytest.skip("the C accelerator is not built here (pure-Python path only)")
    from ingest import _fastline

    noise = _batch([_sample(m="noise", f={"laeq_db": 55.5})])
    assert c_result(noise) is None
    try:
        configure_accelerator(_fastline, (*MEASUREMENTS, "noise"))
        assert c_result(noise) == [f"noise,device=wp-0007,district=pudong,gateway=pd-gw-01 laeq_db=55.5 {NOW}"]
    finally:
        configure_accelerator(_fastline)
    assert c_result(noise) is None
    # and the declared types came back with the measurements (an integer pressure is Python's)
    assert c_result(_batch([_sample(m="gas", f={"pressure_kpa": 3})])) is None


# ---------------------------------------------------------------- 5. field types from the registry


@pytest.mark.parametrize(("value", "stored"), [
    ("0.31", 0.31),        # a float field's float: every path
    ("3", 3.0),            # an integer into a float field: converted (the full path)
    ("9007199254740992", 2.0**53),  # exactly representable
    ("9007199254740993", None),     # not: refused
    ('"high"', None), ("true", None),
])
def test_a_declared_field_arrives_in_its_type_or_not_at_all(value: str, stored: float | None) -> None:
    payload = _gas("pudong", "gw-1", 1, [{"dev": "gs-1", "m": "gas", "t": NOW, "f": {"pressure_kpa": 0}}])
    payload = payload.replace(b'"pressure_kpa": 0', b'"pressure_kpa": ' + value.encode())
    if stored is None:
        refused_everywhere(payload, "gas field pressure_kpa is a number (float, the family's declared type)")
        return
    decoded, problems = codec.decode_batch_lenient(payload)
    assert problems == [] and decoded.samples[0].f == {"pressure_kpa": stored}
    assert type(decoded.samples[0].f["pressure_kpa"]) is float
    lines = LineEncoder(WINDOW).encode(decoded, NOW).all_lines()
    assert lines == [f"gas,device=gs-1,district=pudong,gateway=gw-1 pressure_kpa={stored!r} {NOW}"]
    taken = c_result(payload)
    assert taken is None or taken == [lines[0].replace(repr(stored), value)]  # C copies the float as written


@pytest.mark.parametrize(("field", "good", "bad"), [
    ("alarm_level", ["1", "1.0"], ["1.5", "true", '"one"']),   # int (a whole float is converted)
    ("valve_open", ["true"], ["1", "1.0", '"true"']),           # bool
])
def test_integer_and_boolean_fields_take_nothing_else(field: str, good: list[str], bad: list[str]) -> None:
    def payload(value: str) -> bytes:
        return (b'{"v":1,"gw":"gw-1","district":"pudong","seq":1,"sent":%d,"samples":[{"dev":"gs-1","m":"gas",'
                b'"t":%d,"f":{"%s":%s}}]}' % (NOW, NOW, field.encode(), value.encode()))
    for value in good:
        decoded, problems = codec.decode_batch_lenient(payload(value))
        assert problems == [] and len(decoded.samples) == 1
        assert type(decoded.samples[0].f[field]).__name__ == codec.FIELD_TYPES["gas"][field]
    for value in bad:
        refused_everywhere(payload(value), f"gas field {field} is ")


@pytest.mark.integration
def test_two_gateways_sending_one_field_in_two_types(stack: Stack, influx_db: InfluxClient) -> None:
    """Gateway A sends a declared float field as a string, first, in a fresh shard; gateway
    B's floats are stored all the same, and A's sample is dead-lettered with the field and
    the type it wants (before, A's string took the field's type and InfluxDB refused B)."""
    district = unique("types")
    t = now_ms() - 60_000
    attacker = [(topics.telemetry(district, "gw-a"), _gas(district, "gw-a", 1, [
        {"dev": "gs-a1", "m": "gas", "t": t, "f": {"pressure_kpa": "high"}},
        {"dev": "gs-a2", "m": "gas", "t": t, "f": {"pressure_kpa": 101}}]))]
    victim = [(topics.telemetry(district, "gw-b"), _gas(district, "gw-b", seq, [
        {"dev": "gs-b1", "m": "gas", "t": t + seq, "f": {"pressure_kpa": 100.5 + seq}}])) for seq in (1, 2, 3)]
    [letter] = _attack(stack, influx_db, district, attacker, victim, 1)
    assert letter["topic"] == topics.telemetry(district, "gw-a")
    assert "gas field pressure_kpa is a number (float" in letter["reason"] and "got str 'high'" in letter["reason"]
    rows = influx_db.rows(f"SELECT pressure_kpa, device FROM gas WHERE district = '{district}'")
    assert sorted((r["device"], r["pressure_kpa"]) for r in rows) == [
        ("gs-a2", 101.0), ("gs-b1", 101.5), ("gs-b1", 102.5), ("gs-b1", 103.5)]
    keys = influx_db.rows('SHOW FIELD KEYS FROM "gas"')
    assert {"fieldKey": "pressure_kpa", "fieldType": "float"} in keys


def test_a_strict_family_takes_only_the_fields_it_declares(monkeypatch: pytest.MonkeyPatch) -> None:
    """family.yaml `undeclared_fields: refuse` (here set for gas): an undeclared field is
    refused on every path with the reason; declared fields still take the C path."""
    monkeypatch.setattr(codec, "STRICT_MEASUREMENTS", frozenset({"gas"}))
    if accelerator_in_use():
        from ingest import _fastline
        configure_accelerator(_fastline)
    try:
        extra = _batch([_sample(m="gas", f={"pressure_kpa": 101.5, "vendor_diag": 7.5})])
        refused_everywhere(extra, "vendor_diag is not a field of family gas, which takes only the fields it declares")
        declared = _batch([_sample(m="gas", f={"pressure_kpa": 101.5})])
        assert codec.decode_plain_batch(declared) is not None
        assert c_result(declared) is not None or not accelerator_in_use()
        water = _batch([_sample(f={"pressure_mpa": 0.31, "vendor_diag": 7.5})])  # water stores it as sent
        assert codec.decode_plain_batch(water) is not None
    finally:
        monkeypatch.undo()
        if accelerator_in_use():
            configure_accelerator(_fastline)
    assert codec.decode_plain_batch(extra) is not None  # gas stores undeclared fields again


def test_an_influxdb_type_conflict_on_a_declared_field_is_a_bug_of_ours() -> None:
    reason = ('partial write: field type conflict: input field "{}" on measurement "gas" is type integer, '
              'already exists as type float dropped=1')
    assert declared_conflict(reason.format("pressure_kpa")) == "gas.pressure_kpa"
    assert declared_conflict(reason.format("vendor_diag")) is None  # undeclared: two gateways may differ
    assert declared_conflict("unable to parse 'x': missing fields") is None


_TYPED_NAMES = [("gas", "pressure_kpa"), ("gas", "alarm_level"), ("gas", "valve_open"), ("elevator", "direction"),
                ("water", "flow_m3h"), ("water", "vendor_diag")]
_ANY_VALUE = st.one_of(st.integers(-(2**60), 2**60), st.floats(allow_nan=False, allow_infinity=False),
                       st.booleans(), st.text(alphabet="abc-_0123", min_size=1, max_size=8))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_TYPED_NAMES), _ANY_VALUE), min_size=1, max_size=6))
def test_declared_types_agree_on_every_path(fields: list[tuple[tuple[str, str], Any]]) -> None:
    """Any mix of values in declared and undeclared fields: the full path stores each
    declared field in its type or refuses the sample naming the field; the C and plain
    paths give the same points or leave the batch to it."""
    samples = [_sample(dev=f"d-{i}", m=m, f={key: value}) for i, ((m, key), value) in enumerate(fields)]
    payload = _batch(samples)
    full = full_path(payload)
    assert not isinstance(full, str), full
    lines, problems = full
    decoded, _ = codec.decode_batch_lenient(payload)
    for sample in decoded.samples:
        for key, value in sample.f.items():
            want = codec.FIELD_TYPES[sample.m].get(key)
            assert want is None or type(value).__name__ == {"string": "str"}.get(want, want), (key, value)
    assert all("the family's declared type" in p for p in problems), problems
    assert len(lines) + len(problems) == len(samples)
    c = c_result(payload)
    if c is not None:
        assert problems == [] and sorted(map(repr, map(_point, c))) == sorted(map(repr, map(_point, lines)))
    assert_same(payload)  # the plain path: the same points, or it leaves the batch

