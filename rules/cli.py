"""`urbansense rules ...`"""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("rules", help="rules engine: early warnings")
    rsub = p.add_subparsers(dest="rules_cmd", required=True)
    run = rsub.add_parser("run", help="run the rules engine")
    run.add_argument("--rules", type=Path, help="rule file or folder (default: rules/catalog)")
    run.add_argument("--mqtt")
    run.add_argument("--influx")
    run.add_argument("--database", default="city")
    run.add_argument("--duration", type=float)
    run.set_defaults(func=_run)
    check = rsub.add_parser("check", help="validate rule files")
    check.add_argument("--rules", type=Path)
    check.set_defaults(func=_check)


def _load(path: Path | None) -> list:  # type: ignore[type-arg]
    from rules.catalog import CATALOG_DIR, load_catalog

    return load_catalog(path or CATALOG_DIR)


def _run(args: argparse.Namespace) -> int:
    from rules.engine import RulesService
    from urbansense.mqtt import MqttSettings
    from urbansense.stack import default_urls

    logging.basicConfig(level=logging.INFO, format="%(asctime)s rules %(levelname)s %(message)s")
    mqtt_url, influx_url = default_urls()
    svc = RulesService(_load(args.rules), MqttSettings.from_url(args.mqtt or mqtt_url), args.influx or influx_url,
                      database=args.database)
    signal.signal(signal.SIGTERM, lambda *_: svc.stop())
    signal.signal(signal.SIGINT, lambda *_: svc.stop())
    svc.run(args.duration)
    return 0


def _check(args: argparse.Namespace) -> int:
    rules = _load(args.rules)
    print(f"ok: {len(rules)} rule(s)")
    return 0
