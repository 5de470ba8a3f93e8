"""Rivers and lakes in the rules engine: levels judged against each station's own warning
level (`offset_from` a device label), and the GB 3838-2002 class per station
(`water_class`), its points, its alerts and what they name."""

from __future__ import annotations

import datetime as dt

from rules.engine import RulesEngine
from rules.inventory import InventoryDevice
from urbansense.schema import AlertEvent, TelemetryBatch

from .helpers import T0, batch, rule


def run(engine: RulesEngine, batches: list[TelemetryBatch]) -> list[AlertEvent]:
    return [e for b in batches for e in engine.ingest([b])]


def station(dev: str, **labels: str) -> InventoryDevice:
    return InventoryDevice("pudong", "gw-1", dev, "river", labels=labels)


STATIONS = [station("rv-bund", warning_level_m="4.55"), station("rv-minpu", warning_level_m="4.20"),
            station("rv-new")]  # a station whose warning level nobody has entered yet


def test_each_station_is_judged_against_its_own_warning_level() -> None:
    eng = RulesEngine([rule(id="river.level_warning", measurement="river", metric="level_m",
                            offset_from="warning_level_m", op="above", threshold=0, clear=-0.1)], STATIONS)
    levels = [4.3, 4.4, 4.6, 4.5, 4.4]  # over Minpu's 4.20 from the start, over the Bund's 4.55 once
    ev = run(eng, [batch(T0 + i * 60_000, "river", {d: {"level_m": v} for d in ("rv-bund", "rv-minpu", "rv-new")})
                   for i, v in enumerate(levels)])
    got = [(e.device, e.state, (e.t - T0) // 60_000) for e in ev]
    assert got == [("rv-minpu", "firing", 0), ("rv-bund", "firing", 2), ("rv-bund", "resolved", 4)]
    # the alert speaks in the station's own numbers
    assert ev[0].threshold == 4.2 and ev[0].value == 4.3
    assert ev[1].threshold == 4.55 and ev[1].value == 4.6
    # the hysteresis is relative too: 4.5 is within 0.1 m of the Bund's level and holds, 4.4 clears
    assert ev[2].value == 4.4


def test_a_forecast_warns_before_each_stations_own_level() -> None:
    eng = RulesEngine([rule(kind="forecast", id="river.level_rising", measurement="river", metric="level_m",
                            offset_from="warning_level_m", op="above", limit=0, arm=-0.6, window_s=1800,
                            buckets=30, min_points=12, horizon_s=3600, min_slope_per_min=0.004)], STATIONS)
    # both rise 0.6 m an hour from 3.5 m: Minpu (4.20) is within reach first, the Bund later
    ev = run(eng, [batch(T0 + i * 60_000, "river", {d: {"level_m": 3.5 + 0.01 * i}
                                                      for d in ("rv-bund", "rv-minpu", "rv-new")})
                   for i in range(100)])
    firing = [(e.device, (e.t - T0) // 60_000, e.threshold) for e in ev if e.state == "firing"]
    assert [f[0] for f in firing] == ["rv-minpu", "rv-bund"]
    (_, minpu_at, minpu_thr), (_, bund_at, bund_thr) = firing
    assert (minpu_thr, bund_thr) == (4.2, 4.55)
    assert minpu_at < bund_at and bund_at - minpu_at <= 40  # 0.35 m apart at 0.6 m/h: 35 min
    assert ev[0].forecast is not None and 0 < ev[0].forecast.eta_s <= 3600
    assert all(e.device != "rv-new" for e in ev)


CLEAN = {"do_mgl": 6.4, "codmn_mgl": 3.8, "nh3n_mgl": 0.55, "tp_mgl": 0.14, "ph": 7.5}


def class_engine(**kw: object) -> RulesEngine:
    inventory = [station("rv-1", target_class="III"), station("rv-2", target_class="II"),
                 station("lk-1", target_class="III", waterbody="lake")]
    return RulesEngine([rule(kind="water_class", id="river.water_class", measurement="river", window_s=3600,
                             target_label="target_class", write_every_s=300, **kw)], inventory)


def test_water_class_points_name_the_class_and_the_parameters_that_set_it() -> None:
    eng = class_engine()
    # rv-1 and rv-2 carry the same water (class III); the lake's phosphorus 0.14 is class V for a lake
    run(eng, [batch(T0 + i * 60_000, "river", {d: dict(CLEAN) for d in ("rv-1", "rv-2", "lk-1")})
              for i in range(6)])
    lines = eng.derived_lines()
    by_dev = {line.split("device=")[1].split(",")[0]: line for line in lines if line.startswith("water_class,")}
    assert set(by_dev) == {"rv-1", "rv-2", "lk-1"} and len(lines) == 6  # at 0 and 5 min
    # oxygen 6.4 and permanganate 3.8 are class II, ammonia 0.55 and phosphorus 0.14 class III
    assert 'class=3i,class_name="III",deciding="nh3n,tp",class_do=2i,class_codmn=2i,class_nh3n=3i,' \
           'class_tp=3i,class_ph=1i' in by_dev["rv-1"]
    assert "class_tp=5i" in by_dev["lk-1"] and 'class_name="V"' in by_dev["lk-1"]
    assert 'deciding="tp"' in by_dev["lk-1"]
    assert eng.derived_lines() == []  # drained


def test_water_class_alerts_past_each_stations_target_and_is_critical_worse_than_v() -> None:
    eng = class_engine(for_s=0)
    ev = run(eng, [batch(T0 + i * 60_000, "river", {"rv-1": dict(CLEAN), "rv-2": dict(CLEAN)}) for i in range(6)])
    # class III meets rv-1's target and misses rv-2's (II)
    assert [(e.device, e.state, e.severity) for e in ev] == [("rv-2", "firing", "warning")]
    assert ev[0].value == 3 and ev[0].threshold == 2
    assert ev[0].message == "rv-2 is class III under GB 3838-2002 (target class II), set by nh3n (nh3n_mgl), " \
                            "tp (tp_mgl)"
    # a discharge at rv-1: ammonia at 1.2 mg/L for an hour (class IV), then 4 mg/L for an
    # hour: the hourly mean passes class V
    ev = run(eng, [batch(T0 + (6 + i) * 60_000, "river", {"rv-1": dict(CLEAN, nh3n_mgl=1.2 if i < 60 else 4.0)})
                   for i in range(120)])
    rv1 = [(e.state, e.severity, e.value) for e in ev if e.device == "rv-1"]
    assert rv1 == [("firing", "warning", 4.0), ("firing", "critical", 6.0)]
    assert ev[-1].message.startswith("rv-1 is worse than V under GB 3838-2002 (target class III), set by nh3n")


def test_the_river_day_warns_of_each_incident_before_its_hazard_and_faults_page_nothing() -> None:
    """huangpu-river-day, seed 1, played offline: the discharge, the high water and the
    lake's hypoxia each warned before the hazard, no false alarm, and the drifting
    ammonia analyser named by its failed check, not paged as pollution."""
    from application.backtest import health_rules, run_scenario
    from application.evaluate import outcome
    from rules.catalog import load_catalog
    from tests.dates import pinned_start

    rules = load_catalog()
    result = run_scenario("huangpu-river-day", rules, seed=1, start_ms=pinned_start("huangpu-river-day"))
    assert sorted(s.record["type"] for s in result.incidents) == ["high_water", "hypoxia", "sewage_discharge"]
    for s in result.incidents:
        assert s.lead_time_s is not None and s.lead_time_s > 0, (s.record["type"], s.lead_time_s)
        first = s.first_alert
        assert first is not None and first.rule in (
            "river.ammonia_rising", "river.level_rising", "river.oxygen_falling"), first
    assert result.false_alarms == []
    health = health_rules(rules)
    run = outcome(result, health, 1, dt.date(2026, 1, 1), 0.0)
    assert run.fault_hazards == []
    drift = next(s for s in result.faults if s.record["type"] == "drift" and s.record["metric"] == "nh3n_mgl")
    assert any(e.rule == "river.nh3n_check_failed" for e in drift.alerts)


def test_a_station_without_its_label_is_named_with_the_fix() -> None:
    eng = RulesEngine([rule(id="river.level_warning", measurement="river", metric="level_m",
                            offset_from="warning_level_m", op="above", threshold=0),
                       rule(kind="water_class", id="river.water_class", measurement="river",
                            target_label="target_class")], STATIONS)
    assert eng.unlabelled() == [
        "rule river.level_warning: rv-new have no number in label 'warning_level_m'; the rule does not judge "
        "them (fix: add labels: {warning_level_m: ...} to each in its gateway config)",
        "rule river.water_class: rv-bund, rv-minpu, rv-new have no class in label 'target_class'; judged against "
        "class 3 (fix: add labels: {target_class: III} or the like to its gateway config)"]


def _first_warning(curvature: bool, levels: list[float]) -> int | None:
    eng = RulesEngine([rule(kind="forecast", id="river.level_rising", measurement="river", metric="level_m",
                            offset_from="warning_level_m", op="above", limit=0, arm=-0.8, window_s=3600,
                            buckets=30, min_points=15, horizon_s=3600, min_slope_per_min=0.002,
                            curvature=curvature)], STATIONS[1:2])
    ev = run(eng, [batch(T0 + i * 60_000, "river", {"rv-minpu": {"level_m": v}}) for i, v in enumerate(levels)])
    return next(((e.t - T0) // 60_000 for e in ev if e.state == "firing"), None)


def test_curvature_keeps_a_tide_turning_below_the_warning_level_quiet() -> None:
    import math

    # a spring tide at Minpu (warning 4.20): high water 4.0 m at minute 180, 1.5 m amplitude
    tide = [2.5 + 1.5 * math.cos(2 * math.pi * (i - 180) / 745) for i in range(200)]
    line = _first_warning(False, tide)
    assert line is not None  # a straight line through the flood tide runs past 4.20
    assert _first_warning(True, tide) is None  # the parabola turns at 4.0
    # the same tide 0.5 m higher (a surge): both warn, before it crosses 4.20
    surge = [v + 0.5 for v in tide]
    crossed = next(i for i, v in enumerate(surge) if v >= 4.2)
    bent = _first_warning(True, surge)
    assert bent is not None and bent < crossed


def test_curvature_never_hurries_a_warning_on_a_rise_speeding_up() -> None:
    # the level leaves a trough at minute 60 and speeds up: the parabola would reach the
    # warning level sooner than the line; the warning keeps the line's time
    levels = [3.4 + 0.00012 * max(0, i - 60) ** 2 for i in range(160)]
    line, bent = _first_warning(False, levels), _first_warning(True, levels)
    assert line is not None and bent is not None and bent >= line


def test_a_rule_with_labels_judges_only_the_devices_that_carry_them() -> None:
    inventory = [station("rv-1", waterbody="river"), station("lk-1", waterbody="lake")]
    eng = RulesEngine([rule(kind="flatline", id="river.level_stuck", measurement="river", metric="level_m",
                            tolerance=0.0005, suspect_s=600, fail_s=1200, labels={"waterbody": "river"})], inventory)
    # both levels stand still for 30 min: only the tidal station's gauge is suspect
    ev = run(eng, [batch(T0 + i * 60_000, "river", {"rv-1": {"level_m": 3.2}, "lk-1": {"level_m": 2.8}})
                   for i in range(30)])
    assert {e.device for e in ev} == {"rv-1"}


def test_a_long_list_of_unlabelled_stations_is_cut_short() -> None:
    many = [station(f"rv-{i:03d}") for i in range(40)]
    eng = RulesEngine([rule(id="river.level_warning", measurement="river", metric="level_m",
                            offset_from="warning_level_m", op="above", threshold=0)], many)
    assert eng.unlabelled() == [
        "rule river.level_warning: rv-000, rv-001, rv-002, rv-003, rv-004 and 35 more have no number in label "
        "'warning_level_m'; the rule does not judge them (fix: add labels: {warning_level_m: ...} to each in its "
        "gateway config)"]
