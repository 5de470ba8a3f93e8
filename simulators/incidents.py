"""The incident catalogue: what each incident does, where it can happen, and its hazard.

Signatures (what a rule should see) are implemented in the family models; this file
holds what the scenario loader and the ground truth need: domain, target profile,
default parameters and the hazard threshold with its source.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

#: How the hazard of an incident is judged on the simulated data.
#:   below/above: metric below/above hazard_threshold;  true: boolean metric set;
#:   leak: the leak flow (above the normal demand) reaches hazard_threshold m3/h.
HazardTest = Literal["below", "above", "true", "leak"]
#: `true` also covers a non-zero code (elevator_fault's fault_code).


@dataclass(frozen=True)
class IncidentType:
    name: str
    domain: str
    profile: str
    metric: str
    #: A group incident hits several devices at once (a circuit, a district).
    group: bool
    defaults: Mapping[str, float]
    hazard: HazardTest | None = None
    hazard_threshold: float | None = None
    #: Where the threshold comes from (REFERENCE.md) or that it is a configurable default.
    source: str = ""


INCIDENT_TYPES: dict[str, IncidentType] = {t.name: t for t in (
    IncidentType("pipe_burst", "water", "water-supply-point", "pressure_mpa", False,
                 {"drop_mpa": 0.15, "ramp_s": 120.0, "flow_rise_m3h": 90.0, "turbidity_ntu": 1.6},
                 "below", 0.20, "configurable default: 0.20 MPa minimum service pressure at the supply point"),
    IncidentType("slow_leak", "water", "water-supply-point", "flow_m3h", False,
                 {"rate_m3h_per_h": 3.0},
                 "leak", 10.0, "configurable default: leak flow of 10 m3/h above normal demand"),
    IncidentType("gas_leak", "gas", "methane-detector", "methane_lel_pct", False,
                 {"rate_lel_per_min": 1.5, "peak_lel_pct": 60.0},
                 "above", 25.0, "GB/T 50493-2019 first-level alarm set point 25 %LEL"),
    IncidentType("gas_overpressure", "gas", "gas-regulator-station", "pressure_kpa", False,
                 {"rise_kpa": 60.0, "ramp_s": 1800.0},
                 "above", 130.0, "configurable default: outlet 1.3 x nominal (station alarm set point)"),
    IncidentType("lamp_failure", "lighting", "lamp-controller", "current_a", False, {}),
    IncidentType("day_burning", "lighting", "lamp-controller", "lamp_on", False, {}),
    IncidentType("cable_theft", "lighting", "lamp-controller", "current_a", True, {}),
    IncidentType("elevator_entrapment", "elevator", "elevator-controller", "trapped_passenger", False,
                 {}, "true", None, "GB/T 24476 event family: trapped passenger"),
    IncidentType("door_open_while_moving", "elevator", "elevator-controller", "door_open_while_moving", False,
                 {"moving_s": 8.0}, "true", None, "GB/T 24476 event family: door open while moving"),
    IncidentType("elevator_fault", "elevator", "elevator-controller", "fault_code", False,
                 {"code": 13.0}, "true", None,
                 "GB/T 24476 event families; code from the profile's conventions.fault_codes (13 overspeed)"),
    IncidentType("pollution_episode", "air", "air-quality-station", "pm25_ugm3", True,
                 {"peak_pm25_ugm3": 230.0, "rise_s": 3 * 3600.0, "fall_s": 3600.0},
                 "above", 150.0,
                 "HJ 633-2012: PM2.5 150 ug/m3 is IAQI 200, above it heavy pollution (AQI > 200)"),
)}


@dataclass(frozen=True)
class ActiveIncident:
    """An incident as it affects one device, on the event-time axis."""

    type: str
    start_ms: int
    end_ms: int
    params: Mapping[str, float] = field(default_factory=dict)

    def active(self, t_ms: int) -> bool:
        return self.start_ms <= t_ms < self.end_ms

    def elapsed_s(self, t_ms: int) -> float:
        return (t_ms - self.start_ms) / 1000.0

    def ramp(self, t_ms: int, ramp_s: float) -> float:
        """0 at the start, rising linearly to 1 after `ramp_s` seconds."""
        if ramp_s <= 0:
            return 1.0
        return max(0.0, min(1.0, self.elapsed_s(t_ms) / ramp_s))

    def p(self, name: str) -> float:
        return float(self.params[name])
