"""What every input whose devices push their readings shares (MQTT sensors, HJ 212
stations, JT/T 808 terminals): a device's state, its own clock checked against the
gateway's, and one way of turning a reading into a sample: good, uncertain with the
reason, or bad when nothing usable came."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from edge.deadband import ReportByException
from edge.link import SampleSink, is_urgent
from edge.telemetry import SelfTelemetry
from urbansense import codec
from urbansense.config import DeviceSpec, Profile
from urbansense.schema import FieldValue, Sample

log = logging.getLogger("urbansense.edge")

#: How far ahead of the gateway's clock a device's own time may be (its clock runs fast).
MAX_AHEAD_MS = 300_000
#: How old a held report may be (a backlog older than this is a wrong clock, not a gap).
MAX_AGE_MS = 7 * 86_400_000


def device_time(raw: object, key: str, received: int) -> tuple[int, str | None]:
    """A reading's time from the device's own clock (epoch ms, named `key` in messages),
    or the time of receipt with the reason when that is missing or not believable."""
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw != raw:
        return received, f"{key}: {raw!r} is not an epoch-ms time; stamped on receipt"
    t = int(raw)
    if t > received + MAX_AHEAD_MS:
        return received, f"{key}: {t} is {(t - received) / 1000:.0f} s ahead of the gateway clock; stamped on receipt"
    if t < received - MAX_AGE_MS:
        return received, f"{key}: {t} is more than 7 days old; stamped on receipt"
    return t, None


@dataclass
class PushedDevice:
    spec: DeviceSpec
    profile: Profile
    #: Where its messages come from, for log lines (a topic, or the link's name).
    where: str
    deadband: ReportByException
    ok: bool | None = None
    last_error: str = ""
    messages: int = 0
    urgent_last: dict[str, FieldValue] = field(default_factory=dict)
    #: The last receipt time given to one of its messages (epoch ms; see `receipt_time`).
    last_receipt: int = 0

    def receipt_time(self, now: int) -> int:
        """`now` as the time of a message the device sent without its own, kept strictly
        increasing: two messages received in the same millisecond would otherwise be one
        point in InfluxDB (same series, same time) and the first would be lost."""
        self.last_receipt = max(now, self.last_receipt + 1)
        return self.last_receipt

    @property
    def urgent_fields(self) -> list[str]:
        return [f.name for f in self.profile.fields if f.urgent]


def new_device(spec: DeviceSpec, profile: Profile, where: str) -> PushedDevice:
    return PushedDevice(spec, profile, where, ReportByException(profile.fields))


def number_field(profile: Profile, name: str, value: float | int | bool) -> FieldValue:
    """A decoded number in the field's declared type (bool fields: non-zero is true)."""
    if profile.field(name).type in ("bool", "bit") and not isinstance(value, bool):
        return value != 0
    return codec.to_declared(profile.measurement, name, value)


class PushedInput:
    """Base of the inputs whose devices push; `devices` by device id."""

    def __init__(self, *, sink: SampleSink, telemetry: SelfTelemetry) -> None:
        self.sink = sink
        self.telemetry = telemetry
        self.devices: dict[str, PushedDevice] = {}

    async def run(self) -> None:
        raise NotImplementedError

    def report(self, state: PushedDevice, t: int, fields: dict[str, FieldValue], problems: list[str]) -> None:
        """One reading of a device: a bad sample saying why when no field came, else the
        fields that pass report-by-exception, uncertain with the problems if there are any."""
        if not fields:
            reason = "; ".join(problems) or "the message carries none of the profile's fields"
            if state.last_error != reason:
                log.warning("device %s on %s: %s", state.spec.id, state.where, reason)
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
