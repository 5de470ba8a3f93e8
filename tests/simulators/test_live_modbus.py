"""Live mode on real Modbus TCP: what a client reads equals what play_offline says the
edge gets; faulty devices go silent or answer exceptions; lamp commands are obeyed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from edge.decoding import decode_read
from edge.planner import plan_reads
from simulators.runner import LiveSimulator
from simulators.scenario import load_scenario
from simulators.world import SimDevice
from tests.simulators.conftest import FIXED_NOW_MS, SEED

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def live() -> Iterator[LiveSimulator]:
    scenario = load_scenario("pudong-incidents", free_ports=True)
    sim = LiveSimulator(scenario, SEED, scenario.aligned_start_ms(FIXED_NOW_MS), serve_stations=False)
    sim.start()
    yield sim
    sim.stop()


def read_device(client: ModbusTcpClient, dev: SimDevice) -> dict[str, object]:
    out: dict[str, object] = {}
    for req in plan_reads(dev.profile.fields):
        unit = dev.spec.unit
        if req.table == "holding":
            rr = client.read_holding_registers(req.address, count=req.count, device_id=unit)
        elif req.table == "input":
            rr = client.read_input_registers(req.address, count=req.count, device_id=unit)
        elif req.table == "coil":
            rr = client.read_coils(req.address, count=req.count, device_id=unit)
        else:
            rr = client.read_discrete_inputs(req.address, count=req.count, device_id=unit)
        if rr.isError():
            raise RuntimeError(f"exception code {rr.exception_code}")
        words = [int(b) for b in rr.bits[: req.count]] if req.table in ("coil", "discrete") else rr.registers
        out.update(decode_read(req, dev.profile, words))
    return out


def _client(sim: LiveSimulator, dev: SimDevice) -> ModbusTcpClient:
    client = ModbusTcpClient(dev.link.host, port=dev.link.port, timeout=0.5, retries=0)
    assert client.connect()
    return client


def test_every_device_reads_back_what_offline_play_publishes(live: LiveSimulator) -> None:
    truth = {r["type"]: r for r in live.scenario.ground_truth(SEED, live.start_ms)}
    # Moments with incidents under way: burst, entrapment + gas leak, cable theft at night.
    for t in (int(truth["pipe_burst"]["start"]) + 300_000, int(truth["elevator_entrapment"]["start"]) + 60_000,
              int(truth["cable_theft"]["start"]) + 60_000):
        live.step(t)
        clients: dict[int, ModbusTcpClient] = {}
        try:
            for dev in live.modbus_devices:
                expected = dev.reading(t)
                if expected.values is None:
                    continue
                client = clients.get(dev.link.port) or clients.setdefault(dev.link.port, _client(live, dev))
                assert read_device(client, dev) == expected.values, dev.id
        finally:
            for c in clients.values():
                c.close()


def test_dead_device_times_out_and_exception_device_answers_code_4(live: LiveSimulator) -> None:
    truth = {r["type"]: r for r in live.scenario.ground_truth(SEED, live.start_ms)}
    dead = live.world.devices["gs-0104"]
    failing = live.world.devices["lc-0103"]
    live.step(int(truth["dead_device"]["start"]) + 60_000)
    live.step(int(truth["modbus_exception"]["start"]) + 60_000)  # both faults are on now
    client = _client(live, dead)
    try:
        with pytest.raises(ModbusIOException):
            client.read_holding_registers(0, count=2, device_id=dead.spec.unit)
    finally:
        client.close()
    client = _client(live, failing)
    try:
        rr = client.read_holding_registers(0, count=2, device_id=failing.spec.unit)
        assert rr.isError() and rr.exception_code == 4
        # Its neighbours on the same port still answer.
        other = live.world.devices["lc-0104"]
        assert not client.read_holding_registers(0, count=2, device_id=other.spec.unit).isError()
    finally:
        client.close()
    live.step(live.start_ms)  # faults over
    client = _client(live, dead)
    try:
        assert not client.read_holding_registers(0, count=2, device_id=dead.spec.unit).isError()
    finally:
        client.close()


def test_lamp_commands_written_over_modbus_override_the_schedule(live: LiveSimulator) -> None:
    lamp = live.world.devices["lc-0111"]
    night = int({r["type"]: r for r in live.scenario.ground_truth(SEED, live.start_ms)}["lamp_failure"]["start"])
    live.step(night)
    client = _client(live, lamp)
    try:
        assert read_device(client, lamp)["lamp_on"] is True
        assert not client.write_register(0, 50, device_id=lamp.spec.unit).isError()  # dim to 50 %
        live.step(night + 60_000)
        values = read_device(client, lamp)
        assert values["dim_level_pct"] == 50 and 70 < float(values["power_w"]) < 80  # type: ignore[arg-type]
        assert not client.write_coil(0, False, device_id=lamp.spec.unit).isError()  # switch off
        live.step(night + 120_000)
        values = read_device(client, lamp)
        assert values["lamp_on"] is False and float(values["power_w"]) < 1  # type: ignore[arg-type]
        # Read-only registers refuse writes (ILLEGAL DATA ADDRESS), out-of-range values
        # too (ILLEGAL DATA VALUE: dim_level_pct is 0..100 in the profile).
        rr = client.write_register(1, 999, device_id=lamp.spec.unit)
        assert rr.isError() and rr.exception_code == 2
        rr = client.write_register(0, 150, device_id=lamp.spec.unit)
        assert rr.isError() and rr.exception_code == 3
        assert read_device(client, lamp)["dim_level_pct"] == 50
    finally:
        client.close()
