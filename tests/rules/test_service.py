"""The running engine against a real Mosquitto and InfluxDB: alerts out on MQTT and in
InfluxDB, gateway last will, district partitioning, silences, hot reload, warm start."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from application.stack import Stack
from rules.service import RulesService, ServiceConfig
from rules.silences import SILENCE_TOPIC_PREFIX, Silence
from tests.waiting import wait_for
from urbansense import codec, topics
from urbansense.influx import InfluxClient
from urbansense.mqtt import MqttClient, MqttSettings
from urbansense.schema import AlertEvent, GatewayStatus, Sample, TelemetryBatch

pytestmark = pytest.mark.integration

RULES = """
domain: water
rules:
  - {id: water.low, measurement: water, metric: pressure_mpa, op: below, threshold: THRESHOLD, clear: 0.22,
     severity: critical}
"""
SYSTEM = """
domain: system
rules:
  - {id: system.gateway_offline, kind: gateway_offline, for_s: 0}
"""


class Harness:
    def __init__(self, stack: Stack, influx: InfluxClient, rules_dir: Path, district: str, lookback_s: float = 0,
                 alertmanager_url: str | None = None):
        self.district = district
        self.svc = RulesService(ServiceConfig(
            rules_path=rules_dir, mqtt=MqttSettings.from_url(stack.mqtt_url), influx_url=stack.influx_url,
            database=influx.database, instance=f"t-{uuid.uuid4().hex[:8]}", districts={district}, gateways=[],
            lookback_s=lookback_s, reload_interval_s=0.2, metrics_interval_s=0.5,
            alertmanager_url=alertmanager_url, alertmanager_resend_s=1.0))
        self.alerts: queue.Queue[AlertEvent] = queue.Queue()
        self.client = MqttClient(MqttSettings.from_url(stack.mqtt_url), client_id=f"t-{uuid.uuid4().hex[:8]}")
        self.client.subscribe(f"city/alerts/+/{district}/+",
                              lambda m: self.alerts.put(codec.decode_alert(bytes(m.payload))))
        self.client.connect()
        self.thread = threading.Thread(target=self.svc.run, args=(60,), daemon=True)
        self.thread.start()
        assert self.svc.ready.wait(10) and self.svc.mqtt.wait_connected(10)
        assert self.client.wait_subscribed(10) and self.svc.mqtt.wait_subscribed(10)

    def send(self, dev: str, t: int, pressure: float, *, district: str | None = None, gw: str = "gw-1") -> None:
        d = district or self.district
        b = TelemetryBatch(gw, d, 1, t, [Sample(dev, "water", t, {"pressure_mpa": pressure})])
        self.client.publish_wait(topics.telemetry(d, gw), codec.encode_batch(b))

    def next_alert(self, timeout: float = 5.0) -> AlertEvent:
        return self.alerts.get(timeout=timeout)

    def no_alert(self, wait: float = 1.0) -> None:
        with pytest.raises(queue.Empty):
            self.alerts.get(timeout=wait)

    def close(self) -> None:
        self.svc.stop()
        self.thread.join(10)
        self.client.close()


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    (tmp_path / "water.yaml").write_text(RULES.replace("THRESHOLD", "0.2"))
    (tmp_path / "system.yaml").write_text(SYSTEM)
    return tmp_path


@pytest.fixture
def harness(stack: Stack, influx_db: InfluxClient, rules_dir: Path) -> Iterator[Harness]:
    h = Harness(stack, influx_db, rules_dir, f"d{uuid.uuid4().hex[:8]}")
    yield h
    h.close()


def test_alert_published_on_mqtt_and_written_to_influx(harness: Harness, influx_db: InfluxClient) -> None:
    t = int(time.time() * 1000)
    harness.send("wp-1", t, 0.1)
    fired = harness.next_alert()
    assert (fired.id, fired.state, fired.severity) == (f"water.low:{harness.district}:wp-1", "firing", "critical")
    harness.send("wp-1", t + 1000, 0.21)  # hysteresis band: nothing
    harness.send("wp-1", t + 2000, 0.3)
    resolved = harness.next_alert()
    assert (resolved.id, resolved.state) == (fired.id, "resolved")
    deadline = time.monotonic() + 5
    rows: list[dict[str, object]] = []
    while time.monotonic() < deadline and len(rows) < 2:
        rows = influx_db.rows('SELECT "state", "firing", "value", "alert_id", "device" FROM "alerts"')
        time.sleep(0.1)
    assert [(r["state"], r["firing"], r["device"]) for r in rows] == [("firing", True, "wp-1"),
                                                                     ("resolved", False, "wp-1")]
    assert rows[0]["alert_id"] == fired.id
    # the engine's own metrics, every metrics_interval_s
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not influx_db.rows('SELECT * FROM "urbansense_rules"'):
        time.sleep(0.2)
    metrics = influx_db.rows('SELECT "samples_per_s", "alerts_active", "inbox_depth" FROM "urbansense_rules"')
    assert metrics and {"samples_per_s", "alerts_active", "inbox_depth"} <= set(metrics[-1])
    assert isinstance(metrics[-1]["inbox_depth"], int) and metrics[-1]["inbox_depth"] >= 0


def test_other_districts_belong_to_other_instances(harness: Harness) -> None:
    harness.send("wp-1", int(time.time() * 1000), 0.1, district=f"x{uuid.uuid4().hex[:8]}")
    harness.no_alert()


def test_gateway_last_will_raises_a_system_alert(harness: Harness) -> None:
    t = int(time.time() * 1000)
    topic = topics.status(harness.district, "gw-7")
    harness.client.publish_wait(topic, codec.encode_status(GatewayStatus("offline", t)), retain=True)
    try:
        ev = harness.next_alert()
        assert (ev.domain, ev.device, ev.state) == ("system", "gw-7", "firing")
        harness.client.publish_wait(topic, codec.encode_status(GatewayStatus("online", t + 5000)), retain=True)
        assert harness.next_alert().state == "resolved"
    finally:
        harness.client.publish_wait(topic, b"", retain=True)


def test_a_last_will_counts_from_its_arrival_not_from_when_the_gateway_connected(
        stack: Stack, influx_db: InfluxClient, tmp_path: Path) -> None:
    """A will carries the time it was set (the gateway's connect, here 10 min ago): the
    offline alert waits its for_s from the will's arrival (it fired at once before)."""
    (tmp_path / "water.yaml").write_text(RULES.replace("THRESHOLD", "0.2"))
    (tmp_path / "system.yaml").write_text(SYSTEM.replace("for_s: 0", "for_s: 60"))
    h = Harness(stack, influx_db, tmp_path, f"d{uuid.uuid4().hex[:8]}")
    try:
        now = int(time.time() * 1000)
        h.client.publish_wait(topics.status(h.district, "gw-7"),
                              codec.encode_status(GatewayStatus("offline", now - 600_000)))
        h.send("wp-1", now + 30_000, 0.3)  # the district's event time moves on: 30 s offline
        h.send("wp-1", now + 70_000, 0.3)  # 70 s
        ev = h.next_alert()
        assert (ev.device, ev.state) == ("gw-7", "firing")
        assert ev.t >= now + 60_000, f"fired {(ev.t - now) / 1000:.0f} s after the will arrived"
    finally:
        h.close()


def test_silence_from_a_retained_message(harness: Harness) -> None:
    t = int(time.time() * 1000)
    sid = f"t-{uuid.uuid4().hex[:8]}"
    silence = Silence(sid, {"device": "wp-2", "district": harness.district}, t - 1000, t + 600_000)
    harness.client.publish_wait(SILENCE_TOPIC_PREFIX + sid, silence.to_wire(), retain=True)
    try:
        wait_for(lambda: len(harness.svc.engine.silences) >= 1, 10, "the service's copy of the silence")
        harness.send("wp-2", t, 0.1)
        harness.send("wp-3", t, 0.1)
        ev = harness.next_alert()
        assert ev.device == "wp-3"
        harness.no_alert()
    finally:
        harness.client.publish_wait(SILENCE_TOPIC_PREFIX + sid, b"", retain=True)


def test_hot_reload_keeps_running_and_applies_new_thresholds(harness: Harness, rules_dir: Path) -> None:
    t = int(time.time() * 1000)
    harness.send("wp-4", t, 0.19)
    assert harness.next_alert().state == "firing"
    (rules_dir / "water.yaml").write_text("domain: water\nrules: [ {id: broken") # invalid: kept running
    wait_for(lambda: harness.svc.reloads_refused == 1, 10, "the invalid edit refused")
    (rules_dir / "water.yaml").write_text(RULES.replace("THRESHOLD", "0.15"))
    wait_for(lambda: harness.svc.reloads == 1, 10, "the valid edit applied")
    harness.send("wp-5", t + 1000, 0.19)  # fine under the new threshold
    harness.send("wp-6", t + 1000, 0.1)
    ev = harness.next_alert()
    assert (ev.device, ev.state) == ("wp-6", "firing")
    # the alert that fired under the old rule kept its state through the reload
    harness.send("wp-4", t + 2000, 0.3)
    ev = harness.next_alert()
    assert (ev.device, ev.state) == ("wp-4", "resolved")


def test_warm_start_remembers_a_firing_alert(stack: Stack, influx_db: InfluxClient, rules_dir: Path) -> None:
    district = f"w{uuid.uuid4().hex[:8]}"
    now = int(time.time() * 1000)
    influx_db.write("\n".join(f"water,district={district},gateway=gw-1,device=wp-1 pressure_mpa=0.1 {now - s * 1000}"
                              for s in (120, 90, 60)))
    h = Harness(stack, influx_db, rules_dir, district, lookback_s=300)
    try:
        h.no_alert(0.5)  # the firing from before the restart is not announced again ...
        h.send("wp-1", now, 0.3)
        ev = h.next_alert()  # ... but it is resolved when the pressure comes back
        assert (ev.device, ev.state) == ("wp-1", "resolved")
    finally:
        h.close()
