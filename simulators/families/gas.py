"""Gas: regulator stations (outlet/inlet pressure, valve, alarm) and methane detectors.

Regulator: the outlet is held near its set point and sags a little with demand. In an
over-pressure incident (regulator failing open) the outlet creeps up by `rise_kpa` over
`ramp_s`; the station alarm sets at the alarm set point, and when the outlet reaches the
slam-shut set point (profile conventions.slam_shut_kpa) the slam-shut valve trips: the
valve closes and the outlet pressure collapses until the station is reset (incident end).

Methane detector: a few tenths of %LEL of sensor noise around zero; a leak ramps the
concentration at `rate_lel_per_min` up to `peak_lel_pct`. Alarm levels follow the
profile's conventions (first 25, second 50 %LEL). A detector_failure sets the status
bit and holds the reading at zero; before it, for `precursor_s`, the detector's zero
sinks below clean air (docs/PRECURSORS.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from simulators.daylight import local_hour
from simulators.families.base import DeviceContext, FamilyModel, Values
from simulators.families.water import demand
from simulators.incidents import ActiveIncident


class GasRegulatorStation(FamilyModel):
    def __init__(self, ctx: DeviceContext) -> None:
        super().__init__(ctx)
        self.setpoint = ctx.sim("pressure_kpa", "nominal", 100.0)
        self.inlet = ctx.sim("inlet_pressure_kpa", "nominal", 350.0) * ctx.variation("inlet", 0.95, 1.05)
        self.alarm_kpa = ctx.sim("station_alarm", "alarm_kpa", 130.0)
        self.slam_shut_kpa = float(ctx.profile.conventions.get("slam_shut_kpa", 150.0))
        self._k = {n: ctx.key(n) for n in ("outlet", "inlet", "temp")}
        self._trips: dict[tuple[int, int], int | None] = {}

    def outlet_trend(self, t_ms: int) -> float:
        """Outlet pressure without noise or incidents."""
        return self.setpoint - 1.5 * demand(local_hour(t_ms))

    def trip_ms(self, inc: ActiveIncident) -> int | None:
        """When the slam-shut valve trips during an over-pressure incident (noise-free
        trend, so the trip is the same at any sampling rate)."""
        key = (inc.start_ms, inc.end_ms)
        if key not in self._trips:
            rise, ramp = inc.p("rise_kpa"), inc.p("ramp_s")
            found = None
            for t in range(inc.start_ms, inc.end_ms, 1000):
                if self.outlet_trend(t) + rise * inc.ramp(t, ramp) >= self.slam_shut_kpa:
                    found = t
                    break
            self._trips[key] = found
        return self._trips[key]

    def values(self, t_ms: int, incidents: Sequence[ActiveIncident]) -> Values:
        outlet = self.outlet_trend(t_ms) + 0.4 * self.gauss(self._k["outlet"], t_ms)
        inlet = self.inlet + 1.5 * self.gauss(self._k["inlet"], t_ms)
        temperature = 15.0 + 4.0 * math.sin(2 * math.pi * (local_hour(t_ms) - 9) / 24) \
            + 0.1 * self.gauss(self._k["temp"], t_ms)
        valve_open = True
        for inc in incidents:
            if inc.type != "gas_overpressure" or not inc.active(t_ms):
                continue
            trip = self.trip_ms(inc)
            if trip is not None and t_ms >= trip:
                valve_open = False
                # Downstream keeps drawing: the outlet falls off within minutes.
                outlet = 2.0 + (outlet - 2.0) * math.exp(-(t_ms - trip) / 120_000.0)
            else:
                outlet += inc.p("rise_kpa") * inc.ramp(t_ms, inc.p("ramp_s"))
        alarm = (not valve_open) or outlet >= self.alarm_kpa or outlet <= 0.7 * self.setpoint
        return {
            "pressure_kpa": max(0.0, outlet),
            "inlet_pressure_kpa": inlet,
            "temperature_c": temperature,
            "valve_open": valve_open,
            "station_alarm": alarm,
        }


class MethaneDetector(FamilyModel):
    def __init__(self, ctx: DeviceContext) -> None:
        super().__init__(ctx)
        conv = ctx.profile.conventions
        self.first = float(conv.get("first_alarm_lel_pct", 25.0))
        self.second = float(conv.get("second_alarm_lel_pct", 50.0))
        self.baseline = ctx.variation("zero", 0.2, 0.8)
        self.sigma = ctx.sim("methane_lel_pct", "noise", 0.3)
        self._k = ctx.key("lel")

    def values(self, t_ms: int, incidents: Sequence[ActiveIncident]) -> Values:
        lel = self.baseline + self.sigma * self.gauss(self._k, t_ms)
        for inc in incidents:
            if inc.type == "gas_leak" and inc.active(t_ms):
                lel += min(inc.p("peak_lel_pct"), inc.p("rate_lel_per_min") * inc.elapsed_s(t_ms) / 60.0)
            elif inc.type == "detector_failure" and inc.active(t_ms):
                # Failed: the status bit set, the reading held at zero (it measures nothing).
                return {"methane_lel_pct": 0.0, "alarm_level": 0, "sensor_fault": True}
        lel = min(100.0, max(0.0, lel))
        level = 2 if lel >= self.second else 1 if lel >= self.first else 0
        return {"methane_lel_pct": lel, "alarm_level": level, "sensor_fault": False}

    def degrade(self, t_ms: int, coming: Sequence[ActiveIncident], values: Values) -> Values:
        """Before it fails, the detector's zero sinks: in clean air it reads below zero,
        by up to `zero_drift_lel_pct` when it fails (a reading the int16 register carries)."""
        sink = max((inc.p("zero_drift_lel_pct") * inc.precursor(t_ms) for inc in coming
                    if inc.type == "detector_failure"), default=0.0)
        if sink <= 0:
            return values
        return dict(values, methane_lel_pct=float(values["methane_lel_pct"]) - sink)
