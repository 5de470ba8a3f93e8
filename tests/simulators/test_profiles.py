"""The profiles carry the field names other components code against, and the data
types real devices use."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.decoding import field_value
from simulators.device import DeviceTables
from simulators.readout import modbus_quantisers
from urbansense.config import load_profiles
from urbansense.schema import FieldValue

PROFILES = load_profiles()
REQUIRED = {
    "water-supply-point": {"pressure_mpa", "flow_m3h", "turbidity_ntu", "chlorine_mgl", "ph", "volume_total_m3"},
    "gas-regulator-station": {"pressure_kpa", "inlet_pressure_kpa", "temperature_c", "valve_open", "station_alarm"},
    "methane-detector": {"methane_lel_pct", "alarm_level", "sensor_fault"},
    "lamp-controller": {"lamp_on", "dim_level_pct", "voltage_v", "current_a", "power_w", "burning_hours",
                        "lamp_fault"},
    "elevator-controller": {"running", "direction", "floor", "door_open", "speed_ms", "load_pct", "fault_code",
                            "trapped_passenger", "door_open_while_moving", "outside_door_zone"},
    "air-quality-station": {"pm25_ugm3", "pm10_ugm3", "no2_ugm3", "so2_ugm3", "o3_ugm3", "co_mgm3",
                            "temperature_c", "humidity_pct"},
}


def test_every_family_has_its_agreed_field_names() -> None:
    for name, fields in REQUIRED.items():
        assert fields <= {f.name for f in PROFILES[name].fields}, name


def test_profiles_use_the_data_types_real_devices_do() -> None:
    specs = [(p, f) for p in PROFILES.values() if p.protocol == "modbus" for f in p.fields]
    assert any(f.type == "float32" and f.order_in(p) == "CDAB" for p, f in specs)
    assert any(f.type == "int16" and f.scale == 0.1 for _p, f in specs)
    assert any(f.type == "uint32" and f.registers == 2 for _p, f in specs)
    assert any(f.table == "coil" and f.writable for _p, f in specs)
    packed: dict[tuple[str, int], int] = {}
    for p, f in specs:
        if f.bit is not None:
            packed[(p.profile, f.address or 0)] = packed.get((p.profile, f.address or 0), 0) + 1
    assert max(packed.values()) >= 2  # several status bits in one register
    lamp = PROFILES["lamp-controller"]
    dim = lamp.field("dim_level_pct")
    assert dim.writable and (dim.min, dim.max) == (0, 100)
    lift = PROFILES["elevator-controller"]
    assert lift.field("trapped_passenger").urgent and lift.field("door_open_while_moving").urgent
    assert lift.field("direction").enum == {0: "idle", 1: "up", 2: "down"}
    assert lift.conventions["fault_codes"][0] == "none"
    assert "vol%" in PROFILES["methane-detector"].conventions["lel_basis"]
    assert PROFILES["air-quality-station"].protocol == "mqtt"
    assert PROFILES["air-quality-station"].topic == "sensors/{device}/data"


def test_no_two_fields_overlap_in_a_register_unless_they_are_bits() -> None:
    for p in PROFILES.values():
        if p.protocol != "modbus":
            continue
        used: dict[tuple[str, int], str] = {}
        for f in p.fields:
            for i in range(f.registers):
                key = (f.table, (f.address or 0) + i)
                if key in used:
                    assert f.bit is not None, f"{p.profile}: {f.name} overlaps {used[key]}"
                used[key] = f.name


@pytest.mark.parametrize("profile", [p for p in PROFILES.values() if p.protocol == "modbus"],
                         ids=lambda p: p.profile)
def test_offline_readout_equals_what_the_edge_decodes_from_registers(profile) -> None:
    quantise = modbus_quantisers(profile)

    @settings(max_examples=60, deadline=None)
    @given(st.data())
    def check(data: st.DataObject) -> None:
        tables = DeviceTables(profile)
        values: dict[str, FieldValue] = {}
        for f in profile.fields:
            if f.type in ("bit", "bool"):
                values[f.name] = data.draw(st.booleans())
            elif f.enum is not None:
                values[f.name] = data.draw(st.sampled_from(sorted(f.enum.values())))
            else:
                hi = 1000.0 if f.max is None else f.max
                lo = f.min if f.min is not None else (-500.0 if f.type.startswith(("int", "float")) else 0.0)
                values[f.name] = data.draw(st.floats(lo, hi, allow_nan=False))
        tables.update(values)
        for f in profile.fields:
            words = tables.read(f.table, f.address or 0, f.registers)
            assert words is not None
            assert field_value(f, profile, words) == quantise[f.name](values[f.name]), f.name

    check()


def test_the_example_profile_is_valid_and_serves() -> None:
    from urbansense.config import Profile, load_model
    from urbansense.paths import GATEWAYS_DIR

    example = load_model(GATEWAYS_DIR.parent / "example-profile.yaml", Profile)
    tables = DeviceTables(example)
    tables.update({"flow_m3h": 99.5, "high_level_alarm": True, "mode": "manual"})
    quantise = modbus_quantisers(example)
    for name, value in (("flow_m3h", 99.5), ("high_level_alarm", True), ("mode", "manual")):
        spec = example.field(name)
        words = tables.read(spec.table, spec.address or 0, spec.registers)
        assert words is not None and field_value(spec, example, words) == quantise[name](value) == value
