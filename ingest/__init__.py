"""Ingester: MQTT telemetry batches into InfluxDB, acknowledged only after the write."""
