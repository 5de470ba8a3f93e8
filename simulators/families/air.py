"""Air-quality micro-station: PM2.5, PM10, NO2, SO2, O3, CO, temperature, humidity.

Normal days: particulates and NO2/CO follow traffic (peaks ~08:00 and ~18:00), ozone
follows sunshine (peak ~15:00). A pollution episode raises PM2.5 towards
`peak_pm25_ugm3` over `rise_s` (PM10, CO and NO2 with it), holds, and clears over the
last `fall_s` of the incident. Values are rounded as micro-stations report them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from simulators.daylight import local_hour
from simulators.families.base import DeviceContext, FamilyModel, Values
from simulators.incidents import ActiveIncident


def _bump(hour: float, centre: float, width: float) -> float:
    d = min(abs(hour - centre), 24 - abs(hour - centre))
    return math.exp(-(d / width) ** 2)


class AirQualityStation(FamilyModel):
    def __init__(self, ctx: DeviceContext) -> None:
        super().__init__(ctx)
        self.site = ctx.variation("site", 0.85, 1.15)
        self.nominal = {s.name: float(s.sim.get("nominal", 0.0)) for s in ctx.profile.fields}

    def envelope(self, inc: ActiveIncident, t_ms: int) -> float:
        """0..1: rise over rise_s, hold, fall over the last fall_s of the incident."""
        rise = inc.ramp(t_ms, inc.p("rise_s"))
        remaining_s = (inc.end_ms - t_ms) / 1000.0
        fall = min(1.0, remaining_s / inc.p("fall_s")) if inc.p("fall_s") > 0 else 1.0
        return max(0.0, min(rise, fall))


    def values(self, t_ms: int, incidents: Sequence[ActiveIncident]) -> Values:
        hour = local_hour(t_ms)
        rush = _bump(hour, 8.0, 2.0) + _bump(hour, 18.0, 2.5)
        sun = _bump(hour, 15.0, 3.0)
        pm25_trend = self.nominal["pm25_ugm3"] * self.site * (0.8 + 0.35 * rush)
        pm25 = pm25_trend + self.field_noise("pm25_ugm3", t_ms)
        no2 = self.nominal["no2_ugm3"] * self.site * (0.7 + 0.6 * rush) + self.field_noise("no2_ugm3", t_ms)
        co = self.nominal["co_mgm3"] * (0.8 + 0.5 * rush) + self.field_noise("co_mgm3", t_ms)
        so2 = self.nominal["so2_ugm3"] + self.field_noise("so2_ugm3", t_ms)
        o3 = self.nominal["o3_ugm3"] * (0.5 + 1.0 * sun) + self.field_noise("o3_ugm3", t_ms)
        temperature = self.nominal["temperature_c"] + 4.0 * math.sin(2 * math.pi * (hour - 9) / 24) \
            + self.field_noise("temperature_c", t_ms)
        humidity = self.nominal["humidity_pct"] - 12.0 * math.sin(2 * math.pi * (hour - 9) / 24) \
            + self.field_noise("humidity_pct", t_ms)
        for inc in incidents:
            if inc.type != "pollution_episode" or not inc.active(t_ms):
                continue
            e = self.envelope(inc, t_ms)
            extra = (inc.p("peak_pm25_ugm3") * self.site - pm25_trend) * e
            pm25 += extra
            no2 += 0.25 * extra
            co += 0.006 * extra
            o3 -= 0.2 * extra * (o3 > 20)
        pm10 = 1.6 * pm25 + self.field_noise("pm10_ugm3", t_ms)
        return {
            "pm25_ugm3": max(0, round(pm25)),
            "pm10_ugm3": max(0, round(pm10)),
            "no2_ugm3": max(0, round(no2)),
            "so2_ugm3": max(0, round(so2)),
            "o3_ugm3": max(0, round(o3)),
            "co_mgm3": max(0.0, round(co, 2)),
            "temperature_c": round(temperature, 1),
            "humidity_pct": round(min(100.0, max(5.0, humidity)), 1),
        }
