"""`urbansense rules backtest|sweep`: scoring the rules against simulations.

They play simulator scenarios through the rules engine, so they live in the application
layer (above both components) and join the `rules` command when the umbrella CLI is
built (application/cli.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from rules.cli import _load, _urls
from urbansense.clock import TimeFormatError, parse_time_ms


def register(rsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bt = rsub.add_parser("backtest", help="score the rules against a scenario's ground truth")
    bt.add_argument("--scenario", help="scenario name (simulators/scenarios/NAME.yaml) or path")
    bt.add_argument("--rules", type=Path)
    bt.add_argument("--seed", type=int, default=1)
    bt.add_argument("--start", metavar="TIME",
                    help="when the scenario starts (ISO 8601 or epoch; default: the latest day that ends before now, "
                         "at the scenario's start_local): the same start gives the same result on any day")
    bt.add_argument("--from", dest="from_", metavar="TIME",
                    help="replay InfluxDB data from (ISO 8601 or epoch s/ms/us/ns)")
    bt.add_argument("--to", metavar="TIME", help="replay InfluxDB data up to (ISO 8601 or epoch s/ms/us/ns)")
    bt.add_argument("--influx", help="InfluxDB URL for --from/--to")
    bt.add_argument("--database", default="city")
    bt.add_argument("--truth", type=Path, help="ground-truth JSON lines (urbansense sim run --truth) for --from/--to")
    bt.add_argument("--gateways", type=Path, action="append", metavar="PATH")
    bt.add_argument("--out", type=Path, default=Path("backtest-out"), help="folder for the PNG plots")
    bt.add_argument("--no-plots", action="store_true")
    bt.add_argument("--json", action="store_true", help="also print the summary as JSON")
    bt.set_defaults(func=_backtest)

    ev = rsub.add_parser("evaluate", help="backtest a randomised scenario over many seeds; pool per incident kind",
                         description="Exit 1 when a kind's detection rate is under --min-detection, hazard false "
                                     "alarms exceed --max-false-alarms, a sensor fault raised a hazard alert, or a "
                                     "kind's incidents that had a precursor were not warned before the hazard at "
                                     "the median.")
    ev.add_argument("--scenario", required=True, help="scenario name or path (see `urbansense sim compose`)")
    ev.add_argument("--seeds", type=int, default=20, help="how many seeds (days) to play (default %(default)s)")
    ev.add_argument("--first-seed", type=int, default=1,
                    help="the first seed (default %(default)s); tune on one range, report on another")
    ev.add_argument("--rules", type=Path, help="rule file or folder (default: every family's rules and rules/catalog)")
    ev.add_argument("--workers", type=int, default=2, help="seeds in parallel (default %(default)s)")
    ev.add_argument("--plot", type=Path, default=Path("evaluate-out/evaluation.png"),
                    help="PNG to write (default %(default)s)")
    ev.add_argument("--no-plot", action="store_true")
    ev.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON")
    ev.add_argument("--min-detection", type=float, default=0.99, metavar="RATE",
                    help="exit 1 if a kind's detection rate is below (default %(default)g)")
    ev.add_argument("--max-false-alarms", type=float, default=1.0, metavar="RATE",
                    help="exit 1 if hazard false alarms per 1,000 device-hours exceed (default %(default)g)")
    ev.set_defaults(func=_evaluate)

    sw = rsub.add_parser("sweep", help="backtest scenarios on dates spread over a year; check every date")
    sw.add_argument("--scenario", action="append", dest="scenarios", metavar="NAME",
                    help="scenario name or path (repeat; default: the shipped scenarios)")
    sw.add_argument("--date", action="append", dest="dates", metavar="YYYY-MM-DD",
                    help="a date to play on (repeat; default: twelve dates, one a month, solstices and equinoxes)")
    sw.add_argument("--rules", type=Path, help="rule file or folder (default: every family's rules and rules/catalog)")
    sw.add_argument("--seed", type=int, help="one seed for every run (default: date i plays with seed i + 1)")
    sw.add_argument("--max-false-alarms", type=float, default=1.0, metavar="RATE",
                    help="false alarms allowed per 1,000 device-hours (default %(default)g)")
    sw.add_argument("--workers", type=int, default=2, help="runs in parallel (default %(default)s)")
    sw.add_argument("--json", action="store_true", help="print the runs as JSON lines instead of a table")
    sw.set_defaults(func=_sweep)


def _time_ms(text: str) -> int:
    try:
        return parse_time_ms(text)
    except TimeFormatError as exc:
        raise SystemExit(f"error: {exc}") from None


def _backtest(args: argparse.Namespace) -> int:
    from application import backtest
    from rules.inventory import GATEWAYS_DIR, load_inventory

    rules = _load(args.rules)
    if args.scenario:
        start = _time_ms(args.start) if args.start else None
        result = backtest.run_scenario(args.scenario, rules, seed=args.seed, start_ms=start, progress=True)
    elif args.from_ and args.to:
        _mqtt, influx_url = _urls(args)
        truth = [json.loads(line) for line in args.truth.read_text().splitlines() if line.strip()] \
            if args.truth else []
        inventory = load_inventory(args.gateways or [GATEWAYS_DIR])
        result = backtest.run_influx(influx_url, args.database, _time_ms(args.from_), _time_ms(args.to),
                                     rules, inventory, truth, progress=True)
    else:
        print("error: give --scenario NAME, or --from and --to to replay InfluxDB data", file=sys.stderr)
        return 2
    backtest.print_report(result)
    if not args.no_plots and result.incidents:
        paths = backtest.plot_incidents(result, args.out)
        print(f"plots: {len(paths)} PNG file(s) in {args.out}/")
    if args.json:
        print(json.dumps(backtest.summary(result), indent=2))
    return 1 if result.missed else 0


def _evaluate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from application import evaluate
    from urbansense.config import ConfigError

    if args.seeds < 1:
        print("error: --seeds must be at least 1", file=sys.stderr)
        return 2
    done: list[evaluate.SeedRun] = []
    try:
        with Progress(transient=True) as bar:
            task = bar.add_task(f"evaluate {args.scenario}: {args.seeds} seeds", total=args.seeds)
            for run in evaluate.runs(args.scenario, args.seeds, args.first_seed, workers=args.workers,
                                     rules_path=args.rules):
                done.append(run)
                bar.advance(task)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = evaluate.pool(done[0].scenario, done)
    console = Console(width=None if sys.stdout.isatty() else 160)
    table = Table(title=f"{report.scenario}: seeds {report.seeds[0]}..{report.seeds[-1]}, "
                        f"{report.device_hours:,.0f} device-hours")
    for col in ("incident kind", "detected", "lead p10", "lead p50", "lead p90", "with lead",
                "with a precursor: p50 (n)", "warned first by"):
        table.add_column(col)

    def lead(x: float | None) -> str:
        return "-" if x is None else f"{x / 60:+.1f} min"

    for kind, st in sorted(report.kinds.items()):
        rate = f"{st.detected}/{st.n} ({100 * st.detection_rate:.0f} %)"
        table.add_row(kind, rate if st.detection_rate >= args.min_detection else f"[red]{rate}[/]",
                      lead(st.lead(10)), lead(st.lead(50)), lead(st.lead(90)), str(len(st.leads_s)),
                      f"{lead(st.announced_lead(50))} ({len(st.announced_leads_s)})" if st.announced else "-",
                      ", ".join(f"{r} {n}" for r, n in st.first_rules.most_common(2)))
    console.print(table)
    console.print(f"false alarms per 1,000 device-hours: hazard {report.hazard_false_alarm_rate:.2f} "
                  f"({report.hazard_false_alarms}), sensor health {report.health_false_alarm_rate:.2f} "
                  f"({report.health_false_alarms}); maintenance tickets without an incident: "
                  f"{report.maintenance_unmatched}; hazard alerts from sensor faults: {len(report.fault_hazards)}; "
                  f"sensor faults named by a health rule: {report.faults_found}/{report.faults}")
    for kind, st in sorted(report.kinds.items()):
        for m in st.missed[:5]:
            console.print(f"  missed {kind}: {m}")
    for f in report.fault_hazards[:10]:
        console.print(f"  hazard alert from a sensor fault: {f}")
    for f in report.false_alarm_ids[:10]:
        console.print(f"  hazard false alarm: {f}")
    if not args.no_plot:
        console.print(f"plot: {evaluate.plot(report, args.plot)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.as_dict(), indent=2))
        console.print(f"report: {args.json}")
    late = report.late_kinds()
    for kind in late:
        console.print(f"  [red]{kind}: its incidents with a precursor were not warned before the hazard at the "
                      f"median ({lead(report.kinds[kind].announced_lead(50))})[/]")
    bad = [k for k, st in report.kinds.items() if st.detection_rate < args.min_detection]
    return 1 if bad or late or report.fault_hazards or report.hazard_false_alarm_rate > args.max_false_alarms else 0


def _sweep(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from application import sweep

    try:
        dates = [dt.date.fromisoformat(d) for d in args.dates] if args.dates else list(sweep.SWEEP_DATES)
    except ValueError as exc:
        print(f"error: --date: {exc} (write it as YYYY-MM-DD)", file=sys.stderr)
        return 2
    scenarios = args.scenarios or list(sweep.SHIPPED_SCENARIOS)
    limits = sweep.Limits(false_alarms_per_1000_device_hours=args.max_false_alarms)
    runs: list[sweep.SweepRun] = []
    plays = sweep.sweep(scenarios, dates, seed=args.seed, limits=limits, workers=args.workers,
                        rules_path=args.rules)
    if args.json:
        for run in plays:
            runs.append(run)
            print(json.dumps(run.as_dict()), flush=True)
        return 1 if any(r.violations for r in runs) else 0
    with Progress(transient=True) as bar:
        task = bar.add_task("calendar sweep", total=len(scenarios) * len(dates))
        for run in plays:
            runs.append(run)
            bar.advance(task)
    table = Table(title="calendar sweep: the same checks on every date")
    for col in ("scenario", "date", "seed", "dusk", "incidents", "false alarms", "busiest alert (events in 4 h)",
                "least lead", "verdict"):
        table.add_column(col)
    for r in runs:
        lead = "-" if r.lead_min_s is None else f"{r.lead_min_s / 60:+.1f} min"
        table.add_row(r.scenario, f"{r.date:%Y-%m-%d %a}", str(r.seed), r.dusk,
                      f"{r.incidents - len(r.missed)}/{r.incidents}",
                      f"{len(r.false_alarms)} ({r.false_alarm_rate:.2f})",
                      f"{r.busiest_alert} ({r.busiest_events})" if r.busiest_events else "-", lead,
                      "[green]ok[/]" if not r.violations else "[red]FAIL[/]")
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table)
    for r in runs:
        for v in r.violations:
            console.print(f"[red]{r.scenario} {r.date} seed {r.seed}:[/] {v}")
    bad = sum(1 for r in runs if r.violations)
    console.print(f"{len(runs) - bad} of {len(runs)} runs hold every property"
                  + ("" if not bad else f"; {bad} fail (above)"))
    return 1 if bad else 0


