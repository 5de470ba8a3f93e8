"""The broker as deployed: TLS only, accounts only, the deployment's ACL. Every way in
without the right CA, account or password is refused."""

from __future__ import annotations

import queue
import uuid

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from application.stack import mqtt_connack
from tests.security.conftest import SecureStack
from urbansense.mqtt import MqttClient, MqttError, MqttSettings

pytestmark = pytest.mark.integration
NOT_AUTHORIZED_311 = 5  # MQTT 3.1.1 CONNACK "not authorised"
NOT_AUTHORIZED_5 = 135  # MQTT 5 reason code 0x87


def _client(secure: SecureStack, **settings: object) -> MqttClient:
    s = MqttSettings(host="127.0.0.1", port=secure.stack.mqtt_port, tls=True,
                     ca_file=str(secure.pki.ca_file), keepalive_s=10)
    for key, value in settings.items():
        setattr(s, key, value)
    return MqttClient(s, f"sec-{uuid.uuid4().hex[:8]}", reconnect_min_s=30)


def _connects(client: MqttClient) -> bool:
    try:
        client.connect(timeout_s=1.5)  # a refusal never sets "connected": wait only briefly
    except MqttError:
        return False
    client.close()
    return True


def test_plaintext_mqtt_gets_no_answer(secure: SecureStack) -> None:
    port = secure.stack.mqtt_port
    # The only listener speaks TLS: a plaintext CONNECT gets no CONNACK at all.
    assert mqtt_connack("127.0.0.1", port) is None
    assert not _connects(_client(secure, tls=False, ca_file=None, username="ops",
                                 password=secure.mqtt_passwords["ops"]))


def test_anonymous_and_wrong_credentials_are_refused_over_tls(secure: SecureStack) -> None:
    port, ca = secure.stack.mqtt_port, secure.pki.ca_file
    assert mqtt_connack("127.0.0.1", port, tls=True, ca_file=ca) == NOT_AUTHORIZED_311
    assert not _connects(_client(secure))
    assert not _connects(_client(secure, username="ingest", password="not-the-password"))
    assert not _connects(_client(secure, username="ingest", password=secure.mqtt_passwords["rules"]))
    assert not _connects(_client(secure, username="pudong/sec-gw-c", password="whatever"))
    assert _connects(_client(secure, username="ingest", password=secure.mqtt_passwords["ingest"]))


def test_a_broker_certificate_from_another_ca_is_refused(secure: SecureStack) -> None:
    """A client that trusts only its own CA does not talk to an impostor broker (here: the
    real one, whose certificate that CA did not sign)."""
    client = _client(secure, ca_file=str(secure.pki.other_ca_file), username="ops",
                     password=secure.mqtt_passwords["ops"])
    with pytest.raises(MqttError, match=r"(?i)certificate"):
        client.connect(timeout_s=3)


def test_the_deployment_acl_is_in_force(secure: SecureStack) -> None:
    """tests/deploy proves the ACL rule by rule; here only that the hardened stack runs it:
    a gateway's publish under another gateway's prefix is refused (PUBACK 135)."""
    acks: queue.Queue[tuple[int, int]] = queue.Queue()
    gw = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"sec-{uuid.uuid4().hex[:8]}", protocol=paho.MQTTv5)
    gw.tls_set(ca_certs=str(secure.pki.ca_file))
    gw.username_pw_set("pudong/sec-gw-a", secure.mqtt_passwords["pudong/sec-gw-a"])
    gw.on_publish = lambda _c, _u, mid, rc, _p: acks.put((mid, rc.value))
    gw.connect("127.0.0.1", secure.stack.mqtt_port)
    gw.loop_start()
    try:
        own = gw.publish("city/pudong/sec-gw-a/status", b"{}", qos=1)
        mid, reason = acks.get(timeout=5)
        assert mid == own.mid and reason in (0, 16)  # accepted (16: no subscriber yet)
        other = gw.publish("city/pudong/sec-gw-b/telemetry", b"{}", qos=1)
        assert acks.get(timeout=5) == (other.mid, NOT_AUTHORIZED_5)
    finally:
        gw.disconnect()
        gw.loop_stop()
