"""Modbus serial-line framings, shared by the edge agent (master) and the simulators
(the serial server that forwards them over TCP).

- **RTU**: unit, PDU, CRC-16 (polynomial 0xA001, initial 0xFFFF, low byte first). On a
  serial line 3.5 character times of silence end a frame; over TCP (a transparent serial
  server) the frame's length follows from its function code.
- **ASCII**: ``:`` then unit, PDU and LRC as upper-case hex, then CR LF. The LRC is the
  two's complement of the 8-bit sum of unit and PDU.

Modbus over Serial Line V1.02 gives the examples in tests/edge/test_serial_framing.py:
the RTU read of holding register 0 from unit 1 is ``01 03 00 00 00 01 84 0A``, and its
ASCII form is ``:010300000001FB\\r\\n``.
"""

from __future__ import annotations

import struct

Framing = str  # "rtu" or "ascii"


class FramingError(ValueError):
    """A frame that cannot be read; str() says why."""


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """Modbus RTU CRC (poly 0xA001, init 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ b) & 0xFF]
    return crc


def lrc(data: bytes) -> int:
    return (-sum(data)) & 0xFF


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    body = bytes([unit]) + pdu
    return body + struct.pack("<H", crc16(body))


def ascii_frame(unit: int, pdu: bytes) -> bytes:
    body = bytes([unit]) + pdu
    return b":" + (body + bytes([lrc(body)])).hex().upper().encode() + b"\r\n"


def frame(framing: Framing, unit: int, pdu: bytes) -> bytes:
    return ascii_frame(unit, pdu) if framing == "ascii" else rtu_frame(unit, pdu)


def read_rtu(data: bytes) -> tuple[int, bytes]:
    """(unit, PDU) of a whole RTU frame whose CRC is right."""
    if len(data) < 4:
        raise FramingError(f"an RTU frame has at least 4 bytes, got {len(data)}")
    if crc16(data[:-2]) != struct.unpack("<H", data[-2:])[0]:
        raise FramingError("CRC mismatch (noise on the line, a wrong baud rate, or two masters)")
    return data[0], data[1:-2]


def read_ascii(line: bytes) -> tuple[int, bytes]:
    """(unit, PDU) of one ASCII frame (``:`` ... CR LF) whose LRC is right."""
    text = line.strip()
    if not text.startswith(b":"):
        raise FramingError("an ASCII frame starts with ':'")
    try:
        raw = bytes.fromhex(text[1:].decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise FramingError(f"an ASCII frame holds hex digits, got {text[:40]!r}") from None
    if len(raw) < 3:
        raise FramingError(f"an ASCII frame has at least unit, function and LRC, got {len(raw)} bytes")
    if lrc(raw[:-1]) != raw[-1]:
        raise FramingError(f"LRC mismatch: the frame says {raw[-1]:02X}, its bytes give {lrc(raw[:-1]):02X}")
    return raw[0], raw[1:-1]


def rtu_request_length(buf: bytes) -> int | None:
    """The whole length of the RTU request frame at the start of buf (for a server
    cutting a TCP stream), None while too little of it is there to know."""
    if len(buf) < 2:
        return None
    function = buf[1]
    if function in (1, 2, 3, 4, 5, 6):
        return 8
    if function in (15, 16):
        return None if len(buf) < 7 else 9 + buf[6]
    return 4  # unit, function, CRC: answered "illegal function"


def rtu_response_length(function: int, buf: bytes) -> int | None:
    """The whole length of the RTU answer to a request of `function`, None while too
    little of it is there to know."""
    if len(buf) < 3:
        return None
    if buf[1] & 0x80:
        return 5
    if function in (1, 2, 3, 4):
        return 5 + buf[2]
    return 8
