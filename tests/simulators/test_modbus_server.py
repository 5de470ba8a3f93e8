"""The simulators' own Modbus TCP slave, spoken to with raw MBAP frames: every function
code it serves, the exception answers, silence, unit routing and the read-answer cache."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from application.stack import free_port
from simulators.device import DeviceTables
from simulators.modbus_server import ModbusEndpoint, ThreadedModbusServer
from tests.edge.conftest import METER_PROFILE
from urbansense import registers
from urbansense.config import Profile

pytestmark = pytest.mark.integration


@pytest.fixture()
def served() -> Iterator[tuple[socket.socket, dict[int, DeviceTables], ModbusEndpoint]]:
    profile = Profile.model_validate(METER_PROFILE)
    units = {1: DeviceTables(profile), 2: DeviceTables(profile), 3: DeviceTables(profile)}
    port = free_port()
    endpoint = ModbusEndpoint("127.0.0.1", port, units)
    server = ThreadedModbusServer([endpoint])
    server.start()
    sock = socket.create_connection(("127.0.0.1", port), timeout=2.0)
    try:
        yield sock, units, endpoint
    finally:
        sock.close()
        server.stop()


def frame(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def recv_frame(sock: socket.socket) -> tuple[int, int, bytes]:
    head = b""
    while len(head) < 7:
        head += sock.recv(7 - len(head))
    tid, proto, length, unit = struct.unpack(">HHHB", head)
    assert proto == 0
    body = b""
    while len(body) < length - 1:
        body += sock.recv(length - 1 - len(body))
    return tid, unit, body


def ask(sock: socket.socket, unit: int, pdu: bytes, tid: int = 7) -> bytes:
    sock.sendall(frame(tid, unit, pdu))
    got_tid, got_unit, body = recv_frame(sock)
    assert (got_tid, got_unit) == (tid, unit)
    return body


def test_reads_every_table_and_routes_by_unit(served: tuple[socket.socket, dict[int, DeviceTables],
                                                             ModbusEndpoint]) -> None:
    sock, units, _ = served
    units[2].set("temp_c", 12.3)
    units[2].set("lamp_on", True)
    body = ask(sock, 2, struct.pack(">BHH", 3, 4, 1))
    assert body == bytes((3, 2)) + struct.pack(">h", 123)
    assert ask(sock, 1, struct.pack(">BHH", 3, 4, 1)) == bytes((3, 2)) + struct.pack(">h", -35)
    words = list(struct.unpack(">4H", ask(sock, 2, struct.pack(">BHH", 4, 0, 4))[2:]))
    assert registers.decode("uint64", words, "DCBA") == 123456789012
    assert ask(sock, 2, struct.pack(">BHH", 1, 0, 4)) == bytes((1, 1, 0b1000))  # coil 3 on
    assert ask(sock, 1, struct.pack(">BHH", 1, 0, 4)) == bytes((1, 1, 0))


def test_a_changed_value_is_served_at_the_next_read_not_a_cached_answer(
        served: tuple[socket.socket, dict[int, DeviceTables], ModbusEndpoint]) -> None:
    sock, units, _ = served
    read_temp = struct.pack(">BHH", 3, 4, 1)
    assert ask(sock, 1, read_temp)[2:] == struct.pack(">h", -35)
    assert ask(sock, 1, read_temp)[2:] == struct.pack(">h", -35)  # answered from the cache
    units[1].update({"temp_c": 20.0})
    assert ask(sock, 1, read_temp)[2:] == struct.pack(">h", 200)
    # a master's write changes the registers too
    assert ask(sock, 1, struct.pack(">BHH", 3, 12, 1))[2:] == struct.pack(">H", 500)
    assert ask(sock, 1, struct.pack(">BHH", 6, 12, 700)) == struct.pack(">BHH", 6, 12, 700)
    assert ask(sock, 1, struct.pack(">BHH", 3, 12, 1))[2:] == struct.pack(">H", 700)
    assert units[1].commands["setpoint_pct"] == pytest.approx(70.0)


def test_writes_and_their_refusals(served: tuple[socket.socket, dict[int, DeviceTables], ModbusEndpoint]) -> None:
    sock, units, _ = served
    assert ask(sock, 3, struct.pack(">BHH", 5, 3, 0xFF00)) == struct.pack(">BHH", 5, 3, 0xFF00)
    assert units[3].commands["lamp_on"] is True
    assert ask(sock, 3, struct.pack(">BHHBB", 15, 3, 1, 1, 0)) == struct.pack(">BHH", 15, 3, 1)
    assert units[3].commands["lamp_on"] is False
    assert ask(sock, 3, struct.pack(">BHHBH", 16, 12, 1, 2, 250)) == struct.pack(">BHH", 16, 12, 1)
    assert units[3].commands["setpoint_pct"] == pytest.approx(25.0)
    assert ask(sock, 3, struct.pack(">BHH", 5, 3, 0x1234)) == bytes((0x85, 3))  # not ON/OFF
    assert ask(sock, 3, struct.pack(">BHH", 6, 4, 1)) == bytes((0x86, 2))  # temp_c is not writable
    assert ask(sock, 3, struct.pack(">BHH", 6, 12, 1001)) == bytes((0x86, 3))  # above max 100 %
    assert ask(sock, 3, struct.pack(">BHHBH", 16, 12, 2, 2, 250)) == bytes((0x90, 3))  # byte count wrong


def test_exception_answers_and_silence(served: tuple[socket.socket, dict[int, DeviceTables],
                                                     ModbusEndpoint]) -> None:
    sock, units, endpoint = served
    assert ask(sock, 1, struct.pack(">BHH", 3, 100, 2)) == bytes((0x83, 2))  # beyond the map
    assert ask(sock, 1, struct.pack(">BHH", 3, 0, 126)) == bytes((0x83, 3))  # more than 125 registers
    assert ask(sock, 1, struct.pack(">BHH", 3, 0, 0)) == bytes((0x83, 3))
    assert ask(sock, 1, bytes((0x2B, 0x0E, 1, 0))) == bytes((0xAB, 1))  # function not served
    units[2].exception_code = 6
    assert ask(sock, 2, struct.pack(">BHH", 3, 0, 2)) == bytes((0x83, 6))
    # A silent unit and a unit nobody serves: no answer; the next request is answered.
    units[3].silent = True
    sock.sendall(frame(8, 3, struct.pack(">BHH", 3, 0, 2)) + frame(9, 9, struct.pack(">BHH", 3, 0, 2))
                 + frame(10, 1, struct.pack(">BHH", 3, 4, 1)))
    assert recv_frame(sock) == (10, 1, bytes((3, 2)) + struct.pack(">h", -35))
    assert endpoint.context.requests == 8


def test_frames_split_and_batched_across_segments(served: tuple[socket.socket, dict[int, DeviceTables],
                                                                ModbusEndpoint]) -> None:
    sock, _, _ = served
    two = frame(1, 1, struct.pack(">BHH", 3, 4, 1)) + frame(2, 2, struct.pack(">BHH", 3, 4, 1))
    sock.sendall(two[:5])
    sock.sendall(two[5:15])
    sock.sendall(two[15:])
    assert recv_frame(sock)[0] == 1
    assert recv_frame(sock)[0] == 2


def test_a_bad_mbap_header_closes_the_connection(served: tuple[socket.socket, dict[int, DeviceTables],
                                                                ModbusEndpoint]) -> None:
    sock, _, _ = served
    sock.sendall(struct.pack(">HHHB", 1, 7, 6, 1) + struct.pack(">BHH", 3, 0, 1))  # protocol id 7
    assert sock.recv(10) == b""  # closed by the server
