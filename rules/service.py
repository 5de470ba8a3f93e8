"""The running rules engine: MQTT telemetry and gateway status in, alerts out on MQTT
(`city/alerts/{domain}/{district}/{severity}`, QoS 1) and in InfluxDB (`alerts`, `aqi`,
and its own `urbansense_rules` self-metrics).

The MQTT network thread only queues messages; the main loop drains the queue in
chunks (many batches per engine call keeps numpy busy and Python overhead per sample
low), publishes the events and writes InfluxDB once per chunk.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho

from rules.alertmanager import AlertmanagerSender, Context
from rules.catalog import GatewayClockRule, Rule, load_catalog, rule_files
from rules.engine import RulesEngine, alert_lines
from rules.flapping import FLAP_CHANGES, FLAP_CLEAR_S, FLAP_WINDOW_S
from rules.inventory import load_inventory
from rules.response import Responder
from rules.silences import ALL_SILENCES, SilenceError
from rules.warmstart import history_start, warm_start
from urbansense import clock, codec, topics
from urbansense.clock_offset import ClockOffsets
from urbansense.config import ConfigError
from urbansense.influx import InfluxClient, InfluxError
from urbansense.lineprotocol import encode_point
from urbansense.mqtt import MqttClient, MqttSettings
from urbansense.schema import AlertEvent, TelemetryBatch

log = logging.getLogger("urbansense.rules")
#: Lines kept for InfluxDB while it is unreachable; beyond this the oldest are dropped.
MAX_PENDING_LINES = 200_000


@dataclass
class ServiceConfig:
    #: A rule file or folder; None: the default catalogue (rules.catalog.rule_files).
    rules_path: Path | None = None
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    influx_url: str | None = None
    database: str = "city"
    instance: str = "rules-1"
    #: Districts this instance owns (None: all). Several instances split the city this way.
    districts: set[str] | None = None
    #: Gateway config files or folders: the expected inventory (deadman seeds, lamp locations).
    gateways: list[Path] | None = None
    #: Warm start: seconds of stored telemetry replayed on start (0: none).
    lookback_s: float = 900.0
    #: Flapping (rules/README.md): changes within the window, the window, clean time that ends an episode.
    flap_changes: int = FLAP_CHANGES
    flap_window_s: float = FLAP_WINDOW_S
    flap_clear_s: float = FLAP_CLEAR_S
    reload_interval_s: float = 2.0
    metrics_interval_s: float = 10.0
    max_chunk: int = 200
    #: Prometheus Alertmanager's URL: alerts are also sent there (rules/alertmanager.py); None: not.
    alertmanager_url: str | None = None
    #: How often a firing alert is sent to Alertmanager again.
    alertmanager_resend_s: float = 30.0
    #: Serve Prometheus metrics on this port (0: off), on prometheus_host.
    prometheus_port: int = 0
    prometheus_host: str = "127.0.0.1"


class RulesService:
    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.rules: list[Rule] = load_catalog(config.rules_path)
        self._rule_mtimes = self._mtimes()
        #: rule-file changes applied, and refused as invalid (the running rules kept)
        self.reloads = 0
        self.reloads_refused = 0
        inventory = (load_inventory(config.gateways, config.districts, strict=False)
                     if config.gateways is not None else [])
        self._clock = clock.current()
        self.clocks = ClockOffsets()
        self.engine = RulesEngine(self.rules, inventory, flap_changes=config.flap_changes,
                                  flap_window_s=config.flap_window_s, flap_clear_s=config.flap_clear_s)
        self.influx = InfluxClient(config.influx_url, config.database) if config.influx_url else None
        self._inbox: queue.Queue[tuple[str, bytes, float]] = queue.Queue(maxsize=100_000)
        self._stop = threading.Event()
        self._pending_lines: list[str] = []
        self.events_published = 0
        self.last_latency_ms = 0.0
        #: Seconds from the oldest message of the last chunk arriving to its evaluation (the
        #: engine's delay behind the stream), and the count of alerts active, both kept by
        #: the evaluation loop for the metrics server's thread to read.
        self.evaluation_delay_s = 0.0
        self.active_alerts = 0
        self.mqtt = MqttClient(config.mqtt, client_id=f"urbansense-{config.instance}", clean_start=True)
        if config.districts:
            for d in sorted(config.districts):
                self.mqtt.subscribe(topics.district_telemetry(d), self._enqueue, qos=1)
                self.mqtt.subscribe(f"{topics.ROOT}/{d}/+/status", self._enqueue, qos=1)
        else:
            self.mqtt.subscribe(topics.ALL_TELEMETRY, self._enqueue, qos=1)
            self.mqtt.subscribe(topics.ALL_STATUS, self._enqueue, qos=1)
        self.mqtt.subscribe(ALL_SILENCES, self._enqueue, qos=1)
        # the gateways' answers to the commands rules send by themselves (`respond:`)
        self.responder = Responder()
        self.mqtt.subscribe(f"{topics.ROOT}/+/+/cmd/result", self._enqueue, qos=1)
        self.ready = threading.Event()
        self.alertmanager = (AlertmanagerSender(config.alertmanager_url, self._alert_context,
                                                resend_s=config.alertmanager_resend_s)
                             if config.alertmanager_url else None)

    def _alert_context(self, event: AlertEvent) -> Context:
        """What Alertmanager matches beside the event: the device's gateway and labels, the
        rule's kind and purpose."""
        rule = next((r for r in self.rules if r.id == event.rule), None)
        kind, purpose = (rule.kind, rule.purpose) if rule is not None else ("", "hazard")
        if event.domain == "system" and event.device:  # a gateway's own alert: its device is the gateway
            return event.device, {}, kind, purpose
        gateway, labels = self.engine.devices.about(event.district, event.device) if event.device else (None, {})
        return gateway, labels, kind, purpose

    def _enqueue(self, msg: paho.MQTTMessage) -> None:
        self._inbox.put((msg.topic, bytes(msg.payload), time.monotonic()))

    def _mtimes(self) -> dict[Path, float]:
        return {f: f.stat().st_mtime for f in rule_files(self.config.rules_path) if f.exists()}

    # ------------------------------------------------------------------ main loop
    def run(self, duration_s: float | None = None) -> None:
        if self.influx is not None and self.config.lookback_s > 0:
            n = warm_start(self.engine, self.influx, int(time.time() * 1000), self.config.lookback_s,
                           self.config.districts)
            log.info("warm start: replayed %d stored samples (%.0f s look-back)", n, self.config.lookback_s)
        if self.influx is not None and self.engine.history_needs():
            # event time: a replayed or simulated city (the demo) runs behind the wall clock
            n = history_start(self.engine, self.influx, clock.now_ms(), self.config.districts)
            log.info("history: %d station record(s) read back for the rules that fit them (the tide)", n)
        if self.config.prometheus_port:
            from rules.metrics import serve_metrics

            serve_metrics(self, self.config.prometheus_host, self.config.prometheus_port)
        self.mqtt.connect(wait=False)
        sender: threading.Thread | None = None
        if self.alertmanager is not None:
            sender = threading.Thread(target=self.alertmanager.run, args=(self._stop,), name="alertmanager",
                                      daemon=True)
            sender.start()
        self.ready.set()
        deadline = None if duration_s is None else time.monotonic() + duration_s
        next_reload = time.monotonic() + self.config.reload_interval_s
        next_metrics = time.monotonic() + self.config.metrics_interval_s
        samples_at_metrics = 0
        try:
            while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
                chunk = self._take_chunk()
                if chunk:
                    self._process(chunk)
                now = time.monotonic()
                if now >= next_reload:
                    next_reload = now + self.config.reload_interval_s
                    self._maybe_reload()
                if now >= next_metrics:
                    rate = (self.engine.samples_seen - samples_at_metrics) / self.config.metrics_interval_s
                    samples_at_metrics = self.engine.samples_seen
                    next_metrics = now + self.config.metrics_interval_s
                    self._self_metrics(rate)
                for event in self.responder.overdue():
                    self.publish(event)
                self._flush_influx()
        finally:
            self._flush_influx()
            self.mqtt.close()
            if sender is not None and self.alertmanager is not None:
                self._stop.set()
                self.alertmanager.wake()
                sender.join(10)

    def stop(self) -> None:
        self._stop.set()

    def _take_chunk(self) -> list[tuple[str, bytes, float]]:
        """Wait briefly for one message, then take whatever else is already queued."""
        try:
            chunk = [self._inbox.get(timeout=0.2)]
        except queue.Empty:
            return []
        while len(chunk) < self.config.max_chunk:
            try:
                chunk.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        return chunk

    def _process(self, chunk: list[tuple[str, bytes, float]]) -> None:
        batches: list[TelemetryBatch] = []
        events: list[AlertEvent] = []
        oldest = min(arrived for _t, _p, arrived in chunk)
        for topic, payload, arrived in chunk:
            if topic.endswith("/cmd/result"):
                answered = self.responder.answer(payload)
                if answered is not None:
                    events.append(answered)
                continue
            if topic.startswith("city/rules/silences/"):
                try:
                    self.engine.silences.handle_message(topic, payload)
                except SilenceError as exc:
                    log.warning("ignoring %s: %s", topic, exc)
                continue
            try:
                gt = topics.parse_gateway_topic(topic)
            except topics.TopicError:
                continue
            if self.config.districts and gt.district not in self.config.districts:
                continue
            try:
                if gt.kind == "telemetry":
                    batch, _problems = codec.decode_batch_lenient(payload)
                    batches.append(batch)
                    events.extend(self._measure_clock(gt, batch.sent, arrived))
                elif gt.kind == "status" and payload:
                    if batches:  # keep order: telemetry before this status first
                        events.extend(self.engine.ingest(batches))
                        batches = []
                    events.extend(self.engine.status(gt.district, gt.gateway, codec.decode_status(payload)))
            except codec.PayloadError:
                continue  # the ingester dead-letters bad payloads; rules just skip them
        if batches:
            events.extend(self.engine.ingest(batches))
        for event in events:
            self.publish(event)
        self.evaluation_delay_s = time.monotonic() - oldest
        if events:
            self.last_latency_ms = self.evaluation_delay_s * 1000.0
            self.active_alerts = self.engine.active_alerts()
        self._pending_lines.extend(self.engine.derived_lines())

    def _measure_clock(self, gt: topics.GatewayTopic, sent: int, arrived: float) -> list[AlertEvent]:
        """The gateway's clock, measured on a batch against this clock at its arrival (for
        gateway_clock rules; urbansense/clock_offset.py)."""
        if not any(isinstance(r, GatewayClockRule) for r in self.engine.gateway_rules):
            return []
        received = self._clock.now_ms() - int((time.monotonic() - arrived) * 1000 * self._clock.speed)
        offset = self.clocks.observe(gt.district, gt.gateway, sent, received)
        return self.engine.clock(gt.district, gt.gateway, offset, received)

    def publish(self, event: AlertEvent) -> None:
        topic = topics.alert(event.domain, event.district, event.severity)
        self.mqtt.publish(topic, codec.encode_alert(event), qos=1)
        self.events_published += 1
        log.info("%s %s [%s] %s", event.state.upper(), event.id, event.severity, event.message)
        self._pending_lines.extend(alert_lines(event))
        if self.alertmanager is not None:
            self.alertmanager.offer(event)
        command = self.responder.observe(event)
        if command is not None:
            self.mqtt.publish(*command, qos=1)
            log.info("RESPOND %s: sent %s to %s", event.id, command[1].decode(), command[0])

    def _flush_influx(self) -> None:
        if not self._pending_lines:
            return
        if self.influx is None:
            self._pending_lines.clear()
            return
        try:
            self.influx.write("\n".join(self._pending_lines))
            self._pending_lines.clear()
        except InfluxError as exc:
            log.warning("could not write alerts to InfluxDB (kept for retry): %s", exc)
            if len(self._pending_lines) > MAX_PENDING_LINES:
                del self._pending_lines[: len(self._pending_lines) - MAX_PENDING_LINES]

    def _maybe_reload(self) -> None:
        mtimes = self._mtimes()
        if mtimes == self._rule_mtimes:
            return
        self._rule_mtimes = mtimes
        try:
            rules = load_catalog(self.config.rules_path)
        except ConfigError as exc:
            log.error("rule files changed but are invalid; keeping the running rules:\n  %s",
                      "\n  ".join(exc.problems))
            self.reloads_refused += 1
            return
        for event in self.engine.reload(rules):
            self.publish(event)
        self.rules = rules
        self.reloads += 1
        log.info("reloaded %d rules (state of unchanged rules kept)", len(rules))

    def _self_metrics(self, samples_per_s: float) -> None:
        line = encode_point("urbansense_rules", {"instance": self.config.instance},
                            {"samples_per_s": float(samples_per_s),
                             "alerts_active": self.engine.active_alerts(),
                             "eval_latency_ms": float(self.last_latency_ms),
                             # messages received and not yet evaluated (a soak watches it)
                             "inbox_depth": self._inbox.qsize()},
                            int(time.time() * 1000))
        self._pending_lines.append(line)
