"""Oversized payloads: the broker refuses anything above the wire contract's limit
(urbansense.codec.MAX_PAYLOAD_BYTES, 256 KiB) - the local stack when asked, and the
deployment's mosquitto.conf always - and the ingester, whatever its broker lets through,
dead-letters a payload above its own `max_payload_bytes` with the reason."""

from __future__ import annotations

import base64
import contextlib
import os
import queue
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from application.stack import Stack, find_binary, free_port, mqtt_answers
from tests.deploy.test_mosquitto_acl import deploy_config
from tests.ingest.harness import (
    Collector,
    Publisher,
    batch_payload,
    isolated_settings,
    now_ms,
    running_ingester,
    stored_keys,
    unique,
    wait_for,
)
from tests.security.conftest import DEPLOY
from urbansense import codec, topics
from urbansense.influx import InfluxClient

pytestmark = pytest.mark.integration
LIMIT = codec.MAX_PAYLOAD_BYTES


def _client(port: int, user: str | None = None, password: str | None = None) -> tuple[paho.Client, queue.Queue[int]]:
    got: queue.Queue[int] = queue.Queue()
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"big-{uuid.uuid4().hex[:8]}", protocol=paho.MQTTv5)
    if user:
        c.username_pw_set(user, password)
    c.on_message = lambda _c, _u, m: got.put(len(m.payload))
    # -1: SUBACK, -2: PUBACK, -3: disconnected (what the broker does with an oversized publish)
    c.on_subscribe = lambda *_a: got.put(-1)
    c.on_publish = lambda *_a: got.put(-2)
    c.on_disconnect = lambda *_a: got.put(-3)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c, got


def _next(got: queue.Queue[int], wanted: set[int], timeout_s: float = 10.0) -> int:
    """The next of the `wanted` events; the others that came first (messages) are put
    back, in their order, for later."""
    deadline = time.monotonic() + timeout_s
    kept: list[int] = []
    try:
        while True:
            event = got.get(timeout=max(0.01, deadline - time.monotonic()))
            if event in wanted:
                return event
            kept.append(event)
    finally:
        for event in kept:
            got.put(event)


def _only_the_limit_passes(port: int, topic: str, user: str | None = None, password: str | None = None) -> None:
    sub, got = _client(port, user, password)
    _rc, _mid = sub.subscribe(topic, qos=1)
    _next(got, {-1})
    try:
        for size in (LIMIT, LIMIT + 1, 2 * LIMIT, 10):
            pub, events = _client(port, user, password)  # a fresh publisher: the broker drops an oversized one
            pub.publish(topic, b"x" * size, qos=1)
            # accepted (PUBACK) or dropped with the connection
            assert _next(events, {-2, -3}) == (-2 if size <= LIMIT else -3), size
            pub.disconnect()
            pub.loop_stop()
        # the broker handled the publishes in order: once the last (10 bytes) is here, every
        # message it let through is
        received: list[int] = []
        deadline = time.monotonic() + 10
        while 10 not in received and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                received.append(got.get(timeout=0.1))
        assert received == [LIMIT, 10]
    finally:
        sub.disconnect()
        sub.loop_stop()


def test_the_stack_broker_refuses_payloads_above_the_limit(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "stack", max_payload_bytes=LIMIT)
    stack.start("mosquitto")
    try:
        _only_the_limit_passes(stack.mqtt_port, f"big/{uuid.uuid4().hex}")
    finally:
        stack.down()


@pytest.fixture
def deploy_broker(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """deploy/mosquitto/mosquitto.conf as tests/deploy runs it, with one account (ops)."""
    password = secrets.token_urlsafe(12)
    (tmp_path / "accounts").write_text("ops SEC_OPS_PW\n")
    subprocess.run([str(DEPLOY / "make-passwd.sh"), str(tmp_path / "accounts"), str(tmp_path / "passwd")],
                   env={**os.environ, "SEC_OPS_PW": password}, check=True, capture_output=True, timeout=60)
    port = free_port()
    (tmp_path / "mosquitto.conf").write_text(deploy_config(port, tmp_path))
    proc = subprocess.Popen([find_binary("mosquitto"), "-c", str(tmp_path / "mosquitto.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while not mqtt_answers("127.0.0.1", port) and not _listening(port):
            assert proc.poll() is None and time.monotonic() < deadline, "mosquitto did not start"
            time.sleep(0.05)
        yield port, password
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _listening(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def test_the_deployment_broker_refuses_payloads_above_the_limit(deploy_broker: tuple[int, str]) -> None:
    port, password = deploy_broker
    conf = (DEPLOY / "conf.d" / "delivery.conf").read_text()
    assert f"message_size_limit {LIMIT}" in conf
    assert "include_dir /mosquitto/config/conf.d" in (DEPLOY / "mosquitto.conf").read_text()
    _only_the_limit_passes(port, "city/pudong/pd-gw-big/cmd", "ops", password)


def test_the_ingester_dead_letters_payloads_above_its_limit(stack: Stack, influx_db: InfluxClient) -> None:
    """The session broker has no limit, so only the ingester's own check stands between a
    huge batch and InfluxDB: it refuses the batch whole, says why, and keeps the others."""
    district, gw = unique("big"), "gw-1"
    t0 = now_ms() - 60_000
    limit = 32 * 1024
    small = batch_payload(district, gw, 0, t0, devices=5)
    big = batch_payload(district, gw, 1, t0, devices=400)  # a valid batch, ~45 KiB
    assert len(small) < limit < len(big)
    dead = Collector(stack.mqtt_url, topics.DEADLETTER)
    pub = Publisher(stack.mqtt_url)
    try:
        with running_ingester(stack.mqtt_url, stack.influx_url, influx_db.database,
                              settings=isolated_settings(max_payload_bytes=limit)) as ing:
            pub.publish_all([(topics.telemetry(district, gw), big), (topics.telemetry(district, gw), small)])
            wait_for(lambda: ing.stats.messages == 2 and ing.held == 0, 30, "both handled")
        wait_for(lambda: any(d["topic"] == topics.telemetry(district, gw) for d in dead.payloads), 10,
                 "the dead letter")
        letter = next(d for d in dead.payloads if d["topic"] == topics.telemetry(district, gw))
        assert letter["kind"] == "payload"
        assert f"larger than the limit of {limit} bytes" in letter["reason"]
        assert base64.b64decode(letter["payload_b64"]) == big
        assert {dev for dev, _t, _p in stored_keys(influx_db, district)} == {f"d{i}" for i in range(5)}
        assert len(stored_keys(influx_db, district)) == 5
    finally:
        pub.close()
        dead.close()


def test_the_edge_keeps_its_batches_under_the_limit() -> None:
    """A gateway never trips the broker's limit (which would close its connection): its
    batches are cut at 3/4 of the limit."""
    from edge.store_and_forward import MAX_BATCH_BYTES

    assert MAX_BATCH_BYTES < LIMIT
