"""The lean receive path: packets framed straight out of 64 KiB socket reads, and a QoS
0/1 PUBLISH parsed into an `InboundMessage` without paho's per-message machinery (see
urbansense/mqtt/__init__.py). It subclasses paho's Client and uses some of its private
members (PAHO_INTERNALS); paho is pinned to the tested minor version, and
tests/test_mqtt_lean.py fails loudly when one of them is gone.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket, MQTTException
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger("urbansense.mqtt")
_time_func = paho.time_func

#: The private members of paho's Client the lean path uses. paho is pinned to the tested
#: minor version (pyproject.toml); tests/test_mqtt_lean.py checks every one of them is
#: still there and that paho's loop still reads through loop_read, which we override.
PAHO_INTERNALS: tuple[str, ...] = (
    "_sock", "_sock_recv", "_send_puback", "_packet_handle", "_msgtime_mutex", "_manual_ack",
    "_loop_rc_handle", "_last_bytes_received", "_in_packet", "_host", "_port", "_easy_log",
)


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
