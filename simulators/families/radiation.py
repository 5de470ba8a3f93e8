"""Environmental radiation: an automatic station's ambient gamma dose rate (nGy/h).

Background: the site's own (label `background_ngyh`, else the profile's nominal), with
counting noise of about 2 %. Rain washes radon progeny (Pb-214, Bi-214; half-lives 27 and
20 min) out of the air onto the ground around the detector: the dose rate rises by tens
of percent within the first hour of rain and decays back over two to three hours. Here
the washed-out share W follows

    dW/dt = a r (1 - W / W_max) - W / tau,     a = 0.06 per mm, W_max = 0.8, tau = 45 min

with r the rain on the station (mm/h; simulators/weather.py): about +30 % in
steady rain of 10 mm/h, +60 % at 50 mm/h. Not a hazard.

A `source_transit` (a lost or stolen source carried past in a vehicle) is: a short
symmetric peak, `peak_ngyh` over the background at the incident's middle, `pass_s` wide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from simulators.families.base import DeviceContext, Values
from simulators.families.integrated import Integrated
from simulators.incidents import ActiveIncident

WASHOUT_PER_MM = 0.06
WASHOUT_MAX = 0.8
WASHOUT_TAU_S = 2700.0


class GammaStation(Integrated):
    """State: [the washed-out share of the background]."""

    def __init__(self, ctx: DeviceContext) -> None:
        super().__init__(ctx)
        label = ctx.labels.get("background_ngyh")
        self.background = float(label) if label else ctx.sim("dose_ngyh", "nominal", 90.0)
        self.noise = ctx.sim("dose_ngyh", "noise_pct", 2.0) / 100.0
        self._k = ctx.key("dose")

    def initial(self) -> list[float]:
        return [0.0]

    def step(self, state: list[float], t_ms: int, dt_s: float, incidents: Sequence[ActiveIncident]) -> None:
        w = state[0]
        rain = self.rain(t_ms, incidents)
        w += (WASHOUT_PER_MM * rain * (1.0 - w / WASHOUT_MAX) - w / WASHOUT_TAU_S * 3600.0) * dt_s / 3600.0
        state[0] = max(0.0, w)

    def values(self, t_ms: int, incidents: Sequence[ActiveIncident]) -> Values:
        washout = self.state_at(t_ms, incidents)[0]
        dose = self.background * (1.0 + washout)
        for inc in incidents:
            if inc.type != "source_transit" or inc.origin or not inc.active(t_ms):
                continue
            middle = (inc.start_ms + inc.end_ms) / 2
            sigma_ms = max(1.0, float(inc.params.get("pass_s", 120.0)) * 1000 / 2.355)
            dose += inc.p("peak_ngyh") * math.exp(-0.5 * ((t_ms - middle) / sigma_ms) ** 2)
        dose *= 1.0 + self.noise * self.gauss(self._k, t_ms)
        return {"dose_ngyh": round(dose, 1)}
