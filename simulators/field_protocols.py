"""Simulated stations and terminals that speak the field protocols to the edge agent's
servers: an HJ 212-2017 station (air or water quality) and a JT/T 808 vehicle terminal.
Both connect over TCP to their gateway link's host and port, like the real ones.

- The station asks for a data answer (Flag bit 0) and keeps every packet until its 9014
  comes: what was not answered when the connection drops is sent again after the
  reconnect (the edge stores it once: same time, same point). It answers the platform's
  time setting (1012) with 9011 and 9012 and takes the time.
- The terminal registers once, authenticates on every connection, reports each position
  (0x0200), and what it could not send (the connection down, or a coverage gap) it
  uploads as a blind-area backfill (0x0704, type 1), split into sub-packages when long.
  Reports not answered by 0x8001 when the connection drops go into the backfill too.

Each keeps `record`: (time, values) of every reading the server acknowledged, the
simulator's ground truth for end-to-end tests. Blocking sockets with short time-outs:
one runner thread serves them all, and a refused connection costs nothing on loopback.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from urbansense import hj212, jt808
from urbansense.config import Profile

log = logging.getLogger("urbansense.sim")

#: Readings a device keeps while it cannot send (a real datalogger's memory).
HOLD_LIMIT = 20_000


@dataclass
class StreamClient:
    host: str
    port: int
    connect_timeout_s: float = 0.5
    retry_s: float = 2.0
    #: A message not answered this long means the connection is dead: drop it, send again
    #: (the standards' reply time-out and retransmission).
    answer_timeout_s: float = 10.0
    sock: socket.socket | None = None
    next_try: float = 0.0
    connects: int = 0
    _inbox: bytearray = field(default_factory=bytearray)

    def connected(self) -> bool:
        if self.sock is not None:
            return True
        if time.monotonic() < self.next_try:
            return False
        try:
            self.sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
            self.sock.settimeout(self.connect_timeout_s)
        except OSError:
            self.sock = None
            self.next_try = time.monotonic() + self.retry_s
            return False
        self.connects += 1
        try:
            self.on_connect()
        except OSError:
            self.drop()
            return False
        return self.sock is not None

    def on_connect(self) -> None:
        """Handshake after a connect (the terminal's registration)."""

    def drop(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.sock = None
        self.next_try = time.monotonic() + self.retry_s
        self.on_drop()

    def on_drop(self) -> None:
        """What was sent but not answered goes back to be sent again."""

    def send(self, data: bytes) -> bool:
        if not self.connected():
            return False
        assert self.sock is not None
        try:
            self.sock.sendall(data)
        except OSError:
            self.drop()
            return False
        return True

    def receive(self, wait_s: float = 0.0) -> bytes:
        """What the server sent so far (waiting up to wait_s for the first bytes)."""
        if self.sock is None:
            return b""
        out = bytearray()
        try:
            self.sock.settimeout(wait_s if wait_s > 0 else 0.0)
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    self.drop()
                    break
                out += chunk
                self.sock.settimeout(0.0)
        except (BlockingIOError, TimeoutError):
            pass
        except OSError:
            self.drop()
        if self.sock is not None:
            self.sock.settimeout(self.connect_timeout_s)
        return bytes(out)

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None


# ---------------------------------------------------------------------------- HJ 212
def hj212_values(profile: Profile, values: Mapping[str, object]) -> dict[str, float | int | bool]:
    """A reading's values by the profile's HJ 212 codes (fields without a code are not sent)."""
    out: dict[str, float | int | bool] = {}
    for spec in profile.fields:
        if spec.hj212 and "-" not in spec.hj212 and spec.name in values:
            value = values[spec.name]
            if isinstance(value, bool | int | float):
                out[spec.hj212] = value
    return out


@dataclass
class Hj212Station(StreamClient):
    mn: str = ""
    pw: str = ""
    st: str = "22"
    profile: Profile | None = None
    #: Packets not yet sent, and packets sent awaiting their 9014, by QN.
    held: deque[tuple[str, bytes, int, dict[str, float | int | bool]]] = field(default_factory=deque)
    pending: dict[str, tuple[bytes, int, dict[str, float | int | bool]]] = field(default_factory=dict)
    #: When each pending packet was sent (monotonic), oldest first.
    sent_at: dict[str, float] = field(default_factory=dict)
    record: list[tuple[int, dict[str, float | int | bool]]] = field(default_factory=list)
    clock_offset_ms: int = 0
    answers: dict[str, int] = field(default_factory=dict)
    _last_qn: int = 0
    _reader: hj212.FrameReader = field(default_factory=hj212.FrameReader)

    def report(self, t_ms: int, values: Mapping[str, object], *, kind: str = "realtime") -> None:
        """Queue one reading (model values by field name) and send what can be sent."""
        assert self.profile is not None
        coded = hj212_values(self.profile, values)
        if not coded:
            return
        t_s = (t_ms + self.clock_offset_ms) // 1000 * 1000
        qn_ms = max(t_ms + self.clock_offset_ms, self._last_qn + 1)
        self._last_qn = qn_ms
        pkt = hj212.data_packet(mn=self.mn, pw=self.pw, st=self.st, t_ms=t_s, values=coded, kind=kind,
                                answer=True, qn_ms=qn_ms)
        wire = b"".join(p.encode() for p in hj212.split(pkt))
        self.held.append((pkt.qn, wire, t_s, coded))
        while len(self.held) > HOLD_LIMIT:
            self.held.popleft()
        self.flush()

    def garbage(self, t_ms: int) -> None:
        """A packet whose CRC is wrong (a station with a failing serial-to-network module)."""
        pkt = hj212.data_packet(mn=self.mn, pw=self.pw, st=self.st, t_ms=t_ms, values={"a34004": 1}).encode()
        self.send(pkt[:-6] + b"0000" + pkt[-2:])

    def flush(self) -> None:
        while self.held and self.connected():
            qn, wire, t_s, coded = self.held[0]
            if not self.send(wire):
                break
            self.held.popleft()
            self.pending[qn] = (wire, t_s, coded)
            self.sent_at[qn] = time.monotonic()
        self.read_answers()
        if self.sent_at and time.monotonic() - next(iter(self.sent_at.values())) > self.answer_timeout_s:
            log.info("station %s: no answer for %.0f s; reconnecting to send again", self.mn, self.answer_timeout_s)
            self.drop()

    def read_answers(self, wait_s: float = 0.0) -> None:
        data = self.receive(wait_s)
        if not data:
            return
        for item in self._reader.feed(data):
            if isinstance(item, hj212.Hj212Error):
                continue
            try:
                pkt = hj212.decode(item)
            except hj212.Hj212Error:
                continue
            self.answers[pkt.cn] = self.answers.get(pkt.cn, 0) + 1
            if pkt.cn == hj212.CN_DATA_ANSWER:
                self.sent_at.pop(pkt.qn, None)
                done = self.pending.pop(pkt.qn, None)
                if done is not None:
                    self.record.append((done[1], done[2]))
            elif pkt.cn == hj212.CN_SET_TIME:
                self.set_time(pkt)

    def set_time(self, pkt: hj212.Packet) -> None:
        plain, _ = pkt.params()
        replies = [hj212.answer(pkt, hj212.CN_REQUEST_ANSWER, "QnRtn=1", st=self.st).encode()]
        try:
            hj212.parse_time(plain.get("SystemTime", ""))
        except hj212.Hj212Error:
            replies.append(hj212.answer(pkt, hj212.CN_EXECUTION_RESULT, "ExeRtn=3", st=self.st).encode())
        else:
            # the station's clock now reads the platform's (the simulated time the edge shares)
            self.clock_offset_ms = 0
            replies.append(hj212.answer(pkt, hj212.CN_EXECUTION_RESULT, "ExeRtn=1", st=self.st).encode())
        self.send(b"".join(replies))

    def on_drop(self) -> None:
        # sent but never answered: send again, oldest first, ahead of what waits
        again = [(qn, wire, t_s, coded) for qn, (wire, t_s, coded) in self.pending.items()]
        self.pending.clear()
        self.sent_at.clear()
        self.held.extendleft(reversed(again))

    @property
    def unconfirmed(self) -> int:
        return len(self.held) + len(self.pending)


# ---------------------------------------------------------------------------- JT/T 808
def location(profile: Profile, t_ms: int, values: Mapping[str, object]) -> jt808.Location:
    """A reading as a location report, by the profile's `jt808:` items."""
    loc = jt808.Location(t_ms=t_ms // 1000 * 1000, lat=0.0, lon=0.0)
    for spec in profile.fields:
        item = spec.jt808
        if item is None or spec.name not in values:
            continue
        value = values[spec.name]
        if not isinstance(value, bool | int | float):
            continue
        if item in ("lat", "lon"):
            setattr(loc, item, round(float(value), 6))
        elif item == "speed_kmh":
            loc.speed_kmh = round(max(0.0, float(value)), 1)
        elif item == "heading_deg":
            loc.heading_deg = round(float(value)) % 360
        elif item == "altitude_m":
            loc.altitude_m = max(0, round(float(value)))
        elif item.startswith("alarm.") and value:
            loc.alarms |= 1 << jt808.ALARM_BITS[item[6:]]
        elif item.startswith("status.") and value:
            loc.status |= 1 << jt808.STATUS_BITS[item[7:]]
        elif item in {name for name, _f, _s in jt808.EXTRA_ITEMS.values()}:
            loc.extras[item] = float(value)
    return loc


def location_values(profile: Profile, loc: jt808.Location) -> dict[str, float | int | bool]:
    """What the edge reads back from a report, by field name (the record)."""
    items = loc.items()
    return {spec.name: items[spec.jt808] for spec in profile.fields if spec.jt808 in items}


#: Reports per batch upload (0x0704).
BATCH_SIZE = 60


@dataclass
class Jt808Terminal(StreamClient):
    phone: str = ""
    version: int | None = None
    profile: Profile | None = None
    plate: str = ""
    auth_code: str | None = None
    serial: int = 0
    held: deque[tuple[int, bytes]] = field(default_factory=deque)
    #: Sent and not yet answered: serial -> (first serial, [(time, body)...]) per message.
    pending: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)
    sent_at: dict[int, float] = field(default_factory=dict)
    record: list[tuple[int, dict[str, float | int | bool]]] = field(default_factory=list)
    registrations: int = 0
    _reader: jt808.FrameReader = field(default_factory=jt808.FrameReader)

    def next_serial(self, n: int = 1) -> int:
        first = self.serial
        self.serial = (self.serial + n) & 0xFFFF
        return first

    def message(self, msg_id: int, body: bytes) -> list[jt808.Message]:
        msg = jt808.Message(msg_id, self.phone, 0, body, self.version)
        parts = jt808.subpackages(msg)
        first = self.next_serial(len(parts))
        for i, p in enumerate(parts):
            p.serial = (first + i) & 0xFFFF
        return parts

    def exchange(self, msg_id: int, body: bytes, want: int) -> jt808.Message | None:
        """Send a message and wait (briefly) for the answer of id `want`."""
        (msg,) = self.message(msg_id, body)
        if self.sock is None:
            return None
        self.sock.sendall(jt808.encode(msg))
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and self.sock is not None:
            for frame in self._reader.feed(self.receive(0.2)):
                if isinstance(frame, bytes):
                    try:
                        answer = jt808.decode(frame)
                    except jt808.Jt808Error:
                        continue
                    if answer.msg_id == want:
                        return answer
                    self._answer(answer)
        return None

    def on_connect(self) -> None:
        for _ in range(2):
            if self.auth_code is None:
                registration = jt808.register_body(plate=self.plate, terminal_id=self.phone[-7:],
                                                   version=self.version)
                answer = self.exchange(jt808.REGISTER, registration, jt808.REGISTER_REPLY)
                if answer is None:
                    self.drop()
                    return
                _serial, result, code = jt808.decode_register_reply(answer.body)
                if result != jt808.REG_OK:
                    log.warning("terminal %s: registration refused (%s)", self.phone,
                                jt808.REGISTER_RESULTS.get(result, result))
                    self.drop()
                    return
                self.registrations += 1
                self.auth_code = code
            answer = self.exchange(jt808.AUTHENTICATE, jt808.auth_body(self.auth_code, self.version,
                                                                       imei="86" + self.phone.zfill(13)[-13:],
                                                                       software="sim-1"), jt808.PLATFORM_REPLY)
            if answer is None:
                self.drop()
                return
            if jt808.decode_reply(answer.body)[2] == jt808.OK:
                return
            self.auth_code = None  # the platform forgot us (a new key): register again
        self.drop()

    def report(self, t_ms: int, values: Mapping[str, object]) -> None:
        assert self.profile is not None
        loc = location(self.profile, t_ms, values)
        body = jt808.encode_location(loc)
        if self.held or not self.connected():
            self.held.append((loc.t_ms, body))
            while len(self.held) > HOLD_LIMIT:
                self.held.popleft()
            self.flush()
            return
        self._send(jt808.LOCATION, body, [(loc.t_ms, body)])
        self.flush()

    def backfill(self, held: Sequence[tuple[int, Mapping[str, object]]]) -> None:
        """Reports held through a coverage gap, to upload as blind-area backfill."""
        assert self.profile is not None
        for t_ms, values in held:
            loc = location(self.profile, t_ms, values)
            self.held.append((loc.t_ms, jt808.encode_location(loc)))
        self.flush()

    def garbage(self) -> None:
        """A frame whose check code is wrong."""
        (msg,) = self.message(jt808.HEARTBEAT, b"")
        wire = bytearray(jt808.encode(msg))
        wire[-2] ^= 0x55 if wire[-2] not in (0x7E ^ 0x55, 0x7D ^ 0x55) else 0x11
        self.send(bytes(wire))

    def _send(self, msg_id: int, body: bytes, reports: list[tuple[int, bytes]]) -> bool:
        parts = self.message(msg_id, body)
        if not self.send(b"".join(jt808.encode(p) for p in parts)):
            self.held.extendleft(reversed(reports))
            return False
        # answered when the last sub-package's reply comes
        self.pending[parts[-1].serial] = reports
        self.sent_at[parts[-1].serial] = time.monotonic()
        return True

    def flush(self) -> None:
        while self.held and self.connected():
            batch = [self.held.popleft() for _ in range(min(BATCH_SIZE, len(self.held)))]
            if not self._send(jt808.BATCH_LOCATION, jt808.encode_batch([b for _t, b in batch]), batch):
                break
        self.read_answers()
        if self.sent_at and time.monotonic() - next(iter(self.sent_at.values())) > self.answer_timeout_s:
            log.info("terminal %s: no answer for %.0f s; reconnecting to send again", self.phone,
                     self.answer_timeout_s)
            self.drop()

    def read_answers(self, wait_s: float = 0.0) -> None:
        for frame in self._reader.feed(self.receive(wait_s)):
            if isinstance(frame, bytes):
                try:
                    self._answer(jt808.decode(frame))
                except jt808.Jt808Error:
                    continue

    def _answer(self, msg: jt808.Message) -> None:
        if msg.msg_id != jt808.PLATFORM_REPLY:
            return
        serial, _mid, result = jt808.decode_reply(msg.body)
        self.sent_at.pop(serial, None)
        reports = self.pending.pop(serial, None)
        if reports is None:
            return
        if result != jt808.OK:
            self.held.extendleft(reversed(reports))
            return
        assert self.profile is not None
        for t_ms, body in reports:
            self.record.append((t_ms, location_values(self.profile, jt808.decode_location(body))))

    def on_drop(self) -> None:
        for serial in sorted(self.pending, reverse=True):  # oldest ends up first
            self.held.extendleft(reversed(self.pending[serial]))
        self.pending.clear()
        self.sent_at.clear()

    @property
    def unconfirmed(self) -> int:
        return len(self.held) + sum(len(r) for r in self.pending.values())
