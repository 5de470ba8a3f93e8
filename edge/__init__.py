"""Edge agent: poll Modbus/MQTT devices on a field gateway and forward telemetry batches."""
