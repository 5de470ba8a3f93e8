"""The one MQTT adapter, over paho-mqtt 2.x (MQTT 5), used by every component:
`settings.py` (broker URL, credentials, TLS), `client.py` (MqttClient), `lean.py` (the
lean receive path).

Why paho and not aiomqtt everywhere: the ingester needs manual acknowledgement
(`manual_ack=True` + `client.ack`) to acknowledge after the database write, and paho's
network thread keeps the keep-alive going while our own code blocks on I/O. aiomqtt is
itself a wrapper of paho; one adapter keeps one way of connecting, reconnecting, TLS and
credentials for all components.

The receive side is leaner than paho's (`_BufferedClient`): packets are framed straight
out of 64 KiB socket reads instead of paho's one-byte-at-a-time reads, and a QoS 0/1
PUBLISH goes to the subscription's handler as an `InboundMessage` (a paho `MQTTMessage`
with the topic decoded once and nothing built that handlers do not read) without paho's
per-message locks and topic matcher: about 3 µs of CPU per telemetry message instead of
30-40 µs (bench/bench_mqtt_receive.py). Everything else (CONNACK, SUBACK, the PUBACKs of
our own publishes, QoS 2, PINGRESP, DISCONNECT, keep-alive, reconnects, `ack()`) is
paho's own code. Handlers run in the network thread, and a handler's exception is logged,
never raised into it. A malformed packet from the broker is logged and drops the
connection; what was not acknowledged comes again after the reconnect.

Credentials and TLS come from the environment, never from config files:
    URBANSENSE_MQTT_USERNAME, URBANSENSE_MQTT_PASSWORD, URBANSENSE_MQTT_CA_FILE,
    URBANSENSE_MQTT_CERT_FILE, URBANSENSE_MQTT_KEY_FILE
URBANSENSE_MQTT_LEAN=0 hands every received PUBLISH to paho's own handling instead
(for comparison, or should the lean path ever be in doubt); the framing stays.
"""

from urbansense.mqtt.client import ConnectionStats, Message, MessageHandler, MqttClient
from urbansense.mqtt.lean import InboundMessage, _BufferedClient
from urbansense.mqtt.settings import MqttError, MqttSettings, Will

__all__ = ["ConnectionStats", "InboundMessage", "Message", "MessageHandler", "MqttClient", "MqttError",
           "MqttSettings", "Will", "_BufferedClient"]

