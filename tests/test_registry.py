"""The domain registry: the shipped families, what it refuses (each problem naming the
file, the key and the fix), and that nothing outside it names a family."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from rules import catalog
from rules.catalog import load_catalog
from simulators.incidents import INCIDENT_TYPES
from urbansense import registry
from urbansense.config import ConfigError, load_gateway, load_profile, load_profiles
from urbansense.identifiers import MEASUREMENTS

REPO = Path(__file__).resolve().parents[1]
CODE = ("urbansense", "edge", "ingest", "rules", "simulators", "dashboards")
NOISE = REPO / "tests" / "data" / "families" / "noise"


@pytest.fixture
def families_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """A registry re-read with URBANSENSE_FAMILIES as the test sets it, restored after."""
    registry.families.cache_clear()
    yield monkeypatch
    monkeypatch.delenv(registry.FAMILIES_ENV, raising=False)
    registry.families.cache_clear()


def _family(tmp_path: Path, name: str = "sewer", **changes: object) -> Path:
    folder = tmp_path / name
    folder.mkdir(parents=True)
    doc: dict[str, object] = {
        "family": name, "title": "Sewer", "fields": {"level_m": {"display": "Level", "unit": "m"}},
        "dashboard": {"title": "UrbanSense - Sewer"}, **changes}
    (folder / "family.yaml").write_text(yaml.safe_dump(doc))
    return folder


def _problems(monkeypatch: pytest.MonkeyPatch, path: Path) -> str:
    monkeypatch.setenv(registry.FAMILIES_ENV, str(path))
    registry.families.cache_clear()
    with pytest.raises(registry.RegistryError) as info:
        registry.families()
    return str(info.value)


def test_the_shipped_families_are_the_folders() -> None:
    folders = sorted(p.name for p in registry.FAMILIES_DIR.iterdir() if (p / "family.yaml").is_file())
    assert list(MEASUREMENTS) == folders == sorted(registry.families())
    assert len(folders) >= 5


def test_each_family_holds_its_profiles_rules_and_incidents() -> None:
    profiles = load_profiles()
    rules = load_catalog()
    for name, fam in registry.families().items():
        own = {p.stem for p in fam.profiles_dir.glob("*.yaml")}
        assert own and all(profiles[p].measurement == name for p in own), name
        # read on its own (a family's rule may name another's: radiation's rain gate)
        problems: list[str] = []
        assert fam.rules_file is not None, name
        assert {r.domain for r in catalog._load_file(fam.rules_file, problems)} == {name} and not problems
        for inc in fam.incidents:
            assert inc.profile in own, (name, inc.name)
            assert INCIDENT_TYPES[inc.name].domain == name
        assert set(fam.simulation) <= own, name
    assert {r.domain for r in rules} == {*registry.families(), "system"}


def test_no_code_names_a_family_or_its_profiles() -> None:
    """The acceptance bar of issue 15: family and profile names live in the registry's
    data; code asks the registry."""
    names = set(registry.families()) | set(registry.profile_names())
    found = []
    for root in CODE:
        for path in (REPO / root).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and node.value in names:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    assert not found, "\n".join(found)


def test_a_family_folder_is_added_by_the_environment(families_env: pytest.MonkeyPatch) -> None:
    families_env.setenv(registry.FAMILIES_ENV, str(NOISE.parent))
    assert "noise" in registry.families() and "water" in registry.families()
    assert registry.find_profile("noise-monitor") == NOISE / "profiles" / "noise-monitor.yaml"
    assert registry.family("noise").utility == "utility-noise"


def test_broken_families_are_refused_with_file_key_and_fix(families_env: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    text = _problems(families_env, tmp_path / "nowhere")
    assert "URBANSENSE_FAMILIES" in text and "does not exist" in text and "fix:" in text

    folder = _family(tmp_path / "a", family="drain")
    text = _problems(families_env, folder)
    assert "a/sewer/family.yaml: family: is 'drain' but the folder is 'sewer'" in text

    _family(tmp_path / "b", incidents=[{"name": "overflow", "profile": "sewer-gauge", "metric": "flow_m3h"}])
    assert "incident overflow: metric 'flow_m3h' is not one of the fields" in _problems(families_env, tmp_path / "b")

    _family(tmp_path / "c", incidents=[{"name": "overflow", "profile": "sewer-gauge", "metric": "level_m",
                                        "effect": {"to": {"level_m": "peak_m"}}}])
    assert "effect uses parameter 'peak_m'; give it a value under defaults" in _problems(families_env, tmp_path / "c")

    _family(tmp_path / "d", "water")
    assert "family 'water' is already defined" in _problems(families_env, tmp_path / "d")

    _family(tmp_path / "e", "alerts")
    assert "'alerts' is a measurement the pipeline writes itself" in _problems(families_env, tmp_path / "e")

    _family(tmp_path / "f", dashboard={"title": "x", "panels": [{"kind": "stat", "title": "n"}]})
    text = _problems(families_env, tmp_path / "f")
    assert "dashboard.panels.0" in text and "a stat needs field and condition, or query" in text

    _family(tmp_path / "g", fields={"level_m": {"display": "Level", "range": [5, 1]}})
    assert "range: low 5.0 is above high 1.0" in _problems(families_env, tmp_path / "g")


def _profile(tmp_path: Path, **field: object) -> Path:
    path = tmp_path / "pump-meter.yaml"
    path.write_text(yaml.safe_dump({
        "profile": "pump-meter", "measurement": "water", "protocol": "modbus",
        "fields": [{"name": "pressure_mpa", "address": 0, **field}]}))
    return path


def test_a_profile_reports_into_its_family(tmp_path: Path) -> None:
    # the family's unit is taken when the profile leaves it out; its urgent flag carries over
    assert load_profile(_profile(tmp_path)).fields[0].unit == "MPa"
    with pytest.raises(ConfigError) as info:
        load_profile(_profile(tmp_path, unit="bar"))
    assert "fields[0].unit: 'bar', but family 'water' measures pressure_mpa in 'MPa'" in str(info.value)
    assert "fix: convert with scale/offset" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_profile(_profile(tmp_path, writable=True))
    assert "family 'water' does not allow writing pressure_mpa" in str(info.value)
    assert "urbansense/families/water/family.yaml" in str(info.value)
    gas = registry.family("gas")
    detector = load_profile(gas.profiles_dir / "methane-detector.yaml")
    assert detector.field("alarm_level").urgent  # from the family


def test_a_gateway_finds_profiles_in_its_folder_first_then_in_the_families(tmp_path: Path) -> None:
    gw = tmp_path / "gw.yaml"
    gw.write_text(yaml.safe_dump({
        "gateway": "gw-1", "district": "d1", "profiles_dir": "profiles",
        "links": [{"name": "plc", "devices": [{"id": "wp-1", "profile": "water-supply-point"},
                                              {"id": "x-1", "profile": "water-supply-pont"}]}]}))
    with pytest.raises(ConfigError) as info:
        load_gateway(gw)
    text = str(info.value)
    assert "no profile 'water-supply-pont'" in text and "did you mean 'water-supply-point'" in text


def test_a_broken_family_stops_every_command_with_its_file_and_key(tmp_path: Path) -> None:
    _family(tmp_path, incidents=[{"name": "overflow", "profile": "sewer-gauge", "metric": "level_m",
                                  "effect": {"to": {"level_m": "peak_m"}}}])
    env = {**os.environ, registry.FAMILIES_ENV: str(tmp_path)}
    for args in (["rules", "check"], ["edge", "check", "--config", "firmware-configs/gateways/pd-gw-water.yaml"]):
        run = subprocess.run([sys.executable, "-m", "application.cli", *args], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 2, run.stderr
        assert "Traceback" not in run.stderr
        assert "sewer/family.yaml: incident overflow: effect uses parameter 'peak_m'" in run.stderr
