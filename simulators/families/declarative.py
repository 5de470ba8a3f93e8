"""Families simulated from data: each profile field's ``sim:`` hints, each incident's
``effect:`` in the family's family.yaml. No Python per family.

Per field (all optional but ``nominal``; a field with only ``initial`` stays at it)::

    sim:
      nominal: 52.0          # the baseline, in the field's unit
      site: [0.9, 1.1]       # per-device factor on the nominal (sites differ)
      noise: 1.5             # standard deviation of white noise, new every event second
      daily:                 # bumps over the local day (Shanghai time), in field units
        - {at: 8, width_h: 2, amount: 6}    # morning traffic
        - {at: 3, width_h: 3, amount: -8}   # quiet night
      weekend: -3            # added on Saturdays and Sundays
      follows: {field: pm25_ugm3, gain: 1.6}   # + gain x (that field - its nominal)
      harmonics:             # periodic constituents, e.g. a tide (M2, S2, K1, O1)
        constituents:        # amplitude x cos(2 pi (t - lag) / period - phase), t from the epoch
          - {name: M2, period_h: 12.4206012, amplitude: 1.05, phase_deg: 0}
          - {name: S2, period_h: 12.0, amplitude: 0.42, phase_deg: 40}
        lag_h: [0, 1.5]      # per-device delay, drawn once (the tide reaches upstream later)
        scale: [0.8, 1.0]    # per-device factor on every amplitude
      rain_rise: {per_mm: 0.004, over_h: 3, lag_h: 1}   # + 4 mm per mm of the district's rain
                          # over 3 h, an hour after it fell (simulators/weather.py)
      round: 1               # decimals (0: an integer)

The field's physical range in the family clamps the value.

An incident's envelope e(t) runs 0..1 over the incident, by shape:
``step`` (1 throughout), ``ramp`` (rises over ``rise_s``), ``exponential`` (accelerates
to 1 at ``rise_s``, like a runaway), ``spike`` (1 at the start, decaying with
``decay_s``), ``oscillation`` (0..1..0 every ``period_s``), ``plume`` (a bell centred
on the incident's middle, a quarter of it wide: a cloud passing). Every shape but
``step`` and ``plume`` also falls over the last ``fall_s``. ``to: {field: param}`` moves
the field towards the parameter's value, ``add: {field: param}`` adds it, scaled by e.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from simulators.daylight import TZ, local_hour
from simulators.families.base import DeviceContext, FamilyModel, Values
from simulators.incidents import ActiveIncident
from simulators.weather import fallen_mm
from urbansense import registry
from urbansense.registry import Effect


@dataclass(frozen=True)
class _Bump:
    at: float
    width_h: float
    amount: float

    def at_hour(self, hour: float) -> float:
        d = min(abs(hour - self.at), 24 - abs(hour - self.at))
        return self.amount * math.exp(-((d / self.width_h) ** 2))


@dataclass(frozen=True)
class Harmonics:
    """A sum of cosines: amplitude_i cos(omega_i (t - lag) - phase_i), t in hours from
    the epoch. Two constituents of near periods beat: M2 with S2 gives the spring-neap
    cycle of 1 / (1/12 - 1/12.4206) h = 14.77 days."""

    omega: tuple[float, ...]  # rad/h
    amplitude: tuple[float, ...]
    phase: tuple[float, ...]  # rad
    lag_h: float = 0.0

    @classmethod
    def from_hint(cls, hint: dict[str, Any], lag_h: float = 0.0, scale: float = 1.0) -> Harmonics:
        cs = hint["constituents"]
        return cls(tuple(2 * math.pi / float(c["period_h"]) for c in cs),
                   tuple(scale * float(c["amplitude"]) for c in cs),
                   tuple(math.radians(float(c.get("phase_deg", 0.0))) for c in cs), lag_h)

    def at(self, t_ms: int) -> float:
        hours = t_ms / 3_600_000.0 - self.lag_h
        return sum(a * math.cos(w * hours - p) for w, a, p in zip(self.omega, self.amplitude, self.phase,
                                                                    strict=True))


@dataclass(frozen=True)
class _FieldSignal:
    name: str
    kind: str  # float | int | bool | string
    nominal: float
    noise: float
    key: int
    bumps: tuple[_Bump, ...]
    weekend: float
    follows: tuple[str, float] | None
    digits: int | None
    low: float | None
    high: float | None
    harmonics: Harmonics | None = None
    #: (m per mm, window ms, lag ms): rises with the rain fallen on the district over the
    #: window that ended `lag` ago (the time the rain takes to run off into a river).
    rain_rise: tuple[float, int, int] | None = None


def envelope(effect: Effect, inc: ActiveIncident, t_ms: int) -> float:
    """The incident's strength at t, 0..1 (see the module's doc)."""
    p = inc.params
    elapsed = inc.elapsed_s(t_ms)
    total = max(1e-9, (inc.end_ms - inc.start_ms) / 1000.0)
    shape = effect.shape
    if shape == "step":
        return 1.0
    if shape == "plume":
        return math.exp(-(((elapsed - total / 2) / (total / 4)) ** 2))
    if shape == "ramp":
        e = inc.ramp(t_ms, float(p.get("rise_s", 0.0)))
    elif shape == "exponential":
        x = min(1.0, elapsed / max(1e-9, float(p.get("rise_s", total))))
        e = math.expm1(3.0 * x) / math.expm1(3.0)
    elif shape == "spike":
        e = math.exp(-elapsed / max(1e-9, float(p.get("decay_s", 60.0))))
    else:  # oscillation
        e = 0.5 * (1.0 - math.cos(2 * math.pi * elapsed / max(1e-9, float(p.get("period_s", 600.0)))))
    fall_s = float(p.get("fall_s", 0.0))
    if fall_s > 0:
        e = min(e, max(0.0, (inc.end_ms - t_ms) / 1000.0 / fall_s))
    return max(0.0, min(1.0, e))


def _weekend(t_ms: int) -> bool:
    return dt.datetime.fromtimestamp(t_ms / 1000.0, TZ).weekday() >= 5


class DeclarativeDevice(FamilyModel):
    """Any profile without a simulation hook: the signal its fields' hints describe."""

    def __init__(self, ctx: DeviceContext) -> None:
        super().__init__(ctx)
        fam = registry.families().get(ctx.profile.measurement)
        infos = fam.fields if fam is not None else {}
        self._effects = {name: inc.effect for name, (_fam, inc) in registry.incident_kinds().items()
                         if inc.effect is not None}
        self._fixed: Values = {}
        self._signals: list[_FieldSignal] = []
        for spec in ctx.profile.fields:
            sim: dict[str, Any] = spec.sim
            info = infos.get(spec.name)
            if "nominal" not in sim:
                if "initial" in sim:
                    self._fixed[spec.name] = sim["initial"]
                continue
            site = sim.get("site")
            factor = ctx.variation("site:" + spec.name, float(site[0]), float(site[1])) if site else 1.0
            follows = sim.get("follows")
            tide = sim.get("harmonics")
            harmonics = None
            if tide:
                lag, scale = tide.get("lag_h", (0.0, 0.0)), tide.get("scale", (1.0, 1.0))
                harmonics = Harmonics.from_hint(
                    tide, ctx.variation("lag:" + spec.name, float(lag[0]), float(lag[1])),
                    ctx.variation("scale:" + spec.name, float(scale[0]), float(scale[1])))
            rain = sim.get("rain_rise")
            self._signals.append(_FieldSignal(
                spec.name, info.type if info else "float", float(sim["nominal"]) * factor,
                float(sim.get("noise", 0.0)), ctx.key(spec.name),
                tuple(_Bump(float(b["at"]), float(b.get("width_h", 2.0)), float(b["amount"]))
                      for b in sim.get("daily", ())),
                float(sim.get("weekend", 0.0)),
                (str(follows["field"]), float(follows.get("gain", 1.0))) if follows else None,
                int(sim["round"]) if "round" in sim else None,
                info.range[0] if info and info.range else None,
                info.range[1] if info and info.range else None, harmonics,
                (float(rain["per_mm"]), int(float(rain.get("over_h", 3.0)) * 3_600_000),
                 int(float(rain.get("lag_h", 0.0)) * 3_600_000)) if rain else None))

    def values(self, t_ms: int, incidents: Sequence[ActiveIncident]) -> Values:
        hour = local_hour(t_ms)
        weekend = any(s.weekend for s in self._signals) and _weekend(t_ms)
        raw: dict[str, float] = {}
        for s in self._signals:
            v = s.nominal + sum(b.at_hour(hour) for b in s.bumps)
            if s.harmonics is not None:
                v += s.harmonics.at(t_ms)
            if s.rain_rise is not None and incidents:
                v += s.rain_rise[0] * fallen_mm(incidents, t_ms - s.rain_rise[2], s.rain_rise[1])
            if weekend:
                v += s.weekend
            raw[s.name] = v + s.noise * self.gauss(s.key, t_ms)
        for inc in incidents:
            effect = self._effects.get(inc.type)
            if effect is None or not inc.active(t_ms):
                continue
            e = envelope(effect, inc, t_ms)
            for name, param in effect.to.items():
                if name in raw:
                    raw[name] += (inc.p(param) - raw[name]) * e
            for name, param in effect.add.items():
                if name in raw:
                    raw[name] += inc.p(param) * e
        nominal = {s.name: s.nominal for s in self._signals}
        out: Values = dict(self._fixed)
        for s in self._signals:
            v = raw[s.name]
            if s.follows is not None and s.follows[0] in raw:
                v += s.follows[1] * (raw[s.follows[0]] - nominal[s.follows[0]])
            if s.low is not None and s.high is not None:
                v = min(s.high, max(s.low, v))
            if s.kind == "bool":
                out[s.name] = v >= 0.5
            elif s.kind == "int" or s.digits == 0:
                out[s.name] = round(v)
            else:
                out[s.name] = round(v, s.digits) if s.digits is not None else v
        return out
