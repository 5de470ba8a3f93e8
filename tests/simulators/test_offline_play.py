"""play_offline: batch structure, determinism, and the wire contract."""

from __future__ import annotations

from itertools import islice

import pytest

from simulators.scenario import load_scenario
from tests.simulators.conftest import FIXED_NOW_MS
from urbansense import codec
from urbansense.config import ConfigError
from urbansense.schema import TelemetryBatch


def _wire(batches: list[TelemetryBatch]) -> list[bytes]:
    return [codec.encode_batch(b) for b in batches]


def test_same_seed_gives_identical_readings_and_another_seed_does_not() -> None:
    a = load_scenario("pudong-incidents")
    b = load_scenario("pudong-incidents")
    start = a.aligned_start_ms(FIXED_NOW_MS)
    first = [_wire(t.batches) for t in islice(a.play_offline(3, start), 0, 400, 7)]
    again = [_wire(t.batches) for t in islice(b.play_offline(3, start), 0, 400, 7)]
    other = [_wire(t.batches) for t in islice(b.play_offline(4, start), 0, 400, 7)]
    assert first == again
    assert first != other
    assert a.ground_truth(3, start) == b.ground_truth(3, start)


def test_values_depend_on_event_time_only_not_on_the_step() -> None:
    """What live mode relies on: a reading at t is the same whatever the poll rate."""
    s = load_scenario("pudong-incidents")
    start = s.aligned_start_ms(FIXED_NOW_MS)
    coarse = {t.t_ms: t for t in islice(s.play_offline(1, start, step_s=60), 60)}
    fine = {t.t_ms: t for t in islice(s.play_offline(1, start, step_s=15), 240)}
    for t_ms, tick in coarse.items():
        a = {x.dev: x.f for b in tick.batches for x in b.samples}
        c = {x.dev: x.f for b in fine[t_ms].batches for x in b.samples}
        assert a == c


def test_batches_follow_the_wire_contract() -> None:
    s = load_scenario("pudong-incidents")
    start = s.aligned_start_ms(FIXED_NOW_MS)
    inventory = {g.config.gateway: {d.id for _l, d in g.config.devices()} for g in s.loaded}
    seqs: dict[str, int] = {}
    ticks = list(islice(s.play_offline(1, start), 50))
    assert [t.t_ms for t in ticks] == [start + i * int(s.step_s * 1000) for i in range(50)]
    for tick in ticks:
        seen: dict[str, list[str]] = {}
        for batch in tick.batches:
            decoded = codec.decode_batch(codec.encode_batch(batch))  # validates every field
            assert decoded.district == "pudong"
            assert batch.seq == seqs.get(batch.gw, 0) + 1
            seqs[batch.gw] = batch.seq
            assert all(x.t == tick.t_ms for x in batch.samples)
            seen.setdefault(batch.gw, []).extend(x.dev for x in batch.samples)
        for gw, devs in seen.items():
            assert sorted(devs) == sorted(inventory[gw])  # one sample per device per poll


def test_district_scale_has_500_modbus_devices_on_several_ports() -> None:
    s = load_scenario("district-scale")
    assert s.device_count("modbus") >= 500
    families = {p for g in s.loaded for p in g.profiles}
    assert families == {"water-supply-point", "gas-regulator-station", "methane-detector", "lamp-controller",
                        "elevator-controller", "air-quality-station"}
    ports = {link.port for g in s.loaded for link in g.config.links if link.on_tcp_port}
    assert len(ports) >= 5
    tick = next(s.play_offline(1, s.default_start_ms(FIXED_NOW_MS)))
    assert sum(len(b.samples) for b in tick.batches) == s.device_count()


def test_quiet_day_has_no_incidents_and_a_night_minimum() -> None:
    s = load_scenario("quiet-day")
    start = s.default_start_ms(FIXED_NOW_MS)
    assert s.ground_truth(1, start) == []
    flows: dict[int, list[float]] = {}
    for tick in s.play_offline(1, start, step_s=1800):
        hour = round((tick.t_ms - start) / 3_600_000)
        flows[hour] = [float(x.f["flow_m3h"]) for b in tick.batches for x in b.samples if x.dev == "wp-0101"]
        assert all(x.q == "good" for b in tick.batches for x in b.samples)
    night = min(flows[h][0] for h in (2, 3, 4))
    evening = max(flows[h][0] for h in (19, 20))
    assert night < 0.6 * evening


def test_port_remapping_for_tests() -> None:
    shipped = load_scenario("pudong-incidents")
    moved = load_scenario("pudong-incidents", port_offset=1000)
    free = load_scenario("pudong-incidents", free_ports=True)

    def ports(s):
        return [link.port for g in s.loaded for link in g.config.links if link.on_tcp_port]

    assert ports(moved) == [p + 1000 for p in ports(shipped)]
    assert len(set(ports(free))) == len(set(ports(shipped))) and not set(ports(free)) & set(ports(shipped))


@pytest.mark.parametrize(("body", "expect"), [
    ("incidents: [{type: pipe_bust, device: wp-0101, at: 1h}]", "unknown incident 'pipe_bust'"),
    ("incidents: [{type: pipe_burst, device: md-0101, at: 1h}]", "happens on water-supply-point devices"),
    ("incidents: [{type: pipe_burst, device: wp-9999, at: 1h}]", "unknown device(s) wp-9999"),
    ("incidents: [{type: pipe_burst, device: wp-0101, at: 3h}]", "outside the scenario"),
    ("incidents: [{type: pipe_burst, device: wp-0101, at: 1h, params: {dorp_mpa: 1}}]", "unknown dorp_mpa"),
    ("faults: [{type: stuck, device: wp-0101, at: 1h}]", "needs 'metric'"),
    ("incidents: [{type: elevator_fault, device: el-0101, at: 1h, params: {code: 99}}]", "13 overspeed"),
    ("faults: [{type: malformed_payload, device: wp-0101, at: 1h}]", "MQTT fault"),
    ("faults: [{type: dead_device, device: wp-0101, at: soon}]", "is not a duration"),
])
def test_scenario_errors_say_what_and_how_to_fix(tmp_path, body: str, expect: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"scenario: bad\nduration: 2h\ngateways: [pd-gw-water, pd-gw-gas, pd-gw-air, pd-gw-lift]\n{body}\n")
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    assert expect in str(err.value)
    assert "bad.yaml" in str(err.value)


def test_the_example_scenario_next_to_the_readme_loads_and_plays() -> None:
    from pathlib import Path

    import simulators

    s = load_scenario(Path(simulators.__file__).parent / "example-scenario.yaml")
    start = s.default_start_ms(FIXED_NOW_MS)
    truth = s.ground_truth(1, start)
    assert {r["type"] for r in truth} == {"pipe_burst", "cable_theft", "dropout", "stuck", "gas_leak"}
    burst = next(r for r in truth if r["type"] == "pipe_burst")
    assert burst["hazard_threshold"] == 0.22 and burst["note"] == "main on Century Avenue"
    assert burst["hazard_crossed_at"] is not None
    assert next(s.play_offline(1, start)).batches
