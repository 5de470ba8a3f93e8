"""The one MQTT adapter, over paho-mqtt 2.x (MQTT 5), used by every component.

Why paho and not aiomqtt everywhere: the ingester needs manual acknowledgement
(`manual_ack=True` + `client.ack`) to acknowledge after the database write, and paho's
network thread keeps the keep-alive going while our own code blocks on I/O. aiomqtt is
itself a wrapper of paho; one adapter keeps one way of connecting, reconnecting, TLS and
credentials for all components.

Credentials and TLS come from the environment, never from config files:
    URBANSENSE_MQTT_USERNAME, URBANSENSE_MQTT_PASSWORD, URBANSENSE_MQTT_CA_FILE,
    URBANSENSE_MQTT_CERT_FILE, URBANSENSE_MQTT_KEY_FILE
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlparse

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

log = logging.getLogger(__name__)

Message = paho.MQTTMessage
MessageHandler = Callable[[paho.MQTTMessage], None]


class MqttError(RuntimeError):
    pass


@dataclass(slots=True)
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    ca_file: str | None = None
    keepalive_s: int = 30
    username: str | None = None
    password: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def from_url(cls, url: str, **overrides: object) -> MqttSettings:
        """mqtt://host:port or mqtts://host:port; credentials from the environment."""
        parsed = urlparse(url if "://" in url else f"mqtt://{url}")
        tls = parsed.scheme in ("mqtts", "ssl", "tls")
        settings = cls(host=parsed.hostname or "127.0.0.1", port=parsed.port or (8883 if tls else 1883), tls=tls)
        settings.apply_env()
        for key, value in overrides.items():
            if value is not None:
                setattr(settings, key, value)
        return settings

    def apply_env(self) -> MqttSettings:
        env = os.environ
        self.username = env.get("URBANSENSE_MQTT_USERNAME") or self.username
        self.password = env.get("URBANSENSE_MQTT_PASSWORD") or self.password
        self.ca_file = env.get("URBANSENSE_MQTT_CA_FILE") or self.ca_file
        self.cert_file = env.get("URBANSENSE_MQTT_CERT_FILE") or self.cert_file
        self.key_file = env.get("URBANSENSE_MQTT_KEY_FILE") or self.key_file
        if self.ca_file:
            self.tls = True
        return self

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass
class _Subscription:
    topic: str
    qos: int
    handler: MessageHandler
    no_local: bool = False


@dataclass
class ConnectionStats:
    connects: int = 0
    disconnects: int = 0
    last_error: str = ""
    published: int = 0
    acked: int = 0
    received: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class _BufferedClient(paho.Client):
    """paho's client, reading the socket in large chunks.

    paho reads every packet with at least four system calls (the command byte, the
    remaining length one byte at a time, then the rest), each of which also releases and
    retakes the GIL; under a stream of messages that was a tenth of the ingester's CPU.
    Here one recv() of up to 64 KiB serves many packets. loop_read() goes on while
    bytes are buffered, so the network loop never waits in select() on data it already
    holds (as paho does for TLS, whose socket may hold a record: `pending()`)."""

    _READ_SIZE = 65536
    _rbuf = b""
    _rpos = 0
    _rsock: object = None  # the socket the buffer came from (a reconnect drops it)

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rpos >= len(self._rbuf) or self._rsock is not self._sock:
            self._rbuf, self._rpos, self._rsock = b"", 0, self._sock
            data = super()._sock_recv(max(bufsize, self._READ_SIZE))
            if len(data) <= bufsize:
                return data
            self._rbuf = data
        pos = self._rpos
        self._rpos = pos + bufsize
        return self._rbuf[pos:pos + bufsize]

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        while (rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._rpos < len(self._rbuf)
               and self._rsock is self._sock and self._sock is not None):
            rc = super().loop_read(max_packets)
        return rc


class MqttClient:
    """A connected MQTT 5 client that reconnects by itself (capped back-off with jitter)
    and re-subscribes after every reconnect.

    `on_publish_ack(mid)` is called from the network thread when a QoS 1 publish is
    acknowledged by the broker (PUBACK), which is what store-and-forward needs.
    """

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        *,
        clean_start: bool = True,
        session_expiry_s: int = 0,
        will: Will | None = None,
        manual_ack: bool = False,
        on_publish_ack: Callable[[int], None] | None = None,
        on_connect: Callable[[], None] | None = None,
        on_disconnect: Callable[[str], None] | None = None,
        max_inflight: int = 1000,
        max_queued: int = 0,
        receive_maximum: int | None = None,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self.stats = ConnectionStats()
        self._subs: list[_Subscription] = []
        # topic -> the subscription that takes it, for the current self._subs (matching a
        # topic against the filters costs more than handling a small message)
        self._routes: tuple[list[_Subscription], dict[str, _Subscription | None]] = (self._subs, {})
        self._connected = threading.Event()
        self._stopping = False
        self._clean_start = clean_start
        self._session_expiry_s = session_expiry_s
        # MQTT 5 Receive Maximum: how many unacknowledged QoS 1/2 messages the broker may
        # have in flight to us. With manual_ack it bounds what a stalled consumer holds.
        self._receive_maximum = receive_maximum
        self._on_publish_ack = on_publish_ack
        self._on_connect_cb = on_connect
        self._on_disconnect_cb = on_disconnect
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._reconnect_thread: threading.Thread | None = None
        # a connection dropped before any CONNACK is logged once per failure streak
        self._warned_unanswered = False
        self._client = _BufferedClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
            manual_ack=manual_ack,
        )
        self._client.max_inflight_messages_set(max_inflight)
        self._client.max_queued_messages_set(max_queued)
        # paho's own reconnect has no jitter; we run our own loop (see _reconnect_loop).
        if settings.username:
            self._client.username_pw_set(settings.username, settings.password)
        if settings.tls:
            ctx = ssl.create_default_context(cafile=settings.ca_file)
            if settings.cert_file:
                ctx.load_cert_chain(settings.cert_file, settings.key_file)
            self._client.tls_set_context(ctx)
        if will is not None:
            self._client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message
        self._client.on_publish = self._handle_publish
        self._client.on_subscribe = self._handle_subscribe

    # ------------------------------------------------------------------ lifecycle
    def connect(self, timeout_s: float = 10.0, *, wait: bool = True) -> None:
        """Connect and start the network thread. With wait=False, a broker that is down
        is retried in the background instead of raising."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._session_expiry_s
        if self._receive_maximum:
            props.ReceiveMaximum = self._receive_maximum
        self._connect_props = props
        try:
            self._client.connect(
                self.settings.host, self.settings.port, keepalive=self.settings.keepalive_s,
                clean_start=self._clean_start, properties=props,
            )
        except OSError as exc:
            self.stats.last_error = str(exc)
            if wait:
                raise MqttError(
                    f"cannot reach MQTT broker at {self.settings.url}: {exc.strerror or exc}; "
                    "is it running? (urbansense stack status)"
                ) from None
            self._start_reconnect_loop()
            self._client.loop_start()
            return
        self._client.loop_start()
        if wait and not self._connected.wait(timeout_s):
            self.close()
            raise MqttError(
                f"MQTT broker at {self.settings.url} did not accept the connection within "
                f"{timeout_s:.0f} s ({self.stats.last_error or 'no CONNACK'})"
            )

    def close(self, *, session_expiry_s: int | None = None) -> None:
        """Disconnect cleanly. `session_expiry_s=0` ends a persistent session now (a
        client leaving for good), instead of letting the broker keep it for its return."""
        self._stopping = True
        try:
            if session_expiry_s is None:
                self._client.disconnect()
            else:
                props = Properties(PacketTypes.DISCONNECT)
                props.SessionExpiryInterval = session_expiry_s
                self._client.disconnect(properties=props)
        finally:
            self._client.loop_stop()

    def kill(self) -> None:
        """Drop the connection without DISCONNECT, so the broker publishes the last will."""
        self._stopping = True
        sock = self._client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        self._client.loop_stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    # ------------------------------------------------------------------ pub/sub
    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Queue a publish; returns its message id (PUBACK arrives via on_publish_ack)."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise MqttError(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        self.stats.published += 1
        return int(info.mid)

    def publish_tracked(self, topic: str, payload: bytes, qos: int = 1,
                        retain: bool = False) -> paho.MQTTMessageInfo:
        """Queue a publish and return paho's handle (`is_published()`, `wait_for_publish()`),
        for callers that must know this publish reached the broker before doing more."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise MqttError(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        self.stats.published += 1
        return info

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving `topic` (also after reconnects)."""
        self._subs = [sub for sub in self._subs if sub.topic != topic]
        if self.connected:
            self._client.unsubscribe(topic)

    def publish_wait(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                     timeout_s: float = 10.0) -> None:
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout_s)
        if not info.is_published():
            raise MqttError(f"publish to {topic} was not acknowledged within {timeout_s} s")

    def subscribe(self, topic: str, handler: MessageHandler, qos: int = 1, *, no_local: bool = False) -> None:
        sub = _Subscription(topic, qos, handler, no_local)
        self._subs = [*self._subs, sub]  # a new list: the routes cached for the old one lapse
        if self.connected:
            self._do_subscribe(sub)

    def ack(self, mid: int, qos: int) -> None:
        self._client.ack(mid, qos)

    def _do_subscribe(self, sub: _Subscription) -> None:
        self._client.subscribe(sub.topic, options=SubscribeOptions(qos=sub.qos, noLocal=sub.no_local))

    # ------------------------------------------------------------------ callbacks
    def _handle_connect(self, client: paho.Client, userdata: object, flags: object,
                        reason: ReasonCode, props: Properties | None) -> None:
        if reason.is_failure:
            self.stats.last_error = f"broker refused the connection: {reason}"
            log.error("MQTT %s: %s", self.settings.url, self.stats.last_error)
            return
        self.stats.connects += 1
        self._warned_unanswered = False
        for sub in self._subs:
            self._do_subscribe(sub)
        self._connected.set()
        if self._on_connect_cb:
            self._on_connect_cb()

    def _handle_disconnect(self, client: paho.Client, userdata: object, flags: object,
                           reason: ReasonCode, props: Properties | None) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if self._stopping:
            return
        self.stats.disconnects += int(was_connected)
        refused = self.stats.last_error.startswith("broker refused")  # logged by _handle_connect
        self.stats.last_error = str(reason)
        if was_connected:
            log.warning("MQTT connection to %s lost (%s); reconnecting", self.settings.url, reason)
        elif not refused and not self._warned_unanswered:
            # Without this, a plaintext client at a TLS-only listener retried silently forever.
            self._warned_unanswered = True
            hint = "" if self.settings.tls else " (a TLS listener drops plaintext clients: use mqtts://)"
            log.warning("MQTT broker at %s closed the connection without accepting it%s; retrying",
                        self.settings.url, hint)
        if self._on_disconnect_cb:
            self._on_disconnect_cb(str(reason))
        self._start_reconnect_loop()

    def _start_reconnect_loop(self) -> None:
        if self._reconnect_thread is not None and self._reconnect_thread.is_alive():
            return
        self._reconnect_thread = threading.Thread(target=self._reconnect_loop, daemon=True,
                                                  name=f"mqtt-reconnect-{self.client_id}")
        self._reconnect_thread.start()

    def _reconnect_loop(self) -> None:
        delay = self._reconnect_min_s
        while not self._stopping and not self._connected.is_set():
            time.sleep(delay * random.uniform(0.5, 1.0) if delay > self._reconnect_min_s else delay)
            if self._stopping or self._connected.is_set():
                return
            try:
                self._client.reconnect()
                if self._connected.wait(5.0):
                    return
            except OSError as exc:
                self.stats.last_error = str(exc)
            delay = min(delay * 2, self._reconnect_max_s)

    def _handle_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        self.stats.received += 1
        subs, routes = self._routes
        if subs is not self._subs:
            subs, routes = self._routes = (self._subs, {})
        topic = msg.topic
        try:
            sub = routes[topic]
        except KeyError:
            sub = next((s for s in subs if paho.topic_matches_sub(_strip_share(s.topic), topic)), None)
            if len(routes) >= _ROUTES_MAX:
                routes.clear()
            routes[topic] = sub
        if sub is not None:
            try:
                sub.handler(msg)
            except Exception:  # a handler bug must not kill the network thread
                log.exception("MQTT handler for %s failed on %s", sub.topic, topic)

    def _handle_subscribe(self, client: paho.Client, userdata: object, mid: int,
                          reasons: list[ReasonCode], props: Properties | None) -> None:
        # stats.extra["subacks"]: SUBACKs received (tests wait on it before publishing)
        self.stats.extra["subacks"] = self.stats.extra.get("subacks", 0) + 1
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            log.error("MQTT %s refused a subscription: %s", self.settings.url, ", ".join(failed))

    def _handle_publish(self, client: paho.Client, userdata: object, mid: int,
                        reason: ReasonCode, props: Properties) -> None:
        self.stats.acked += 1
        if self._on_publish_ack:
            self._on_publish_ack(mid)


_ROUTES_MAX = 65536


def _strip_share(topic: str) -> str:
    if topic.startswith("$share/"):
        return topic.split("/", 2)[2]
    return topic
