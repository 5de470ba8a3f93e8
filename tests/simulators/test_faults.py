"""Sensor and link faults in the published data, and their ground-truth records."""

from __future__ import annotations

from typing import Any

from edge.modbus_pdu import ModbusExceptionResponse
from simulators.stations import malformed_payload
from tests.simulators.conftest import SEED, Played
from urbansense import codec


def map_payload_like_the_edge(payload: bytes) -> tuple[dict[str, object], list[str]]:
    """edge/mqtt_input.py: codec.loads(payload, "sensor payload"), PayloadError -> problem."""
    try:
        codec.loads(payload, "sensor payload")
    except codec.PayloadError as exc:
        return {}, [str(exc)]
    return {"parsed": True}, []


def _fault(pudong: Played, ftype: str) -> tuple[dict[str, Any], int, int]:
    rec = pudong.truth[ftype]
    assert rec["kind"] == "fault" and rec["hazard_crossed_at"] is None
    return rec, int(rec["start"]), int(rec["end"])


def test_stuck_value_repeats_exactly(pudong: Played) -> None:
    rec, start, end = _fault(pudong, "stuck")
    assert rec["device"] == "wp-0102" and rec["metric"] == "pressure_mpa"
    during = [s.f["pressure_mpa"] for s in pudong.window("wp-0102", start, end)]
    assert len(during) > 100 and len(set(during)) == 1
    after = [s.f["pressure_mpa"] for s in pudong.window("wp-0102", end, end + 900_000)]
    assert len(set(after)) > 10


def test_drift_grows_linearly(pudong: Played) -> None:
    rec, start, end = _fault(pudong, "drift")
    device = pudong.scenario.world(SEED, pudong.start_ms).devices[str(rec["device"])]
    rate = rec["params"]["rate_per_h"]
    last = pudong.window(str(rec["device"]), end - 60_000, end)[-1]
    clean = float(device.model.values(last.t, [])["methane_lel_pct"])
    offset = float(last.f["methane_lel_pct"]) - clean
    assert abs(offset - rate * (last.t - start) / 3_600_000) < 0.1  # int16 x 0.1 resolution


def test_spikes_are_rare_jumps_of_the_configured_size(pudong: Played) -> None:
    _rec, start, end = _fault(pudong, "spikes")
    device = pudong.scenario.world(SEED, pudong.start_ms).devices["wp-0105"]
    samples = pudong.window("wp-0105", start, end)
    jumps = [abs(float(s.f["turbidity_ntu"]) - float(device.model.values(s.t, [])["turbidity_ntu"]))
             for s in samples]
    spikes = [j for j in jumps if j > 0.5]
    assert all(abs(j - 1.5) < 0.02 for j in spikes)
    assert 0.005 < len(spikes) / len(samples) < 0.08  # probability 0.03


def test_dropout_loses_a_share_of_polls(pudong: Played) -> None:
    _rec, start, end = _fault(pudong, "dropout")
    samples = pudong.window("el-0105", start, end)
    bad = [s for s in samples if s.q == "bad"]
    assert all(s.err == "timeout" and s.f == {} for s in bad)
    assert 0.2 < len(bad) / len(samples) < 0.4
    assert all(s.q == "good" for s in pudong.window("el-0105", end, end + 600_000))


def test_dead_device_answers_nothing_then_recovers(pudong: Played) -> None:
    rec, start, end = _fault(pudong, "dead_device")
    assert rec["domain"] == "gas"
    during = pudong.window("gs-0104", start, end)
    assert during and all(s.q == "bad" and s.err == "timeout" for s in during)
    assert all(s.q == "good" for s in pudong.window("gs-0104", end, end + 600_000))


def test_modbus_exception_is_reported_as_the_edge_reports_it(pudong: Played) -> None:
    _rec, start, end = _fault(pudong, "modbus_exception")
    during = pudong.window("lc-0103", start, end)
    edge_wording = str(ModbusExceptionResponse(3, 4))
    assert during and all(s.q == "bad" and s.err == edge_wording for s in during)


def test_malformed_payloads_become_bad_samples(pudong: Played) -> None:
    _rec, start, end = _fault(pudong, "malformed_payload")
    during = pudong.window("aq-0104", start, end)
    bad = [s for s in during if s.q == "bad"]
    assert all(str(s.err).startswith("sensor payload is not valid UTF-8 JSON") for s in bad)
    assert 0.3 < len(bad) / len(during) < 0.7
    # The same text the edge agent produces for the broken payload the station publishes.
    device = pudong.scenario.world(SEED, pudong.start_ms).devices["aq-0104"]
    sample = bad[0]
    payload = malformed_payload(device.profile, device.id, sample.t, device.engineering(sample.t))
    fields, problems = map_payload_like_the_edge(payload)
    assert fields == {} and problems == [sample.err]


def test_ground_truth_has_one_of_each_incident_and_fault(pudong: Played) -> None:
    expected = {"pipe_burst", "slow_leak", "gas_leak", "gas_overpressure", "lamp_failure", "day_burning",
                "cable_theft", "elevator_entrapment", "door_open_while_moving", "elevator_fault",
                "pollution_episode",
                "stuck", "drift", "spikes", "dropout", "dead_device", "modbus_exception", "malformed_payload"}
    records = pudong.scenario.ground_truth(SEED, pudong.start_ms)
    assert {r["type"] for r in records} == expected and len(records) == len(expected)
    assert [r["start"] for r in records] == sorted(r["start"] for r in records)
    end = pudong.start_ms + pudong.scenario.duration_s * 1000
    assert all(pudong.start_ms <= r["start"] < r["end"] <= end for r in records)
