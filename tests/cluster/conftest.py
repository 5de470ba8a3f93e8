"""A three-node RabbitMQ cluster for the cluster-mode tests (one per test run: forming it
takes about half a minute), and an ingester consuming its queue."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from application.cluster import RabbitCluster
from application.stack import pid_alive
from ingest.service import Ingester
from urbansense.influx import InfluxClient
from urbansense.mqtt import MqttSettings


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    c = RabbitCluster(tmp_path_factory.mktemp("rabbit"), 3)
    try:
        c.up()
        yield c
    finally:
        epmd = c.epmd_pid
        c.down()
    # nothing of it outlives the cluster: no node, no port mapper
    assert not any(c.alive(n) for n in c.nodes) and epmd and not pid_alive(epmd)


@pytest.fixture
def ingester(cluster: RabbitCluster, influx_db: InfluxClient) -> Iterator[Ingester]:
    ing = Ingester(MqttSettings.from_url(cluster.mqtt_url), influx_db.url, database=influx_db.database,
                   instance=f"ingest-{time.time_ns()}", amqp_urls=cluster.amqp_urls, max_delay_s=0.2)
    thread = threading.Thread(target=ing.run, daemon=True)
    thread.start()
    try:
        assert ing.amqp is not None and ing.amqp.wait_connected(30), "the ingester did not reach the queue"
        yield ing
    finally:
        ing.stop()
        thread.join(30)


