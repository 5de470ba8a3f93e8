"""`urbansense ingest run | init`"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    p = sub.add_parser("ingest", help="ingester: MQTT telemetry into InfluxDB")
    isub = p.add_subparsers(dest="ingest_cmd", required=True)

    run = isub.add_parser("run", help="run one ingester instance")
    run.add_argument("--mqtt", help="broker URL (default: env URBANSENSE_MQTT_URL, the local stack)")
    run.add_argument("--amqp", metavar="URL[,URL...]",
                     help="take the messages from a RabbitMQ cluster's ingest queue (cluster mode; every node's "
                          "amqp:// URL, tried in turn; default env URBANSENSE_AMQP_URLS) instead of the MQTT "
                          "shared subscription; --mqtt then names the cluster's MQTT listeners, for dead letters")
    run.add_argument("--influx", help="InfluxDB URL (default: env URBANSENSE_INFLUX_URL, the local stack)")
    run.add_argument("--database", default="city")
    run.add_argument("--instance", default="ingest-1",
                     help="stable instance name; the MQTT client id is urbansense-<instance>, and a "
                          "restarted instance must keep it to get back the messages it held")
    run.add_argument("--duration", type=float, help="stop after this many seconds")
    run.add_argument("--config", type=Path, help="YAML file of options (see ingest/ingest.example.yaml)")
    run.add_argument("--batch-lines", type=int, help="lines per InfluxDB write (default 5000)")
    run.add_argument("--batch-delay", type=float, dest="batch_delay_s",
                     help="longest wait of a partly filled batch, seconds (default 1)")
    run.add_argument("--writers", type=int, dest="max_concurrent_writes",
                     help="concurrent InfluxDB writes (default 2)")
    run.add_argument("--receive-maximum", type=int,
                     help="unacknowledged MQTT messages held at most (default 1000)")
    run.add_argument("--share-group", help="shared-subscription group (default ingest)")
    run.add_argument("--metrics-interval", type=float, dest="metrics_interval_s",
                     help="self-metrics point into InfluxDB every N s (default 10; 0 = off)")
    run.add_argument("--prometheus-port", type=int, help="serve Prometheus metrics on this port (default off)")
    run.add_argument("--prometheus-host", help="address for --prometheus-port (default 127.0.0.1; 0.0.0.0 where "
                                               "Prometheus scrapes from another host or container)")
    run.add_argument("--retention-policy", help="write into this retention policy (default: the database's default)")
    run.add_argument("--leave", action="store_true", dest="leave_on_stop", default=None,
                     help="on stop, leave the shared subscription and end the session (instance removed for good)")
    run.add_argument("--log-level", default="INFO")
    run.set_defaults(func=_run)

    init = isub.add_parser("init", help="create the database, retention policies and roll-up continuous queries")
    init.add_argument("--influx", help="InfluxDB URL (default: env URBANSENSE_INFLUX_URL, the local stack)")
    init.add_argument("--database", default="city")
    init.add_argument("--raw-retention", default="30d", help="duration of the default policy `raw` (default 30d)")
    init.add_argument("--dry-run", action="store_true", help="print the InfluxQL statements, run nothing")
    init.set_defaults(func=_init)


def _run(args: argparse.Namespace) -> int:
    from ingest.service import Ingester
    from ingest.settings import IngestSettings
    from urbansense.endpoints import default_urls
    from urbansense.mqtt import MqttSettings

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s ingest %(levelname)s %(message)s")
    settings = IngestSettings.load(
        args.config, batch_lines=args.batch_lines, batch_delay_s=args.batch_delay_s,
        max_concurrent_writes=args.max_concurrent_writes, receive_maximum=args.receive_maximum,
        prometheus_port=args.prometheus_port, prometheus_host=args.prometheus_host,
        retention_policy=args.retention_policy,
        leave_on_stop=args.leave_on_stop, share_group=args.share_group,
        metrics_interval_s=args.metrics_interval_s)
    mqtt_url, influx_url = default_urls()
    ing = Ingester(MqttSettings.from_url(args.mqtt or mqtt_url), args.influx or influx_url,
                   database=args.database, instance=args.instance, settings=settings,
                   amqp_urls=amqp.split(",") if (amqp := args.amqp or os.environ.get("URBANSENSE_AMQP_URLS"))
                   else None)
    signal.signal(signal.SIGTERM, lambda *_: ing.stop())
    signal.signal(signal.SIGINT, lambda *_: ing.stop())
    # The network thread holds the GIL most of the time; with the default 5 ms switch
    # interval the writer threads waited that long for it at every step of a request, and
    # InfluxDB idled between writes. 0.5 ms: +5-25 % end to end in paired runs
    # (docs/benchmarks/ingest.md).
    sys.setswitchinterval(0.0005)
    ing.run(args.duration)
    return 0


def _init(args: argparse.Namespace) -> int:
    from ingest.bootstrap import init_database
    from urbansense.endpoints import default_urls
    from urbansense.influx import InfluxClient

    influx = InfluxClient(args.influx or default_urls()[1], args.database)
    for statement in init_database(influx, args.database, raw_duration=args.raw_retention,
                                   dry_run=args.dry_run):
        print(statement)
    return 0
