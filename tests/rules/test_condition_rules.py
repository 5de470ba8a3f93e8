"""Condition rules (issue 17): a device against its own learnt baseline, maintenance
tickets scored as the earliest warning of the incident they announce, and a CUSUM that
forgets a huge excursion soon after it ends."""

from __future__ import annotations

import numpy as np

from application.backtest import score
from rules.engine import RulesEngine
from rules.inventory import InventoryDevice
from urbansense.schema import AlertEvent, Sample, TelemetryBatch

from .helpers import T0, rule, series


def _run(eng: RulesEngine, batches: list) -> list[AlertEvent]:
    out: list[AlertEvent] = []
    for b in batches:
        out += eng.ingest([b])
    return out


def _door(test: str) -> RulesEngine:
    return RulesEngine([rule(kind="drift", id="elevator.door_closing_slower", measurement="elevator",
                             metric="door_close_time_s", learn_s=3600, test=test, h=6, sigma_floor=0.02,
                             direction="up")])


def test_a_held_statistic_does_not_add_up_under_the_level_test() -> None:
    """After the learning hour the statistic holds at +2 sigma through a quiet night (no
    trips, no new value): a CUSUM adds (2 - k) on every sample and fires; the level test
    does not."""
    rng = np.random.default_rng(4)
    learn = list(2.3 + 0.03 * rng.standard_normal(360))  # 1 h at 10 s
    night = [2.3 + 2 * 0.03] * 720
    batches = series("elevator", "el-1", "door_close_time_s", learn + night)
    assert [e.state for e in _run(_door("cusum"), batches)][:1] == ["firing"]
    assert _run(_door("level"), batches) == []


def test_the_level_test_fires_on_a_wearing_door_and_clears_when_it_is_fixed() -> None:
    rng = np.random.default_rng(5)
    learn = list(2.3 + 0.03 * rng.standard_normal(360))
    wear = [2.3 + 2.0 * i / 720 + 0.03 * g for i, g in enumerate(rng.standard_normal(720))]
    fixed = list(2.3 + 0.03 * rng.standard_normal(60))
    events = _run(_door("level"), series("elevator", "el-1", "door_close_time_s", learn + wear + fixed))
    assert [e.state for e in events] == ["firing", "resolved"]
    fired_after_s = (events[0].t - T0) / 1000 - 3600
    assert fired_after_s < 0.2 * 7200, fired_after_s  # within the first fifth of the wear


def test_a_cusum_forgets_a_burst_and_finds_the_leak_after_it() -> None:
    """A burst (flow +150 for 90 min) and, hours later, a creeping leak on the same pipe:
    before the cap the burst's CUSUM held the alert until the leak was over."""
    eng = RulesEngine([rule(kind="drift", id="water.creep", measurement="water", metric="flow_m3h",
                            learn_s=3600, sigma_floor=1.0, k=0.5, h=8, direction="up")])
    rng = np.random.default_rng(6)

    def n(k: int) -> list[float]:
        return [float(x) for x in 100 + 2 * rng.standard_normal(k)]

    burst = [v + 150 for v in n(540)]
    quiet = n(1080)
    leak = [v + 4 * i * 10 / 3600 for i, v in enumerate(n(1440))]  # +4 m3/h per hour
    events = _run(eng, series("water", "wp-1", "flow_m3h", n(360) + burst + quiet + leak))
    states = [(e.state, (e.t - T0) / 3_600_000) for e in events]
    assert [s for s, _h in states] == ["firing", "resolved", "firing"], states
    assert states[1][1] < 2.6  # resolved within minutes of the burst's end (2.5 h)
    assert states[2][1] > 5.0  # and the leak fires again


def test_a_maintenance_ticket_counts_from_the_precursor_and_stray_tickets_are_apart() -> None:
    inv = [InventoryDevice("pudong", "pd-gw-lift", d, "elevator") for d in ("el-1", "el-2")]
    start = T0 + 4 * 3_600_000
    truth = [{"kind": "incident", "type": "door_open_while_moving", "domain": "elevator", "district": "pudong",
              "device": "el-1", "devices": ["el-1"], "start": start, "warn_from": start - 7_200_000,
              "end": start + 1_800_000, "hazard_crossed_at": start}]

    def ticket(device: str, hours: float) -> AlertEvent:
        t = T0 + int(hours * 3_600_000)
        return AlertEvent(f"elevator.door_wear:pudong:{device}", "elevator.door_wear", "elevator", "info", "firing",
                          "pudong", device, None, None, None, t, t, "")

    events = [ticket("el-1", 2.5), ticket("el-2", 3.0)]
    result = score("t", truth, events, inv, T0, T0 + 8 * 3_600_000, maintenance=frozenset({"elevator.door_wear"}))
    inc = result.incidents[0]
    assert inc.detected and inc.lead_time_s == 1.5 * 3600
    assert result.false_alarms == [] and [e.device for e in result.maintenance_unmatched] == ["el-2"]
    # before the precursor began, a ticket is not the incident's warning
    early = score("t", truth, [ticket("el-1", 1.0)], inv, T0, T0 + 8 * 3_600_000,
                  maintenance=frozenset({"elevator.door_wear"}))
    assert not early.incidents[0].detected and len(early.maintenance_unmatched) == 1


def _lamps(t: int, silent: set[str], circuits: dict[str, list[str]]) -> TelemetryBatch:
    samples = [Sample(d, "lighting", t, {"current_a": 0.7}) for ds in circuits.values() for d in ds if d not in silent]
    return TelemetryBatch("pd-gw-light", "pudong", 0, t, samples)


def test_a_whole_circuit_going_silent_is_one_critical_alert_and_one_dead_controller_is_not() -> None:
    circuits = {"c1": ["lc-01", "lc-02", "lc-03", "lc-04"], "c2": ["lc-05", "lc-06", "lc-07"]}
    inv = [InventoryDevice("pudong", "pd-gw-light", d, "lighting", labels={"circuit": c})
           for c, ds in circuits.items() for d in ds]
    from rules.catalog import load_catalog

    eng = RulesEngine([r for r in load_catalog() if r.id == "lighting.circuit_silent"], inv)
    events: list[AlertEvent] = []
    for k in range(60):  # 10 min at 10 s: lc-01 dead from minute 1, circuit c2 silent from minute 5
        t = T0 + k * 10_000
        silent = ({"lc-01"} if k >= 6 else set()) | (set(circuits["c2"]) if 30 <= k < 50 else set())
        events += eng.ingest([_lamps(t, silent, circuits)])
    assert [(e.state, e.device, e.severity) for e in events] == [
        ("firing", "c2", "critical"), ("resolved", "c2", "critical")], events
    assert (events[0].t - T0) / 1000 <= 30 * 10 + 60 + 10  # within its timeout of going silent
