"""The network-partition scenario, run inside the hub namespace test_partition.py builds
(`ip netns exec <hub> python -m tests.cluster.partition_run DIR HUB NS:IP ...`): a local
InfluxDB, three RabbitMQ nodes each in its own namespace behind a veth pair on the hub's
bridge, an ingester on node 1, a gateway on node 3. After 100 batches node 3's link is
cut for 30 s (a partition: node 3 alone, the majority and the clients on the other
side), then restored; 100 batches later the cluster has node 3 back, and 100 more go
through. Prints one JSON line: what the gateway had
acknowledged and what InfluxDB holds."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from application.cluster import RabbitCluster
from application.stack import Stack
from ingest.service import Ingester
from tests.cluster.test_rabbit_cluster import SAMPLES, Gateway, _stored
from tests.waiting import wait_for
from urbansense.influx import InfluxClient
from urbansense.mqtt import MqttSettings

BATCHES = 100
CUT_S = 30.0


def main() -> int:
    run_dir, hub = Path(sys.argv[1]), sys.argv[2]
    nodes = [tuple(arg.split(":")) for arg in sys.argv[3:]]
    stack = Stack(run_dir / "stack")
    stack.up()
    cluster = RabbitCluster(run_dir, len(nodes), netns=[(ns, ip) for ns, ip in nodes])
    result: dict[str, object] = {}
    try:
        cluster.up()
        influx = InfluxClient(stack.influx_url, "partition")
        influx.create_database()
        ing = Ingester(MqttSettings.from_url(cluster.mqtt_url), influx.url, database=influx.database,
                       instance="ingest-partition", amqp_urls=cluster.amqp_urls, max_delay_s=0.2)
        threading.Thread(target=ing.run, daemon=True).start()
        assert ing.amqp is not None and ing.amqp.wait_connected(30)
        last = cluster.nodes[-1]
        # the gateway on the node that will be cut off, the others its fallbacks
        url = "mqtt://" + ",".join(f"{n.ip}:{n.mqtt_port}" for n in [last, *cluster.nodes[:-1]]) + "?protocol=3.1.1"
        gw = Gateway(url, "gw-partition", keepalive_s=5)
        seq = 0

        def publish(count: int) -> None:
            nonlocal seq
            for _ in range(count):
                seq += 1
                gw.publish(seq)
                time.sleep(0.02)  # about 50 batches a second: tens of thousands of readings in all

        publish(BATCHES)
        subprocess.run(["ip", "link", "set", f"h{last.index}", "down"], check=True)
        cut_at = time.monotonic()
        # longer than the nodes take to see it (net_ticktime 10 s): node 3 alone pauses
        while time.monotonic() - cut_at < CUT_S:
            publish(10)
        subprocess.run(["ip", "link", "set", f"h{last.index}", "up"], check=True)
        healed_at = time.monotonic()
        publish(BATCHES)
        cluster.wait_running(len(nodes), 180)
        rejoined_s = time.monotonic() - healed_at
        publish(BATCHES)
        moved_to = gw.connected_node(cluster)
        gw.close()
        expected = len(gw.acked) * SAMPLES
        wait_for(lambda: _stored(influx, "gw-partition")[0] >= expected, 60,
                 what=f"the {expected} acknowledged readings in InfluxDB")
        ing.stop()
        points, distinct = _stored(influx, "gw-partition")
        result = {"acked": gw.acked, "expected": expected, "points": points, "distinct": distinct,
                  "republished": gw.republished, "longest_wait_s": gw.longest_wait_s, "moved_to": moved_to,
                  "cut_for_s": healed_at - cut_at, "rejoined_s": rejoined_s, "hub": hub}
    finally:
        cluster.down()
        stack.down()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
