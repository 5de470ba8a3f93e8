"""The MQTT adapter on a broker cluster: a URL naming several nodes, tried in turn when
the one in use is lost, and MQTT 3.1.1 for brokers without 5 (RabbitMQ's MQTT plugin
before 3.13)."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from application.stack import Stack
from tests.waiting import wait_for
from urbansense.mqtt import MqttClient, MqttSettings
from urbansense.mqtt.settings import MqttError


def test_a_cluster_url_names_every_node_and_the_protocol() -> None:
    s = MqttSettings.from_url("mqtt://10.0.0.1:1883,10.0.0.2,broker-3:1885?protocol=3.1.1")
    assert s.nodes == [("10.0.0.1", 1883), ("10.0.0.2", 1883), ("broker-3", 1885)] and s.protocol == "3.1.1"
    assert MqttSettings.from_url(s.url).nodes == s.nodes
    one = MqttSettings.from_url("mqtts://b:8884")
    assert (one.nodes, one.protocol, one.url) == ([("b", 8884)], "5", "mqtts://b:8884")
    with pytest.raises(MqttError, match=r"unknown option 'protocol=4'.*fix: \?protocol=5 or \?protocol=3\.1\.1"):
        MqttSettings.from_url("mqtt://a:1?protocol=4")
    with pytest.raises(MqttError, match="bad port in 'b:99999'"):
        MqttSettings.from_url("mqtt://a:1,b:99999")


class ConnectRecorder:
    """A TCP port that reads the first packet a client sends (its CONNECT) and hangs up."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.packets: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(5)
            with conn, contextlib.suppress(OSError):
                self.packets.put(conn.recv(256))


@pytest.fixture
def recorder() -> Iterator[ConnectRecorder]:
    rec = ConnectRecorder()
    yield rec
    rec.sock.close()


@pytest.mark.parametrize(("query", "level"), [("", 5), ("?protocol=3.1.1", 4)])
def test_the_client_speaks_the_protocol_the_url_asks_for(recorder: ConnectRecorder, query: str, level: int) -> None:
    client = MqttClient(MqttSettings.from_url(f"mqtt://127.0.0.1:{recorder.port}{query}"), f"proto-{level}")
    client.connect(wait=False)
    try:
        packet = recorder.packets.get(timeout=10)
    finally:
        client.close()
    # CONNECT: type 1, remaining length, "MQTT" (length-prefixed), then the protocol level
    assert packet[0] == 0x10 and packet[2:8] == b"\x00\x04MQTT" and packet[8] == level


def test_a_lost_node_is_replaced_by_the_next_one(two_brokers: tuple[Stack, Stack]) -> None:
    first, second = two_brokers
    url = f"mqtt://127.0.0.1:{first.mqtt_port},127.0.0.1:{second.mqtt_port}?protocol=3.1.1"
    got: queue.Queue[bytes] = queue.Queue()
    listener = MqttClient(MqttSettings.from_url(second.mqtt_url), "cluster-listener")
    listener.subscribe("city/test/failover", lambda m: got.put(bytes(m.payload)))
    listener.connect()
    assert listener.wait_subscribed(10)
    client = MqttClient(MqttSettings.from_url(url), "cluster-client", reconnect_min_s=0.1, reconnect_max_s=0.5)
    client.connect()
    try:
        client.publish_wait("city/test/failover", b"to the first")
        assert got.empty()  # it went to the first node, which the listener is not on
        first.stop("mosquitto", kill=True)
        wait_for(lambda: client.connected and client.stats.connects == 2, 10, what="the client on the second node")
        client.publish_wait("city/test/failover", b"to the second")
        assert got.get(timeout=10) == b"to the second"
    finally:
        client.close()
        listener.close()


def test_a_gateway_names_the_cluster_in_its_uplink(tmp_path: Path) -> None:
    from edge.agent import uplink_settings
    from tests.edge.conftest import write_gateway
    from urbansense.config import ConfigError, load_gateway

    base = {"gateway": "gw-1", "district": "test", "links": [
        {"name": "l", "transport": "tcp", "host": "127.0.0.1", "port": 1502,
         "devices": [{"id": "d-1", "profile": "test-meter", "unit": 1}]}]}
    path = write_gateway(tmp_path, {**base, "uplink": {"host": "rmq-1", "port": 1883, "protocol": "3.1.1",
                                                       "fallbacks": ["rmq-2:1883", "rmq-3:1884"]}})
    settings = uplink_settings(load_gateway(path))
    assert settings.nodes == [("rmq-1", 1883), ("rmq-2", 1883), ("rmq-3", 1884)] and settings.protocol == "3.1.1"
    path = write_gateway(tmp_path, {**base, "uplink": {"fallbacks": ["rmq-2"]}})
    with pytest.raises(ConfigError, match=r"uplink\.fallbacks.*'rmq-2' is not host:port"):
        load_gateway(path)


def test_the_health_check_passes_when_any_node_answers(stack: Stack) -> None:
    """`python -m urbansense.mqtt.reachable URL` (the containers' health check)."""
    import subprocess
    import sys

    from application.stack import free_port

    dead = free_port()
    one_up = f"mqtt://127.0.0.1:{dead},127.0.0.1:{stack.mqtt_port}?protocol=3.1.1"
    none_up = f"mqtt://127.0.0.1:{dead}"
    ok = subprocess.run([sys.executable, "-m", "urbansense.mqtt.reachable", one_up], capture_output=True, text=True,
                        timeout=30)
    assert ok.returncode == 0, ok.stderr
    down = subprocess.run([sys.executable, "-m", "urbansense.mqtt.reachable", none_up], capture_output=True,
                          text=True, timeout=30)
    assert down.returncode == 1 and f"127.0.0.1:{dead}" in down.stderr and "no broker node answers" in down.stderr
