"""Peer comparison (`relative_to: district_median`, the shipped `water.flow_creep`): a
device is compared with the median of the *other* devices of its district, so in an odd
group no device is its own reference (it would learn a near-zero sigma and false-alarm
when the median moves), and the rule watches only the side it names."""

from __future__ import annotations

import numpy as np
import pytest

from rules.catalog import load_catalog
from rules.engine import RulesEngine
from urbansense.schema import AlertEvent, Sample, TelemetryBatch

from .helpers import T0

STEP_S = 10
HOURS = 8


def _district(n: int, *, leak: int | None = None, low: int | None = None, seed: int = 3,
              noise: float = 2.0) -> list[TelemetryBatch]:
    """n water points of different sizes sharing the district's demand, each with its own
    noise (m3/h); device `leak` gains a leak of 4 m3/h per hour after 3 h, device `low`
    loses flow the same way. In an odd group the middle-sized point is the median."""
    rng = np.random.default_rng(seed)
    base = np.linspace(70, 130, n)
    out = []
    for k in range(int(HOURS * 3600 / STEP_S)):
        t = T0 + k * STEP_S * 1000
        hours = k * STEP_S / 3600
        demand = 1.0 + 0.4 * np.sin(2 * np.pi * hours / 24)
        samples = []
        for i in range(n):
            flow = base[i] * demand + rng.normal(0, noise)
            extra = max(0.0, hours - 3) * 4.0
            flow += extra if i == leak else -extra if i == low else 0.0
            samples.append(Sample(f"wp-{i:02d}", "water", t, {"flow_m3h": round(flow, 3)}))
        out.append(TelemetryBatch("gw-1", "pudong", k, t, samples))
    return out


def _creep(batches: list[TelemetryBatch]) -> list[AlertEvent]:
    rule = next(r for r in load_catalog() if r.id == "water.flow_creep")
    eng = RulesEngine([rule])
    events: list[AlertEvent] = []
    for b in batches:
        events.extend(eng.ingest([b]))
    return [e for e in events if e.state == "firing"]


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7])
def test_no_false_alarm_in_odd_or_even_groups(n: int) -> None:
    assert _creep(_district(n)) == []


@pytest.mark.parametrize("n", [3, 4, 7])
def test_a_leak_is_found_and_a_falling_meter_is_not_called_one(n: int) -> None:
    fired = {e.device for e in _creep(_district(n, leak=0, low=1))}
    assert fired == {"wp-00"}


@pytest.mark.parametrize("n", [3, 4, 5, 8])
def test_the_median_without_each_device(n: int) -> None:
    from rules.kinds import _median_without

    good = np.sort(np.random.default_rng(n).normal(size=n))
    want = [np.median(np.delete(good, i)) for i in range(n)]
    assert np.allclose(_median_without(good, np.arange(n)), want)
