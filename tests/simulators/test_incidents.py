"""One test per incident: its signature in the simulated data (as the edge would publish
it, via play_offline) and its ground-truth record."""

from __future__ import annotations

import math
from typing import Any

from simulators import daylight
from tests.simulators.conftest import Played


def _values(samples, metric):
    return [s.f[metric] for s in samples if s.q == "good"]


def _first_crossing(samples, metric, test):
    return next((s.t for s in samples if s.q == "good" and test(s.f[metric])), None)


def _check_record(rec: dict[str, Any], kind: str, domain: str, device: str | None) -> None:
    assert rec["kind"] == kind
    assert rec["domain"] == domain
    assert rec["district"] == "pudong"
    assert rec["device"] == device
    assert isinstance(rec["start"], int) and isinstance(rec["end"], int) and rec["end"] > rec["start"]
    assert set(rec) >= {"gateway", "devices", "metric", "hazard_threshold", "hazard_crossed_at", "params"}


def test_pipe_burst_drops_pressure_by_the_configured_amount_within_the_ramp(pudong: Played) -> None:
    rec = pudong.truth["pipe_burst"]
    _check_record(rec, "incident", "water", "wp-0103")
    start, params = int(rec["start"]), rec["params"]
    assert isinstance(params, dict)
    before = _values(pudong.window("wp-0103", start - 600_000, start), "pressure_mpa")
    after_ramp = start + int(params["ramp_s"] * 1000)
    during = _values(pudong.window("wp-0103", after_ramp, after_ramp + 600_000), "pressure_mpa")
    drop = sum(before) / len(before) - sum(during) / len(during)
    assert abs(drop - params["drop_mpa"]) < 0.02, drop
    flow_before = _values(pudong.window("wp-0103", start - 600_000, start), "flow_m3h")
    flow_during = _values(pudong.window("wp-0103", after_ramp, after_ramp + 600_000), "flow_m3h")
    rise = sum(flow_during) / len(flow_during) - sum(flow_before) / len(flow_before)
    assert abs(rise - params["flow_rise_m3h"]) < 15, rise
    assert min(_values(pudong.window("wp-0103", after_ramp, after_ramp + 600_000), "turbidity_ntu")) > 1.0
    # Ground truth: the hazard crossing is the first published sample below the threshold.
    crossed = _first_crossing(pudong.series["wp-0103"], "pressure_mpa", lambda v: v <= rec["hazard_threshold"])
    assert rec["hazard_threshold"] == 0.20
    assert rec["hazard_crossed_at"] == crossed
    assert start < crossed <= after_ramp
    # Repaired: pressure is back after the end.
    end = int(rec["end"])
    assert min(_values(pudong.window("wp-0103", end, end + 600_000), "pressure_mpa")) > 0.25


def test_slow_leak_makes_night_flow_creep_up(pudong: Played) -> None:
    rec = pudong.truth["slow_leak"]
    _check_record(rec, "incident", "water", "wp-0107")
    start = int(rec["start"])
    rate = rec["params"]["rate_m3h_per_h"]
    device = pudong.scenario.world(7, pudong.start_ms).devices["wp-0107"]
    # The extra flow over the no-leak signal grows by `rate` per hour.
    for hours in (1, 3, 5):
        t = start + hours * 3_600_000
        sample = next(s for s in pudong.series["wp-0107"] if s.t >= t)
        baseline = device.model.values(sample.t, [])["flow_m3h"]
        extra = float(sample.f["flow_m3h"]) - float(baseline)
        assert math.isclose(extra, rate * (sample.t - start) / 3_600_000, abs_tol=0.01), (hours, extra)
    # Minimum night flow (02:00-04:00) is above what the same pipe would draw without the leak.
    night = [s for s in pudong.series["wp-0107"] if 2.0 <= daylight.local_hour(s.t) < 4.0 and s.t > start]
    leak_min = min(float(s.f["flow_m3h"]) for s in night)
    base_min = min(float(device.model.values(s.t, [])["flow_m3h"]) for s in night)
    assert leak_min - base_min > 10.0
    # Hazard: leak flow reaches 10 m3/h after 10/3 h (on the step grid).
    expected = start + 10.0 / rate * 3_600_000
    assert rec["hazard_threshold"] == 10.0
    assert 0 <= rec["hazard_crossed_at"] - expected < pudong.scenario.step_s * 1000


def test_gas_leak_ramps_methane_through_both_alarm_levels(pudong: Played) -> None:
    rec = pudong.truth["gas_leak"]
    _check_record(rec, "incident", "gas", "md-0103")
    start = int(rec["start"])
    samples = pudong.window("md-0103", start - 300_000, int(rec["end"]))
    assert max(_values(pudong.window("md-0103", start - 300_000, start), "methane_lel_pct")) < 3.0
    crossed = _first_crossing(samples, "methane_lel_pct", lambda v: v >= 25.0)
    assert rec["hazard_threshold"] == 25.0 and rec["hazard_crossed_at"] == crossed
    # 25 %LEL at 1.5 %LEL/min is about 16.7 min after the start (noise: a sample either way).
    assert abs((crossed - start) / 60_000 - 25 / 1.5) < 1.0
    levels = {s.f["alarm_level"] for s in samples if s.q == "good"}
    assert levels == {0, 1, 2}
    first_alarm = _first_crossing(samples, "alarm_level", lambda v: v >= 1)
    assert first_alarm == crossed
    assert all(s.urgent for s in samples if s.q == "good" and float(s.f["alarm_level"]) > 0)


def test_gas_overpressure_raises_outlet_and_trips_the_slam_shut_valve(pudong: Played) -> None:
    rec = pudong.truth["gas_overpressure"]
    _check_record(rec, "incident", "gas", "gs-0102")
    start, end = int(rec["start"]), int(rec["end"])
    samples = pudong.window("gs-0102", start, end)
    crossed = _first_crossing(samples, "pressure_kpa", lambda v: v >= 130.0)
    assert rec["hazard_crossed_at"] == crossed
    assert _first_crossing(samples, "station_alarm", bool) <= crossed
    tripped = _first_crossing(samples, "valve_open", lambda v: not v)
    assert tripped is not None and tripped > crossed
    peak = max(_values(samples, "pressure_kpa"))
    assert 145 <= peak < 152
    assert _values(pudong.window("gs-0102", tripped + 900_000, end), "pressure_kpa")[-1] < 10
    assert all(s.f["valve_open"] for s in pudong.window("gs-0102", end, end + 600_000))


def test_lamp_failure_shows_no_current_while_commanded_on(pudong: Played) -> None:
    rec = pudong.truth["lamp_failure"]
    _check_record(rec, "incident", "lighting", "lc-0110")
    start, end = int(rec["start"]), int(rec["end"])
    before = pudong.window("lc-0110", start - 1_800_000, start)
    assert all(s.f["lamp_on"] and float(s.f["current_a"]) > 0.5 for s in before)
    during = pudong.window("lc-0110", start, end)
    assert during and all(s.f["lamp_on"] and s.f["current_a"] == 0 and s.f["power_w"] == 0
                          and s.f["lamp_fault"] for s in during)
    assert rec["hazard_crossed_at"] == during[0].t  # the lamp_fault flag, at the first poll
    # the driver aged for three hours before (its precursor): power factor down, current up
    early = pudong.window("lc-0110", rec["warn_from"] - 1_800_000, rec["warn_from"])
    assert early and min(float(s.f["power_factor"]) for s in early) > 0.9
    assert max(float(s.f["power_factor"]) for s in before) < 0.85


def test_day_burning_keeps_a_lamp_on_in_daylight(pudong: Played) -> None:
    rec = pudong.truth["day_burning"]
    _check_record(rec, "incident", "lighting", "lc-0105")
    start, end = int(rec["start"]), int(rec["end"])
    during = pudong.window("lc-0105", start, end)
    assert during and all(not daylight.is_dark(s.t) for s in during), "scenario must place it in daylight"
    assert all(s.f["lamp_on"] and float(s.f["power_w"]) > 100 for s in during)
    neighbour = pudong.window("lc-0106", start, end)
    assert not any(s.f["lamp_on"] for s in neighbour)


def test_cable_theft_takes_a_whole_circuit_to_zero_at_night(pudong: Played) -> None:
    rec = pudong.truth["cable_theft"]
    _check_record(rec, "incident", "lighting", None)
    circuit = [d for d in pudong.series if d.startswith("lc-")
               and pudong.scenario.world(7, pudong.start_ms).devices[d].spec.labels["circuit"] == "pd-cab-02-c2"]
    assert sorted(rec["devices"]) == sorted(circuit) and len(circuit) == 4
    assert rec["labels"] == {"cabinet": "pd-cab-02", "circuit": "pd-cab-02-c2"}
    assert rec["location"] is not None and abs(rec["location"]["lat"] - 31.23) < 0.05
    start, end = int(rec["start"]), int(rec["end"])
    for dev in circuit:
        during = pudong.window(dev, start, end)
        assert all(daylight.is_dark(s.t) for s in during)
        assert all(s.f["current_a"] == 0 and s.f["voltage_v"] == 0 and s.f["power_w"] == 0 for s in during)
        before = pudong.window(dev, start - 600_000, start)
        if dev == rec["devices"][-1]:  # the far lamp: cut off 20 minutes before the rest (precursor_s)
            assert all(float(s.f["voltage_v"]) == 0 for s in before if s.q == "good")
            assert all(float(s.f["current_a"]) > 0.3
                       for s in pudong.window(dev, start - 1_800_000, start - 1_200_000) if s.q == "good")
        else:
            assert all(float(s.f["current_a"]) > 0.3 for s in before if s.q == "good")
    # Other circuits keep burning.
    assert all(float(s.f["current_a"]) > 0.3 for s in pudong.window("lc-0109", start, end))


def test_elevator_entrapment_sets_trapped_passenger_between_floors(pudong: Played) -> None:
    rec = pudong.truth["elevator_entrapment"]
    _check_record(rec, "incident", "elevator", "el-0102")
    start, end = int(rec["start"]), int(rec["end"])
    during = pudong.window("el-0102", start, end)
    assert during and all(s.f["trapped_passenger"] and s.f["outside_door_zone"] and not s.f["running"]
                          and not s.f["door_open"] and s.f["fault_code"] == 12 and s.urgent for s in during)
    assert len({s.f["floor"] for s in during}) == 1
    assert not any(s.f["trapped_passenger"] for s in pudong.window("el-0102", end, end + 600_000))
    assert rec["hazard_crossed_at"] == during[0].t


def test_door_open_while_moving_is_flagged_and_latched(pudong: Played) -> None:
    rec = pudong.truth["door_open_while_moving"]
    _check_record(rec, "incident", "elevator", "el-0104")
    start, end = int(rec["start"]), int(rec["end"])
    during = pudong.window("el-0104", start, end)
    assert during[0].t == start and during[0].f["running"] and during[0].f["door_open"]
    assert all(s.f["door_open_while_moving"] and s.f["fault_code"] == 5 and s.urgent for s in during)
    assert not during[-1].f["running"] and during[-1].f["outside_door_zone"]
    assert rec["hazard_crossed_at"] == start


def test_elevator_fault_stops_the_car_with_its_code(pudong: Played) -> None:
    rec = pudong.truth["elevator_fault"]
    _check_record(rec, "incident", "elevator", "el-0106")
    start, end = int(rec["start"]), int(rec["end"])
    during = pudong.window("el-0106", start, end)
    assert during and all(s.f["fault_code"] == 13 and not s.f["running"] and s.f["outside_door_zone"]
                          for s in during)
    assert all(s.f["fault_code"] == 0 for s in pudong.window("el-0106", start - 600_000, start))
    assert all(s.f["fault_code"] == 0 for s in pudong.window("el-0106", end, end + 600_000))
    assert rec["hazard_crossed_at"] == during[0].t


def test_pollution_episode_rises_into_heavy_pollution_at_every_station(pudong: Played) -> None:
    rec = pudong.truth["pollution_episode"]
    _check_record(rec, "incident", "air", None)
    stations = sorted(d for d in pudong.series if d.startswith("aq-"))
    assert sorted(rec["devices"]) == stations
    start, rise_s = int(rec["start"]), rec["params"]["rise_s"]
    crossings = []
    for dev in stations:
        before = _values(pudong.window(dev, start - 3_600_000, start), "pm25_ugm3")
        assert max(before) < 75  # good air before
        peak = pudong.window(dev, start + int(rise_s * 1000), start + int(rise_s * 1000) + 3_600_000)
        values = _values(peak, "pm25_ugm3")
        assert min(values) > 150  # PM2.5 IAQI > 200: heavy pollution
        assert min(_values(peak, "pm10_ugm3")) > min(values)
        crossings.append(_first_crossing(pudong.window(dev, start, int(rec["end"])), "pm25_ugm3",
                                         lambda v: v >= 150))
    # "over hours": the first station crosses well after the start, before the peak.
    assert rec["hazard_crossed_at"] == min(c for c in crossings if c is not None)
    assert 3_600_000 < rec["hazard_crossed_at"] - start <= rise_s * 1000
