"""MQTT sensors on a gateway-local broker, and Modbus RTU over a serial line (a socat
pseudo-terminal pair against the simulator's pymodbus RTU server)."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from application.stack import Stack
from edge.mqtt_input import MqttInputLink
from simulators.device import DeviceTables
from tests.edge.conftest import METER_PROFILE, AgentThread, Collector, RtuSim, unique, write_gateway
from urbansense.config import load_profile
from urbansense.mqtt import MqttClient, MqttSettings

pytestmark = pytest.mark.integration

AIR_PROFILE = {
    "profile": "test-air", "measurement": "air", "protocol": "mqtt", "topic": "sensors/{device}/data",
    "fields": [
        {"name": "pm25_ugm3", "key": "pm25"},
        {"name": "no2_ugm3", "key": "no2_ppb", "scale": 1.88},
        {"name": "temp_c", "deadband": 0.5, "max_silence_s": 60},
        {"name": "smoke_alarm", "type": "bool", "urgent": True},
    ],
}


def test_mqtt_sensors_map_through_the_profile(tmp_path: Path, stack: Stack) -> None:
    gw = unique("gw")
    dev = unique("aq")
    host, port = "127.0.0.1", stack.mqtt_port
    cfg = {"gateway": gw, "district": "test", "batch": {"max_interval_s": 0.2},
           "links": [{"name": "local-broker", "transport": "mqtt", "host": host, "port": port,
                      "devices": [{"id": dev, "profile": "test-air"}]}]}
    path = write_gateway(tmp_path, cfg, [AIR_PROFILE])
    collector = Collector(stack.mqtt_url, f"city/test/{gw}/telemetry")
    sensor = MqttClient(MqttSettings.from_url(stack.mqtt_url), client_id=unique("sensor"))
    sensor.connect()
    payloads = [
        {"pm25": 35.0, "no2_ppb": 10, "temp_c": 20.0, "smoke_alarm": False},
        {"pm25": 36.0, "no2_ppb": 10, "temp_c": 20.2, "smoke_alarm": False},  # temp within deadband
        {"pm25": 37.0, "no2_ppb": 10, "temp_c": 20.8, "smoke_alarm": True},   # temp moved; alarm
        {"pm25": "broken", "no2_ppb": 11},                                     # one bad value
        b"not json at all",
    ]
    with AgentThread(path, stack.mqtt_url, tmp_path / "wal") as run:
        run.wait_ready()
        for p in payloads:
            sensor.publish_wait(f"sensors/{dev}/data", p if isinstance(p, bytes) else orjson.dumps(p))
            time.sleep(0.1)
        state = run.agent.pushed_links["local-broker"].devices[dev]
        collector.until(lambda: state.messages == 5 and len(collector.samples(dev)) == 5, 15,
                        "the five sensor messages as five samples")
    sensor.close()
    collector.close()
    samples = collector.samples(dev)
    assert [s.q for s in samples] == ["good", "good", "good", "uncertain", "bad"]
    assert samples[0].f == {"pm25_ugm3": 35.0, "no2_ugm3": pytest.approx(18.8), "temp_c": 20.0,
                            "smoke_alarm": False}
    assert "temp_c" not in samples[1].f
    assert samples[2].f["temp_c"] == 20.8 and samples[2].urgent is True
    assert samples[3].f == {"no2_ugm3": pytest.approx(20.68)}
    assert samples[3].err is not None and "pm25" in samples[3].err  # the uncertain sample says why
    assert "JSON" in (samples[4].err or "")


TERMINAL_PROFILE = {
    "profile": "test-terminal", "measurement": "vehicle", "protocol": "mqtt", "topic": "vehicles/{device}/position",
    "timestamp_key": "ts",
    "fields": [{"name": "lat"}, {"name": "lon"}, {"name": "speed_kmh", "key": "spd"},
               {"name": "emergency", "key": "sos", "type": "bool", "urgent": True}],
}


def test_a_terminal_s_backlog_keeps_each_report_s_own_time(tmp_path: Path, stack: Stack) -> None:
    gw = unique("gw")
    dev = unique("vt")
    cfg = {"gateway": gw, "district": "test", "batch": {"max_interval_s": 0.2},
           "links": [{"name": "fleet", "transport": "mqtt", "host": "127.0.0.1", "port": stack.mqtt_port,
                      "devices": [{"id": dev, "profile": "test-terminal"}]}]}
    path = write_gateway(tmp_path, cfg, [TERMINAL_PROFILE])
    collector = Collector(stack.mqtt_url, f"city/test/{gw}/telemetry")
    terminal = MqttClient(MqttSettings.from_url(stack.mqtt_url), client_id=unique("terminal"))
    terminal.connect()
    now = int(time.time() * 1000)
    held = [{"ts": now - (30 - k) * 10_000, "lat": 31.24 + k * 1e-4, "lon": 121.578, "spd": 50.0, "sos": False}
            for k in range(30)]  # five minutes out of coverage, uploaded as one array
    with AgentThread(path, stack.mqtt_url, tmp_path / "wal") as run:
        run.wait_ready()
        terminal.publish_wait(f"vehicles/{dev}/position", orjson.dumps(held))
        terminal.publish_wait(f"vehicles/{dev}/position", orjson.dumps(
            {"ts": now + 3_600_000, "lat": 31.25, "lon": 121.578, "spd": 0.0, "sos": True}))  # clock an hour fast
        terminal.publish_wait(f"vehicles/{dev}/position", orjson.dumps(
            {"ts": "yesterday", "lat": 31.25, "lon": 121.578, "spd": 0.0, "sos": False}))
        collector.until(lambda: len(collector.samples(dev)) >= 32, 15, "the terminal's 32 reports")
        collector.drain(0.3)  # and nothing more: a 33rd sample would fail the count below
    terminal.close()
    collector.close()
    samples = collector.samples(dev)
    assert len(samples) == 32
    good = sorted((s for s in samples if s.q == "good"), key=lambda s: s.t)
    assert [s.t for s in good] == [h["ts"] for h in held]  # each where it was measured, none lost
    assert good[0].f["lat"] == pytest.approx(31.24)
    fast = next(s for s in samples if s.q == "uncertain" and s.f.get("emergency"))
    bad = next(s for s in samples if s.q == "uncertain" and not s.f.get("emergency"))
    # a time the gateway cannot believe: stamped on receipt, marked uncertain with the reason
    assert fast.q == "uncertain" and abs(fast.t - now) < 60_000 and "ahead of the gateway clock" in (fast.err or "")
    assert fast.urgent is True and fast.f["emergency"] is True
    assert bad.q == "uncertain" and "not an epoch-ms time" in (bad.err or "")


def test_modbus_rtu_over_a_serial_line(tmp_path: Path, stack: Stack, pty_pair: tuple[str, str],
                                       meter_profile_dir: Path) -> None:
    server_port, agent_port = pty_pair
    profile = load_profile(meter_profile_dir / "test-meter.yaml")
    healthy, dead = DeviceTables(profile), DeviceTables(profile)
    healthy.set("pressure_mpa", 0.45)
    dead.silent = True
    gw = unique("gw")
    cfg = {"gateway": gw, "district": "test", "poll_interval_s": 0.5, "batch": {"max_interval_s": 0.2},
           "links": [{"name": "rs485", "transport": "rtu", "timeout_s": 0.3, "pause_s": 0.005,
                      "serial": {"port": agent_port, "baudrate": 19200},
                      "devices": [{"id": "rtu-1", "profile": "test-meter", "unit": 1},
                                  {"id": "rtu-2", "profile": "test-meter", "unit": 2}]}]}
    path = write_gateway(tmp_path, cfg, [METER_PROFILE])
    collector = Collector(stack.mqtt_url, f"city/test/{gw}/telemetry")
    with RtuSim(server_port, {1: healthy, 2: dead}), AgentThread(path, stack.mqtt_url, tmp_path / "wal") as run:
        collector.drain(3.0)
        # a command goes through the same serial transaction queue
        result = run.call(run.agent.handle_command(orjson.dumps(
            {"id": "r1", "dev": "rtu-1", "field": "setpoint_pct", "value": 12.5})))
    collector.close()
    good = collector.samples("rtu-1")
    assert len(good) >= 4 and all(s.q == "good" for s in good)
    assert good[-1].f["pressure_mpa"] == pytest.approx(0.45, rel=1e-6)
    assert good[-1].f["volume_m3"] == 123456789012
    bad = collector.samples("rtu-2")
    assert bad and all(s.q == "bad" and s.err == "timeout" for s in bad)
    assert result["ok"] is True and healthy.values["setpoint_pct"] == pytest.approx(12.5)


def test_messages_received_in_the_same_millisecond_keep_apart(tmp_path: Path, stack: Stack) -> None:
    """A sensor that sends no time of its own is stamped on receipt; a burst (its own
    queue flushed after a reconnect) must not share one time, or InfluxDB would keep one
    point of it."""
    gw, dev = unique("gw"), unique("aq")
    cfg = {"gateway": gw, "district": "test", "batch": {"max_interval_s": 0.2},
           "links": [{"name": "local-broker", "transport": "mqtt", "host": "127.0.0.1", "port": stack.mqtt_port,
                      "devices": [{"id": dev, "profile": "test-air"}]}]}
    path = write_gateway(tmp_path, cfg, [AIR_PROFILE])
    collector = Collector(stack.mqtt_url, f"city/test/{gw}/telemetry")
    with AgentThread(path, stack.mqtt_url, tmp_path / "wal") as run:
        run.wait_ready()
        link = run.agent.pushed_links["local-broker"]
        assert isinstance(link, MqttInputLink)
        burst = [orjson.dumps({"pm25": 10.0 + k, "no2_ppb": 10}) for k in range(20)]

        async def arrive_at_once() -> None:  # as the network thread hands a burst over
            for payload in burst:
                link.handle(f"sensors/{dev}/data", payload)

        run.call(arrive_at_once())
        collector.until(lambda: len(collector.samples(dev)) == 20, 15, "the burst's 20 samples")
    collector.close()
    times = [s.t for s in collector.samples(dev)]
    assert len(set(times)) == 20 and times == sorted(times)
    assert [s.f["pm25_ugm3"] for s in collector.samples(dev)] == [10.0 + k for k in range(20)]
