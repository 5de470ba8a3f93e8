"""`urbansense rules evaluate` (application/evaluate.py): a randomised scenario played for
many seeds in worker processes, pooled per incident kind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from application.backtest import score
from application.evaluate import IncidentOutcome, SeedRun, date_for, evaluate, outcome, percentile, plot, pool
from rules.inventory import InventoryDevice
from urbansense.schema import AlertEvent

DATA = Path(__file__).resolve().parents[1] / "data"
SHORT = DATA / "random-short.yaml"
T0 = 1_780_000_000_000


def test_percentiles_interpolate_between_ranks() -> None:
    xs = [10.0, 20.0, 30.0, 40.0, 50.0]
    assert percentile(xs, 50) == 30.0
    assert percentile(xs, 10) == 14.0
    assert percentile(xs, 90) == 46.0
    assert percentile([7.0], 90) == 7.0
    assert percentile(list(reversed(xs)), 0) == 10.0


def test_seeds_play_on_dates_spread_over_the_year() -> None:
    dates = {date_for(s) for s in range(1, 21)}
    assert len(dates) == 20
    assert len({d.month for d in dates}) >= 10


def _alert(rule: str, device: str, minute: float, domain: str = "water") -> AlertEvent:
    t = T0 + int(minute * 60_000)
    return AlertEvent(f"{rule}:pudong:{device}", rule, domain, "warning", "firing", "pudong", device,
                      "pressure_mpa", None, None, t, t, "")


def test_a_hazard_alert_on_a_faulted_sensor_is_counted_unless_an_incident_explains_it() -> None:
    inventory = [InventoryDevice("pudong", "pd-gw-water", d, "water") for d in ("wp-0101", "wp-0102")]
    truth = [
        {"kind": "incident", "type": "pipe_burst", "domain": "water", "district": "pudong", "device": "wp-0101",
         "devices": ["wp-0101"], "start": T0, "end": T0 + 3_600_000, "hazard_crossed_at": T0 + 600_000},
        {"kind": "fault", "type": "spikes", "domain": "water", "district": "pudong", "device": "wp-0101",
         "devices": ["wp-0101"], "start": T0, "end": T0 + 3_600_000},
        {"kind": "fault", "type": "stuck", "domain": "water", "district": "pudong", "device": "wp-0102",
         "devices": ["wp-0102"], "start": T0, "end": T0 + 3_600_000},
    ]
    events = [_alert("water.pressure_falling", "wp-0101", 5),   # the burst's early warning
              _alert("water.pressure_falling", "wp-0102", 20),  # a stuck sensor paging a hazard
              _alert("water.pressure_stuck", "wp-0102", 25)]    # the health rule that should have
    health = frozenset({"water.pressure_stuck"})
    result = score("t", truth, events, inventory, T0, T0 + 7_200_000, health=health)
    run = outcome(result, health, 1, date_for(1), 0.0)
    assert run.fault_hazards == ["water.pressure_falling:pudong:wp-0102"]
    assert run.incidents[0].detected and run.incidents[0].lead_s == 300.0
    assert (run.faults, run.faults_found) == (2, 1)
    assert run.hazard_false_alarms == [] and run.health_false_alarms == []


def test_lead_is_also_pooled_over_the_incidents_that_had_a_precursor() -> None:
    inventory = [InventoryDevice("pudong", "pd-gw-lift", d, "elevator") for d in ("el-1", "el-2")]
    truth = [  # el-1's fault announced itself 30 min early, el-2's did not
        {"kind": "incident", "type": "elevator_fault", "domain": "elevator", "district": "pudong", "device": d,
         "devices": [d], "start": T0 + 3_600_000, "warn_from": T0 + 3_600_000 - pre, "end": T0 + 5_400_000,
         "hazard_crossed_at": T0 + 3_600_000} for d, pre in (("el-1", 1_800_000), ("el-2", 0))]
    events = [_alert("elevator.drive_current_rising", "el-1", 40, "elevator"),
              _alert("elevator.fault", "el-2", 61, "elevator")]
    result = score("t", truth, events, inventory, T0, T0 + 7_200_000, health=frozenset())
    run = outcome(result, frozenset(), 3, date_for(3), 0.0)
    by_dev = {i.device: i for i in run.incidents}
    assert by_dev["el-1"].announced and by_dev["el-1"].lead_s == 1200.0
    assert not by_dev["el-2"].announced and by_dev["el-2"].lead_s == -60.0

    def seed(n: int, leads: list[tuple[float, bool]]) -> SeedRun:
        incs = [IncidentOutcome("elevator_fault", f"el-{i}", True, lead, "r", ann)
                for i, (lead, ann) in enumerate(leads)]
        return SeedRun("t", n, date_for(n), 10.0, incs, [], [], [], [], 0, 0, 0.0)

    # three of five unannounced and late: the median over all is late, over the announced it is not
    report = pool("t", [seed(1, [(-60.0, False), (-30.0, False), (600.0, True)]),
                        seed(2, [(-10.0, False), (1200.0, True)])])
    st = report.kinds["elevator_fault"]
    assert st.lead(50) == -10.0 and st.announced == 2 and st.announced_lead(50) == 900.0
    assert report.late_kinds() == []
    doc = report.as_dict()["kinds"]["elevator_fault"]
    assert doc["announced"] == 2 and doc["announced_lead_min_p50"] == 15.0 and doc["lead_min_p50"] < 0
    late = pool("t", [seed(1, [(-60.0, True), (300.0, True), (-5.0, True)])])
    assert late.late_kinds() == ["elevator_fault"]


def test_evaluating_a_randomised_scenario_pools_its_seeds(tmp_path: Path) -> None:
    report = evaluate(SHORT, seeds=3, first_seed=5, workers=2)
    assert report.seeds == [5, 6, 7]
    assert set(report.kinds) == {"pipe_burst", "gas_leak"}
    for st in report.kinds.values():
        assert st.n == 3
        assert st.detected + len(st.missed) == 3
    # the leak is a ramp to 25 %LEL: warned before it is crossed on every seed
    leak = report.kinds["gas_leak"]
    p10 = leak.lead(10)
    assert leak.detected == 3 and len(leak.leads_s) == 3 and p10 is not None and p10 > 0
    devices = 10 + 12  # pd-gw-water and pd-gw-gas, 2 h a seed
    assert abs(report.device_hours - 3 * 2 * devices) < 1e-6, report.device_hours
    doc = report.as_dict()
    assert doc["kinds"]["gas_leak"]["detection_rate"] == 1.0
    assert doc["kinds"]["gas_leak"]["lead_min_p50"] > 0
    png = plot(report, tmp_path / "ev.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_command_prints_the_table_and_writes_the_report(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "application.cli", "rules", "evaluate", "--scenario", str(SHORT),
                          "--seeds", "2", "--workers", "1", "--json", str(tmp_path / "r.json"),
                          "--plot", str(tmp_path / "r.png")], capture_output=True, text=True, timeout=300)
    assert out.returncode in (0, 1), out.stderr
    assert "gas_leak" in out.stdout and "false alarms per 1,000 device-hours" in out.stdout
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["seeds"] == [1, 2] and doc["kinds"]["pipe_burst"]["incidents"] == 2
    assert (tmp_path / "r.png").stat().st_size > 1000
    bad = subprocess.run([sys.executable, "-m", "application.cli", "rules", "evaluate", "--scenario", str(SHORT),
                          "--seeds", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--seeds must be at least 1" in bad.stderr
