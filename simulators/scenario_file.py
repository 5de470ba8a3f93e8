"""Scenario files: the YAML format, its checks, and incidents and faults resolved to
devices. `simulators/example-scenario.yaml` shows every option."""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from simulators.faults import FAULT_DEFAULTS, FAULT_TYPES, LINK_FAULTS
from simulators.incidents import INCIDENT_TYPES
from simulators.timeline import parse_duration
from urbansense.config import (
    ConfigError,
    LoadedGateway,
    format_validation_error,
    load_gateway,
    read_yaml,
)
from urbansense.identifiers import ID_PATTERN
from urbansense.paths import GATEWAYS_DIR

SCENARIOS_DIR = Path(__file__).resolve().parent / "scenarios"
Duration = str | float


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EventSpec(_Model):
    """One incident or fault in a scenario file."""

    type: str
    #: When it starts, from the scenario start (e.g. 2h30m).
    at: Duration
    #: How long it lasts (default: to the end of the scenario).
    duration: Duration | None = None
    #: Which device(s): one id, a list, or every device of `profile` with these `labels`.
    device: str | None = None
    devices: list[str] | None = None
    labels: dict[str, str] | None = None
    profile: str | None = None
    #: Sensor faults: the field they corrupt.
    metric: str | None = None
    params: dict[str, float] = Field(default_factory=dict)
    #: Overrides the catalogue's hazard threshold (incidents).
    hazard_threshold: float | None = None
    note: str | None = None


class ScenarioFile(_Model):
    scenario: str = Field(pattern=ID_PATTERN)
    description: str = ""
    duration: Duration
    #: Offline poll period in event time (one sample per device per step).
    step: Duration = 10
    #: Local Shanghai time of day the scenario is written for ("HH:MM"), e.g. so that
    #: day-burning falls in daylight; default_start_ms() aligns to it.
    start_local: str | None = None
    #: Suggested --speed (the scenario's length divided by a pleasant watching time).
    speed: float = Field(default=60.0, gt=0)
    gateways: list[str] = Field(min_length=1)
    incidents: list[EventSpec] = Field(default_factory=list)
    faults: list[EventSpec] = Field(default_factory=list)

    @field_validator("start_local")
    @classmethod
    def _hhmm(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                dt.time.fromisoformat(v)
            except ValueError:
                raise ValueError(f"start_local must be HH:MM local Shanghai time, got {v!r}") from None
        return v


@dataclass(frozen=True)
class ScheduledEvent:
    """An incident or fault resolved to devices, on the scenario's own time axis."""

    kind: str  # incident | fault
    type: str
    devices: tuple[str, ...]
    group: bool
    at_s: float
    duration_s: float
    metric: str | None
    params: Mapping[str, float]
    hazard_threshold: float | None
    note: str | None = None


@dataclass
class ParsedScenario:
    name: str
    path: Path
    description: str
    duration_s: float
    step_s: float
    start_local: str | None
    speed: float
    gateway_paths: list[Path]
    loaded: list[LoadedGateway]
    events: list[ScheduledEvent]


def _display(path: Path) -> str:
    """The path as the user would type it (relative to the working directory if inside)."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def resolve_scenario_path(path_or_name: str | Path) -> Path:
    path = Path(path_or_name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return SCENARIOS_DIR / f"{path_or_name}.yaml"


def _gateway_path(name: str, scenario_path: Path) -> Path:
    if name.endswith((".yaml", ".yml")):
        p = Path(name)
        return p if p.is_absolute() else (scenario_path.parent / p)
    return GATEWAYS_DIR / f"{name}.yaml"


def parse_scenario(path_or_name: str | Path, *, port_offset: int = 0,
                   port_map: Mapping[int, int] | None = None, free_ports: bool = False) -> ParsedScenario:
    """Read and check a scenario file and its gateway configs; every problem is reported
    together, each naming the file, the entry and the fix."""
    path = resolve_scenario_path(path_or_name)
    shown = _display(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError([f"{shown}: expected a mapping at the top level"])
    try:
        spec = ScenarioFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(shown, ScenarioFile, exc, raw)) from None
    problems: list[str] = []

    def duration(value: Duration, where: str) -> float:
        try:
            return parse_duration(value)
        except ValueError as exc:
            problems.append(f"{shown}: {where}: {exc}")
            return 0.0

    total_s = duration(spec.duration, "duration")
    step_s = duration(spec.step, "step") or 10.0
    gateway_paths = [_gateway_path(g, path) for g in spec.gateways]
    loaded: list[LoadedGateway] = []
    for gp in gateway_paths:
        try:
            loaded.append(load_gateway(gp))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    if free_ports:
        shipped = sorted({link.port for g in loaded for link in g.config.links if link.transport == "tcp"})
        port_map = dict(zip(shipped, free_tcp_ports(len(shipped)), strict=True))
    for g in loaded:
        for link in g.config.links:
            if link.transport == "tcp":
                link.port = (port_map or {}).get(link.port, link.port + port_offset)
    # Inventory: id -> (profile, labels, protocol)
    inventory: dict[str, tuple[str, dict[str, str], str]] = {}
    for g in loaded:
        for _link, d in g.config.devices():
            if d.id in inventory:
                problems.append(f"{shown}: device {d.id!r} appears in two gateways\n"
                                "  fix: device ids must be unique across a scenario's gateways")
            inventory[d.id] = (d.profile, d.labels, g.profiles[d.profile].protocol)
    profiles = {name: p for g in loaded for name, p in g.profiles.items()}

    events: list[ScheduledEvent] = []
    for kind, entries in (("incident", spec.incidents), ("fault", spec.faults)):
        for i, ev in enumerate(entries):
            where = f"{shown}: {kind}s[{i}]"
            known = INCIDENT_TYPES if kind == "incident" else FAULT_TYPES
            if ev.type not in known:
                problems.append(f"{where}.type: unknown {kind} {ev.type!r}\n  fix: one of {', '.join(known)}")
                continue
            at_s = duration(ev.at, f"{kind}s[{i}].at")
            dur_s = duration(ev.duration, f"{kind}s[{i}].duration") if ev.duration is not None \
                else total_s - at_s
            if at_s < 0 or dur_s <= 0 or at_s + dur_s > total_s + 1e-6:
                problems.append(f"{where}: runs from {at_s:.0f} s for {dur_s:.0f} s, outside the scenario "
                                f"(0..{total_s:.0f} s)\n  fix: move 'at' or shorten 'duration'")
                continue
            devices = _select(ev, inventory, where, problems)
            if not devices:
                continue
            params: dict[str, float]
            metric = ev.metric
            threshold = None
            group = False
            if kind == "incident":
                itype = INCIDENT_TYPES[ev.type]
                group = itype.group
                wrong = [d for d in devices if inventory[d][0] != itype.profile]
                if wrong:
                    problems.append(f"{where}: {ev.type} happens on {itype.profile} devices; "
                                    f"{', '.join(wrong)} are not\n  fix: select {itype.profile} devices")
                    continue
                if not group and len(devices) != 1:
                    problems.append(f"{where}: {ev.type} hits one device, the selection has {len(devices)}\n"
                                    "  fix: name one 'device'")
                    continue
                unknown = set(ev.params) - set(itype.defaults)
                params = {**itype.defaults, **ev.params}
                codes = profiles[itype.profile].conventions.get("fault_codes") if itype.profile in profiles else None
                if ev.type == "elevator_fault" and isinstance(codes, dict) and int(params["code"]) not in codes:
                    problems.append(f"{where}.params.code: {params['code']:g} is not in {itype.profile}'s "
                                    f"conventions.fault_codes\n  fix: one of "
                                    + ", ".join(f"{k} {v}" for k, v in codes.items() if k))
                    continue
                metric = metric or itype.metric
                threshold = ev.hazard_threshold if ev.hazard_threshold is not None else itype.hazard_threshold
            else:
                unknown = set(ev.params) - set(FAULT_DEFAULTS[ev.type])
                params = {**FAULT_DEFAULTS[ev.type], **ev.params}
                group = len(devices) > 1
                if ev.type not in LINK_FAULTS:
                    if metric is None:
                        problems.append(f"{where}: a {ev.type} fault needs 'metric' (the field it corrupts)")
                        continue
                    missing = [d for d in devices if metric not in {f.name for f in profiles[inventory[d][0]].fields}]
                    if missing:
                        problems.append(f"{where}.metric: {', '.join(missing)} have no field {metric!r}")
                        continue
                proto = {inventory[d][2] for d in devices}
                if ev.type == "malformed_payload" and proto != {"mqtt"}:
                    problems.append(f"{where}: malformed_payload is an MQTT fault; select MQTT stations")
                    continue
                if ev.type == "modbus_exception" and proto != {"modbus"}:
                    problems.append(f"{where}: modbus_exception is a Modbus fault; select Modbus devices")
                    continue
            if unknown:
                allowed = ", ".join(sorted(params)) or "(none)"
                problems.append(f"{where}.params: unknown {', '.join(sorted(unknown))}\n  fix: allowed: {allowed}")
                continue
            events.append(ScheduledEvent(kind, ev.type, tuple(devices), group, at_s, dur_s, metric, params,
                                         threshold, ev.note))
    if problems:
        raise ConfigError(problems)
    return ParsedScenario(spec.scenario, path, spec.description, total_s, step_s, spec.start_local, spec.speed,
                          gateway_paths, loaded, events)


def free_tcp_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct loopback ports that are free right now (held open together while
    choosing, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            socks.append(sock)
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _select(ev: EventSpec, inventory: Mapping[str, tuple[str, dict[str, str], str]], where: str,
            problems: list[str]) -> list[str]:
    chosen: list[str] = []
    if ev.device:
        chosen.append(ev.device)
    chosen.extend(ev.devices or [])
    if not chosen and (ev.labels or ev.profile):
        chosen = [d for d, (prof, labels, _p) in inventory.items()
                  if (ev.profile is None or prof == ev.profile)
                  and all(labels.get(k) == v for k, v in (ev.labels or {}).items())]
        if not chosen:
            problems.append(f"{where}: no device matches profile={ev.profile} labels={ev.labels}")
        return chosen
    if not chosen:
        problems.append(f"{where}: say where it happens: device, devices, or labels/profile")
        return []
    unknown = [d for d in chosen if d not in inventory]
    if unknown:
        problems.append(f"{where}: unknown device(s) {', '.join(unknown)}\n"
                        "  fix: use ids from the scenario's gateway configs")
        return []
    return chosen
