"""MQTT topic builders and parsers of wire contract v1."""

from __future__ import annotations

from dataclasses import dataclass

from urbansense.identifiers import DOMAINS, SEVERITIES, identifier_problem

ROOT = "city"
DEADLETTER = "city/ingest/deadletter"
ALL_TELEMETRY = "city/+/+/telemetry"
ALL_STATUS = "city/+/+/status"
SHARED_INGEST = "$share/ingest/city/+/+/telemetry"
ALL_ALERTS = "city/alerts/#"


class TopicError(ValueError):
    pass


def _check(kind: str, value: str) -> str:
    why = identifier_problem(value)
    if why:
        raise TopicError(f"{kind}: {why}")
    return value


def telemetry(district: str, gateway: str) -> str:
    return f"{ROOT}/{_check('district', district)}/{_check('gateway', gateway)}/telemetry"


def status(district: str, gateway: str) -> str:
    return f"{ROOT}/{_check('district', district)}/{_check('gateway', gateway)}/status"


def command(district: str, gateway: str) -> str:
    return f"{ROOT}/{_check('district', district)}/{_check('gateway', gateway)}/cmd"


def command_result(district: str, gateway: str) -> str:
    return command(district, gateway) + "/result"


def config(district: str, gateway: str) -> str:
    """Configurations pushed to one gateway (edge/remote_config.py)."""
    return f"{ROOT}/{_check('district', district)}/{_check('gateway', gateway)}/config"


def config_result(district: str, gateway: str) -> str:
    return config(district, gateway) + "/result"


def alert(domain: str, district: str, severity: str) -> str:
    if domain not in DOMAINS:
        raise TopicError(f"domain must be one of {', '.join(DOMAINS)}; got {domain!r}")
    if severity not in SEVERITIES:
        raise TopicError(f"severity must be one of {', '.join(SEVERITIES)}; got {severity!r}")
    return f"{ROOT}/alerts/{domain}/{_check('district', district)}/{severity}"


def district_telemetry(district: str) -> str:
    """Subscription filter for one district's telemetry (rules engine partitioning)."""
    return f"{ROOT}/{_check('district', district)}/+/telemetry"


@dataclass(frozen=True, slots=True)
class GatewayTopic:
    district: str
    gateway: str
    kind: str  # telemetry | status | cmd | cmd/result | config | config/result


@dataclass(frozen=True, slots=True)
class AlertTopic:
    domain: str
    district: str
    severity: str


def parse_gateway_topic(topic: str) -> GatewayTopic:
    parts = topic.split("/")
    if len(parts) < 4 or parts[0] != ROOT or parts[1] in ("alerts", "ingest"):
        raise TopicError(f"{topic!r} is not a gateway topic city/{{district}}/{{gateway}}/...")
    kind = "/".join(parts[3:])
    if kind not in ("telemetry", "status", "cmd", "cmd/result", "config", "config/result"):
        raise TopicError(f"{topic!r}: unknown gateway topic kind {kind!r}")
    return GatewayTopic(_check("district", parts[1]), _check("gateway", parts[2]), kind)


def parse_alert_topic(topic: str) -> AlertTopic:
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != ROOT or parts[1] != "alerts":
        raise TopicError(f"{topic!r} is not an alert topic city/alerts/{{domain}}/{{district}}/{{severity}}")
    domain, district, severity = parts[2], parts[3], parts[4]
    if domain not in DOMAINS:
        raise TopicError(f"{topic!r}: unknown domain {domain!r}")
    if severity not in SEVERITIES:
        raise TopicError(f"{topic!r}: unknown severity {severity!r}")
    return AlertTopic(domain, _check("district", district), severity)
