"""A sensor under suspicion raises a sensor-health alert, not an early warning (issue 17).

`water.flow_meter_mismatch` (kind counter_check) compares the flow transmitter with its
meter's own totaliser; while it suspects the transmitter, early-warning and statistical
rules on flow_m3h (here a CUSUM creep rule) hold. A real leak moves both, so it still
warns. Plain thresholds are never held (a standard's set point)."""

from __future__ import annotations

import numpy as np

from rules.catalog import load_catalog
from rules.engine import RulesEngine
from urbansense.schema import AlertEvent, Sample, TelemetryBatch

from .helpers import T0, rule

STEP_S = 15


def _meter(hours: float, *, drift_per_h: float = 0.0, leak_per_h: float = 0.0, after_h: float = 2.0,
           seed: int = 1) -> list[TelemetryBatch]:
    """A flow meter at ~100 m3/h: the transmitter's reading and the totaliser (whole m3)
    integrating the true flow. After `after_h` the reading drifts (transmitter fault) or
    the true flow grows (a leak)."""
    rng = np.random.default_rng(seed)
    out, volume = [], 50_000.0
    for k in range(int(hours * 3600 / STEP_S)):
        h = k * STEP_S / 3600
        true = 100.0 + max(0.0, h - after_h) * leak_per_h
        volume += true * STEP_S / 3600
        read = true + 1.5 * rng.standard_normal() + max(0.0, h - after_h) * drift_per_h
        t = T0 + k * STEP_S * 1000
        out.append(TelemetryBatch("gw-1", "pudong", k, t, [
            Sample("wp-1", "water", t, {"flow_m3h": round(read, 3), "volume_total_m3": int(volume)})]))
    return out


def _engine(*, with_check: bool = True) -> RulesEngine:
    # A creep rule on the transmitter's reading (the shipped water.flow_creep reads the
    # totaliser instead) that waits 20 min: time for the totaliser check to have spoken
    # about a fast-drifting transmitter.
    creep = rule(kind="drift", id="t.flow_creep", measurement="water", metric="flow_m3h", learn_s=3600,
                 k=1.5, h=12, sigma_floor=0.5, direction="up", for_s=1200)
    check = [r for r in load_catalog() if r.id == "water.flow_meter_mismatch"]
    return RulesEngine([creep, *(check if with_check else [])])


def _firing(events: list[AlertEvent]) -> list[tuple[str, float]]:
    return [(e.rule, round((e.t - T0) / 3_600_000, 2)) for e in events if e.state == "firing"]


def _run(eng: RulesEngine, batches: list[TelemetryBatch]) -> list[AlertEvent]:
    out: list[AlertEvent] = []
    for b in batches:
        out += eng.ingest([b])
    return out


def test_a_drifting_transmitter_is_a_health_alert_not_a_leak() -> None:
    batches = _meter(6, drift_per_h=10.0)
    without = _firing(_run(_engine(with_check=False), batches))
    assert [r for r, _h in without] == ["t.flow_creep"]  # what it did before the check
    fired = _firing(_run(_engine(), batches))
    assert [r for r, _h in fired] == ["water.flow_meter_mismatch"], fired


def test_a_real_leak_moves_the_totaliser_too_and_still_warns() -> None:
    fired = _firing(_run(_engine(), _meter(6, leak_per_h=10.0)))
    assert [r for r, _h in fired] == ["t.flow_creep"], fired


def test_a_threshold_is_never_held() -> None:
    high = rule(kind="threshold", id="t.flow_high", measurement="water", metric="flow_m3h", threshold=140)
    check = [r for r in load_catalog() if r.id == "water.flow_meter_mismatch"]
    fired = _firing(_run(RulesEngine([high, *check]), _meter(8, drift_per_h=10.0)))
    assert "t.flow_high" in [r for r, _h in fired]


def _district_ph(hours: float, *, drift: str | None = None, rate: float = 0.6, all_move: bool = False,
                 seed: int = 2) -> list[TelemetryBatch]:
    """Eight supply points of one district (pH 7.0-7.4, read in 0.1 steps); after 2 h one
    electrode drifts down (`drift`), or the treated water of the whole district turns
    acidic (`all_move`), `rate` pH per hour."""
    rng = np.random.default_rng(seed)
    base = np.linspace(7.0, 7.4, 8)
    out = []
    for k in range(int(hours * 3600 / STEP_S)):
        h = k * STEP_S / 3600
        fall = max(0.0, h - 2.0) * rate
        t = T0 + k * STEP_S * 1000
        samples = []
        for i in range(8):
            dev = f"wp-{i:02d}"
            ph = base[i] + 0.02 * rng.standard_normal() - (fall if all_move or dev == drift else 0.0)
            samples.append(Sample(dev, "water", t, {"ph": round(ph, 1)}))
        out.append(TelemetryBatch("gw-1", "pudong", k, t, samples))
    return out


def _ph_engine() -> RulesEngine:
    return RulesEngine([r for r in load_catalog() if r.id in ("water.ph_low", "water.ph_electrode_drift")])


def test_a_drifting_ph_electrode_is_a_health_alert_and_the_limit_waits() -> None:
    """Before the electrode check, water.ph_low paged on an electrode drifting below 6.5."""
    batches = _district_ph(5, drift="wp-03")
    alone = RulesEngine([r for r in load_catalog() if r.id == "water.ph_low"])
    assert [r for r, _h in _firing(_run(alone, batches))] == ["water.ph_low"]
    fired = _firing(_run(_ph_engine(), batches))
    assert [r for r, _h in fired] == ["water.ph_electrode_drift"], fired


def test_acidic_water_across_the_district_still_pages() -> None:
    fired = _firing(_run(_ph_engine(), _district_ph(5, all_move=True)))
    rules = {r for r, _h in fired}
    assert rules == {"water.ph_low"}, fired
