"""The ingester service: shared subscription -> validate -> write -> acknowledge."""

from __future__ import annotations

import base64
import logging
import queue
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as paho

from ingest.points import batch_lines, status_line
from urbansense import codec, topics
from urbansense.influx import InfluxClient, InfluxError
from urbansense.mqtt import MqttClient, MqttSettings

log = logging.getLogger("urbansense.ingest")


@dataclass
class IngestStats:
    messages: int = 0
    points: int = 0
    deadletters: int = 0
    write_retries: int = 0


class Ingester:
    def __init__(self, mqtt: MqttSettings, influx_url: str, *, database: str = "city",
                 instance: str = "ingest-1", max_lines: int = 5000, max_delay_s: float = 1.0) -> None:
        self.influx = InfluxClient(influx_url, database)
        self.stats = IngestStats()
        self.max_lines = max_lines
        self.max_delay_s = max_delay_s
        self._inbox: queue.Queue[paho.MQTTMessage] = queue.Queue(maxsize=20000)
        self._stop = threading.Event()
        self.mqtt = MqttClient(mqtt, client_id=f"urbansense-{instance}", clean_start=False,
                               session_expiry_s=3600, manual_ack=True)
        self.mqtt.subscribe(topics.SHARED_INGEST, self._inbox.put, qos=1)
        self.mqtt.subscribe(topics.ALL_STATUS, self._inbox.put, qos=1)

    def run(self, duration_s: float | None = None) -> None:
        self.influx.create_database()
        self.mqtt.connect(wait=False)
        deadline = None if duration_s is None else time.monotonic() + duration_s
        try:
            while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
                self._cycle()
        finally:
            self.mqtt.close()

    def stop(self) -> None:
        self._stop.set()

    def _cycle(self) -> None:
        try:
            first = self._inbox.get(timeout=0.2)
        except queue.Empty:
            return
        msgs = [first]
        lines: list[str] = []
        lines.extend(self._lines_for(first))
        until = time.monotonic() + self.max_delay_s
        while len(lines) < self.max_lines:
            try:
                msg = self._inbox.get(timeout=max(0.0, min(0.05, until - time.monotonic())))
            except queue.Empty:
                break
            msgs.append(msg)
            lines.extend(self._lines_for(msg))
        self._write(lines)
        for msg in msgs:
            self.mqtt.ack(msg.mid, msg.qos)
        self.stats.messages += len(msgs)

    def _lines_for(self, msg: paho.MQTTMessage) -> list[str]:
        try:
            where = topics.parse_gateway_topic(msg.topic)
            if where.kind == "status":
                return [status_line(where.district, where.gateway, codec.decode_status(msg.payload))]
            batch, problems = codec.decode_batch_lenient(msg.payload)
            if batch.gw != where.gateway or batch.district != where.district:
                raise codec.PayloadError(
                    f"batch says {batch.district}/{batch.gw} but arrived on {msg.topic}")
            for problem in problems:
                self._deadletter(msg, problem)
            return batch_lines(batch)
        except (codec.PayloadError, topics.TopicError) as exc:
            self._deadletter(msg, str(exc))
            return []

    def _deadletter(self, msg: paho.MQTTMessage, reason: str) -> None:
        self.stats.deadletters += 1
        log.warning("dead letter from %s: %s", msg.topic, reason)
        self.mqtt.publish(topics.DEADLETTER, codec.dumps({
            "reason": reason, "topic": msg.topic, "payload_b64": base64.b64encode(msg.payload).decode(),
            "t": int(time.time() * 1000)}), qos=1)

    def _write(self, lines: list[str]) -> None:
        if not lines:
            return
        body = "\n".join(lines).encode()
        delay = 0.2
        while True:
            try:
                self.influx.write(body)
                self.stats.points += len(lines)
                return
            except InfluxError as exc:
                self.stats.write_retries += 1
                log.warning("write failed, retrying in %.1f s: %s", delay, exc)
                time.sleep(exc.retry_after or delay)
                delay = min(delay * 2, 10.0)
