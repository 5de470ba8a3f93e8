"""The pipeline's health on Prometheus: the shipped config and rules pass promtool's
checks and unit tests; and, with a real Prometheus (Debian's) scraping a real ingester,
killing the ingester raises IngesterDown at a real Alertmanager, routed like every
system alert."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from application.stack import Stack, free_port
from ingest.service import Ingester
from ingest.settings import IngestSettings
from tests.waiting import wait_for
from urbansense.mqtt import MqttSettings

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "deploy" / "prometheus"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is not installed; run: apt-get install -y prometheus (make test does it)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, check=False, timeout=60, cwd=PROM)


def test_shipped_config_and_rules_pass_promtool_and_their_unit_tests() -> None:
    for args in (("check", "config", "prometheus.yml"), ("check", "rules", "urbansense-rules.yml"),
                 ("test", "rules", "tests.yml")):
        out = _promtool(*args)
        assert out.returncode == 0, f"promtool {' '.join(args)}:\n{out.stdout}{out.stderr}"
    rules = yaml.safe_load((PROM / "urbansense-rules.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    # every alert is a system alert (the routing sends it to the operations engineers) with a severity
    assert all(r["labels"]["domain"] == "system" and r["labels"]["severity"] in ("warning", "critical")
               for r in alerts)
    tested = {line.split(":", 1)[1].strip() for line in (PROM / "tests.yml").read_text().splitlines()
              if line.strip().startswith("alertname:")}
    assert {r["alert"] for r in alerts} <= tested, "an alert without a unit test"


@pytest.mark.integration
def test_a_killed_ingester_raises_an_alert_at_alertmanager(tmp_path: Path, stack: Stack) -> None:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed; run: apt-get install -y prometheus (make test does it)")
    private = Stack(tmp_path / "health")
    metrics_port = free_port()
    instance = f"ingest-{uuid.uuid4().hex[:6]}"
    ingester = Ingester(MqttSettings.from_url(stack.mqtt_url), stack.influx_url, database="health_test",
                        instance=instance, settings=IngestSettings(prometheus_port=metrics_port))
    thread = threading.Thread(target=ingester.run, daemon=True)
    thread.start()
    # the shipped rules, with IngesterDown's `for` shortened so the test does not wait a minute
    rules: dict[str, Any] = yaml.safe_load((PROM / "urbansense-rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "IngesterDown":
                rule["for"] = "2s"
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    try:
        private.start("alertmanager")
        am = private.alertmanager_url
        private.prometheus_config = yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp_path / "rules.yml")],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [am.removeprefix("http://")]}]}]},
            "scrape_configs": [{"job_name": "ingest",
                                "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}]})
        prom = private.start("prometheus").url

        def up() -> list[Any]:
            got = requests.get(f"{prom}/api/v1/query", params={"query": 'up{job="ingest"}'}, timeout=5).json()
            return [float(r["value"][1]) for r in got["data"]["result"]]

        wait_for(lambda: up() == [1.0], 30, what="Prometheus scraping the ingester")
        killed_at = time.monotonic()
        ingester.stop()
        thread.join(30)

        def fired() -> dict[str, Any] | None:
            alerts = requests.get(f"{am}/api/v2/alerts", params={"filter": 'alertname="IngesterDown"'},
                                  timeout=5).json()
            return alerts[0] if alerts else None

        alert = wait_for(fired, 60, what="IngesterDown at Alertmanager")
        print(f"IngesterDown reached Alertmanager {time.monotonic() - killed_at:.1f} s after the kill")
        assert alert["labels"]["severity"] == "critical" and alert["labels"]["domain"] == "system"
        assert sorted(r["name"] for r in alert["receivers"]) == ["duty-officer", "operations-engineers"]
        assert f"127.0.0.1:{metrics_port}" in alert["annotations"]["summary"]
    finally:
        ingester.stop()
        private.down()


def test_every_scrape_target_is_a_compose_service_listening_beyond_its_container() -> None:
    """Prometheus runs in its own container: a target must be a service that serves metrics
    on that port on all its addresses (127.0.0.1 inside a container is unreachable)."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets
    for target in targets:
        service, port = target.split(":")
        command = compose[service]["command"]
        assert port in command and "0.0.0.0" in command, f"{service}: {command}"
    alertmanagers = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert [t.split(":")[0] for t in alertmanagers] == ["alertmanager"] and "alertmanager" in compose
