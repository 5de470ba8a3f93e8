"""Every option of the ingester, with its default, loadable from a YAML file
(see ingest/ingest.example.yaml) and overridden by command-line flags. Read by the one
config loader (urbansense.config: read_yaml, and its errors naming file, key and fix)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from urbansense.config import ConfigError, _display, format_validation_error, read_yaml


class IngestSettings(BaseModel):
    # strict: a number in quotes or 1 for true is a mistake in an ingester config
    model_config = ConfigDict(extra="forbid", strict=True)

    #: Lines per InfluxDB write (InfluxDB's own advice: 5,000-10,000).
    batch_lines: int = 5000
    #: Longest a reading waits in a partly filled batch.
    batch_delay_s: float = 1.0
    #: Writes in flight to InfluxDB at once.
    max_concurrent_writes: int = 2
    #: MQTT 5 Receive Maximum: unacknowledged messages the broker may have in flight to
    #: this instance. This is the backpressure bound: while InfluxDB is down nothing is
    #: acknowledged, so the broker stops sending after this many (memory stays bounded).
    receive_maximum: int = 1000
    #: How long the broker keeps this instance's session (and queues its messages) while
    #: it is away; must be longer than any restart.
    session_expiry_s: int = 3600
    #: gzip level of write bodies (1 = fastest; line protocol compresses ~20:1 even so).
    gzip_level: int = 1
    #: Retry back-off of failed writes: starts at min, doubles, capped at max. A
    #: Retry-After header of a 429/503 answer takes precedence.
    retry_min_s: float = 0.2
    retry_max_s: float = 10.0
    #: Per-request timeout of InfluxDB writes.
    write_timeout_s: float = 30.0
    #: Samples further ahead of this instance's clock go to the dead letter.
    max_future_s: float = 300.0
    #: A gateway whose clock is off by more than this (measured from its batches' `sent`
    #: against this instance's clock, urbansense/clock_offset.py) has its readings stored
    #: uncertain, with the offset as the reason; 0 = off.
    max_clock_offset_s: float = 30.0
    #: Samples older than this go to the dead letter. None = the retention of the
    #: retention policy written to (read from InfluxDB at start); 0 = no limit.
    max_age_s: float | None = None
    #: Retention policy to write into; None = the database's default (`raw`).
    retention_policy: str | None = None
    #: Largest accepted payload.
    max_payload_bytes: int = 256 * 1024
    #: MQTT 5 shared-subscription group: instances in the same group split the stream.
    #: Mosquitto keeps a stopped member's persistent session in the group and queues its
    #: share of messages there until it returns, so a group's members must come back
    #: under their own instance names (or stop with leave_on_stop).
    share_group: str = "ingest"
    #: Also store gateway birth/last-will messages (city/+/+/status) in gateway_status.
    gateway_status: bool = True
    #: Self-metrics point into InfluxDB (measurement urbansense_ingest) every N s; 0 = off.
    metrics_interval_s: float = 10.0
    #: Serve Prometheus metrics on this port (127.0.0.1 unless prometheus_host); 0 = off.
    prometheus_port: int = 0
    prometheus_host: str = "127.0.0.1"
    #: On stop: how long to wait for in-flight writes before disconnecting anyway (what
    #: is not written then is not acknowledged, and is redelivered on return).
    drain_timeout_s: float = 30.0
    #: On stop: leave the shared subscription and end the session (an instance removed
    #: for good). Default False: a restart keeps the session, messages wait for it.
    leave_on_stop: bool = False
    #: Per-gateway rate limit in payload bytes/s (0 = off): a gateway sending more is
    #: refused before decoding, to the dead letter, so one flooding gateway cannot starve
    #: the others (ingest/ratelimit.py). Edge batches are ~100 bytes per sample.
    gateway_rate_bytes_per_s: float = 0.0
    #: Burst the rate limit allows, in seconds of the rate (a gateway's backlog replay
    #: after an outage comes as a burst); rate x burst must hold the largest payload.
    gateway_rate_burst_s: float = 10.0

    def check(self) -> IngestSettings:
        problems = []
        for name in ("batch_lines", "max_concurrent_writes", "receive_maximum", "max_payload_bytes"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.receive_maximum > 65535:
            problems.append(f"receive_maximum: MQTT allows at most 65535, got {self.receive_maximum}")
        if not 0 <= self.gzip_level <= 9:
            problems.append(f"gzip_level: must be 0 (off) to 9, got {self.gzip_level}")
        if self.batch_delay_s <= 0:
            problems.append(f"batch_delay_s: must be > 0, got {self.batch_delay_s}")
        if self.retry_min_s <= 0 or self.retry_max_s < self.retry_min_s:
            problems.append("retry_min_s/retry_max_s: need 0 < retry_min_s <= retry_max_s")
        if not self.share_group or any(c in self.share_group for c in "/+#"):
            problems.append(f"share_group: a non-empty name without / + #, got {self.share_group!r}")
        if self.gateway_rate_bytes_per_s < 0 or self.gateway_rate_burst_s <= 0:
            problems.append("gateway_rate_bytes_per_s/gateway_rate_burst_s: need rate >= 0 (0 = off) "
                            "and burst > 0")
        elif 0 < self.gateway_rate_bytes_per_s * self.gateway_rate_burst_s < self.max_payload_bytes:
            problems.append(f"gateway_rate_bytes_per_s x gateway_rate_burst_s must hold one payload of "
                            f"max_payload_bytes ({self.max_payload_bytes}), got "
                            f"{self.gateway_rate_bytes_per_s * self.gateway_rate_burst_s:.0f}")
        if problems:
            raise ConfigError(problems)
        return self

    @classmethod
    def load(cls, path: Path | None, **overrides: Any) -> IngestSettings:
        """Settings from a YAML file (keys as above, under `ingest:` or at the top),
        then `overrides` that are not None."""
        values: dict[str, Any] = {}
        shown = _display(path) if path is not None else "ingester options"
        if path is not None:
            raw = read_yaml(path) or {}
            if not isinstance(raw, dict):
                raise ConfigError([f"{shown}: must be a mapping of option: value"])
            values = raw.get("ingest", raw)
            if not isinstance(values, dict):
                raise ConfigError([f"{shown}: ingest: must be a mapping of option: value"])
        values = {**values, **{k: v for k, v in overrides.items() if v is not None}}
        try:
            settings = cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(shown, cls, exc, values)) from None
        return settings.check()
