"""The one MQTT adapter, over paho-mqtt 2.x (MQTT 5), used by every component.

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

from __future__ import annotations

import contextlib
import logging
import os
import random
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlparse

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.exception import MalformedPacket, MQTTException
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

log = logging.getLogger(__name__)
#: reconnect jitter: its own generator, so that no client thread moves the global `random` state
_JITTER = random.Random()
_time_func = paho.time_func

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


class InboundMessage(paho.MQTTMessage):
    """A PUBLISH received over the lean path: a paho `MQTTMessage` (every handler and type
    hint keeps working) without what paho builds for each message and no handler reads.
    paho's constructor makes an `MQTTMessageInfo` (a Condition and a Lock, only meaningful
    for outgoing messages), the topic is decoded again on every access and the MQTT 5
    properties are parsed into a `Properties` object even when there are none. Here the
    topic is decoded once, `properties` is made on first access when the packet carried
    none, and `info` on first access."""

    __slots__ = ("_info", "_props", "topic")  # "topic" shadows paho's property (decoded per access)
    topic: str  # type: ignore[override]  # paho's setter takes bytes

    def __init__(self, topic: str, payload: bytes, qos: int, mid: int, retain: bool, dup: bool,
                 properties: Properties | None) -> None:  # no super().__init__(): see above
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.mid = mid
        self.retain = retain
        self.dup = dup
        self.timestamp = _time_func()
        self.state = paho.mqtt_ms_invalid
        self._props = properties
        self._info: paho.MQTTMessageInfo | None = None

    @property
    def properties(self) -> Properties:
        if self._props is None:
            self._props = Properties(PacketTypes.PUBLISH)
        return self._props

    @properties.setter
    def properties(self, value: Properties | None) -> None:
        self._props = value

    @property
    def info(self) -> paho.MQTTMessageInfo:
        if self._info is None:
            self._info = paho.MQTTMessageInfo(self.mid)
        return self._info

    @info.setter
    def info(self, value: paho.MQTTMessageInfo) -> None:
        self._info = value

    def __repr__(self) -> str:
        return (f"InboundMessage(topic={self.topic!r}, qos={self.qos}, mid={self.mid}, "
                f"retain={self.retain}, {len(self.payload)} bytes)")


class _Malformed(ValueError):
    """A packet from the broker that breaks MQTT 5 (the connection is dropped)."""


class _BufferedClient(paho.Client):
    """paho's client, with whole packets parsed straight out of large socket reads and a
    lean path for the PUBLISH packets we receive.

    paho reads every packet with at least four system calls (the command byte, the
    remaining length one byte at a time, then the rest), each of which also releases and
    retakes the GIL, and copies the payload four times on its way to the handler. Here
    `loop_read()` takes up to 64 KiB with one recv(), frames every complete packet in it
    (the partial one at the end waits for the next read; a packet larger than the read
    size is gathered in parts and joined once) and:

    - a QoS 0/1 PUBLISH, when `on_inbound` is set, is parsed here (topic, packet id, MQTT 5
      properties: none in the usual case, else parsed by paho's `Properties`) into an
      `InboundMessage` handed to `on_inbound`, with no MQTTMessage, callback locks or
      topic matcher of paho's; QoS 1 is acknowledged after the handler as paho does
      (`manual_ack=False`) or by `ack()` (`manual_ack=True`);
    - every other packet (CONNACK, SUBACK, UNSUBACK, PUBACK/PUBREC/PUBCOMP of our own
      publishes, PUBREL, PINGRESP, DISCONNECT, a QoS 2 PUBLISH) goes to paho's own
      handler, unchanged.

    A malformed packet is logged as an error and drops the connection (MQTT 5 4.13), as
    paho does; what was not acknowledged is redelivered on the next connection. paho's
    keep-alive bookkeeping (`_last_bytes_received`) is updated once per read."""

    _READ_SIZE = 65536
    _rbuf = b""  # bytes read and not yet framed: the start of the next packet
    _rparts: list[bytes] | None = None  # a packet larger than the read size, in parts
    _rhave = 0  # bytes in _rparts
    _rneed = 0  # the whole size of the packet _rparts gathers
    _rsock: object = None  # the socket the buffer came from (a reconnect drops it)
    on_inbound: Callable[[InboundMessage], None] | None = None

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        sock = self._sock
        if sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        if self._rsock is not sock:
            self._rbuf, self._rparts, self._rhave, self._rneed, self._rsock = b"", None, 0, 0, sock
        rc = self._read_packets(sock)
        if rc > 0:
            return self._loop_rc_handle(rc)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _read_packets(self, sock: object) -> MQTTErrorCode:
        """One recv(), then every complete packet in what has been read."""
        parts = self._rparts
        want = self._READ_SIZE if parts is None else max(self._READ_SIZE, self._rneed - self._rhave)
        try:
            data = self._sock_recv(want)
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_AGAIN
        except OSError as err:  # TimeoutError included
            self._easy_log(paho.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        if not data:
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        with self._msgtime_mutex:
            self._last_bytes_received = _time_func()
        if parts is not None:
            parts.append(data)
            self._rhave += len(data)
            if self._rhave < self._rneed:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            buf = b"".join(parts)
            self._rparts, self._rhave, self._rneed = None, 0, 0
        else:
            buf = self._rbuf + data if self._rbuf else data
        end = len(buf)
        pos = 0
        while end - pos >= 2:
            try:
                start, stop = _frame(buf, pos, end)
            except _Malformed as exc:
                return self._malformed(str(exc))
            if stop > end:
                if start and stop - pos > self._READ_SIZE:  # gather the rest in parts, join once
                    self._rparts, self._rhave, self._rneed = [buf[pos:]], end - pos, stop - pos
                    self._rbuf = b""
                    return MQTTErrorCode.MQTT_ERR_SUCCESS
                break
            header = buf[pos]
            pos = stop
            # a PUBLISH of QoS 0 or 1 (or the invalid 3, refused there); QoS 2 goes to paho
            if header & 0xF0 == 0x30 and header & 0x06 != 0x04 and self.on_inbound is not None:
                rc = self._inbound_publish(header, buf, start, stop)
            else:
                rc = self._paho_packet(header, buf[start:stop])
            if rc:
                return rc
            if self._sock is not sock:  # closed while handling (DISCONNECT, kill(), ...)
                return MQTTErrorCode.MQTT_ERR_SUCCESS
        self._rbuf = buf[pos:] if pos < end else b""
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _inbound_publish(self, header: int, buf: bytes, start: int, stop: int) -> MQTTErrorCode:
        """A QoS 0/1 PUBLISH (MQTT 5 3.3) at buf[start:stop], to `on_inbound`."""
        try:
            msg = _parse_publish(header, buf, start, stop)
        except _Malformed as exc:
            return self._malformed(str(exc))
        self.on_inbound(msg)  # type: ignore[misc]  # set: checked by the caller
        if msg.qos == 1 and not self._manual_ack:
            return self._send_puback(msg.mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _paho_packet(self, header: int, body: bytes) -> MQTTErrorCode:
        """Any other packet, to paho's own handling, as paho's _packet_read hands it."""
        self._in_packet = {"command": header, "have_remaining": 1, "remaining_count": [],
                           "remaining_mult": 1, "remaining_length": len(body),
                           "packet": bytearray(body), "to_process": 0, "pos": 0}
        try:
            return self._packet_handle()
        except MalformedPacket as exc:
            return self._malformed(f"{exc} (packet type {header >> 4})")

    def _malformed(self, what: str) -> MQTTErrorCode:
        log.error("MQTT broker at %s:%s sent a malformed packet (%s); dropping the connection "
                  "(what was not acknowledged is redelivered after the reconnect)",
                  self._host, self._port, what)
        return MQTTErrorCode.MQTT_ERR_PROTOCOL


def _frame(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Where the packet at buf[pos] has its body: (start, stop); stop > end if the packet
    is not all read yet, and (0, end + 1) if even its remaining length is not."""
    length = buf[pos + 1]
    if length < 0x80:  # one length byte
        return pos + 2, pos + 2 + length
    length &= 0x7F
    p = pos + 2
    shift = 7
    while True:
        if p >= end:
            return 0, end + 1
        byte = buf[p]
        p += 1
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            return p, p + length
        shift += 7
        if shift > 21:
            raise _Malformed("a remaining length longer than 4 bytes")


def _parse_publish(header: int, buf: bytes, start: int, stop: int) -> InboundMessage:
    """The PUBLISH packet whose variable header starts at buf[start] and which ends at
    buf[stop]: topic (UTF-8, 16-bit length), packet id (QoS > 0), MQTT 5 properties, then
    the payload."""
    qos = (header >> 1) & 3
    if qos == 3:
        raise _Malformed("PUBLISH with QoS 3")
    p = start + 2
    if p > stop:
        raise _Malformed("PUBLISH too short for its topic length")
    topic_end = p + ((buf[start] << 8) | buf[start + 1])
    if topic_end > stop:
        raise _Malformed("PUBLISH topic longer than the packet")
    try:
        topic = buf[p:topic_end].decode()
    except UnicodeDecodeError:
        raise _Malformed(f"PUBLISH topic is not UTF-8: {buf[p:topic_end]!r}") from None
    p = topic_end
    mid = 0
    if qos:
        p += 2
        if p > stop:
            raise _Malformed("PUBLISH too short for its packet id")
        mid = (buf[p - 2] << 8) | buf[p - 1]
        if not mid:
            raise _Malformed("PUBLISH with QoS 1 and packet id 0")
    if p >= stop:
        raise _Malformed("PUBLISH without its property length")
    props: Properties | None = None
    if buf[p] == 0:  # no properties: the usual case
        p += 1
    else:
        props = Properties(PacketTypes.PUBLISH)
        try:
            _, used = props.unpack(buf[p:stop])
        except KeyError as exc:
            raise _Malformed(f"PUBLISH properties: unknown property identifier {exc}") from None
        except (MQTTException, IndexError, ValueError, struct.error) as exc:
            raise _Malformed(f"PUBLISH properties: {type(exc).__name__}: {exc}") from None
        p += used
        if p > stop:
            raise _Malformed("PUBLISH properties longer than the packet")
        if hasattr(props, "TopicAlias"):
            # We never send Topic Alias Maximum, so the broker must not use aliases
            # (MQTT 5 3.1.2.11.8); Mosquitto 2.0 never does.
            raise _Malformed("PUBLISH with a topic alias, which this client does not allow")
    if not topic:
        raise _Malformed("PUBLISH without a topic")
    return InboundMessage(topic, buf[p:stop], qos, mid, bool(header & 0x01), bool(header & 0x08), props)


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
        if os.environ.get("URBANSENSE_MQTT_LEAN", "1") != "0":  # 0: paho's own PUBLISH handling
            self._client.on_inbound = self._dispatch
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
        rc, mid = self._client.subscribe(sub.topic, options=SubscribeOptions(qos=sub.qos, noLocal=sub.no_local))
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
            time.sleep(delay * _JITTER.uniform(0.5, 1.0) if delay > self._reconnect_min_s else delay)
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
            self._subs_acked.notify_all()
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
