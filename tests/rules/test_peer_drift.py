"""Peer comparison (`relative_to: district_median`, the shipped `water.flow_creep`): a
device is compared with the median of the *other* devices of its district, so in an odd
group no device is its own reference (it would learn a near-zero sigma and false-alarm
when the median moves), and the rule watches only the side it names.

The shipped rule reads each meter's totaliser (whole m3) as a rate over the last hour
(`counter_rate_s`): a leak moves it, a drifting flow transmitter does not."""

from __future__ import annotations

import numpy as np
import pytest

from rules.catalog import load_catalog
from rules.engine import RulesEngine
from urbansense.schema import AlertEvent, Sample, TelemetryBatch

from .helpers import T0

STEP_S = 10
HOURS = 8


def _district(n: int, *, leak: int | None = None, low: int | None = None, drift: int | None = None,
              silent: tuple[int, float, float] | None = None, ramp: bool = False, seed: int = 3,
              noise: float = 2.0) -> list[TelemetryBatch]:
    """n water points of different sizes sharing the district's demand (with `ramp`, a
    morning's: from half to one and a half times between 4 and 6 h),
    each with its own noise (m3/h), reporting the transmitter's flow and the totaliser of
    the true flow (whole m3). After 3 h device `leak` gains a leak of 4 m3/h per hour,
    device `low` loses flow the same way, and device `drift`'s transmitter drifts up by
    10 m3/h per hour (the water does not). `silent`: (device, from h, to h) reports nothing.
    In an odd group the middle-sized point is the median."""
    rng = np.random.default_rng(seed)
    base = np.linspace(70, 130, n)
    volume = np.full(n, 100_000.0)
    out = []
    for k in range(int(HOURS * 3600 / STEP_S)):
        t = T0 + k * STEP_S * 1000
        hours = k * STEP_S / 3600
        demand = (0.5 + 0.5 * min(2.0, max(0.0, hours - 4)) if ramp
                  else 1.0 + 0.4 * np.sin(2 * np.pi * hours / 24))
        samples = []
        for i in range(n):
            flow = base[i] * demand + rng.normal(0, noise)
            extra = max(0.0, hours - 3) * 4.0
            flow += extra if i == leak else -extra if i == low else 0.0
            volume[i] += flow * STEP_S / 3600
            read = flow + (max(0.0, hours - 3) * 10.0 if i == drift else 0.0)
            if silent is not None and i == silent[0] and silent[1] <= hours < silent[2]:
                continue
            samples.append(Sample(f"wp-{i:02d}", "water", t,
                                  {"flow_m3h": round(read, 3), "volume_total_m3": int(volume[i])}))
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


@pytest.mark.parametrize("n", [4, 5])
def test_a_drifting_flow_transmitter_is_not_a_leak(n: int) -> None:
    assert _creep(_district(n, drift=0)) == []


def test_a_device_silent_while_the_others_learnt_learns_on_its_return() -> None:
    """It used to be judged against an empty baseline (mean 0) and page at once."""
    assert _creep(_district(5, silent=(2, 0.5, 2.5))) == []


def test_a_device_back_from_a_gap_waits_for_a_whole_hour_of_its_totaliser() -> None:
    """Its rate over the minutes since it came back, on a ramp of demand, against the
    others' rate over the whole hour, once read as a 20 % leak."""
    assert _creep(_district(5, silent=(3, 4.0, 4.75), ramp=True)) == []
    assert {e.device for e in _creep(_district(5, leak=1, silent=(3, 4.0, 4.75), ramp=True))} == {"wp-01"}


@pytest.mark.parametrize("n", [3, 4, 5, 8])
def test_the_median_without_each_device(n: int) -> None:
    from rules.kinds import _median_without

    good = np.sort(np.random.default_rng(n).normal(size=n))
    want = [np.median(np.delete(good, i)) for i in range(n)]
    assert np.allclose(_median_without(good, np.arange(n)), want)
