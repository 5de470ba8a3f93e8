"""Modbus application PDUs: the part of a request/response that TCP and RTU share.

Worked example: reading 7 holding registers from address 0 is the PDU
``03 0000 0007``; the answer is ``03 0E`` followed by 14 data bytes, or ``83 02`` when
the device says "illegal data address".
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

READ_FUNCTIONS = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
WRITE_SINGLE_COIL = 5
WRITE_SINGLE_REGISTER = 6
WRITE_MULTIPLE_COILS = 15
WRITE_MULTIPLE_REGISTERS = 16

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}
ILLEGAL_DATA_ADDRESS = 2


class ModbusTimeout(TimeoutError):
    """The device did not answer within its timeout."""


class ModbusLinkError(ConnectionError):
    """The link itself (TCP connection, serial port) is not usable."""


class ModbusExceptionResponse(Exception):
    """The device answered with a Modbus exception code."""

    def __init__(self, function: int, code: int) -> None:
        self.function = function
        self.code = code
        super().__init__(f"exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})")


class ModbusProtocolError(Exception):
    """The answer does not fit the request (wrong function, length or CRC)."""


@dataclass(frozen=True, slots=True)
class Request:
    unit: int
    pdu: bytes

    @property
    def function(self) -> int:
        return self.pdu[0]


def read_request(unit: int, table: str, address: int, count: int) -> Request:
    return Request(unit, struct.pack(">BHH", READ_FUNCTIONS[table], address, count))


def write_registers_request(unit: int, address: int, words: list[int]) -> Request:
    if len(words) == 1:
        return Request(unit, struct.pack(">BHH", WRITE_SINGLE_REGISTER, address, words[0] & 0xFFFF))
    body = b"".join(struct.pack(">H", w & 0xFFFF) for w in words)
    return Request(unit, struct.pack(">BHHB", WRITE_MULTIPLE_REGISTERS, address, len(words), len(body)) + body)


def write_coil_request(unit: int, address: int, value: bool) -> Request:
    return Request(unit, struct.pack(">BHH", WRITE_SINGLE_COIL, address, 0xFF00 if value else 0))


def expected_length(function: int, head: bytes) -> int | None:
    """Full response PDU length once its first two bytes are known (RTU framing needs it)."""
    if len(head) < 2:
        return None
    if head[0] & 0x80:
        return 2
    if function in READ_FUNCTIONS.values():
        return 2 + head[1]
    return 5  # write echo: function, address, value/quantity


def parse_response(request: Request, pdu: bytes, count: int = 0) -> list[int]:
    """Registers (or bits, as 0/1) of a read; [] for a write. Raises on an exception answer."""
    if not pdu:
        raise ModbusProtocolError("empty response")
    function = request.function
    if pdu[0] == function | 0x80:
        raise ModbusExceptionResponse(function, pdu[1] if len(pdu) > 1 else 0)
    if pdu[0] != function:
        raise ModbusProtocolError(f"answer has function {pdu[0]}, request had {function}")
    if function in (3, 4):
        n = pdu[1]
        if n != len(pdu) - 2 or n % 2:
            raise ModbusProtocolError(f"byte count {n} does not match {len(pdu) - 2} data bytes")
        return list(struct.unpack(f">{n // 2}H", pdu[2:]))
    if function in (1, 2):
        data = pdu[2 : 2 + pdu[1]]
        bits = [(data[i // 8] >> (i % 8)) & 1 for i in range(len(data) * 8)]
        return bits[:count] if count else bits
    return []
