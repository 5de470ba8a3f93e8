"""Urban flooding and drainage: rain gauges, street low points, combined-sewer outfalls and
drainage pump stations under the district's rain.

Rain is weather (simulators/weather.py): scheduled on the district's rain gauges, felt
by every device of the district; each device sees it times its own factor.

What follows from it needs state (water stored in a sump, ponding on a street), so these
models integrate over event time (simulators/families/integrated.py).

- **rain gauge**: a tipping bucket's counter (0.1 mm a tip) and its intensity (mm/h).
- **pump station**: runoff of its catchment (a linear reservoir, 25 min) fills the sump;
  the PLC starts pumps 1-3 at rising levels and stops them all at the stop level; a
  `pump_trip` stops one for good (fault bit set, no current); an operator's write of
  `pumpN_run` (live mode) forces a pump on or off. The station reports sump level, each
  pump's run state and current, the fault word and the flow pumped.
- **low point** (a street's waterlogging sensor): its inlets take up to the point's
  capacity (mm/h of rain); the excess ponds, about 1 cm per hour for each mm/h over it,
  and drains when the rain eases. When the pump station it drains to (label
  `pump_station`) is above its high level the sewer backs up and the inlets take less:
  a pump trip in a storm floods the streets (the cascade).
- **outfall**: the overflow chamber's level rises with the catchment's runoff and with a
  backed-up pump station; past the weir crest (label `weir_m`) the sewer overflows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from simulators import noise
from simulators.families.base import DeviceContext, Values
from simulators.families.integrated import Integrated
from simulators.incidents import ActiveIncident

PUMPS = 3


class RainGauge(Integrated):
    def __init__(self, ctx: DeviceContext) -> None:
        super().__init__(ctx)
        self.total0 = ctx.sim("rain_total_mm", "initial", 0.0) + round(ctx.variation("total", 0, 3000), 1)

    def initial(self) -> list[float]:
        return [0.0]

    def step(self, state: list[float], t_ms: int, dt_s: float, incidents: Sequence[ActiveIncident]) -> None:
        state[0] += self.rain(t_ms, incidents) * dt_s / 3600.0

    def values(self, t_ms: int, incidents: Sequence[ActiveIncident]) -> Values:
        fallen = self.state_at(t_ms, incidents)[0]
        return {
            # the bucket tips every 0.1 mm: the counter moves in whole tips
            "rain_total_mm": math.floor((self.total0 + fallen) * 10 + 1e-9) / 10,
            "rain_rate_mmh": round(self.rain(t_ms, incidents), 1),
        }


class PumpStation(Integrated):
    """State: [catchment runoff (mm/h), sump level (m), pump 1..3 running (0/1)]."""

    def __init__(self, ctx: DeviceContext) -> None:
        super().__init__(ctx)
        self.capacity = ctx.sim("station_flow_m3s", "pump_m3s", 2.0) * ctx.variation("cap", 0.95, 1.05)
        #: m3/s of inflow per mm/h of runoff: the three pumps carry ~55 mm/h
        self.coef = PUMPS * self.capacity / ctx.variation("design", 50.0, 60.0)
        self.dry = ctx.sim("station_flow_m3s", "dry_m3s", 0.3) * ctx.variation("dry", 0.8, 1.2)
        self.area = ctx.sim("sump_level_m", "area_m2", 1500.0) * ctx.variation("area", 0.9, 1.1)
        self.stop = 1.0
        self.starts = (1.6, 2.2, 2.8)
        self.floor = 0.5
        self.top = 4.8
        self.rated_a = ctx.sim("pump1_current_a", "rated", 85.0)
        self._k = ctx.key("current")

    def initial(self) -> list[float]:
        return [0.0, 1.2, 0.0, 0.0, 0.0]

    def tripped(self, t_ms: int, incidents: Sequence[ActiveIncident]) -> set[int]:
        """The pumps (1-3) a trip has stopped by t."""
        out: set[int] = set()
        for inc in incidents:
            if inc.type == "pump_trip" and inc.origin in ("", self.ctx.id) and inc.active(t_ms):
                out.add(int(inc.params.get("pump", 1)))
        return out

    def step(self, state: list[float], t_ms: int, dt_s: float, incidents: Sequence[ActiveIncident]) -> None:
        runoff, level = state[0], state[1]
        runoff += (self.rain(t_ms, incidents) - runoff) * min(1.0, dt_s / 1500.0)
        out = self.tripped(t_ms, incidents)
        running = 0
        for k in range(PUMPS):
            on = state[2 + k] > 0.5
            if level >= self.starts[k]:
                on = True
            elif level <= self.stop:
                on = False
            forced = self.ctx.commands.get(f"pump{k + 1}_run")
            if forced is not None:
                on = bool(forced)
            if (k + 1) in out or level <= self.floor:
                on = False  # tripped, or dry-running protection
            state[2 + k] = 1.0 if on else 0.0
            running += on
        inflow = self.dry + self.coef * runoff
        level += (inflow - running * self.capacity) * dt_s / self.area
        state[0], state[1] = runoff, min(self.top, max(self.floor - 0.05, level))

    def values(self, t_ms: int, incidents: Sequence[ActiveIncident]) -> Values:
        state = self.state_at(t_ms, incidents)
        out = self.tripped(t_ms, incidents)
        v: Values = {"sump_level_m": round(state[1] + 0.005 * self.gauss(self._k, t_ms), 3)}
        flow = 0.0
        faults = 0
        for k in range(PUMPS):
            on = state[2 + k] > 0.5
            v[f"pump{k + 1}_run"] = on
            v[f"pump{k + 1}_current_a"] = round(self.rated_a * (1 + 0.01 * self.gauss(self._k + k, t_ms)), 1) \
                if on else 0.0
            flow += self.capacity if on else 0.0
            if (k + 1) in out:
                faults |= 1 << k
        v["pump_faults"] = faults
        v["station_flow_m3s"] = round(flow, 2)
        return v


class _Drained(Integrated):
    """A device downstream of a pump station (label `pump_station`): how far its sewer is
    backed up by a station above its high level (0: not at all, 1: a metre over)."""

    def backed_up(self, t_ms: int, incidents: Sequence[ActiveIncident]) -> float:
        station = self.ctx.peers.get(self.ctx.labels.get("pump_station", ""))
        if not isinstance(station, PumpStation):
            return 0.0
        level = station.state_at(t_ms, incidents)[1]
        high = float(station.ctx.labels.get("high_level_m", 3.5))
        return max(0.0, min(1.0, level - high))


class LowPoint(_Drained):
    """State: [local runoff (mm/h), ponding depth (cm)]."""

    def __init__(self, ctx: DeviceContext) -> None:
        super().__init__(ctx)
        self.capacity = ctx.sim("depth_cm", "capacity_mmh", 35.0) * ctx.variation("capacity", 0.85, 1.15)
        self.gain = ctx.sim("depth_cm", "gain", 1.0)
        self._k = ctx.key("depth")

    def initial(self) -> list[float]:
        return [0.0, 0.0]

    def step(self, state: list[float], t_ms: int, dt_s: float, incidents: Sequence[ActiveIncident]) -> None:
        runoff = state[0] + (self.rain(t_ms, incidents) - state[0]) * min(1.0, dt_s / 600.0)
        takes = self.capacity * (1.0 - 0.85 * self.backed_up(t_ms, incidents))
        excess = runoff - takes
        # ponding grows with the excess; drains (up to 30 cm/h) once the inlets keep up
        rate_cm_h = self.gain * excess if excess > 0 else -min(30.0, 0.6 * -excess + 5.0)
        state[0], state[1] = runoff, max(0.0, state[1] + rate_cm_h * dt_s / 3600.0)

    def values(self, t_ms: int, incidents: Sequence[ActiveIncident]) -> Values:
        depth = self.state_at(t_ms, incidents)[1]
        return {"depth_cm": round(max(0.0, depth + 0.2 * self.gauss(self._k, t_ms)), 1)}


class Outfall(_Drained):
    """State: [catchment runoff (mm/h)]."""

    def __init__(self, ctx: DeviceContext) -> None:
        super().__init__(ctx)
        self.base = ctx.sim("cso_level_m", "nominal", 0.4) * ctx.variation("base", 0.9, 1.1)
        #: m of chamber level per mm/h of runoff
        self.gain = ctx.sim("cso_level_m", "gain", 0.035) * ctx.variation("gain", 0.85, 1.15)
        self._k = ctx.key("level")

    def initial(self) -> list[float]:
        return [0.0]

    def step(self, state: list[float], t_ms: int, dt_s: float, incidents: Sequence[ActiveIncident]) -> None:
        state[0] += (self.rain(t_ms, incidents) - state[0]) * min(1.0, dt_s / 1200.0)

    def values(self, t_ms: int, incidents: Sequence[ActiveIncident]) -> Values:
        runoff = self.state_at(t_ms, incidents)[0]
        level = self.base + self.gain * runoff + 0.8 * self.backed_up(t_ms, incidents) \
            + 0.01 * noise.gauss(self._k, (t_ms - self.ctx.epoch_ms) // 1000)
        weir = float(self.ctx.labels.get("weir_m", 1.8))
        return {"cso_level_m": round(level, 3), "overflowing": level >= weir}
