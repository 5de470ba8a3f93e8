"""Air-quality micro-station: PM2.5, PM10, NO2, SO2, O3, CO, temperature, humidity.

Normal days: particulates and NO2/CO follow traffic (peaks ~08:00 and ~18:00), ozone
follows sunshine (peak ~15:00). A pollution episode raises PM2.5 towards
`peak_pm25_ugm3` over `rise_s` (PM10, CO and NO2 with it), holds, and clears over the
last `fall_s` of the incident. Values are rounded as micro-stations report them.

Wind: the district's (simulators/weather.py), read with a little noise. A flammable leak
at a chemical site (felt by the district) releases `RELEASE_GS_PER_LEL` g/s of vapour per
%LEL its source detector reads; the station reads the Gaussian plume of that release at
its place (urbansense/dispersion.py, stability D), as released x / u seconds ago, on top
of its TVOC background.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from simulators import noise
from simulators.daylight import local_hour
from simulators.families.base import DeviceContext, FamilyModel, Values
from simulators.incidents import ActiveIncident
from simulators.weather import wind
from urbansense.dispersion import downwind, ground_level_ugm3

#: The source term: vapour released (g/s) per %LEL read at the leak's source detector
#: (a 50 %LEL leak: 100 g/s, 360 kg/h of petrol vapour).
RELEASE_GS_PER_LEL = 2.0
STABILITY = "D"


def _bump(hour: float, centre: float, width: float) -> float:
    d = min(abs(hour - centre), 24 - abs(hour - centre))
    return math.exp(-(d / width) ** 2)


class AirQualityStation(FamilyModel):
    def __init__(self, ctx: DeviceContext) -> None:
        super().__init__(ctx)
        self.site = ctx.variation("site", 0.85, 1.15)
        self.nominal = {s.name: float(s.sim.get("nominal", 0.0)) for s in ctx.profile.fields}
        #: one wind for every station of the scenario (drawn per seed)
        self.wind_key = noise.stream_key(ctx.seed, "district-wind")
        self.reads = {s.name for s in ctx.profile.fields}

    def wind(self, t_ms: int, incidents: Sequence[ActiveIncident]) -> tuple[float, float]:
        return wind(self.wind_key, incidents, t_ms, self.ctx.epoch_ms)

    def plume(self, t_ms: int, incidents: Sequence[ActiveIncident]) -> float:
        """TVOC (ug/m3) of the leaks' plumes here at t."""
        if self.ctx.location is None:
            return 0.0
        total = 0.0
        for inc in incidents:
            if inc.type != "flammable_leak" or not inc.group or not inc.active(t_ms):
                continue
            src_id = inc.group[min(len(inc.group) - 1, int(inc.p("source") * len(inc.group)))]
            src = self.ctx.peers.get(src_id)
            reads = getattr(src, "concentration", None)  # the source detector's model (chemical.py)
            if src is None or src.ctx.location is None or reads is None:
                continue
            u, from_deg = self.wind(t_ms, incidents)
            x, y = downwind(src.ctx.location, self.ctx.location, from_deg)
            if x <= 0:
                continue
            released = t_ms - int(x / u * 1000)  # what reaches here now left the source x/u ago
            if released < inc.start_ms:
                continue
            q = RELEASE_GS_PER_LEL * float(reads(released, [inc]))
            total += ground_level_ugm3(q, u, x, y, STABILITY)
        return total

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
        out: Values = {}
        if "wind_speed_ms" in self.reads:
            u, from_deg = self.wind(t_ms, incidents)
            out["wind_speed_ms"] = round(max(0.0, u + self.field_noise("wind_speed_ms", t_ms)), 1)
            out["wind_dir_deg"] = round(from_deg + self.field_noise("wind_dir_deg", t_ms)) % 360
        if "tvoc_ugm3" in self.reads:
            tvoc = self.nominal["tvoc_ugm3"] * self.site + self.field_noise("tvoc_ugm3", t_ms)
            out["tvoc_ugm3"] = max(0, round(tvoc + self.plume(t_ms, incidents)))
        return out | {
            "pm25_ugm3": max(0, round(pm25)),
            "pm10_ugm3": max(0, round(pm10)),
            "no2_ugm3": max(0, round(no2)),
            "so2_ugm3": max(0, round(so2)),
            "o3_ugm3": max(0, round(o3)),
            "co_mgm3": max(0.0, round(co, 2)),
            "temperature_c": round(temperature, 1),
            "humidity_pct": round(min(100.0, max(5.0, humidity)), 1),
        }
