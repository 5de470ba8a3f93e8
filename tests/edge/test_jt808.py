"""JT/T 808 codec (urbansense/jt808.py) and the terminal session (edge/jt808_input.py):
location reports captured from field terminals (published with Traccar's decoder
tests), round trips for the 2013 and 2019 headers, sub-packages, the registration and
authentication exchange, and a fuzz test."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from edge.jt808_input import Jt808Link, Jt808Session
from edge.telemetry import SelfTelemetry
from tests.edge.fuzzing import fuzzed_stream, retained_growth
from urbansense import jt808
from urbansense.config import LinkSpec, load_profile
from urbansense.registry import find_profile
from urbansense.schema import Sample

#: A 2013-header location report from a terminal in Shenzhen (lat 22.6426, lon 114.032984,
#: 128 m, 2015-08-18 07:21:21 GMT+8; additional items mileage, fuel, tachograph speed).
SHENZHEN = ("7E0200002A013833501744001900000000000000C201597FA806CC01580080000000081508180721210104000002F5"
            "02020000030200009F7E")
#: One from Nairobi: status bit 2 (south latitude) set, altitude 1,672 m, an unknown item 0x25.
NAIROBI = ("7e0200002c001401709034080d000000000004000700139d440232082406880000000019050803133301040015d0e803"
           "0200002504000000008e7e")
#: A blind-area backfill (0x0704, type 1) of 8 reports.
BACKFILL = ("7E0704014301356777777707F5000801002600000000000000030159741206CBFD50017200000001160527090624010400"
            "00001D03020000002600000000000000030159746606CBFD50016B0000000116052709065301040000001D030200000026"
            "0000000000000003015975E406CBFE58013F0000000116052709072701040000001D0302000000260000000000000003"
            "015976DE06CBFF10012E0000000116052709075601040000001D0302000000260000000000000003015976BC06CBFED001"
            "2D0000000116052709083001040000001D0302000000260000000000000003015976FE06CBFEC00108000000011605270909"
            "0001040000001D0302000000260000000000000003015976FE06CBFE7800FC0000000116052709093301040000001D03020"
            "00000260000000000000003015977A606CBFF3001080000000116052709100201040000001D030200001F7E")
HEARTBEAT = "7e0002000004304832546500b7ca7e"


def test_field_location_reports() -> None:
    msg = jt808.decode(bytes.fromhex(SHENZHEN))
    assert (msg.msg_id, msg.phone, msg.serial, msg.version) == (jt808.LOCATION, "013833501744", 25, None)
    loc = jt808.decode_location(msg.body)
    assert (loc.lat, loc.lon, loc.altitude_m, loc.heading_deg) == (22.6426, 114.032984, 128, 8)
    assert loc.t_ms == 1439853681000  # 2015-08-18 07:21:21 +08:00
    assert loc.items()["status.located"] is True and loc.items()["alarm.emergency"] is False
    assert loc.extras == {"mileage_km": 75.7, "fuel_l": 0.0, "tacho_speed_kmh": 0.0}
    south = jt808.decode_location(jt808.decode(bytes.fromhex(NAIROBI)).body)
    assert (south.lat, south.lon, south.altitude_m) == (-1.285444, 36.833316, 1672)
    assert south.unknown == {0x25: b"\0\0\0\0"}
    for frame in (SHENZHEN, NAIROBI, BACKFILL, HEARTBEAT):
        assert jt808.encode(jt808.decode(bytes.fromhex(frame))).hex() == frame.lower()


def test_backfill_batch() -> None:
    msg = jt808.decode(bytes.fromhex(BACKFILL))
    kind, bodies = jt808.decode_batch(msg.body)
    assert kind == jt808.BATCH_BACKFILL and len(bodies) == 8
    times = [jt808.decode_location(b).t_ms for b in bodies]
    assert times == sorted(times) and times[-1] - times[0] == 218_000


@pytest.mark.parametrize(("bad", "says"), [
    (SHENZHEN[:-4] + "9E7E", "bad check code"),
    ("7E0200002B" + SHENZHEN[10:-4] + "9E7E", "header says a body of 43 bytes"),
    ("7E7D0302" + SHENZHEN[6:], "escape byte 0x7D"),
    ("7E00027E", "shorter than the smallest header"),
])
def test_a_bad_frame_says_what_is_wrong(bad: str, says: str) -> None:
    with pytest.raises(jt808.Jt808Error, match=says):
        jt808.decode(bytes.fromhex(bad))


def test_escaping() -> None:
    body = bytes([0x7E, 0x7D, 0x01, 0x02, 0x7E])
    wire = jt808.encode(jt808.Message(0x0900, "13800138000", 0x7E7D, body))
    assert wire.count(0x7E) == 2  # only the delimiters
    assert jt808.decode(wire).body == body and jt808.decode(wire).serial == 0x7E7D


locations = st.builds(
    jt808.Location, t_ms=st.integers(946_684_800, 4_102_358_400).map(lambda s: s * 1000),
    lat=st.integers(-90_000_000, 90_000_000).map(lambda v: v / 1e6),
    lon=st.integers(-180_000_000, 180_000_000).map(lambda v: v / 1e6),
    speed_kmh=st.integers(0, 2500).map(lambda v: v / 10), heading_deg=st.integers(0, 359),
    altitude_m=st.integers(0, 9000), alarms=st.integers(0, 2**32 - 1),
    status=st.integers(0, 2**32 - 1).map(lambda s: s & ~0b1100),
    extras=st.fixed_dictionaries({}, optional={"mileage_km": st.integers(0, 10**8).map(lambda v: v / 10),
                                              "satellites": st.integers(0, 60).map(float)}))


@settings(max_examples=200, deadline=None)
@given(loc=locations, version=st.sampled_from([None, 1]), phone=st.from_regex(r"1[0-9]{10}", fullmatch=True),
       serial=st.integers(0, 0xFFFF))
def test_location_round_trip(loc: jt808.Location, version: int | None, phone: str, serial: int) -> None:
    msg = jt808.Message(jt808.LOCATION, phone, serial, jt808.encode_location(loc), version)
    back = jt808.decode(jt808.encode(msg))
    assert (back.terminal, back.serial, back.version) == (phone, serial, version)
    got = jt808.decode_location(back.body)
    status = loc.status | (4 if loc.lat < 0 else 0) | (8 if loc.lon < 0 else 0)
    assert (got.t_ms, got.lat, got.lon, got.speed_kmh, got.heading_deg, got.altitude_m, got.alarms, got.status) \
        == (loc.t_ms, loc.lat, loc.lon, loc.speed_kmh, loc.heading_deg, loc.altitude_m, loc.alarms, status)
    assert got.extras == loc.extras


def test_subpackages_join_in_any_order() -> None:
    bodies = [jt808.encode_location(jt808.Location(1_780_000_000_000 + i * 10_000, 31.2, 121.5)) for i in range(90)]
    msg = jt808.Message(jt808.BATCH_LOCATION, "13800138000", 100, jt808.encode_batch(bodies), 1)
    parts = jt808.subpackages(msg)
    assert len(parts) == 3 and [p.package for p in parts] == [(3, 1), (3, 2), (3, 3)]
    joiner = jt808.Reassembler()
    wire = [jt808.decode(jt808.encode(p)) for p in parts]
    assert joiner.add(wire[2]) is None and joiner.add(wire[0]) is None
    whole = joiner.add(wire[1])
    assert whole is not None and whole.body == msg.body and not joiner.pending


def _profile(name: str) -> object:
    found = find_profile(name)
    assert found is not None
    return load_profile(Path(found))


@pytest.fixture
def link() -> tuple[Jt808Link, list[Sample]]:
    spec = LinkSpec.model_validate({"name": "fleet", "transport": "jt808", "port": 9808, "devices": [
        {"id": "tk-01", "profile": "dg-tanker-terminal", "ident": "13800138000"}]})
    samples: list[Sample] = []
    server = Jt808Link(spec, {"dg-tanker-terminal": _profile("dg-tanker-terminal")},  # type: ignore[dict-item]
                       sink=samples.append, telemetry=SelfTelemetry("gw"))
    return server, samples


def _answers(data: list[bytes]) -> list[jt808.Message]:
    out = []
    for chunk in data:
        for frame in jt808.FrameReader().feed(chunk):
            assert isinstance(frame, bytes)
            out.append(jt808.decode(frame))
    return out


@pytest.mark.parametrize("version", [None, 1])
def test_register_authenticate_report(link: tuple[Jt808Link, list[Sample]], version: int | None) -> None:
    server, samples = link
    session = server.session("test")
    phone = "13800138000"
    now = jt808.Location(t_ms=0, lat=31.245, lon=121.575, speed_kmh=48.2, heading_deg=181,
                         status=1 << jt808.STATUS_BITS["located"], alarms=1)
    now.t_ms = int(time.time()) * 1000
    report = jt808.encode(jt808.Message(jt808.LOCATION, phone, 3, jt808.encode_location(now), version))
    # a report before authentication is refused and not stored
    (refused,) = _answers(session.feed(report))
    assert jt808.decode_reply(refused.body) == (3, jt808.LOCATION, jt808.FAILED) and not samples
    (reg,) = _answers(session.feed(jt808.encode(jt808.Message(
        jt808.REGISTER, phone, 1, jt808.register_body(plate="沪A12345", version=version), version))))
    serial, result, code = jt808.decode_register_reply(reg.body)
    assert (reg.msg_id, reg.version, serial, result) == (jt808.REGISTER_REPLY, version, 1, jt808.REG_OK)
    (bad,) = _answers(session.feed(jt808.encode(jt808.Message(
        jt808.AUTHENTICATE, phone, 2, jt808.auth_body("wrong", version), version))))
    assert jt808.decode_reply(bad.body)[2] == jt808.FAILED
    (ok,) = _answers(session.feed(jt808.encode(jt808.Message(
        jt808.AUTHENTICATE, phone, 2, jt808.auth_body(code, version), version))))
    assert jt808.decode_reply(ok.body) == (2, jt808.AUTHENTICATE, jt808.OK)
    (ack,) = _answers(session.feed(report))
    assert jt808.decode_reply(ack.body) == (3, jt808.LOCATION, jt808.OK)
    (sample,) = samples
    assert sample.f == {"lat": 31.245, "lon": 121.575, "speed_kmh": 48.2, "heading_deg": 181.0, "gnss_fix": True,
                        "emergency": True}
    assert sample.urgent and sample.t == now.t_ms and sample.q == "good"


def test_unknown_terminal_is_refused_registration(link: tuple[Jt808Link, list[Sample]]) -> None:
    server, _ = link
    (reg,) = _answers(server.session("x").feed(jt808.encode(jt808.Message(
        jt808.REGISTER, "13900000000", 1, jt808.register_body()))))
    assert jt808.decode_register_reply(reg.body)[1] == jt808.REG_NO_TERMINAL
    assert server.telemetry.protocol_errors["unknown_device"] == 1
    # as Prometheus scrapes it: what deploy/prometheus's EdgeDevicesRefused alert reads
    exposed = generate_latest(server.telemetry.registry).decode()
    assert f'edge_protocol_errors_total{{link="{server.link.name}",reason="unknown_device"}} 1.0' in exposed


def test_fuzzed_streams_never_crash_a_session(link: tuple[Jt808Link, list[Sample]]) -> None:
    server, samples = link
    session = server.session("fuzz")
    assert isinstance(session, Jt808Session)
    code = jt808.auth_code(server.key, "13800138000")
    session.feed(jt808.encode(jt808.Message(jt808.AUTHENTICATE, "13800138000", 1, code.encode())))
    captured = jt808.decode(bytes.fromhex(SHENZHEN))
    captured.phone = "013800138000"
    captured.body = captured.body[:22] + jt808.bcd_time(int(time.time()) * 1000) + captured.body[28:]
    good = jt808.encode(captured)
    for data in fuzzed_stream(good, 808):
        session.feed(data)
        assert len(session.reader.buf) <= session.reader.max_frame + 200
        assert len(session.joiner.pending) <= session.joiner.limit + 1
    assert samples
    # and it keeps nothing from the stream (the samples go to the sink, which drops them here)
    server.sink = lambda _sample: None
    assert retained_growth(session.feed, fuzzed_stream(good, 8080, rounds=10_000)) < 64 * 1024



@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=1100))
def test_the_folded_check_code_is_the_xor_of_every_byte(data: bytes) -> None:
    expected = 0
    for byte in data:
        expected ^= byte
    assert jt808.check_code(data) == expected
