"""MQTT input: sensors that publish JSON on a gateway-local broker (air-quality
stations and the like). Each device's topic comes from its profile (`topic:
sensors/{device}/data`); each JSON key maps to a field (`key:`, default the field name)
and goes through the same scale/offset/enum as a register would."""

from __future__ import annotations

import asyncio

from edge.link import SampleSink
from edge.pushed import PushedDevice, PushedInput, device_time, new_device
from edge.telemetry import SelfTelemetry
from urbansense import codec
from urbansense.clock import now_ms
from urbansense.config import FieldSpec, LinkSpec, Profile
from urbansense.mqtt import Message, MqttClient, MqttSettings
from urbansense.schema import FieldValue

__all__ = ["MqttInputLink", "device_time", "map_payload"]


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


class MqttInputLink(PushedInput):
    def __init__(self, link: LinkSpec, profiles: dict[str, Profile], *, gateway: str, sink: SampleSink,
                 telemetry: SelfTelemetry) -> None:
        super().__init__(sink=sink, telemetry=telemetry)
        self.link = link
        self._by_topic: dict[str, PushedDevice] = {}
        for dev in link.devices:
            profile = profiles[dev.profile]
            assert profile.topic is not None
            topic = profile.topic.replace("{device}", dev.id)
            state = new_device(dev, profile, topic)
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
        received = state.receipt_time(now_ms())
        try:
            body = codec.loads(payload, "sensor payload")
        except codec.PayloadError as exc:
            self.report(state, received, {}, [str(exc)])
            return
        key = state.profile.timestamp_key
        if isinstance(body, list) and key is not None:
            # a terminal's backlog after a coverage gap: each report with its own time
            for n, item in enumerate(body):
                self._one(state, received if n == 0 else state.receipt_time(received), item)
            return
        self._one(state, received, body)

    def _one(self, state: PushedDevice, received: int, body: object) -> None:
        fields, problems = map_payload(state.profile, body)
        t = received
        key = state.profile.timestamp_key
        if key is not None and isinstance(body, dict):
            t, problem = device_time(body.get(key), key, received)
            if problem:
                problems.append(problem)
        self.report(state, t, fields, problems)
