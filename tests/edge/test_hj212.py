"""HJ 212-2017 codec (urbansense/hj212.py): the standard's worked example, round trips,
stream cutting, and a fuzz test that no byte sequence crashes a connection's session."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.hj212_input import map_items
from tests.edge.fuzzing import fuzzed_stream, retained_growth
from urbansense import hj212
from urbansense.config import load_profile
from urbansense.registry import find_profile


def _path(name: str) -> Path:
    found = find_profile(name)
    assert found is not None
    return found


#: The standard's CRC example (its appendix on the CRC algorithm): the packet and the
#: CRC of its data segment.
STANDARD_PACKET = (b"##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;"
                   b"Flag=5;CP=&&RtdInterval=30&&1C80\r\n")


def test_the_standards_crc_example() -> None:
    segment = STANDARD_PACKET[6:-6]
    assert hj212.crc16(segment) == 0x1C80
    # not the Modbus CRC of the same bytes (the register takes the byte differently)
    from edge.modbus_transport import crc16 as modbus_crc
    assert modbus_crc(segment) != 0x1C80


def test_the_standards_packet_decodes_and_encodes_back() -> None:
    pkt = hj212.decode(STANDARD_PACKET)
    assert (pkt.qn, pkt.st, pkt.cn, pkt.pw, pkt.mn, pkt.flag) == (
        "20160801085857223", "32", "1062", "100000", "010000A8900016F000169DC0", 5)
    assert pkt.wants_answer and not pkt.split and pkt.version == 1
    assert pkt.params() == ({"RtdInterval": "30"}, {})
    assert pkt.encode() == STANDARD_PACKET


@pytest.mark.parametrize(("bad", "says"), [
    (STANDARD_PACKET.replace(b"1C80", b"1C81"), "bad CRC: the packet says 1C81, its data segment gives 1C80"),
    (STANDARD_PACKET.replace(b"##0101", b"##0100"), "length field says 100 bytes"),
    (STANDARD_PACKET.replace(b"##0101", b"##01x1"), "is not 4 decimal digits"),
    (STANDARD_PACKET[:-2], "ends with CR LF"),
    (STANDARD_PACKET.replace(b"1C80", b"1CZ0"), "is not 4 hex digits"),
])
def test_a_bad_packet_says_what_is_wrong(bad: bytes, says: str) -> None:
    with pytest.raises(hj212.Hj212Error, match=says.replace("(", r"\(")):
        hj212.decode(bad)


def test_real_time_data_items_and_flags() -> None:
    t = int(dt.datetime(2026, 12, 6, 15, 30, tzinfo=hj212.CHINA).timestamp() * 1000)
    pkt = hj212.data_packet(mn="AQ0101", pw="123456", st="22", t_ms=t,
                            values={"a34004": 35, "a34002": 61.5, "a21005": 0.6},
                            flags={"a21005": "C"}, answer=True)
    wire = pkt.encode()
    assert b"CN=2011" in wire and b"DataTime=20261206153000" in wire and b"Flag=5" in wire
    back = hj212.decode(wire)
    plain, codes = back.params()
    assert hj212.parse_time(plain["DataTime"]) == t
    assert codes["a34004"] == {"Rtd": "35", "Flag": "N"}
    assert codes["a21005"] == {"Rtd": "0.6", "Flag": "C"}


def test_flags_map_to_quality() -> None:
    profile = load_profile(_path("air-quality-station"))
    codes = {"a34004": {"Rtd": "35", "Flag": "N"}, "a34002": {"Rtd": "80", "Flag": "T"},
             "a21004": {"Rtd": "12", "Flag": "M"}, "a21026": {"Rtd": "9", "Flag": "D"},
             "a05024": {"Rtd": "x", "Flag": "N"}}
    fields, problems = map_items(profile, "2011", codes)
    assert fields == {"pm25_ugm3": 35.0, "pm10_ugm3": 80.0, "no2_ugm3": 12.0}
    assert problems == ["no2_ugm3 (a21004): flag M, maintenance",
                        "so2_ugm3 (a21026): flag D, instrument fault; value left out",
                        "o3_ugm3 (a05024): 'x' is not a number"]
    # minute data carries averages, not real-time values
    fields, _ = map_items(profile, "2051", {"a34004": {"Avg": "40", "Max": "55", "Flag": "N"}})
    assert fields == {"pm25_ugm3": 40.0}


def test_split_packets_carry_every_item_once() -> None:
    values = {f"a{30000 + i}": i * 1.5 for i in range(120)}
    pkt = hj212.data_packet(mn="AQ0101", pw="1", st="22", t_ms=1_780_000_000_000, values=values, kind="minute")
    parts = hj212.split(pkt, max_segment=1024)
    assert len(parts) > 1
    assert all(len(p.segment()) <= 1024 and p.split and p.pnum == len(parts) for p in parts)
    assert [p.pno for p in parts] == list(range(1, len(parts) + 1))
    seen: dict[str, dict[str, str]] = {}
    for p in parts:
        plain, codes = hj212.decode(p.encode()).params()
        assert "DataTime" in plain
        seen.update(codes)
    assert {c: float(v["Avg"]) for c, v in seen.items()} == values


@settings(max_examples=200, deadline=None)
@given(values=st.dictionaries(st.from_regex(r"[aw][0-9]{5}", fullmatch=True),
                              st.floats(allow_nan=False, allow_infinity=False, width=64) | st.integers(-10**9, 10**9),
                              min_size=1, max_size=20),
       kind=st.sampled_from(sorted(hj212.KIND_COMMAND)),
       t_s=st.integers(946_684_800, 4_102_444_799))
def test_encode_decode_round_trip(values: dict[str, float | int], kind: str, t_s: int) -> None:
    pkt = hj212.data_packet(mn="MN01", pw="pw", st="22", t_ms=t_s * 1000, values=values, kind=kind)
    back = hj212.decode(pkt.encode())
    plain, codes = back.params()
    suffix = hj212.DATA_COMMANDS[back.cn][1]
    assert hj212.parse_time(plain["DataTime"]) == t_s * 1000
    assert {c: float(v[suffix]) for c, v in codes.items()} == {c: float(v) for c, v in values.items()}


def test_stream_cutting_keeps_partial_packets_and_skips_garbage() -> None:
    a = hj212.data_packet(mn="A", pw="p", st="22", t_ms=1_780_000_000_000, values={"a34004": 1}).encode()
    b = hj212.data_packet(mn="B", pw="p", st="22", t_ms=1_780_000_000_000, values={"a34004": 2}).encode()
    reader = hj212.FrameReader()
    stream = b"noise" + a + b"\x00\xff" + b
    got: list[bytes | hj212.Hj212Error] = []
    for i in range(0, len(stream), 7):  # arriving 7 bytes at a time
        got += reader.feed(stream[i:i + 7])
    packets = [g for g in got if isinstance(g, bytes)]
    assert packets == [a, b]
    assert any(isinstance(g, hj212.Hj212Error) for g in got)


def test_a_lying_length_field_does_not_swallow_the_next_packet() -> None:
    a = hj212.data_packet(mn="A", pw="p", st="22", t_ms=1_780_000_000_000, values={"a34004": 1}).encode()
    liar = b"##0900QN=1;ST=22;CN=2011\r\n"
    got = hj212.FrameReader().feed(liar + a)
    assert [g for g in got if isinstance(g, bytes)] == [a]


def test_fuzzed_streams_never_crash_a_session() -> None:
    """Random bytes, truncated and corrupted packets through a real session: every
    outcome is an answer or a counted refusal, never an exception, and the buffer stays
    bounded."""
    from edge.hj212_input import Hj212Link, Hj212Session
    from edge.telemetry import SelfTelemetry
    from urbansense.config import LinkSpec
    link = LinkSpec.model_validate({"name": "env", "transport": "hj212", "port": 9212, "devices": [
        {"id": "aq-1", "profile": "air-quality-station", "ident": "AQ1"}]})
    samples: list[object] = []
    server = Hj212Link(link, {"air-quality-station": load_profile(_path("air-quality-station"))},
                       sink=samples.append, telemetry=SelfTelemetry("gw"))
    session = server.session("fuzz")
    assert isinstance(session, Hj212Session)
    good = hj212.data_packet(mn="AQ1", pw="p", st="22", t_ms=1_780_000_000_000, values={"a34004": 3},
                             answer=True).encode()
    for data in fuzzed_stream(good, 212):
        session.feed(data)
        assert len(session.reader.buf) <= session.reader.max_buffer + 200
    assert samples, "the good packets among the noise were read"
    # and it keeps nothing from the stream (the samples go to the sink, which drops them here)
    server.sink = lambda _sample: None
    assert retained_growth(session.feed, fuzzed_stream(good, 2120, rounds=10_000)) < 64 * 1024


def _crc_as_the_standard_writes_it(data: bytes) -> int:
    reg = 0xFFFF
    for byte in data:
        reg = (reg >> 8) ^ byte
        for _ in range(8):
            carry = reg & 1
            reg >>= 1
            if carry:
                reg ^= 0xA001
    return reg


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=1100))
def test_the_table_crc_is_the_standard_s_bitwise_crc(data: bytes) -> None:
    assert hj212.crc16(data) == _crc_as_the_standard_writes_it(data)


def test_a_silent_connection_is_closed_and_a_talking_one_kept() -> None:
    """The link's idle sweep closes a connection that sent nothing for idle_timeout_s and
    keeps one that talks (one sweep for all connections, not a timer per read)."""
    import asyncio

    from application.stack import free_port
    from edge.hj212_input import Hj212Link
    from edge.telemetry import SelfTelemetry
    from urbansense.config import LinkSpec

    port = free_port()
    link = LinkSpec.model_validate({"name": "env", "transport": "hj212", "port": port, "idle_timeout_s": 0.4,
                                    "devices": [{"id": "aq-1", "profile": "air-quality-station", "ident": "AQ1"}]})
    server = Hj212Link(link, {"air-quality-station": load_profile(_path("air-quality-station"))},
                       sink=lambda _s: None, telemetry=SelfTelemetry("gw"))

    async def scenario() -> tuple[bytes, bool]:
        await server.start()  # listening before the clients connect
        task = asyncio.create_task(server.run())
        silent_reader, silent = await asyncio.open_connection("127.0.0.1", port)
        talking_reader, talking = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(8):  # 1.2 s of keeping the second one busy
            talking.write(b"#")
            await asyncio.sleep(0.15)
        closed = await asyncio.wait_for(silent_reader.read(), 2.0)  # b"": closed by the agent
        alive = not talking_reader.at_eof() and len(server.connections) == 1
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        silent.close()
        talking.close()
        return closed, alive

    closed, alive = asyncio.run(scenario())
    assert closed == b"" and alive
