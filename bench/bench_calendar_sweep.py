"""Calendar sweep: every shipped scenario on twelve dates spread over a year (one a month,
both solstices and equinoxes, every weekday), date i with seed i + 1, through the shipped
catalog, offline. Checks on every run what `application/sweep.py` says must hold on any date
(every incident detected, false alarms within 1 per 1,000 device-hours, no alert storm)
and prints a Markdown table for docs/benchmarks/rules.md. `--seeds K` plays K seeds per
date (seeds i*K + 1 .. i*K + K) for wider coverage of noise and fault timings.

The test suite plays the solstices and equinoxes (tests/rules/test_calendar_sweep.py);
this is the whole year.

    .venv/bin/python bench/bench_calendar_sweep.py [--scenario NAME ...] [--seeds 1] [--workers 2]

Exit code 1 when a run breaks a property.
"""

from __future__ import annotations

import argparse
import sys
import time

from application.sweep import SHIPPED_SCENARIOS, SWEEP_DATES, SweepRun, sweep


def row(r: SweepRun) -> str:
    lead = "–" if r.lead_min_s is None else f"{r.lead_min_s / 60:+.1f} min"
    return (f"| {r.scenario} | {r.date:%Y-%m-%d %a} | {r.seed} | {r.dusk} | "
            f"{r.incidents - len(r.missed)}/{r.incidents} | {len(r.false_alarms)} | {r.busiest_events} | {lead} | "
            f"{'ok' if not r.violations else 'FAIL: ' + '; '.join(r.violations)} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", action="append", dest="scenarios", metavar="NAME")
    ap.add_argument("--seeds", type=int, default=1, metavar="K", help="seeds per date (default 1)")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    scenarios = args.scenarios or list(SHIPPED_SCENARIOS)
    began = time.monotonic()
    runs: list[SweepRun] = []
    print("| scenario | date | seed | dusk (Shanghai) | incidents detected | false alarms | most events of one "
          "alert in 4 h | least lead before a hazard | verdict |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in sweep(scenarios, SWEEP_DATES, workers=args.workers, seeds_per_date=args.seeds):
        runs.append(r)
        print(row(r), flush=True)
    bad = [r for r in runs if r.violations]
    print(f"\n{len(runs) - len(bad)} of {len(runs)} runs hold every property; "
          f"{time.monotonic() - began:.0f} s on {args.workers} worker(s)", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
