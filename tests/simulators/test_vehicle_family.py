"""Vehicles and vessels in the simulator and through the rules: each incident drawn on
vehicle-day is detected, the zone and route rules made for it fire within one report
interval of the violation the simulator judges, a tanker at the leaking utility tunnel
is one alert naming both, and a terminal's coverage gap loses no report."""

from __future__ import annotations

import orjson
import pytest

from application.backtest import BacktestResult, run_scenario
from edge.mqtt_input import map_payload
from simulators.scenario import Scenario, load_scenario
from simulators.stations import backlog_payload, station_payload
from tests.dates import pinned_start

SEED = 1
REPORT_MS = 10_000
#: The rule each incident kind's violation is for (the first alert may come earlier from
#: another, e.g. leaving the corridor on the way into a banned zone).
MADE_FOR = {"speeding": "vehicle.speeding", "channel_speeding": "vehicle.speeding",
            "banned_entry": "vehicle.banned_zone", "route_deviation": "vehicle.off_route",
            "long_stop": "vehicle.long_stop", "anchoring": "vehicle.anchoring",
            "emergency_button": "vehicle.emergency"}


@pytest.fixture(scope="module")
def day() -> tuple[Scenario, int, BacktestResult]:
    sc = load_scenario("vehicle-day")
    start = pinned_start("vehicle-day")
    return sc, start, run_scenario(sc.path, seed=SEED, start_ms=start)


def test_every_incident_is_detected_without_a_false_alarm(day: tuple[Scenario, int, BacktestResult]) -> None:
    _sc, _start, result = day
    assert {s.record["type"] for s in result.incidents} >= set(MADE_FOR) | {"continuous_driving", "gnss_loss"}
    assert result.missed == []
    assert result.false_alarms == []
    assert all(f.detected for f in result.faults)  # coverage gaps and the dead terminal: silent


def test_zone_and_route_rules_fire_within_one_report_of_the_violation(
        day: tuple[Scenario, int, BacktestResult]) -> None:
    _sc, _start, result = day
    for s in result.incidents:
        rule = MADE_FOR.get(s.record["type"])
        if rule is None:
            continue
        crossed = s.record["hazard_crossed_at"]
        assert crossed is not None, s.record
        first = min((e.t for e in s.alerts if e.rule == rule), default=None)
        assert first is not None, f"{s.record['type']} on {s.record['devices']}: no {rule} alert"
        assert 0 <= first - crossed <= REPORT_MS, (s.record["type"], first - crossed)


def test_driving_past_four_hours_is_warned_a_quarter_hour_before(day: tuple[Scenario, int, BacktestResult]) -> None:
    _sc, _start, result = day
    s = next(s for s in result.incidents if s.record["type"] == "continuous_driving")
    warning = next(e for e in s.alerts if e.rule == "vehicle.continuous_driving")
    assert warning.severity == "warning"
    assert 14 * 60 <= (s.record["hazard_crossed_at"] - warning.t) / 1000 <= 15 * 60


def test_a_tanker_at_the_leaking_tunnel_is_one_critical_alert_naming_both(
        day: tuple[Scenario, int, BacktestResult]) -> None:
    _sc, _start, result = day
    leak = next(s for s in result.incidents if s.record["type"] == "gas_pipe_leak")
    entries = sorted((s for s in result.incidents if s.record["type"] == "banned_entry"),
                     key=lambda s: s.record["params"]["target"])
    both = [e for e in entries[0].alerts if e.rule == "vehicle.tanker_at_tunnel_hazard"]
    assert both and both[0].severity == "critical"
    assert leak.record["devices"][0] in both[0].message and "century avenue utility tunnel" in both[0].message
    # only at the tunnel whose gas rises: the other tanker's entry (downtown) is not one
    assert not [e for e in entries[1].alerts if e.rule == "vehicle.tanker_at_tunnel_hazard"]


def test_a_coverage_gap_is_uploaded_later_with_each_report_s_own_time(
        day: tuple[Scenario, int, BacktestResult]) -> None:
    sc, start, _result = day
    gap = next(r for r in sc.ground_truth(SEED, start) if r["type"] == "coverage_gap")
    dev = gap["devices"][0]
    arrived: dict[int, int] = {}  # report time -> the tick it arrived with
    for tick in sc.play_offline(SEED, start):
        if tick.t_ms > gap["end"] + 60_000:
            break
        for b in tick.batches:
            for s in b.samples:
                if s.dev == dev:
                    arrived[s.t] = tick.t_ms
    grid = range(start, tick.t_ms, REPORT_MS)  # up to the tick that ended the loop
    assert sorted(arrived) == list(grid)  # not one report lost
    held = [t for t in grid if gap["start"] <= t < gap["end"]]
    assert held and all(arrived[t] >= gap["end"] for t in held)  # sent after the gap, each with its own time


def test_a_ferry_reports_knots_and_the_edge_reads_kilometres_an_hour(day: tuple[Scenario, int, BacktestResult]) -> None:
    sc, start, _result = day
    ferry = sc.world(SEED, start).devices["vf-0002"]
    t = next(t for t in range(start, start + 7_200_000, REPORT_MS) if float(ferry.engineering(t)["speed_kmh"]) > 0)
    values = ferry.engineering(t)
    body = orjson.loads(station_payload(ferry.profile, t, values))
    assert body["ts"] == t and body["sog"] == pytest.approx(float(values["speed_kmh"]) / 1.852, abs=1e-5)
    fields, problems = map_payload(ferry.profile, body)
    assert problems == [] and fields["speed_kmh"] == pytest.approx(values["speed_kmh"], abs=1e-4)
    upload = orjson.loads(backlog_payload(ferry.profile, [(t, values), (t + REPORT_MS, values)]))
    assert [item["ts"] for item in upload] == [t, t + REPORT_MS]
