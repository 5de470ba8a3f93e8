"""UrbanSense shared contract: schema, codec, topics, config models, local stack, CLI.

Components (edge, ingest, rules, simulators) never import each other; they share only
this package and meet on the wire (MQTT topics, InfluxDB).
"""

__version__ = "0.1.0"
CONTRACT_VERSION = 1
