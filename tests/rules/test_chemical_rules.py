"""Rules whose levels are multiples of each device's own reference (`multiple_of`): a
toxic-gas detector's alarm at 100 % and 200 % of its gas's exposure limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from rules.catalog import load_catalog
from rules.engine import RulesEngine
from rules.inventory import InventoryDevice
from urbansense.config import ConfigError
from urbansense.schema import AlertEvent, TelemetryBatch

from .helpers import T0, batch, rule

TOXIC = rule(id="chemical.toxic_alarm", kind="threshold", measurement="chemical", metric="toxic_ppm",
             multiple_of="oel_ppm", op="above", threshold=1.0, critical_threshold=2.0, clear=0.8)
RISING = rule(id="chemical.toxic_rising", kind="forecast", measurement="chemical", metric="toxic_ppm",
              multiple_of="oel_ppm", op="above", limit=1.0, arm=0.2, window_s=300, buckets=10, min_points=4,
              horizon_s=1800, min_slope_per_min=0.01)


def dev(name: str, **labels: str) -> InventoryDevice:
    return InventoryDevice("pudong", "pd-gw-chem", name, "chemical", 31.3, 121.6, labels,
                           frozenset({"toxic_ppm", "alarm_level"}))


def run(engine: RulesEngine, batches: list[TelemetryBatch]) -> list[AlertEvent]:
    return [e for b in batches for e in engine.ingest([b])]


def test_each_detector_is_judged_against_its_own_gas_limit() -> None:
    eng = RulesEngine([TOXIC], [dev("cx-h2s", oel_ppm="7"), dev("cx-nh3", oel_ppm="28"), dev("cx-none")])
    ev = run(eng, [batch(T0, "chemical", {"cx-h2s": {"toxic_ppm": 10.0}, "cx-nh3": {"toxic_ppm": 10.0},
                                          "cx-none": {"toxic_ppm": 500.0}})])
    # 10 ppm is 143 % of hydrogen sulphide's 7 ppm and 36 % of ammonia's 28 ppm; a detector
    # without a limit is not judged
    assert [(e.device, e.severity, e.value, e.threshold) for e in ev] == [("cx-h2s", "warning", 10.0, 7.0)]
    ev = run(eng, [batch(T0 + 60_000, "chemical", {"cx-h2s": {"toxic_ppm": 15.0}, "cx-nh3": {"toxic_ppm": 57.0}})])
    assert sorted((e.device, e.severity, e.threshold) for e in ev) == [("cx-h2s", "critical", 7.0),
                                                                     ("cx-nh3", "critical", 28.0)]
    ev = run(eng, [batch(T0 + 120_000, "chemical", {"cx-h2s": {"toxic_ppm": 5.5}})])  # 79 %: below clear
    assert [(e.device, e.state) for e in ev] == [("cx-h2s", "resolved")]


def test_a_rise_is_forecast_on_the_limit_s_scale() -> None:
    eng = RulesEngine([RISING], [dev("cx-h2s", oel_ppm="7"), dev("cx-nh3", oel_ppm="28")])
    # both climb 0.3 ppm a minute: for hydrogen sulphide that is 4 % of its limit a minute,
    # its 7 ppm in minutes; for ammonia 1 % a minute from 6 % of its limit, not yet armed
    batches = [batch(T0 + m * 30_000, "chemical", {"cx-h2s": {"toxic_ppm": 1.5 + 0.15 * m},
                                                   "cx-nh3": {"toxic_ppm": 1.5 + 0.15 * m}}) for m in range(10)]
    ev = run(eng, batches)
    assert [(e.device, e.threshold) for e in ev] == [("cx-h2s", 7.0)]
    assert ev[0].forecast is not None and 0 < ev[0].forecast.eta_s < 1800


def test_a_rule_cannot_be_both_offset_and_relative(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text("""
domain: chemical
rules:
  - {id: chemical.x, kind: threshold, measurement: chemical, metric: toxic_ppm, op: above, threshold: 1,
     offset_from: oel_ppm, multiple_of: oel_ppm}
""")
    with pytest.raises(ConfigError, match="give offset_from or multiple_of, not both"):
        load_catalog(tmp_path)


def test_every_shipped_device_carries_the_labels_its_rules_judge_it_against() -> None:
    """The shipped catalogue over the shipped gateway configs: no rule is left without a
    device's reference (offset_from, multiple_of, target_label). Also caught a key named
    like another kind's: `relative_to` was the drift rules' (none / district_median), and
    the engine took "none" for a label every elevator lacked."""
    from rules.inventory import load_inventory
    from urbansense.paths import GATEWAYS_DIR

    inventory = load_inventory([GATEWAYS_DIR], None, strict=False)
    assert RulesEngine(load_catalog(), inventory).unlabelled() == []
