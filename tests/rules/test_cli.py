"""`urbansense rules ...` from the command line."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from application.cli import main
from application.stack import Stack
from urbansense import registry


def test_check_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check"]) == 0
    assert capsys.readouterr().out.startswith("ok: ")


def test_check_reports_file_rule_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "gas.yaml").write_text("domain: gas\nrules:\n  - {id: gas.x, measurement: gas, metric: m, "
                                       "threshold: high}\n")
    assert main(["rules", "check", "--rules", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "gas.yaml: rule 'gas.x' (rules[0])" in err and "threshold" in err


@pytest.mark.integration
def test_silence_add_list_expire(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    sid = f"t-{uuid.uuid4().hex[:8]}"
    assert main(["rules", "silence", "add", "--mqtt", stack.mqtt_url, "--id", sid, "--match", "rule=gas.*",
                 "--match", "district=pudong", "--for", "30m", "--comment", "works"]) == 0
    assert main(["rules", "silence", "list", "--mqtt", stack.mqtt_url]) == 0
    out = capsys.readouterr().out
    assert f"{sid}  active" in out and "rule=gas.* district=pudong" in out
    assert main(["rules", "silence", "expire", sid, "--mqtt", stack.mqtt_url]) == 0
    assert main(["rules", "silence", "list", "--mqtt", stack.mqtt_url]) == 0
    assert sid not in capsys.readouterr().out.split("removed")[-1]


def test_silence_add_refuses_bad_matchers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "silence", "add", "--match", "colour=red", "--mqtt", "mqtt://127.0.0.1:1"]) == 2
    assert "unknown label 'colour'" in capsys.readouterr().err


def test_sweep_fails_a_rule_set_that_misses_an_incident(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Water rules only: district-scale's gas leak goes undetected, on every date."""
    (tmp_path / "water.yaml").write_text((registry.family("water").folder / "rules.yaml").read_text())
    args = ["rules", "sweep", "--rules", str(tmp_path), "--scenario", "district-scale", "--date", "2026-06-21",
            "--workers", "1"]
    assert main([*args, "--json"]) == 1
    run = json.loads(capsys.readouterr().out.strip())
    assert (run["scenario"], run["date"], run["seed"], run["incidents"]) == ("district-scale", "2026-06-21", 1, 2)
    assert run["missed"] == ["gas_leak"] and run["violations"] == ["missed gas_leak at md-1042"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "2026-06-21 Sun" in out and "19:29" in out  # the date's dusk in Shanghai
    assert "district-scale 2026-06-21 seed 1: missed gas_leak at md-1042" in out
    assert "0 of 1 runs hold every property; 1 fail (above)" in out


def test_sweep_refuses_a_bad_date(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "sweep", "--date", "21/06/2026"]) == 2
    assert "--date: Invalid isoformat string: '21/06/2026' (write it as YYYY-MM-DD)" in capsys.readouterr().err
