"""Cluster mode against the embedded broker (issue 22), on this machine, all on loopback:

1. Throughput, end to end: `--gateways` publishers (threads, MQTT QoS 1, up to 1000 in
   flight each) send `--batches` batches of 10 readings; one ingester writes them to
   InfluxDB. Measured from the first publish to the last reading in InfluxDB, once through
   the single Mosquitto (MQTT 5, shared subscription) and once through the three-node
   RabbitMQ cluster (MQTT 3.1.1 to every node in turn, the quorum queue, AMQP).
2. Failover: the same through the cluster with the queue's leader SIGKILLed a third of
   the way: the publishers' longest wait between two acknowledgements (PUBACK gap), and
   every reading in InfluxDB exactly once.
3. Per RabbitMQ node: CPU seconds over the run and resident memory at the end.

    .venv/bin/python bench/bench_cluster.py
    .venv/bin/python bench/bench_cluster.py --gateways 8 --batches 4000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from application.cluster import RabbitCluster  # noqa: E402
from application.stack import Stack  # noqa: E402
from ingest.amqp import INGEST_QUEUE  # noqa: E402
from ingest.service import Ingester  # noqa: E402
from urbansense import codec, topics  # noqa: E402
from urbansense.influx import InfluxClient  # noqa: E402
from urbansense.mqtt import MqttClient, MqttSettings  # noqa: E402
from urbansense.schema import Sample, TelemetryBatch  # noqa: E402

SAMPLES = 10
TICK = os.sysconf("SC_CLK_TCK")


class Publisher(threading.Thread):
    """One gateway: its batches pipelined at QoS 1; each PUBACK's time kept."""

    def __init__(self, url: str, name: str, batches: int, node: int = 0) -> None:
        super().__init__(daemon=True)
        settings = MqttSettings.from_url(url)
        if node and settings.fallbacks:  # spread the gateways over the nodes
            nodes = settings.nodes[node:] + settings.nodes[:node]
            settings.host, settings.port, settings.fallbacks = nodes[0][0], nodes[0][1], nodes[1:]
        self.acks: list[float] = []
        self.client = MqttClient(settings, client_id=name, clean_start=False, reconnect_min_s=0.1,
                                 reconnect_max_s=0.5, on_publish_ack=lambda _mid: self.acks.append(time.monotonic()))
        self.name, self.batches = name, batches

    def run(self) -> None:
        self.client.connect()
        for seq in range(1, self.batches + 1):
            t = 1_700_000_000_000 + seq * 1000
            batch = TelemetryBatch(gw=self.name, district="bench", seq=seq, sent=int(time.time() * 1000), samples=[
                Sample(f"{self.name}-d{i}", "water", t, {"pressure_mpa": seq + i / 10}) for i in range(SAMPLES)])
            self.client.publish(topics.telemetry("bench", self.name), codec.encode_batch(batch))
        deadline = time.monotonic() + 300
        while len(self.acks) < self.batches and time.monotonic() < deadline:
            time.sleep(0.05)
        self.client.close()


def _stored(influx: InfluxClient) -> int:
    rows = influx.rows("SELECT count(pressure_mpa) FROM water")
    return int(rows[0]["count"]) if rows else 0


def _group(pgid: int) -> list[Path]:
    """/proc entries of a process group's members (a node's wrapper script and its beam)."""
    members = []
    for task in Path("/proc").iterdir():
        try:
            if task.name.isdigit() and int((task / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                members.append(task)
        except (OSError, IndexError, ValueError):
            continue
    return members


def _cpu_s(pgid: int) -> float:
    """CPU seconds of a node's processes."""
    total = 0.0
    for task in _group(pgid):
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
        except (OSError, IndexError, ValueError):
            continue
    return total


def _rss_mib(pgid: int) -> float:
    """Resident memory of a node's processes."""
    total = 0
    for task in _group(pgid):
        try:
            total += next(int(line.split()[1]) for line in (task / "status").read_text().splitlines()
                          if line.startswith("VmRSS:"))
        except (OSError, StopIteration, ValueError):
            continue
    return total / 1024


def run(url: str, influx: InfluxClient, args: argparse.Namespace, *, amqp_urls: list[str] | None = None,
        fault: Any = None, mqtt_for_ingester: str | None = None) -> dict[str, Any]:
    ing = Ingester(MqttSettings.from_url(mqtt_for_ingester or url), influx.url, database=influx.database,
                   instance=f"bench-{time.time_ns()}", amqp_urls=amqp_urls)
    ing.settings.metrics_interval_s = 0
    worker = threading.Thread(target=ing.run, daemon=True)
    worker.start()
    if amqp_urls:
        assert ing.amqp is not None and ing.amqp.wait_connected(30)
    else:
        ing.mqtt.wait_subscribed(30)
    pubs = [Publisher(url, f"gw-{i}", args.batches, node=i) for i in range(args.gateways)]
    expected = args.gateways * args.batches * SAMPLES
    started = time.monotonic()
    for p in pubs:
        p.start()
    if fault is not None:
        while sum(len(p.acks) for p in pubs) < args.gateways * args.batches // 3:
            time.sleep(0.01)
        fault()
    for p in pubs:
        p.join(400)
    while _stored(influx) < expected and time.monotonic() - started < 600:
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    ing.stop()
    worker.join(30)
    gaps = [float(np.max(np.diff(p.acks))) for p in pubs if len(p.acks) > 1]
    return {"readings": _stored(influx), "expected": expected, "elapsed_s": elapsed,
            "rate": _stored(influx) / elapsed, "acked": sum(len(p.acks) for p in pubs),
            "max_gap_s": max(gaps) if gaps else 0.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateways", type=int, default=4)
    ap.add_argument("--batches", type=int, default=2500, help="batches of 10 readings per gateway (default 2500)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    stack = Stack(tmp / "stack")
    stack.up()
    cluster = RabbitCluster(tmp / "stack", 3)
    rows: list[tuple[str, str, str]] = []
    try:
        t0 = time.monotonic()
        cluster.up()
        print(f"three RabbitMQ nodes up and the topology declared in {time.monotonic() - t0:.1f} s")
        results = {}
        for name, kwargs in (("Mosquitto (one node)", {"url": stack.mqtt_url}),
                             ("RabbitMQ, 3 nodes", {"url": cluster.mqtt_url, "amqp_urls": cluster.amqp_urls}),
                             ("RabbitMQ, leader killed", {"url": cluster.mqtt_url, "amqp_urls": cluster.amqp_urls,
                                                          "fault": lambda: cluster.kill_node(
                                                              cluster.queue_leader(INGEST_QUEUE))})):
            influx = InfluxClient(stack.influx_url, f"bench_{time.time_ns()}")
            influx.create_database()
            cpu0 = {n.index: _cpu_s(n.pid) for n in cluster.nodes if cluster.alive(n)}
            r = results[name] = run(influx=influx, args=args, **kwargs)
            cpu = {i: _cpu_s(n.pid) - cpu0[i] for i, n in ((n.index, n) for n in cluster.nodes)
                   if i in cpu0 and cluster.alive(n)}
            r["cpu"] = cpu
            r["rss"] = {n.index: _rss_mib(n.pid) for n in cluster.nodes if cluster.alive(n)}
            print(f"{name}: {r['readings']:,} of {r['expected']:,} readings in {r['elapsed_s']:.1f} s = "
                  f"{r['rate']:,.0f}/s; longest PUBACK gap {r['max_gap_s'] * 1000:.0f} ms")
            influx.query(f'DROP DATABASE "{influx.database}"', database="")
        for name, r in results.items():
            per_node = ", ".join(f"{r['cpu'].get(i, 0):.1f} s / {r['rss'].get(i, 0):.0f} MiB" for i in (1, 2, 3))
            rows.append((name, f"{r['rate']:,.0f}/s ({r['readings']:,} of {r['expected']:,}, "
                               f"{r['readings'] - r['expected']:+d})", f"{r['max_gap_s'] * 1000:.0f} ms"
                         + (f"; nodes CPU/RSS: {per_node}" if name != "Mosquitto (one node)" else "")))
    finally:
        cluster.down()
        stack.down()
    print("\n| path | readings/s end to end (stored of sent, difference) | longest PUBACK gap; per node CPU / memory |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {' | '.join(row)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
