"""Telemetry samples -> InfluxDB line protocol (one point per good sample)."""

from __future__ import annotations

from urbansense.lineprotocol import encode_point
from urbansense.schema import GatewayStatus, TelemetryBatch


def batch_lines(batch: TelemetryBatch) -> list[str]:
    """Lines for the good and uncertain samples; bad samples carry no fields and are
    recorded as a `device_error` string field so a failing device stays visible."""
    lines = []
    for s in batch.samples:
        tags = {"district": batch.district, "gateway": batch.gw, "device": s.dev}
        if s.q == "bad":
            lines.append(encode_point(s.m, tags, {"device_error": s.err or "unknown"}, s.t))
            continue
        fields: dict[str, object] = dict(s.f)
        if s.q == "uncertain":
            fields["quality_uncertain"] = True
        lines.append(encode_point(s.m, tags, fields, s.t))
    return lines


def status_line(district: str, gateway: str, status: GatewayStatus) -> str:
    fields: dict[str, object] = {
        "online": status.state == "online",
        "devices_ok": sum(1 for v in status.devices.values() if v == "ok"),
        "devices_fail": sum(1 for v in status.devices.values() if v == "fail"),
    }
    fields.update({k: float(v) for k, v in status.stats.items()})
    return encode_point("gateway_status", {"district": district, "gateway": gateway}, fields, status.t)
