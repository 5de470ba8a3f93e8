"""Air-quality micro-stations on MQTT: topic, JSON payload with the vendor's keys, and the
broken payloads faulty stations send."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import orjson

from urbansense import codec
from urbansense.config import Profile

#: What the edge agent names a payload it cannot parse (edge/mqtt_input.py passes the
#: payload to codec.loads with this label), so offline play reports the same error.
PAYLOAD_LABEL = "sensor payload"


def station_topic(profile: Profile, device: str) -> str:
    return (profile.topic or "sensors/{device}/data").replace("{device}", device)


def _body(profile: Profile, t_ms: int, values: Mapping[str, object]) -> dict[str, object]:
    body: dict[str, object] = {profile.timestamp_key or "ts": t_ms}
    for spec in profile.fields:
        if spec.name in values:
            value = values[spec.name]
            if isinstance(value, float) and (spec.scale != 1.0 or spec.offset != 0.0):
                value = round((value - spec.offset) / spec.scale, 6)  # in the device's unit (knots)
            body[spec.key or spec.name] = value
    return body


def station_payload(profile: Profile, t_ms: int, values: Mapping[str, object]) -> bytes:
    """The station's JSON with the vendor's keys (the profile's `key:`), each value in the
    device's own unit (the inverse of the profile's scale and offset)."""
    return orjson.dumps(_body(profile, t_ms, values))


def backlog_payload(profile: Profile, held: Sequence[tuple[int, Mapping[str, object]]]) -> bytes:
    """A terminal's upload after a coverage gap: one JSON array of its reports, oldest
    first, each with its own time."""
    return orjson.dumps([_body(profile, t, values) for t, values in held])


def malformed_payload(profile: Profile, device: str, t_ms: int, values: Mapping[str, object]) -> bytes:
    """Broken JSON of the kinds field stations send: a truncated message, or a firmware
    debug line instead of JSON (alternating by event second)."""
    if (t_ms // 1000) % 2 == 0:
        return station_payload(profile, t_ms, values)[:-7]
    return f"ERR sensor bus timeout dev={device} ts={t_ms}".encode()


def payload_error(payload: bytes) -> str | None:
    """The error the edge reports for a payload, or None if it parses."""
    try:
        codec.loads(payload, PAYLOAD_LABEL)
    except codec.PayloadError as exc:
        return str(exc)[:200]
    return None
