"""hazmat-day: the city plan's last three families in one day (chemical sites, the
utility tunnel, the fleet) with the leak's plume carried on the wind to the air
stations of Gaoqiao town. Every incident detected; the plume's arrival at each station
warned at least 10 minutes ahead, as are the runaway and the overfill; the simulator's
plume really reaches the stations downwind and none upwind."""

from __future__ import annotations

import pytest

from application.backtest import BacktestResult, run_scenario
from simulators.scenario import load_scenario
from tests.dates import pinned_start
from urbansense.dispersion import downwind

SEED = 2


@pytest.fixture(scope="module")
def day() -> BacktestResult:
    return run_scenario(load_scenario("hazmat-day").path, seed=SEED, start_ms=pinned_start("hazmat-day"))


def test_every_incident_is_detected(day: BacktestResult) -> None:
    assert day.missed == []
    kinds = {s.record["type"] for s in day.incidents}
    assert {"flammable_leak", "plume_arrival", "runaway_reaction", "tank_overfill", "gas_pipe_leak",
            "banned_entry", "speeding", "continuous_driving"} <= kinds


def test_the_plume_the_runaway_and_the_overfill_are_warned_ten_minutes_ahead(day: BacktestResult) -> None:
    for s in day.incidents:
        if s.record["type"] == "plume_arrival":
            assert s.first_alert is not None and s.first_alert.rule == "air.plume_approaching"
            assert s.first_alert.forecast is not None  # the warning says when
            assert s.lead_time_s is not None and s.lead_time_s >= 600, (s.record["devices"], s.lead_time_s)
        if s.record["type"] in ("runaway_reaction", "tank_overfill"):
            assert s.lead_time_s is not None and s.lead_time_s > 0, s.record["type"]


def test_the_plume_reaches_the_stations_downwind_and_not_upwind(day: BacktestResult) -> None:
    sc = load_scenario("hazmat-day")
    start = pinned_start("hazmat-day")
    truth = sc.ground_truth(SEED, start)
    reached = {r["devices"][0] for r in truth if r["type"] == "plume_arrival"}
    assert reached
    world = sc.world(SEED, start)
    wind = next(r for r in truth if r["type"] == "wind_regime")["params"]["from_deg"]
    farm = world.devices["cf-0101"].ctx.location
    assert farm is not None
    for dev in ("aq-0201", "aq-0202", "aq-0203", "aq-0204", "aq-0205", "aq-0206"):
        where = world.devices[dev].ctx.location
        assert where is not None
        x, _y = downwind(farm, where, wind)
        if dev in reached:
            assert x > 0, dev  # only downwind
    assert "aq-0206" not in reached  # the upwind station in the free trade zone
