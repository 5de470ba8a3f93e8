"""The scenario clock reaches the rest of the system: `sim run --with-edge` starts the edge
agents with the same URBANSENSE_CLOCK, so telemetry timestamps are scenario event time
and the readings carry the scenario's incidents."""

from __future__ import annotations

import queue
import subprocess
import sys
import time
from pathlib import Path

import pytest

from application.stack import Stack
from simulators.scenario import load_scenario
from urbansense import codec
from urbansense.mqtt import MqttClient, MqttSettings
from urbansense.schema import Sample

pytestmark = pytest.mark.integration

SCENARIO = """
scenario: edge-test
duration: 2h
start_local: "10:00"
gateways: [pd-gw-water, pd-gw-lift, pd-gw-air]
incidents:
  - {type: elevator_entrapment, device: el-0102, at: 0, duration: 2h}
faults:
  - {type: dead_device, device: wp-0104, at: 0, duration: 2h}
"""


def test_edge_agents_stamp_scenario_event_time(private_stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "edge-test.yaml"
    path.write_text(SCENARIO)
    scenario = load_scenario(path)
    got: queue.Queue[bytes] = queue.Queue()
    watcher = MqttClient(MqttSettings.from_url(private_stack.mqtt_url), client_id=f"t-edge-{time.time_ns()}")
    watcher.subscribe("city/pudong/+/telemetry", lambda m: got.put(bytes(m.payload)), qos=1)
    watcher.connect()
    assert watcher.wait_subscribed(10)
    wall_start = int(time.time() * 1000)
    proc = subprocess.run(
        [sys.executable, "-m", "application.cli", "sim", "run", "--scenario", str(path), "--speed", "720",
         "--free-ports", "--with-edge", "--write-gateways", str(tmp_path / "gw"), "--mqtt", private_stack.mqtt_url],
        capture_output=True, text=True, timeout=60)
    watcher.close()  # what the edges published while they ran is enough: the checks below are per sample
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    samples: list[Sample] = []
    while not got.empty():
        samples.extend(codec.decode_batch(got.get()).samples)
    assert samples, "no telemetry: see edge logs in " + str(tmp_path / "gw" / "logs")
    # Aligned to 10:00 Shanghai and back-dated: every timestamp is the scenario's, in the past.
    start = scenario.aligned_start_ms(wall_start - 7_200_000 + 10_000)
    late = max(s.t for s in samples) - (start + 7_200_000)
    assert all(start <= s.t <= start + 7_200_000 + 60_000 for s in samples), (start, min(s.t for s in samples), late)
    assert max(s.t for s in samples) - min(s.t for s in samples) > 30 * 60_000  # ~2 h of event time in 10 s
    devices = {s.dev for s in samples}
    assert {"wp-0101", "el-0102", "aq-0101"} <= devices
    assert all(s.f["trapped_passenger"] for s in samples if s.dev == "el-0102" and s.q == "good")
    assert any(s.dev == "el-0102" and s.urgent for s in samples)
    assert all(s.q == "bad" for s in samples if s.dev == "wp-0104")
