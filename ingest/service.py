"""The ingester service: shared subscription -> validate -> batch -> write -> acknowledge.

Threads and the path of one MQTT message::

    paho network thread ── on_message: decode, validate, encode, dead-letter ──► WriteBatch
                        ── full (5,000 lines) ──► ready queue
    flusher (run())     ── a batch 1 s old ──► ready queue
    writer × N          ── gzip, POST /write, retry ──► acknowledge every message of the batch

Nothing is acknowledged before InfluxDB has stored all of its points (or they were
dead-lettered), so a crash at any moment loses nothing: the broker redelivers what was
not acknowledged, and because points keep the edge timestamps, a redelivered message
overwrites the same points instead of adding new ones.

Why decode in the network thread (paho's advice is to hand work to a queue): with a
separate decoding thread, the two fight over the GIL, and paho, which releases it on
every small socket read, waits up to the 5 ms switch interval to get it back each time;
measured here, that stalled reception and held throughput at ~60 % of what the same code
reaches in one thread. The work per message is bounded (≈ 0.3 ms for 50 samples), and
the network thread never blocks on InfluxDB: full batches go to an unbounded queue.

Backpressure: while InfluxDB is down the writers retry and acknowledge nothing; the
broker, told by the MQTT 5 Receive Maximum, stops sending once `receive_maximum`
messages are unacknowledged. So memory is bounded by receive_maximum × message size
(the ready queue can never hold more), and the rest waits in the broker's queue for
this session (persistent, `session_expiry_s`).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import re
import threading
import time
from typing import Any

import paho.mqtt.client as paho

from ingest.amqp import INGEST_QUEUE
from ingest.batch import Delivery, WriteBatch
from ingest.deadletter import DeadLetters
from ingest.metrics import IngestCounts, IngestMetrics
from ingest.points import (
    ACCELERATOR,
    EncodedBatch,
    LineEncoder,
    PlainEnvelope,
    TimeWindow,
    accelerator_in_use,
    status_line,
    transcode_payload,
    transcode_plain,
)
from ingest.ratelimit import GatewayRateLimit
from ingest.sequence import SequenceTracker
from ingest.settings import IngestSettings
from ingest.writer import BatchWriter
from urbansense import clock, codec, topics
from urbansense.amqp import AmqpConsumer, AmqpMessage
from urbansense.clock_offset import ClockOffsets
from urbansense.influx import InfluxClient, InfluxError
from urbansense.lineprotocol import LineProtocolError
from urbansense.mqtt import MqttClient, MqttSettings
from urbansense.schema import GatewayStatus, TelemetryBatch

log = logging.getLogger("urbansense.ingest")

_DEFAULT_RETENTION_MS = 30 * 86_400_000
_TOPIC_CACHE_MAX = 65536


class Ingester:
    def __init__(self, mqtt: MqttSettings, influx_url: str, *, database: str = "city",
                 instance: str = "ingest-1", settings: IngestSettings | None = None,
                 max_lines: int | None = None, max_delay_s: float | None = None,
                 amqp_urls: list[str] | None = None) -> None:
        """`amqp_urls`: take the messages from a RabbitMQ cluster's ingest queue
        (ingest/amqp.py) instead of the MQTT shared subscription; the broker connection
        then only carries dead letters."""
        self.settings = s = settings or IngestSettings()
        if max_lines is not None:
            s.batch_lines = max_lines
        if max_delay_s is not None:
            s.batch_delay_s = max_delay_s
        s.check()
        self.instance = instance
        self.database = database
        self.influx_url = influx_url
        self.influx = InfluxClient(influx_url, database, retention_policy=s.retention_policy)
        self.metrics = IngestMetrics(instance)
        self.encoder = LineEncoder()
        self.sequences = SequenceTracker()
        self.clocks = ClockOffsets()
        self._clock = clock.current()
        #: each gateway's newest status: its time and state
        self._status_t: dict[tuple[str, str], tuple[int, str]] = {}
        self._topics: dict[str, topics.GatewayTopic] = {}
        # unbounded, yet never holds more than receive_maximum messages (see above)
        self._ready: queue.SimpleQueue[WriteBatch | None] = queue.SimpleQueue()
        self._batch_lock = threading.Lock()
        self._stop = threading.Event()
        self._give_up = threading.Event()
        self._closed = False  # the last batch is sealed: take nothing more
        self._generation = 0
        self._held = 0  # messages received and not yet settled (acknowledged or dropped)
        self._held_lock = threading.Lock()
        self._batch: WriteBatch | None = None
        self._batch_due = 0.0
        # Seal a batch before the broker runs out of in-flight credit, or small messages
        # would stall on Receive Maximum until the batch's time limit.
        self._message_budget = max(1, s.receive_maximum // (s.max_concurrent_writes + 2))
        self._workers: list[threading.Thread] = []
        self._prometheus: Any = None
        self.mqtt = MqttClient(mqtt, client_id=f"urbansense-{instance}", clean_start=False,
                               session_expiry_s=s.session_expiry_s, manual_ack=True,
                               receive_maximum=s.receive_maximum, on_connect=self._on_connect,
                               # back quickly after a broker restart: until an ingester has
                               # reconnected, Mosquitto drops what is published to the shared
                               # group (see UplinkSpec.resume_delay_s); the edges wait 2 s
                               reconnect_min_s=0.25, reconnect_max_s=1.0)
        self.deadletters = DeadLetters(self.mqtt, instance, self.metrics)
        self._rate_limit = (GatewayRateLimit(s.gateway_rate_bytes_per_s, s.gateway_rate_burst_s)
                            if s.gateway_rate_bytes_per_s > 0 else None)
        self._telemetry_filter = f"$share/{s.share_group}/{topics.ALL_TELEMETRY}"
        self.amqp = (AmqpConsumer(amqp_urls, self._receive, queues=[INGEST_QUEUE], on_connect=self._on_connect,
                                  prefetch=s.receive_maximum, name="ingest-amqp")
                     if amqp_urls else None)
        if self.amqp is None:
            self.mqtt.subscribe(self._telemetry_filter, self._receive, qos=1)
        if s.gateway_status and self.amqp is None:
            # Not shared: a retained birth/last-will reaches every instance (MQTT 5 sends no
            # retained messages to shared subscriptions); they all write the same point.
            self.mqtt.subscribe(topics.ALL_STATUS, self._receive, qos=1)

    # ------------------------------------------------------------------ public
    @property
    def stats(self) -> IngestCounts:
        return self.metrics.counts

    @property
    def held(self) -> int:
        """Messages received and not yet acknowledged."""
        return self._held

    def run(self, duration_s: float | None = None) -> None:
        """Run until stop() (or for duration_s), then drain and disconnect."""
        self._prepare_influx()
        for n in range(self.settings.max_concurrent_writes):
            worker = threading.Thread(target=self._write_loop, name=f"ingest-writer-{n}", daemon=True)
            worker.start()
            self._workers.append(worker)
        reporter = None
        if self.settings.metrics_interval_s > 0:
            reporter = threading.Thread(target=self._report_loop, name="ingest-metrics", daemon=True)
            reporter.start()
        if self.settings.prometheus_port:
            self._prometheus = self.metrics.serve(self.settings.prometheus_host, self.settings.prometheus_port)
        self.mqtt.connect(wait=False)
        if self.amqp is not None:
            self.amqp.start()
        log.info("ingester %s: %s -> %s database %s", self.instance,
                 f"RabbitMQ {self.amqp.url} queue {INGEST_QUEUE}" if self.amqp else self.mqtt.settings.url,
                 self.influx_url, self.database)
        log.info("ingester %s: telemetry decoded by the %s", self.instance, ACCELERATOR)
        self.metrics.accelerator(accelerator_in_use())
        deadline = None if duration_s is None else time.monotonic() + duration_s
        try:
            while not self._stop.wait(0.05):
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self._flush_due()
        finally:
            self._stop.set()
            self._drain()
            if reporter is not None:
                reporter.join(timeout=5)
            self._report_once()
            if self._prometheus is not None:
                self._prometheus.shutdown()

    def stop(self) -> None:
        """Stop taking messages, write and acknowledge what is held, disconnect (run()
        returns). Safe to call from a signal handler or another thread."""
        self._stop.set()

    # ------------------------------------------------------------------ receiving
    def _on_connect(self) -> None:
        self._generation += 1

    def _receive(self, msg: paho.MQTTMessage | AmqpMessage) -> None:
        """paho's network thread (or the AMQP source's): one message into the current batch."""
        if self._closed or (self._stop.is_set() and not self.settings.leave_on_stop):
            return  # stopping: not taken, not acknowledged; the broker keeps it for our return
        with self._held_lock:
            self._held += 1
        with self._batch_lock:
            self._take(msg, self._generation)
            if self._batch_full():
                self._seal()

    def _settle(self, n: int) -> None:
        with self._held_lock:
            self._held -= n

    # ------------------------------------------------------------------ batching
    def _batch_full(self) -> bool:
        batch = self._batch
        return batch is not None and (batch.points >= self.settings.batch_lines
                                      or len(batch.deliveries) >= self._message_budget)

    def _seal(self) -> None:
        """Hand the current batch to the writers (called with _batch_lock held)."""
        batch, self._batch = self._batch, None
        if batch is not None:
            self._ready.put(batch)

    def _flush_due(self) -> None:
        with self._batch_lock:
            if self._batch is not None and time.monotonic() >= self._batch_due:
                self._seal()

    def _status_time(self, district: str, gateway: str, status: GatewayStatus) -> GatewayStatus:
        """An offline status (a last will) as of its arrival (GatewayStatus.as_received);
        a status that changes the gateway's state is stored after its newest status (a
        birth from a gateway whose clock is behind, after its will)."""
        key = (district, gateway)
        last_t, last_state = self._status_t.get(key, (0, ""))
        status = status.as_received(self._clock.now_ms(), last_t)
        if status.state != last_state and status.t <= last_t:
            status = dataclasses.replace(status, t=last_t + 1)
        if status.t >= last_t:
            self._status_t[key] = (status.t, status.state)
        return status

    def _take(self, msg: paho.MQTTMessage | AmqpMessage, generation: int) -> None:
        if self._batch is None:
            self._batch = WriteBatch(first_received=time.monotonic())
            self._batch_due = self._batch.first_received + self.settings.batch_delay_s
        batch = self._batch
        payload = msg.payload if type(msg.payload) is bytes else bytes(msg.payload)
        topic = msg.topic  # read once: a property that decodes the bytes on a paho MQTTMessage (QoS 2)
        delivery = Delivery(msg.mid, msg.qos, generation, topic, payload)
        first_line = len(batch.lines)
        decoded_by: str | None = None
        try:
            where = self._topics.get(topic) or self._parse_topic(topic)
            if where.kind == "status":
                status = self._status_time(where.district, where.gateway, codec.decode_status(payload))
                batch.add_line(status_line(where.district, where.gateway, status,
                                           self.clocks.offset_s(where.district, where.gateway)))
            else:
                if self._rate_limit is not None and not self._rate_limit.allow(
                        where.district, where.gateway, len(payload)):
                    raise codec.PayloadError(self._rate_limit.reason(where.district, where.gateway))
                decoded, encoded, problems, decoded_by = self._decode(payload)
                if decoded.gw != where.gateway or decoded.district != where.district:
                    raise codec.PayloadError(
                        f"batch says district={decoded.district} gw={decoded.gw} but arrived on "
                        f"{msg.topic}; a gateway publishes only on its own topic")
                gaps, repeats = self.sequences.observe(where.district, where.gateway, decoded.seq)
                if gaps or repeats:
                    self.metrics.sequence(gaps, repeats)
                doubt = self._clock_doubt(where, decoded.sent)
                if doubt:
                    decoded, problems = codec.decode_batch_lenient(payload, max_bytes=self.settings.max_payload_bytes)
                    encoded = self.encoder.encode(decoded, int(time.time() * 1000), doubt)
                    self.metrics.clock_flagged(encoded.points)
                for line in encoded.lines:
                    batch.add_line(line)
                if encoded.chunk:
                    batch.add_chunk(encoded.chunk, encoded.chunk_points)
                problems += encoded.problems
                if problems:
                    self.deadletters.samples(delivery, problems)
        except (codec.PayloadError, topics.TopicError, LineProtocolError) as exc:
            batch.discard_from(first_line)
            self.deadletters.payload(delivery, str(exc))
        except Exception as exc:  # a bug here must not stall the stream; the payload is kept
            log.exception("ingester failed on a message from %s", msg.topic)
            batch.discard_from(first_line)
            self.deadletters.payload(delivery, f"ingester error (please report it): {exc!r}")
        batch.add(delivery, first_line)
        self.metrics.messages(1, decoded_by)

    def _clock_doubt(self, where: topics.GatewayTopic, sent: int) -> str | None:
        """Measure the gateway's clock on this batch; why its readings are in doubt, if they are."""
        offset = self.clocks.observe(where.district, where.gateway, sent, self._clock.now_ms())
        self.metrics.clock_offset(where.district, where.gateway, offset)
        bound = self.settings.max_clock_offset_s
        if bound and abs(offset) > bound:
            return (f"gateway clock {offset:+.0f} s off (limit {bound:g} s): the reading's time may be wrong; "
                    "fix the gateway's NTP")
        return None

    def _parse_topic(self, topic: str) -> topics.GatewayTopic:
        """Parsed once per topic (a gateway publishes on the same few), bounded."""
        where = topics.parse_gateway_topic(topic)
        if len(self._topics) >= _TOPIC_CACHE_MAX:
            self._topics.clear()
        self._topics[topic] = where
        return where

    def _decode(self, payload: bytes) -> tuple[PlainEnvelope | codec.PlainBatch | TelemetryBatch, EncodedBatch,
                                               list[str], str]:
        """A telemetry payload to its points, the reasons for refused samples and the path
        that decoded it (metrics.DECODE_PATHS). The ordinary batch in one go: the C
        accelerator (points.transcode_payload: float, integer, boolean and state fields)
        where it is built; else, for floats and booleans only, codec.decode_plain_batch +
        points.transcode_plain. Anything else, or a sample outside the time window, the
        full path (same points, and the reasons)."""
        now_ms = int(time.time() * 1000)
        max_bytes = self.settings.max_payload_bytes
        fast = transcode_payload(payload, self.encoder.window, now_ms, max_bytes)
        if fast is not None:
            return fast[0], fast[1], [], "c"
        plain = codec.decode_plain_batch(payload, max_bytes=max_bytes)
        if plain is not None:
            encoded = transcode_plain(plain, self.encoder.window, now_ms)
            if encoded is not None:
                return plain, encoded, [], "python"
        decoded, problems = codec.decode_batch_lenient(payload, max_bytes=max_bytes)
        return decoded, self.encoder.encode(decoded, now_ms), problems, "full"

    # ------------------------------------------------------------------ writing
    def _write_loop(self) -> None:
        influx = InfluxClient(self.influx_url, self.database, retention_policy=self.settings.retention_policy,
                              timeout_s=self.settings.write_timeout_s)
        writer = BatchWriter(influx, self.settings, self.metrics, self.deadletters.influx, self._give_up)
        try:
            while True:
                batch = self._ready.get()
                if batch is None:
                    return
                self.metrics.queue_depth(self._held)
                if writer.write(batch):
                    self._acknowledge(batch)
                    self.metrics.batch_written(batch.points, time.monotonic() - batch.first_received)
                self._settle(len(batch.deliveries))
        finally:
            influx.close()

    def _acknowledge(self, batch: WriteBatch) -> None:
        amqp = self.amqp
        if not (amqp.connected if amqp is not None else self.mqtt.connected):
            return  # the broker redelivers all of them on the next connection
        for d in batch.deliveries:
            if d.generation != self._generation:
                continue  # the broker redelivers it on the new connection
            if d.publishes and not all(_published(info) for info in d.publishes):
                log.warning("dead letter about a message from %s did not reach the broker; "
                            "leaving the message unacknowledged so it is redelivered", d.topic)
                continue
            if amqp is not None:
                amqp.ack(d.mid)
            elif d.qos > 0:
                self.mqtt.ack(d.mid, d.qos)

    # ------------------------------------------------------------------ stopping
    def _drain(self) -> None:
        """Stop taking messages, write and acknowledge what is held, disconnect."""
        s = self.settings
        if self.amqp is not None:
            self.amqp.pause()  # what is delivered from now on goes back to the queue
        elif s.leave_on_stop:
            # leaving for good: no more messages for this session; take what is in flight
            # (until the stream has been quiet for 0.5 s)
            self.mqtt.unsubscribe(self._telemetry_filter)
            self.mqtt.unsubscribe(topics.ALL_STATUS)
            quiet_until = time.monotonic() + s.drain_timeout_s
            seen = -1
            while seen != self.mqtt.stats.received and time.monotonic() < quiet_until:
                seen = self.mqtt.stats.received
                time.sleep(0.5)
        with self._batch_lock:
            self._seal()
            self._closed = True
        give_up_at = time.monotonic() + s.drain_timeout_s
        for _ in self._workers:
            self._ready.put(None)
        for worker in self._workers:
            worker.join(timeout=max(0.1, give_up_at - time.monotonic()))
        if any(w.is_alive() for w in self._workers):
            log.warning("InfluxDB did not take the held messages within %.0f s; they stay "
                        "unacknowledged and the broker redelivers them", s.drain_timeout_s)
            self._give_up.set()
            for worker in self._workers:
                worker.join(timeout=5)
        # a session that still has unacknowledged messages is kept, even when leaving:
        # ending it would lose them (Mosquitto does not hand them to the other members)
        leave = s.leave_on_stop and self._held == 0
        if s.leave_on_stop and not leave:
            log.warning("keeping the session: %d messages are not acknowledged; start this "
                        "instance again to finish them", self._held)
        if self.amqp is not None:
            self.amqp.stop()  # after the last acknowledgement
        self.mqtt.close(session_expiry_s=0 if leave else None)
        log.info("ingester %s stopped: %s", self.instance, self.metrics.snapshot())

    # ------------------------------------------------------------------ InfluxDB
    def _prepare_influx(self) -> None:
        try:
            self.influx.create_database()
        except InfluxError as exc:
            log.warning("could not create database %s (%s); writes will retry until InfluxDB "
                        "answers", self.database, exc)
        max_age_ms = None if self.settings.max_age_s is None else int(self.settings.max_age_s * 1000)
        if max_age_ms is None:
            max_age_ms = self._retention_ms()
        self.encoder.window = TimeWindow(future_ms=int(self.settings.max_future_s * 1000),
                                         retention_ms=max_age_ms)

    def _retention_ms(self) -> int:
        """Duration of the retention policy written to (0 = infinite), from InfluxDB."""
        try:
            rows = self.influx.rows(f'SHOW RETENTION POLICIES ON "{self.database}"')
        except InfluxError as exc:
            log.warning("cannot read retention policies (%s); refusing samples older than "
                        "30 days", exc)
            return _DEFAULT_RETENTION_MS
        wanted = self.settings.retention_policy
        for row in rows:
            if (wanted and row.get("name") == wanted) or (not wanted and row.get("default")):
                return parse_duration_ms(str(row.get("duration", "0s")))
        return _DEFAULT_RETENTION_MS

    def _report_loop(self) -> None:
        while not self._stop.wait(self.settings.metrics_interval_s):
            self._report_once()

    def _report_once(self) -> None:
        if self.settings.metrics_interval_s <= 0:
            return
        line = self.metrics.influx_line(int(time.time() * 1000), self._held)
        try:
            self.influx.write(line)
        except InfluxError as exc:
            log.debug("self-metrics not written: %s", exc)


def _published(info: paho.MQTTMessageInfo, timeout_s: float = 10.0) -> bool:
    if info.is_published():
        return True
    try:
        info.wait_for_publish(timeout_s)
    except (RuntimeError, ValueError):  # paho: the publish was dropped (connection lost)
        return False
    return info.is_published()


_DURATION = re.compile(r"(\d+)(h|m|s)")


def parse_duration_ms(text: str) -> int:
    """InfluxDB's duration text, e.g. "720h0m0s" -> 2592000000; "0s" (infinite) -> 0."""
    unit_ms = {"h": 3_600_000, "m": 60_000, "s": 1000}
    return sum(int(n) * unit_ms[u] for n, u in _DURATION.findall(text))
