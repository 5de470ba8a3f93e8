"""Request planning, report by exception, and the field tools (probe, check)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from application.stack import free_port
from edge.deadband import ReportByException
from edge.planner import plan_reads, requests_per_field, split_per_field
from simulators.device import DeviceTables
from simulators.modbus_server import ModbusEndpoint, ThreadedModbusServer
from tests.edge.conftest import METER_PROFILE, REPO, write_gateway
from urbansense import registers
from urbansense.config import FieldSpec, Profile, load_profile


def _fields(*specs: tuple[str, int, str]) -> list[FieldSpec]:
    return [FieldSpec(name=f"f{i}", table=table, address=a, type=t)  # type: ignore[arg-type]
            for i, (table, a, t) in enumerate(specs)]


@pytest.mark.parametrize(("addresses", "max_gap", "expected"), [
    # the Telegraf example: [1, 2, 3, 5, 6, 10, 11, 12, 14] without gaps
    ([1, 2, 3, 5, 6, 10, 11, 12, 14], 0, [(1, 3), (5, 2), (10, 3), (14, 1)]),
    ([1, 2, 3, 5, 6, 10, 11, 12, 14], 1, [(1, 6), (10, 5)]),
    ([1, 2, 3, 5, 6, 10, 11, 12, 14], 10, [(1, 14)]),
    ([0, 200], 10, [(0, 1), (200, 1)]),
])
def test_plan_merges_within_the_gap(addresses: list[int], max_gap: int, expected: list[tuple[int, int]]) -> None:
    plan = plan_reads(_fields(*[("holding", a, "uint16") for a in addresses]), max_gap=max_gap)
    assert [(r.address, r.count) for r in plan] == expected
    assert sum(len(r.fields) for r in plan) == len(addresses)


def test_plan_respects_pdu_limits_and_tables() -> None:
    regs = _fields(*[("input", a, "float32") for a in range(0, 300, 2)])
    plan = plan_reads(regs, max_gap=10)
    assert all(r.count <= 125 for r in plan) and len(plan) == 3
    bits = _fields(*[("coil", a, "bit") for a in range(0, 4100)])
    assert [r.count for r in plan_reads(bits)] == [2000, 2000, 100]
    mixed = _fields(("holding", 0, "uint16"), ("input", 0, "uint16"), ("discrete", 0, "bit"), ("coil", 0, "bit"))
    assert [r.table for r in plan_reads(mixed)] == ["holding", "input", "coil", "discrete"]
    # a wide value never straddles two reads
    wide = _fields(("holding", 0, "uint16"), ("holding", 123, "float64"))
    assert [(r.address, r.count) for r in plan_reads(wide)] == [(0, 1), (123, 4)]
    assert requests_per_field(regs) == 150


def test_fallback_splits_a_merged_read_into_one_per_field() -> None:
    profile = Profile.model_validate(METER_PROFILE)
    merged = plan_reads(profile.fields)[0]
    parts = split_per_field(merged)
    assert [(p.address, p.count) for p in parts] == [(0, 2), (2, 2), (4, 1), (5, 1), (6, 1), (12, 1)]


def test_report_by_exception_deadband_and_max_silence() -> None:
    rbe = ReportByException([FieldSpec(name="level", deadband=0.5, max_silence_s=60),
                             FieldSpec(name="door", type="bool", deadband=0.0), FieldSpec(name="plain")])
    sent = []
    for t_s, level, door in [(0, 10.0, False), (1, 10.2, False), (2, 10.6, False), (3, 10.7, True),
                             (63, 10.7, True)]:
        sent.append(rbe.filter({"level": level, "door": door, "plain": 1}, t_s * 1000))
    assert [("level" in s, "door" in s) for s in sent] == [
        (True, True), (False, False), (True, False), (False, True), (True, False)]
    assert all(s["plain"] == 1 for s in sent)  # fields without a deadband always go


def test_decode_every_way_finds_the_word_swapped_float() -> None:
    words = registers.encode("float32", 123.456, "CDAB")
    table = registers.decode_every_way(words)
    assert table["float32"]["CDAB"] == pytest.approx(123.456, rel=1e-6)
    assert table["float32"]["ABCD"] != pytest.approx(123.456, rel=1e-3)
    assert "float64" not in table  # does not fit in two registers
    assert table["uint16"]["BADC"] == int.from_bytes(words[0].to_bytes(2, "big")[::-1], "big")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "application.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=60)


@pytest.mark.integration
def test_probe_prints_registers_in_every_type_and_order(tmp_path: Path, meter_profile_dir: Path) -> None:
    profile = load_profile(meter_profile_dir / "test-meter.yaml")
    device = DeviceTables(profile)
    device.set("pressure_mpa", 1.25)
    port = free_port()
    server = ThreadedModbusServer([ModbusEndpoint("127.0.0.1", port, {7: device})])
    server.start()
    try:
        out = _cli("edge", "probe", "--host", "127.0.0.1", "--port", str(port), "--unit", "7",
                   "--address", "2", "--count", "4")
        refused = _cli("edge", "probe", "--host", "127.0.0.1", "--port", str(port), "--unit", "7",
                       "--address", "2", "--count", "100")
        silent = _cli("edge", "probe", "--host", "127.0.0.1", "--port", str(port), "--unit", "9",
                      "--address", "0", "--timeout", "0.3")
    finally:
        server.stop()
    assert out.returncode == 0, out.stderr
    float_row = next(line for line in out.stdout.splitlines() if line.strip().startswith("float32"))
    assert float_row.split()[1:] != [] and "1.25" in float_row.split()[2]  # the CDAB column
    assert "starting at 5 (+3)" in out.stdout and "int64" in out.stdout
    assert refused.returncode == 1 and "illegal data address" in refused.stderr
    assert silent.returncode == 1 and "did not answer" in silent.stderr


def test_check_names_file_key_and_fix(tmp_path: Path) -> None:
    bad_profile = copy.deepcopy(METER_PROFILE)
    bad_profile["fields"][2]["address"] = 3  # temp_c now overlaps pressure_mpa (2..3)
    bad_profile["fields"][5].pop("max")
    cfg = {"gateway": "gw-check", "district": "test", "links": [
        {"name": "a", "host": "127.0.0.1", "port": 1502, "devices": [
            {"id": "m-1", "profile": "test-meter", "unit": 1}, {"id": "m-2", "profile": "test-meter", "unit": 1}]},
        {"name": "b", "host": "127.0.0.1", "port": 1502, "devices": [
            {"id": "m-3", "profile": "test-meter", "unit": 0}]}]}
    path = write_gateway(tmp_path, cfg, [bad_profile])
    res = _cli("edge", "check", "--config", str(path))
    assert res.returncode == 2
    err = res.stderr
    assert "test-meter.yaml: fields[2].address: temp_c overlaps pressure_mpa" in err
    assert "links[0].devices[1].unit: m-2 and m-1 both use unit 1" in err
    assert "links[1]: link b uses 127.0.0.1:1502 like link a" in err
    assert "links[1].devices[0].unit: 0 is the broadcast address" in err
    assert "writable setpoint_pct has no min/max" in err
    assert err.count("fix:") >= 5
    # loader-level errors keep their file/key/fix too
    raw = yaml.safe_load(path.read_text())
    raw["links"][0]["devices"][0]["profil"] = "x"
    path.write_text(yaml.safe_dump(raw))
    res = _cli("edge", "check", "--config", str(path))
    assert res.returncode == 2 and "unknown key 'profil'" in res.stderr and "did you mean 'profile'" in res.stderr


def test_check_passes_the_example_config() -> None:
    res = _cli("edge", "check", "--config", str(REPO / "edge" / "example-gateway.yaml"))
    assert res.returncode == 0, res.stderr
    assert "Modbus reads per poll cycle" in res.stdout


def test_compiled_decoders_match_the_register_codec_for_every_shipped_field() -> None:
    """The per-field decoders and the whole-read decoders give what the register codec
    gives, for every field of every shipped profile in every byte/word order."""
    import math
    import random
    import struct

    from edge.decoding import decode_read, field_value, read_decoder
    from urbansense.config import load_profiles

    rng = random.Random(9)
    checked = whole_reads = 0
    for profile in load_profiles().values():
        fields = [f for f in profile.fields if f.address is not None]
        for order in (None, "ABCD", "CDAB", "BADC", "DCBA"):
            specs = fields if order is None else [f.model_copy(update={"order": order}) for f in fields]
            for req in plan_reads(specs):
                for _ in range(20):
                    data = [rng.choice((0, 1, 0x7FFF, 0x8000, 0xFFFF, rng.randrange(0x10000)))
                            for _ in range(req.count)]
                    got = decode_read(req, profile, data)
                    # the whole-read decoder (one struct call from the answer's bytes) agrees
                    whole = read_decoder(req, profile)
                    if whole is not None:
                        fast = whole(struct.pack(f">{req.count}H", *data))
                        assert fast.keys() == got.keys(), profile.profile
                        for name, value in fast.items():
                            assert type(value) is type(got[name]), (profile.profile, name)
                            assert value == got[name] or (isinstance(value, float) and math.isnan(value)
                                                          and math.isnan(float(got[name]))), (profile.profile, name)
                        whole_reads += 1
                    for spec in req.fields:
                        assert spec.address is not None
                        start = spec.address - req.address
                        want = field_value(spec, profile, data[start : start + spec.registers])
                        value = got[spec.name]
                        assert type(value) is type(want), (profile.profile, spec.name)
                        assert value == want or (isinstance(want, float) and math.isnan(want)
                                                 and math.isnan(float(value))), (profile.profile, spec.name)
                        checked += 1
    assert checked > 1000 and whole_reads > 500
