"""The rules engine service: telemetry in, alert events out (MQTT + InfluxDB `alerts`)."""

from __future__ import annotations

import logging
import queue
import threading
import time

import paho.mqtt.client as paho

from rules.catalog import ThresholdRule
from rules.lifecycle import AlertState, Signal, step
from urbansense import codec, topics
from urbansense.influx import InfluxClient, InfluxError
from urbansense.lineprotocol import encode_point
from urbansense.mqtt import MqttClient, MqttSettings
from urbansense.schema import AlertEvent, TelemetryBatch

log = logging.getLogger("urbansense.rules")


def classify(rule: ThresholdRule, value: float) -> Signal:
    clear = rule.threshold if rule.clear is None else rule.clear
    if rule.op == "below":
        if value < rule.threshold:
            return Signal.BREACH
        return Signal.CLEAR if value >= clear else Signal.BAND
    if value > rule.threshold:
        return Signal.BREACH
    return Signal.CLEAR if value <= clear else Signal.BAND


class RulesEngine:
    def __init__(self, rules: list[ThresholdRule]) -> None:
        self.rules = rules
        self._by_measurement: dict[str, list[ThresholdRule]] = {}
        for r in rules:
            self._by_measurement.setdefault(r.measurement, []).append(r)
        self.states: dict[tuple[str, str], AlertState] = {}

    def evaluate(self, batch: TelemetryBatch) -> list[AlertEvent]:
        events: list[AlertEvent] = []
        for s in batch.samples:
            if s.q == "bad":
                continue
            for rule in self._by_measurement.get(s.m, ()):
                value = s.f.get(rule.metric)
                if isinstance(value, bool) or not isinstance(value, int | float):
                    continue
                key = (rule.id, s.dev)
                st = self.states.setdefault(key, AlertState())
                change = step(st, classify(rule, float(value)), s.t, int(rule.for_s * 1000))
                if change:
                    events.append(self._event(rule, batch.district, s.dev, float(value), s.t, st, change))
        return events

    @staticmethod
    def _event(rule: ThresholdRule, district: str, device: str, value: float, t: int,
               st: AlertState, change: str) -> AlertEvent:
        message = rule.message.format(metric=rule.metric, device=device, value=value, op=rule.op,
                                      threshold=rule.threshold)
        if change == "resolved":
            message = f"Resolved: {rule.metric} at {device} back to {value:.3f}"
        return AlertEvent(
            id=f"{rule.id}:{district}:{device}", rule=rule.id, domain=rule.measurement,
            severity=rule.severity, state=change, district=district, device=device,
            metric=rule.metric, value=value, threshold=rule.threshold,
            started=st.since, t=t, message=message,
        )


def alert_line(event: AlertEvent) -> str:
    tags = {"rule": event.rule, "domain": event.domain, "district": event.district,
            "severity": event.severity, "device": event.device or ""}
    fields: dict[str, object] = {"state": event.state, "message": event.message, "alert_id": event.id,
                                 "started": event.started, "firing": event.state == "firing"}
    if event.value is not None:
        fields["value"] = event.value
    if event.threshold is not None:
        fields["threshold"] = event.threshold
    return encode_point("alerts", tags, fields, event.t)


class RulesService:
    def __init__(self, rules: list[ThresholdRule], mqtt: MqttSettings, influx_url: str | None,
                 *, database: str = "city", instance: str = "rules-1") -> None:
        self.engine = RulesEngine(rules)
        self.influx = InfluxClient(influx_url, database) if influx_url else None
        self._inbox: queue.Queue[paho.MQTTMessage] = queue.Queue(maxsize=50000)
        self._stop = threading.Event()
        self.mqtt = MqttClient(mqtt, client_id=f"urbansense-{instance}", clean_start=True)
        self.mqtt.subscribe(topics.ALL_TELEMETRY, self._inbox.put, qos=1)
        self.events_published = 0

    def run(self, duration_s: float | None = None) -> None:
        self.mqtt.connect(wait=False)
        deadline = None if duration_s is None else time.monotonic() + duration_s
        try:
            while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
                try:
                    msg = self._inbox.get(timeout=0.2)
                except queue.Empty:
                    continue
                try:
                    batch, _problems = codec.decode_batch_lenient(msg.payload)
                except codec.PayloadError:
                    continue  # the ingester dead-letters it; rules just skip
                for event in self.engine.evaluate(batch):
                    self.publish(event)
        finally:
            self.mqtt.close()

    def stop(self) -> None:
        self._stop.set()

    def publish(self, event: AlertEvent) -> None:
        topic = topics.alert(event.domain, event.district, event.severity)
        self.mqtt.publish(topic, codec.encode_alert(event), qos=1)
        self.events_published += 1
        log.info("%s %s %s", event.state.upper(), event.id, event.message)
        if self.influx is not None:
            try:
                self.influx.write(alert_line(event))
            except InfluxError as exc:
                log.warning("could not record alert in InfluxDB: %s", exc)
