"""The config loader's errors name the file, the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from urbansense.config import ConfigError, load_gateway, load_profile, load_profiles
from urbansense.paths import GATEWAYS_DIR

PROFILE = """\
profile: test-meter
measurement: water
fields:
  - name: pressure_mpa
    table: holding
    address: 0
    type: float32
    order: CDAB
"""

GATEWAY = """\
gateway: gw-1
district: testville
profiles_dir: profiles
links:
  - name: plc-1
    host: 127.0.0.1
    port: 15020
    devices:
      - id: dev-1
        profile: test-meter
        unit: 1
"""


def write_tree(tmp_path: Path, gateway: str = GATEWAY, profile: str = PROFILE) -> Path:
    (tmp_path / "profiles").mkdir(exist_ok=True)
    (tmp_path / "profiles" / "test-meter.yaml").write_text(profile)
    path = tmp_path / "gw-1.yaml"
    path.write_text(gateway)
    return path


def problems(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_gateway(path)
    return str(info.value)


def test_shipped_configs_load() -> None:
    assert len(load_profiles()) >= 6
    for path in GATEWAYS_DIR.glob("*.yaml"):
        loaded = load_gateway(path)
        assert loaded.config.links


def test_good_config_loads(tmp_path: Path) -> None:
    loaded = load_gateway(write_tree(tmp_path))
    assert loaded.config.gateway == "gw-1"
    assert loaded.profiles["test-meter"].fields[0].order == "CDAB"


def test_bad_unit_names_file_key_and_fix(tmp_path: Path) -> None:
    text = problems(write_tree(tmp_path, GATEWAY.replace("unit: 1", "unit: 300")))
    assert "gw-1.yaml: links[0].devices[0].unit:" in text
    assert "less than or equal to 247" in text and "(got 300)" in text
    assert "fix: set it to the device's Modbus unit id" in text


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    text = problems(write_tree(tmp_path, GATEWAY.replace("    port: 15020", "    prot: 15020")))
    assert "links[0].prot: unknown key 'prot'" in text
    assert "did you mean 'port'?" in text


def test_bad_identifier(tmp_path: Path) -> None:
    text = problems(write_tree(tmp_path, GATEWAY.replace("id: dev-1", "id: Dev_1")))
    assert "links[0].devices[0].id: String should match pattern" in text
    assert "fix: use lower-case letters, digits and '-'" in text


def test_missing_profile_is_named_with_a_suggestion(tmp_path: Path) -> None:
    text = problems(write_tree(tmp_path, GATEWAY.replace("profile: test-meter", "profile: test-metre")))
    assert "links[0].devices[0].profile: no profile 'test-metre'" in text
    assert "did you mean 'test-meter'?" in text


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    text = problems(write_tree(tmp_path, GATEWAY.replace("district: testville", "district: [testville")))
    assert "gw-1.yaml:" in text and "YAML syntax error" in text
    assert ":3:" in text or ":4:" in text


def test_missing_required_key_and_all_problems_reported_together(tmp_path: Path) -> None:
    text = problems(write_tree(tmp_path, GATEWAY.replace("district: testville\n", "").replace("unit: 1", "unit: -1")))
    assert "district: is required but missing" in text
    assert "links[0].devices[0].unit:" in text


def test_duplicate_device_ids(tmp_path: Path) -> None:
    dup = GATEWAY + "      - id: dev-1\n        profile: test-meter\n        unit: 2\n"
    assert "device id 'dev-1' is used twice" in problems(write_tree(tmp_path, dup))


def test_profile_errors_name_the_profile_file(tmp_path: Path) -> None:
    bad = PROFILE.replace("type: float32", "type: float33")
    text = problems(write_tree(tmp_path, profile=bad))
    assert "test-meter.yaml: fields[0].type:" in text
    assert "fix: one of int16 uint16" in text


def test_profile_consistency_rules(tmp_path: Path) -> None:
    path = tmp_path / "test-meter.yaml"
    path.write_text(PROFILE.replace("table: holding", "table: coil"))
    with pytest.raises(ConfigError, match="table coil holds single bits: set type: bit"):
        load_profile(path)
    path.write_text(PROFILE.replace("    address: 0\n", ""))
    with pytest.raises(ConfigError, match="needs an 'address' in a modbus profile"):
        load_profile(path)
    path.write_text(PROFILE.replace("profile: test-meter", "profile: other-meter"))
    with pytest.raises(ConfigError, match=r"name the file other-meter\.yaml"):
        load_profile(path)


def test_file_not_found(tmp_path: Path) -> None:
    assert "file not found" in problems(tmp_path / "nope.yaml")
