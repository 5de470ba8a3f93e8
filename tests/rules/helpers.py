"""Synthetic telemetry for rule tests."""

from __future__ import annotations

from typing import Any

from rules.catalog import RULE_KINDS, Rule
from urbansense.schema import Sample, TelemetryBatch

T0 = 1_764_190_000_000  # 2025-11-26 20:46:40 UTC (04:46 in Shanghai: dark)


def rule(**raw: Any) -> Rule:
    return RULE_KINDS[raw.get("kind", "threshold")].model_validate(raw)  # type: ignore[return-value]


def batch(t: int, measurement: str, values: dict[str, dict[str, Any]], *, district: str = "pudong",
          gw: str = "gw-1", q: str = "good") -> TelemetryBatch:
    samples = [Sample(dev=dev, m=measurement, t=t, f=f, q=q) for dev, f in values.items()]
    return TelemetryBatch(gw=gw, district=district, seq=0, sent=t, samples=samples)


def series(measurement: str, dev: str, metric: str, values: list[float], *, step_s: float = 10,
           t0: int = T0) -> list[TelemetryBatch]:
    return [batch(t0 + int(i * step_s * 1000), measurement, {dev: {metric: v}}) for i, v in enumerate(values)]
