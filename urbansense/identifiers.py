"""Identifier rules of wire contract v1 (district, gateway, device, metric names)."""

from __future__ import annotations

import re

from urbansense import registry

ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
METRIC_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
_ID_RE = re.compile(ID_PATTERN)
_METRIC_RE = re.compile(METRIC_PATTERN)

#: MEASUREMENTS (the measurements that carry device telemetry: one per family of the
#: domain registry) and DOMAINS (alert domains: the measurements plus `system`, for
#: gateways and pipeline health) are read from the registry on first use (module
#: __getattr__ below), so a broken family file is reported by the command that needs it,
#: with its file and key, not as an import error.
MEASUREMENTS: tuple[str, ...]
DOMAINS: tuple[str, ...]
QUALITIES: tuple[str, ...] = ("good", "uncertain", "bad")

#: Tags of every telemetry point and InfluxDB's time column.
POINT_TAGS: tuple[str, ...] = ("district", "gateway", "device")
#: Field names the ingester writes itself into every measurement: the tags and the time
#: column (InfluxDB cannot keep a field apart from them), a bad sample's `device_error`
#: text, an uncertain sample's `quality_uncertain` flag and `quality_reason` text. A
#: sample using one as a field name is refused with a reason, on every decode path (the
#: C accelerator is handed this set at start-up), so no gateway can give one of them
#: another type for everyone else in the shard.
RESERVED_FIELDS: frozenset[str] = frozenset(
    {"time", *POINT_TAGS, "device_error", "quality_uncertain", "quality_reason"})
#: Fields of `gateway_status` the ingester computes from a status message; its `stats`
#: may not use them.
RESERVED_STATUS_FIELDS: frozenset[str] = frozenset(
    {"time", "district", "gateway", "online", "devices_ok", "devices_fail", "agent_version", "config_hash",
     "config_version", "clock_offset_s"})
SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")
ALERT_STATES: tuple[str, ...] = ("pending", "firing", "resolved")


def is_identifier(value: object) -> bool:
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def is_metric_name(value: object) -> bool:
    return isinstance(value, str) and _METRIC_RE.fullmatch(value) is not None


def identifier_problem(value: object) -> str | None:
    """Why `value` is not a valid identifier, or None when it is."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if is_identifier(value):
        return None
    return (
        f"{value!r} is not a valid identifier: use 1-63 characters of lower-case letters, "
        "digits and '-', starting with a letter or digit"
    )


def metric_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if is_metric_name(value):
        return None
    return (
        f"{value!r} is not a valid metric name: use 1-63 characters of lower-case letters, "
        "digits and '_', starting with a letter (e.g. pressure_mpa)"
    )


def __getattr__(name: str) -> tuple[str, ...]:
    if name == "MEASUREMENTS":
        return registry.measurements()
    if name == "DOMAINS":
        return (*registry.measurements(), "system")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
