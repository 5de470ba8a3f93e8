"""Road lighting: single-lamp controllers switched on at civil dusk and off at civil dawn
for Shanghai, dimmed to 60 % between 00:00 and 05:00 local (a common energy-saving plan).

Incidents: lamp_failure (lamp out while commanded on: no current, lamp_fault set),
day_burning (lamp on in daylight), cable_theft (the whole circuit loses supply: voltage,
current and power fall to zero, whatever the relay says; with `controllers_silent` >= 0.5
the lamp controllers are fed by the same cable and stop answering altogether). A theft
with a precursor starts with one segment: for `precursor_s` before the rest, the lamp at
the far end of the circuit is cut off alone.
An operator's Modbus write to lamp_on / dim_level_pct overrides the schedule (live mode).

The controller also reports the driver's power factor. An ageing LED driver (its electrolytic
capacitors drying out) loses power factor before it fails, and draws more current for
the same power: lamp_failure's precursor takes the power factor from ~0.95 down by 0.15
(docs/PRECURSORS.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from simulators import noise
from simulators.daylight import dark_hours_until, is_dark, local_hour
from simulators.families.base import DeviceContext, FamilyModel, Values
from simulators.incidents import ActiveIncident

POWER_FACTOR = 0.95
STANDBY_W = 0.4
#: How far an ageing driver's power factor falls by the time the lamp fails.
PF_LOSS = 0.15
PF_NOISE = 0.003


class LampController(FamilyModel):
    def __init__(self, ctx: DeviceContext) -> None:
        super().__init__(ctx)
        self.rated_w = ctx.sim("power_w", "rated", 150.0) * ctx.variation("rated", 0.97, 1.03)
        self.hours0 = ctx.sim("burning_hours", "initial", 12000) * ctx.variation("age", 0.3, 1.6)
        self._k = {n: ctx.key(n) for n in ("voltage", "power", "pf")}
        self.pf = POWER_FACTOR * ctx.variation("pf", 0.99, 1.01)

    def values(self, t_ms: int, incidents: Sequence[ActiveIncident]) -> Values:
        dark = is_dark(t_ms)
        hour = local_hour(t_ms)
        lamp_on = dark
        dim = 60 if dark and hour < 5.0 else 100
        failed = theft = False
        for inc in incidents:
            if not inc.active(t_ms):
                continue
            if inc.type == "day_burning":
                lamp_on, dim = True, 100
            elif inc.type == "lamp_failure":
                failed = True
            elif inc.type == "cable_theft":
                theft = True
        if "lamp_on" in self.ctx.commands:
            lamp_on = bool(self.ctx.commands["lamp_on"])
        if "dim_level_pct" in self.ctx.commands:
            dim = int(self.ctx.commands["dim_level_pct"])
        # Night-time supply voltage runs a little high (light network load).
        voltage = 220.0 + (2.0 if dark else -1.0) + 0.8 * self.gauss(self._k["voltage"], t_ms) \
            + 1.0 * math.sin(2 * math.pi * t_ms / 2_700_000)
        if lamp_on and not failed:
            power = self.rated_w * dim / 100.0 * (1.0 + 0.006 * self.gauss(self._k["power"], t_ms))
        else:
            power = STANDBY_W
        if theft:
            voltage = power = 0.0
        pf = self.pf + PF_NOISE * noise.gauss(self._k["pf"], (t_ms - self.ctx.epoch_ms) // 60_000)
        current = power / (voltage * pf) if voltage > 1.0 else 0.0
        if failed and lamp_on and not theft:
            current = power = 0.0
        return {
            "lamp_on": lamp_on,
            "dim_level_pct": dim,
            "voltage_v": voltage,
            "current_a": current,
            "power_w": power,
            "lamp_fault": failed and lamp_on,
            "power_factor": pf,
            "burning_hours": int(self.hours0 + dark_hours_until(t_ms)),
        }

    def answers(self, t_ms: int, incidents: Sequence[ActiveIncident]) -> bool:
        return not any(inc.type == "cable_theft" and (inc.active(t_ms) or _first_cut(inc, t_ms))
                       and inc.p("controllers_silent") >= 0.5 for inc in incidents)

    def degrade(self, t_ms: int, coming: Sequence[ActiveIncident], values: Values) -> Values:
        if any(_first_cut(inc, t_ms) for inc in coming if inc.type == "cable_theft"):
            values = dict(values, voltage_v=0.0, current_a=0.0, power_w=0.0)
        loss = max((PF_LOSS * inc.precursor(t_ms) for inc in coming if inc.type == "lamp_failure"), default=0.0)
        if loss <= 0:
            return values
        pf = float(values["power_factor"])
        out = dict(values, power_factor=pf - loss)
        out["current_a"] = float(values["current_a"]) * pf / (pf - loss)  # same power, more current
        return out


def _first_cut(inc: ActiveIncident, t_ms: int) -> bool:
    """A cable theft's first segment: the circuit's far lamp, cut off during the precursor."""
    return inc.last_member and inc.lead_ms > 0 and inc.start_ms - inc.lead_ms <= t_ms < inc.start_ms
