"""`urbansense ingest ...`"""

from __future__ import annotations

import argparse
import logging
import signal


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("ingest", help="ingester: MQTT telemetry into InfluxDB")
    isub = p.add_subparsers(dest="ingest_cmd", required=True)
    run = isub.add_parser("run", help="run one ingester instance")
    run.add_argument("--mqtt", help="broker URL (default: env URBANSENSE_MQTT_URL, the local stack)")
    run.add_argument("--influx", help="InfluxDB URL (default: env URBANSENSE_INFLUX_URL, the local stack)")
    run.add_argument("--database", default="city")
    run.add_argument("--instance", default="ingest-1", help="stable instance name (MQTT client id)")
    run.add_argument("--duration", type=float)
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ingest.service import Ingester
    from urbansense.mqtt import MqttSettings
    from urbansense.stack import default_urls

    logging.basicConfig(level=logging.INFO, format="%(asctime)s ingest %(levelname)s %(message)s")
    mqtt_url, influx_url = default_urls()
    ing = Ingester(MqttSettings.from_url(args.mqtt or mqtt_url), args.influx or influx_url,
                   database=args.database, instance=args.instance)
    signal.signal(signal.SIGTERM, lambda *_: ing.stop())
    signal.signal(signal.SIGINT, lambda *_: ing.stop())
    ing.run(args.duration)
    return 0
