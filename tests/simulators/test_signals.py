"""Signals behave like the field: counters integrate what the meters show, lamps follow
the sun over Shanghai, elevators stay in their shafts, and scenario time is aligned."""

from __future__ import annotations

import datetime as dt

from simulators import daylight
from simulators.scenario import Scenario, load_scenario
from simulators.world import SimDevice, World
from tests.simulators.conftest import FIXED_NOW_MS
from urbansense.schema import FieldValue


def _world() -> tuple[Scenario, int, World]:
    s = load_scenario("quiet-day")
    start = s.default_start_ms(FIXED_NOW_MS)
    return s, start, s.world(1, start)


def values(dev: SimDevice, t: int) -> dict[str, FieldValue]:
    v = dev.reading(t).values
    assert v is not None
    return v


def test_default_start_is_aligned_to_start_local_and_ends_before_now() -> None:
    s = load_scenario("pudong-incidents")
    start = s.default_start_ms(FIXED_NOW_MS)
    assert start + s.duration_s * 1000 <= FIXED_NOW_MS
    assert daylight.local_hour(start) == 14.0
    assert FIXED_NOW_MS - (start + s.duration_s * 1000) < daylight.DAY_MS


def test_totaliser_integrates_the_flow_it_reports() -> None:
    _s, start, world = _world()
    meter = world.devices["wp-0101"]
    t0, t1 = start + 6 * 3_600_000, start + 7 * 3_600_000
    flows = [float(values(meter, t)["flow_m3h"]) for t in range(t0, t1, 60_000)]
    v0 = values(meter, t0)["volume_total_m3"]
    v1 = values(meter, t1)["volume_total_m3"]
    assert abs((int(v1) - int(v0)) - sum(flows) / len(flows)) < 0.03 * sum(flows) / len(flows) + 1


def test_lamps_follow_civil_dusk_and_dawn_and_count_burning_hours() -> None:
    _s, start, world = _world()
    lamp = world.devices["lc-0101"]
    dawn, dusk = daylight.dawn_dusk_ms(daylight.local_day(start + 12 * 3_600_000))
    assert 5.5 < daylight.local_hour(dawn) < 7.0 and 16.5 < daylight.local_hour(dusk) < 18.0  # late November
    for t, on in ((dawn - 60_000, True), (dawn + 60_000, False), (dusk - 60_000, False), (dusk + 60_000, True)):
        assert values(lamp, t)["lamp_on"] is on, daylight.local_hour(t)
    night = lamp.reading(start + 2 * 3_600_000).values  # 02:00: dimmed
    evening = lamp.reading(dusk + 3_600_000).values
    assert night is not None and evening is not None
    assert night["dim_level_pct"] == 60 and evening["dim_level_pct"] == 100
    assert float(night["power_w"]) < 0.7 * float(evening["power_w"])
    h_dawn = values(lamp, dawn)["burning_hours"]
    h_dusk = values(lamp, dusk)["burning_hours"]
    h_next = values(lamp, dusk + 6 * 3_600_000)["burning_hours"]
    assert h_dusk == h_dawn  # no burning in daylight
    assert int(h_next) - int(h_dusk) in (5, 6, 7)


def test_elevators_stay_in_their_shafts_and_move_only_with_doors_shut() -> None:
    _s, start, world = _world()
    for dev_id in ("el-0101", "el-0104"):
        lift = world.devices[dev_id]
        floors = int(lift.spec.labels["floors"])
        moving = 0
        for t in range(start + 7 * 3_600_000, start + 9 * 3_600_000, 5_000):
            v = lift.reading(t).values
            assert v is not None
            assert 1 <= int(v["floor"]) <= floors
            if v["running"]:
                moving += 1
                assert not v["door_open"] and v["direction"] in ("up", "down") and float(v["speed_ms"]) > 0
            else:
                assert v["direction"] == "idle" and v["speed_ms"] == 0
            assert v["fault_code"] == 0 and not v["trapped_passenger"]
        assert moving > 50  # morning rush


def test_daylight_in_summer_and_winter() -> None:
    june = int(dt.datetime(2026, 6, 21, 4, tzinfo=dt.UTC).timestamp() * 1000)  # 12:00 Shanghai
    dec = int(dt.datetime(2026, 12, 21, 4, tzinfo=dt.UTC).timestamp() * 1000)
    assert not daylight.is_dark(june) and not daylight.is_dark(dec)
    assert daylight.is_dark(june + 12 * 3_600_000) and daylight.is_dark(dec + 12 * 3_600_000)
    d0, d1 = daylight.dawn_dusk_ms(daylight.local_day(june))
    e0, e1 = daylight.dawn_dusk_ms(daylight.local_day(dec))
    assert (d1 - d0) - (e1 - e0) > 3 * 3_600_000  # long summer days
