"""`urbansense demo --headless --json` on a short scenario: the summary matches what is in
InfluxDB and the ground truth, and no process is left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from application.cluster import RabbitCluster
from application.stack import Stack, pid_alive
from urbansense.influx import InfluxClient

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SCENARIO = Path(__file__).parent / "data" / "demo-smoke.yaml"


def processes_of_run(run_dir: Path) -> list[str]:
    """Live processes started for this run: every child inherits URBANSENSE_RUN_DIR."""
    marker = f"URBANSENSE_RUN_DIR={run_dir}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "environ").read_bytes() and pid_alive(int(proc.name)):
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("cluster", [0, 3], ids=["mosquitto", "cluster-3"])
def test_headless_json_demo_on_a_short_scenario(tmp_path: Path, cluster: int) -> None:
    """Also in cluster mode (`--cluster 3`): the gateways on three RabbitMQ nodes, the
    ingester on the quorum queue, two rules instances sharing the district."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "URBANSENSE_RUN_DIR": str(run_dir)}
    env.pop("URBANSENSE_CLOCK", None)
    env.pop("URBANSENSE_AMQP_URLS", None)
    proc = subprocess.Popen([sys.executable, "-m", "application.cli", "demo", "--scenario", str(SCENARIO),
                             "--headless", "--json", "--keep", "--cluster", str(cluster)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=300)
    stack = Stack(run_dir / "demo")  # the demo keeps its stack in a folder of its own
    rabbit = RabbitCluster(stack.run_dir)
    try:
        assert proc.returncode == 0, err[-3000:]
        summary = json.loads(out)
        # every reading seen on the wire is in InfluxDB
        assert summary["verified"] is True and summary["missing_in_influxdb"] == 0
        assert summary["readings_in_influxdb"] == summary["readings_distinct"] > 100
        influx = InfluxClient(stack.influx_url, "city")
        water = influx.rows(f'SELECT count("pressure_mpa") FROM water WHERE time >= {summary["start_ms"]}ms')
        gas_bad = influx.rows(f"SELECT count(device_error) FROM gas WHERE device = 'gs-0104' "
                              f'AND time >= {summary["start_ms"]}ms')
        assert water and water[0]["count"] > 0
        assert gas_bad and gas_bad[0]["count"] > 0  # the dead device shows up as failed readings
        # each incident of the ground truth is scored, and detected
        truth = [json.loads(line) for line in Path(summary["truth_file"]).read_text().splitlines()]
        assert sorted(i["type"] for i in summary["incidents"]) == sorted(
            r["type"] for r in truth if r["kind"] == "incident") == ["gas_leak", "pipe_burst"]
        assert summary["missed"] == []
        for inc in summary["incidents"]:
            assert inc["detected"] and inc["first_alert_rule"]
        firing = influx.rows(f"SELECT count(alert_id) FROM alerts WHERE state = 'firing' "
                             f'AND time >= {summary["start_ms"]}ms')
        assert firing and firing[0]["count"] >= 2
        # each incident's alert reached its utility's topic through Alertmanager and the relay
        assert {(i["type"], i["utility"], i["utility_notified"]) for i in summary["incidents"]} == {
            ("pipe_burst", "utility-water", True), ("gas_leak", "utility-gas", True)}
        delivery = summary["delivery"]
        assert delivery["undelivered"] == [] and delivery["repeats_at_receivers"] == 0
        assert delivery["notified_alerts"] + delivery["inhibited"] + delivery["over_before_due"] \
            >= delivery["firing_alerts"] >= 2
        assert delivery["latency_p50_s"] is not None and delivery["latency_p99_s"] >= delivery["latency_p50_s"]
        assert delivery["by_receiver"].get("duty-officer", 0) >= 1  # the burst is critical
        # the duty book followed the alerts: its episodes are on record
        episodes = influx.rows(f'SELECT count(state) FROM alert_episodes WHERE time >= {summary["start_ms"]}ms')
        assert episodes and episodes[0]["count"] >= 2
        assert summary["duty"]["open"] >= 2 and summary["duty"]["unacknowledged"] == summary["duty"]["open"]
        if cluster:  # the readings came through the cluster, and the rules through their district queue
            logs = stack.run_dir / "logs"
            assert "queue ingest" in (logs / "ingest.log").read_text()
            assert sum("took district pudong" in (logs / f"rules-{i}.log").read_text() for i in (1, 2)) >= 1
    finally:
        rabbit.down()
        stack.down()
    # no component survives the demo (the stack itself was kept on purpose, and is down now)
    assert processes_of_run(run_dir) == []


def _summary() -> dict[str, object]:
    return {"scenario": "pudong-incidents", "verified": True, "missing_in_influxdb": 0, "readings_published": 10,
            "readings_in_influxdb": 10, "readings_distinct": 10, "false_alarms": 0, "false_alarm_rules": [],
            "incidents": [{"type": "door_open_while_moving", "device": "el-0104", "played": True, "detected": True,
                           "first_alert_rule": "elevator.door_open_while_moving", "lead_time_s": -12.0,
                           "utility": "utility-elevator", "utility_notified": True}],
            "delivery": {"firing_alerts": 3, "notified_alerts": 3, "notifications": 4, "latency_p50_s": 0.4,
                         "latency_p99_s": 4.9, "group_wait_s": 2, "group_interval_s": 5, "inhibited": 1,
                         "over_before_due": 0, "undelivered": [],
                         "by_receiver": {"duty-officer": 1, "utility-elevator": 3}},
            "duty": {"open": 5, "unacknowledged": 4, "escalated": 2},
            "automatic_responses": [{"alert": "tunnel.gas_alarm:pudong:tn-0101", "ok": True,
                                     "message": "Automatic response to tunnel.gas_alarm at tn-0101: "
                                                "tn-0101.fan_run = True done, read back True"}]}


def test_the_printed_summary_is_true_as_printed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Piped (as in CI or a log), rule names are not cut at 80 columns; the curl line names
    the demo's real InfluxDB, and only when --keep left it running."""
    from types import SimpleNamespace

    from application.demo import _print_summary, summary_console

    stack = SimpleNamespace(influx_url="http://127.0.0.1:41234", run_dir=tmp_path)
    _print_summary(summary_console(), _summary(), stack, keep=False)  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert "elevator.door_open_while_moving" in out and "0.2 min after" in out
    assert "3 of 3 firing alerts told to their receivers" in out and "p50 0.40 s, p99 4.9 s" in out
    assert "1 inhibited" in out and "none lost" in out and "utility-elevator 3" in out
    assert "Duty book: 5 open episodes, 4 unacknowledged" in out and "2 escalated" in out
    assert "Automatic response (done): Automatic response to tunnel.gas_alarm at tn-0101: tn-0101.fan_run" in out
    assert "curl" not in out and "8086" not in out and "urbansense demo --keep" in out
    _print_summary(summary_console(), _summary(), stack, keep=True)  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert "curl -G http://127.0.0.1:41234/query" in out and f"--run-dir {tmp_path} down" in out


def test_the_live_count_takes_fields_with_no_point_in_the_window(influx_db: InfluxClient) -> None:
    """A field written before the run began but not since (a lake station's level: its
    past record is written for the tide fit, and over HJ 212 it sends none) has a null
    count in the window (InfluxDB 1.x, same shard): the live view counts the readings and
    does not crash."""
    from application.demo import _poll_influx
    from application.demo_view import DemoState
    influx_db.write("air,device=a,district=d,gateway=g tvoc_ugm3=1 1999999000000\n"
                    "air,device=b,district=d,gateway=g pm25_ugm3=5 2000000000000\n"
                    "air,device=b,district=d,gateway=g pm25_ugm3=6 2000000001000", precision="ms")
    state = DemoState("s", 1.0, 2_000_000_000_000, 2_100_000_000_000)
    _poll_influx(influx_db, state)
    assert state.ingested == 2
