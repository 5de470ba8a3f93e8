"""`urbansense rules run|check|backtest|silence ...`"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from rules.flapping import FLAP_CHANGES, FLAP_CLEAR_S, FLAP_WINDOW_S
from urbansense.clock import TimeFormatError, parse_time_ms

if TYPE_CHECKING:
    from rules.catalog import Rule
    from urbansense.mqtt import MqttClient


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("rules", help="rules engine: early warnings, backtest, silences")
    rsub = p.add_subparsers(dest="rules_cmd", required=True)

    run = rsub.add_parser("run", help="run the rules engine on live MQTT telemetry")
    run.add_argument("--rules", type=Path, help="rule file or folder (default: every family's rules and rules/catalog)")
    run.add_argument("--mqtt", help="broker URL (default: the local stack / URBANSENSE_MQTT_URL)")
    run.add_argument("--influx", help="InfluxDB URL (default: the local stack / URBANSENSE_INFLUX_URL)")
    run.add_argument("--database", default="city")
    run.add_argument("--district", action="append", dest="districts", metavar="NAME",
                     help="only this district (repeat); several instances split the city")
    run.add_argument("--gateways", type=Path, action="append", metavar="PATH",
                     help="gateway config file or folder for the expected inventory "
                          "(default: firmware-configs/gateways)")
    run.add_argument("--lookback", type=float, default=900.0, metavar="S",
                     help="warm start: seconds of stored telemetry to replay (0: none)")
    run.add_argument("--flap-changes", type=int, default=FLAP_CHANGES, metavar="N",
                     help="an alert changing state N times within the flap window is flapping (default %(default)s)")
    run.add_argument("--flap-window", type=float, default=FLAP_WINDOW_S, metavar="S",
                     help="flap window (default %(default)g s)")
    run.add_argument("--flap-clear", type=float, default=FLAP_CLEAR_S, metavar="S",
                     help="a flapping episode ends after S seconds without a change (default %(default)g)")
    run.add_argument("--instance", default="rules-1", help="instance name (MQTT client id, self-metrics)")
    run.add_argument("--duration", type=float, help="stop after this many seconds")
    run.set_defaults(func=_run)

    check = rsub.add_parser("check", help="validate rule files")
    check.add_argument("--rules", type=Path)
    check.set_defaults(func=_check)

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

    sil = rsub.add_parser("silence", help="silence alerts: add, list, expire")
    ssub = sil.add_subparsers(dest="silence_cmd", required=True)
    add = ssub.add_parser("add", help="add a silence (retained on the broker, seen by every engine)")
    add.add_argument("--match", action="append", required=True, metavar="LABEL=GLOB",
                     help="rule, domain, district, device or severity; repeat, all must match")
    add.add_argument("--for", dest="for_", default="2h", help="how long, e.g. 2h, 30m (default 2h)")
    add.add_argument("--comment", default="")
    add.add_argument("--by", default="")
    add.add_argument("--id", help="silence id (default: generated)")
    add.add_argument("--mqtt")
    add.set_defaults(func=_silence_add)
    lst = ssub.add_parser("list", help="list silences")
    lst.add_argument("--mqtt")
    lst.set_defaults(func=_silence_list)
    exp = ssub.add_parser("expire", help="remove a silence")
    exp.add_argument("id")
    exp.add_argument("--mqtt")
    exp.set_defaults(func=_silence_expire)


def _load(path: Path | None) -> list[Rule]:
    from rules.catalog import load_catalog

    return load_catalog(path)


def _urls(args: argparse.Namespace) -> tuple[str, str]:
    from urbansense.stack import default_urls

    mqtt_url, influx_url = default_urls()
    return getattr(args, "mqtt", None) or mqtt_url, getattr(args, "influx", None) or influx_url


def _run(args: argparse.Namespace) -> int:
    from rules.inventory import GATEWAYS_DIR
    from rules.service import RulesService, ServiceConfig
    from urbansense.mqtt import MqttSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s rules %(levelname)s %(message)s")
    mqtt_url, influx_url = _urls(args)
    cfg = ServiceConfig(rules_path=args.rules, mqtt=MqttSettings.from_url(mqtt_url),
                        influx_url=influx_url, database=args.database, instance=args.instance,
                        districts=set(args.districts) if args.districts else None,
                        gateways=args.gateways or [GATEWAYS_DIR], lookback_s=args.lookback,
                        flap_changes=args.flap_changes, flap_window_s=args.flap_window, flap_clear_s=args.flap_clear)
    if args.flap_changes < 2 or args.flap_clear < args.flap_window:
        print(f"error: --flap-changes must be at least 2 (got {args.flap_changes}) and --flap-clear at least "
              f"--flap-window ({args.flap_clear:g} < {args.flap_window:g} s)", file=sys.stderr)
        return 2
    svc = RulesService(cfg)
    signal.signal(signal.SIGTERM, lambda *_: svc.stop())
    signal.signal(signal.SIGINT, lambda *_: svc.stop())
    svc.run(args.duration)
    return 0


def _check(args: argparse.Namespace) -> int:
    rules = _load(args.rules)
    kinds: dict[str, int] = {}
    for r in rules:
        kinds[r.kind] = kinds.get(r.kind, 0) + 1
    print(f"ok: {len(rules)} rule(s): " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    return 0


def _time_ms(text: str) -> int:
    try:
        return parse_time_ms(text)
    except TimeFormatError as exc:
        raise SystemExit(f"error: {exc}") from None


def _backtest(args: argparse.Namespace) -> int:
    from rules import backtest
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


def _sweep(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from rules import sweep

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


def _client(args: argparse.Namespace, tag: str) -> MqttClient:
    from urbansense.mqtt import MqttClient, MqttSettings

    mqtt_url, _ = _urls(args)
    client = MqttClient(MqttSettings.from_url(mqtt_url), client_id=f"urbansense-silence-{tag}-{uuid.uuid4().hex[:6]}")
    client.connect()
    return client


def _silence_add(args: argparse.Namespace) -> int:
    from rules.silences import SILENCE_TOPIC_PREFIX, Silence, SilenceError, parse_duration_s, parse_matchers

    try:
        matchers = parse_matchers(args.match)
        starts = int(time.time() * 1000)
        silence = Silence(id=args.id or f"s-{uuid.uuid4().hex[:10]}", matchers=matchers, starts=starts,
                          ends=starts + int(parse_duration_s(args.for_) * 1000), comment=args.comment, by=args.by)
    except SilenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    client = _client(args, "add")
    try:
        client.publish_wait(SILENCE_TOPIC_PREFIX + silence.id, silence.to_wire(), qos=1, retain=True)
    finally:
        client.close()
    until = dt.datetime.fromtimestamp(silence.ends / 1000, dt.UTC).isoformat(timespec="seconds")
    print(f"silence {silence.id}: {' '.join(f'{k}={v}' for k, v in matchers.items())} until {until}")
    return 0


def _silence_list(args: argparse.Namespace) -> int:
    from rules.silences import ALL_SILENCES, SilenceSet

    found = SilenceSet()
    client = _client(args, "list")
    client.subscribe(ALL_SILENCES, lambda m: found.handle_message(m.topic, bytes(m.payload)), qos=1)
    time.sleep(1.0)  # retained messages arrive right after subscribing
    client.close()
    now = int(time.time() * 1000)
    for s in sorted(found._by_id.values(), key=lambda s: s.ends):
        state = "active" if s.starts <= now < s.ends else ("expired" if now >= s.ends else "pending")
        until = dt.datetime.fromtimestamp(s.ends / 1000, dt.UTC).isoformat(timespec="seconds")
        print(f"{s.id}  {state:8} until {until}  {' '.join(f'{k}={v}' for k, v in s.matchers.items())}"
              f"  {s.comment}")
    if not len(found):
        print("no silences")
    return 0


def _silence_expire(args: argparse.Namespace) -> int:
    from rules.silences import SILENCE_TOPIC_PREFIX

    client = _client(args, "expire")
    try:
        client.publish_wait(SILENCE_TOPIC_PREFIX + args.id, b"", qos=1, retain=True)
    finally:
        client.close()
    print(f"silence {args.id} removed")
    return 0
