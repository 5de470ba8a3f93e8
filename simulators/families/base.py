"""What every family model shares: the device it simulates and its noise streams."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from simulators import noise
from urbansense.config import Profile
from urbansense.schema import FieldValue

if TYPE_CHECKING:
    from simulators.incidents import ActiveIncident

Values = dict[str, FieldValue]


@dataclass
class DeviceContext:
    """One simulated device: identity, profile, labels and the scenario seed."""

    id: str
    seed: int
    profile: Profile
    labels: dict[str, str] = field(default_factory=dict)
    #: Values an operator wrote over Modbus (live mode), e.g. lamp_on; models honour them.
    commands: dict[str, FieldValue] = field(default_factory=dict)
    #: Noise counts event seconds from here (the scenario's start), so a scenario gives the
    #: same noise on whatever day it is played; only the sun and the time of day differ.
    epoch_ms: int = 0
    #: Every device's model in the scenario by id, for models coupled to a neighbour's
    #: (a street's drain backing up when the pump station it drains to is full).
    peers: Mapping[str, FamilyModel] = field(default_factory=dict)
    #: (lat, lon) from the gateway config, where it gives one: how far a leak travels to it.
    location: tuple[float, float] | None = None

    def key(self, stream: str) -> int:
        return noise.stream_key(self.seed, self.id, stream)

    def variation(self, name: str, low: float, high: float) -> float:
        """A per-device constant in [low, high): sizes differ from device to device."""
        return low + (high - low) * noise.uniform(self.key("const:" + name), 0)

    def sim(self, field_name: str, hint: str, default: float) -> float:
        """A numeric `sim:` hint of a profile field (nominal, noise, rated, ...)."""
        for spec in self.profile.fields:
            if spec.name == field_name:
                value = spec.sim.get(hint, default)
                return float(value)
        return default


class FamilyModel:
    """Base class: subclasses implement `values`."""

    def __init__(self, ctx: DeviceContext) -> None:
        self.ctx = ctx
        #: per profile field: (its noise stream, its `sim.noise` standard deviation)
        self._field_noise = {s.name: (ctx.key(s.name), float(s.sim.get("noise", 0.0))) for s in ctx.profile.fields}

    def values(self, t_ms: int, incidents: Sequence[ActiveIncident]) -> Values:
        """Engineering values at `t_ms`. `incidents` are those of this device that started
        at or before t (ended ones too: counters keep what a leak passed)."""
        raise NotImplementedError

    def answers(self, t_ms: int, incidents: Sequence[ActiveIncident]) -> bool:
        """Whether the device answers at all (a lamp controller fed by a stolen cable does
        not); `incidents`: those started and those whose precursor has begun."""
        return True

    def degrade(self, t_ms: int, coming: Sequence[ActiveIncident], values: Values) -> Values:
        """The values as an incident's precursor changes them (`coming`: this device's
        incidents whose precursor has begun and which have not started yet). Models whose
        incidents announce themselves (worn doors, an ageing lamp driver) override it."""
        return values

    def hazard(self, t_ms: int, incident: ActiveIncident) -> bool:
        """Whether the incident's hazard holds at t, for incident kinds whose hazard is
        `model` (a vehicle inside a zone it is banned from): the family's own judgement."""
        raise NotImplementedError(f"{type(self).__name__} does not judge the hazard of {incident.type}")

    def gauss(self, key: int, t_ms: int) -> float:
        """Standard normal noise that changes once per event second (counted from the epoch)."""
        return noise.gauss(key, (t_ms - self.ctx.epoch_ms) // 1000)

    def field_noise(self, name: str, t_ms: int) -> float:
        """A profile field's white noise at t: its `sim.noise` standard deviation times
        this device's own stream for the field (0 for a field without the hint)."""
        key, sd = self._field_noise[name]
        return sd * self.gauss(key, t_ms)

