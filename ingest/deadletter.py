"""Dead letters on `city/ingest/deadletter`: what could not be stored, and why.

Payload (JSON)::

    {"reason": "samples[3].f.pressure_mpa: NaN is not allowed ...",   # the first problem
     "reasons": ["...", "..."],        # every problem (at most 100), for kind "samples"
     "kind": "payload" | "samples" | "influx",
     "topic": "city/pudong/pd-gw-01/telemetry",
     "payload_b64": "...",             # the whole MQTT payload as received
     "samples_refused": 1,             # readings of this payload that were not stored
     "line": "...",                    # kind "influx": the line InfluxDB refused
     "instance": "ingest-1", "t": 1764190000123}

Kinds: `payload` — the message was refused whole (not JSON, broken envelope, topic and
batch disagree, too large); `samples` — some samples were refused (bad sample, time
outside the accepted window) and their good neighbours were stored; `influx` — InfluxDB
refused a line (e.g. a field whose type conflicts with what the measurement holds).

The dead letter is published (QoS 1) before the message it is about is acknowledged,
and that acknowledgement waits until the broker has the dead letter.
"""

from __future__ import annotations

import base64
import logging
import re
import time

from ingest.batch import Delivery
from ingest.metrics import IngestMetrics
from urbansense import codec, topics
from urbansense.mqtt import MqttClient

log = logging.getLogger("urbansense.ingest")

_MAX_REASONS = 100
_LOG_EVERY_S = 5.0


class DeadLetters:
    def __init__(self, mqtt: MqttClient, instance: str, metrics: IngestMetrics) -> None:
        self.mqtt = mqtt
        self.instance = instance
        self.metrics = metrics
        self._last_log = 0.0
        self._unlogged = 0

    def payload(self, delivery: Delivery, reason: str) -> None:
        self._publish(delivery, "payload", reason, {"samples_refused": _sample_count(delivery)})

    def samples(self, delivery: Delivery, reasons: list[str]) -> None:
        first = reasons[0] if len(reasons) == 1 else f"{reasons[0]} (and {len(reasons) - 1} more)"
        self._publish(delivery, "samples", first,
                      {"reasons": reasons[:_MAX_REASONS], "samples_refused": len(reasons)})

    def influx(self, delivery: Delivery, line: str, reason: str) -> None:
        declared = declared_conflict(reason)
        if declared:
            # the codec checks declared fields' types on every path: InfluxDB should never
            # see a conflict on one, so this is a bug of ours, logged as one (not rate-limited)
            log.error("BUG: InfluxDB refused %s, a field its family declares, as a type conflict "
                      "(the ingester's type check should have refused or converted it; please report "
                      "it with the dead letter): %s", declared, reason)
        self._publish(delivery, "influx", reason, {"line": line, "samples_refused": 1})

    def _publish(self, delivery: Delivery, kind: str, reason: str, extra: dict[str, object]) -> None:
        body = {"reason": reason, "kind": kind, "topic": delivery.topic,
                "payload_b64": base64.b64encode(delivery.payload).decode(),
                **extra, "instance": self.instance, "t": int(time.time() * 1000)}
        delivery.publishes.append(self.mqtt.publish_tracked(topics.DEADLETTER, codec.dumps(body), qos=1))
        refused = extra.get("samples_refused", 0)
        self.metrics.deadletter(kind, refused if isinstance(refused, int) else 0)
        self._log(kind, delivery.topic, reason)

    def _log(self, kind: str, topic: str, reason: str) -> None:
        # a flood of bad payloads must not become a flood of log lines
        now = time.monotonic()
        if now - self._last_log < _LOG_EVERY_S:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more since the last report)" if self._unlogged else ""
        log.warning("dead letter (%s) from %s: %s%s", kind, topic, reason, more)
        self._last_log = now
        self._unlogged = 0


_CONFLICT = re.compile(r'field type conflict: input field "([^"]+)" on measurement "([^"]+)"')


def declared_conflict(reason: str) -> str | None:
    """'gas.pressure_kpa' when InfluxDB's reason is a type conflict on a field the family
    declares (the registry's types are checked before writing), else None (an undeclared
    field, which two gateways may send in two types)."""
    found = _CONFLICT.search(reason)
    if found and found.group(1) in codec.FIELD_TYPES.get(found.group(2), {}):
        return f"{found.group(2)}.{found.group(1)}"
    return None


def _sample_count(delivery: Delivery) -> int:
    """Readings lost with a refused payload, when it can be told (0 if it is not JSON)."""
    try:
        raw = codec.loads(delivery.payload)
    except codec.PayloadError:
        return 0
    samples = raw.get("samples") if isinstance(raw, dict) else None
    return len(samples) if isinstance(samples, list) else 0
