"""A cluster node that stops answering while the agent's connection to it looks open (a
network partition, a frozen broker): the agent notices the missing PUBACKs after
uplink.ack_timeout_s and moves to the next node, resending from its log, instead of
waiting for the keepalive (1.5 x 30 s)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from application.stack import Stack
from tests.edge.conftest import AgentThread, Collector, unique, write_gateway
from tests.edge.test_mqtt_input_and_rtu import AIR_PROFILE
from urbansense.mqtt import MqttClient, MqttSettings

pytestmark = pytest.mark.integration


def test_a_node_that_stops_answering_is_left_after_the_ack_timeout(tmp_path: Path, stack: Stack,
                                                                    two_brokers: tuple[Stack, Stack]) -> None:
    first, second = two_brokers
    gw, dev = unique("gw"), unique("aq")
    cfg = {"gateway": gw, "district": "test", "batch": {"max_interval_s": 0.2},
           "uplink": {"ack_timeout_s": 2, "resume_delay_s": 0.5},  # keepalive stays 30 s
           "links": [{"name": "cabinet", "transport": "mqtt", "host": "127.0.0.1", "port": stack.mqtt_port,
                      "devices": [{"id": dev, "profile": "test-air"}]}]}
    path = write_gateway(tmp_path, cfg, [AIR_PROFILE])
    uplink = f"mqtt://127.0.0.1:{first.mqtt_port},127.0.0.1:{second.mqtt_port}"
    on_first = Collector(first.mqtt_url, f"city/test/{gw}/telemetry")
    on_second = Collector(second.mqtt_url, f"city/test/{gw}/telemetry")
    sensor = MqttClient(MqttSettings.from_url(stack.mqtt_url), client_id=unique("sensor"))
    sensor.connect()

    def values(*collectors: Collector) -> set[float]:
        return {s.f["pm25_ugm3"] for c in collectors for s in c.samples(dev) if "pm25_ugm3" in s.f}

    try:
        with AgentThread(path, uplink, tmp_path / "wal") as run:
            run.wait_ready()
            for k in range(10):
                sensor.publish_wait(f"sensors/{dev}/data", orjson.dumps({"pm25": float(k)}))
            on_first.until(lambda: values(on_first) == {float(k) for k in range(10)}, 15, "the first ten on node 1")
            first.pause("mosquitto")  # connections stay open; nothing is answered
            for k in range(10, 20):
                sensor.publish_wait(f"sensors/{dev}/data", orjson.dumps({"pm25": float(k)}))
            # well inside the keepalive's 45 s: only the PUBACK time-out can have moved it
            on_second.until(lambda: values(on_second) >= {float(k) for k in range(10, 20)}, 20,
                            "the next ten on node 2, after the agent left the frozen node")
            assert run.agent.forwarder.ack_timeouts >= 1
    finally:
        sensor.close()
        first.resume("mosquitto")
        on_first.drain(0.2)
        on_first.close()
        on_second.close()
    assert values(on_first, on_second) == {float(k) for k in range(20)}  # nothing lost


def test_a_slow_link_that_acknowledges_batch_by_batch_is_not_dropped(tmp_path: Path) -> None:
    """The time-out counts from the oldest batch's sending or from the last PUBACK, the
    later: on a slow uplink the oldest batch of a window waits long, but PUBACKs keep coming."""
    import time

    from edge.store_and_forward import StoreAndForward
    from edge.telemetry import SelfTelemetry
    from edge.wal import WriteAheadLog
    from urbansense.config import BatchSpec, WalSpec

    wal = WriteAheadLog(tmp_path / "slow.wal", max_bytes=1 << 20)
    client = MqttClient(MqttSettings(), client_id=unique("edge-slow"))  # never connected: drop() is a no-op
    fwd = StoreAndForward(wal, client, "city/test/gw/telemetry", gateway="gw", district="test", batch=BatchSpec(),
                          wal_spec=WalSpec(), telemetry=SelfTelemetry("gw"), ack_timeout_s=2.0)
    now = time.monotonic()
    fwd._online = True
    fwd._inflight = {1: ([1], 1, False, now - 30.0), 2: ([2], 1, False, now - 30.0)}  # sent 30 s ago
    fwd._last_ack_at = now - 0.5  # ... but the batch before them was acknowledged just now
    fwd._check_acks_coming()
    assert fwd.ack_timeouts == 0 and len(fwd._inflight) == 2
    fwd._last_ack_at = now - 3.0  # nothing for longer than the time-out
    fwd._check_acks_coming()
    assert fwd.ack_timeouts == 1 and not fwd._inflight
    wal.close()
