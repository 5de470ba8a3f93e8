"""Calendar sweep: play scenarios on dates spread over a year and check what must hold on
every one of them.

A scenario's readings depend on the date only through the sun (lamps switch at civil
dusk and dawn, which move by about two and a half hours over a Shanghai year) and, for a
scenario without `start_local`, the time of day. Its noise and fault timings depend on
the seed. A rule set that scores perfectly on the day it was tuned may storm or miss on
another, so the sweep plays each scenario on each date with a seed of its own and checks,
for every run:

- every incident of the ground truth is detected;
- false alarms stay within the bound (default 1 per 1,000 device-hours);
- no alert storm: no alert publishes more than `flapping.storm_limit()` events within
  one flap-clear window (the most the flapping gate lets through before an episode
  holds the alert), an alert's first event is a firing, and never two resolves in a row.

    runs = sweep(["pudong-incidents", "quiet-day"], SWEEP_DATES)
    bad = [r for r in runs if r.violations]

`urbansense rules sweep` prints the same as a table; `bench/bench_calendar_sweep.py`
plays every shipped scenario on all twelve dates.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from application.backtest import BacktestResult, run_scenario
from rules.flapping import FLAP_CHANGES, FLAP_CLEAR_S, storm_limit
from urbansense.schema import AlertEvent

#: One date a month: both solstices and both equinoxes (the extremes and midpoints of the
#: sun's times), every weekday at least once.
SWEEP_DATES: tuple[dt.date, ...] = (
    dt.date(2026, 1, 5), dt.date(2026, 2, 17), dt.date(2026, 3, 20), dt.date(2026, 4, 8),
    dt.date(2026, 5, 23), dt.date(2026, 6, 21), dt.date(2026, 7, 14), dt.date(2026, 8, 27),
    dt.date(2026, 9, 23), dt.date(2026, 10, 30), dt.date(2026, 11, 21), dt.date(2026, 12, 21),
)

#: The days the sun's times are at their extremes and midpoints.
SOLSTICES_AND_EQUINOXES: tuple[dt.date, ...] = (
    dt.date(2026, 3, 20), dt.date(2026, 6, 21), dt.date(2026, 9, 23), dt.date(2026, 12, 21))

#: The shipped scenarios with fixed events (simulators/scenarios/; the composed days are
#: for `rules evaluate`).
SHIPPED_SCENARIOS: tuple[str, ...] = ("pudong-incidents", "quiet-day", "district-scale", "huangpu-river-day",
                                      "huangpu-river-quiet", "pudong-rainy-quiet")


@dataclass(frozen=True, slots=True)
class Limits:
    """What every run must meet."""

    false_alarms_per_1000_device_hours: float = 1.0
    flap_changes: int = FLAP_CHANGES
    flap_clear_s: float = FLAP_CLEAR_S


@dataclass(slots=True)
class SweepRun:
    scenario: str
    date: dt.date
    seed: int
    start_ms: int
    incidents: int
    missed: list[str]
    false_alarms: list[str]  # alert ids
    false_alarm_rate: float  # per 1,000 device-hours
    busiest_alert: str  # the alert id with the most events in one flap-clear window
    busiest_events: int
    lead_min_s: float | None  # the smallest lead time over incidents with a hazard threshold
    violations: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def dusk(self) -> str:
        """Civil dusk in Shanghai on the run's first day, HH:MM (where the date shows)."""
        from simulators import daylight

        dusk_ms = daylight.dawn_dusk_ms(daylight.local_day(self.start_ms))[1]
        return dt.datetime.fromtimestamp(dusk_ms / 1000, daylight.TZ).strftime("%H:%M")

    def as_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "date": self.date.isoformat(), "seed": self.seed,
                "start_ms": self.start_ms, "incidents": self.incidents, "missed": self.missed,
                "false_alarms": self.false_alarms, "false_alarm_rate": round(self.false_alarm_rate, 3),
                "busiest_alert": self.busiest_alert, "busiest_events": self.busiest_events,
                "lead_min_s": self.lead_min_s, "violations": self.violations,
                "elapsed_s": round(self.elapsed_s, 1)}


def start_on(scenario: str | Path, date: dt.date) -> int:
    """The scenario's start on `date` (Shanghai): at its `start_local`, else at local midnight."""
    from simulators import daylight
    from simulators.scenario import load_scenario

    sc = load_scenario(scenario)
    midnight = (date - dt.date(1970, 1, 1)).days * daylight.DAY_MS - daylight.UTC_OFFSET_MS
    return sc.aligned_start_ms(midnight + daylight.DAY_MS - 1)


def busiest_alert(events: Sequence[AlertEvent], window_ms: int) -> tuple[str, int]:
    """The alert with the most events within any `window_ms`, and that count."""
    by_id: dict[str, list[int]] = {}
    for e in events:
        by_id.setdefault(e.id, []).append(e.t)
    best = ("-", 0)
    for alert_id, times in by_id.items():
        times.sort()
        lo = 0
        for hi, t in enumerate(times):
            while t - times[lo] > window_ms:
                lo += 1
            if hi - lo + 1 > best[1]:
                best = (alert_id, hi - lo + 1)
    return best


def violations(result: BacktestResult, limits: Limits = Limits()) -> list[str]:
    """What this run breaks of the properties every date must have (empty: none)."""
    out = [f"missed {s.record['type']} at {s.record.get('device') or s.record['district']}" for s in result.missed]
    rate = result.false_alarms_per_1000_device_hours
    if rate > limits.false_alarms_per_1000_device_hours:
        out.append(f"{len(result.false_alarms)} false alarm(s) = {rate:.2f} per 1,000 device-hours "
                   f"(bound {limits.false_alarms_per_1000_device_hours:g}): "
                   + ", ".join(sorted({e.id for e in result.false_alarms})[:5]))
    alert_id, n = busiest_alert(result.events, int(limits.flap_clear_s * 1000))
    if n > storm_limit(limits.flap_changes):
        out.append(f"alert storm: {alert_id} published {n} events within {limits.flap_clear_s / 3600:g} h "
                   f"(the flapping gate allows {storm_limit(limits.flap_changes)})")
    states: dict[str, list[str]] = {}
    for e in result.events:
        states.setdefault(e.id, []).append(e.state)
    for alert_id, seq in sorted(states.items()):
        if seq[0] != "firing":
            out.append(f"{alert_id}: its first event is {seq[0]!r}, not 'firing'")
        if any(a == b == "resolved" for a, b in itertools.pairwise(seq)):
            out.append(f"{alert_id}: resolved twice in a row")
    return out


@dataclass(frozen=True, slots=True)
class Job:
    """One run of the sweep (picklable: it crosses to a worker process)."""

    scenario: str
    date: dt.date
    seed: int
    limits: Limits = Limits()
    rules_path: Path | None = None  # rule file or folder (default: the shipped catalogue)


def play(job: Job) -> SweepRun:
    """One backtest of the job's scenario starting on its date, with its verdict."""
    from rules.catalog import load_catalog

    began = time.monotonic()
    start = start_on(job.scenario, job.date)
    rules = load_catalog(job.rules_path) if job.rules_path is not None else None
    result = run_scenario(job.scenario, rules, seed=job.seed, start_ms=start)
    leads = [s.lead_time_s for s in result.incidents
             if s.record.get("hazard_threshold") is not None and s.lead_time_s is not None]
    alert_id, n = busiest_alert(result.events, int(job.limits.flap_clear_s * 1000))
    return SweepRun(result.name, job.date, job.seed, start, len(result.incidents),
                    [s.record["type"] for s in result.missed], [e.id for e in result.false_alarms],
                    result.false_alarms_per_1000_device_hours, alert_id, n, min(leads) if leads else None,
                    violations(result, job.limits), time.monotonic() - began)


def jobs(scenarios: Sequence[str | Path], dates: Sequence[dt.date], seed: int | None = None,
         limits: Limits = Limits(), seeds_per_date: int = 1, rules_path: Path | None = None) -> list[Job]:
    """Every (scenario, date, seed): `seed` for all, or date i plays seeds i*K + 1 .. i*K + K
    (K = seeds_per_date), so no two runs of a scenario share noise and fault timings."""
    k = 1 if seed is not None else max(1, seeds_per_date)
    return [Job(str(sc), d, seed if seed is not None else i * k + j + 1, limits, rules_path)
            for sc in scenarios for i, d in enumerate(dates) for j in range(k)]


def sweep(scenarios: Sequence[str | Path], dates: Sequence[dt.date] = SWEEP_DATES, *, seed: int | None = None,
          limits: Limits = Limits(), workers: int = 2, seeds_per_date: int = 1,
          rules_path: Path | None = None) -> Iterator[SweepRun]:
    """Play every scenario on every date, `workers` runs at a time; runs come in job order.
    A bad rules path raises ConfigError (from `load_catalog`) before any run starts."""
    if rules_path is not None:
        from rules.catalog import load_catalog

        load_catalog(rules_path)  # fail here, with the file and key, not in a worker
    todo = jobs(scenarios, dates, seed, limits, seeds_per_date, rules_path)
    if workers <= 1:
        yield from map(play, todo)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(play, todo)
