"""Urban flooding, drainage and radiation in the simulator: rain felt by the whole district,
what it does to gauges, streets, sumps, outfalls and dose rates; a pump trip's cascade; an
operator's pump command; and the ground truth found in the simulated data."""

from __future__ import annotations

from typing import Any

import pytest

from simulators.scenario import Scenario, load_scenario
from simulators.world import World
from tests.dates import pinned_start

SEED = 1


@pytest.fixture(scope="module")
def storm() -> tuple[Scenario, int]:
    return load_scenario("pudong-rainstorm-day"), pinned_start("pudong-rainstorm-day")


def _values(world: World, dev: str, t: int) -> dict[str, Any]:
    d = world.devices[dev]
    return d.model.values(t, [i for i in d.incidents if i.start_ms <= t])


def _truth(sc: Scenario, start: int) -> list[dict[str, Any]]:
    return sc.ground_truth(SEED, start)


def test_the_storm_reaches_every_device_of_the_district(storm: tuple[Scenario, int]) -> None:
    sc, start = storm
    world = sc.build_world(SEED, start)
    storm_rec = next(r for r in _truth(sc, start) if r["type"] == "rainstorm")
    s, e = int(storm_rec["start"]), int(storm_rec["end"])
    # scheduled on the gauges, felt by the streets, sumps, outfalls and radiation stations too
    felt = {d.id for d in world.devices.values() if any(i.type == "rainstorm" for i in d.incidents)}
    assert felt == set(world.devices)
    before = float(_values(world, "rg-0101", s)["rain_total_mm"])
    after = float(_values(world, "rg-0101", e)["rain_total_mm"])
    assert 30 < after - before < 400
    # the bucket tips in 0.1 mm
    assert round(after * 10) == pytest.approx(after * 10, abs=1e-6)


def test_rain_washes_radon_down_by_tens_of_percent_and_it_decays_in_hours(storm: tuple[Scenario, int]) -> None:
    sc, start = storm
    world = sc.build_world(SEED, start)
    storm_rec = next(r for r in _truth(sc, start) if r["type"] == "rainstorm")
    s, e = int(storm_rec["start"]), int(storm_rec["end"])
    step = 300_000
    dose = [float(_values(world, "gm-0102", t)["dose_ngyh"]) for t in range(s - 3_600_000, e + 4 * 3_600_000, step)]
    background = 96.0
    assert max(dose) / background - 1 > 0.2          # tens of percent ...
    assert max(dose) < 220                            # ... never the alarm level
    assert abs(sum(dose[-6:]) / 6 / background - 1) < 0.05  # back to background 3-4 h after the rain


def test_a_pump_trip_in_the_storm_floods_the_streets_behind_the_station(storm: tuple[Scenario, int]) -> None:
    sc, start = storm
    truth = _truth(sc, start)
    trip = next(r for r in truth if r["type"] == "pump_trip")
    station = str(trip["device"])
    streets = [d for d, lab in ((r["device"], r["labels"]) for r in truth if r["type"] == "waterlogging")
               if lab.get("pump_station") == station]
    assert trip["hazard_crossed_at"] is not None and streets
    world = sc.build_world(SEED, start)
    untripped = sc.build_world(SEED, start)
    for dev in untripped.devices.values():
        dev.incidents = [i for i in dev.incidents if i.type != "pump_trip"]
    t = int(trip["hazard_crossed_at"]) + 1_800_000
    sump = float(_values(world, station, t)["sump_level_m"])
    assert sump > 3.5 > float(_values(untripped, station, t)["sump_level_m"])
    assert _values(world, station, t)["pump_faults"] != 0
    for street in streets:
        assert float(_values(world, str(street), t)["depth_cm"]) > float(
            _values(untripped, str(street), t)["depth_cm"]) + 5


def test_an_operator_starting_the_standby_pump_draws_the_sump_down(storm: tuple[Scenario, int]) -> None:
    sc, start = storm
    world = sc.build_world(SEED, start)
    station = world.devices["ps-0101"]
    t0 = start + 3_600_000
    level0 = float(_values(world, "ps-0101", t0)["sump_level_m"])
    assert level0 > 0.9
    station.ctx.commands = {"pump3_run": True}
    soon = _values(world, "ps-0101", t0 + 60_000)
    assert soon["pump3_run"] is True and float(soon["pump3_current_a"]) > 50
    # drawn down to the pumps' dry-running cut-out, where it holds
    later = [float(_values(world, "ps-0101", t0 + m * 60_000)["sump_level_m"]) for m in range(20, 40)]
    assert max(later) < 0.65


def test_flooding_is_found_in_the_simulated_data_and_light_rain_asks_for_nothing(storm: tuple[Scenario, int]) -> None:
    sc, start = storm
    truth = _truth(sc, start)
    world = sc.build_world(SEED, start)
    flooded = [r for r in truth if r["type"] in ("waterlogging", "sewer_overflow")]
    assert flooded
    for rec in flooded:
        metric, crossed = str(rec["metric"]), int(rec["hazard_crossed_at"])
        assert float(_values(world, str(rec["device"]), crossed)[metric]) >= float(rec["hazard_threshold"])
        assert float(_values(world, str(rec["device"]), crossed - 60_000)[metric]) < float(rec["hazard_threshold"])
        # warned from the rain's start: the storm is their precursor
        assert int(rec["warn_from"]) < int(rec["start"]) < crossed
    rain = [r for r in truth if r["type"] == "rain"]
    assert rain and all(r.get("benign") for r in rain)
    assert not any(r.get("benign") for r in truth if r["type"] != "rain")


def test_the_typhoon_day_brings_every_incident_the_city_plan_names() -> None:
    sc = load_scenario("typhoon-day")
    start = pinned_start("typhoon-day")
    truth = sc.ground_truth(SEED, start)
    kinds = {r["type"] for r in truth if r["kind"] == "incident"}
    assert {"storm_surge", "storm_waves", "high_water", "rainstorm", "pump_trip", "red_tide", "source_transit",
            "waterlogging", "sewer_overflow", "rain"} <= kinds
    assert len([r for r in truth if r["type"] == "waterlogging"]) >= 2
    # the river's level rises with the rain an hour after it fell (its catchment runs off)
    world = sc.build_world(SEED, start)
    storm = next(r for r in truth if r["type"] == "rainstorm")
    station = next(d for d in world.devices.values() if d.profile.measurement == "river"
                   and not any(i.type == "high_water" for i in d.incidents if not i.origin))
    dry_world = sc.build_world(SEED, start)
    dry = dry_world.devices[station.id]
    dry.incidents = [i for i in dry.incidents if i.type not in ("rainstorm", "rain")]
    t = int(storm["end"])
    wet_level = float(station.model.values(t, [i for i in station.incidents if i.start_ms <= t])["level_m"])
    dry_level = float(dry.model.values(t, [i for i in dry.incidents if i.start_ms <= t])["level_m"])
    assert wet_level - dry_level > 0.05
    # half an hour into the rain, none of it has reached the river yet
    early = int(storm["start"]) + 1_800_000
    assert float(station.model.values(early, [i for i in station.incidents if i.start_ms <= early])["level_m"]) == \
        pytest.approx(float(dry.model.values(early, [i for i in dry.incidents if i.start_ms <= early])["level_m"]))
