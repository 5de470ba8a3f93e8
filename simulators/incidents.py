"""The incident catalogue: what each incident does, where it can happen, and its hazard.

The kinds come from the domain registry (each family's ``incidents:`` in its
family.yaml). Signatures (what a rule should see) are a family's simulation hook's, or
the incident's declarative ``effect`` (simulators/signals.py); this module holds what the
scenario loader and the ground truth need: domain, target profile, default parameters
and the hazard threshold with its source.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from urbansense import registry
from urbansense.registry import Effect, HazardTest

#: How the hazard of an incident is judged on the simulated data.
#:   below/above: metric below/above hazard_threshold;  true: boolean metric set (or a
#:   non-zero code);  leak: the leak flow (above the normal demand) reaches hazard_threshold m3/h.
__all__ = ["INCIDENT_TYPES", "ActiveIncident", "HazardTest", "IncidentType"]


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
    #: The device label holding a device's own threshold (hazard_threshold without it).
    hazard_label: str | None = None
    #: Where the threshold comes from (REFERENCE.md) or that it is a configurable default.
    source: str = ""
    #: The declarative shape, for families simulated from data.
    effect: Effect | None = None
    #: The failure of a sensor itself: health alerts detect it.
    sensor: bool = False
    #: `district`: every device of the district sees it (weather).
    felt_by: str = "devices"
    #: No detection asked for (light rain); its hazard alerts are false alarms.
    benign: bool = False
    #: Found in the simulated data (a flooded street), not scheduled; from `onset`.
    emergent: bool = False
    onset: float | None = None
    onset_offset: float | None = None

    def threshold_for(self, labels: Mapping[str, str], default: float | None) -> float | None:
        """A device's hazard threshold: its `hazard_label` if it has one, else `default`."""
        raw = labels.get(self.hazard_label) if self.hazard_label else None
        return float(raw) if raw is not None else default


INCIDENT_TYPES: dict[str, IncidentType] = {
    name: IncidentType(inc.name, fam.family, inc.profile, inc.metric, inc.group, dict(inc.defaults),
                       inc.hazard, inc.hazard_threshold, inc.hazard_label, inc.source, inc.effect, inc.sensor,
                       inc.felt_by, inc.benign, inc.emergent, inc.onset,
                       inc.onset_offset)
    for name, (fam, inc) in registry.incident_kinds().items()
}


@dataclass(frozen=True)
class ActiveIncident:
    """An incident as it affects one device, on the event-time axis."""

    type: str
    start_ms: int
    end_ms: int
    params: Mapping[str, float] = field(default_factory=dict)
    #: This device's place among a group incident's devices (in the group's order: for a
    #: circuit, from the cabinet out), and how many there are.
    member: int = 0
    members: int = 1
    #: The device it was scheduled on, for one felt by the whole district (a pump station's
    #: trip as the streets it drains see it); "" on the device's own incidents.
    origin: str = ""
    #: A group incident's devices, in the group's order (a leak's detectors: the model
    #: finds its source among them).
    group: tuple[str, ...] = ()

    @property
    def last_member(self) -> bool:
        """The device at the far end of a group (the first segment a cable theft cuts)."""
        return self.member == self.members - 1

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

    @property
    def lead_ms(self) -> int:
        """How long before its start the incident's precursor begins (0: it has none)."""
        return int(float(self.params.get("precursor_s", 0.0)) * 1000)

    def precursor(self, t_ms: int) -> float:
        """The degradation that announces the incident: 0 until `precursor_s` before its
        start, rising linearly to 1 at the start (0 for an incident without one)."""
        lead = self.lead_ms
        if lead <= 0 or t_ms < self.start_ms - lead:
            return 0.0
        return min(1.0, (t_ms - (self.start_ms - lead)) / lead)
