"""Evaluation over many seeds: how the rules do on days they were not written beside.

A randomised scenario (`urbansense sim compose`) draws each incident's time, place and
magnitude and each fault's from its seed, so seed k plays another day. `evaluate` plays
a scenario for seeds `first .. first + n - 1` (on dates spread over a year: seed k on
day 37 k mod 365 from `base`, so the sun's times vary too), in parallel processes, and
pools the backtests:

- per incident kind: detection rate, lead time p10/p50/p90 (hazard crossing minus the
  first hazard, early-warning or maintenance alert; only incidents with a hazard that was
  crossed have one), and the rules that warned first;
- false alarms per 1,000 device-hours, hazard alerts and sensor-health alerts apart,
  and maintenance tickets on equipment that did not fail that day;
- hazard alerts caused by sensor faults (on a faulted device in the fault's time and
  explained by no incident): the number that must stay zero.

    report = evaluate("pudong-random-day", seeds=20, first_seed=101)
    report.kinds["pipe_burst"].detection_rate, report.hazard_false_alarm_rate

`urbansense rules evaluate` prints it, plots it and writes it as JSON.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from application.backtest import BacktestResult, health_rules, run_scenario

BASE_DATE = dt.date(2026, 1, 1)


@dataclass(frozen=True, slots=True)
class EvalJob:
    scenario: str
    seed: int
    date: dt.date
    rules_path: Path | None = None


@dataclass(slots=True)
class IncidentOutcome:
    kind: str
    device: str
    detected: bool
    lead_s: float | None
    first_rule: str | None
    #: its precursor ran before it (ground truth's warn_from before start): a warning
    #: before the hazard was possible from the signs, not only from the incident itself
    announced: bool = False


@dataclass(slots=True)
class SeedRun:
    """What one seed's day came to (picklable: it crosses back from a worker)."""

    scenario: str
    seed: int
    date: dt.date
    device_hours: float
    incidents: list[IncidentOutcome]
    hazard_false_alarms: list[str]  # alert ids
    health_false_alarms: list[str]
    maintenance_unmatched: list[str]  # tickets on equipment that did not fail that day
    #: hazard alerts on a faulted sensor, in the fault's time, explained by no incident
    fault_hazards: list[str]
    faults: int
    faults_found: int  # faults some health alert named
    elapsed_s: float


def date_for(seed: int, base: dt.date = BASE_DATE) -> dt.date:
    return base + dt.timedelta(days=(37 * seed) % 365)


def outcome(result: BacktestResult, health: frozenset[str], seed: int, date: dt.date,
            elapsed_s: float) -> SeedRun:
    """Boil a backtest down to what the evaluation pools."""
    explained = {id(e) for s in result.incidents for e in s.alerts} | \
                {id(e) for s in result.incidents for e in s.health_alerts}
    fault_hazards = sorted({e.id for s in result.faults for e in s.alerts
                            if e.rule not in health and id(e) not in explained})
    return SeedRun(
        result.name, seed, date, result.device_hours,
        [IncidentOutcome(s.record["type"], s.record.get("device") or ",".join(s.record.get("devices", [])[:3]),
                         s.detected, s.lead_time_s if s.record.get("hazard_crossed_at") is not None else None,
                         s.first_alert.rule if s.first_alert else None,
                         s.record.get("warn_from", s.record["start"]) < s.record["start"])
         for s in result.incidents],
        [e.id for e in result.false_alarms], [e.id for e in result.health_unmatched],
        [e.id for e in result.maintenance_unmatched], fault_hazards,
        len(result.faults), sum(1 for s in result.faults if any(e.rule in health for e in s.alerts)), elapsed_s)


def play(job: EvalJob) -> SeedRun:
    from application.sweep import start_on
    from rules.catalog import load_catalog

    began = time.monotonic()
    rules = load_catalog(job.rules_path) if job.rules_path is not None else load_catalog()
    result = run_scenario(job.scenario, rules, seed=job.seed, start_ms=start_on(job.scenario, job.date))
    return outcome(result, health_rules(rules), job.seed, job.date, time.monotonic() - began)


def runs(scenario: str | Path, seeds: int, first_seed: int = 1, *, workers: int = 2,
         rules_path: Path | None = None, base: dt.date = BASE_DATE) -> Iterator[SeedRun]:
    """Play the seeds, `workers` at a time; runs come as they finish."""
    if rules_path is not None:
        from rules.catalog import load_catalog

        load_catalog(rules_path)  # a bad rule file fails here, named, not in a worker
    todo = [EvalJob(str(scenario), s, date_for(s, base), rules_path) for s in range(first_seed, first_seed + seeds)]
    if workers <= 1:
        yield from map(play, todo)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(play, j) for j in todo]
        for fut in as_completed(futures):
            yield fut.result()


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty sequence."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(slots=True)
class KindStats:
    kind: str
    n: int = 0
    detected: int = 0
    leads_s: list[float] = field(default_factory=list)
    announced: int = 0  # incidents whose precursor ran before them
    announced_leads_s: list[float] = field(default_factory=list)
    first_rules: Counter[str] = field(default_factory=Counter)
    missed: list[str] = field(default_factory=list)  # "seed N device"

    @property
    def detection_rate(self) -> float:
        return self.detected / self.n if self.n else math.nan

    def lead(self, q: float) -> float | None:
        return percentile(self.leads_s, q) if self.leads_s else None

    def announced_lead(self, q: float) -> float | None:
        """Lead over the incidents that had a precursor: what the signs bought."""
        return percentile(self.announced_leads_s, q) if self.announced_leads_s else None


@dataclass(slots=True)
class Report:
    scenario: str
    seeds: list[int]
    device_hours: float
    kinds: dict[str, KindStats]
    hazard_false_alarms: int
    health_false_alarms: int
    maintenance_unmatched: int
    fault_hazards: list[str]  # "seed N alert-id"
    faults: int
    faults_found: int
    false_alarm_ids: list[str] = field(default_factory=list)  # "seed N alert-id"

    @property
    def hazard_false_alarm_rate(self) -> float:
        return 1000.0 * self.hazard_false_alarms / self.device_hours if self.device_hours else 0.0

    @property
    def health_false_alarm_rate(self) -> float:
        return 1000.0 * self.health_false_alarms / self.device_hours if self.device_hours else 0.0

    def late_kinds(self) -> list[str]:
        """Kinds whose announced incidents were, at the median, not warned before the hazard."""
        return sorted(k for k, st in self.kinds.items()
                      if (p50 := st.announced_lead(50)) is not None and p50 <= 0)

    def as_dict(self) -> dict[str, Any]:
        def minutes(x: float | None) -> float | None:
            return None if x is None else round(x / 60.0, 2)

        return {
            "scenario": self.scenario, "seeds": self.seeds, "device_hours": round(self.device_hours, 1),
            "hazard_false_alarms": self.hazard_false_alarms,
            "hazard_false_alarms_per_1000_device_hours": round(self.hazard_false_alarm_rate, 3),
            "health_false_alarms": self.health_false_alarms,
            "health_false_alarms_per_1000_device_hours": round(self.health_false_alarm_rate, 3),
            "maintenance_tickets_without_incident": self.maintenance_unmatched,
            "hazard_alerts_from_sensor_faults": self.fault_hazards,
            "hazard_false_alarm_ids": self.false_alarm_ids,
            "faults": self.faults, "faults_found_by_health_rules": self.faults_found,
            "kinds": {k: {"incidents": s.n, "detected": s.detected, "detection_rate": round(s.detection_rate, 4),
                          "lead_min_p10": minutes(s.lead(10)), "lead_min_p50": minutes(s.lead(50)),
                          "lead_min_p90": minutes(s.lead(90)), "with_lead": len(s.leads_s),
                          "announced": s.announced, "announced_with_lead": len(s.announced_leads_s),
                          "announced_lead_min_p10": minutes(s.announced_lead(10)),
                          "announced_lead_min_p50": minutes(s.announced_lead(50)),
                          "first_rules": dict(s.first_rules.most_common()), "missed": s.missed}
                      for k, s in sorted(self.kinds.items())},
        }


def pool(scenario: str, seed_runs: Sequence[SeedRun]) -> Report:
    kinds: dict[str, KindStats] = {}
    for run in seed_runs:
        for inc in run.incidents:
            st = kinds.setdefault(inc.kind, KindStats(inc.kind))
            st.n += 1
            if inc.detected:
                st.detected += 1
                st.first_rules[inc.first_rule or "?"] += 1
            else:
                st.missed.append(f"seed {run.seed} {inc.device}")
            if inc.lead_s is not None:
                st.leads_s.append(inc.lead_s)
            if inc.announced:
                st.announced += 1
                if inc.lead_s is not None:
                    st.announced_leads_s.append(inc.lead_s)
    return Report(scenario, sorted(r.seed for r in seed_runs), sum(r.device_hours for r in seed_runs), kinds,
                  sum(len(r.hazard_false_alarms) for r in seed_runs),
                  sum(len(r.health_false_alarms) for r in seed_runs),
                  sum(len(r.maintenance_unmatched) for r in seed_runs),
                  [f"seed {r.seed} {a}" for r in seed_runs for a in r.fault_hazards],
                  sum(r.faults for r in seed_runs), sum(r.faults_found for r in seed_runs),
                  [f"seed {r.seed} {a}" for r in sorted(seed_runs, key=lambda r: r.seed)
                   for a in r.hazard_false_alarms])


def evaluate(scenario: str | Path, seeds: int, first_seed: int = 1, *, workers: int = 2,
             rules_path: Path | None = None) -> Report:
    done = list(runs(scenario, seeds, first_seed, workers=workers, rules_path=rules_path))
    name = done[0].scenario if done else str(scenario)
    return pool(name, done)


def plot(report: Report, path: Path) -> Path:
    """Lead times per incident kind (one dot per seed, p10/p50/p90 bars) beside the
    detection rate, and the false alarms per 1,000 device-hours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted(report.kinds)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 0.45 * len(kinds) + 2.2),
                                  gridspec_kw={"width_ratios": [3, 1]}, sharey=True)
    for y, kind in enumerate(kinds):
        st = report.kinds[kind]
        leads = [v / 60.0 for v in st.leads_s]
        announced = [v / 60.0 for v in st.announced_leads_s]
        quiet = list(leads)
        for v in announced:
            quiet.remove(v)
        ax.scatter(announced, [y] * len(announced), s=12, alpha=0.6, color="tab:blue")
        ax.scatter(quiet, [y] * len(quiet), s=12, alpha=0.6, facecolors="none", edgecolors="tab:orange")
        if leads:
            lo, mid, hi = (percentile(leads, q) for q in (10, 50, 90))
            ax.plot([lo, hi], [y, y], color="black", lw=1)
            ax.plot([mid], [y], marker="|", ms=14, color="black")
        ax2.barh(y, 100.0 * st.detection_rate, color="tab:green" if st.detection_rate >= 0.99 else "tab:red")
        ax2.text(1, y, f"{st.detected}/{st.n}", va="center", fontsize=8, color="white")
    ax.axvline(0, color="red", lw=1, ls="--")
    ax.set_yticks(range(len(kinds)), kinds)
    ax.set_xlabel("lead time, minutes before the hazard (filled: incident with a precursor, hollow: without; "
                  "bar: p10-p90, tick: median)", fontsize=8)
    ax2.tick_params(axis="y", left=False)
    ax2.set_xlim(0, 100)
    ax2.set_xlabel("detected, %")
    fig.suptitle(f"{report.scenario}: {len(report.seeds)} seeds, {report.device_hours:,.0f} device-hours; "
                 f"false alarms per 1,000 device-hours: hazard {report.hazard_false_alarm_rate:.2f}, "
                 f"sensor health {report.health_false_alarm_rate:.2f}; hazard alerts from sensor faults: "
                 f"{len(report.fault_hazards)}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
