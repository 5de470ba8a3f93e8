"""JT/T 808-2013/2019 codec: what vehicle terminals send over TCP, shared by the edge agent
(decode, answers), the simulators (encode) and `edge probe`.

A message on the wire is 0x7E + escaped(header + body + check code) + 0x7E; inside,
0x7E is sent as 0x7D 0x02 and 0x7D as 0x7D 0x01, and the check code is the XOR of the
header and body bytes. The header is big-endian: message id (WORD), attributes (WORD:
body length in bits 0-9, encryption bits 10-12, bit 13 sub-package, bit 14 the 2019
version flag), [2019: protocol version BYTE], the terminal's phone number in BCD (6
bytes, 10 in 2019), the message serial (WORD), [when sub-packaged: package count and
index, WORD each].

Location report (0x0200) body: alarm flags DWORD, status DWORD, latitude and longitude
DWORD in 1e-6 degrees (status bits 2 and 3 give south and west), altitude WORD (m), speed
WORD (0.1 km/h), direction WORD (0-359), time BCD[6] YYMMDDhhmmss (GMT+8), then
additional items (id BYTE, length BYTE, value).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

# ---------------------------------------------------------------------------- ids
TERMINAL_REPLY = 0x0001
HEARTBEAT = 0x0002
REGISTER = 0x0100
DEREGISTER = 0x0003
AUTHENTICATE = 0x0102
LOCATION = 0x0200
BATCH_LOCATION = 0x0704
PLATFORM_REPLY = 0x8001
REGISTER_REPLY = 0x8100
MESSAGE_NAMES: dict[int, str] = {
    TERMINAL_REPLY: "terminal general reply", HEARTBEAT: "heartbeat", DEREGISTER: "deregistration",
    REGISTER: "registration", AUTHENTICATE: "authentication", LOCATION: "location report",
    BATCH_LOCATION: "batch location upload", PLATFORM_REPLY: "platform general reply",
    REGISTER_REPLY: "registration reply",
}
#: 0x8001 results.
OK, FAILED, BAD_MESSAGE, UNSUPPORTED, ALARM_CONFIRMED = 0, 1, 2, 3, 4
REPLY_RESULTS = {OK: "success", FAILED: "failure", BAD_MESSAGE: "message error", UNSUPPORTED: "not supported",
                 ALARM_CONFIRMED: "alarm confirmed"}
#: 0x8100 results.
REG_OK, REG_VEHICLE_TAKEN, REG_NO_VEHICLE, REG_TERMINAL_TAKEN, REG_NO_TERMINAL = 0, 1, 2, 3, 4
REGISTER_RESULTS = {REG_OK: "success", REG_VEHICLE_TAKEN: "vehicle already registered",
                    REG_NO_VEHICLE: "no such vehicle", REG_TERMINAL_TAKEN: "terminal already registered",
                    REG_NO_TERMINAL: "no such terminal"}

#: Alarm flag bits (DWORD) by name, as the location dict names them ("alarm.<name>").
ALARM_BITS: dict[str, int] = {
    "emergency": 0, "overspeed": 1, "fatigue": 2, "danger_warning": 3, "gnss_fault": 4,
    "gnss_antenna_open": 5, "gnss_antenna_short": 6, "power_low": 7, "power_off": 8, "display_fault": 9,
    "tts_fault": 10, "camera_fault": 11, "ic_card_fault": 12, "overspeed_warning": 13, "fatigue_warning": 14,
    "driving_overtime_today": 18, "parking_overtime": 19, "area_in_out": 20, "route_in_out": 21,
    "route_time": 22, "route_deviation": 23, "vss_fault": 24, "fuel_abnormal": 25, "stolen": 26,
    "illegal_ignition": 27, "illegal_displacement": 28, "collision_warning": 29, "rollover_warning": 30,
    "illegal_door_open": 31,
}
#: Status bits (DWORD) by name ("status.<name>"); bits 2 and 3 are the signs of lat/lon.
STATUS_BITS: dict[str, int] = {
    "acc": 0, "located": 1, "south": 2, "west": 3, "out_of_service": 4, "encrypted": 5, "loaded": 9,
    "fuel_cut": 10, "circuit_cut": 11, "doors_locked": 12, "gps": 18, "beidou": 19, "glonass": 20,
    "galileo": 21,
}
#: Additional items of a location report: id -> (name, struct format, scale).
EXTRA_ITEMS: dict[int, tuple[str, str, float]] = {
    0x01: ("mileage_km", ">I", 0.1),
    0x02: ("fuel_l", ">H", 0.1),
    0x03: ("tacho_speed_kmh", ">H", 0.1),
    0x30: ("signal", ">B", 1.0),
    0x31: ("satellites", ">B", 1.0),
}
#: Every name a profile field may map with `jt808:`.
ITEMS: frozenset[str] = frozenset(
    ["lat", "lon", "altitude_m", "speed_kmh", "heading_deg"]
    + [f"alarm.{n}" for n in ALARM_BITS] + [f"status.{n}" for n in STATUS_BITS]
    + [name for name, _f, _s in EXTRA_ITEMS.values()])
BODY_MAX = 1023
_PLAIN = frozenset(["lat", "lon", "altitude_m", "speed_kmh", "heading_deg"])
CHINA = dt.timezone(dt.timedelta(hours=8))


class Jt808Error(ValueError):
    """A frame or body that cannot be read; str() says what is wrong with it."""


# ---------------------------------------------------------------------------- framing
def escape(data: bytes) -> bytes:
    return data.replace(b"\x7d", b"\x7d\x01").replace(b"\x7e", b"\x7d\x02")


def unescape(data: bytes) -> bytes:
    if 0x7D not in data:
        return bytes(data)
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        if b == 0x7D:
            if i + 1 >= n or data[i + 1] not in (1, 2):
                raise Jt808Error(f"escape byte 0x7D at {i} is not followed by 0x01 or 0x02")
            out.append(0x7D if data[i + 1] == 1 else 0x7E)
            i += 2
        else:
            out.append(b)
            i += 1
    return bytes(out)


def check_code(data: bytes) -> int:
    """XOR of every byte, folded in halves on one integer (log2(n) steps, not n)."""
    x = int.from_bytes(data, "little")
    width = len(data)
    while width > 1:
        half = (width + 1) // 2
        x = (x & ((1 << (8 * half)) - 1)) ^ (x >> (8 * half))
        width = half
    return x


def bcd(digits: str, n: int) -> bytes:
    digits = digits.rjust(2 * n, "0")
    if len(digits) > 2 * n or not digits.isdigit():
        raise Jt808Error(f"{digits!r} does not fit BCD[{n}]")
    return bytes.fromhex(digits)


def from_bcd(data: bytes) -> str:
    text = data.hex()
    if not text.isdigit():
        raise Jt808Error(f"BCD field {text} holds a digit above 9")
    return text


@dataclass
class Message:
    msg_id: int
    phone: str
    serial: int
    body: bytes
    #: None: a 2013 header; else the 2019 protocol version byte.
    version: int | None = None
    encryption: int = 0
    #: (package count, index from 1) when the message is one sub-package of a long one.
    package: tuple[int, int] | None = None

    @property
    def name(self) -> str:
        return MESSAGE_NAMES.get(self.msg_id, f"message 0x{self.msg_id:04X}")

    @property
    def terminal(self) -> str:
        """The phone number without its leading zeros (how configs name a terminal)."""
        return self.phone.lstrip("0") or "0"


def encode(msg: Message) -> bytes:
    """A message as a frame on the wire (bodies over 1023 bytes: see `subpackages`)."""
    if len(msg.body) > BODY_MAX:
        raise Jt808Error(f"body of {len(msg.body)} bytes: at most {BODY_MAX} per message; use subpackages()")
    attrs = len(msg.body) | (msg.encryption & 7) << 10
    if msg.package is not None:
        attrs |= 1 << 13
    head = struct.pack(">HH", msg.msg_id, attrs)
    if msg.version is not None:
        attrs |= 1 << 14
        head = struct.pack(">HHB", msg.msg_id, attrs, msg.version) + bcd(msg.phone, 10)
    else:
        head += bcd(msg.phone, 6)
    head += struct.pack(">H", msg.serial & 0xFFFF)
    if msg.package is not None:
        head += struct.pack(">HH", *msg.package)
    raw = head + msg.body
    return b"\x7e" + escape(raw + bytes([check_code(raw)])) + b"\x7e"


def subpackages(msg: Message, size: int = BODY_MAX) -> list[Message]:
    """A long message as sub-packages with consecutive serials (the first one's serial is msg.serial)."""
    if len(msg.body) <= size:
        return [msg]
    chunks = [msg.body[i:i + size] for i in range(0, len(msg.body), size)]
    return [Message(msg.msg_id, msg.phone, (msg.serial + i) & 0xFFFF, chunk, msg.version, msg.encryption,
                    (len(chunks), i + 1)) for i, chunk in enumerate(chunks)]


def decode(frame: bytes, *, verify: bool = True) -> Message:
    """One frame (with or without its 0x7E delimiters) as a Message (verify=False reads
    one whose check code is wrong, for edge probe)."""
    if frame[:1] == b"\x7e":
        frame = frame[1:]
    if frame[-1:] == b"\x7e":
        frame = frame[:-1]
    raw = unescape(frame)
    if len(raw) < 13:
        raise Jt808Error(f"{len(raw)} bytes: shorter than the smallest header and check code")
    data, check = raw[:-1], raw[-1]
    if verify and check_code(data) != check:
        raise Jt808Error(f"bad check code: the frame says 0x{check:02X}, its bytes give 0x{check_code(data):02X}")
    msg_id, attrs = struct.unpack_from(">HH", data)
    length = attrs & 0x3FF
    version: int | None = None
    if attrs & (1 << 14):
        if len(data) < 17:
            raise Jt808Error("a 2019 header needs 17 bytes")
        version, phone, pos = data[4], from_bcd(data[5:15]), 15
    else:
        phone, pos = from_bcd(data[4:10]), 10
    (serial,) = struct.unpack_from(">H", data, pos)
    pos += 2
    package: tuple[int, int] | None = None
    if attrs & (1 << 13):
        if len(data) < pos + 4:
            raise Jt808Error("sub-package flag set but no package count and index")
        total, index = struct.unpack_from(">HH", data, pos)
        if not 1 <= index <= total:
            raise Jt808Error(f"package index {index} of {total}")
        package = (total, index)
        pos += 4
    body = data[pos:]
    if len(body) != length:
        raise Jt808Error(f"header says a body of {length} bytes, the frame holds {len(body)}")
    return Message(msg_id, phone, serial, body, version, (attrs >> 10) & 7, package)


class FrameReader:
    """Cuts a TCP byte stream into frames (bytes between 0x7E delimiters); garbage before
    a frame and over-long frames come out as Jt808Error."""

    def __init__(self, max_frame: int = 2 * (BODY_MAX + 30)) -> None:
        self.buf = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes) -> list[bytes | Jt808Error]:
        self.buf += data
        out: list[bytes | Jt808Error] = []
        while True:
            start = self.buf.find(0x7E)
            if start < 0:
                if self.buf:
                    out.append(Jt808Error(f"{len(self.buf)} byte(s) outside any frame skipped"))
                    self.buf.clear()
                return out
            if start > 0:
                out.append(Jt808Error(f"{start} byte(s) before 0x7E skipped"))
                del self.buf[:start]
            end = self.buf.find(0x7E, 1)
            if end < 0:
                if len(self.buf) > self.max_frame:
                    out.append(Jt808Error(f"no closing 0x7E in {len(self.buf)} bytes: frame dropped"))
                    self.buf.clear()
                return out
            if end == 1:  # two delimiters in a row: the second opens the next frame
                del self.buf[:1]
                continue
            out.append(bytes(self.buf[1:end]))
            del self.buf[:end + 1]


class Reassembler:
    """Joins sub-packages back into one message (per terminal, message id and first
    serial); keeps at most `limit` unfinished ones."""

    def __init__(self, limit: int = 64) -> None:
        self.pending: dict[tuple[str, int, int, int], dict[int, bytes]] = {}
        self.limit = limit

    def add(self, msg: Message) -> Message | None:
        if msg.package is None:
            return msg
        total, index = msg.package
        first = (msg.serial - index + 1) & 0xFFFF
        key = (msg.phone, msg.msg_id, first, total)
        parts = self.pending.setdefault(key, {})
        parts[index] = msg.body
        if len(parts) < total:
            if len(self.pending) > self.limit:
                self.pending.pop(next(iter(self.pending)))
            return None
        del self.pending[key]
        body = b"".join(parts[i] for i in range(1, total + 1))
        return Message(msg.msg_id, msg.phone, first, body, msg.version, msg.encryption)


# ---------------------------------------------------------------------------- bodies
def bcd_time(t_ms: int) -> bytes:
    t = dt.datetime.fromtimestamp(t_ms / 1000, CHINA)
    if not 2000 <= t.year <= 2099:
        raise Jt808Error(f"{t.isoformat()}: a BCD time holds the years 2000-2099 only")
    return bytes.fromhex(t.strftime("%y%m%d%H%M%S"))


def parse_bcd_time(data: bytes) -> int:
    text = from_bcd(data)
    try:
        t = dt.datetime(2000 + int(text[0:2]), int(text[2:4]), int(text[4:6]), int(text[6:8]), int(text[8:10]),
                        int(text[10:12]), tzinfo=CHINA)
    except ValueError as exc:
        raise Jt808Error(f"time {text}: {exc}") from None
    return int(t.timestamp() * 1000)


@dataclass
class Location:
    t_ms: int
    lat: float
    lon: float
    speed_kmh: float = 0.0
    heading_deg: int = 0
    altitude_m: int = 0
    alarms: int = 0
    status: int = 0
    extras: dict[str, float] = field(default_factory=dict)
    #: Additional items this codec does not name: id -> raw bytes.
    unknown: dict[int, bytes] = field(default_factory=dict)

    def item(self, name: str) -> float | int | bool | None:
        """One item a profile field can map (`jt808:` names); None if the report has none."""
        if name in _PLAIN:
            return getattr(self, name)
        kind, _, bit_name = name.partition(".")
        if kind == "alarm":
            return bool(self.alarms >> ALARM_BITS[bit_name] & 1)
        if kind == "status":
            return bool(self.status >> STATUS_BITS[bit_name] & 1)
        return self.extras.get(name)

    def items(self) -> dict[str, float | int | bool]:
        """Everything a profile field can map (`jt808:` names), by name."""
        out: dict[str, float | int | bool] = {
            "lat": self.lat, "lon": self.lon, "altitude_m": self.altitude_m, "speed_kmh": self.speed_kmh,
            "heading_deg": self.heading_deg}
        for name, bit in ALARM_BITS.items():
            out[f"alarm.{name}"] = bool(self.alarms >> bit & 1)
        for name, bit in STATUS_BITS.items():
            out[f"status.{name}"] = bool(self.status >> bit & 1)
        out.update(self.extras)
        return out


def flags(names: Mapping[str, bool], bits: Mapping[str, int]) -> int:
    return sum(1 << bits[n] for n, on in names.items() if on)


def encode_location(loc: Location) -> bytes:
    status = loc.status & ~((1 << STATUS_BITS["south"]) | (1 << STATUS_BITS["west"]))
    status |= (1 << STATUS_BITS["south"]) if loc.lat < 0 else 0
    status |= (1 << STATUS_BITS["west"]) if loc.lon < 0 else 0
    body = struct.pack(">IIIIHHH", loc.alarms, status, round(abs(loc.lat) * 1e6), round(abs(loc.lon) * 1e6),
                       loc.altitude_m & 0xFFFF, round(loc.speed_kmh * 10) & 0xFFFF, loc.heading_deg % 360)
    body += bcd_time(loc.t_ms)
    for item_id, (name, fmt, scale) in EXTRA_ITEMS.items():
        if name in loc.extras:
            value = struct.pack(fmt, round(loc.extras[name] / scale))
            body += bytes([item_id, len(value)]) + value
    return body


def decode_location(body: bytes) -> Location:
    if len(body) < 28:
        raise Jt808Error(f"a location report body has at least 28 bytes, got {len(body)}")
    alarms, status, lat, lon, alt, speed, heading = struct.unpack_from(">IIIIHHH", body)
    loc = Location(t_ms=parse_bcd_time(body[22:28]),
                   lat=(-1 if status >> STATUS_BITS["south"] & 1 else 1) * lat / 1e6,
                   lon=(-1 if status >> STATUS_BITS["west"] & 1 else 1) * lon / 1e6,
                   speed_kmh=speed / 10, heading_deg=heading, altitude_m=alt, alarms=alarms, status=status)
    pos = 28
    while pos < len(body):
        if pos + 2 > len(body):
            raise Jt808Error(f"additional item at byte {pos} is cut short")
        item_id, n = body[pos], body[pos + 1]
        value = body[pos + 2:pos + 2 + n]
        if len(value) != n:
            raise Jt808Error(f"additional item 0x{item_id:02X} says {n} bytes, {len(value)} remain")
        known = EXTRA_ITEMS.get(item_id)
        if known is not None and struct.calcsize(known[1]) == n:
            name, fmt, scale = known
            loc.extras[name] = round(struct.unpack(fmt, value)[0] * scale, 6)
        else:
            loc.unknown[item_id] = value
        pos += 2 + n
    return loc


#: 0x0704 type: 0 normal batch, 1 blind-area (coverage gap) backfill.
BATCH_NORMAL, BATCH_BACKFILL = 0, 1


def encode_batch(bodies: list[bytes], kind: int = BATCH_BACKFILL) -> bytes:
    out = struct.pack(">HB", len(bodies), kind)
    for b in bodies:
        out += struct.pack(">H", len(b)) + b
    return out


def decode_batch(body: bytes) -> tuple[int, list[bytes]]:
    if len(body) < 3:
        raise Jt808Error("a batch upload body starts with count WORD and type BYTE")
    count, kind = struct.unpack_from(">HB", body)
    pos, out = 3, []
    for i in range(count):
        if pos + 2 > len(body):
            raise Jt808Error(f"batch says {count} reports, the body ends after {i}")
        (n,) = struct.unpack_from(">H", body, pos)
        item = body[pos + 2:pos + 2 + n]
        if len(item) != n:
            raise Jt808Error(f"batch report {i + 1} says {n} bytes, {len(item)} remain")
        out.append(item)
        pos += 2 + n
    return kind, out


def platform_reply(serial: int, msg_id: int, result: int) -> bytes:
    return struct.pack(">HHB", serial & 0xFFFF, msg_id, result)


def decode_reply(body: bytes) -> tuple[int, int, int]:
    if len(body) < 5:
        raise Jt808Error("a general reply body has 5 bytes")
    serial, msg_id, result = struct.unpack_from(">HHB", body)
    return serial, msg_id, result


def register_reply(serial: int, result: int, auth_code: str = "") -> bytes:
    return struct.pack(">HB", serial & 0xFFFF, result) + (auth_code.encode() if result == REG_OK else b"")


def decode_register_reply(body: bytes) -> tuple[int, int, str]:
    if len(body) < 3:
        raise Jt808Error("a registration reply body has at least 3 bytes")
    serial, result = struct.unpack_from(">HB", body)
    return serial, result, body[3:].decode("ascii", "replace")


def register_body(*, plate: str = "", terminal_id: str = "", version: int | None = None) -> bytes:
    """A registration: province, city, maker, model, terminal id, plate colour, plate."""
    maker, model, tid = (11, 30, 30) if version is not None else (5, 20, 7)
    return (struct.pack(">HH", 31, 115) + b"URBAN".ljust(maker, b"\0") + b"SIM-808".ljust(model, b"\0")
            + terminal_id.encode()[:tid].ljust(tid, b"\0") + bytes([1]) + plate.encode("gbk"))


def decode_register(body: bytes, version: int | None) -> dict[str, str]:
    maker, model, tid = (11, 30, 30) if version is not None else (5, 20, 7)
    need = 4 + maker + model + tid + 1
    if len(body) < need:
        raise Jt808Error(f"a registration body has at least {need} bytes, got {len(body)}")
    province, city = struct.unpack_from(">HH", body)
    pos = 4

    def text(n: int) -> str:
        nonlocal pos
        s = body[pos:pos + n].rstrip(b"\0").decode("gbk", "replace")
        pos += n
        return s

    out = {"province": str(province), "city": str(city), "maker": text(maker), "model": text(model),
           "terminal_id": text(tid)}
    out["plate_colour"] = str(body[pos])
    out["plate"] = body[pos + 1:].decode("gbk", "replace")
    return out


def auth_body(code: str, version: int | None, *, imei: str = "", software: str = "") -> bytes:
    if version is None:
        return code.encode()
    raw = code.encode()
    return bytes([len(raw)]) + raw + imei.encode()[:15].ljust(15, b"\0") + software.encode()[:20].ljust(20, b"\0")


def decode_auth(body: bytes, version: int | None) -> str:
    if version is None:
        return body.decode("ascii", "replace")
    if not body or len(body) < 1 + body[0]:
        raise Jt808Error("a 2019 authentication body starts with the code's length")
    return body[1:1 + body[0]].decode("ascii", "replace")


def auth_code(key: bytes, terminal: str) -> str:
    """The authentication code the platform gives a terminal: a keyed hash of its phone
    number, so that the platform needs no table of codes and a restart keeps them."""
    return hmac.new(key, terminal.encode(), hashlib.sha256).hexdigest()[:16]


def describe(msg: Message) -> list[str]:
    """Every field of a message, one per line (edge probe)."""
    lines = [f"message   0x{msg.msg_id:04X} ({msg.name})",
             f"header    {'2019 (protocol version ' + str(msg.version) + ')' if msg.version is not None else '2013'}",
             f"phone     {msg.phone}", f"serial    {msg.serial}", f"body      {len(msg.body)} bytes"
             + (f", encrypted ({msg.encryption})" if msg.encryption else "")]
    if msg.package is not None:
        lines.append(f"package   {msg.package[1]} of {msg.package[0]}")
        return lines
    if msg.msg_id == LOCATION:
        lines += _describe_location(decode_location(msg.body), "")
    elif msg.msg_id == BATCH_LOCATION:
        kind, bodies = decode_batch(msg.body)
        lines.append(f"batch     {len(bodies)} report(s), type {kind} "
                     f"({'blind-area backfill' if kind == BATCH_BACKFILL else 'normal'})")
        for i, b in enumerate(bodies, 1):
            lines.append(f"report {i}")
            lines += _describe_location(decode_location(b), "  ")
    elif msg.msg_id in (PLATFORM_REPLY, TERMINAL_REPLY):
        serial, mid, result = decode_reply(msg.body)
        lines.append(f"reply to  0x{mid:04X} serial {serial}: {REPLY_RESULTS.get(result, result)}")
    elif msg.msg_id == REGISTER:
        lines += [f"{k:<10}{v}" for k, v in decode_register(msg.body, msg.version).items()]
    elif msg.msg_id == REGISTER_REPLY:
        serial, result, code = decode_register_reply(msg.body)
        lines.append(f"reply to  serial {serial}: {REGISTER_RESULTS.get(result, result)}"
                     + (f", auth code {code}" if code else ""))
    elif msg.msg_id == AUTHENTICATE:
        lines.append(f"auth code {decode_auth(msg.body, msg.version)}")
    return lines


def _describe_location(loc: Location, pad: str) -> list[str]:
    when = dt.datetime.fromtimestamp(loc.t_ms / 1000, CHINA).isoformat()
    alarms = [n for n, b in ALARM_BITS.items() if loc.alarms >> b & 1]
    status = [n for n, b in STATUS_BITS.items() if loc.status >> b & 1]
    lines = [f"{pad}time      {when}", f"{pad}lat, lon  {loc.lat:.6f}, {loc.lon:.6f}",
             f"{pad}altitude  {loc.altitude_m} m", f"{pad}speed     {loc.speed_kmh:.1f} km/h",
             f"{pad}heading   {loc.heading_deg} deg",
             f"{pad}alarms    0x{loc.alarms:08X} {', '.join(alarms) or '(none)'}",
             f"{pad}status    0x{loc.status:08X} {', '.join(status) or '(none)'}"]
    lines += [f"{pad}{k} {v:g}" for k, v in loc.extras.items()]
    lines += [f"{pad}item 0x{k:02X} {v.hex()}" for k, v in loc.unknown.items()]
    return lines
