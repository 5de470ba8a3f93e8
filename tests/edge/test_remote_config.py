"""Configurations pushed over MQTT: refused with the reason (the old one keeps running),
run on trial, rolled back by the agent when every device fails, kept when it works, kept
across a restart; and no reading lost across the changes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from application.stack import Stack, free_port
from edge.remote_config import ConfigPush, ConfigStore, config_hash
from tests.edge.conftest import (
    REPO,
    AgentThread,
    Collector,
    ModbusSim,
    logged_counters,
    tcp_links,
    unique,
    write_gateway,
)
from tests.waiting import wait_for
from urbansense import codec
from urbansense.mqtt import MqttClient, MqttSettings

pytestmark = pytest.mark.integration


class Results:
    """The gateway's answers on .../config/result, by push id."""

    def __init__(self, mqtt_url: str, gw: str) -> None:
        self.collector = Collector(mqtt_url, f"city/test/{gw}/config/result")

    def states(self, push_id: str) -> list[dict[str, Any]]:
        self.collector.drain()
        return [orjson.loads(p) for _t, p in self.collector.raw if orjson.loads(p).get("id") == push_id]

    def wait(self, push_id: str, state: str, timeout_s: float = 20.0) -> dict[str, Any]:
        wait_for(lambda: any(r["state"] == state for r in self.states(push_id)), timeout_s,
                 what=f"config push {push_id} to reach {state}: got {self.states(push_id)}")
        return next(r for r in self.states(push_id) if r["state"] == state)


def _status(collector: Collector) -> Any:
    collector.drain()
    return codec.decode_status(collector.raw[-1][1]) if collector.raw else None


def test_refused_rolled_back_and_kept_configs_lose_no_reading(tmp_path: Path, stack: Stack,
                                                             meter_profile_dir: Path) -> None:
    sim = ModbusSim(meter_profile_dir / "test-meter.yaml", endpoints=1, units=2)
    gw = unique("gw")
    base = {"gateway": gw, "district": "test", "version": "v1", "poll_interval_s": 0.3, "links": tcp_links(sim),
            "batch": {"max_interval_s": 0.2}, "polling": {"status_interval_s": 0.3, "backoff_min_s": 0.3},
            "remote_config": {"trial_s": 2}}
    path = write_gateway(tmp_path, base)
    base_text = path.read_text()

    def variant(**changes: Any) -> str:
        return yaml.safe_dump({**base, **changes}, sort_keys=False)

    dead_port = free_port()  # nothing listens there: every device fails
    broken = variant(version="v2-wrong-port", links=[{**tcp_links(sim)[0], "port": dead_port}])
    better = variant(version="v3", poll_interval_s=0.2)
    telemetry = Collector(stack.mqtt_url, f"city/test/{gw}/telemetry")
    status = Collector(stack.mqtt_url, f"city/test/{gw}/status")
    results = Results(stack.mqtt_url, gw)
    ops = MqttClient(MqttSettings.from_url(stack.mqtt_url), client_id=unique("ops"))
    ops.connect()

    def push(push_id: str, text: str) -> None:
        ops.publish_wait(f"city/test/{gw}/config", orjson.dumps({"id": push_id, "config": text, "by": "test"}))

    def polls() -> int:
        return sum(d.counter for d in sim.devices.values())

    with sim:
        with AgentThread(path, stack.mqtt_url, tmp_path / "wal") as run:
            run.wait_ready()
            wait_for(lambda: (s := _status(status)) is not None and s.config_hash == config_hash(base_text)
                     and s.config_version == "v1", 10, what="status with the config's hash and version")
            # 1. refused: a check problem, and a change of what a running agent keeps
            push("bad-unit", variant(links=[{**tcp_links(sim)[0],
                                             "devices": [{"id": "dev-0-1", "profile": "test-meter", "unit": 0}]}]))
            refused = results.wait("bad-unit", "refused")
            assert "unit: 0 is the broadcast address" in refused["reason"]
            push("new-uplink", variant(uplink={"host": "10.0.0.1"}))
            assert "uplink" in results.wait("new-uplink", "refused")["reason"]
            push("not-yaml", "links: [")
            assert "YAML syntax error" in results.wait("not-yaml", "refused")["reason"]
            before = polls()
            wait_for(lambda: polls() > before + 4, 10, what="the old config still polling")
            assert _status(status).config_hash == config_hash(base_text)
            # 2. every device fails under the new config: rolled back within the trial
            push("wrong-port", broken)
            assert results.wait("wrong-port", "trial")["version"] == "v2-wrong-port"
            wait_for(lambda: _status(status).config_hash == config_hash(broken), 10, what="status of the trial")
            during = polls()
            back = results.wait("wrong-port", "rolled_back", timeout_s=15)
            assert "no device delivered a reading" in back["reason"] and back["running"] == config_hash(base_text)
            assert polls() - during <= 2  # nothing polled the simulator during the trial (but a poll under way)
            wait_for(lambda: polls() > during + 4, 10, what="polling again after the rollback")
            wait_for(lambda: _status(status).config_hash == config_hash(base_text), 10, what="status rolled back")
            # 3. a config that works is kept
            push("faster", better)
            results.wait("faster", "trial")
            kept = results.wait("faster", "kept", timeout_s=15)
            assert kept["version"] == "v3" and "0 of 2 device(s) failing" in kept["health"]
        # 4. a restart runs the kept config
        with AgentThread(path, stack.mqtt_url, tmp_path / "wal") as run:
            run.wait_ready()
            assert run.agent.config_text == better and run.agent.cfg.poll_interval_s == 0.2
            wait_for(lambda: _status(status).config_version == "v3", 10, what="restart with the kept config")
        telemetry.drain(1.0)
    ops.close()
    # every value the simulator served reached the uplink, across the swaps and the restart,
    # or waits in the log for the next start: the restarted agent, which found a backlog,
    # holds its uplink for resume_delay_s and may stop before then (a clean stop keeps its
    # last samples in the log, as designed)
    logged = logged_counters(tmp_path / "wal")
    for (_port, unit), dev in sim.devices.items():
        got = {int(s.f["poll_counter"]) for s in telemetry.samples(f"dev-0-{unit}") if "poll_counter" in s.f}
        got |= {n for d, n in logged if d == f"dev-0-{unit}"}
        served = {n for n, _at in dev.served}
        assert served and not served - got, f"dev-0-{unit}: served but neither sent nor logged: " \
                                            f"{sorted(served - got)[:10]}"


def test_store_rolls_back_a_trial_the_agent_did_not_live_through_and_yields_to_an_edited_file(
        tmp_path: Path) -> None:
    store = ConfigStore(tmp_path / "gw.wal.config")
    assert store.startup("base: 1\n") == ("base: 1\n", None)

    store.begin_trial(ConfigPush("p1", "new: 2\n", "test"), running_text="base: 1\n", base_text="base: 1\n")
    text, note = store.startup("base: 1\n")  # the agent died during the trial
    assert text == "base: 1\n" and note is not None and "restarted during the trial" in note
    store.begin_trial(ConfigPush("p2", "new: 3\n", "test"), running_text="base: 1\n", base_text="base: 1\n")
    store.keep()
    text, note = store.startup("base: 1\n")
    assert text == "new: 3\n" and note is not None and "running the pushed config" in note
    text, note = store.startup("base: 1 # edited on site\n")
    assert text == "base: 1 # edited on site\n" and note is not None and "config file changed" in note
    assert store.startup("base: 1 # edited on site\n") == ("base: 1 # edited on site\n", None)


def test_push_config_command_checks_locally_first(tmp_path: Path, meter_profile_dir: Path) -> None:
    path = write_gateway(tmp_path, {"gateway": "gw-x", "district": "test", "links": [
        {"name": "l", "transport": "tcp", "host": "127.0.0.1", "port": 1502,
         "devices": [{"id": "d-1", "profile": "test-meter", "unit": 0}]}]})
    out = subprocess.run([sys.executable, "-m", "application.cli", "edge", "push-config", "--config", str(path),
                          "--mqtt", "mqtt://127.0.0.1:1"], capture_output=True, text=True, cwd=REPO, check=False)
    assert out.returncode == 2 and "broadcast address" in out.stderr and "not pushed" in out.stderr


def test_a_push_the_agent_cannot_keep_is_refused_and_the_old_config_runs(tmp_path: Path, stack: Stack,
                                                                         meter_profile_dir: Path) -> None:
    sim = ModbusSim(meter_profile_dir / "test-meter.yaml", endpoints=1, units=1)
    gw = unique("gw")
    base = {"gateway": gw, "district": "test", "poll_interval_s": 0.5, "links": tcp_links(sim)}
    path = write_gateway(tmp_path, base)
    (tmp_path / "wal.config").write_text("a file where the store's folder goes")
    with sim, AgentThread(path, stack.mqtt_url, tmp_path / "wal") as run:
        run.wait_ready()
        new = yaml.safe_dump({**base, "version": "v2"}, sort_keys=False)
        answer = run.call(run.agent.apply_config(orjson.dumps({"id": "p", "config": new})))
        assert answer["state"] == "refused" and "cannot keep the config in" in answer["reason"]
        assert run.agent.config_text == path.read_text() and run.agent.cfg.version is None
