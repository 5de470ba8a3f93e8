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
from rules.inventory import InventoryDevice, load_inventory
from rules.partitions import (
    MEMBERS_TOPIC,
    TICK_PREFIX,
    Membership,
    declare_partitions,
    district_of_queue,
    member_topic,
    owner,
    partition_queue,
    to_give_up,
    unseen_samples,
)
from rules.response import Responder
from rules.silences import ALL_SILENCES, SilenceError
from rules.warmstart import history_start, warm_start
from urbansense import clock, codec, topics
from urbansense.amqp import AmqpConsumer, AmqpMessage
from urbansense.clock_offset import ClockOffsets
from urbansense.config import ConfigError
from urbansense.influx import InfluxClient, InfluxError
from urbansense.lineprotocol import encode_point
from urbansense.mqtt import MqttClient, MqttSettings
from urbansense.schema import AlertEvent, TelemetryBatch

log = logging.getLogger("urbansense.rules")
#: An inbox item: topic, payload, when it arrived (monotonic), and for a queue's delivery
#: (cluster mode) the delivery and its connection's number.
Item = tuple[str, bytes, float, tuple[AmqpMessage, int] | None]
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
    #: Cluster mode (rules/partitions.py): the RabbitMQ nodes' amqp:// URLs. Telemetry and
    #: status come from each district's single-active-consumer queue instead of MQTT; the
    #: districts are `districts`, else those of the gateway inventory.
    amqp_urls: list[str] | None = None
    #: Cluster mode: how often an instance says it is alive (a member is gone after 3.5 of these).
    member_interval_s: float = 1.0
    #: Cluster mode: how long an instance that gave a district up waits before standing by for it again.
    rejoin_s: float = 0.5


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
        self._inventory = inventory
        self._clock = clock.current()
        self.clocks = ClockOffsets()
        #: The engine (cluster mode: the template whose silences every district's engine shares).
        self.engine = self._new_engine(inventory)
        #: Cluster mode: an engine per district held, and when each was taken (monotonic).
        self.engines: dict[str, RulesEngine] = {}
        self._taken: dict[str, float] = {}
        self._released: dict[str, float] = {}  # district -> until when its deliveries go back
        self._amqp_reconnected = False
        self.influx = InfluxClient(config.influx_url, config.database) if config.influx_url else None
        self._inbox: queue.Queue[Item] = queue.Queue(maxsize=100_000)
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
        self.membership = Membership(config.instance, expire_s=3.5 * config.member_interval_s)
        self.amqp: AmqpConsumer | None = None
        self.partition_districts: list[str] = []
        if config.amqp_urls:
            self.partition_districts = sorted(config.districts or {d.district for d in inventory})
            if not self.partition_districts:
                raise ConfigError(["cluster mode: no district to partition; name them (rules run --district) or "
                                   "give gateway configs (--gateways)"])
            districts = list(self.partition_districts)
            self.amqp = AmqpConsumer(config.amqp_urls, self._enqueue_delivery,
                                     queues=[partition_queue(d) for d in districts], prefetch=500,
                                     on_connect=self._on_amqp_connect, name="rules-amqp",
                                     declare=lambda ch: declare_partitions(ch, districts))
            self.mqtt.subscribe(MEMBERS_TOPIC, lambda m: self.membership.hear(bytes(m.payload)), qos=0)
        elif config.districts:
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
        engine = self._engine_for(event.district) or self.engine
        gateway, labels = engine.devices.about(event.district, event.device) if event.device else (None, {})
        return gateway, labels, kind, purpose

    @property
    def partitioned(self) -> bool:
        """Cluster mode: districts taken from their queues, an engine each."""
        return self.amqp is not None

    def _new_engine(self, inventory: list[InventoryDevice]) -> RulesEngine:
        c = self.config
        return RulesEngine(self.rules, inventory, flap_changes=c.flap_changes, flap_window_s=c.flap_window_s,
                           flap_clear_s=c.flap_clear_s)

    def _engines(self) -> list[RulesEngine]:
        return list(self.engines.values()) if self.partitioned else [self.engine]

    def _engine_for(self, district: str) -> RulesEngine | None:
        return self.engines.get(district) if self.partitioned else self.engine

    @property
    def samples_seen(self) -> int:
        return sum(e.samples_seen for e in self._engines())

    def _enqueue(self, msg: paho.MQTTMessage) -> None:
        self._inbox.put((msg.topic, bytes(msg.payload), time.monotonic(), None))

    def _enqueue_delivery(self, msg: AmqpMessage) -> None:
        assert self.amqp is not None
        self._inbox.put((msg.topic, msg.payload, time.monotonic(), (msg, self.amqp.connects)))

    def _on_amqp_connect(self) -> None:
        # a new connection stands at the back of every queue: what this instance held may
        # have moved on; districts are taken again as their deliveries come
        self._amqp_reconnected = True

    def _mtimes(self) -> dict[Path, float]:
        return {f: f.stat().st_mtime for f in rule_files(self.config.rules_path) if f.exists()}

    # ------------------------------------------------------------------ main loop
    def run(self, duration_s: float | None = None) -> None:
        if not self.partitioned:  # cluster mode: each district as it is taken
            self._warm(self.engine, self.config.districts)
        if self.config.prometheus_port:
            from rules.metrics import serve_metrics

            serve_metrics(self, self.config.prometheus_host, self.config.prometheus_port)
        self.mqtt.connect(wait=False)
        if self.amqp is not None:
            self.amqp.start()
        sender: threading.Thread | None = None
        if self.alertmanager is not None:
            sender = threading.Thread(target=self.alertmanager.run, args=(self._stop,), name="alertmanager",
                                      daemon=True)
            sender.start()
        self.ready.set()
        deadline = None if duration_s is None else time.monotonic() + duration_s
        next_reload = time.monotonic() + self.config.reload_interval_s
        next_metrics = time.monotonic() + self.config.metrics_interval_s
        next_member = time.monotonic()
        samples_at_metrics = 0
        try:
            while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
                if self._amqp_reconnected:
                    self._amqp_reconnected = False
                    self._drop_all()
                chunk = self._take_chunk()
                if chunk:
                    self._process(chunk)
                now = time.monotonic()
                if now >= next_reload:
                    next_reload = now + self.config.reload_interval_s
                    self._maybe_reload()
                if self.amqp is not None and now >= next_member:
                    next_member = now + self.config.member_interval_s
                    self._partition_tick(now)
                if now >= next_metrics:
                    seen = self.samples_seen
                    rate = (seen - samples_at_metrics) / self.config.metrics_interval_s
                    samples_at_metrics = seen
                    next_metrics = now + self.config.metrics_interval_s
                    self._self_metrics(rate)
                for event in self.responder.overdue():
                    self.publish(event)
                self._flush_influx()
        finally:
            if self.amqp is not None:
                self.amqp.stop()  # what was not acknowledged goes to the next instance
            self._flush_influx()
            self.mqtt.close()
            if sender is not None and self.alertmanager is not None:
                self._stop.set()
                self.alertmanager.wake()
                sender.join(10)

    def stop(self) -> None:
        self._stop.set()

    def _warm(self, engine: RulesEngine, districts: set[str] | None) -> None:
        if self.influx is not None and self.config.lookback_s > 0:
            last: dict[str, AlertEvent] = {}
            n = warm_start(engine, self.influx, int(time.time() * 1000), self.config.lookback_s, districts,
                           on_event=lambda event: last.__setitem__(event.id, event))
            if self.alertmanager is not None:
                # still firing: announced before the restart (not published again), but
                # Alertmanager must keep hearing of them or it resolves them by itself
                for event in last.values():
                    if event.state == "firing":
                        self.alertmanager.offer(event)
            log.info("warm start%s: replayed %d stored samples (%.0f s look-back)",
                     f" of {', '.join(sorted(districts))}" if districts else "", n, self.config.lookback_s)
        if self.influx is not None and engine.history_needs():
            # event time: a replayed or simulated city (the demo) runs behind the wall clock
            n = history_start(engine, self.influx, clock.now_ms(), districts)
            log.info("history: %d station record(s) read back for the rules that fit them (the tide)", n)

    # ------------------------------------------------------------------ cluster mode
    def _take(self, district: str) -> None:
        """This instance became the district's active consumer: its state from the look-back."""
        engine = self._new_engine([d for d in self._inventory if d.district == district])
        engine.silences = self.engine.silences
        self._warm(engine, {district})
        self.engines[district] = engine
        self._taken[district] = time.monotonic()
        log.info("took district %s (%d held: %s)", district, len(self.engines), ", ".join(sorted(self.engines)))

    def _drop(self, district: str) -> None:
        engine = self.engines.pop(district, None)
        self._taken.pop(district, None)
        if self.alertmanager is not None:
            self.alertmanager.hand_over(district)  # its new holder tells Alertmanager from now on
        if engine is not None:
            self._pending_lines.extend(engine.derived_lines())

    def _drop_all(self) -> None:
        if self.engines:
            log.info("RabbitMQ connection renewed: districts %s are taken again as their messages come",
                     ", ".join(sorted(self.engines)))
        for district in list(self.engines):
            self._drop(district)

    def _partition_tick(self, now: float) -> None:
        """Say who is alive and what it holds; give up districts a live owner should have;
        tick the districts no live instance holds."""
        assert self.amqp is not None
        for district, until in list(self._released.items()):
            if until <= now:
                del self._released[district]
        if not self.amqp.consumers_ready.is_set():
            return  # not standing by everywhere yet: say nothing, so no district is given to us
        self.mqtt.publish(member_topic(self.config.instance), Membership.message(self.config.instance, self.engines),
                          qos=0)
        for district in to_give_up(self._taken, self.membership, now):
            log.info("giving district %s to %s", district, owner(district, self.membership.live(now)))
            self._drop(district)
            self._released[district] = now + self.config.rejoin_s
            self.amqp.release(partition_queue(district), self.config.rejoin_s)
        held = set(self.membership.holders(now)) | set(self.engines)
        for district in self.partition_districts:
            if district not in held:
                self.amqp.publish(TICK_PREFIX + district, b"")

    def _settle_cluster(self, chunk: list[Item]) -> tuple[list[Item], list[AmqpMessage]]:
        """The chunk's deliveries this instance evaluates (districts taken as needed), and
        those to acknowledge after; deliveries of a district just given up go back."""
        assert self.amqp is not None
        now = time.monotonic()
        keep: list[Item] = []
        acks: list[AmqpMessage] = []
        for item in chunk:
            delivery = item[3]
            if delivery is None:
                keep.append(item)
                continue
            message, generation = delivery
            if generation != self.amqp.connects:
                continue  # an earlier connection's: the queue delivers it again
            district = district_of_queue(message.queue)
            if self._released.get(district, 0.0) > now:
                self.amqp.nack(message.mid)
                continue
            if district not in self.engines:
                self._take(district)
            acks.append(message)
            keep.append(item)
        return keep, acks

    def _take_chunk(self) -> list[Item]:
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

    def _process(self, chunk: list[Item]) -> None:
        acks: list[AmqpMessage] = []
        if self.amqp is not None:
            chunk, acks = self._settle_cluster(chunk)
            if not chunk:
                return
        #: batches waiting for their engine (one engine unless in cluster mode), in order
        pending: dict[int, tuple[RulesEngine, list[TelemetryBatch]]] = {}
        events: list[AlertEvent] = []
        oldest = min(item[2] for item in chunk)
        for topic, payload, arrived, delivery in chunk:
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
            engine = self._engine_for(gt.district)
            if engine is None:
                continue
            try:
                if gt.kind == "telemetry":
                    batch, _problems = codec.decode_batch_lenient(payload)
                    if delivery is not None and delivery[0].redelivered:
                        batch = unseen_samples(batch, self._last_seen(engine, gt.district))
                    entry = pending.get(id(engine))
                    if entry is None:
                        entry = pending[id(engine)] = (engine, [])
                    entry[1].append(batch)
                    events.extend(self._measure_clock(engine, gt, batch.sent, arrived))
                elif gt.kind == "status" and payload:
                    waiting = pending.pop(id(engine), None)
                    if waiting:  # keep order: telemetry before this status first
                        events.extend(engine.ingest(waiting[1]))
                    status = codec.decode_status(payload).as_received(self._clock.now_ms())
                    events.extend(engine.status(gt.district, gt.gateway, status))
            except codec.PayloadError:
                continue  # the ingester dead-letters bad payloads; rules just skip them
        for engine, batches in pending.values():
            events.extend(engine.ingest(batches))
        for event in events:
            self.publish(event)
        if self.amqp is not None:
            for message in acks:  # evaluated and their alerts on their way
                self.amqp.ack(message.mid)
        self.evaluation_delay_s = time.monotonic() - oldest
        if events:
            self.last_latency_ms = self.evaluation_delay_s * 1000.0
            self.active_alerts = sum(e.active_alerts() for e in self._engines())
        for engine in self._engines():
            self._pending_lines.extend(engine.derived_lines())

    @staticmethod
    def _last_seen(engine: RulesEngine, district: str) -> dict[str, int]:
        """Each device's newest sample time the engine has (the look-back's, after a take-over)."""
        seen = engine.devices.last_seen
        return {dev: int(seen[i]) for (d, dev), i in engine.devices.index.items() if d == district}

    def _measure_clock(self, engine: RulesEngine, gt: topics.GatewayTopic, sent: int,
                       arrived: float) -> list[AlertEvent]:
        """The gateway's clock, measured on a batch against this clock at its arrival (for
        gateway_clock rules; urbansense/clock_offset.py)."""
        if not any(isinstance(r, GatewayClockRule) for r in engine.gateway_rules):
            return []
        received = self._clock.now_ms() - int((time.monotonic() - arrived) * 1000 * self._clock.speed)
        offset = self.clocks.observe(gt.district, gt.gateway, sent, received)
        return engine.clock(gt.district, gt.gateway, offset, received)

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
        for engine in {id(e): e for e in (self.engine, *self._engines())}.values():
            for event in engine.reload(rules):
                self.publish(event)
        self.rules = rules
        self.reloads += 1
        log.info("reloaded %d rules (state of unchanged rules kept)", len(rules))

    def _self_metrics(self, samples_per_s: float) -> None:
        line = encode_point("urbansense_rules", {"instance": self.config.instance},
                            {"samples_per_s": float(samples_per_s),
                             "alerts_active": sum(e.active_alerts() for e in self._engines()),
                             "eval_latency_ms": float(self.last_latency_ms),
                             # messages received and not yet evaluated (a soak watches it)
                             "inbox_depth": self._inbox.qsize()},
                            int(time.time() * 1000))
        self._pending_lines.append(line)
