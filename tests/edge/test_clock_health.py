"""Clock health: an edge agent run 5 minutes behind (libfaketime) next to one on the true
clock. The ingester measures each gateway's offset on its batches, stores the skewed
gateway's readings uncertain with the offset as the reason and the offset in its status,
and the rules service raises the system.gateway_clock alert; the other gateway is left alone."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from application.stack import Stack
from rules.service import RulesService, ServiceConfig
from tests.edge.conftest import REPO, ModbusSim, running_ingester, tcp_links, unique, write_gateway
from tests.waiting import wait_for
from urbansense import codec
from urbansense.influx import InfluxClient
from urbansense.mqtt import MqttClient, MqttSettings
from urbansense.schema import AlertEvent

pytestmark = pytest.mark.integration

SKEW_S = -300


def _agent(path: Path, stack: Stack, wal: Path, log: Path, skew_s: int | None) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "application.cli", "edge", "run", "--config", str(path),
               "--mqtt", stack.mqtt_url, "--wal", str(wal)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if skew_s is not None:
        # only the wall clock is skewed: timers run on the monotonic clock, as on a gateway
        command = ["faketime", "-f", f"{skew_s:+d}s", *command]
        env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
    with open(log, "ab") as out:
        # own process group: faketime runs the agent as its child and does not pass signals on
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                                env=env, start_new_session=True)


def _running_in_group(pgid: int) -> bool:
    """Whether a process of the group still runs (zombies aside)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, group = stat.read_text().rsplit(") ", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue
        if int(group) == pgid and state != "Z":
            return True
    return False


def test_a_gateway_five_minutes_behind_is_reported_and_its_readings_flagged(
        tmp_path: Path, stack: Stack, influx_db: InfluxClient, meter_profile_dir: Path) -> None:
    if shutil.which("faketime") is None:
        pytest.fail("faketime is not installed; run: apt-get install -y faketime (make test does it)")
    sim = ModbusSim(meter_profile_dir / "test-meter.yaml", endpoints=2, units=1)
    district = unique("clk")
    skewed, honest = unique("gw-skewed"), unique("gw-honest")
    paths = {gw: write_gateway(tmp_path / gw, {
        "gateway": gw, "district": district, "poll_interval_s": 0.5, "batch": {"max_interval_s": 0.3},
        "polling": {"status_interval_s": 1}, "links": [link]})
        for gw, link in zip((skewed, honest), tcp_links(sim, prefix=district), strict=True)}
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "system.yaml").write_text(
        "domain: system\nrules:\n  - {id: system.gateway_clock, kind: gateway_clock, max_offset_s: 30, for_s: 0}\n")
    rules = RulesService(ServiceConfig(
        rules_path=rules_dir, mqtt=MqttSettings.from_url(stack.mqtt_url), influx_url=stack.influx_url,
        database=influx_db.database, instance=unique("rules"), districts={district}, gateways=[],
        lookback_s=0, reload_interval_s=5, metrics_interval_s=5))
    alerts: queue.Queue[AlertEvent] = queue.Queue()
    listener = MqttClient(MqttSettings.from_url(stack.mqtt_url), client_id=f"t-{uuid.uuid4().hex[:8]}")
    listener.subscribe(f"city/alerts/system/{district}/+", lambda m: alerts.put(codec.decode_alert(bytes(m.payload))))
    listener.connect()
    rules_thread = threading.Thread(target=rules.run, args=(120,), daemon=True)
    rules_thread.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        assert rules.ready.wait(10) and rules.mqtt.wait_connected(10)
        assert listener.wait_subscribed(10) and rules.mqtt.wait_subscribed(10)
        with sim, running_ingester(stack.mqtt_url, stack.influx_url, influx_db.database):
            started = time.monotonic()
            procs = [_agent(paths[skewed], stack, tmp_path / "skewed.wal", tmp_path / "skewed.log", SKEW_S),
                     _agent(paths[honest], stack, tmp_path / "honest.wal", tmp_path / "honest.log", None)]

            def firing() -> AlertEvent | None:
                try:
                    event = alerts.get(timeout=0.5)
                except queue.Empty:
                    return None
                return event if event.state == "firing" else None

            event = wait_for(firing, 60, what="the gateway_clock alert (see skewed.log)")
            reported_after_s = time.monotonic() - started
            assert event.device == skewed and event.rule == "system.gateway_clock"
            assert event.value is not None and abs(event.value - SKEW_S) < 5, event.value

            def flagged(gw: str) -> list[dict[str, object]]:
                return influx_db.rows(f"SELECT quality_uncertain, quality_reason, poll_counter FROM water "
                                      f"WHERE gateway = '{gw}'")

            rows = wait_for(lambda: [r for r in flagged(skewed) if r["quality_uncertain"]], 60,
                            what="the skewed gateway's readings flagged in InfluxDB")
            assert "gateway clock -300 s off (limit 30 s)" in str(rows[0]["quality_reason"])
            status = wait_for(lambda: influx_db.rows(
                f"SELECT clock_offset_s FROM gateway_status WHERE gateway = '{skewed}' AND clock_offset_s < -290"),
                60, what="the skewed gateway's status with its clock offset")
            assert abs(float(status[-1]["clock_offset_s"]) - SKEW_S) < 5
            # the honest gateway: readings stored, none flagged, offset near zero, no alert
            wait_for(lambda: len(flagged(honest)) > 5, 30, what="the honest gateway's readings")
            assert not any(r["quality_uncertain"] for r in flagged(honest))
            assert all(e.device == skewed for e in list(alerts.queue))
            print(f"clock skew of {SKEW_S} s reported {reported_after_s:.1f} s after the agents started")
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)  # the agent too, not only faketime
        for p in procs:
            p.wait(20)
        wait_for(lambda: not any(_running_in_group(p.pid) for p in procs), 20,
                 what="the edge agents to exit with faketime (an edge agent outlived the test)")
        rules.stop()
        rules_thread.join(10)
        listener.close()
