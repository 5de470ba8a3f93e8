"""field-protocols live: the simulator's HJ 212 stations, JT/T 808 terminals and serial
device server against real edge agents and a real broker. Every reading a station or
terminal had answered reaches the broker at its own time, the corrupted packets of a
faulty station are refused and counted, a terminal's coverage gap comes back as a
backfill, and the devices behind the serial server are read."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from application.stack import Stack
from simulators.field_protocols import Hj212Station, Jt808Terminal
from simulators.runner import LiveSimulator
from simulators.scenario import load_scenario
from tests.edge.conftest import AgentThread, Collector

pytestmark = pytest.mark.integration
SEED = 11
STEP_MS = 60_000


def test_field_devices_through_real_edge_agents(tmp_path: Path, stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("URBANSENSE_HJ212_PASSWORD", "a1b2c3")
    monkeypatch.setenv("URBANSENSE_JT808_AUTH_KEY", "test-key-for-the-terminals")
    sc = load_scenario("field-protocols", free_ports=True)
    end = int(time.time() * 1000) // 1000 * 1000
    start = end - int(sc.duration_s * 1000)
    paths = sc.write_gateway_configs(tmp_path / "gw", mqtt_port=stack.mqtt_port, seed=SEED)
    sim = LiveSimulator(sc, SEED, start, stack.mqtt_url)
    truth = sc.ground_truth(SEED, start)
    gap = next(e for e in truth if e["type"] == "coverage_gap")
    bad_crc = next(e for e in truth if e["type"] == "malformed_payload")
    collector = Collector(stack.mqtt_url, "city/pudong/+/telemetry")
    sim.start()
    agents = [AgentThread(p, stack.mqtt_url, tmp_path / f"{p.stem}.wal") for p in paths]
    try:
        for a in agents:
            a.__enter__().wait_ready()
        for t in range(start, end, STEP_MS):
            sim.step(t)
            sim.publish_stations(t)
        clients = [c for _d, c in sim.field_devices]
        deadline = time.monotonic() + 30
        while any(c.unconfirmed for c in clients):
            assert time.monotonic() < deadline, [(type(c).__name__, c.unconfirmed) for c in clients]
            for c in clients:
                c.flush()
                c.read_answers(0.01)
        collector.drain(2.0)
        errors = {name: dict(a.agent.telemetry.protocol_errors) for a, name in zip(agents, [p.stem for p in paths],
                                                                                    strict=True)}
    finally:
        for a in agents:
            a.__exit__(None, None, None)
        sim.stop()
        collector.close()
    by_dev: dict[str, set[int]] = {}
    for s in collector.samples():
        if s.q == "good":
            by_dev.setdefault(s.dev, set()).add(s.t)
    for dev, client in sim.field_devices:
        sent = {t for t, _v in client.record}
        assert sent, f"{dev.id} sent nothing"
        assert sent <= by_dev.get(dev.id, set()), f"{dev.id}: {len(sent - by_dev.get(dev.id, set()))} lost"
        if isinstance(client, Jt808Terminal):
            assert client.registrations == 1
    # the faulty station's packets with a bad CRC were refused and counted
    assert errors["pd-gw-env-212"].get("crc", 0) > 0
    assert isinstance(next(c for d, c in sim.field_devices if d.id == bad_crc["device"]), Hj212Station)
    # a terminal out of coverage: what it held came back, each report at its own time
    for dev in gap["devices"]:
        inside = {t for t in by_dev[dev] if gap["start"] <= t < gap["end"]}
        assert len(inside) >= (gap["end"] - gap["start"]) // STEP_MS - 1
    # the water points behind the serial server were read over RTU framing
    assert {d for d in by_dev if d.startswith("wp-")} >= {"wp-2102", "wp-2103", "wp-2104"}
