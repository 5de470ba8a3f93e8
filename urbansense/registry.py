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
RESERVED_MEASUREMENTS = frozenset({"system", "alerts", "aqi", "gateway_status", "deadletter",
                                   "urbansense_ingest", "urbansense_rules"})

FieldType = Literal["float", "int", "bool", "string"]
HazardTest = Literal["below", "above", "true", "leak"]
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

    @model_validator(mode="after")
    def _ordered(self) -> FieldInfo:
        if self.range is not None and self.range[0] > self.range[1]:
            raise ValueError(f"range: low {self.range[0]} is above high {self.range[1]}")
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
    #: leak: the flow above normal demand reaches the threshold.
    hazard: HazardTest | None = None
    hazard_threshold: float | None = None
    #: Where the threshold comes from (a standard) or that it is a configurable default.
    source: str = ""
    #: Declarative families: the incident's shape. Families with a simulation hook
    #: implement their incidents in code and leave it out.
    effect: Effect | None = None


class DashboardHints(_Model):
    title: str
    #: File name under dashboards/json/ (without .json); default: the family's name.
    file: str | None = None
    #: A hand-written builder "module:function" returning the dashboard; without one the
    #: dashboard is generated from the fields (dashboards/builder/generated.py).
    builder: str | None = None
    #: Fields drawn in the "Long range" row from the 1 h roll-up.
    long_range: list[str] = Field(default_factory=list)


class Family(_Model):
    family: str = Field(pattern=_NAME)
    title: str
    description: str = ""
    #: The broker account that reads this family's alerts (deploy/mosquitto/acl).
    utility_account: str | None = None
    fields: dict[str, FieldInfo] = Field(min_length=1)
    incidents: list[IncidentKind] = Field(default_factory=list)
    #: profile -> "module:Class" of a Python model, only where physics needs code;
    #: other profiles are simulated from their fields' `sim:` hints.
    simulation: dict[str, str] = Field(default_factory=dict)
    dashboard: DashboardHints
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
        for name in self.dashboard.long_range:
            if name not in self.fields:
                raise ValueError(f"dashboard.long_range: {name!r} is not one of the fields")
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
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            problems.append(f"{_shown(path)}: {where}: {err['msg'].removeprefix('Value error, ')}")
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
