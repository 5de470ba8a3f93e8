"""`urbansense edge probe`: read raw registers and show them decoded in every type and
byte/word order, for the day the datasheet gets the word order wrong; or decode a captured
HJ 212 packet or JT/T 808 frame (text or hex) and print every field."""

from __future__ import annotations

import math
import re

from edge.modbus_pdu import parse_response, read_request
from edge.modbus_transport import ModbusMaster
from urbansense import hj212, jt808
from urbansense.registers import ORDER_ALIASES, decode_every_way


async def read_raw(master: ModbusMaster, unit: int, table: str, address: int, count: int,
                   timeout_s: float) -> list[int]:
    request = read_request(unit, table, address, count)
    try:
        return parse_response(request, await master.transact(request, timeout_s), count)[:count]
    finally:
        await master.close()


def _fmt(value: int | float | str) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value) or (value != 0 and not 1e-6 <= abs(value) < 1e12):
            return f"{value:.4g}"
        return f"{value:.6g}"
    if isinstance(value, str):
        return repr(value if value.isprintable() else value.encode("unicode_escape").decode())
    return str(value)


def render(address: int, words: list[int], table: str = "holding") -> str:
    lines = []
    if table in ("coil", "discrete"):
        lines.append(f"{table} {address}..{address + len(words) - 1}: " + " ".join(str(b) for b in words))
        return "\n".join(lines)
    lines.append(f"{table} registers {address}..{address + len(words) - 1}")
    lines.append("  " + "  ".join(f"{address + i}=0x{w:04X} ({w})" for i, w in enumerate(words)))
    orders = list(ORDER_ALIASES)
    for start in range(len(words)):
        decoded = decode_every_way(words[start:])
        lines.append("")
        lines.append(f"starting at {address + start} (+{start})")
        lines.append(f"  {'type':8}" + "".join(f"{o:>24}" for o in orders))
        for dtype, row in decoded.items():
            lines.append(f"  {dtype:8}" + "".join(f"{_fmt(row[o]) if o in row else '-':>24}" for o in orders))
    lines.append("")
    lines.append("ABCD = big-endian (Modbus standard), CDAB = word swapped, BADC = byte swapped, "
                 "DCBA = both; put the order that gives a plausible value in the profile's `order:`.")
    return "\n".join(lines)


def _as_bytes(capture: str) -> bytes:
    """A capture as bytes: HJ 212 text (## ..., a literal \\r\\n allowed), or hex with or
    without spaces, colons or 0x prefixes."""
    text = capture.strip()
    if text.startswith("##"):
        text = text.replace("\\r", "\r").replace("\\n", "\n")
        return text.encode("ascii", "replace") + (b"" if text.endswith("\r\n") else b"\r\n")
    compact = re.sub(r"0x|[\s:,-]", "", text, flags=re.IGNORECASE)
    try:
        return bytes.fromhex(compact)
    except ValueError:
        raise ValueError("not an HJ 212 packet (## ...) nor hex bytes; paste the packet as text or as hex") from None


def decode_capture(capture: str) -> tuple[str, bool]:
    """(every field of each packet or frame in the capture, all of them valid)."""
    data = _as_bytes(capture)
    if data.startswith(hj212.HEADER):
        return _decode_hj212(data)
    if data[:1] == b"\x7e":
        return _decode_jt808(data)
    raise ValueError("a capture starts with ## (HJ 212) or 7E (JT/T 808); this one starts "
                     f"{data[:4].hex(' ')}")


def _decode_hj212(data: bytes) -> tuple[str, bool]:
    lines: list[str] = []
    ok = True
    items = hj212.FrameReader().feed(data)
    if not items:
        items = [hj212.Hj212Error(f"an incomplete packet: {len(data)} bytes, its length field asks for more")]
    for item in items:
        if isinstance(item, hj212.Hj212Error):
            lines.append(f"HJ 212: {item}")
            ok = False
            continue
        lines.append(f"HJ 212 packet, {len(item)} bytes, data segment {int(item[2:6])} bytes")
        try:
            pkt = hj212.decode(item)
        except hj212.Hj212Error as exc:
            ok = False
            lines.append(f"  problem: {exc}; decoded regardless:")
            try:
                pkt = hj212.decode_segment(item[6:-6].decode("ascii", "replace"))
            except hj212.Hj212Error as again:
                lines.append(f"  cannot read the data segment: {again}")
                continue
        else:
            lines.append(f"  CRC {item[-6:-2].decode()} (correct)")
        try:
            lines += ["  " + line for line in hj212.describe(pkt)]
        except hj212.Hj212Error as exc:
            ok = False
            lines.append(f"  CP cannot be read: {exc}")
    return "\n".join(lines), ok


def _decode_jt808(data: bytes) -> tuple[str, bool]:
    lines: list[str] = []
    ok = True
    reader = jt808.FrameReader()
    items = reader.feed(data)
    if reader.buf:
        items.append(jt808.Jt808Error(f"{len(reader.buf)} bytes with no closing 0x7E (a truncated frame)"))
    for item in items:
        if isinstance(item, jt808.Jt808Error):
            lines.append(f"JT/T 808: {item}")
            ok = False
            continue
        raw = jt808.unescape(item) if b"\x7d" in item else item
        lines.append(f"JT/T 808 frame, {len(item) + 2} bytes on the wire ({len(raw)} unescaped)")
        try:
            msg = jt808.decode(item)
            lines.append(f"  check code 0x{raw[-1]:02X} (correct)")
        except jt808.Jt808Error as exc:
            ok = False
            lines.append(f"  problem: {exc}")
            try:
                msg = jt808.decode(item, verify=False)
                lines.append("  decoded regardless:")
            except jt808.Jt808Error:
                continue
        try:
            lines += ["  " + line for line in jt808.describe(msg)]
        except jt808.Jt808Error as exc:
            ok = False
            lines.append(f"  body cannot be read: {exc}")
    return "\n".join(lines), ok
