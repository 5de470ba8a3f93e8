"""Alert delivery through Alertmanager (issue 21): the rules service raises alerts, which
go through a real Alertmanager (the shipped routing, its receivers' webhooks pointed at
the relay) and the relay's MQTT targets to `city/notify/<receiver>`. Alertmanager is
stopped for `--outage` seconds in the middle. Counted at the receivers' topics: alerts
delivered, lost, and duplicates beyond the relay's deduplication; measured: the delay
from the alert's publication on `city/alerts/...` to its notification.

    .venv/bin/python bench/bench_alert_delivery.py                       # 60 alerts, 60-s outage
    .venv/bin/python bench/bench_alert_delivery.py --group-interval 5s   # faster re-notification than shipped
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from application.stack import Stack, free_port  # noqa: E402
from rules.relay import Relay, Target, serve  # noqa: E402
from rules.routing import config, via_relay  # noqa: E402
from rules.service import RulesService, ServiceConfig  # noqa: E402
from urbansense import codec, topics  # noqa: E402
from urbansense.mqtt import MqttClient, MqttSettings  # noqa: E402
from urbansense.schema import Sample, TelemetryBatch  # noqa: E402

RULES = """
domain: water
rules:
  - {id: water.low, measurement: water, metric: pressure_mpa, op: below, threshold: 0.2, severity: critical}
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--alerts", type=int, default=60, help="alerts raised, one a second (default 60)")
    ap.add_argument("--outage", type=float, default=60.0, help="seconds Alertmanager is down (default 60)")
    ap.add_argument("--group-interval", default=None, help="route group_interval (default: the shipped one)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-alerts-"))
    stack = Stack(tmp / "stack")
    stack.up()
    relay_port = free_port()
    am_config = via_relay(config(), f"http://127.0.0.1:{relay_port}", group_interval=args.group_interval)
    stack.alertmanager_config = yaml.safe_dump(am_config)
    stack.start("alertmanager")
    mqtt = MqttSettings.from_url(stack.mqtt_url)
    relay_client = MqttClient(mqtt, client_id="bench-relay")
    relay_client.connect()
    targets = {r["name"]: [Target(r["name"], 0, "mqtt", "", None)] for r in am_config["receivers"]}
    relay = Relay(targets, publish=relay_client.publish_wait)
    server = serve(relay, "127.0.0.1", relay_port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (tmp / "rules").mkdir()
    (tmp / "rules" / "water.yaml").write_text(RULES)
    district = f"b{uuid.uuid4().hex[:6]}"
    svc = RulesService(ServiceConfig(rules_path=tmp / "rules", mqtt=mqtt, influx_url=None, instance="bench-rules",
                                     districts={district}, gateways=[], lookback_s=0,
                                     alertmanager_url=stack.alertmanager_url, alertmanager_resend_s=30.0))
    threading.Thread(target=svc.run, daemon=True).start()
    raised: dict[str, float] = {}
    notified: dict[tuple[str, str, str], list[float]] = {}
    inbox: queue.Queue[tuple[str, bytes, float]] = queue.Queue()
    watcher = MqttClient(mqtt, client_id="bench-watch")
    watcher.subscribe(f"city/alerts/+/{district}/+", lambda m: inbox.put((m.topic, bytes(m.payload), time.time())))
    watcher.subscribe("city/notify/#", lambda m: inbox.put((m.topic, bytes(m.payload), time.time())))
    watcher.connect()
    watcher.wait_subscribed(10)
    sender = MqttClient(mqtt, client_id="bench-sender")
    sender.connect()
    svc.ready.wait(10)
    svc.mqtt.wait_subscribed(10)

    def drain(seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                topic, payload, at = inbox.get(timeout=left)
            except queue.Empty:
                return
            body = json.loads(payload)
            if topic.startswith("city/alerts/"):
                if body["state"] == "firing":
                    raised.setdefault(body["id"], at)
            elif body.get("status") == "firing" and body["labels"].get("district") == district:
                key = (body["receiver"], body["annotations"]["alert_id"], body["status"])
                notified.setdefault(key, []).append(at)

    outage_from = args.alerts // 3
    down_since: float | None = None
    print(f"{args.alerts} alerts, one a second; Alertmanager down from alert {outage_from} for {args.outage:g} s")
    try:
        for i in range(args.alerts):
            if i == outage_from:
                stack.stop("alertmanager")
                down_since = time.monotonic()
            if down_since is not None and time.monotonic() - down_since >= args.outage:
                stack.start("alertmanager")
                down_since = None
            t = int(time.time() * 1000)
            batch = TelemetryBatch(gw="gw-1", district=district, seq=i, sent=t,
                                   samples=[Sample(f"wp-{i:03d}", "water", t, {"pressure_mpa": 0.1})])
            sender.publish_wait(topics.telemetry(district, "gw-1"), codec.encode_batch(batch))
            drain(1.0)
        if down_since is not None:  # the outage outlasts the alerts: it still lasts its full time
            drain(max(0.0, args.outage - (time.monotonic() - down_since)))
            stack.start("alertmanager")
        expected = {a for a in raised}
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not all(
                expected <= {k[1] for k in notified if k[0] == receiver} for receiver in ("utility-water",
                                                                                          "duty-officer")):
            drain(1.0)
        drain(5.0)  # late duplicates, if any
    finally:
        svc.stop()
        server.shutdown()
        for client in (watcher, sender, relay_client):
            client.close()
        stack.down()
    water = {k[1]: v for k, v in notified.items() if k[0] == "utility-water"}
    duty = {k[1]: v for k, v in notified.items() if k[0] == "duty-officer"}
    delays = np.array([v[0] - raised[a] for got in (water, duty) for a, v in got.items() if a in raised])
    duplicates = sum(len(v) - 1 for v in notified.values())
    print("| what | measured |\n|---|---|")
    print(f"| alerts raised (firing on city/alerts) | {len(raised)} |")
    print(f"| delivered to city/notify/utility-water / duty-officer | {len(water)} / {len(duty)} |")
    print(f"| lost | {len(set(raised) - set(water))} / {len(set(raised) - set(duty))} |")
    print(f"| duplicates at the receivers | {duplicates} |")
    if len(delays):
        print(f"| delay alert -> receiver (both), p50 / p99 / max | {np.percentile(delays, 50):.1f} / "
              f"{np.percentile(delays, 99):.1f} / {delays.max():.1f} s |")
    print(f"| relay: notifications, repeats skipped | {relay.stats.notifications}, {relay.stats.skipped_repeats} |")
    return 0 if raised and set(raised) <= set(water) and set(raised) <= set(duty) and duplicates == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
