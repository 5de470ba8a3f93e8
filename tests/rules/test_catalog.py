"""Rule files: the shipped catalog loads; mistakes are reported with file, rule and key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rules.catalog import RULE_KINDS, load_catalog
from urbansense.config import ConfigError


def test_shipped_catalog_loads_with_every_kind() -> None:
    rules = load_catalog()
    kinds = {r.kind for r in rules}
    assert kinds == {"threshold", "rate", "forecast", "anomaly", "flatline", "drift", "deadman",
                     "gateway_offline", "gateway_clock", "composite", "aqi", "counter_check", "water_class",
                     "accumulation",
                     "tide_forecast", "geofence", "driving_time", "plume"}
    ids = {r.id for r in rules}
    for needed in ("gas.methane_alarm", "gas.methane_rising", "gas.overpressure", "water.pipe_burst",
                   "water.flow_creep", "elevator.trapped_passenger", "lighting.lamp_out", "lighting.day_burning",
                   "lighting.circuit_current_loss", "air.aqi", "system.gateway_offline", "flood.rainstorm_orange",
                   "river.compound_flood", "sea.storm_surge", "radiation.source_suspected"):
        assert needed in ids
    trapped = next(r for r in rules if r.id == "elevator.trapped_passenger")
    assert trapped.severity == "critical" and trapped.for_s == 0


def _write(tmp_path: Path, text: str, name: str = "water.yaml") -> Path:
    (tmp_path / name).write_text(text)
    return tmp_path


def problems_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    return "\n".join(info.value.problems)


def test_error_names_file_rule_and_key(tmp_path: Path) -> None:
    text = problems_of(_write(tmp_path, """
domain: water
rules:
  - id: water.ok
    measurement: water
    metric: pressure_mpa
    threshold: 0.2
  - id: water.bad
    kind: forecast
    measurement: water
    metric: pressure_mpa
    limit: 0.2
    window_s: 60
    horizon_s: -5
"""))
    assert "water.yaml: rule 'water.bad' (rules[1])" in text
    assert "horizon_s" in text


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    text = problems_of(_write(tmp_path, """
domain: water
rules:
  - id: water.low
    measurement: water
    metric: pressure_mpa
    threshhold: 0.2
"""))
    assert "rule 'water.low'" in text and "threshhold" in text and "threshold" in text


def test_unknown_kind_duplicate_id_and_missing_composite_part(tmp_path: Path) -> None:
    _write(tmp_path, """
domain: water
rules:
  - {id: water.a, kind: magic, measurement: water, metric: flow_m3h}
  - {id: water.b, measurement: water, metric: flow_m3h, threshold: 1}
  - {id: water.c, kind: composite, measurement: water, all_of: [water.b, water.nope]}
""")
    _write(tmp_path, """
domain: gas
rules:
  - {id: water.b, measurement: gas, metric: pressure_kpa, threshold: 1}
""", "gas.yaml")
    text = problems_of(tmp_path)
    assert "unknown kind 'magic'" in text
    assert "'water.b': already defined in" in text
    assert "all_of: no rule 'water.nope'" in text


def test_hysteresis_on_the_wrong_side_is_refused(tmp_path: Path) -> None:
    text = problems_of(_write(tmp_path, """
domain: water
rules:
  - {id: water.low, measurement: water, metric: pressure_mpa, op: below, threshold: 0.2, clear: 0.1}
"""))
    assert "clear (0.1) must be >= threshold (0.2)" in text


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    text = problems_of(_write(tmp_path, "domain: water\nrules:\n  - id: [unclosed\n"))
    assert "water.yaml:" in text and "YAML syntax error" in text


def test_aqi_inputs_are_checked_against_the_table(tmp_path: Path) -> None:
    text = problems_of(_write(
        tmp_path, "domain: air\nrules:\n  - {id: air.aqi, kind: aqi, measurement: air, inputs: [pm25/48h]}\n",
        "air.yaml"))
    assert "rule 'air.aqi'" in text and "no AQI row pm25/48h" in text


def test_example_rule_file_is_valid() -> None:
    rules = load_catalog(Path(__file__).resolve().parents[2] / "rules" / "example-rules.yaml")
    assert len(rules) == 10


def test_every_kind_has_an_example_and_a_row_in_the_readme() -> None:
    """Each rule kind the engine knows is shown somewhere a user copies from (the example
    file, or a shipped family or system file, which the example file points to) and has
    a row in rules/README.md's kind table: a new kind cannot go undocumented. (The
    example file once claimed a rule of every kind while nine were missing.)"""
    repo = Path(__file__).resolve().parents[2]
    shown = {rule.kind for rule in load_catalog(repo / "rules" / "example-rules.yaml")}
    shown |= {rule.kind for rule in load_catalog()}
    assert set(RULE_KINDS) - shown == set()
    readme = (repo / "rules" / "README.md").read_text()
    assert [kind for kind in RULE_KINDS if f"| `{kind}` |" not in readme] == []
    # the example file's header names, for each kind it cannot hold, a shipped rule of it
    header = (repo / "rules" / "example-rules.yaml").read_text().split("\ndomain:")[0]
    pointers = dict(re.findall(r"^#\s+([a-z_]+)\s+([a-z0-9_]+\.[a-z0-9_]+)\s+\S+$", header, re.MULTILINE))
    shipped = {rule.id: rule.kind for rule in load_catalog()}
    assert {kind: shipped.get(rule_id) for kind, rule_id in pointers.items()} == {kind: kind for kind in pointers}
    example_kinds = {rule.kind for rule in load_catalog(repo / "rules" / "example-rules.yaml")}
    assert set(RULE_KINDS) == example_kinds | set(pointers)
