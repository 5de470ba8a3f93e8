"""One reading end to end through real parts: a simulated water point on real Modbus TCP,
the edge agent, Mosquitto, the ingester, InfluxDB and the rules engine, each component in
its own process as in production."""

from __future__ import annotations

import queue
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from application.processes import ProcessGroup
from application.stack import Stack, free_port
from simulators.device import DeviceTables
from simulators.modbus_server import ModbusEndpoint, ThreadedModbusServer
from tests.waiting import wait_for
from urbansense import codec, registry, topics
from urbansense.config import load_profile
from urbansense.influx import InfluxClient
from urbansense.mqtt import MqttClient, MqttSettings
from urbansense.schema import AlertEvent, Sample

pytestmark = pytest.mark.integration

RULES = """\
domain: water
rules:
  - id: water.pressure_low
    measurement: water
    metric: pressure_mpa
    op: below
    threshold: 0.20
    clear: 0.22
    for_s: 2
    severity: critical
    message: "Pressure at {device} is {value:.3f} MPa, below {threshold} MPa"
"""


def test_reading_travels_to_influxdb_and_raises_then_resolves_an_alert(stack: Stack, tmp_path: Path) -> None:
    district = "e2e-" + uuid.uuid4().hex[:8]
    database = "e2e_" + uuid.uuid4().hex[:8]
    port = free_port()
    gateway = {
        "gateway": "gw-e2e", "district": district, "poll_interval_s": 0.5,
        "batch": {"max_samples": 100, "max_interval_s": 0.5},
        "links": [{"name": "plc", "host": "127.0.0.1", "port": port, "timeout_s": 1.0,
                   "devices": [{"id": "wp-0001", "profile": "water-supply-point", "unit": 3}]}],
    }
    gw_path = tmp_path / "gw-e2e.yaml"
    gw_path.write_text(yaml.safe_dump(gateway))
    rules_path = tmp_path / "water.yaml"
    rules_path.write_text(RULES)

    device = DeviceTables(load_profile(registry.family("water").profiles_dir / "water-supply-point.yaml"))
    # Values exactly representable in float32 / the profile's scaling, so equality is exact.
    device.set("pressure_mpa", 0.3125)
    device.set("flow_m3h", 120.5)
    device.set("turbidity_ntu", 0.25)
    device.set("ph", 7.2)
    device.set("volume_total_m3", 4_000_000_000)
    server = ThreadedModbusServer([ModbusEndpoint("127.0.0.1", port, {3: device})])
    server.start()

    inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
    watcher = MqttClient(MqttSettings.from_url(stack.mqtt_url), f"e2e-watch-{district}")
    watcher.subscribe(topics.telemetry(district, "gw-e2e"), lambda m: inbox.put((m.topic, bytes(m.payload))))
    watcher.subscribe(f"city/alerts/+/{district}/+", lambda m: inbox.put((m.topic, bytes(m.payload))))
    watcher.connect()

    procs = ProcessGroup(tmp_path / "logs")
    samples: list[Sample] = []
    alerts: list[tuple[str, AlertEvent]] = []

    def drain() -> int:
        """Move what arrived into `samples` / `alerts`; returns how many alerts so far."""
        while True:
            try:
                topic, payload = inbox.get_nowait()
            except queue.Empty:
                return len(alerts)
            if topic.endswith("/telemetry"):
                samples.extend(codec.decode_batch(payload).samples)
            else:
                alerts.append((topic, codec.decode_alert(payload)))

    try:
        common = ["--mqtt", stack.mqtt_url, "--influx", stack.influx_url, "--database", database]
        procs.start("ingest", "ingest", "run", *common, "--instance", f"ingest-{district}")
        procs.start("rules", "rules", "run", *common, "--rules", str(rules_path))
        # the first reading is published once both have their subscriptions acknowledged
        wait_for(lambda: all("subscribed to" in (procs.log_dir / f"{n}.log").read_text() for n in ("ingest", "rules")),
                 30, "the ingester's and the rules engine's subscriptions")
        procs.start("edge", "edge", "run", "--config", str(gw_path), "--mqtt", stack.mqtt_url)

        def n_samples(pred=lambda s: True) -> int:
            drain()
            assert not procs.check(), procs.check()
            return sum(1 for s in samples if pred(s))

        wait_for(lambda: n_samples() >= 3, 20, "3 readings on MQTT")
        device.set("pressure_mpa", 0.125)  # burst: below the 0.20 MPa threshold
        wait_for(lambda: drain() >= 1, 20, "the firing alert")
        assert n_samples(lambda s: s.f.get("pressure_mpa") == 0.125) >= 4  # held >= for_s (2 s at 0.5 s polls)
        device.set("pressure_mpa", 0.2109375)  # inside the hysteresis band: no resolve yet
        wait_for(lambda: n_samples(lambda s: s.f.get("pressure_mpa") == 0.2109375) >= 3, 20, "band readings")
        drain()
        assert [a.state for _, a in alerts] == ["firing"]
        device.set("pressure_mpa", 0.3125)
        wait_for(lambda: drain() >= 2, 20, "the resolved alert")
        procs.stop("edge")
        # the edge's last batches reach the watcher and InfluxDB: wait until both agree
        influx = InfluxClient(stack.influx_url, database)

        def settled() -> bool:
            drain()
            rows = influx.rows(f"SELECT count(\"pressure_mpa\") AS n FROM water WHERE district = '{district}'")
            return bool(rows) and rows[0]["n"] == len(samples)

        wait_for(settled, 20, "every reading on the wire to be in InfluxDB")
    finally:
        procs.stop_all()
        watcher.close()
        server.stop()

    # ---- every reading seen on the wire is in InfluxDB, with the same values and edge timestamps
    good = [s for s in samples if s.q == "good"]
    assert len(good) == len(samples) >= 10
    def stored() -> list[dict[str, Any]]:
        rows = influx.rows(f"SELECT * FROM water WHERE district = '{district}' ORDER BY time")
        return rows if len(rows) >= len(good) else []

    rows = wait_for(stored, 10, "all points in InfluxDB")
    assert [r["time"] for r in rows] == [s.t for s in good]
    for row, s in zip(rows, good, strict=True):
        assert row["device"] == "wp-0001" and row["gateway"] == "gw-e2e"
        assert row["pressure_mpa"] == s.f["pressure_mpa"]
        assert row["flow_m3h"] == 120.5 and row["turbidity_ntu"] == 0.25 and row["ph"] == 7.2
        assert row["volume_total_m3"] == 4_000_000_000  # 32-bit counter across two registers
    assert {r["pressure_mpa"] for r in rows} == {0.3125, 0.125, 0.2109375}

    # ---- one event per state change, on the right topic, with the contract's fields
    assert [a.state for _, a in alerts] == ["firing", "resolved"]
    (fire_topic, fire), (res_topic, res) = alerts
    assert fire_topic == res_topic == topics.alert("water", district, "critical")
    assert fire.id == res.id == f"water.pressure_low:{district}:wp-0001"
    assert (fire.rule, fire.domain, fire.severity, fire.device, fire.metric) == \
        ("water.pressure_low", "water", "critical", "wp-0001", "pressure_mpa")
    assert fire.value == 0.125 and fire.threshold == 0.20
    first_low = min(s.t for s in good if s.f["pressure_mpa"] == 0.125)
    assert fire.started == first_low and fire.t - first_low >= 2000  # the `for` duration, on event time
    first_back = min(s.t for s in good if s.f["pressure_mpa"] == 0.3125 and s.t > fire.t)
    assert res.t == first_back and res.value == 0.3125
    # and recorded in the alerts measurement for Grafana
    recorded = influx.rows(f"SELECT state, value FROM alerts WHERE district = '{district}' ORDER BY time")
    assert [(r["state"], r["value"], r["time"]) for r in recorded] == \
        [("firing", 0.125, fire.t), ("resolved", 0.3125, res.t)]
