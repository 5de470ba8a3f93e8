"""The compound-flood rule: a station's tide fitted (UTide) from its own record, the surge
as observed minus predicted, the rain at the nearest gauge, and a warning with the time
the warning level will be reached; the surge watched on its own."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rules.engine import RulesEngine
from rules.inventory import InventoryDevice
from rules.kinds import TideForecastEval
from rules.warmstart import history_start
from urbansense.influx import InfluxClient
from urbansense.schema import AlertEvent

from .helpers import T0, batch, rule

#: M2, S2, K1, O1: (period h, amplitude m, phase rad)
TIDE = ((12.4206012, 1.05, 0.3), (12.0, 0.42, 1.1), (23.9344697, 0.24, 2.0), (25.8193417, 0.16, 0.7))
DAY_MS = 86_400_000


def tide(t_ms: float) -> float:
    h = t_ms / 3_600_000
    return 2.3 + sum(a * math.cos(2 * math.pi * h / p - ph) for p, a, ph in TIDE)


def station(dev: str, lat: float, lon: float, **labels: str) -> InventoryDevice:
    return InventoryDevice("pudong", "gw-1", dev, "river", lat, lon, labels, frozenset({"level_m"}))


INVENTORY = [
    station("rv-1", 31.24, 121.49, warning_level_m="4.55"),
    InventoryDevice("pudong", "gw-2", "wl-1", "flood", 31.23, 121.50, {"tide_station": "rv-1", "place": "Bund dip"},
                    frozenset({"depth_cm"})),
    InventoryDevice("pudong", "gw-2", "rg-1", "flood", 31.25, 121.49, {}, frozenset({"rain_total_mm"})),
]
COMPOUND = dict(id="river.compound_flood", kind="tide_forecast", measurement="river", metric="level_m",
                offset_from="warning_level_m", limit=0, horizon_s=14400, affects_label="tide_station",
                message="{device}: {peak:.2f} m about {peak_at} (tide {tide:.2f} + surge {surge:+.2f} + rain "
                        "{rain:+.2f}) in {eta_min:.0f} min; {affected}")


def engine(**extra: object) -> RulesEngine:
    rules = [rule(**{**COMPOUND, **extra}),
             rule(id="flood.rain_1h", kind="accumulation", measurement="flood", metric="rain_total_mm",
                  window_s=3600, buckets=30, threshold=20, clear=15, publish=False)]
    eng = RulesEngine(rules, INVENTORY)
    hours = [int(T0 - 16 * DAY_MS + h * 3_600_000 + 1_800_000) for h in range(16 * 24)]
    assert eng.seed_history("pudong", "rv-1", "river", "level_m", hours, [tide(t) for t in hours])
    return eng


def play(eng: RulesEngine, minutes: range, surge: float | None = None, rain_mm_per_min: float = 0.0,
         surge_from: int = 0) -> list[AlertEvent]:
    out: list[AlertEvent] = []
    rain = 1000.0
    for m in minutes:
        t = T0 + m * 60_000
        extra = (surge or 0.0) * min(1.0, max(0.0, (m - surge_from) / 60)) if surge else 0.0
        rain += rain_mm_per_min
        out += eng.ingest([batch(t, "river", {"rv-1": {"level_m": tide(t) + extra}}),
                           batch(t, "flood", {"rg-1": {"rain_total_mm": round(rain, 1)}}, gw="gw-2")])
    return out


def _first_high_water_over(limit: float, surge: float) -> int:
    """Minutes from T0 to the first time tide + surge passes `limit`."""
    return next(m for m in range(0, 48 * 60) if tide(T0 + m * 60_000) + surge >= limit)


def test_the_fit_predicts_the_tide_and_a_plain_tide_raises_nothing() -> None:
    eng = engine()
    events = play(eng, range(0, 24 * 60, 5))
    assert events == []
    ev = eng.evaluators["river.compound_flood"]
    assert isinstance(ev, TideForecastEval)
    (dev,) = ev.tides
    prediction = ev.tides[dev]
    t = np.arange(prediction.fitted_at, prediction.fitted_at + 6 * 3_600_000, 600_000, dtype=np.float64)
    assert np.max(np.abs(prediction.at(t) - np.array([tide(x) for x in t]))) < 0.02
    assert prediction.amplitudes["M2"] == pytest.approx(1.05, abs=0.02)


def test_a_surge_warns_hours_before_the_high_water_reaches_the_warning_level() -> None:
    eng = engine()
    surge = 1.0
    events = play(eng, range(0, 16 * 60), surge=surge)
    crossing = _first_high_water_over(4.55, surge)
    warned = [e for e in events if e.state == "firing"]
    assert warned and warned[0].rule == "river.compound_flood"
    lead_min = crossing - (warned[0].t - T0) / 60_000
    assert lead_min >= 30
    assert warned[0].forecast is not None and warned[0].forecast.eta_s > 0
    assert "Bund dip (wl-1)" in warned[0].message and "surge +1.0" in warned[0].message


def test_rain_at_the_nearest_gauge_adds_its_rise_to_the_high_water() -> None:
    # a surge a little short of the warning level on its own: the rain makes up the rest
    surge = 4.55 - max(tide(T0 + m * 60_000) for m in range(0, 16 * 60)) - 0.05
    dry = play(engine(rain_from="flood.rain_1h", rain_m_per_mm=0.004), range(0, 16 * 60), surge=surge)
    wet = play(engine(rain_from="flood.rain_1h", rain_m_per_mm=0.004), range(0, 16 * 60), surge=surge,
               rain_mm_per_min=0.5)
    assert [e for e in dry if e.state == "firing"] == []
    firing = [e for e in wet if e.state == "firing"]
    assert firing and "rain +0.1" in firing[0].message


def test_without_weeks_of_record_the_rule_stays_silent() -> None:
    eng = RulesEngine([rule(**COMPOUND)], INVENTORY)
    assert eng.history_needs() == [("river", "level_m", 16 * 86400.0)]
    assert play(eng, range(0, 16 * 60), surge=1.5) == []


def test_the_surge_itself_can_be_watched() -> None:
    eng = engine(id="river.surge", watch="surge", limit=0.8, clear_margin=0.3, offset_from=None,
                 message="surge {value:+.2f}")
    events = play(eng, range(0, 6 * 60), surge=1.0, surge_from=60)
    firing = [e for e in events if e.state == "firing"]
    assert len(firing) == 1 and firing[0].value is not None and 0.8 <= firing[0].value <= 1.0
    assert 60 < (firing[0].t - T0) / 60_000 < 180


@pytest.mark.integration
def test_a_restarted_engine_reads_the_station_record_back_from_influxdb(influx_db: InfluxClient) -> None:
    """The live path: 16 days of readings every ten minutes in a real InfluxDB, read back
    as hourly means by history_start; the fit is as good as from the simulation's record."""
    lines = [f"river,district=pudong,gateway=gw-1,device=rv-1 level_m={tide(t):.4f} {t}"
             for t in range(T0 - 16 * DAY_MS, T0, 600_000)]
    for i in range(0, len(lines), 5000):
        influx_db.write("\n".join(lines[i:i + 5000]))
    eng = RulesEngine([rule(**COMPOUND)], INVENTORY)
    assert history_start(eng, influx_db, T0) == 1
    events = play(eng, range(0, 16 * 60), surge=1.0)
    firing = [e for e in events if e.state == "firing"]
    assert firing and firing[0].rule == "river.compound_flood"
    assert _first_high_water_over(4.55, 1.0) - (firing[0].t - T0) / 60_000 >= 30


def test_a_building_surge_is_carried_ahead_and_a_plain_tide_is_not() -> None:
    """surge_trend_s: a surge still rising is warned of earlier; the tide's own wobbles
    about its fit (a surge under surge_trend_min_m) are not extrapolated."""
    def first_warning(**extra: object) -> float:
        events = play(engine(**extra), range(0, 16 * 60), surge=1.0, surge_from=120)
        firing = [e for e in events if e.state == "firing"]
        assert firing
        return (firing[0].t - T0) / 60_000

    steady, trending = first_warning(), first_warning(surge_trend_s=7200)
    assert trending < steady
    assert play(engine(surge_trend_s=7200), range(0, 24 * 60, 5)) == []
