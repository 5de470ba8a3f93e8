"""The MQTT adapter's receive path the ingester leans on (urbansense/mqtt/lean.py): buffered
socket reads and the cached topic -> handler routes."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from application.stack import Stack
from tests.ingest.harness import Publisher, unique, wait_for
from urbansense.mqtt import Message, MqttClient, MqttSettings

pytestmark = pytest.mark.integration


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, int]] = []
        self.lock = threading.Lock()

    def __call__(self, msg: Message) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), msg.mid))


@pytest.fixture
def publisher(stack: Stack) -> Iterator[Publisher]:
    pub = Publisher(stack.mqtt_url)
    yield pub
    pub.close()


def _subscriber(stack: Stack, client_id: str, **kwargs: object) -> MqttClient:
    return MqttClient(MqttSettings.from_url(stack.mqtt_url), client_id, **kwargs)  # type: ignore[arg-type]


def test_burst_of_small_and_large_messages_arrives_whole_and_in_order(stack: Stack, publisher: Publisher) -> None:
    """Many packets per socket read, packets split across reads, and one larger than the
    64 KiB read size: each payload arrives exactly, in order."""
    topic = f"test/{unique('burst')}"
    inbox = Inbox()
    sub = _subscriber(stack, unique("sub"))
    sub.subscribe(topic, inbox)
    sub.connect()
    try:
        wait_for(lambda: sub.stats.extra.get("subacks", 0) >= 1, 10, "the subscription")
        sizes = [0, 1, 2, 127, 128, 16_383, 16_384, 70_000, 200_000] + [n % 3000 for n in range(2000)]
        payloads = [bytes([i % 251]) * size + str(i).encode() for i, size in enumerate(sizes)]
        publisher.publish_all([(topic, p) for p in payloads])
        wait_for(lambda: len(inbox.messages) >= len(payloads), 30, "every message")
        assert [p for _, p, _ in inbox.messages] == payloads
    finally:
        sub.close()


def test_routes_follow_subscribe_and_unsubscribe(stack: Stack, publisher: Publisher) -> None:
    """A message goes to the first subscription whose filter matches its topic; the route
    cached for a topic follows later subscribe() and unsubscribe() calls."""
    base = f"test/{unique('routes')}"
    first, second = Inbox(), Inbox()
    sub = _subscriber(stack, unique("sub"))
    sub.subscribe(f"{base}/a/+", first)
    sub.connect()
    try:
        wait_for(lambda: sub.stats.extra.get("subacks", 0) >= 1, 10, "the subscription")
        publisher.publish_all([(f"{base}/a/1", b"1")])
        wait_for(lambda: len(first.messages) >= 1, 10, "the first message")
        sub.subscribe(f"{base}/+/1", second)  # overlaps: the broker sends a/1 once per filter
        wait_for(lambda: sub.stats.extra.get("subacks", 0) >= 2, 10, "the second subscription")
        publisher.publish_all([(f"{base}/a/1", b"2"), (f"{base}/b/1", b"3")])
        wait_for(lambda: len(first.messages) >= 3 and len(second.messages) >= 1, 10, "the next messages")
        sub.unsubscribe(f"{base}/a/+")  # a/1 was routed to `first`: now it goes to `second`
        sub.publish_wait(f"{base}/sync", b"")  # the broker has handled the UNSUBSCRIBE before it
        publisher.publish_all([(f"{base}/a/1", b"4")])
        wait_for(lambda: len(second.messages) >= 2, 10, "the message after unsubscribing")
        assert [p for _, p, _ in first.messages] == [b"1", b"2", b"2"]
        assert [p for _, p, _ in second.messages] == [b"3", b"4"]
    finally:
        sub.close()
