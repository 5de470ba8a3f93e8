"""The rivers-and-lakes family in the simulators: the tide of the river stations (a
`harmonics` hint of simulators/families/declarative.py), the analysers' standard checks,
the ground truth of an incident judged against each station's own warning level, and
composed days that leave the family out."""

from __future__ import annotations

import numpy as np

from simulators.families import DeviceContext, model_for
from simulators.families.declarative import Harmonics
from simulators.scenario import load_scenario
from urbansense import registry
from urbansense.config import load_profile

T0 = 1_764_190_800_000  # 2025-11-27 05:00 Shanghai
HOUR = 3_600_000
RIVER = registry.FAMILIES_DIR / "river" / "profiles" / "river-station.yaml"


def _levels(dev: str, hours: float, step_min: int = 10) -> np.ndarray:
    model = model_for(DeviceContext(dev, 1, load_profile(RIVER), epoch_ms=T0))
    return np.array([float(model.values(T0 + k * step_min * 60_000, [])["level_m"])
                     for k in range(int(hours * 60 / step_min))])


def test_two_tides_a_day_with_springs_and_neaps_14_8_days_apart() -> None:
    level = _levels("rv-1", 30 * 24, step_min=15)
    days = level.reshape(30, -1)
    ranges = days.max(axis=1) - days.min(axis=1)
    # semi-diurnal: about two high waters a day (a local maximum every ~12.4 h)
    one = days[10]
    highs = [i for i in range(1, len(one) - 1) if one[i] > one[i - 1] and one[i] >= one[i + 1]
             and one[i] > one.mean() + 0.3]
    assert len(highs) in (1, 2, 3)
    # the daily range swings between springs and neaps, M2 + S2 ~ 2.9 m against M2 - S2 ~ 1.3 m
    assert ranges.max() > 1.6 * ranges.min()
    spring_days = np.flatnonzero(ranges > ranges.min() + 0.8 * (ranges.max() - ranges.min()))
    # the springs recur after half a lunar month (14.77 days): two groups of spring days
    groups = np.split(spring_days, np.flatnonzero(np.diff(spring_days) > 3) + 1)
    assert len(groups) == 2, spring_days
    gap = float(np.mean(groups[1]) - np.mean(groups[0]))
    assert 13.5 <= gap <= 16.0, gap


def test_upstream_stations_see_the_tide_later_and_smaller() -> None:
    h = Harmonics.from_hint({"constituents": [{"period_h": 12.42, "amplitude": 1.0}]}, lag_h=1.5, scale=0.8)
    near = Harmonics.from_hint({"constituents": [{"period_h": 12.42, "amplitude": 1.0}]})
    # high water at the mouth at t = 0; upstream 1.5 h later, 0.8 of it
    assert near.at(0) == 1.0
    assert abs(h.at(int(1.5 * HOUR)) - 0.8) < 1e-9
    # the shipped stations differ: each draws its own lag and size
    a, b = _levels("rv-0101", 13), _levels("rv-0102", 13)
    assert int(np.argmax(a)) != int(np.argmax(b))


def test_high_water_is_judged_against_the_stations_own_warning_level() -> None:
    sc = load_scenario("huangpu-river-day")
    world = sc.world(1, T0)
    truth = {r["type"]: r for r in sc.ground_truth(seed=1, start_ms=T0)}
    high = truth["high_water"]
    station = world.devices[high["device"]]
    own = float(station.spec.labels["warning_level_m"])
    assert high["hazard_threshold"] == own != 4.5  # the station's label, not the family's default
    crossed = high["hazard_crossed_at"]
    before, after = station.reading(crossed - 60_000).values, station.reading(crossed).values
    assert before is not None and after is not None
    assert float(before["level_m"]) < own <= float(after["level_m"])
    # the discharge is judged against the standard's class V limit
    assert truth["sewage_discharge"]["hazard_threshold"] == 2.0


def test_composed_days_leave_out_a_family_that_says_so() -> None:
    from simulators.compose import district_gateways

    assert registry.families()["river"].composed_days is False
    names = [p.stem for p in district_gateways("pudong")]
    assert "pd-gw-river" not in names and "pd-gw-water" in names


def test_a_drifting_analyser_fails_its_standard_check_and_polluted_water_does_not() -> None:
    sc = load_scenario("huangpu-river-day")
    world = sc.world(1, T0)
    drift = next(f for d in world.devices.values() for f in d.faults if f.type == "drift" and f.metric == "nh3n_mgl")
    dev = next(d for d in world.devices.values() if drift in d.faults)
    # the check taken in the first whole hour of the drift reads the 0.5 mg/L standard off by
    # rate x elapsed / 0.5, in %; before the drift, within its noise (1.5 %)
    first = (drift.start_ms // HOUR + 1) * HOUR
    later = first + 2 * HOUR
    assert later < drift.end_ms
    expected = 100 * drift.p("rate_per_h") * (later - drift.start_ms) / HOUR / 0.5
    got = float(dev.engineering(later + 600_000)["nh3n_check_pct"])  # held until the next check
    assert abs(got - expected) < 6.0 and abs(got) > 10, (got, expected)
    assert abs(float(dev.engineering(drift.start_ms - HOUR)["nh3n_check_pct"])) < 6.0
    # the station with the discharge: its ammonia climbs, its checks stay clean
    discharge = next(r for r in sc.ground_truth(1, T0) if r["type"] == "sewage_discharge")
    polluted = world.devices[discharge["device"]]
    t = discharge["hazard_crossed_at"] + HOUR
    values = polluted.engineering(t)
    assert float(values["nh3n_mgl"]) > 2.0
    if not any(f.metric == "nh3n_mgl" and f.active(t // HOUR * HOUR) for f in polluted.faults):
        assert abs(float(values["nh3n_check_pct"])) < 6.0
