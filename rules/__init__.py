"""Rules engine: early warnings from the telemetry stream."""
