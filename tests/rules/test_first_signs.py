"""The first signs of a cable theft and of a failing methane detector (issue 17), played
through the shipped rules and scored: a warning on the first cut of a circuit counts as
the theft's early warning, a ticket on a detector's sinking zero as its failure's, and a
detector's own fault alert detects its failure (the incident is the sensor)."""

from __future__ import annotations

from pathlib import Path

import yaml

from application.backtest import BacktestResult, run_scenario
from simulators.scenario import load_scenario

T_START = 1_780_000_000_000


def _play(tmp_path: Path, doc: dict[str, object]) -> BacktestResult:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    start = load_scenario(path).aligned_start_ms(T_START)
    return run_scenario(path, seed=1, start_ms=start)


def _by_place(result: BacktestResult) -> dict[str, object]:
    return {(s.record["labels"].get("circuit") or s.record["devices"][0]): s for s in result.incidents}


def test_the_first_cut_of_a_circuit_warns_of_the_theft(tmp_path: Path) -> None:
    result = _play(tmp_path, {
        "scenario": "theft", "duration": "3h", "step": "15s", "start_local": "21:00", "gateways": ["pd-gw-light"],
        "incidents": [{"type": "cable_theft", "labels": {"circuit": "pd-cab-02-c2"}, "at": "1h30m",
                       "duration": "1h", "params": {"precursor_s": 1200}},
                      {"type": "cable_theft", "labels": {"circuit": "pd-cab-01-c1"}, "at": "1h30m",
                       "duration": "1h"}]})
    scores = _by_place(result)
    warned, sudden = scores["pd-cab-02-c2"], scores["pd-cab-01-c1"]
    assert warned.detected and sudden.detected  # type: ignore[attr-defined]
    assert warned.first_alert.rule == "lighting.lamp_supply_lost"  # type: ignore[attr-defined]
    assert warned.first_alert.device == "lc-0116"  # type: ignore[attr-defined]  # the far lamp
    assert 15 * 60 < warned.lead_time_s < 20 * 60  # type: ignore[attr-defined]
    assert sudden.lead_time_s <= 60  # type: ignore[attr-defined]  # no first cut: seen when it happens
    assert result.false_alarms == []


def test_a_sinking_zero_is_a_ticket_before_the_detector_fails(tmp_path: Path) -> None:
    result = _play(tmp_path, {
        "scenario": "detector", "duration": "8h", "step": "15s", "gateways": ["pd-gw-gas"],
        "incidents": [{"type": "detector_failure", "device": "md-0101", "at": "6h", "duration": "1h",
                       "params": {"precursor_s": 10800, "zero_drift_lel_pct": 4}},
                      {"type": "detector_failure", "device": "md-0102", "at": "6h", "duration": "1h"}]})
    scores = _by_place(result)
    drifting, sudden = scores["md-0101"], scores["md-0102"]
    assert drifting.first_alert.rule == "gas.detector_zero_drift"  # type: ignore[attr-defined]
    assert drifting.lead_time_s > 3600  # type: ignore[attr-defined]
    # unannounced: its own fault alert (a health rule) detects it, at once
    assert sudden.detected and sudden.first_alert.rule == "gas.detector_fault"  # type: ignore[attr-defined]
    assert result.false_alarms == [] and result.maintenance_unmatched == []
