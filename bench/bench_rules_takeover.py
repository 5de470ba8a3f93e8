"""Rules partitioned by district (issue 22, rules/partitions.py): how long a standby takes
over a killed instance's districts, on a three-node RabbitMQ cluster on loopback.

Two rules processes (`rules run --amqp`) share `--districts` districts. A gateway sends a
reading to every district every 0.25 s, each from a new device with its pressure below
the threshold, so every district raises an alert on every reading. Each round SIGKILLs
the instance that holds more districts and measures, for its districts:

- **alerts resumed**: from the SIGKILL to the first alert of each of them from the
  survivor (its queue handed over by RabbitMQ, the state read back from InfluxDB's
  look-back, the reading evaluated);
- **idle take-over**: the same kill with no traffic, until the survivor says it holds
  every district (a district without traffic is taken when its tick comes);
- **spread again**: the killed instance restarted, until each district is held by its
  rendezvous owner again.

    .venv/bin/python bench/bench_rules_takeover.py
    .venv/bin/python bench/bench_rules_takeover.py --districts 16 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from application.cluster import RabbitCluster  # noqa: E402
from application.stack import Stack  # noqa: E402
from ingest.service import Ingester  # noqa: E402
from rules.partitions import MEMBERS_TOPIC, Membership, owner  # noqa: E402
from urbansense import codec, topics  # noqa: E402
from urbansense.influx import InfluxClient  # noqa: E402
from urbansense.mqtt import MqttClient, MqttSettings  # noqa: E402
from urbansense.schema import AlertEvent, Sample, TelemetryBatch  # noqa: E402

RULES = """
domain: water
rules:
  - {id: water.low, measurement: water, metric: pressure_mpa, op: below, threshold: 0.2, clear: 0.22,
     severity: critical}
"""
NAMES = ("rules-a", "rules-b")


def start_rules(name: str, tmp: Path, cluster: RabbitCluster, influx: InfluxClient,
                districts: list[str]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "application.cli", "rules", "run", "--rules", str(tmp / "rules"),
               "--amqp", ",".join(cluster.amqp_urls), "--mqtt", cluster.mqtt_url, "--influx", influx.url,
               "--database", influx.database, "--instance", name, "--lookback", "300",
               "--gateways", str(tmp / "gateways"), *[a for d in districts for a in ("--district", d)]]
    with open(tmp / f"{name}.log", "ab") as out:
        return subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "URBANSENSE_ALERTMANAGER_URL": ""})


class Watch:
    def __init__(self, url: str) -> None:
        self.members = Membership("bench", expire_s=2.5)
        self.alerts: queue.Queue[tuple[float, AlertEvent]] = queue.Queue()
        self.client = MqttClient(MqttSettings.from_url(url), client_id=f"bench-watch-{os.getpid()}")
        self.client.subscribe(MEMBERS_TOPIC, lambda m: self.members.hear(bytes(m.payload)), qos=0)
        self.client.subscribe("city/alerts/water/+/+", lambda m: self.alerts.put(
            (time.monotonic(), codec.decode_alert(bytes(m.payload)))), qos=1)
        self.client.connect()
        self.client.wait_subscribed(15)

    def holders(self) -> dict[str, set[str]]:
        return self.members.holders(time.monotonic())

    def until(self, cond: object, timeout_s: float = 60.0) -> float:
        started = time.monotonic()
        while not cond():  # type: ignore[operator]
            if time.monotonic() - started > timeout_s:
                raise SystemExit(f"not within {timeout_s:.0f} s; held: {self.holders()}")
            time.sleep(0.02)
        return time.monotonic() - started


class Traffic(threading.Thread):
    def __init__(self, url: str, districts: list[str]) -> None:
        super().__init__(daemon=True)
        self.client = MqttClient(MqttSettings.from_url(url), client_id=f"bench-gw-{os.getpid()}")
        self.client.connect()
        self.districts = districts
        self.on = threading.Event()

    def run(self) -> None:
        tick = 0
        while True:
            self.on.wait()
            t = int(time.time() * 1000)
            tick += 1
            for d in self.districts:  # a new device each time: one alert a reading, never flapping
                batch = TelemetryBatch(gw="gw-1", district=d, seq=t, sent=t, samples=[
                    Sample(f"wp-{tick}", "water", t, {"pressure_mpa": 0.1})])
                self.client.publish(topics.telemetry(d, "gw-1"), codec.encode_batch(batch), qos=1)
            time.sleep(0.25)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--districts", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-takeover-"))
    (tmp / "rules").mkdir()
    (tmp / "rules" / "water.yaml").write_text(RULES)
    (tmp / "gateways").mkdir()
    districts = [f"bench-{i:02d}" for i in range(args.districts)]
    stack = Stack(tmp / "stack")
    stack.up()
    cluster = RabbitCluster(tmp / "stack", 3)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    resumed: list[float] = []
    idle: list[float] = []
    spread: list[float] = []
    try:
        cluster.up()
        influx = InfluxClient(stack.influx_url, f"bench_{time.time_ns()}")
        influx.create_database()
        ing = Ingester(MqttSettings.from_url(cluster.mqtt_url), influx.url, database=influx.database,
                       instance="bench-ingest", amqp_urls=cluster.amqp_urls, max_delay_s=0.1)
        threading.Thread(target=ing.run, daemon=True).start()
        watch = Watch(cluster.mqtt_url)
        traffic = Traffic(cluster.mqtt_url, districts)
        traffic.start()
        for name in NAMES:
            procs[name] = start_rules(name, tmp, cluster, influx, districts)

        def spread_out() -> bool:
            held = watch.holders()
            return all(held.get(d) == {owner(d, NAMES)} for d in districts)

        watch.until(spread_out, 120)
        print(f"{args.districts} districts spread over {', '.join(NAMES)}")
        for r in range(args.rounds):
            for with_traffic in (True, False):
                held = watch.holders()
                victim = max(NAMES, key=lambda n: sum(1 for d in districts if held.get(d) == {n}))
                survivor = next(n for n in NAMES if n != victim)
                moved = {d for d in districts if held.get(d) == {victim}}
                if with_traffic:
                    traffic.on.set()
                    watch.until(lambda: not watch.alerts.empty(), 30)
                while not watch.alerts.empty():
                    watch.alerts.get()
                killed = time.monotonic()
                procs[victim].send_signal(signal.SIGKILL)
                procs[victim].wait(10)
                if with_traffic:
                    first: dict[str, float] = {}
                    while len(first) < len(moved):
                        at, ev = watch.alerts.get(timeout=60)
                        if ev.district in moved and at > killed:
                            first.setdefault(ev.district, at - killed)
                    resumed.extend(first.values())
                    traffic.on.clear()
                    print(f"round {r + 1}: {len(moved)} districts of {victim} resumed alerting after "
                          f"{min(first.values()):.2f}-{max(first.values()):.2f} s")
                else:
                    watch.until(lambda s=survivor: all(watch.holders().get(d) == {s} for d in districts), 60)
                    idle.append(time.monotonic() - killed)
                    print(f"round {r + 1}: idle, {len(moved)} districts of {victim} held by {survivor} after "
                          f"{idle[-1]:.2f} s")
                # the survivor says it holds them all before the victim comes back
                watch.until(lambda s=survivor: all(watch.holders().get(d) == {s} for d in districts), 60)
                procs[victim] = start_rules(victim, tmp, cluster, influx, districts)
                back = time.monotonic()
                spread.append(watch.until(lambda v=victim, b=back: watch.members.heard.get(v, (0.0,))[0] > b
                                          and spread_out(), 120))
                print(f"round {r + 1}: {victim} restarted; spread again after {spread[-1]:.2f} s")
        ing.stop()
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
                p.wait(20)
        cluster.down()
        stack.down()

    def row(name: str, xs: list[float]) -> str:
        a = np.asarray(xs)
        return (f"| {name} | {len(a)} | {np.percentile(a, 50):.2f} s | {np.percentile(a, 99):.2f} s | "
                f"{a.max():.2f} s |")

    print(f"\n{args.districts} districts, 2 rules instances, 3 RabbitMQ nodes, {args.rounds} rounds\n")
    print("| take-over | samples | p50 | p99 | max |\n|---|---|---|---|---|")
    print(row("alerts resumed after SIGKILL (traffic every 0.25 s)", resumed))
    print(row("idle districts held by the survivor", idle))
    print(row("restarted instance: districts spread again", spread))
    return 0


if __name__ == "__main__":
    sys.exit(main())
