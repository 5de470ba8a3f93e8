"""Water supply point: diurnal demand with a night minimum; pressure follows demand.

Demand factor over the local hour h (mean 1.0 over a day)::

    d(h) = 1 - 0.40 cos(2 pi (h - 3.5) / 24) - 0.25 cos(4 pi (h - 1.5) / 24)

gives a night minimum ~0.48 at 03:30, a morning peak ~1.05 at 07:30 and an evening peak
~1.45 at 19:30. Flow = device base flow x d; pressure = static head - k d^2 (head loss
grows with the square of flow). The totaliser integrates flow analytically, so it stays
consistent with the flow readings at any sampling rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from simulators.daylight import local_hour
from simulators.families.base import DeviceContext, FamilyModel, Values
from simulators.incidents import ActiveIncident

A1, A2 = 0.40, 0.25
_W1 = 2 * math.pi / 24
_W2 = 4 * math.pi / 24


def demand(hour: float) -> float:
    return 1.0 - A1 * math.cos(_W1 * (hour - 3.5)) - A2 * math.cos(_W2 * (hour - 1.5))


def demand_integral_h(t_ms: int) -> float:
    """Integral of d over time in hours, from the epoch (local midnight 1970-01-01) to t."""
    hours = (t_ms + 8 * 3_600_000) / 3_600_000.0
    return (hours - A1 / _W1 * math.sin(_W1 * (hours - 3.5))
            - A2 / _W2 * math.sin(_W2 * (hours - 1.5)))


class WaterSupplyPoint(FamilyModel):
    def __init__(self, ctx: DeviceContext) -> None:
        super().__init__(ctx)
        self.base_flow = ctx.sim("flow_m3h", "nominal", 120.0) * ctx.variation("flow", 0.6, 1.4)
        self.static_mpa = ctx.sim("pressure_mpa", "nominal", 0.32) + 0.04 + ctx.variation("head", -0.02, 0.02)
        self.turbidity = ctx.sim("turbidity_ntu", "nominal", 0.35) * ctx.variation("turb", 0.8, 1.2)
        self.chlorine = ctx.sim("chlorine_mgl", "nominal", 0.6) * ctx.variation("cl", 0.85, 1.15)
        self.ph = ctx.sim("ph", "nominal", 7.2) + ctx.variation("ph", -0.2, 0.2)
        self.volume0 = ctx.sim("volume_total_m3", "initial", 1_048_576) + ctx.variation("vol", 0, 500_000)
        self._k = {n: ctx.key(n) for n in ("pressure", "flow", "turbidity", "chlorine", "ph")}

    def leak_volume_m3(self, t_ms: int, incidents: Sequence[ActiveIncident]) -> float:
        """Extra volume through the meter due to incidents up to t (ramps integrated)."""
        total = 0.0
        for inc in incidents:
            s = inc.elapsed_s(min(t_ms, inc.end_ms))
            if inc.type == "slow_leak":
                rate = inc.p("rate_m3h_per_h")
                total += rate * (s / 3600.0) ** 2 / 2.0
            elif inc.type == "pipe_burst":
                ramp = inc.p("ramp_s")
                rise = inc.p("flow_rise_m3h")
                if s <= ramp:
                    total += rise * s * s / (2 * ramp) / 3600.0
                else:
                    total += rise * (ramp / 2 + (s - ramp)) / 3600.0
        return total

    def values(self, t_ms: int, incidents: Sequence[ActiveIncident]) -> Values:
        d = demand(local_hour(t_ms))
        flow = self.base_flow * d * (1.0 + 0.015 * self.gauss(self._k["flow"], t_ms))
        pressure = self.static_mpa - 0.04 * d * d + 0.002 * self.gauss(self._k["pressure"], t_ms)
        turbidity = self.turbidity + 0.02 * self.gauss(self._k["turbidity"], t_ms)
        slow = math.sin(2 * math.pi * t_ms / (5.3 * 3_600_000))
        chlorine = self.chlorine + 0.04 * slow + 0.01 * self.gauss(self._k["chlorine"], t_ms)
        ph = self.ph + 0.02 * self.gauss(self._k["ph"], t_ms)
        for inc in incidents:
            if not inc.active(t_ms):
                continue
            if inc.type == "pipe_burst":
                f = inc.ramp(t_ms, inc.p("ramp_s"))
                pressure -= inc.p("drop_mpa") * f
                flow += inc.p("flow_rise_m3h") * f
                turbidity += (inc.p("turbidity_ntu") - self.turbidity) * f
            elif inc.type == "slow_leak":
                flow += self.leak_flow(inc, t_ms)
        volume = (self.volume0 + (self.base_flow * demand_integral_h(t_ms)) % 1_000_000_000
                  + self.leak_volume_m3(t_ms, incidents))
        return {
            "pressure_mpa": max(0.0, pressure),
            "flow_m3h": max(0.0, flow),
            "turbidity_ntu": max(0.0, turbidity),
            "chlorine_mgl": max(0.0, chlorine),
            "ph": ph,
            "volume_total_m3": int(volume),
        }

    @staticmethod
    def leak_flow(inc: ActiveIncident, t_ms: int) -> float:
        return inc.p("rate_m3h_per_h") * inc.elapsed_s(t_ms) / 3600.0
