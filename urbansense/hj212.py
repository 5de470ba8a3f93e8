"""HJ 212-2017 codec: the packets environmental monitoring stations push over TCP, shared
by the edge agent (decode, answers), the simulators (encode) and `edge probe`.

A packet is ``##`` + the data segment's length (4 decimal digits) + the data segment +
its CRC16 (4 hex digits) + CR LF. The data segment is ``key=value`` pairs separated by
``;``: ``QN`` (request number, a YYYYMMDDhhmmsszzz time), ``ST`` (system type), ``CN``
(command), ``PW`` (password), ``MN`` (the station's identity), ``Flag`` (bit 0 asks for
an answer, bit 1 marks a split packet with ``PNUM``/``PNO``, bits 2-7 the version: 1 for
2017) and ``CP=&&...&&``, the command's parameters: ``DataTime=YYYYMMDDhhmmss`` then,
per pollutant code, ``a34004-Rtd=35,a34004-Flag=N`` items.

The standard's worked example (its CRC appendix) is a table test in tests/edge/test_hj212.py::

    ##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&1C80
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

#: Commands (CN) that carry monitoring data, and the value each one's items hold.
DATA_COMMANDS: dict[str, tuple[str, str]] = {
    "2011": ("realtime", "Rtd"),
    "2051": ("minute", "Avg"),
    "2061": ("hourly", "Avg"),
    "2031": ("daily", "Avg"),
}
KIND_COMMAND = {kind: cn for cn, (kind, _suffix) in DATA_COMMANDS.items()}
#: Answers: a station's answer to a request, its execution result, the platform's
#: answer to a notification and to data.
CN_REQUEST_ANSWER, CN_EXECUTION_RESULT, CN_NOTIFY_ANSWER, CN_DATA_ANSWER = "9011", "9012", "9013", "9014"
#: Set the station's clock (platform -> station, CP SystemTime) and a station's request for it.
CN_SET_TIME, CN_TIME_REQUEST = "1012", "1013"
ST_SYSTEM = "91"
#: Flag: version 2017 (bits 2-7 = 1), and the answer bit.
FLAG_V2017, FLAG_ANSWER, FLAG_SPLIT = 4, 1, 2
#: Per-value data flags (the "-Flag" items) and what they mean.
DATA_FLAGS: dict[str, str] = {
    "N": "normal",
    "F": "stopped",
    "M": "maintenance",
    "S": "set by hand",
    "D": "instrument fault",
    "C": "calibration",
    "T": "over the limit",
    "B": "communication fault",
}
#: Flags whose value is not a measurement of the environment (dropped from the sample),
#: and flags whose value is kept but not to be trusted as a normal reading.
FLAGS_DROP = frozenset("FDB")
FLAGS_UNCERTAIN = frozenset("MSC")
#: QnRtn values (answer 9011).
QN_RETURNS: dict[str, str] = {
    "1": "ready to execute", "2": "refused", "3": "wrong password", "4": "wrong MN", "5": "wrong ST",
    "6": "wrong Flag", "7": "wrong QN", "8": "wrong CN", "9": "wrong CRC", "100": "unknown error",
}
#: ExeRtn values (result 9012).
EXE_RETURNS: dict[str, str] = {
    "1": "done", "2": "failed, reason unknown", "3": "condition error", "4": "timed out", "5": "busy",
    "6": "instrument fault", "100": "no data",
}
#: Longest data segment the 4-digit length field can state.
MAX_SEGMENT = 9999
HEADER = b"##"
TRAILER = b"\r\n"
CHINA = ZoneInfo("Asia/Shanghai")


class Hj212Error(ValueError):
    """A packet that cannot be read; str() says what is wrong with it."""


def _crc_table() -> list[int]:
    table = []
    for low in range(256):
        reg = low
        for _ in range(8):
            carry = reg & 1
            reg >>= 1
            if carry:
                reg ^= 0xA001
        table.append(reg)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """The standard's CRC16 over the data segment (not the Modbus CRC: the register
    takes the byte into its low half after a shift right by 8). Per byte the standard
    says: reg = (reg >> 8) ^ byte, then eight shifts right, XOR-ing 0xA001 after each
    that shifts out a 1. The high byte never reaches bit 0 within those eight, so the
    eight shifts are (reg >> 8) ^ table[reg & 0xFF]."""
    reg = 0xFFFF
    table = _CRC_TABLE
    for byte in data:
        reg = (reg >> 8) ^ byte
        reg = (reg >> 8) ^ table[reg & 0xFF]
    return reg


def frame(segment: str) -> bytes:
    """A data segment as a packet on the wire."""
    data = segment.encode("ascii")
    if len(data) > MAX_SEGMENT:
        raise Hj212Error(f"data segment of {len(data)} bytes: the length field holds at most {MAX_SEGMENT}")
    return HEADER + f"{len(data):04d}".encode() + data + f"{crc16(data):04X}".encode() + TRAILER


@dataclass
class Packet:
    qn: str
    st: str
    cn: str
    pw: str
    mn: str
    flag: int
    cp: str
    pnum: int | None = None
    pno: int | None = None
    #: Header keys beyond the standard's (kept for probe).
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def wants_answer(self) -> bool:
        return bool(self.flag & FLAG_ANSWER)

    @property
    def split(self) -> bool:
        return bool(self.flag & FLAG_SPLIT)

    @property
    def version(self) -> int:
        return self.flag >> 2

    def params(self) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
        """The CP's plain parameters (DataTime, QnRtn, ...) and its per-code items
        ({"a34004": {"Rtd": "35", "Flag": "N"}})."""
        return parse_cp(self.cp)

    def segment(self) -> str:
        head = f"QN={self.qn};" if self.qn else ""
        head += f"ST={self.st};CN={self.cn};PW={self.pw};MN={self.mn};Flag={self.flag};"
        if self.pnum is not None:
            head += f"PNUM={self.pnum};PNO={self.pno};"
        return head + f"CP=&&{self.cp}&&"

    def encode(self) -> bytes:
        return frame(self.segment())


def _pairs(items: list[str], what: str) -> Iterator[tuple[str, str]]:
    for item in items:
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not eq:
            raise Hj212Error(f"{what} item {item[:40]!r} has no '='")
        yield key, value


def parse_cp(cp: str) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    plain: dict[str, str] = {}
    codes: dict[str, dict[str, str]] = {}
    for key, value in _pairs([item for group in cp.split(";") for item in group.split(",")], "CP"):
        code, dash, suffix = key.partition("-")
        if dash:
            codes.setdefault(code, {})[suffix] = value
        else:
            plain[key] = value
    return plain, codes


def decode_segment(segment: str) -> Packet:
    """A data segment (without ##, length, CRC) as a Packet."""
    head, sep, rest = segment.partition("CP=&&")
    if not sep:
        raise Hj212Error("no CP=&&...&& in the data segment")
    if not rest.endswith("&&"):
        raise Hj212Error("the CP does not end with && (a truncated packet?)")
    keys = dict(_pairs(head.split(";"), "header"))
    missing = [k for k in ("ST", "CN", "MN") if k not in keys]
    if missing:
        raise Hj212Error(f"the data segment has no {', '.join(missing)}")
    try:
        flag = int(keys.pop("Flag", "4"))
        pnum = int(keys.pop("PNUM")) if "PNUM" in keys else None
        pno = int(keys.pop("PNO")) if "PNO" in keys else None
    except ValueError as exc:
        raise Hj212Error(f"Flag, PNUM and PNO must be integers ({exc})") from None
    return Packet(qn=keys.pop("QN", ""), st=keys.pop("ST"), cn=keys.pop("CN"), pw=keys.pop("PW", ""),
                  mn=keys.pop("MN"), flag=flag, cp=rest[:-2], pnum=pnum, pno=pno, extra=keys)


def decode(packet: bytes) -> Packet:
    """One whole packet (## ... CR LF) as a Packet; Hj212Error says what is wrong."""
    if not packet.startswith(HEADER):
        raise Hj212Error("a packet starts with ##")
    if not packet.endswith(TRAILER):
        raise Hj212Error("a packet ends with CR LF")
    length_field = packet[2:6]
    if not length_field.isdigit():
        raise Hj212Error(f"length field {length_field!r} is not 4 decimal digits")
    n = int(length_field)
    if len(packet) != n + 12:
        raise Hj212Error(f"length field says {n} bytes of data segment, the packet holds {len(packet) - 12}")
    data, crc_field = packet[6:6 + n], packet[6 + n:10 + n]
    try:
        crc = int(crc_field, 16)
    except ValueError:
        raise Hj212Error(f"CRC field {crc_field!r} is not 4 hex digits") from None
    if crc != crc16(data):
        raise Hj212Error(f"bad CRC: the packet says {crc:04X}, its data segment gives {crc16(data):04X}")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise Hj212Error("the data segment is not ASCII") from None
    return decode_segment(text)


class FrameReader:
    """Cuts a TCP byte stream into packets. feed() returns, in order, each whole packet
    (bytes) and each piece of garbage it skipped (Hj212Error), and keeps a partial packet
    for the next call."""

    def __init__(self, max_buffer: int = MAX_SEGMENT + 12) -> None:
        self.buf = bytearray()
        self.max_buffer = max_buffer

    def feed(self, data: bytes) -> list[bytes | Hj212Error]:
        self.buf += data
        out: list[bytes | Hj212Error] = []
        while True:
            start = self.buf.find(HEADER)
            if start < 0:
                keep = 1 if self.buf.endswith(b"#") else 0
                if len(self.buf) > keep:
                    out.append(Hj212Error(f"{len(self.buf) - keep} byte(s) outside any packet skipped"))
                    del self.buf[:len(self.buf) - keep]
                return out
            if start > 0:
                out.append(Hj212Error(f"{start} byte(s) before ## skipped"))
                del self.buf[:start]
            if len(self.buf) < 6:
                return out
            length_field = bytes(self.buf[2:6])
            if not length_field.isdigit():
                out.append(Hj212Error(f"length field {length_field!r} is not 4 decimal digits"))
                del self.buf[:2]
                continue
            total = int(length_field) + 12
            if len(self.buf) < total:
                # a partial packet, unless a new one starts where this one's CR LF should be
                nxt = self.buf.find(HEADER, 2)
                if 0 < nxt < total and self.buf.rfind(TRAILER, 0, nxt) >= 0:
                    out.append(Hj212Error(f"length field says {total - 12} bytes, a new packet starts first"))
                    del self.buf[:nxt]
                    continue
                return out
            candidate = bytes(self.buf[:total])
            if not candidate.endswith(TRAILER):
                out.append(Hj212Error(f"length field says {total - 12} bytes but no CR LF follows them"))
                del self.buf[:2]
                continue
            del self.buf[:total]
            out.append(candidate)


# ---------------------------------------------------------------------------- times
def parse_time(text: str, tz: dt.tzinfo = CHINA) -> int:
    """YYYYMMDDhhmmss (or with zzz milliseconds, as in QN) in the station's zone, as epoch ms."""
    if not text.isdigit() or len(text) not in (14, 17):
        raise Hj212Error(f"time {text[:20]!r} is not YYYYMMDDhhmmss")
    try:
        t = dt.datetime(int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[8:10]), int(text[10:12]),
                        int(text[12:14]), tzinfo=tz)
    except ValueError as exc:
        raise Hj212Error(f"time {text!r}: {exc}") from None
    return int(t.timestamp() * 1000) + (int(text[14:17]) if len(text) == 17 else 0)


def format_time(t_ms: int, tz: dt.tzinfo = CHINA, *, millis: bool = False) -> str:
    t = dt.datetime.fromtimestamp(t_ms / 1000, tz)
    return t.strftime("%Y%m%d%H%M%S") + (f"{t_ms % 1000:03d}" if millis else "")


# ---------------------------------------------------------------------------- building
def format_value(value: float | int | bool) -> str:
    """A number as the shortest text that reads back to the same float."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        raise Hj212Error(f"{value} cannot be sent")
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def data_packet(*, mn: str, pw: str, st: str, t_ms: int, values: Mapping[str, float | int | bool],
                kind: str = "realtime", flags: Mapping[str, str] | None = None, answer: bool = False,
                tz: dt.tzinfo = CHINA, qn_ms: int | None = None) -> Packet:
    """A data upload: `values` by pollutant code, each with its data flag (N by default)."""
    cn = KIND_COMMAND[kind]
    suffix = DATA_COMMANDS[cn][1]
    flags = flags or {}
    items = [f"DataTime={format_time(t_ms, tz)}"]
    for code, value in values.items():
        items.append(f"{code}-{suffix}={format_value(value)},{code}-Flag={flags.get(code, 'N')}")
    return Packet(qn=format_time(t_ms if qn_ms is None else qn_ms, tz, millis=True), st=st, cn=cn, pw=pw, mn=mn,
                  flag=FLAG_V2017 | (FLAG_ANSWER if answer else 0), cp=";".join(items))


def answer(to: Packet, cn: str, cp: str = "", *, st: str = ST_SYSTEM) -> Packet:
    """An answer packet to `to` (same QN, MN and password)."""
    return Packet(qn=to.qn, st=st, cn=cn, pw=to.pw, mn=to.mn, flag=FLAG_V2017, cp=cp)


def split(packet: Packet, max_segment: int = 1024) -> list[Packet]:
    """A packet whose data segment is longer than `max_segment` as split packets (Flag
    bit 1, PNUM/PNO), cutting its CP between item groups."""
    if len(packet.segment()) <= max_segment:
        return [packet]
    groups = packet.cp.split(";")
    head, body = groups[0], groups[1:]
    budget = max(64, max_segment - len(packet.segment()) + len(packet.cp) - 24)
    parts: list[list[str]] = [[]]
    for g in body:
        if parts[-1] and len(";".join([head, *parts[-1], g])) > budget:
            parts.append([])
        parts[-1].append(g)
    return [Packet(qn=packet.qn, st=packet.st, cn=packet.cn, pw=packet.pw, mn=packet.mn,
                   flag=packet.flag | FLAG_SPLIT, cp=";".join([head, *p]), pnum=len(parts), pno=i + 1)
            for i, p in enumerate(parts)]


def describe(packet: Packet) -> list[str]:
    """Every field of a packet, one per line (edge probe)."""
    lines = [f"QN   {packet.qn}", f"ST   {packet.st}", f"CN   {packet.cn}"
             + (f" ({DATA_COMMANDS[packet.cn][0]} data)" if packet.cn in DATA_COMMANDS else ""),
             f"PW   {packet.pw}", f"MN   {packet.mn}",
             f"Flag {packet.flag} (version {packet.version}{', answer wanted' if packet.wants_answer else ''}"
             f"{', split' if packet.split else ''})"]
    if packet.pnum is not None:
        lines.append(f"PNUM {packet.pnum}  PNO {packet.pno}")
    for key, value in packet.extra.items():
        lines.append(f"{key:4} {value}")
    plain, codes = packet.params()
    for key, value in plain.items():
        note = ""
        if key == "QnRtn":
            note = f" ({QN_RETURNS.get(value, 'unknown')})"
        elif key == "ExeRtn":
            note = f" ({EXE_RETURNS.get(value, 'unknown')})"
        elif key in ("DataTime", "SystemTime"):
            try:
                note = f" ({dt.datetime.fromtimestamp(parse_time(value) / 1000, CHINA).isoformat()})"
            except Hj212Error as exc:
                note = f" ({exc})"
        lines.append(f"CP   {key} = {value}{note}")
    for code, items in codes.items():
        shown = ", ".join(f"{k}={v}" + (f" ({DATA_FLAGS.get(v, 'unknown flag')})" if k == "Flag" else "")
                          for k, v in items.items())
        lines.append(f"CP   {code}: {shown}")
    return lines
