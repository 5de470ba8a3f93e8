"""Commands on .../cmd (write, read back, answer), the retained status message and the
Prometheus endpoint."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from application.stack import Stack, free_port
from tests.edge.conftest import AgentThread, Collector, ModbusSim, tcp_links, unique, write_gateway
from tests.waiting import wait_for
from urbansense import codec
from urbansense.mqtt import MqttClient, MqttSettings

pytestmark = pytest.mark.integration


def _setup(tmp_path: Path, **extra: Any) -> tuple[ModbusSim, Path, str]:
    sim = ModbusSim(tmp_path / "profiles" / "test-meter.yaml", endpoints=1, units=2)
    gw = unique("gw")
    cfg = {"gateway": gw, "district": "test", "poll_interval_s": 0.5, "links": tcp_links(sim),
           "batch": {"max_interval_s": 0.2}, **extra}
    return sim, write_gateway(tmp_path, cfg), gw


def test_commands_write_only_writable_fields_within_limits(tmp_path: Path, stack: Stack,
                                                           meter_profile_dir: Path) -> None:
    sim, path, gw = _setup(tmp_path)
    results = Collector(stack.mqtt_url, f"city/test/{gw}/cmd/result")
    with sim, AgentThread(path, stack.mqtt_url, tmp_path / "wal") as run:
        run.wait_ready()

        def cmd(**body: Any) -> dict[str, Any]:
            out: dict[str, Any] = run.call(run.agent.handle_command(orjson.dumps(body)))
            return out

        ok = cmd(id="c1", dev="dev-0-1", field="setpoint_pct", value=42.5)
        assert ok["ok"] is True and ok["readback"] == pytest.approx(42.5)
        assert sim.devices[(sim.ports[0], 1)].values["setpoint_pct"] == pytest.approx(42.5)
        assert sim.devices[(sim.ports[0], 2)].values["setpoint_pct"] == 50  # only that device
        coil = cmd(id="c2", dev="dev-0-2", field="lamp_on", value=True)
        assert coil["ok"] is True and coil["readback"] is True
        refused = {
            "above max": cmd(id="r1", dev="dev-0-1", field="setpoint_pct", value=150),
            "below min": cmd(id="r2", dev="dev-0-1", field="setpoint_pct", value=-1),
            "read-only": cmd(id="r3", dev="dev-0-1", field="pressure_mpa", value=1.0),
            "no field": cmd(id="r4", dev="dev-0-1", field="nope", value=1),
            "no device": cmd(id="r5", dev="dev-9-9", field="setpoint_pct", value=1),
            "not a bool": cmd(id="r6", dev="dev-0-1", field="lamp_on", value=7),
            "stale": cmd(id="r7", dev="dev-0-1", field="setpoint_pct", value=5, t=int(time.time() * 1000) - 600_000),
        }
        for why, result in refused.items():
            assert result["ok"] is False and result["reason"], why
        assert "maximum 100" in refused["above max"]["reason"]
        assert "read-only" in refused["read-only"]["reason"]
        assert "s old" in refused["stale"]["reason"]
        assert sim.devices[(sim.ports[0], 1)].values["setpoint_pct"] == pytest.approx(42.5)
        # and over MQTT, end to end
        sender = MqttClient(MqttSettings.from_url(stack.mqtt_url), client_id=unique("operator"))
        sender.connect()
        sender.publish_wait(f"city/test/{gw}/cmd", orjson.dumps(
            {"id": "m1", "dev": "dev-0-1", "field": "setpoint_pct", "value": 10}))
        sender.publish_wait(f"city/test/{gw}/cmd", b"not json")
        results.until(lambda: {"m1", ""} <= {orjson.loads(p).get("id") for _, p in results.raw}, 15,
                      "the answers to both MQTT commands")
        sender.close()
    results.close()
    answers = {orjson.loads(p).get("id"): orjson.loads(p) for _, p in results.raw}
    assert answers["m1"]["ok"] is True and answers["m1"]["readback"] == pytest.approx(10)
    assert answers[""]["ok"] is False and "JSON" in answers[""]["reason"]


def test_status_message_and_prometheus_metrics(tmp_path: Path, stack: Stack, meter_profile_dir: Path) -> None:
    port = free_port()
    sim, path, gw = _setup(tmp_path, metrics={"port": port},
                           polling={"status_interval_s": 0.5, "backoff_min_s": 5})
    sim.devices[(sim.ports[0], 2)].exception_code = 2
    status = Collector(stack.mqtt_url, f"city/test/{gw}/status")
    with sim, AgentThread(path, stack.mqtt_url, tmp_path / "wal"):
        def polled() -> str | None:
            """The metrics once both devices were polled (one failing) and the status refreshed."""
            try:
                text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            except requests.ConnectionError:
                return None
            status.drain(0.05)
            refreshed = sum(1 for _, p in status.raw if codec.decode_status(p).state == "online") >= 2
            return text if refreshed and 'edge_device_up{device="dev-0-2"} 0.0' in text else None

        body = wait_for(polled, 20, "two status refreshes and both devices polled")
    status.drain(1.0)
    status.close()
    statuses = [codec.decode_status(p) for _, p in status.raw]
    online = [s for s in statuses if s.state == "online"]
    assert len(online) >= 2  # birth + periodic refresh
    last = online[-1]
    assert last.devices == {"dev-0-1": "ok", "dev-0-2": "fail"}
    for key in ("wal_depth", "wal_dropped", "reconnects", "poll_jitter_p99_ms", "poll_latency_p99_ms",
                "errors_exception_2"):
        assert key in last.stats, key
    assert statuses[-1].state == "offline"  # clean stop says so (retained)
    assert 'edge_poll_errors_total{reason="exception_2"}' in body
    assert 'edge_device_up{device="dev-0-1"} 1.0' in body
    assert 'edge_device_up{device="dev-0-2"} 0.0' in body
    assert "edge_mqtt_connected 1.0" in body  # read when scraped
    assert "edge_mqtt_reconnects 0.0" in body
    for name in ("edge_wal_depth", "edge_wal_dropped", "edge_mqtt_reconnects", "edge_poll_latency_seconds_bucket",
                 "edge_poll_jitter_seconds_bucket", "edge_modbus_requests_total"):
        assert name in body, name


def test_remote_diagnostics_through_the_command_path(tmp_path: Path, stack: Stack, meter_profile_dir: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """probe, log and links answered on .../cmd/result, logged with who asked (the audit
    trail), and refused when the config's commands.allow leaves them out."""
    import subprocess
    import sys

    caplog.set_level("INFO", logger="urbansense")  # as `edge run` logs (--log-level INFO)

    from tests.edge.conftest import METER_PROFILE, REPO, write_profile

    sim, path, gw = _setup(tmp_path)
    with sim, AgentThread(path, stack.mqtt_url, tmp_path / "wal") as run:
        run.wait_ready()

        def ask(**body: Any) -> dict[str, Any]:
            out: dict[str, Any] = run.call(run.agent.handle_command(orjson.dumps(body)))
            return out

        wait_for(lambda: all(s.ok for lk in run.agent.links.values() for s in lk.devices.values()), 10,
                 what="devices polled")
        sim.devices[(sim.ports[0], 1)].set("temp_c", -3.5)
        probe = ask(id="p1", op="probe", dev="dev-0-1", by="eng")
        # the profile's span: holding 0..12 (setpoint_pct at 12); temp_c at 4 is -35 (scale 0.1)
        assert probe["ok"] and (probe["table"], probe["address"], probe["count"]) == ("holding", 0, 13)
        assert probe["words"][4] == (-35) & 0xFFFF and "holding registers 0..12" in probe["text"]
        narrow = ask(id="p2", op="probe", dev="dev-0-1", table="input", address=0, count=4)
        assert narrow["ok"] and len(narrow["words"]) == 4 and "DCBA" in narrow["text"]
        assert "count must be a whole number 1..32" in ask(id="p3", op="probe", dev="dev-0-1", count=33)["reason"]
        assert "no polled device" in ask(id="p4", op="probe", dev="nope")["reason"]
        links = ask(id="l1", op="links")
        assert links["ok"] and links["links"]["link-0"]["devices"]["dev-0-2"]["ok"] is True
        assert links["links"]["link-0"]["requests"] > 0 and links["uplink_connected"] is True
        log = ask(id="g1", op="log", lines=500)
        assert any("edge agent test/" in line for line in log["lines"])
        assert any("command p1 from eng: probe dev-0-1 -> ok" in line for line in log["lines"])
        assert "op must be one of" in ask(id="x1", op="reboot")["reason"]
        # and through the CLI, over MQTT
        cli = subprocess.run([sys.executable, "-m", "application.cli", "edge", "diagnose", "--district", "test",
                              "--gateway", gw, "--probe", "dev-0-2", "--count", "4", "--mqtt", stack.mqtt_url],
                             capture_output=True, text=True, cwd=REPO, check=False, timeout=60)
        assert cli.returncode == 0, cli.stderr
        assert "dev-0-2: unit 2 on link link-0" in cli.stdout and "holding registers 0..3" in cli.stdout
    # a gateway that answers writes only
    write_profile(tmp_path / "only-writes" / "profiles", METER_PROFILE)
    sim2, path2, _gw2 = _setup(tmp_path / "only-writes", commands={"allow": ["write"]})
    with sim2, AgentThread(path2, stack.mqtt_url, tmp_path / "wal2") as run:
        run.wait_ready()
        refused = run.call(run.agent.handle_command(orjson.dumps({"id": "p9", "op": "probe", "dev": "dev-0-1"})))
        assert refused["ok"] is False and "commands.allow: write" in refused["reason"]
