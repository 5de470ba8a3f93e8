"""MQTT input: sensors that publish JSON on a gateway-local broker (air-quality
stations and the like). Each device's topic comes from its profile (`topic:
sensors/{device}/data`); each JSON key maps to a field (`key:`, default the field name)
and goes through the same scale/offset/enum as a register would."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from edge.deadband import ReportByException
from edge.link import SampleSink, is_urgent
from edge.telemetry import SelfTelemetry
from urbansense import codec
from urbansense.clock import now_ms
from urbansense.config import DeviceSpec, FieldSpec, LinkSpec, Profile
from urbansense.mqtt import Message, MqttClient, MqttSettings
from urbansense.schema import FieldValue, Sample

log = logging.getLogger("urbansense.edge")


@dataclass
class MqttDevice:
    spec: DeviceSpec
    profile: Profile
    topic: str
    deadband: ReportByException
    ok: bool | None = None
    last_error: str = ""
    messages: int = 0
    urgent_last: dict[str, FieldValue] = field(default_factory=dict)

    @property
    def urgent_fields(self) -> list[str]:
        return [f.name for f in self.profile.fields if f.urgent]


def map_payload(profile: Profile, payload: object) -> tuple[dict[str, FieldValue], list[str]]:
    """(fields, problems) for one JSON payload: each profile key found becomes a field."""
    if not isinstance(payload, dict):
        return {}, [f"payload must be a JSON object, got {type(payload).__name__}"]
    fields: dict[str, FieldValue] = {}
    problems: list[str] = []
    for spec in profile.fields:
        key = spec.key or spec.name
        if key not in payload:
            continue
        value = _value(spec, payload[key])
        if value is None:
            problems.append(f"{key}: {payload[key]!r} is not a usable {spec.type} value")
        else:  # in the family's declared type where that loses nothing
            fields[spec.name] = codec.to_declared(profile.measurement, spec.name, value)
    return fields, problems


#: How far ahead of the gateway's clock a device's own time may be (its clock runs fast).
MAX_AHEAD_MS = 300_000
#: How old a held report may be (a backlog older than this is a wrong clock, not a gap).
MAX_AGE_MS = 7 * 86_400_000


def device_time(raw: object, key: str, received: int) -> tuple[int, str | None]:
    """A reading's time from the device's own clock (the payload's `key`, epoch ms), or
    the time of receipt with the reason when that is missing or not believable."""
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw != raw:
        return received, f"{key}: {raw!r} is not an epoch-ms time; stamped on receipt"
    t = int(raw)
    if t > received + MAX_AHEAD_MS:
        return received, f"{key}: {t} is {(t - received) / 1000:.0f} s ahead of the gateway clock; stamped on receipt"
    if t < received - MAX_AGE_MS:
        return received, f"{key}: {t} is more than 7 days old; stamped on receipt"
    return t, None


def _value(spec: FieldSpec, raw: object) -> FieldValue | None:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int | float):
        if raw != raw or raw in (float("inf"), float("-inf")):
            return None
        if spec.enum is not None:
            return spec.enum.get(int(raw), f"unknown-{int(raw)}")
        if spec.scale == 1.0 and spec.offset == 0.0:
            return raw
        return round(float(raw) * spec.scale + spec.offset, 9)
    if isinstance(raw, str) and (spec.type == "string" or (spec.enum and raw in spec.enum.values())):
        return raw
    return None


class MqttInputLink:
    def __init__(self, link: LinkSpec, profiles: dict[str, Profile], *, gateway: str, sink: SampleSink,
                 telemetry: SelfTelemetry) -> None:
        self.link = link
        self.sink = sink
        self.telemetry = telemetry
        self.devices: dict[str, MqttDevice] = {}
        self._by_topic: dict[str, MqttDevice] = {}
        for dev in link.devices:
            profile = profiles[dev.profile]
            assert profile.topic is not None
            topic = profile.topic.replace("{device}", dev.id)
            state = MqttDevice(dev, profile, topic, ReportByException(profile.fields))
            self.devices[dev.id] = state
            self._by_topic[topic] = state
        # The local broker is the gateway's own; uplink credentials do not apply to it.
        self.client = MqttClient(MqttSettings(host=link.host, port=link.port), client_id=f"edge-{gateway}-{link.name}",
                                 clean_start=True)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        for topic in self._by_topic:
            self.client.subscribe(topic, self._on_message, qos=1)
        self.client.connect(wait=False)
        try:
            await asyncio.Event().wait()
        finally:
            self.client.close()

    def _on_message(self, msg: Message) -> None:  # network thread: hand over to the loop
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.handle, msg.topic, bytes(msg.payload))

    def handle(self, topic: str, payload: bytes) -> None:
        state = self._by_topic.get(topic)
        if state is None:
            return
        self.telemetry.mqtt_messages += 1
        state.messages += 1
        received = now_ms()
        try:
            body = codec.loads(payload, "sensor payload")
        except codec.PayloadError as exc:
            self._report(state, received, {}, [str(exc)])
            return
        key = state.profile.timestamp_key
        if isinstance(body, list) and key is not None:
            # a terminal's backlog after a coverage gap: each report with its own time
            for item in body:
                self._one(state, received, item)
            return
        self._one(state, received, body)

    def _one(self, state: MqttDevice, received: int, body: object) -> None:
        fields, problems = map_payload(state.profile, body)
        t = received
        key = state.profile.timestamp_key
        if key is not None and isinstance(body, dict):
            t, problem = device_time(body.get(key), key, received)
            if problem:
                problems.append(problem)
        self._report(state, t, fields, problems)

    def _report(self, state: MqttDevice, t: int, fields: dict[str, FieldValue], problems: list[str]) -> None:
        topic = state.topic
        if not fields:
            reason = "; ".join(problems) or "payload carries none of the profile's keys"
            if state.last_error != reason:
                log.warning("sensor %s on %s: %s", state.spec.id, topic, reason)
            state.ok, state.last_error = False, reason[:200]
            self.telemetry.poll_failed("payload")
            self.telemetry.device_state(state.spec.id, False)
            self.sink(Sample(state.spec.id, state.profile.measurement, t, {}, q="bad", err=state.last_error))
            return
        state.ok, state.last_error = True, ""
        self.telemetry.device_state(state.spec.id, True)
        urgent = is_urgent(state, fields)
        fields = state.deadband.filter(fields, t)
        if fields:
            self.telemetry.sample_taken()
            # an uncertain sample says why (the ingester stores it as quality_reason)
            self.sink(Sample(state.spec.id, state.profile.measurement, t, fields,
                             q="uncertain" if problems else "good",
                             err="; ".join(problems)[:200] if problems else None, urgent=urgent))
