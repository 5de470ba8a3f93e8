"""`urbansense sim run` as a process: serves Modbus and MQTT on the scenario clock it is
given, writes the ground truth and the gateway configs, and stops when event time is over."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from pymodbus.client import ModbusTcpClient

from application.stack import Stack
from simulators.scenario import load_scenario
from urbansense.clock import ENV, ScenarioClock
from urbansense.config import load_gateway
from urbansense.mqtt import MqttClient, MqttSettings

pytestmark = pytest.mark.integration


SCENARIO = """
scenario: cli-test
duration: 1h
gateways: [pd-gw-water, pd-gw-air]
incidents:
  - {type: pipe_burst, device: wp-0103, at: 10m, duration: 20m}
faults:
  - {type: malformed_payload, device: aq-0104, at: 0, duration: 30m}
"""


def test_sim_run_serves_the_scenario_and_ends_with_its_event_time(private_stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "cli-test.yaml").write_text(SCENARIO)
    scenario = load_scenario(tmp_path / "cli-test.yaml")
    speed = scenario.duration_s / 8.0  # the whole scenario in 8 s of wall time
    clock = ScenarioClock.for_scenario(scenario.duration_s, speed)
    stations: queue.Queue[tuple[str, bytes]] = queue.Queue()
    watcher = MqttClient(MqttSettings.from_url(private_stack.mqtt_url), client_id=f"t-sim-run-{time.time_ns()}")
    watcher.subscribe("sensors/+/data", lambda m: stations.put((m.topic, bytes(m.payload))), qos=1)
    watcher.connect()
    truth_path, gw_dir = tmp_path / "truth.jsonl", tmp_path / "gateways"
    proc = subprocess.Popen(
        [sys.executable, "-m", "application.cli", "sim", "run", "--scenario", str(tmp_path / "cli-test.yaml"),
         "--seed", "5", "--free-ports", "--write-gateways", str(gw_dir), "--truth", str(truth_path),
         "--mqtt", private_stack.mqtt_url],
        env={**os.environ, ENV: clock.to_env()}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not (gw_dir / "pd-gw-water.yaml").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        water = load_gateway(gw_dir / "pd-gw-water.yaml")
        link = water.config.links[0]
        assert link.port != 15021  # served where --free-ports put it, and the config says so
        assert water.config.uplink.port == private_stack.mqtt_port
        assert water.config.wal.path == str((gw_dir / "pd-gw-water.wal").resolve())  # a log of its own
        client = ModbusTcpClient(link.host, port=link.port, timeout=1)
        for _ in range(50):
            if client.connect():
                break
            time.sleep(0.1)
        rr = client.read_holding_registers(0, count=7, device_id=link.devices[0].unit)
        client.close()
        assert not rr.isError() and any(rr.registers)
        assert proc.wait(30) == 0  # ended by itself when the scenario's event time was over
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        watcher.close()
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert "using the scenario clock" in output
    truth = [orjson.loads(line) for line in truth_path.read_text().splitlines()]
    assert truth == orjson.loads(orjson.dumps(scenario.ground_truth(5, clock.origin_event_ms)))
    got = []
    while not stations.empty():
        got.append(stations.get())
    assert {topic.split("/")[1] for topic, _ in got} == {f"aq-010{i}" for i in range(1, 7)}
    good = [orjson.loads(p) for _t, p in got if p.startswith(b"{") and p.endswith(b"}")]
    assert good and set(good[0]) == {"ts", "pm25", "pm10", "no2", "so2", "o3", "co", "temp", "humi"}
    # Station timestamps follow the scenario clock, not the wall clock.
    assert all(clock.origin_event_ms <= g["ts"] <= clock.origin_event_ms + scenario.duration_s * 1000
               for g in good)
    malformed = [p for t, p in got if t == "sensors/aq-0104/data" and not (p.startswith(b"{") and p.endswith(b"}"))]
    assert malformed, "aq-0104 publishes broken JSON during its malformed_payload fault"
