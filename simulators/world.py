"""The simulated field: every device of a scenario's gateways with its model, incidents
and faults, and the reading an edge agent would get from it at any event time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from simulators.families import DeviceContext, FamilyModel, model_for
from simulators.families.base import Values
from simulators.faults import ERR_TIMEOUT, ActiveFault, exception_error
from simulators.incidents import ActiveIncident
from simulators.readout import Quantiser, modbus_quantisers
from simulators.stations import malformed_payload, payload_error
from urbansense.config import DeviceSpec, LinkSpec, LoadedGateway, Profile
from urbansense.schema import FieldValue, Sample


@dataclass(slots=True)
class Reading:
    """What the edge gets from a device at one poll: values, an error, or nothing at all
    (an MQTT station that stays silent)."""

    values: dict[str, FieldValue] | None
    error: str | None = None
    #: MQTT only: the station published broken JSON.
    malformed: bool = False
    #: Modbus only: the exception code the device answers with.
    exception_code: int = 0
    silent: bool = False


@dataclass
class SimDevice:
    ctx: DeviceContext
    gateway: str
    district: str
    link: LinkSpec
    spec: DeviceSpec
    model: FamilyModel
    quantise: Mapping[str, Quantiser]
    incidents: list[ActiveIncident] = field(default_factory=list)
    faults: list[ActiveFault] = field(default_factory=list)
    #: Last value of each urgent field (offline play): a change is urgent too, as at the edge.
    urgent_last: dict[str, FieldValue] = field(default_factory=dict)
    #: (check field, check instant) -> the check's result, as the analyser holds it till the next.
    _checked: dict[tuple[str, int], float] = field(default_factory=dict)
    #: The profile's analyser-check fields (`sim: check`), found once.
    _checks: tuple[tuple[str, Mapping[str, Any]], ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        self._checks = tuple((spec.name, spec.sim["check"]) for spec in self.profile.fields if "check" in spec.sim)

    @property
    def id(self) -> str:
        return self.ctx.id

    @property
    def profile(self) -> Profile:
        return self.ctx.profile

    @property
    def is_mqtt(self) -> bool:
        return self.ctx.profile.protocol == "mqtt"

    def engineering(self, t_ms: int) -> Values:
        """Model values with incidents and sensor faults applied (before quantisation)."""
        started = [i for i in self.incidents if i.start_ms <= t_ms]
        values = self.model.values(t_ms, started)
        coming = [i for i in self.incidents if i.start_ms > t_ms >= i.start_ms - i.lead_ms]
        if coming:
            values = self.model.degrade(t_ms, coming, values)
        for fault in self.faults:
            if not fault.active(t_ms) or fault.metric is None:
                continue
            m = fault.metric
            if fault.type == "stuck":
                values[m] = self.model.values(fault.start_ms, [i for i in started if i.start_ms <= fault.start_ms])[m]
            elif fault.type == "drift":
                values[m] = float(values[m]) + fault.p("rate_per_h") * (t_ms - fault.start_ms) / 3_600_000
            elif fault.type == "spikes" and fault.hits(t_ms):
                sign = 1.0 if fault.draw(t_ms, 0x5151) < 0.5 else -1.0
                values[m] = float(values[m]) + sign * fault.p("magnitude")
        for name, hint in self._checks:
            values[name] = self._check(name, hint, t_ms)
        return values

    def _check(self, name: str, hint: Mapping[str, Any], t_ms: int) -> float:
        """A field holding the analyser's last standard check (`sim: check: {of, standard,
        every_h, noise_pct}`): the relative error, in %, of its reading of a standard
        solution, taken every `every_h` hours. A drifting or stuck sensor reads the
        standard wrong by as much as it reads the water wrong; the water itself (a real
        discharge) does not move it."""
        every = int(float(hint.get("every_h", 1.0)) * 3_600_000)
        tc = t_ms // every * every
        got = self._checked.get((name, tc))
        if got is None:
            metric, standard = str(hint["of"]), float(hint["standard"])
            error = 0.0
            for fault in self.faults:
                if fault.metric != metric or not fault.active(tc):
                    continue
                if fault.type == "drift":
                    error += fault.p("rate_per_h") * (tc - fault.start_ms) / 3_600_000
                elif fault.type == "stuck":
                    past = [i for i in self.incidents if i.start_ms <= fault.start_ms]
                    now = [i for i in self.incidents if i.start_ms <= tc]
                    error += float(self.model.values(fault.start_ms, past)[metric]) - \
                        float(self.model.values(tc, now)[metric])
            jitter = float(hint.get("noise_pct", 0.0)) * self.model.gauss(self.ctx.key("check:" + name), tc)
            got = round(100.0 * error / standard + jitter, 1)
            if len(self._checked) > 64:
                self._checked.clear()
            self._checked[(name, tc)] = got
        return got

    def reading(self, t_ms: int) -> Reading:
        if self.incidents and not self.model.answers(
                t_ms, [i for i in self.incidents if i.start_ms - i.lead_ms <= t_ms]):
            return Reading(None, ERR_TIMEOUT, silent=True)
        for fault in self.faults:
            if not fault.active(t_ms):
                continue
            if fault.type in ("dead_device", "coverage_gap") or (fault.type == "dropout" and fault.hits(t_ms)):
                return Reading(None, ERR_TIMEOUT, silent=True)
            if fault.type == "modbus_exception":
                code = int(fault.p("code"))
                return Reading(None, exception_error(code), exception_code=code)
            if fault.type == "malformed_payload" and fault.hits(t_ms):
                payload = malformed_payload(self.profile, self.id, t_ms, self.engineering(t_ms))
                return Reading(None, payload_error(payload), malformed=True)
        values = self.engineering(t_ms)
        if self.is_mqtt:
            return Reading(dict(values))
        return Reading({name: self.quantise[name](v) for name, v in values.items() if name in self.quantise})

    def held(self, t_ms: int, step_ms: int) -> list[tuple[int, Values]]:
        """What an MQTT terminal held through a coverage gap that ended in the step up to
        t, to upload now: (time, values) of each report it would have sent (every step
        back from t that falls in the gap), oldest first."""
        out: list[tuple[int, Values]] = []
        for fault in self.faults:
            if fault.type != "coverage_gap" or not (t_ms - step_ms < fault.end_ms <= t_ms):
                continue
            k = (t_ms - fault.start_ms) // step_ms
            for j in range(k, 0, -1):
                tt = t_ms - j * step_ms
                if fault.start_ms <= tt < fault.end_ms:
                    out.append((tt, self.engineering(tt)))
        return out

    def backlog(self, t_ms: int, step_ms: int) -> list[Sample]:
        """The held reports (`held`) as the samples the edge agent publishes for them."""
        m = self.profile.measurement
        return [Sample(dev=self.id, m=m, t=tt, f=dict(values)) for tt, values in self.held(t_ms, step_ms)]

    def sample(self, t_ms: int) -> Sample | None:
        """The sample the edge agent publishes for a poll at t (None: MQTT silence)."""
        reading = self.reading(t_ms)
        measurement = self.profile.measurement
        if reading.values is None:
            if self.is_mqtt and reading.silent:
                return None
            return Sample(dev=self.id, m=measurement, t=t_ms, f={}, q="bad", err=reading.error)
        urgent = False
        for spec in self.profile.fields:
            if spec.urgent and spec.name in reading.values:
                value = reading.values[spec.name]
                last = self.urgent_last.get(spec.name, value)
                urgent = urgent or bool(value) or last != value
                self.urgent_last[spec.name] = value
        return Sample(dev=self.id, m=measurement, t=t_ms, f=reading.values, urgent=urgent)


@dataclass
class SimGateway:
    loaded: LoadedGateway
    devices: list[SimDevice]

    @property
    def name(self) -> str:
        return self.loaded.config.gateway

    @property
    def district(self) -> str:
        return self.loaded.config.district


class World:
    """All gateways and devices of a scenario for one seed."""

    def __init__(self, gateways: list[LoadedGateway], seed: int, epoch_ms: int = 0) -> None:
        self.seed = seed
        self.gateways: list[SimGateway] = []
        self.devices: dict[str, SimDevice] = {}
        quantisers: dict[str, Mapping[str, Quantiser]] = {}
        for loaded in gateways:
            cfg = loaded.config
            devs: list[SimDevice] = []
            for link, spec in cfg.devices():
                profile = loaded.profiles[spec.profile]
                if profile.profile not in quantisers:
                    quantisers[profile.profile] = modbus_quantisers(profile)
                where = (spec.location.lat, spec.location.lon) if spec.location is not None else None
                ctx = DeviceContext(spec.id, seed, profile, dict(spec.labels), epoch_ms=epoch_ms, location=where)
                dev = SimDevice(ctx, cfg.gateway, cfg.district, link, spec, model_for(ctx),
                                quantisers[profile.profile])
                devs.append(dev)
                self.devices[spec.id] = dev
            self.gateways.append(SimGateway(loaded, devs))
        peers = {dev_id: dev.model for dev_id, dev in self.devices.items()}
        for dev in self.devices.values():
            dev.ctx.peers = peers
