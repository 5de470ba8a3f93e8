"""Scenario files: the YAML format, its checks, and incidents and faults resolved to
devices. `simulators/example-scenario.yaml` shows every option.

An event may leave its time, length, magnitudes and place to chance: `at`, `duration`
and any of `params` may be `{between: [low, high]}`, and `pick: N` (or `pick_group:
LABEL`) chooses N devices (or every device sharing one value of LABEL) out of those the
selection names. The seed decides: `events_for(seed)` draws them, the same seed always
the same way, so a randomised scenario plays as reproducibly as a fixed one.

`absent:` entries leave devices out of a seed's day, as if not installed (`up_to: N` of
the selection, or of each group sharing a value of `per`, at least `keep` staying), so
the rules meet groups of other sizes, odd and even, from seed to seed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from simulators import noise
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
from urbansense.ports import free_ports

SCENARIOS_DIR = Path(__file__).resolve().parent / "scenarios"
Duration = str | float


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Between(_Model):
    """A value the seed draws, uniformly between two bounds (durations or numbers); with
    `chance` below 1, only that share of seeds draws it, the others get `otherwise`
    (an incident that comes without a precursor)."""

    between: tuple[Duration, Duration]
    chance: float = Field(default=1.0, ge=0, le=1)
    otherwise: float = 0.0


class EventSpec(_Model):
    """One incident or fault in a scenario file."""

    type: str
    #: When it starts, from the scenario start (e.g. 2h30m), or {between: [1h, 5h]}.
    at: Duration | Between
    #: How long it lasts (default: to the end of the scenario).
    duration: Duration | Between | None = None
    #: Which device(s): one id, a list, or every device of `profile` with these `labels`.
    device: str | None = None
    devices: list[str] | None = None
    labels: dict[str, str] | None = None
    profile: str | None = None
    #: Draw this many of the selected devices (per seed).
    pick: int | None = Field(default=None, ge=1)
    #: Draw one value of this label among the selected devices and take every device
    #: that has it (a circuit, a cabinet), per seed.
    pick_group: str | None = None
    #: Sensor faults: the field they corrupt.
    metric: str | None = None
    params: dict[str, float | Between] = Field(default_factory=dict)
    #: Overrides the catalogue's hazard threshold (incidents).
    hazard_threshold: float | None = None
    note: str | None = None


class AbsentSpec(_Model):
    """Devices a seed leaves out of its day (not installed): between 0 and `up_to` of the
    selected devices, or of each group of them sharing a value of the label `per`."""

    device: str | None = None
    devices: list[str] | None = None
    labels: dict[str, str] | None = None
    profile: str | None = None
    per: str | None = None
    up_to: int = Field(ge=1)
    #: Devices that always stay in each group (group rules need two to compare).
    keep: int = Field(default=2, ge=1)


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
    #: False: the gateways only this scenario plays are its own stage (stations set up
    #: around a tank farm for its plume), not the district's standing ones that
    #: `urbansense sim compose` draws randomised days on.
    composed_days: bool = True
    incidents: list[EventSpec] = Field(default_factory=list)
    faults: list[EventSpec] = Field(default_factory=list)
    absent: list[AbsentSpec] = Field(default_factory=list)

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
    #: The events the file fixes.
    events: list[ScheduledEvent]
    planner: EventPlanner
    #: The entries the seed draws: (kind, index in the file's list, entry).
    drawn: list[tuple[str, int, EventSpec]]
    #: The absent entries, each with the groups of devices it may leave out.
    absent: list[tuple[AbsentSpec, list[list[str]]]]

    def absent_for(self, seed: int) -> frozenset[str]:
        """The devices seed `seed` leaves out of its day (never one a fixed event names)."""
        fixed = {d for e in self.events for d in e.devices}
        out: set[str] = set()
        for i, (spec, groups) in enumerate(self.absent):
            key = noise.stream_key(seed, "scenario-absent", str(i))
            draws = iter(range(1_000_000))
            for members in groups:
                pool = sorted(d for d in members if d not in fixed and d not in out)
                room = sum(1 for d in members if d not in out) - spec.keep
                n = min(int(noise.uniform(key, next(draws)) * (spec.up_to + 1)), room, len(pool))
                for _ in range(max(0, n)):
                    out.add(pool.pop(min(len(pool) - 1, int(noise.uniform(key, next(draws)) * len(pool)))))
        return frozenset(out)

    def events_for(self, seed: int) -> list[ScheduledEvent]:
        """Every event of the scenario as seed `seed` plays it (never on an absent device)."""
        absent = self.absent_for(seed)
        out: list[ScheduledEvent] = []
        taken: dict[str, list[tuple[float, float]]] = {}

        def add(event: ScheduledEvent) -> None:
            out.append(event)
            for d in event.devices:
                taken.setdefault(d, []).append((event.at_s, event.at_s + event.duration_s))

        for event in self.events:
            add(event)
        for kind, i, ev in self.drawn:  # incidents first, as the file lists them
            add(self.planner.draw(kind, i, ev, seed, taken, absent))
        return out


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
        return _seconds(shown, value, where, problems)

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
        shipped = sorted({link.port for g in loaded for link in g.config.links if link.on_tcp_port})
        port_map = dict(zip(shipped, free_tcp_ports(len(shipped)), strict=True))
    for g in loaded:
        for link in g.config.links:
            if link.on_tcp_port:
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

    planner = EventPlanner(shown, total_s, inventory, profiles)
    events: list[ScheduledEvent] = []
    drawn: list[tuple[str, int, EventSpec]] = []
    for kind, entries in (("incident", spec.incidents), ("fault", spec.faults)):
        for i, ev in enumerate(entries):
            if planner.is_random(ev):
                # Checked now with its widest draws, drawn per seed later.
                if planner.check_random(kind, i, ev, problems):
                    drawn.append((kind, i, ev))
                continue
            scheduled = planner.schedule(kind, i, ev, None, problems)
            if scheduled is not None:
                events.append(scheduled)
    absent: list[tuple[AbsentSpec, list[list[str]]]] = []
    for i, entry in enumerate(spec.absent):
        where = f"{shown}: absent[{i}]"
        selected = _select(entry, inventory, where, problems)
        if entry.per is None:
            groups = [selected] if selected else []
        else:
            groups = list(_by_label(selected, entry.per, inventory, f"{where}.per", problems).values())
        absent.append((entry, groups))
    if problems:
        raise ConfigError(problems)
    return ParsedScenario(spec.scenario, path, spec.description, total_s, step_s, spec.start_local, spec.speed,
                          gateway_paths, loaded, events, planner, drawn, absent)


class EventPlanner:
    """Resolves a scenario's event entries to devices and times, checking each; draws the
    random parts of an entry from a seeded stream."""

    def __init__(self, shown: str, total_s: float, inventory: Mapping[str, tuple[str, dict[str, str], str]],
                 profiles: Mapping[str, Any]) -> None:
        self.shown = shown
        self.total_s = total_s
        self.inventory = inventory
        self.profiles = profiles

    @staticmethod
    def is_random(ev: EventSpec) -> bool:
        return (isinstance(ev.at, Between) or isinstance(ev.duration, Between) or ev.pick is not None
                or ev.pick_group is not None or any(isinstance(v, Between) for v in ev.params.values()))

    def check_random(self, kind: str, i: int, ev: EventSpec, problems: list[str]) -> bool:
        """Check a random entry at both ends of its ranges; True when it is sound."""
        before = len(problems)
        where = f"{self.shown}: {kind}s[{i}]"
        for name, value in [("at", ev.at), ("duration", ev.duration),
                            *((f"params.{k}", v) for k, v in ev.params.items())]:
            if isinstance(value, Between):
                lo, hi = (self._seconds(x, f"{kind}s[{i}].{name}", problems) for x in value.between)
                if hi < lo:
                    problems.append(f"{where}.{name}: between [{lo:g}, {hi:g}] runs backwards\n"
                                    "  fix: write the lower bound first")
        if ev.pick is not None and ev.pick_group is not None:
            problems.append(f"{where}: give pick or pick_group, not both")
        if len(problems) > before:
            return False
        # the earliest and shortest draw, then the latest and longest
        return all(self.schedule(kind, i, ev, _constant(end), problems) is not None for end in (0.0, 1.0 - 1e-12))

    def draw(self, kind: str, i: int, ev: EventSpec, seed: int,
             taken: Mapping[str, list[tuple[float, float]]] | None = None,
             absent: Set[str] = frozenset()) -> ScheduledEvent:
        """Draw the entry's random parts for `seed`; a pick prefers devices that no earlier
        event of the day has `taken` at an overlapping time (two incidents on one pipe
        would score each other; a dead controller hides an entrapment) and never takes an
        `absent` one."""
        key = noise.stream_key(seed, "scenario-draw", kind, str(i))
        count = iter(range(1_000_000))
        problems: list[str] = []
        out = self.schedule(kind, i, ev, lambda _name: noise.uniform(key, next(count)), problems, taken, absent)
        if out is None:  # checked at load time at both ends of every range
            raise ConfigError(problems)
        return out

    def _seconds(self, value: Duration, where: str, problems: list[str]) -> float:
        return _seconds(self.shown, value, where, problems)

    def schedule(self, kind: str, i: int, ev: EventSpec, u: Callable[[str], float] | None,
                 problems: list[str], taken: Mapping[str, list[tuple[float, float]]] | None = None,
                 absent: Set[str] = frozenset()) -> ScheduledEvent | None:
        """The entry as a scheduled event; `u(name)` gives a uniform [0, 1) draw for each
        random part (None: the entry has none)."""
        shown = self.shown
        where = f"{shown}: {kind}s[{i}]"

        def value(v: Duration | Between, name: str) -> float:
            if isinstance(v, Between):
                assert u is not None
                lo, hi = (self._seconds(x, f"{kind}s[{i}].{name}", problems) for x in v.between)
                if v.chance < 1.0 and u(name + ":chance") >= v.chance:
                    return v.otherwise
                return lo + (hi - lo) * u(name)
            return self._seconds(v, f"{kind}s[{i}].{name}", problems)

        known = INCIDENT_TYPES if kind == "incident" else FAULT_TYPES
        if ev.type not in known:
            problems.append(f"{where}.type: unknown {kind} {ev.type!r}\n  fix: one of {', '.join(known)}")
            return None
        at_s = value(ev.at, "at")
        dur_s = value(ev.duration, "duration") if ev.duration is not None else self.total_s - at_s
        total_s = self.total_s
        if at_s < 0 or dur_s <= 0 or at_s + dur_s > total_s + 1e-6:
            problems.append(f"{where}: runs from {at_s:.0f} s for {dur_s:.0f} s, outside the scenario "
                            f"(0..{total_s:.0f} s)\n  fix: move 'at' or shorten 'duration'")
            return None
        inventory, profiles = self.inventory, self.profiles
        devices = [d for d in _select(ev, inventory, where, problems) if d not in absent]
        if devices and (ev.pick is not None or ev.pick_group is not None):
            assert u is not None
            span = (at_s - TAKEN_MARGIN_S, at_s + dur_s + TAKEN_MARGIN_S)
            busy = {d for d, spans in (taken or {}).items() if any(a < span[1] and span[0] < b for a, b in spans)}
            devices = _pick(ev, devices, inventory, where, problems, u, busy)
        if not devices:
            return None
        drawn = {k: (value(v, f"params.{k}") if isinstance(v, Between) else float(v)) for k, v in ev.params.items()}
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
                return None
            if not group and len(devices) != 1:
                problems.append(f"{where}: {ev.type} hits one device, the selection has {len(devices)}\n"
                                "  fix: name one 'device', or add pick: 1")
                return None
            unknown = set(drawn) - set(itype.defaults)
            params = {**itype.defaults, **drawn}
            codes = profiles[itype.profile].conventions.get("fault_codes") if itype.profile in profiles else None
            if ev.type == "elevator_fault" and isinstance(codes, dict) and int(params["code"]) not in codes:
                problems.append(f"{where}.params.code: {params['code']:g} is not in {itype.profile}'s "
                                f"conventions.fault_codes\n  fix: one of "
                                + ", ".join(f"{k} {v}" for k, v in codes.items() if k))
                return None
            metric = metric or itype.metric
            threshold = ev.hazard_threshold if ev.hazard_threshold is not None else itype.hazard_threshold
        else:
            unknown = set(drawn) - set(FAULT_DEFAULTS[ev.type])
            params = {**FAULT_DEFAULTS[ev.type], **drawn}
            group = len(devices) > 1
            if ev.type not in LINK_FAULTS:
                if metric is None:
                    problems.append(f"{where}: a {ev.type} fault needs 'metric' (the field it corrupts)")
                    return None
                missing = [d for d in devices if metric not in {f.name for f in profiles[inventory[d][0]].fields}]
                if missing:
                    problems.append(f"{where}.metric: {', '.join(missing)} have no field {metric!r}")
                    return None
            proto = {inventory[d][2] for d in devices}
            if ev.type in ("malformed_payload", "coverage_gap") and proto != {"mqtt"}:
                problems.append(f"{where}: {ev.type} is an MQTT fault; select MQTT stations")
                return None
            if ev.type == "modbus_exception" and proto != {"modbus"}:
                problems.append(f"{where}: modbus_exception is a Modbus fault; select Modbus devices")
                return None
        if unknown:
            allowed = ", ".join(sorted(params)) or "(none)"
            problems.append(f"{where}.params: unknown {', '.join(sorted(unknown))}\n  fix: allowed: {allowed}")
            return None
        return ScheduledEvent(kind, ev.type, tuple(devices), group, at_s, dur_s, metric, params, threshold, ev.note)


#: A pick keeps this far (s) from another event's time on the same device.
TAKEN_MARGIN_S = 900.0


def _seconds(shown: str, value: Duration, where: str, problems: list[str]) -> float:
    """A duration in seconds; a bad one is a problem naming file and key (and reads 0)."""
    try:
        return parse_duration(value)
    except ValueError as exc:
        problems.append(f"{shown}: {where}: {exc}")
        return 0.0


def _constant(x: float) -> Callable[[str], float]:
    return lambda _name: x


def _pick(ev: EventSpec, devices: list[str], inventory: Mapping[str, tuple[str, dict[str, str], str]],
          where: str, problems: list[str], u: Callable[[str], float], taken: Set[str]) -> list[str]:
    """The seed's choice among the selected devices (pick) or their label values
    (pick_group), among those not `taken` while enough are left."""
    if ev.pick_group is not None:
        by_value = _by_label(devices, ev.pick_group, inventory, f"{where}.pick_group", problems)
        groups = [members for members in by_value.values() if not set(members) & taken] or list(by_value.values())
        if not groups:
            return []
        return groups[min(len(groups) - 1, int(u("pick_group") * len(groups)))]
    n = ev.pick or 1
    if n > len(devices):
        problems.append(f"{where}.pick: {n} of {len(devices)} selected devices\n  fix: pick at most {len(devices)}")
        return []
    pool = sorted(d for d in devices if d not in taken)
    if len(pool) < n:
        pool = sorted(devices)
    out: list[str] = []
    for k in range(n):
        out.append(pool.pop(min(len(pool) - 1, int(u(f"pick{k}") * len(pool)))))
    return out


def _by_label(devices: list[str], label: str, inventory: Mapping[str, tuple[str, dict[str, str], str]],
              where: str, problems: list[str]) -> dict[str, list[str]]:
    """The devices grouped by their value of `label`, in the order of the values; none
    carrying it (with devices to group) is a problem naming the key and the fix."""
    out: dict[str, list[str]] = {}
    for d in devices:
        if label in inventory[d][1]:
            out.setdefault(inventory[d][1][label], []).append(d)
    if devices and not out:
        problems.append(f"{where}: no selected device has a label {label!r}\n"
                        "  fix: name a label the devices carry (see their gateway config)")
    return dict(sorted(out.items()))


def free_tcp_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct loopback ports that are free right now (urbansense.ports)."""
    return free_ports(n, host)


def _select(ev: EventSpec | AbsentSpec, inventory: Mapping[str, tuple[str, dict[str, str], str]], where: str,
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
