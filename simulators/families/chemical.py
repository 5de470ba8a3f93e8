"""Hazardous-chemical storage sites: tanks and the gas detectors around them.

A tank (`StorageTank`) holds its level, liquid temperature and vapour-space pressure
near its own baseline (the pressure follows the liquid's temperature, `per_degc` kPa a
degree, as a vapour pressure does), and:

- `tank_overfill`: the level climbs at `fill_pct_per_h` (a transfer not stopped) to 100 %;
- `runaway_reaction`: the temperature accelerates towards `peak_c` over `rise_s`
  (e^(3x) - 1 scaled to 1: a reaction heating itself faster and faster), the pressure
  with it;
- `pressure_relief`: the pressure climbs at `rise_kpa_per_h` (a blocked vent) until the
  relief valve lifts at its set pressure (label `relief_kpa`, 100 kPa where none): the
  valve then reads open and the pressure falls back to 85 % of the set pressure while it
  vents, lifting again each time it returns to the set pressure.

A detector (`LeakDetector`, flammable in %LEL or toxic in ppm) reads its baseline with
noise, and during a leak over its site's detectors (a group incident) the gas from the
leak's source: the source is the group's member `floor(source x members)`; a detector d
metres from it sees the leak `d / SPREAD_MPS` seconds later, at `exp(-d / DECAY_M)` of
the source's concentration, which rises over `rise_s` to its peak (`peak_lel_pct`, or
`peak_oel` times the detector's `oel_ppm`). Its alarm level follows its own reading
(GB/T 50493-2019: first level at 25 %LEL or 100 % of its limit, second at twice that).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from simulators.daylight import local_hour
from simulators.families.base import DeviceContext, FamilyModel, Values
from simulators.incidents import ActiveIncident

#: How fast a leak's gas crosses a site (m/s: a light wind's drift).
SPREAD_MPS = 0.5
#: Over how many metres its concentration falls to 1/e.
DECAY_M = 60.0
RELIEF_RESEAT = 0.85
EARTH_M_PER_DEG = 111_320.0


def distance_m(a: tuple[float, float] | None, b: tuple[float, float] | None) -> float:
    """Metres between two (lat, lon) points (equirectangular: good to metres over a site);
    0 where either has no location."""
    if a is None or b is None:
        return 0.0
    dy = (a[0] - b[0]) * EARTH_M_PER_DEG
    dx = (a[1] - b[1]) * EARTH_M_PER_DEG * math.cos(math.radians((a[0] + b[0]) / 2))
    return math.hypot(dx, dy)


def _accelerating(inc: ActiveIncident, t_ms: int) -> float:
    """0..1 over `rise_s`, faster and faster."""
    x = min(1.0, max(0.0, inc.elapsed_s(t_ms) / max(1.0, inc.p("rise_s"))))
    return math.expm1(3.0 * x) / math.expm1(3.0)


class StorageTank(FamilyModel):
    def __init__(self, ctx: DeviceContext) -> None:
        super().__init__(ctx)
        self.level = ctx.sim("level_pct", "nominal", 55.0) * ctx.variation("level", 0.6, 1.2)
        self.temp = ctx.sim("temperature_c", "nominal", 20.0) + ctx.variation("temp", -2.0, 2.0)
        self.pressure = ctx.sim("pressure_kpa", "nominal", 15.0) * ctx.variation("pressure", 0.8, 1.2)
        self.per_degc = ctx.sim("pressure_kpa", "per_degc", 1.2)
        label = ctx.labels.get("relief_kpa")
        self.relief_kpa = float(label) if label else 100.0

    def values(self, t_ms: int, incidents: Sequence[ActiveIncident]) -> Values:
        hour = local_hour(t_ms)
        level = self.level
        temp = self.temp + 2.0 * math.sin(2 * math.pi * (hour - 9.0) / 24.0)  # the day warms the shell
        rise = 0.0
        for inc in incidents:
            if not inc.active(t_ms):
                continue
            if inc.type == "tank_overfill":
                level += inc.p("fill_pct_per_h") * inc.elapsed_s(t_ms) / 3600.0
            elif inc.type == "runaway_reaction":
                temp += (inc.p("peak_c") - self.temp) * _accelerating(inc, t_ms)
            elif inc.type == "pressure_relief":
                rise += inc.p("rise_kpa_per_h") * inc.elapsed_s(t_ms) / 3600.0
        pressure = self.pressure + self.per_degc * (temp - self.temp)
        relief = False
        if pressure + rise >= self.relief_kpa:
            # past the set pressure the valve lifts; venting it falls back to 85 % and climbs again
            span = self.relief_kpa * (1.0 - RELIEF_RESEAT)
            over = pressure + rise - self.relief_kpa
            pressure = self.relief_kpa - span + (over % span) if rise > 0 else self.relief_kpa
            relief = True
        else:
            pressure += rise
        return {"level_pct": round(min(100.0, max(0.0, level + self.field_noise("level_pct", t_ms))), 2),
                "temperature_c": round(temp + self.field_noise("temperature_c", t_ms), 1),
                "pressure_kpa": round(pressure + self.field_noise("pressure_kpa", t_ms), 1),
                "relief_open": relief}


class LeakDetector(FamilyModel):
    """A flammable (lel_pct) or toxic (toxic_ppm) gas detector on a chemical site."""

    def __init__(self, ctx: DeviceContext) -> None:
        super().__init__(ctx)
        self.metric = "lel_pct" if any(f.name == "lel_pct" for f in ctx.profile.fields) else "toxic_ppm"
        #: the leaks it sees (a flammable leak's vapour drifts over the whole district, whose
        #: toxic detectors do not read it)
        self.leak = "flammable_leak" if self.metric == "lel_pct" else "toxic_leak"
        self.baseline = ctx.sim(self.metric, "nominal", 0.3)
        label = ctx.labels.get("oel_ppm")
        self.oel = float(label) if label else 28.0
        #: the reading at the first alarm level: 25 %LEL, or 100 % of the gas's limit
        self.first_alarm = 25.0 if self.metric == "lel_pct" else self.oel

    def concentration(self, t_ms: int, incidents: Sequence[ActiveIncident]) -> float:
        """The leak's concentration here (without noise); at the source itself, the
        source's own (the air stations' plume model reads it as the release)."""
        total = 0.0
        for inc in incidents:
            if inc.type != self.leak or not inc.group or not inc.active(t_ms):
                continue
            src = inc.group[min(len(inc.group) - 1, int(inc.p("source") * len(inc.group)))]
            peer = self.ctx.peers.get(src)
            d = distance_m(self.ctx.location, peer.ctx.location if peer is not None else None)
            arrived = inc.elapsed_s(t_ms) - d / SPREAD_MPS
            if arrived <= 0:
                continue
            peak = inc.p("peak_lel_pct") if inc.type == "flammable_leak" else inc.p("peak_oel") * self.oel
            total += peak * math.exp(-d / DECAY_M) * min(1.0, arrived / max(1.0, inc.p("rise_s")))
        return total

    def values(self, t_ms: int, incidents: Sequence[ActiveIncident]) -> Values:
        reading = max(0.0, self.baseline + self.concentration(t_ms, incidents) + self.field_noise(self.metric, t_ms))
        level = 2 if reading >= 2 * self.first_alarm else 1 if reading >= self.first_alarm else 0
        digits = 1 if self.metric == "lel_pct" else 2
        return {self.metric: round(reading, digits), "alarm_level": level, "sensor_fault": False}
