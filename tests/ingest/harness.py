"""Helpers of the ingester tests: batches with known readings, a QoS 1 publisher that
waits for the broker's acknowledgements, an in-process ingester, point counts."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from ingest.service import Ingester
from ingest.settings import IngestSettings
from tests.waiting import wait_for as wait_for  # re-exported: the ingest tests import it from here
from urbansense import topics
from urbansense.influx import InfluxClient
from urbansense.mqtt import MqttClient, MqttSettings


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def batch_payload(district: str, gw: str, seq: int, t0: int, devices: int = 5,
                  m: str = "water") -> bytes:
    """`devices` samples, all at t0 + seq ms apart per seq; pressure encodes (seq, device)."""
    t = t0 + seq * 10
    samples = [{"dev": f"d{i}", "m": m, "t": t,
                "f": {"pressure_mpa": seq + i / 1000, "flow_m3h": float(i), "n": seq}, "q": "good"}
               for i in range(devices)]
    return orjson.dumps({"v": 1, "gw": gw, "district": district, "seq": seq, "sent": now_ms(),
                         "samples": samples})


def now_ms() -> int:
    return int(time.time() * 1000)


class Publisher:
    """QoS 1 publisher; `publish_all` returns when the broker has every message."""

    def __init__(self, mqtt_url: str) -> None:
        self.client = MqttClient(MqttSettings.from_url(mqtt_url), unique("pub"), max_inflight=1000)
        self.client.connect()

    def publish_all(self, messages: list[tuple[str, bytes]], timeout_s: float = 60.0) -> None:
        infos = [self.client.publish_tracked(topic, payload, qos=1) for topic, payload in messages]
        deadline = time.monotonic() + timeout_s
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            assert info.is_published(), "broker did not acknowledge a publish"

    def close(self) -> None:
        self.client.close()


class PacedPublisher(threading.Thread):
    """Publishes `messages` at about `rate` per second, each acknowledged by the broker."""

    def __init__(self, mqtt_url: str, messages: list[tuple[str, bytes]], rate: float) -> None:
        super().__init__(daemon=True)
        self.pub = Publisher(mqtt_url)
        self.messages = messages
        self.rate = rate
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            step = max(1, int(self.rate / 10))
            for i in range(0, len(self.messages), step):
                self.pub.publish_all(self.messages[i:i + step])
                self.sent = min(len(self.messages), i + step)
                time.sleep(step / self.rate)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.pub.close()

    def finish(self, timeout_s: float = 60) -> None:
        self.join(timeout_s)
        assert not self.is_alive(), "publisher did not finish"
        assert self.error is None, self.error


class Collector:
    """Subscribes to a topic and keeps the payloads (dead letters)."""

    def __init__(self, mqtt_url: str, topic: str) -> None:
        self.payloads: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.client = MqttClient(MqttSettings.from_url(mqtt_url), unique("collect"))
        self.client.subscribe(topic, self._on, qos=1)
        self.client.connect()
        assert self.client.wait_subscribed(10), f"no SUBACK for {topic} within 10 s"

    def _on(self, msg: Any) -> None:
        with self._lock:
            self.payloads.append(orjson.loads(msg.payload))

    def close(self) -> None:
        self.client.close()


def count(influx: InfluxClient, field: str = "pressure_mpa", measurement: str = "water") -> int:
    rows = influx.rows(f'SELECT count("{field}") FROM "{measurement}"')
    return int(rows[0]["count"]) if rows else 0


def stored_keys(influx: InfluxClient, district: str) -> set[tuple[str, int, float]]:
    """(device, time, pressure) of every stored water point of a district."""
    series = influx.query(
        f"SELECT pressure_mpa FROM water WHERE district = '{district}' GROUP BY device")
    return {(s.tags["device"], row[0], row[1]) for s in series for row in s.values}


def expected_keys(seqs: range, t0: int, devices: int) -> set[tuple[str, int, float]]:
    return {(f"d{i}", t0 + seq * 10, seq + i / 1000) for seq in seqs for i in range(devices)}


def isolated_settings(**overrides: Any) -> IngestSettings:
    """Settings of an ingester under test: its own share group, so that sessions left in
    the broker by other tests' ingesters (kept for their return) take none of its messages."""
    values: dict[str, Any] = {"metrics_interval_s": 0, "batch_delay_s": 0.2,
                              "share_group": unique("g")}
    values.update(overrides)
    return IngestSettings(**values)


@contextmanager
def running_ingester(mqtt_url: str, influx_url: str, database: str, instance: str | None = None,
                     settings: IngestSettings | None = None) -> Iterator[Ingester]:
    ing = Ingester(MqttSettings.from_url(mqtt_url), influx_url, database=database,
                   instance=instance or unique("ing"),
                   settings=settings or isolated_settings())
    thread = threading.Thread(target=ing.run, name="ingester-under-test", daemon=True)
    thread.start()
    assert ing.mqtt.wait_connected(10), "ingester did not connect"
    # a shared subscription without members drops what is published to it: wait for SUBACKs
    wait_for(lambda: ing.mqtt.stats.extra.get("subacks", 0) >= 2, 10, "the ingester's subscriptions")
    try:
        yield ing
    finally:
        ing.stop()
        thread.join(60)
        assert not thread.is_alive(), "ingester did not stop"


def telemetry_messages(district: str, gw: str, seqs: range, t0: int, devices: int = 5) -> list[tuple[str, bytes]]:
    return [(topics.telemetry(district, gw), batch_payload(district, gw, seq, t0, devices)) for seq in seqs]
