"""Compose a randomised district day from the families' incident catalogue.

`urbansense sim compose --district pudong --out day.yaml` writes a scenario of one day
(from noon, Shanghai time) on the district's shipped gateways:

- one incident of every kind whose device model the district has, at a time, for a
  length and with magnitudes the seed draws from the ranges each family gives its
  incidents (`vary`, `lasts`, `when` in family.yaml), on a device (or a `group_by` group:
  a circuit) the seed picks; an incident that can announce itself (`precursor`) does so
  on `precursor_share` of the seeds, for a length the seed draws;
- on every kind of sensor, faults that must never page a hazard: spikes, a stuck value
  and a drift on each numeric field of each device model read from a transducer (not on
  `derived` statistics) (types rotating over the
  fields), plus dropouts and a dead device per model, sized from the field's own
  simulated level, each on a device the seed picks;
- group sizes that change with the seed: every device model may lose one device from
  the day (`absent:`), one per group where its incidents strike a group (a circuit), so
  the peer and group rules meet odd and even groups;
- `--quiet`: the faults alone (a day without incidents, for false alarms).

The file holds ranges, not draws: every seed plays another day (`rules evaluate`).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from simulators.faults import SENSOR_FAULTS
from simulators.incidents import INCIDENT_TYPES
from simulators.scenario_file import SCENARIOS_DIR
from simulators.timeline import parse_duration
from simulators.world import World
from urbansense import registry
from urbansense.config import LoadedGateway, load_gateway
from urbansense.paths import GATEWAYS_DIR

#: The composed day starts at noon; these windows (hours from noon) hold on every date of
#: a Shanghai year: full daylight 12:00-16:30, full dark 19:45-04:00 (June's civil dusk is
#: about 19:30 and its civil dawn 04:20; December's civil dusk 17:20).
START_LOCAL = "12:00"
DAY_S = 24 * 3600.0
WINDOWS_H: dict[str, tuple[float, float]] = {"daylight": (0.0, 4.5), "dark": (7.75, 16.0), "any": (0.25, 23.75)}
#: Sensor-fault sizes, from the field's level over the simulated day: a spike of this
#: share of it, a drift of up to this share per hour (either way).
SPIKE_SHARE = 0.3
DRIFT_SHARE_PER_H = 0.1
STEP = "15s"
#: How long the shipped condition rules learn a device's baseline (learn_s): a composed
#: precursor starts after it.
LEARN_S = 3600.0


def district_gateways(district: str) -> list[Path]:
    """The district's gateways as the shipped scenarios model it (every gateway file of
    the district that a shipped scenario plays, but not a scenario's own stage: a
    scenario with `composed_days: false`), but those whose families keep out of
    composed days (`composed_days: false`)."""
    names: set[str] = set()
    for path in sorted(SCENARIOS_DIR.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        if raw.get("composed_days") is False:  # its gateways are its own stage
            continue
        names.update(g for g in raw.get("gateways", []) if isinstance(g, str) and not g.endswith((".yaml", ".yml")))
    files = [GATEWAYS_DIR / f"{n}.yaml" for n in sorted(names)]
    out = [p for p in files if p.exists() and (g := load_gateway(p)).config.district == district
           and any(_composed(g.profiles[d.profile].measurement) for _link, d in g.config.devices())]
    if not out:
        raise ValueError(f"no shipped scenario plays a gateway of district {district!r}\n"
                         "  fix: give a district the shipped scenarios use (pudong, xuhui), or name --gateway files")
    return out


def _levels(loaded: list[LoadedGateway]) -> dict[tuple[str, str], float]:
    """(profile, field) -> the median magnitude of the field over a simulated day on the
    profile's first device (the scale faults are sized by)."""
    world = World(loaded, seed=1, epoch_ms=0)
    first: dict[str, Any] = {}
    for dev in world.devices.values():
        first.setdefault(dev.profile.profile, dev)
    out: dict[tuple[str, str], float] = {}
    for name, dev in first.items():
        samples = [dev.engineering(int(h * 900_000)) for h in range(96)]
        for spec in dev.profile.fields:
            values = [abs(float(v[spec.name])) for v in samples
                      if isinstance(v.get(spec.name), int | float) and not isinstance(v.get(spec.name), bool)]
            if values:
                out[(name, spec.name)] = statistics.median(values)
    return out


def _window(when: str, lasts: tuple[float, float], earliest_s: float = 0.0) -> dict[str, list[str]]:
    lo, hi = WINDOWS_H[when]
    lo = max(lo, earliest_s / 3600)
    latest = hi * 3600 - lasts[1]
    if latest < lo * 3600:
        raise ValueError(f"an incident lasting up to {lasts[1] / 3600:g} h does not fit the {when} window")
    return {"between": [f"{int(lo * 3600)}s", f"{int(latest)}s"]}


def _composed(measurement: str) -> bool:
    fam = registry.families().get(measurement)
    return fam is None or fam.composed_days


def _numeric_fields(loaded: list[LoadedGateway], profile: str) -> list[str]:
    for g in loaded:
        if profile in g.profiles:
            fam = registry.family(g.profiles[profile].measurement)
            return [f.name for f in g.profiles[profile].fields if (info := fam.fields.get(f.name)) is not None
                    and info.type == "float" and not info.derived]
    return []


def compose_day(gateway_paths: Sequence[Path], name: str, *, quiet: bool = False) -> dict[str, Any]:
    """The scenario (as the YAML mapping) of a randomised day on these gateways."""
    loaded = [load_gateway(p) for p in gateway_paths]
    profiles: dict[str, str] = {}  # profile -> protocol
    for g in loaded:
        for _link, d in g.config.devices():
            profiles.setdefault(d.profile, g.profiles[d.profile].protocol)
    incidents: list[dict[str, Any]] = []
    if not quiet:
        for kind, itype in INCIDENT_TYPES.items():
            if itype.profile not in profiles or itype.emergent:  # emergent: found in the data, not drawn
                continue
            _fam, spec = registry.incident_kinds()[kind]
            lasts = (parse_duration(spec.lasts[0]), parse_duration(spec.lasts[1]))
            lead = (parse_duration(spec.precursor[0]), parse_duration(spec.precursor[1])) if spec.precursor else None
            # A precursor begins after the rules have learnt the device's baseline, and in
            # the incident's own window (a cut lamp shows only while lamps are switched on).
            earliest = max(LEARN_S, WINDOWS_H[spec.when][0] * 3600) + lead[1] if lead else 0.0
            entry: dict[str, Any] = {"type": kind, "profile": itype.profile,
                                     "at": _window(spec.when, lasts, earliest),
                                     "duration": {"between": [f"{int(lasts[0])}s", f"{int(lasts[1])}s"]}}
            if itype.group:
                if spec.group_by:
                    entry["pick_group"] = spec.group_by
            else:
                entry["pick"] = 1
            params: dict[str, Any] = {k: {"between": [lo, hi]} for k, (lo, hi) in spec.vary.items()}
            if lead:
                params["precursor_s"] = {"between": list(lead), "chance": spec.precursor_share}
            if params:
                entry["params"] = params
            incidents.append(entry)
    levels = _levels(loaded)
    faults: list[dict[str, Any]] = []
    hours = {"between": ["1800s", "10800s"]}
    anywhere = {"between": ["900s", f"{int(DAY_S - 3 * 3600 - 900)}s"]}
    for profile, protocol in profiles.items():
        fields = _numeric_fields(loaded, profile)
        for i, kind in enumerate(SENSOR_FAULTS if fields else ()):
            for metric in fields[i::len(SENSOR_FAULTS)] or [fields[i % len(fields)]]:
                scale = levels.get((profile, metric)) or 1.0
                entry = {"type": kind, "profile": profile, "pick": 1, "metric": metric, "at": anywhere,
                         "duration": hours}
                if kind == "spikes":
                    entry["params"] = {"probability": {"between": [0.005, 0.03]},
                                       "magnitude": round(SPIKE_SHARE * scale, 4)}
                elif kind == "drift":
                    rate = round(DRIFT_SHARE_PER_H * scale, 4)
                    entry["params"] = {"rate_per_h": {"between": [-rate, rate]}}
                faults.append(entry)
        faults.append({"type": "dropout", "profile": profile, "pick": 1, "at": anywhere, "duration": hours,
                       "params": {"probability": {"between": [0.1, 0.4]}}})
        faults.append({"type": "dead_device", "profile": profile, "pick": 1, "at": anywhere,
                       "duration": {"between": ["1200s", "7200s"]}})
        if protocol == "mqtt":
            faults.append({"type": "malformed_payload", "profile": profile, "pick": 1, "at": anywhere,
                           "duration": hours, "params": {"probability": {"between": [0.1, 0.5]}}})
    absent: list[dict[str, Any]] = []
    for profile in profiles:
        per = next((spec.group_by for kind, (_f, spec) in registry.incident_kinds().items()
                    if spec.group_by and INCIDENT_TYPES[kind].profile == profile), None)
        absent.append({"profile": profile, **({"per": per} if per else {}), "up_to": 1})
    return {
        "scenario": name,
        "description": ("a randomised day: faults on every kind of sensor, no incident" if quiet else
                        "a randomised day: one incident of every kind, faults on every kind of sensor"),
        "duration": "24h",
        "step": STEP,
        "start_local": START_LOCAL,
        "speed": 288,
        "gateways": [_gateway_name(p) for p in gateway_paths],
        "incidents": incidents,
        "faults": faults,
        "absent": absent,
    }


def _gateway_name(path: Path) -> str:
    """A shipped gateway by its name (the scenario stays portable), any other by its path."""
    return path.stem if path.resolve().parent == GATEWAYS_DIR.resolve() else str(path.resolve())


def write_day(out: Path, gateway_paths: Sequence[Path], name: str, *, quiet: bool = False) -> Path:
    doc = compose_day(gateway_paths, name, quiet=quiet)
    header = (f"# {doc['description']}.\n# Written by `urbansense sim compose`; every seed draws its own day:\n"
              f"#   urbansense rules evaluate --scenario {out} --seeds 20\n")
    out.write_text(header + yaml.safe_dump(doc, sort_keys=False, width=110))
    return out
