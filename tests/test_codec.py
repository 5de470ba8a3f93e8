"""The codec's refusals name the place and the problem; good payloads round-trip."""

from __future__ import annotations

import math

import orjson
import pytest

from urbansense import codec
from urbansense.codec import PayloadError
from urbansense.identifiers import MEASUREMENTS
from urbansense.schema import AlertEvent, Forecast, GatewayStatus, Sample, TelemetryBatch


def good_batch() -> dict:
    return {
        "v": 1, "gw": "pd-gw-01", "district": "pudong", "seq": 1234, "sent": 1764190000123,
        "samples": [
            {"dev": "wp-0007", "m": "water", "t": 1764190000000,
             "f": {"pressure_mpa": 0.312, "flow_m3h": 120.5, "turbidity_ntu": 0.4}, "q": "good"},
            {"dev": "wp-0008", "m": "water", "t": 1764190000000, "f": {}, "q": "bad", "err": "timeout"},
        ],
    }


def refuse(payload: object) -> str:
    with pytest.raises(PayloadError) as info:
        codec.decode_batch(orjson.dumps(payload))
    return str(info.value)


def test_design_example_decodes_exactly() -> None:
    batch = codec.decode_batch(orjson.dumps(good_batch()))
    assert (batch.gw, batch.district, batch.seq, batch.sent) == ("pd-gw-01", "pudong", 1234, 1764190000123)
    assert batch.samples[0] == Sample("wp-0007", "water", 1764190000000,
                                      {"pressure_mpa": 0.312, "flow_m3h": 120.5, "turbidity_ntu": 0.4})
    assert batch.samples[1].q == "bad" and batch.samples[1].err == "timeout"


def test_round_trip_keeps_types() -> None:
    batch = TelemetryBatch("gw-1", "d-1", 7, 1700000000000, [
        Sample("dev-1", "elevator", 1700000000000, {"floor": 3, "door_open": True, "direction": "up", "speed_ms": 1.5}),
    ])
    back = codec.decode_batch(codec.encode_batch(batch))
    assert back == batch
    assert isinstance(back.samples[0].f["floor"], int) and isinstance(back.samples[0].f["door_open"], bool)


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda b: b.pop("gw"), "gw: is missing"),
    (lambda b: b.pop("samples"), "samples: is missing"),
    (lambda b: b["samples"][0].pop("t"), "samples[0].t: is missing"),
    (lambda b: b["samples"][0].pop("f"), "samples[0].f: is missing"),
    (lambda b: b.update(seq="12"), "seq: must be an integer, got str '12'"),
    (lambda b: b.update(seq=True), "seq: must be an integer, got bool True"),
    (lambda b: b.update(v=2), "v: unsupported contract version 2"),
    (lambda b: b.update(samples={}), "samples: must be a list"),
    (lambda b: b["samples"][0].update(t=1.5), "samples[0].t: must be an integer, got float 1.5"),
    (lambda b: b["samples"][0].update(m="sewage"), f"samples[0].m: must be one of {', '.join(MEASUREMENTS)}"),
    (lambda b: b["samples"][0].update(q="meh"), "samples[0].q: must be one of good, uncertain, bad"),
    (lambda b: b["samples"][0]["f"].update(pressure_mpa=[1]), "samples[0].f.pressure_mpa: must be a number"),
    (lambda b: b["samples"][0]["f"].update(pressure_mpa=None),
     "samples[0].f.pressure_mpa: must be a number, boolean or string, got null"),
    (lambda b: b["samples"][0]["f"].update({"Bad Name": 1}), "samples[0].f: 'Bad Name' is not a valid metric name"),
    (lambda b: b["samples"][0]["f"].update(big=2**63),
     "samples[0].f.big: integer 9223372036854775808 does not fit in 64 bits"),
    (lambda b: b["samples"][1].pop("err"), 'samples[1].err: a sample with q="bad" must say why'),
    (lambda b: b["samples"][1]["f"].update(x=1), 'samples[1].f: a sample with q="bad" carries no fields'),
    (lambda b: b["samples"][0].update(f={}), 'samples[0].f: a sample with q="good" needs at least one field'),
])
def test_refusals_name_the_place(mutate, expected: str) -> None:
    payload = good_batch()
    mutate(payload)
    assert expected in refuse(payload)


@pytest.mark.parametrize("bad_id", ["PD-GW", "pd_gw", "-gw", "", "a" * 64, "gw/1", "gw 1", "gw,1", "gw\n"])
def test_bad_identifiers_are_refused(bad_id: str) -> None:
    for key in ("gw", "district"):
        payload = good_batch()
        payload[key] = bad_id
        assert f"{key}: " in refuse(payload) and "not a valid identifier" in refuse(payload)
    payload = good_batch()
    payload["samples"][0]["dev"] = bad_id
    assert "samples[0].dev:" in refuse(payload)


def test_identifier_limits_accept_edges() -> None:
    payload = good_batch()
    payload["gw"] = "a" * 63
    payload["district"] = "0"
    assert codec.decode_batch(orjson.dumps(payload)).gw == "a" * 63


def test_nan_and_infinity_refused_on_both_sides() -> None:
    for value, word in ((math.nan, "NaN"), (math.inf, "infinity"), (-math.inf, "infinity")):
        batch = TelemetryBatch("gw-1", "d-1", 1, 1, [Sample("dev-1", "water", 1, {"pressure_mpa": value})])
        with pytest.raises(PayloadError, match=rf"samples\[0\]\.f\.pressure_mpa: {word} is not allowed"):
            codec.encode_batch(batch)
    # NaN is not JSON: a peer that writes it anyway is told the payload is not valid JSON
    raw = orjson.dumps(good_batch()).replace(b"0.312", b"NaN")
    with pytest.raises(PayloadError, match="not valid UTF-8 JSON"):
        codec.decode_batch(raw)


def test_not_json_and_not_object_and_oversize() -> None:
    with pytest.raises(PayloadError, match="not valid UTF-8 JSON"):
        codec.decode_batch(b"\xff\xfe garbage")
    with pytest.raises(PayloadError, match="must be a JSON object, got list"):
        codec.decode_batch(b"[1, 2]")
    with pytest.raises(PayloadError, match=r"larger than the limit of 100 bytes"):
        codec.decode_batch(orjson.dumps(good_batch()), max_bytes=100)


def test_lenient_decode_keeps_good_neighbours() -> None:
    payload = good_batch()
    payload["samples"].insert(1, {"dev": "wp-0009", "m": "water", "t": "yesterday", "f": {"x": 1}})
    batch, problems = codec.decode_batch_lenient(orjson.dumps(payload))
    assert [s.dev for s in batch.samples] == ["wp-0007", "wp-0008"]
    assert problems == ["samples[1].t: must be an integer, got str 'yesterday'"]
    # a broken envelope still refuses the whole batch
    payload.pop("district")
    with pytest.raises(PayloadError, match="district: is missing"):
        codec.decode_batch_lenient(orjson.dumps(payload))


def test_status_round_trip_and_refusals() -> None:
    status = GatewayStatus("online", 1764190000000, "0.1.0", {"wp-0001": "ok", "wp-0002": "fail"},
                           {"wal_depth": 12.0})
    assert codec.decode_status(codec.encode_status(status)) == status
    with pytest.raises(PayloadError, match="state: must be one of online, offline"):
        codec.decode_status(b'{"v":1,"state":"sleepy","t":5}')
    with pytest.raises(PayloadError, match=r"devices\.wp-1: must be one of ok, fail"):
        codec.decode_status(b'{"v":1,"state":"online","t":5,"devices":{"wp-1":"meh"}}')


def test_alert_round_trip_design_example() -> None:
    raw = {"v": 1, "id": "gas.methane_rising:pudong:gs-0003", "rule": "gas.methane_rising",
           "domain": "gas", "severity": "warning", "state": "firing",
           "district": "pudong", "device": "gs-0003", "metric": "methane_lel_pct",
           "value": 14.2, "threshold": 25.0, "started": 1764190000000, "t": 1764190042000,
           "forecast": {"crosses_at": 1764190460000, "eta_s": 418},
           "message": "Methane at gs-0003 rising 1.9 %LEL/min; 25 %LEL in about 7 min"}
    event = codec.decode_alert(orjson.dumps(raw))
    assert event.forecast == Forecast(1764190460000, 418.0)
    assert orjson.loads(codec.encode_alert(event)) == {**raw, "forecast": {"crosses_at": 1764190460000, "eta_s": 418.0}}
    grouped = codec.decode_alert(orjson.dumps({**raw, "contributors": ["gs-0003", "gs-0004"]}))
    assert grouped.contributors == ["gs-0003", "gs-0004"]
    assert orjson.loads(codec.encode_alert(grouped))["contributors"] == ["gs-0003", "gs-0004"]
    for contributors, why in ((["gs 3"], r"contributors\[0\]"), ("gs-0003", "contributors: must be a list"),
                              ([f"d-{i}" for i in range(65)], "at most 64")):
        with pytest.raises(PayloadError, match=why):
            codec.decode_alert(orjson.dumps({**raw, "contributors": contributors}))
    bad = AlertEvent("x", "r", "sewer", "warning", "firing", "pudong", None, None, None, None, 1, 1, "m")
    with pytest.raises(PayloadError, match=f"domain: must be one of {', '.join(MEASUREMENTS)}, system"):
        codec.encode_alert(bad)
