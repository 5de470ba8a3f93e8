"""A recommended command, confirmed by an operator, end to end: the rules engine's drawdown
alert carries the command; `urbansense edge command --alert` sends it over a real
Mosquitto to a real edge agent, which writes the pump station's coil on the simulator's
Modbus TCP server, reads it back and answers; the simulated sump then draws down."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from application.backtest import run_scenario
from application.stack import Stack
from simulators.runner import LiveSimulator
from simulators.scenario import load_scenario
from tests.dates import pinned_start
from tests.edge.conftest import AgentThread
from urbansense import codec

pytestmark = pytest.mark.integration
SCENARIO = "pudong-rainstorm-day"
SEED = 1


def test_an_operator_confirms_the_recommended_drawdown_and_the_standby_pump_starts(tmp_path: Path,
                                                                                    stack: Stack) -> None:
    start = pinned_start(SCENARIO)
    played = run_scenario(SCENARIO, seed=SEED, start_ms=start)
    alert = next(e for e in played.events if e.rule == "flood.drawdown_recommended" and e.state == "firing")
    assert alert.command is not None and alert.command["field"] == "pump3_run" and alert.command["value"] is True
    station = str(alert.command["dev"])
    alert_file = tmp_path / "alert.json"
    alert_file.write_bytes(codec.encode_alert(alert))

    scenario = load_scenario(SCENARIO, free_ports=True)
    sim = LiveSimulator(scenario, SEED, start, serve_stations=False)
    sim.start()
    try:
        sim.step(alert.t)
        assert sim.tables[station].values["pump3_run"] is False
        mqtt_port = int(stack.mqtt_url.rsplit(":", 1)[1])
        config = next(p for p in scenario.write_gateway_configs(tmp_path / "gw", mqtt_port=mqtt_port)
                      if p.name == "pd-gw-flood.yaml")
        with AgentThread(config, stack.mqtt_url, tmp_path / "wal") as agent:
            agent.wait_ready()
            done = subprocess.run([sys.executable, "-m", "application.cli", "edge", "command", "--alert",
                                   str(alert_file), "--mqtt", stack.mqtt_url, "--timeout", "20"],
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stdout + done.stderr
            assert f"done: {station}.pump3_run = True (read back)" in done.stdout
            # the write reached the device: the model runs the standby pump from now on
            assert sim.tables[station].commands["pump3_run"] is True
            offline = scenario.build_world(SEED, start).devices[station]
            later = alert.t + 15 * 60_000
            sim.step(later)  # the tick writes the model's values at `later` into the registers
            drawn = float(sim.tables[station].values["sump_level_m"])
            untouched = float(offline.model.values(later, [i for i in offline.incidents
                                                           if i.start_ms <= later])["sump_level_m"])
            assert drawn < untouched - 0.3
    finally:
        sim.stop()


def test_a_command_without_a_running_gateway_says_so(tmp_path: Path, stack: Stack) -> None:
    done = subprocess.run([sys.executable, "-m", "application.cli", "edge", "command", "--district", "pudong",
                           "--gateway", "pd-gw-nobody", "--dev", "ps-0101", "--field", "pump3_run", "--value", "true",
                           "--mqtt", stack.mqtt_url, "--timeout", "1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "no answer from gateway pd-gw-nobody" in done.stderr and "edge agent running" in done.stderr


def test_command_values_are_read_as_the_command_path_takes_them() -> None:
    """`--value` is true/false, a number, or else the text itself for the gateway to judge:
    a lone '-' or '.' used to stop the CLI with a JSON decoding traceback."""
    from edge.cli import _command_value

    assert _command_value("TRUE") is True and _command_value("false") is False
    assert _command_value("40") == 40 and isinstance(_command_value("40"), int)
    assert _command_value("-2") == -2 and _command_value("40.5") == 40.5 and _command_value("1e2") == 100.0
    for text in ("-", ".", "", "abc", "nan", "inf"):
        assert _command_value(text) == text
