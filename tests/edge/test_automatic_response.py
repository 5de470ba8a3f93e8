"""An automatic response end to end, on real parts: methane rises in a tunnel's gas
compartment (the simulator's Modbus server), the edge agent reports it over a real
Mosquitto, the rules service fires `tunnel.gas_alarm` and sends the fans' command by
itself; the edge writes the coil, reads it back and answers; the answer joins the alert's
history (an event carrying `response`, on MQTT and in InfluxDB); the simulated fans then
carry the gas out."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from application.backtest import run_scenario
from application.stack import Stack
from rules.service import RulesService, ServiceConfig
from simulators.runner import LiveSimulator
from simulators.scenario import load_scenario
from tests.dates import pinned_start
from tests.edge.conftest import AgentThread
from tests.waiting import wait_for
from urbansense import codec, topics
from urbansense.influx import InfluxClient
from urbansense.mqtt import MqttClient, MqttSettings
from urbansense.registry import FAMILIES_DIR
from urbansense.schema import AlertEvent, Sample, TelemetryBatch

pytestmark = pytest.mark.integration
SCENARIO = "tunnel-day"
SEED = 1


def _rules_without_delay(folder: Path) -> Path:
    """The shipped tunnel rules, with the gas alarm's 30 s hold taken out (the test would
    otherwise wait 30 s of wall time for it)."""
    doc = yaml.safe_load((FAMILIES_DIR / "tunnel" / "rules.yaml").read_text())
    for rule in doc["rules"]:
        if rule["id"] == "tunnel.gas_alarm":
            rule["for_s"] = 0
    folder.mkdir()
    (folder / "tunnel.yaml").write_text(yaml.safe_dump(doc))
    return folder


def test_the_fans_start_by_rule_and_the_read_back_joins_the_alert(tmp_path: Path, stack: Stack,
                                                                  influx_db: InfluxClient) -> None:
    start = pinned_start(SCENARIO)
    played = run_scenario(SCENARIO, seed=SEED, start_ms=start)
    offline_alarm = next(e for e in played.events if e.rule == "tunnel.gas_alarm" and e.state == "firing")
    assert offline_alarm.command is not None and offline_alarm.command["auto"] is True
    compartment = str(offline_alarm.device)

    scenario = load_scenario(SCENARIO, free_ports=True)
    sim = LiveSimulator(scenario, SEED, start, serve_stations=False)
    sim.start()
    alerts: queue.Queue[AlertEvent] = queue.Queue()
    watcher = MqttClient(MqttSettings.from_url(stack.mqtt_url), client_id=f"t-{uuid.uuid4().hex[:8]}")
    watcher.subscribe("city/alerts/tunnel/pudong/+", lambda m: alerts.put(codec.decode_alert(bytes(m.payload))))
    watcher.connect()
    svc: RulesService | None = None
    try:
        sim.step(offline_alarm.t)  # the registers hold the compartment's air at the alarm
        assert float(sim.tables[compartment].values["ch4_pct_vol"]) > 1.0
        assert sim.tables[compartment].values["fan_run"] is False
        mqtt_port = int(stack.mqtt_url.rsplit(":", 1)[1])
        config = next(p for p in scenario.write_gateway_configs(tmp_path / "gw", mqtt_port=mqtt_port)
                      if p.name == "pd-gw-tunnel.yaml")
        svc = RulesService(ServiceConfig(
            rules_path=_rules_without_delay(tmp_path / "rules"), mqtt=MqttSettings.from_url(stack.mqtt_url),
            influx_url=stack.influx_url, database=influx_db.database, instance=f"t-{uuid.uuid4().hex[:8]}",
            gateways=[config], lookback_s=0, metrics_interval_s=60))
        thread = threading.Thread(target=svc.run, args=(90,), daemon=True)
        thread.start()
        assert svc.ready.wait(10) and svc.mqtt.wait_subscribed(10) and watcher.wait_subscribed(10)
        with AgentThread(config, stack.mqtt_url, tmp_path / "wal") as agent:
            agent.wait_ready()
            fired = alerts.get(timeout=30)
            while fired.rule != "tunnel.gas_alarm":
                fired = alerts.get(timeout=30)
            assert (fired.device, fired.state) == (compartment, "firing")
            assert fired.command is not None and fired.command["auto"] is True
            answered = alerts.get(timeout=30)
            while answered.response is None:
                answered = alerts.get(timeout=30)
            assert answered.id == fired.id and answered.state == "firing"
            assert answered.response["ok"] is True and answered.response["readback"] is True, answered.response
            assert "fan_run = True done, read back True" in answered.message
            # the write reached the compartment: its model runs the fans from now on
            assert sim.tables[compartment].commands["fan_run"] is True
            assert svc.responder.sent == 1 and svc.responder.done == 1
        # the history in InfluxDB: the firing, then the response
        rows = wait_for(lambda: [r for r in influx_db.rows(
            f"SELECT \"state\", \"response_ok\", \"message\" FROM \"alerts\" WHERE alert_id = '{fired.id}'")
            if r.get("response_ok") is not None] or None, 15, "the response in InfluxDB's alerts")
        assert rows[0]["response_ok"] is True and rows[0]["state"] == "firing"
        # the fans carry the gas out: 20 min on, far below the closed compartment's
        later = offline_alarm.t + 20 * 60_000
        sim.step(later)
        offline = scenario.build_world(SEED, start).devices[compartment]
        began = [i for i in offline.incidents if i.start_ms <= later]
        closed = float(offline.model.values(later, began)["ch4_pct_vol"])
        assert float(sim.tables[compartment].values["ch4_pct_vol"]) < 0.5 * closed
    finally:
        if svc is not None:
            svc.stop()
        watcher.close()
        sim.stop()


def test_an_unanswered_response_is_recorded_as_not_confirmed(tmp_path: Path, stack: Stack) -> None:
    """No edge agent on the tunnel gateway: after the response's time-out the alert's
    history says the fans were not confirmed, naming the likely cause."""

    config = next(p for p in load_scenario(SCENARIO).write_gateway_configs(tmp_path / "gw")
                  if p.name == "pd-gw-tunnel.yaml")
    svc = RulesService(ServiceConfig(
        rules_path=_rules_without_delay(tmp_path / "rules"), mqtt=MqttSettings.from_url(stack.mqtt_url),
        instance=f"t-{uuid.uuid4().hex[:8]}", gateways=[config], lookback_s=0, metrics_interval_s=60))
    svc.responder.timeout_s = 1.0
    alerts: queue.Queue[AlertEvent] = queue.Queue()
    client = MqttClient(MqttSettings.from_url(stack.mqtt_url), client_id=f"t-{uuid.uuid4().hex[:8]}")
    client.subscribe("city/alerts/tunnel/pudong/+", lambda m: alerts.put(codec.decode_alert(bytes(m.payload))))
    client.connect()
    thread = threading.Thread(target=svc.run, args=(60,), daemon=True)
    thread.start()
    try:
        assert svc.ready.wait(10) and svc.mqtt.wait_subscribed(10) and client.wait_subscribed(10)
        t = int(time.time() * 1000)
        batch = TelemetryBatch("pd-gw-tunnel", "pudong", 1, t,
                               [Sample("tn-0101", "tunnel", t, {"ch4_pct_vol": 1.4})])
        client.publish_wait(topics.telemetry("pudong", "pd-gw-tunnel"), codec.encode_batch(batch))
        fired = alerts.get(timeout=10)
        assert fired.rule == "tunnel.gas_alarm" and fired.command is not None and fired.command["auto"] is True
        late = alerts.get(timeout=10)
        assert late.id == fired.id and late.response is not None and late.response["ok"] is False
        assert "no answer from the gateway" in late.response["reason"] and "not confirmed" in late.message
        assert svc.responder.failed == 1
    finally:
        svc.stop()
        thread.join(10)
        client.close()
