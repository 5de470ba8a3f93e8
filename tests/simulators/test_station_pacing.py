"""MQTT stations in live mode report every scenario step of event time even when the
scenario is sped up (before: once per wall-clock poll interval, so at x240 a station
reported every four minutes of its day and a passing source could fall between)."""

from __future__ import annotations

import threading
import time

import pytest

from application.stack import Stack
from simulators.runner import LiveSimulator
from simulators.scenario import load_scenario
from tests.dates import pinned_start
from tests.waiting import wait_for
from urbansense.clock import ScenarioClock

pytestmark = pytest.mark.integration


def test_stations_report_every_step_of_event_time_at_high_speed(stack: Stack) -> None:
    scenario = load_scenario("pudong-rainy-quiet", free_ports=True)
    start = pinned_start("pudong-rainy-quiet")
    sim = LiveSimulator(scenario, 1, start, stack.mqtt_url, serve_stations=True)
    speed = 600.0
    sim.start()
    try:
        assert sim.mqtt is not None
        sim.mqtt.connect()
        clock = ScenarioClock(start, int(time.time() * 1000), speed)
        stop = threading.Event()
        runner = threading.Thread(target=sim.run, kwargs={"clock": clock, "stop": stop, "tick_s": 0.02})
        runner.start()
        wait_for(lambda: clock.now_ms() - start >= 20 * 60_000, 30, "20 min of event time to pass")
        stop.set()
        runner.join(10)
        event_span_ms = clock.now_ms() - start
    finally:
        sim.stop()
    reports_each = sim.stats.published / len(sim.stations)
    # one per minute of event time (20 in 20 min), where a wall-clock pace gave 2
    assert reports_each >= 0.7 * event_span_ms / (scenario.step_s * 1000)
