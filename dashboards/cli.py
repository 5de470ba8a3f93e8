"""`urbansense dashboards build | inventory | check | push`: Grafana provisioning from code.

    urbansense dashboards build                   # rewrite dashboards/ from dashboards/builder/
    urbansense dashboards inventory --out DIR     # device map files from firmware-configs/gateways
    urbansense dashboards check [--influx URL]    # files current + structure (+ every query has data)
    GRAFANA_TOKEN=... urbansense dashboards push --url http://grafana:3000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dashboards", help="Grafana dashboards and alerting: build, check, push")
    dsub = p.add_subparsers(dest="dashboards_command", required=True)

    build = dsub.add_parser("build", help="write the provisioning files and dashboard JSON from code")
    build.add_argument("--out", type=Path, help="output folder (default: dashboards/ of the checkout)")
    build.add_argument("--with-inventory", action="store_true",
                       help="also write the device map files into OUT/maps")
    build.set_defaults(func=_build)

    inv = dsub.add_parser("inventory", help="write the device map (gazetteer + GeoJSON) from the "
                                             "gateway configs")
    inv.add_argument("--out", type=Path, required=True, help="folder Grafana serves the files from")
    inv.add_argument("--gateways", type=Path, help="gateway configs folder (default: "
                                                    "firmware-configs/gateways)")
    inv.set_defaults(func=_inventory)

    check = dsub.add_parser("check", help="check the files are current and well-formed; with "
                                           "--influx, run every panel query")
    check.add_argument("--influx", help="InfluxDB URL: run every query against it")
    check.add_argument("--database", default="city")
    check.add_argument("--range", default="6h", help="time range the queries cover (default 6h)")
    check.set_defaults(func=_check)

    push = dsub.add_parser("push", help="upsert the dashboards into a running Grafana "
                                         "(token from GRAFANA_TOKEN)")
    push.add_argument("--url", required=True, help="Grafana base URL, e.g. http://127.0.0.1:3000")
    push.add_argument("--timeout", type=float, default=10.0)
    push.set_defaults(func=_push)


def _build(args: argparse.Namespace) -> int:
    from dashboards.builder.inventory import load_inventory, write_inventory
    from dashboards.builder.provisioning import DASHBOARDS_DIR, build

    out = args.out or DASHBOARDS_DIR
    written = build(out)
    if args.with_inventory:
        written += write_inventory(out / "maps", load_inventory())
    for path in written:
        print(path)
    return 0


def _inventory(args: argparse.Namespace) -> int:
    from dashboards.builder.inventory import load_inventory, write_inventory
    from urbansense.paths import GATEWAYS_DIR

    devices = load_inventory(args.gateways or GATEWAYS_DIR)
    for path in write_inventory(args.out, devices):
        print(path)
    print(f"{len(devices)} devices with a location", file=sys.stderr)
    return 0


def _check(args: argparse.Namespace) -> int:
    from dashboards.builder.checks import has_values, structure_problems, targets
    from dashboards.builder.provisioning import load_dashboards, stale_files
    from urbansense.influx import InfluxClient, InfluxError
    from urbansense.influxql import ALL, TimeRange, parse_duration_ms

    problems = [f"dashboards/{rel}: differs from the code; run: urbansense dashboards build"
                for rel in stale_files()]
    dashboards = load_dashboards()
    problems += structure_problems(dashboards)
    empty: list[str] = []
    if args.influx:
        influx = InfluxClient(args.influx, args.database)
        end = int(time.time() * 1000)
        window = TimeRange(end - parse_duration_ms(args.range), end)
        variables = {"district": ALL, "device": ALL, "gateway": ALL}
        for dash in dashboards.values():
            for t in targets(dash):
                try:
                    if not has_values(influx.query(t.expanded(window, variables))):
                        empty.append(t.name)
                except InfluxError as exc:
                    hint = ("; create the roll-ups with: urbansense ingest init"
                            if "retention policy not found" in str(exc) else "")
                    problems.append(f"{t.name}: {exc}{hint}")
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    for name in empty:
        print(f"no data: {name}", file=sys.stderr)
    total = sum(len(targets(d)) for d in dashboards.values())
    print(f"{len(dashboards)} dashboards, {total} queries: {len(problems)} problems"
          + (f", {len(empty)} without data in the last {args.range}" if args.influx else ""))
    return 1 if problems or empty else 0


def _push(args: argparse.Namespace) -> int:
    from dashboards.builder.provisioning import load_dashboards
    from dashboards.builder.push import push, token_from_env

    result = push(args.url, load_dashboards(), token_from_env(), timeout_s=args.timeout)
    if result.folder_created:
        print("created folder UrbanSense")
    for uid in result.dashboards:
        print(f"pushed {uid}")
    return 0
