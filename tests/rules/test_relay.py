"""The relay from Alertmanager to chat robots: a real Alertmanager with the shipped
routing (receivers pointed at the relay) and a local HTTP sink standing in for the WeCom,
DingTalk and Feishu endpoints; signatures checked as the robots check them; each alert
state delivered once per target though Alertmanager delivers at least once."""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from application.stack import Stack, free_port
from rules.notify import WECOM_MAX_BYTES, dingtalk_sign, feishu_sign, request
from rules.relay import Relay, load_targets, serve
from rules.routing import config
from tests.waiting import wait_for
from urbansense.config import ConfigError

pytestmark = pytest.mark.integration


class Sink:
    """The robots' endpoints: records (path, query, body); answers with `status`."""

    def __init__(self) -> None:
        self.got: queue.Queue[tuple[str, dict[str, list[str]], dict[str, Any]]] = queue.Queue()
        self.status = 200
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                url = urllib.parse.urlsplit(self.path)
                if sink.status == 200:
                    sink.got.put((url.path, urllib.parse.parse_qs(url.query), body))
                self.send_response(sink.status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"errcode": 0, "code": 0}')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self, n: int, timeout_s: float = 20.0) -> list[tuple[str, dict[str, list[str]], dict[str, Any]]]:
        out = [self.got.get(timeout=timeout_s) for _ in range(n)]
        return sorted(out, key=lambda x: x[0])


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.server.shutdown()


ENV = {"WECOM_DUTY_URL": "", "DINGTALK_GAS_URL": "", "DINGTALK_GAS_SECRET": "SECdingtalk-test-secret",
       "FEISHU_GAS_URL": "", "FEISHU_GAS_SECRET": "feishu-test-secret"}
RELAY_CONFIG = {"receivers": {
    "duty-officer": [{"kind": "wecom", "url_env": "WECOM_DUTY_URL"}],
    "utility-gas": [{"kind": "dingtalk", "url_env": "DINGTALK_GAS_URL", "secret_env": "DINGTALK_GAS_SECRET"},
                    {"kind": "feishu", "url_env": "FEISHU_GAS_URL", "secret_env": "FEISHU_GAS_SECRET"}]}}


def _relay(tmp_path: Path, sink: Sink) -> Relay:
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(RELAY_CONFIG))
    env = {**ENV, "WECOM_DUTY_URL": f"{sink.url}/wecom?key=k1",
           "DINGTALK_GAS_URL": f"{sink.url}/dingtalk?access_token=t1", "FEISHU_GAS_URL": f"{sink.url}/feishu/hook/h1"}
    return Relay(load_targets(path, env))


def _alert(name: str, device: str, district: str, severity: str, *, resolved: bool = False) -> dict[str, Any]:
    now = time.time()
    ends = now - 1 if resolved else now + 600
    return {"labels": {"alertname": name, "rule": name, "domain": "gas", "district": district, "device": device,
                       "severity": severity},
            "annotations": {"summary": f"methane at {device} is 31 %LEL", "recommended_action": "close valve v-1"},
            "startsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 30)),
            "endsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ends))}


def test_alertmanager_notifications_reach_each_robot_once_signed(tmp_path: Path, sink: Sink) -> None:
    relay = _relay(tmp_path, sink)
    server = serve(relay, "127.0.0.1", free_port())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    relay_url = f"http://127.0.0.1:{server.server_address[1]}"
    am_config = config()
    am_config["route"].update(group_wait="0s", group_interval="1s")
    for receiver in am_config["receivers"]:
        receiver["webhook_configs"] = [{"url": f"{relay_url}/hook/{receiver['name']}"}]
    am_config["receivers"] = [r for r in am_config["receivers"] if r["name"] in RELAY_CONFIG["receivers"]
                              or r["name"] == "city-operations-centre"]
    am_config["route"]["routes"] = [r for r in am_config["route"]["routes"]
                                    if r["receiver"] in RELAY_CONFIG["receivers"]]
    stack = Stack(tmp_path / "stack")
    stack.alertmanager_config = yaml.safe_dump(am_config)
    stack.start("alertmanager")
    try:
        district = f"r{uuid.uuid4().hex[:6]}"
        requests.post(f"{stack.alertmanager_url}/api/v2/alerts",
                      json=[_alert("gas.methane_alarm", "gs-1", district, "critical")], timeout=5).raise_for_status()
        got = sink.take(3)  # the duty officer's WeCom robot, the gas utility's DingTalk and Feishu bots
        assert [path for path, _q, _b in got] == ["/dingtalk", "/feishu/hook/h1", "/wecom"]
        (_, dq, dbody), (_, _fq, fbody), (_, wq, wbody) = got
        assert wq["key"] == ["k1"] and wbody["msgtype"] == "markdown"
        assert "CRITICAL gas.methane_alarm gs-1" in wbody["markdown"]["content"]
        assert "recommended: close valve v-1" in wbody["markdown"]["content"]
        assert dq["access_token"] == ["t1"] and dbody["markdown"]["title"].startswith("[FIRING:1]")
        assert dq["sign"] == [dingtalk_sign(ENV["DINGTALK_GAS_SECRET"], int(dq["timestamp"][0]))]
        assert abs(int(dq["timestamp"][0]) / 1000 - time.time()) < 60
        assert fbody["sign"] == feishu_sign(ENV["FEISHU_GAS_SECRET"], int(fbody["timestamp"]))
        assert "methane at gs-1" in fbody["content"]["text"]
        # resolved: one message each, saying so
        requests.post(f"{stack.alertmanager_url}/api/v2/alerts",
                      json=[_alert("gas.methane_alarm", "gs-1", district, "critical", resolved=True)],
                      timeout=5).raise_for_status()
        resolved = sink.take(3)
        assert all("RESOLVED gas.methane_alarm gs-1" in json.dumps(b) for _p, _q, b in resolved)
        wait_for(lambda: relay.stats.delivered == 6, 10, what="the relay to count six deliveries")
        assert relay.stats.failures == 0 and relay.stats.skipped_repeats == 0
        # from the alert's start (30 s before it was posted) to the robots
        assert len(relay.stats.latencies_s) == 3 and all(29 < s < 90 for s in relay.stats.latencies_s)
    finally:
        stack.down()
        server.shutdown()


def test_a_repeat_is_skipped_and_a_failed_target_is_retried_alone(tmp_path: Path, sink: Sink) -> None:
    relay = _relay(tmp_path, sink)
    alert = {**_alert("gas.methane_alarm", "gs-2", "pudong", "warning"), "status": "firing", "fingerprint": "f1"}
    notification = {"receiver": "utility-gas", "status": "firing", "alerts": [alert],
                    "groupLabels": {"domain": "gas", "district": "pudong"}}
    assert relay.handle("utility-gas", notification) == (200, "ok")
    assert len(sink.take(2)) == 2
    assert relay.handle("utility-gas", notification) == (200, "ok")  # Alertmanager's repeat: nothing sent
    assert sink.got.empty() and relay.stats.skipped_repeats == 2
    # a new alert in the group while the robots refuse: 503, Alertmanager retries
    second = {**_alert("gas.methane_alarm", "gs-3", "pudong", "warning"), "status": "firing", "fingerprint": "f2"}
    notification["alerts"] = [alert, second]
    sink.status = 500
    status, reason = relay.handle("utility-gas", notification)
    assert status == 503 and "dingtalk #0, feishu #1" in reason
    sink.status = 200
    assert relay.handle("utility-gas", notification) == (200, "ok")
    got = sink.take(2)
    assert all("gs-3" in json.dumps(b) and "gs-2" not in json.dumps(b) for _p, _q, b in got)
    assert relay.handle("nobody", notification)[0] == 404


def test_relay_config_names_every_missing_secret(tmp_path: Path) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(RELAY_CONFIG))
    with pytest.raises(ConfigError) as err:
        load_targets(path, {"WECOM_DUTY_URL": "http://x"})
    text = "\n".join(err.value.problems)
    assert "receivers.utility-gas[0].url_env: DINGTALK_GAS_URL is not set" in text
    assert "receivers.utility-gas[1].secret_env: FEISHU_GAS_SECRET is not set" in text
    path.write_text(yaml.safe_dump({"receivers": {"x": [{"kind": "slack", "url_env": "A"}]}}))
    with pytest.raises(ConfigError, match="kind"):
        load_targets(path, {"A": "http://x"})


def test_wecom_content_is_cut_to_its_limit() -> None:
    alerts = [{**_alert("gas.methane_alarm", f"gs-{i}", "pudong", "warning"), "status": "firing"} for i in range(200)]
    _url, body = request("wecom", "http://x", {"groupLabels": {}}, alerts, now_s=time.time())
    content = body["markdown"]["content"]
    assert len(content.encode()) <= WECOM_MAX_BYTES and content.endswith("(cut)")


def test_relay_command_serves_the_example_config(tmp_path: Path, sink: Sink) -> None:
    import os
    import subprocess
    import sys

    from tests.edge.conftest import REPO

    port = free_port()
    env = {**os.environ, "WECOM_DUTY_OFFICER_URL": f"{sink.url}/wecom?key=k", "DINGTALK_GAS_URL": f"{sink.url}/d",
           "DINGTALK_GAS_SECRET": "s", "FEISHU_WATER_URL": f"{sink.url}/f", "FEISHU_WATER_SECRET": "s"}
    proc = subprocess.Popen([sys.executable, "-m", "application.cli", "rules", "relay", "--config",
                             str(REPO / "deploy" / "alertmanager" / "relay.example.yaml"), "--listen",
                             f"127.0.0.1:{port}"], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def posted() -> bool:
            try:
                alert = {**_alert("gas.methane_alarm", "gs-9", "pudong", "warning"), "status": "firing",
                         "fingerprint": "f9"}
                return requests.post(f"http://127.0.0.1:{port}/hook/duty-officer", timeout=2,
                                     json={"receiver": "duty-officer", "alerts": [alert]}).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(posted, 20, what="the relay command to answer")
        path, query, _body = sink.take(1)[0]
        assert (path, query) == ("/wecom", {"key": ["k"]})
    finally:
        proc.terminate()
        proc.wait(10)


def test_an_mqtt_target_publishes_each_alert_state_once_for_the_receivers_account(tmp_path: Path,
                                                                                    stack: Stack) -> None:
    from urbansense.mqtt import MqttClient, MqttSettings

    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump({"receivers": {"utility-gas": [{"kind": "mqtt"}]}}))
    publisher = MqttClient(MqttSettings.from_url(stack.mqtt_url), client_id=f"t-relay-{uuid.uuid4().hex[:6]}")
    got: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
    publisher.subscribe("city/notify/#", lambda m: got.put((m.topic, json.loads(m.payload))), qos=1)
    publisher.connect()
    assert publisher.wait_subscribed(10)
    try:
        relay = Relay(load_targets(path, {}), publish=publisher.publish_wait)
        alert = {**_alert("gas.methane_alarm", "gs-4", "pudong", "critical"), "status": "firing", "fingerprint": "f4"}
        notification = {"receiver": "utility-gas", "alerts": [alert]}
        assert relay.handle("utility-gas", notification) == (200, "ok")
        topic, body = got.get(timeout=10)
        assert topic == "city/notify/utility-gas" and body["receiver"] == "utility-gas"
        assert (body["status"], body["labels"]["device"], body["fingerprint"]) == ("firing", "gs-4", "f4")
        assert relay.handle("utility-gas", notification) == (200, "ok")  # a repeat: not published again
        with pytest.raises(queue.Empty):
            got.get(timeout=1.0)

        def broker_down(topic: str, payload: bytes) -> None:
            raise OSError("broker unreachable")

        down = Relay(load_targets(path, {}), publish=broker_down)
        assert down.handle("utility-gas", notification)[0] == 503
        assert Relay(load_targets(path, {})).handle("utility-gas", notification)[0] == 503  # no broker given
    finally:
        publisher.close()
