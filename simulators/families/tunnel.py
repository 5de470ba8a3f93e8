"""Utility tunnel compartments: air, heat and water that answer to the fans and the pump.

State, integrated over event time (simulators/families/integrated.py):

- methane C (%vol): dC/dt = L(t) - C (a + f F), with L the leak (%vol/h, ramping in
  over 15 min), a = 0.05 /h the air a closed compartment exchanges by itself, F = 1
  while the fans run and f = 6 air changes an hour: a 0.6 %vol/h leak reaches the
  1 %vol alarm in under two hours with the fans off and settles near 0.1 %vol with them on;
- heat E (degC over the compartment's base): relaxes with a 10 min time constant towards
  the overheating joint's target, `peak_c` x an accelerating envelope (exponential over
  `rise_s`), of which running fans take away 40 %; CO follows at 0.4 ppm per degC;
- sump S (m): dS/dt = (seepage + inflow - pumped) / area, the pump started at 0.6 m and
  stopped at 0.3 m by its own float switch unless a written run coil overrides it;
  during a `water_ingress` the pump has failed: it reads stopped and moves nothing.

Oxygen is displaced by the methane (20.9 x (1 - C/100)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from simulators.families.base import DeviceContext, Values
from simulators.families.integrated import Integrated
from simulators.incidents import ActiveIncident

SELF_EXCHANGE_PER_H = 0.05
FAN_CHANGES_PER_H = 6.0
LEAK_RAMP_S = 900.0
HEAT_TAU_S = 600.0
FAN_HEAT_SHARE = 0.4
CO_PER_DEGC = 0.4
PUMP_START_M, PUMP_STOP_M = 0.6, 0.3


class Compartment(Integrated):
    """State: [methane %vol, heat degC, sump m, pump running 0/1]."""

    def __init__(self, ctx: DeviceContext) -> None:
        super().__init__(ctx)
        self.base_c = ctx.sim("temperature_c", "nominal", 22.0) + ctx.variation("base_c", -2.0, 2.0)
        self.area = ctx.sim("sump_level_m", "area_m2", 6.0)
        self.seep = ctx.sim("sump_level_m", "seep_m3h", 0.05) * ctx.variation("seep", 0.5, 1.5)
        self.pump_m3h = ctx.sim("sump_level_m", "pump_m3h", 12.0)
        self.h2s = ctx.sim("h2s_ppm", "nominal", 0.2)
        self.co = ctx.sim("co_ppm", "nominal", 1.0)
        self.humidity = ctx.sim("humidity_pct", "nominal", 72.0)

    def initial(self) -> list[float]:
        return [0.01, 0.0, 0.15, 0.0]

    @property
    def fans(self) -> bool:
        return bool(self.ctx.commands.get("fan_run", False))

    @staticmethod
    def _active(incidents: Sequence[ActiveIncident], kind: str, t_ms: int) -> list[ActiveIncident]:
        return [i for i in incidents if i.type == kind and not i.origin and i.active(t_ms)]

    def _pump_failed(self, t_ms: int, incidents: Sequence[ActiveIncident]) -> bool:
        return bool(self._active(incidents, "water_ingress", t_ms))

    def step(self, state: list[float], t_ms: int, dt_s: float, incidents: Sequence[ActiveIncident]) -> None:
        ch4, heat, sump, pump = state
        fan = 1.0 if self.fans else 0.0
        h = dt_s / 3600.0
        leak = sum(i.p("leak_pct_per_h") * min(1.0, i.elapsed_s(t_ms) / LEAK_RAMP_S)
                   for i in self._active(incidents, "gas_pipe_leak", t_ms))
        ch4 += (leak - ch4 * (SELF_EXCHANGE_PER_H + FAN_CHANGES_PER_H * fan)) * h
        target = 0.0
        for inc in self._active(incidents, "cable_overheat", t_ms):
            x = min(1.0, inc.elapsed_s(t_ms) / max(1.0, inc.p("rise_s")))
            target += (inc.p("peak_c") - self.base_c) * math.expm1(3.0 * x) / math.expm1(3.0)
        target *= 1.0 - FAN_HEAT_SHARE * fan
        heat += (target - heat) * (1.0 - math.exp(-dt_s / HEAT_TAU_S))
        inflow = sum(i.p("inflow_m3h") for i in self._active(incidents, "water_ingress", t_ms))
        failed = self._pump_failed(t_ms, incidents)
        wanted = self.ctx.commands.get("sump_pump_run")
        if wanted is not None:
            pump = 1.0 if wanted else 0.0
        elif sump >= PUMP_START_M:
            pump = 1.0
        elif sump <= PUMP_STOP_M:
            pump = 0.0
        if failed:
            pump = 0.0
        sump += (self.seep + inflow - self.pump_m3h * pump) * h / self.area
        state[:] = [max(0.0, ch4), heat, max(0.0, sump), pump]

    def values(self, t_ms: int, incidents: Sequence[ActiveIncident]) -> Values:
        ch4, heat, sump, pump = self.state_at(t_ms, incidents)

        def noisy(name: str, v: float) -> float:
            return v + self.field_noise(name, t_ms)

        ch4_now = max(0.0, noisy("ch4_pct_vol", ch4))
        wet = 10.0 if self._active(incidents, "water_ingress", t_ms) else 0.0
        return {
            "o2_pct": round(noisy("o2_pct", 20.9 * (1.0 - ch4 / 100.0)), 2),
            "ch4_pct_vol": round(ch4_now, 3),
            "h2s_ppm": round(max(0.0, noisy("h2s_ppm", self.h2s)), 1),
            "co_ppm": round(max(0.0, noisy("co_ppm", self.co + CO_PER_DEGC * max(0.0, heat))), 1),
            "temperature_c": round(noisy("temperature_c", self.base_c + heat), 1),
            "humidity_pct": round(min(100.0, noisy("humidity_pct", self.humidity + wet)), 1),
            "sump_level_m": round(sump, 3),
            "fan_run": self.fans,
            "sump_pump_run": pump >= 0.5,
            "door_open": False,
        }
