"""Simulators: devices served over real Modbus TCP/RTU and MQTT, driven by scenarios."""
