"""Edge agent: poll Modbus/MQTT devices on a field gateway and forward telemetry batches.

Public surface: :func:`run` and the CLI (`urbansense edge run | check | probe`); see
README.md. Everything else is the agent's own business.
"""

from __future__ import annotations

from pathlib import Path


def run(config: Path | str, *, mqtt_url: str | None = None, duration_s: float | None = None) -> None:
    """Run the agent for one gateway config until stopped (or for `duration_s`)."""
    import asyncio

    from edge.agent import EdgeAgent, uplink_settings
    from urbansense.config import load_gateway
    from urbansense.mqtt import MqttSettings

    gateway = load_gateway(config)
    settings = MqttSettings.from_url(mqtt_url) if mqtt_url else uplink_settings(gateway)
    asyncio.run(EdgeAgent(gateway, settings).run(duration_s))
