"""MqttClient: a connected MQTT 5 (or 3.1.1) client that reconnects by itself (to the next
node of a broker cluster), re-subscribes, and
hands received messages to handlers (the lean path of urbansense/mqtt/lean.py unless
URBANSENSE_MQTT_LEAN=0)."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from urbansense.mqtt.lean import _BufferedClient
from urbansense.mqtt.settings import MqttError, MqttSettings, Will

log = logging.getLogger("urbansense.mqtt")
#: reconnect jitter: its own generator, so that no client thread moves the global `random` state
_JITTER = random.Random()

Message = paho.MQTTMessage
MessageHandler = Callable[[paho.MQTTMessage], None]


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
    connect_failures: int = 0  # attempts that found no broker (connection refused, unreachable)
    extra: dict[str, int] = field(default_factory=dict)


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
        # message ids of SUBSCRIBEs sent on this connection and not yet answered (SUBACK),
        # and of SUBACKs that came before their SUBSCRIBE's id was recorded
        self._unacked_subs: set[int] = set()
        self._subacks_since_connect = 0
        self._early_subacks: set[int] = set()
        self._subs_acked = threading.Condition()
        self._stopping = False
        self._clean_start = clean_start
        self._session_expiry_s = session_expiry_s
        # MQTT 5 Receive Maximum: how many unacknowledged QoS 1/2 messages the broker may
        # have in flight to us. With manual_ack it bounds what a stalled consumer holds.
        self._receive_maximum = receive_maximum
        self._on_publish_ack = on_publish_ack
        self._on_connect_cb = on_connect
        self._on_disconnect_cb = on_disconnect
        # a connection dropped before any CONNACK is logged once per failure streak
        self._warned_unanswered = False
        self._v5 = settings.protocol == "5"
        #: the broker node in use (settings.nodes): the next one is tried when it is lost
        self._node = 0
        self._client = _BufferedClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if self._v5 else paho.MQTTv311,
            # MQTT 3.1.1 has no session expiry: a persistent session is a clean_session=False one
            clean_session=None if self._v5 else clean_start,
            manual_ack=manual_ack,
        )
        self._client.max_inflight_messages_set(max_inflight)
        self._client.max_queued_messages_set(max_queued)
        # One reconnector: paho's network thread, with capped doubling back-off. The first
        # wait is scaled per client (jitter), so a fleet that lost its broker together does
        # not come back in step. (A second loop of our own, calling reconnect() beside
        # paho's, made both wait on each other: up to 5 s after the broker returned, with
        # reconnect_max_s=1.)
        self._client.reconnect_delay_set(reconnect_min_s * _JITTER.uniform(0.5, 1.0),  # type: ignore[arg-type]
                                         max(reconnect_min_s, reconnect_max_s))  # type: ignore[arg-type]
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
        self._client.on_connect_fail = self._handle_connect_fail
        if settings.fallbacks:
            self._client.on_pre_connect = self._handle_pre_connect
        self._client.on_message = self._handle_message
        # the lean path parses MQTT 5 PUBLISH packets; 3.1.1 ones take paho's own handling
        if self._v5 and os.environ.get("URBANSENSE_MQTT_LEAN", "1") != "0":  # 0: paho's own PUBLISH handling
            self._client.on_inbound = self._dispatch
        self._client.on_publish = self._handle_publish
        self._client.on_subscribe = self._handle_subscribe

    # ------------------------------------------------------------------ lifecycle
    def connect(self, timeout_s: float = 10.0, *, wait: bool = True) -> None:
        """Connect and start the network thread. With wait=False, a broker that is down
        is retried in the background instead of raising."""
        host, port = self.settings.nodes[self._node]
        try:
            if self._v5:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = self._session_expiry_s
                if self._receive_maximum:
                    props.ReceiveMaximum = self._receive_maximum
                self._client.connect(host, port, keepalive=self.settings.keepalive_s,
                                     clean_start=self._clean_start, properties=props)
            else:
                self._client.connect(host, port, keepalive=self.settings.keepalive_s)
        except OSError as exc:
            self.stats.connect_failures += 1
            self.stats.last_error = str(exc)
            if wait:
                raise MqttError(
                    f"cannot reach MQTT broker at {self.settings.url}: {exc.strerror or exc}; "
                    "is it running? (urbansense stack status)"
                ) from None
            self._client.loop_start()  # the network thread retries
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
            if session_expiry_s is None or not self._v5:
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

    def wait_subscribed(self, timeout_s: float) -> bool:
        """Wait until connected and every subscription made so far has its SUBACK, so that
        a message published from now on reaches its handler (tests wait on this instead
        of sleeping). False on time-out."""
        deadline = time.monotonic() + timeout_s
        if not self._connected.wait(timeout_s):
            return False
        with self._subs_acked:
            return self._subs_acked.wait_for(lambda: not self._unacked_subs and self._connected.is_set(),
                                             max(0.0, deadline - time.monotonic()))

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
        # paho is called outside our lock (it may take its callback mutex, which the network
        # thread holds while it hands us a SUBACK); a SUBACK that beat us here is reconciled
        if self._v5:
            rc, mid = self._client.subscribe(sub.topic, options=SubscribeOptions(qos=sub.qos, noLocal=sub.no_local))
        else:  # no subscription options in 3.1.1: a no_local handler also sees its own messages
            rc, mid = self._client.subscribe(sub.topic, qos=sub.qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            return
        with self._subs_acked:
            if mid in self._early_subacks:
                self._early_subacks.discard(mid)
            else:
                self._unacked_subs.add(int(mid))

    # ------------------------------------------------------------------ callbacks
    def _handle_connect(self, client: paho.Client, userdata: object, flags: object,
                        reason: ReasonCode, props: Properties | None) -> None:
        if reason.is_failure:
            self.stats.last_error = f"broker refused the connection: {reason}"
            log.error("MQTT %s: %s", self.settings.url, self.stats.last_error)
            return
        self.stats.connects += 1
        self._warned_unanswered = False
        with self._subs_acked:
            self._unacked_subs.clear()  # a new connection: only its own SUBSCRIBEs count
            self._early_subacks.clear()
            self._subacks_since_connect = 0
        for sub in self._subs:
            self._do_subscribe(sub)
        self._connected.set()
        if self._on_connect_cb:
            self._on_connect_cb()

    def _handle_connect_fail(self, client: paho.Client, userdata: object) -> None:
        """paho could not open the connection (called inside its `except OSError`)."""
        self.stats.connect_failures += 1
        exc = sys.exc_info()[1]
        self.stats.last_error = str(exc) if exc is not None else "cannot connect"
        self._next_node()

    def drop(self, why: str) -> None:
        """Close the connection as if it were lost (`why` is logged): the network thread
        reconnects, to the next node of a cluster. For a node that stopped answering while
        its connection looks open (no PUBACK), which the keepalive notices only later."""
        sock = self._client.socket()
        if not isinstance(sock, socket.socket) or not self._connected.is_set():  # ssl.SSLSocket is one too
            return
        log.warning("MQTT %s: %s; dropping the connection", self.settings.url, why)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def _next_node(self) -> None:
        """A broker cluster: the next (re)connection tries the next node."""
        self._node = (self._node + 1) % len(self.settings.nodes)

    def _handle_pre_connect(self, client: paho.Client, userdata: object) -> None:
        """Every (re)connection, just before paho opens the socket: to the current node.
        (paho's `host` setter refuses while it is connecting, which is when this runs.)"""
        client._host, client._port = self.settings.nodes[self._node]

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
        self._next_node()
        # paho's network thread reconnects (reconnect_delay_set in __init__)

    def _handle_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        """paho's on_message: a QoS 2 message (QoS 0/1 come by the lean path, unless
        URBANSENSE_MQTT_LEAN=0)."""
        self._dispatch(msg)

    def _dispatch(self, msg: paho.MQTTMessage) -> None:
        """The network thread: a message to the handler of the first matching subscription."""
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
        # stats.extra["subacks"]: SUBACKs received
        self.stats.extra["subacks"] = self.stats.extra.get("subacks", 0) + 1
        with self._subs_acked:
            if mid in self._unacked_subs:
                self._unacked_subs.discard(mid)
            elif len(self._early_subacks) < 1024:
                self._early_subacks.add(mid)
            self._subacks_since_connect += 1
            # every subscription of this connection acknowledged: from now on a message
            # published reaches its handler (operators and tests read this line)
            all_in = self._subacks_since_connect == len(self._subs) and not self._unacked_subs
            self._subs_acked.notify_all()
        if all_in:
            log.info("MQTT %s: subscribed to %s", self.settings.url, ", ".join(s.topic for s in self._subs))
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
