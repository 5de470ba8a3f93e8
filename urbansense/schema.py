"""Typed models of wire contract v1: telemetry batch, sample, gateway status, alert event.

The models are plain slotted dataclasses (cheap to build in hot paths); validation lives
in :mod:`urbansense.codec`, which checks every payload that crosses the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

FieldValue = float | int | bool | str


@dataclass(slots=True)
class Sample:
    """One device reading: measurement `m`, edge timestamp `t` (epoch ms), fields `f`."""

    dev: str
    m: str
    t: int
    f: dict[str, FieldValue]
    q: str = "good"
    err: str | None = None
    #: Profile marks the sample urgent (elevator fault, gas alarm): edge sends it first.
    urgent: bool = False

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dev": self.dev, "m": self.m, "t": self.t, "f": self.f, "q": self.q}
        if self.err is not None:
            out["err"] = self.err
        if self.urgent:
            out["urgent"] = True
        return out


@dataclass(slots=True)
class TelemetryBatch:
    gw: str
    district: str
    seq: int
    sent: int
    samples: list[Sample]
    v: int = 1

    def to_wire(self) -> dict[str, Any]:
        return {
            "v": self.v,
            "gw": self.gw,
            "district": self.district,
            "seq": self.seq,
            "sent": self.sent,
            "samples": [s.to_wire() for s in self.samples],
        }


@dataclass(slots=True)
class GatewayStatus:
    """Retained birth / last-will message on city/{district}/{gateway}/status."""

    state: str  # "online" | "offline"
    t: int
    version: str | None = None
    devices: dict[str, str] = field(default_factory=dict)  # dev -> "ok" | "fail"
    #: Self-telemetry (log depth, drops, reconnects, ...); free-form numbers.
    stats: dict[str, float] = field(default_factory=dict)
    #: The running gateway config: the first 12 hex digits of its file's SHA-256, and its
    #: `version:` text (remote configuration, edge/remote_config.py).
    config_hash: str | None = None
    config_version: str | None = None
    v: int = 1

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": self.v, "state": self.state, "t": self.t}
        if self.version is not None:
            out["version"] = self.version
        if self.config_hash is not None:
            out["config_hash"] = self.config_hash
        if self.config_version is not None:
            out["config_version"] = self.config_version
        out["devices"] = self.devices
        if self.stats:
            out["stats"] = self.stats
        return out

    def as_received(self, now_ms: int, newest_t: int = 0) -> GatewayStatus:
        """The status as of its arrival. A last will carries the time it was set, when the
        gateway connected, not when the broker published it: taken at its word, it would
        land before the gateway's newest status (which would still say online) and be
        offline for as long as the gateway had been up. An offline status counts from its
        arrival, after the gateway's newest status `newest_t`."""
        if self.state != "offline":
            return self
        return replace(self, t=max(self.t, now_ms, newest_t + 1))


@dataclass(slots=True)
class Forecast:
    crosses_at: int  # epoch ms at which the hazard threshold is expected to be crossed
    eta_s: float


@dataclass(slots=True)
class AlertEvent:
    id: str
    rule: str
    domain: str
    severity: str
    state: str
    district: str
    device: str | None
    metric: str | None
    value: float | None
    threshold: float | None
    started: int
    t: int
    message: str
    forecast: Forecast | None = None
    v: int = 1
    #: A command the alert recommends (a pump to start), for an operator to confirm:
    #: {"topic", "dev", "field", "value"} as the command path takes it.
    command: dict[str, Any] | None = None
    #: What became of a command the rules service sent by itself (`command.auto`), as the
    #: gateway answered: {"id", "ok", "readback" or "reason"}; on an event of its own that
    #: adds it to the alert's history.
    response: dict[str, Any] | None = None
    #: The sensors whose readings make the alert when they are more than its own device:
    #: a spatial rule's group members in breach, a compound rule's agreeing neighbours
    #: (at most codec.MAX_CONTRIBUTORS).
    contributors: list[str] | None = None
    #: On an escalation, the severity this event replaces (not on the wire: the `alerts`
    #: measurement closes that severity's entry, so a dashboard shows the alert once).
    supersedes: str | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "v": self.v,
            "id": self.id,
            "rule": self.rule,
            "domain": self.domain,
            "severity": self.severity,
            "state": self.state,
            "district": self.district,
            "device": self.device,
            "metric": self.metric,
            "value": self.value,
            "threshold": self.threshold,
            "started": self.started,
            "t": self.t,
            "message": self.message,
        }
        if self.forecast is not None:
            out["forecast"] = {"crosses_at": self.forecast.crosses_at, "eta_s": self.forecast.eta_s}
        if self.command is not None:
            out["command"] = self.command
        if self.response is not None:
            out["response"] = self.response
        if self.contributors is not None:
            out["contributors"] = self.contributors
        return out
