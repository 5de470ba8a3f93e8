"""MqttClient.wait_subscribed: tests (and anyone) wait for the broker's SUBACKs instead of
sleeping before they publish."""

from __future__ import annotations

import queue
import uuid

import pytest

from application.stack import Stack
from urbansense.mqtt import MqttClient, MqttSettings

pytestmark = pytest.mark.integration


def _client(stack: Stack, tag: str) -> MqttClient:
    return MqttClient(MqttSettings.from_url(stack.mqtt_url), client_id=f"t-{tag}-{uuid.uuid4().hex[:8]}")


def test_wait_subscribed_covers_subscriptions_before_and_after_connecting(stack: Stack) -> None:
    base = f"t/{uuid.uuid4().hex[:8]}"
    got: queue.Queue[str] = queue.Queue()
    sub, pub = _client(stack, "sub"), _client(stack, "pub")
    assert not sub.wait_subscribed(0.2)  # not connected yet
    for i in range(3):
        sub.subscribe(f"{base}/{i}", lambda m: got.put(m.topic), qos=1)
    sub.connect()
    pub.connect()
    try:
        assert sub.wait_subscribed(10)
        assert sub.stats.extra["subacks"] >= 3
        sub.subscribe(f"{base}/late", lambda m: got.put(m.topic), qos=1)  # while connected
        assert sub.wait_subscribed(10)
        for topic in (f"{base}/0", f"{base}/2", f"{base}/late"):
            pub.publish_wait(topic, b"x", qos=1)
        # every message published after wait_subscribed reaches its handler
        assert sorted(got.get(timeout=10) for _ in range(3)) == sorted([f"{base}/0", f"{base}/2", f"{base}/late"])
    finally:
        sub.close()
        pub.close()
