"""The domain registry: every family of city elements, read from data.

A family is one folder (``urbansense/families/<family>/`` ships five)::

    family.yaml      measurement name, fields (unit, type, physical range, display name,
                     urgent, writable), incident kinds, simulation hooks, dashboard hints
    profiles/*.yaml  the device models that report into it (urbansense.config.Profile)
    rules.yaml       its early-warning rules (rules/README.md)

The folder's name is the family's name and its InfluxDB measurement. The environment
variable ``URBANSENSE_FAMILIES`` adds folders (``os.pathsep``-separated), each a family
folder or a folder of them: that is how a city adds a family without touching code
(docs/ADDING-A-FAMILY.md). Everything that needs the list of families (codec, config
loader, ingester, rules catalogue, ACL, dashboards, simulators) asks this module.

The registry is read once per process, on first use; a broken family file stops the
process with every problem named (file, key, fix).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

FAMILIES_DIR = Path(__file__).resolve().parent / "families"
FAMILIES_ENV = "URBANSENSE_FAMILIES"
FAMILY_FILE = "family.yaml"
RULES_FILE = "rules.yaml"
PROFILES_SUBDIR = "profiles"
_NAME = r"^[a-z][a-z0-9_]{0,62}$"
_METRIC = r"^[a-z][a-z0-9_]{0,62}$"
_PROFILE = r"^[a-z0-9][a-z0-9-]{0,62}$"
#: Names a family may not take: measurements the pipeline writes itself.
RESERVED_MEASUREMENTS = frozenset({"system", "alerts", "aqi", "water_class", "gateway_status", "deadletter",
                                   "urbansense_ingest", "urbansense_rules"})

FieldType = Literal["float", "int", "bool", "string"]
HazardTest = Literal["below", "above", "true", "leak", "model"]
Shape = Literal["step", "ramp", "exponential", "spike", "oscillation", "plume"]


class RegistryError(ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldInfo(_Model):
    """What a field means, whatever device reports it."""

    display: str
    unit: str | None = None
    type: FieldType = "float"
    #: Physical range [low, high]: what the quantity can be, not what is normal.
    range: tuple[float, float] | None = None
    description: str = ""
    #: Samples carrying it jump the store-and-forward backlog (a profile may add more).
    urgent: bool = False
    #: An operator (or an allowed rule) may write it through the command path.
    writable: bool = False
    #: The values a rule may write to it by itself, with no person confirming (a tunnel's
    #: fans on when gas rises: `respond:` in a rule). Anything else waits for an operator.
    unattended: tuple[bool | int | float, ...] = ()
    #: Computed by the device from its own operation (a statistic over its last trips, a
    #: metering chip's power factor), not read from a transducer that can stick or drift.
    derived: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FieldInfo:
        if self.range is not None and self.range[0] > self.range[1]:
            raise ValueError(f"range: low {self.range[0]} is above high {self.range[1]}")
        if self.unattended and not self.writable:
            raise ValueError("unattended: values for a field nobody may write; add writable: true or drop unattended")
        return self


class Effect(_Model):
    """A declarative incident shape: over the incident, an envelope e(t) in 0..1 moves
    fields towards (``to``) or by (``add``) a parameter's value (simulators/signals.py)."""

    shape: Shape = "ramp"
    #: field -> parameter name: value = base + (param - base) * e
    to: dict[str, str] = Field(default_factory=dict)
    #: field -> parameter name: value = base + param * e
    add: dict[str, str] = Field(default_factory=dict)


class IncidentKind(_Model):
    name: str = Field(pattern=_NAME)
    profile: str = Field(pattern=_PROFILE)
    #: The field whose hazard the ground truth judges.
    metric: str = Field(pattern=_METRIC)
    #: A group incident hits several devices at once (a circuit, a district).
    group: bool = False
    defaults: dict[str, float] = Field(default_factory=dict)
    #: below/above: metric below/above the threshold; true: a flag set or a code non-zero;
    #: leak: the flow above normal demand reaches the threshold; model: the family's
    #: simulation hook judges it (`FamilyModel.hazard`: a vehicle inside a zone it is
    #: banned from, over the limit of the zone it is in).
    hazard: HazardTest | None = None
    hazard_threshold: float | None = None
    #: A device label holding the device's own threshold (a river station's warning
    #: level); devices without it use hazard_threshold.
    hazard_label: str | None = Field(default=None, pattern=_METRIC)
    #: Where the threshold comes from (a standard) or that it is a configurable default.
    source: str = ""
    #: Declarative families: the incident's shape. Families with a simulation hook
    #: implement their incidents in code and leave it out.
    effect: Effect | None = None
    #: Randomised district days (`urbansense sim compose`): each parameter's range, ...
    vary: dict[str, tuple[float, float]] = Field(default_factory=dict)
    #: ... how long it lasts, from/to (durations as in scenario files: 20m, 2h) ...
    lasts: tuple[str | float, str | float] = ("30m", "2h")
    #: ... when it can be seen (lamps burning in daylight, a circuit dark at night) ...
    when: Literal["any", "daylight", "dark"] = "any"
    #: ... and for a group incident, the label whose devices it hits together (circuit);
    #: none: every device of the profile in the district.
    group_by: str | None = None
    #: An incident that can announce itself (its simulator degrades the device for its
    #: `precursor_s` parameter before it): how long that lasts, from/to, on a composed day
    #: ...
    precursor: tuple[str | float, str | float] | None = None
    #: ... and the share of incidents that come with one (the others strike unannounced).
    precursor_share: float = Field(default=0.75, ge=0, le=1)
    #: The incident is the failure of a sensor itself (a detector going blind): its
    #: sensor-health alerts detect it, where for other incidents they are listed apart.
    sensor: bool = False
    #: Who sees it: its own `devices`, or every device of its `district` (weather: a
    #: rainstorm reaches the rain gauges it is scheduled on, and also the streets, sumps,
    #: outfalls and radiation stations around them; each family's model decides what it
    #: does to them).
    felt_by: Literal["devices", "district"] = "devices"
    #: Weather the rules must live with, not report (light rain): no detection is asked
    #: for it, and a hazard alert it causes is a false alarm.
    benign: bool = False
    #: Not scheduled but found in the simulated data: an episode wherever `metric` passes
    #: the hazard threshold (a street flooding under the rain, a sewer overflowing), from
    #: where it last left `onset` before that to where it is back there. Warnings may
    #: come from the start of the district-wide incident behind it (the rain).
    emergent: bool = False
    onset: float | None = None
    #: ... or from where it last left its device's hazard threshold plus this (-0.8: a
    #: river station's episode begins 0.8 m under its own warning level).
    onset_offset: float | None = None

    @model_validator(mode="after")
    def _varies_known(self) -> IncidentKind:
        unknown = set(self.vary) - set(self.defaults)
        if self.precursor is not None and "precursor_s" not in self.defaults:
            raise ValueError("precursor: give defaults a precursor_s (0: none) for scenarios to set")
        if unknown:
            raise ValueError(f"vary: {', '.join(sorted(unknown))} not in defaults (vary ranges a default parameter)")
        for k, (lo, hi) in self.vary.items():
            if lo > hi:
                raise ValueError(f"vary.{k}: low {lo} is above high {hi}")
        one_onset = (self.onset is None) != (self.onset_offset is None)
        if self.emergent and (self.hazard not in ("above", "below") or not one_onset):
            raise ValueError("emergent: give hazard (above or below) and one of onset (the level where its episode "
                             "begins) or onset_offset (the same from each device's hazard threshold)")
        return self


Steps = list[tuple[str, float | None]]


class PanelHint(_Model):
    """One panel of a family's dashboard (dashboards/builder/generated.py draws it).

    ``timeseries`` of a field by device (``agg`` per interval) or of a ``query``;
    ``stat``: how many devices' newest ``field`` meets ``condition`` (e.g. ``>= 20``),
    or one ``query``'s value; ``state``: a boolean or enum field's timeline, ``values``
    naming and colouring each state; ``table``: a ``query`` as a table (default: the
    latest value of every field by device); ``row``: a row title; ``aqi``: the AQI
    panels the rules engine's `aqi` rule feeds; ``water_class``: the surface-water class
    panels its `water_class` rule feeds; ``tracks``: a map of moving devices' tracks and
    latest positions (their `lat` and `lon` fields). A ``query`` may use {measurement} and
    {device_filter} (district and device variables)."""

    kind: Literal["timeseries", "stat", "state", "table", "row", "aqi", "water_class", "tracks"] = "timeseries"
    field: str | None = None
    title: str | None = None
    agg: Literal["mean", "max", "min", "last"] = "mean"
    #: Grafana unit id ("none": no unit); default: from the field's unit.
    unit: str | None = None
    #: Colour bands: [colour, from-value] pairs, the first from null.
    steps: Steps | None = None
    #: Colour bands at the AQI table's breakpoints of "pollutant/period" (e.g. pm25/24h).
    steps_from: str | None = None
    condition: str | None = None
    values: dict[str, tuple[str, str]] | None = None
    query: str | None = None
    alias: str | None = None
    description: str | None = None
    #: Width (of 24) and height; default width: 24 for a table, else 12.
    w: int | None = Field(default=None, ge=1, le=24)
    h: int = Field(default=8, ge=1, le=40)

    @model_validator(mode="before")
    @classmethod
    def _field_name(cls, raw: Any) -> Any:
        return {"field": raw} if isinstance(raw, str) else raw

    @model_validator(mode="after")
    def _complete(self) -> PanelHint:
        needs = {"stat": self.condition or self.query, "state": self.field and self.values,
                 "row": self.title, "timeseries": self.field or self.query}
        if self.kind in needs and not needs[self.kind]:
            raise ValueError({
                "stat": "a stat needs field and condition, or query",
                "state": "a state timeline needs field and values ({true: [label, colour], ...})",
                "row": "a row needs a title",
                "timeseries": "a time series needs field or query"}[self.kind])
        if self.condition and not self.field:
            raise ValueError("condition needs the field it tests")
        return self


class DashboardHints(_Model):
    title: str
    #: File name under dashboards/json/ (without .json); default: the family's name.
    file: str | None = None
    #: Grafana uid; default: urbansense-<family>.
    uid: str | None = None
    #: The "Now" panels; default: one per field (a time series, or a state timeline for
    #: a boolean field) and the latest values by device. Alerts, devices not answering,
    #: the map and the long-range row are always added.
    panels: list[PanelHint] = Field(default_factory=list)
    #: Fields drawn in the "Long range" row from the 1 h roll-up (a name, or a panel
    #: with steps).
    long_range: list[PanelHint] = Field(default_factory=list)


class Family(_Model):
    family: str = Field(pattern=_NAME)
    title: str
    description: str = ""
    #: The broker account that reads this family's alerts (deploy/mosquitto/acl).
    utility_account: str | None = None
    #: A field no profile of the family declares: stored as sent (`store`, the default:
    #: a vendor's extra diagnostics are kept, with whatever type InfluxDB first sees), or
    #: refused with a reason (`refuse`: only declared fields, each in its type).
    undeclared_fields: Literal["store", "refuse"] = "store"
    fields: dict[str, FieldInfo] = Field(min_length=1)
    incidents: list[IncidentKind] = Field(default_factory=list)
    #: profile -> "module:Class" of a Python model, only where physics needs code;
    #: other profiles are simulated from their fields' `sim:` hints.
    simulation: dict[str, str] = Field(default_factory=dict)
    dashboard: DashboardHints
    #: Randomised district days (`urbansense sim compose`) play this family's gateways,
    #: with a fault on every transducer field. False keeps them out, for a family whose
    #: rules cannot yet tell some sensor fault from a hazard (say which in family.yaml).
    composed_days: bool = True
    #: Where it was read from (set by the loader).
    folder: Path = Path()

    @model_validator(mode="after")
    def _consistent(self) -> Family:
        for inc in self.incidents:
            if inc.metric not in self.fields:
                raise ValueError(f"incident {inc.name}: metric {inc.metric!r} is not one of the fields")
            if inc.effect is not None:
                for target, param in (*inc.effect.to.items(), *inc.effect.add.items()):
                    if target not in self.fields:
                        raise ValueError(f"incident {inc.name}: effect names field {target!r}, "
                                         "which is not one of the fields")
                    if param not in inc.defaults:
                        raise ValueError(f"incident {inc.name}: effect uses parameter {param!r}; "
                                         "give it a value under defaults")
        for where, hints in (("panels", self.dashboard.panels), ("long_range", self.dashboard.long_range)):
            for i, hint in enumerate(hints):
                if hint.field is not None and hint.field not in self.fields:
                    raise ValueError(f"dashboard.{where}[{i}]: field {hint.field!r} is not one of the fields")
            if where == "long_range" and any(h.field is None for h in hints):
                raise ValueError("dashboard.long_range: each entry names a field")
        return self

    @property
    def rules_file(self) -> Path | None:
        p = self.folder / RULES_FILE
        return p if p.is_file() else None

    @property
    def profiles_dir(self) -> Path:
        return self.folder / PROFILES_SUBDIR

    @property
    def utility(self) -> str:
        return self.utility_account or f"utility-{self.family.replace('_', '-')}"

    @property
    def dashboard_file(self) -> str:
        return self.dashboard.file or self.family.replace("_", "-")

    @property
    def dashboard_uid(self) -> str:
        return self.dashboard.uid or f"urbansense-{self.family}"


def _search_path() -> list[Path]:
    extra = [Path(p) for p in os.environ.get(FAMILIES_ENV, "").split(os.pathsep) if p.strip()]
    return [FAMILIES_DIR, *extra]


def _family_folders(root: Path) -> Iterator[Path]:
    if (root / FAMILY_FILE).is_file():
        yield root
        return
    if root.is_dir():
        yield from sorted(p for p in root.iterdir() if (p / FAMILY_FILE).is_file())


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def read_family(folder: Path) -> Family:
    """One family folder, validated (not added to the registry)."""
    path = folder / FAMILY_FILE
    try:
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise RegistryError([f"{_shown(path)}: cannot read: {exc}"]) from None
    if not isinstance(raw, dict):
        raise RegistryError([f"{_shown(path)}: expected a mapping with family, title, fields, dashboard"])
    if raw.get("family") != folder.name:
        raise RegistryError([f"{_shown(path)}: family: is {raw.get('family')!r} but the folder is "
                             f"{folder.name!r}\n  fix: name the folder after the family"])
    try:
        return Family.model_validate({**raw, "folder": folder})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{_shown(path)}: {where}: {msg}" if where else f"{_shown(path)}: {msg}")
        raise RegistryError(problems) from None


@cache
def families() -> dict[str, Family]:
    """Every family, by name: the shipped ones, then those of URBANSENSE_FAMILIES."""
    found: dict[str, Family] = {}
    problems: list[str] = []
    for root in _search_path():
        if root != FAMILIES_DIR and not root.exists():
            problems.append(f"{FAMILIES_ENV}: {root} does not exist\n  fix: point it at a family "
                            "folder (one holding family.yaml) or a folder of them")
            continue
        for folder in _family_folders(root):
            try:
                fam = read_family(folder)
            except RegistryError as exc:
                problems.extend(exc.problems)
                continue
            if fam.family in RESERVED_MEASUREMENTS:
                problems.append(f"{_shown(folder / FAMILY_FILE)}: family: {fam.family!r} is a measurement "
                                "the pipeline writes itself\n  fix: choose another name")
            elif fam.family in found:
                problems.append(f"{_shown(folder / FAMILY_FILE)}: family {fam.family!r} is already "
                                f"defined in {_shown(found[fam.family].folder)}\n  fix: rename one")
            else:
                found[fam.family] = fam
    if problems:
        raise RegistryError(problems)
    return found


def family(name: str) -> Family:
    try:
        return families()[name]
    except KeyError:
        raise KeyError(f"no family {name!r} (known: {', '.join(families())})") from None


def measurements() -> tuple[str, ...]:
    return tuple(families())


def profile_dirs() -> list[Path]:
    """The profile folders of every family, in registry order."""
    return [f.profiles_dir for f in families().values() if f.profiles_dir.is_dir()]


def find_profile(name: str) -> Path | None:
    """The registry's file for profile `name`, or None."""
    for d in profile_dirs():
        p = d / f"{name}.yaml"
        if p.is_file():
            return p
    return None


def profile_names() -> list[str]:
    return sorted(p.stem for d in profile_dirs() for p in d.glob("*.yaml"))


def rule_files() -> list[Path]:
    return [f.rules_file for f in families().values() if f.rules_file is not None]


def incident_kinds() -> dict[str, tuple[Family, IncidentKind]]:
    out: dict[str, tuple[Family, IncidentKind]] = {}
    for fam in families().values():
        for inc in fam.incidents:
            out[inc.name] = (fam, inc)
    return out
