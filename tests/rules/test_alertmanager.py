"""Alerts through a real Prometheus Alertmanager (Debian's, started by the stack runner
with the shipped routing): labels and annotations, resent while firing, ended on
resolve, nothing lost while it is down; the shipped routing tree and inhibition."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from application.stack import Stack
from rules import notify
from rules.alertmanager import AlertmanagerSender, am_alert
from rules.routing import render
from tests.rules.test_service import Harness
from tests.waiting import wait_for
from urbansense.influx import InfluxClient
from urbansense.paths import ALERTMANAGER_CONF
from urbansense.schema import AlertEvent, Forecast

pytestmark = pytest.mark.integration

RULES = """
domain: water
rules:
  - {id: water.low, measurement: water, metric: pressure_mpa, op: below, threshold: 0.2, clear: 0.22,
     severity: critical}
  - {id: water.high, measurement: water, metric: pressure_mpa, op: above, threshold: 0.6, severity: warning}
"""


def _amtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("amtool") is None:
        pytest.fail("amtool is not installed; run: apt-get install -y prometheus-alertmanager (make test does it)")
    return subprocess.run(["amtool", *args], capture_output=True, text=True, check=False, timeout=30)


def test_shipped_routing_is_current_and_alertmanager_accepts_it() -> None:
    assert ALERTMANAGER_CONF.read_text(encoding="utf-8") == render(), "run: urbansense rules routing"
    checked = _amtool("check-config", str(ALERTMANAGER_CONF))
    assert checked.returncode == 0 and "2 inhibit rules" in checked.stdout, checked.stdout + checked.stderr

    def receivers(*labels: str) -> str:
        out = _amtool("config", "routes", "test", f"--config.file={ALERTMANAGER_CONF}", *labels)
        return out.stdout.strip().splitlines()[-1]

    assert receivers("domain=gas", "district=pudong", "severity=critical") == "duty-officer,utility-gas"
    assert receivers("domain=water", "severity=warning") == "utility-water"
    assert receivers("domain=system", "severity=warning") == "operations-engineers"
    assert receivers("domain=nothing-known", "severity=info") == "city-operations-centre"


@pytest.fixture
def alertmanager(stack: Stack) -> Iterator[str]:
    if shutil.which("prometheus-alertmanager") is None:
        pytest.fail("prometheus-alertmanager is not installed; run: apt-get install -y prometheus-alertmanager "
                    "(make test does it)")
    stack.start("alertmanager")
    yield stack.alertmanager_url
    stack.stop("alertmanager")


def _active(url: str, **filters: str) -> list[dict[str, Any]]:
    resp = requests.get(f"{url}/api/v2/alerts", params={"active": "true", "silenced": "true", "inhibited": "true",
                                                         **filters}, timeout=5)
    resp.raise_for_status()
    alerts: list[dict[str, Any]] = resp.json()
    return alerts


def _by_device(url: str, district: str) -> dict[str, dict[str, Any]]:
    return {a["labels"]["device"]: a for a in _active(url, filter=f'district="{district}"')
            if a["labels"].get("device")}


def test_alerts_reach_alertmanager_and_none_is_lost_while_it_is_down(
        stack: Stack, influx_db: InfluxClient, tmp_path: Path, alertmanager: str) -> None:
    (tmp_path / "water.yaml").write_text(RULES)
    district = f"am{uuid.uuid4().hex[:8]}"
    h = Harness(stack, influx_db, tmp_path, district, alertmanager_url=alertmanager)
    try:
        t = int(time.time() * 1000)
        h.send("wp-1", t, 0.1)  # critical: water.low
        h.send("wp-2", t, 0.9)  # warning: water.high
        assert sorted((e.device, e.state) for e in (h.next_alert(), h.next_alert())) == [
            ("wp-1", "firing"), ("wp-2", "firing")]
        wait_for(lambda: {"wp-1", "wp-2"} <= set(_by_device(alertmanager, district)), 15,
                 what="both alerts in Alertmanager")
        low = _by_device(alertmanager, district)["wp-1"]
        assert {k: low["labels"][k] for k in ("alertname", "rule", "kind", "purpose", "domain", "district",
                                              "severity", "gateway")} == {
            "alertname": "water.low", "rule": "water.low", "kind": "threshold", "purpose": "hazard",
            "domain": "water", "district": district, "severity": "critical", "gateway": "gw-1"}
        assert low["annotations"]["alert_id"] == f"water.low:{district}:wp-1"
        assert "pressure_mpa at wp-1" in low["annotations"]["summary"] and low["annotations"]["threshold"] == "0.2"
        assert sorted(r["name"] for r in low["receivers"]) == ["duty-officer", "utility-water"]
        # resent while firing: Alertmanager's end time moves on
        first_end = low["endsAt"]
        wait_for(lambda: _by_device(alertmanager, district)["wp-1"]["endsAt"] > first_end, 10,
                 what="the firing alert sent again with a later endsAt")
        # Alertmanager down: one alert resolves, one more fires meanwhile
        stack.stop("alertmanager")
        h.send("wp-2", t + 1000, 0.4)  # water.high resolves
        h.send("wp-3", t + 1000, 0.05)  # water.low fires on wp-3
        assert sorted((e.device, e.state) for e in (h.next_alert(), h.next_alert())) == [
            ("wp-2", "resolved"), ("wp-3", "firing")]
        wait_for(lambda: h.svc.alertmanager is not None and h.svc.alertmanager.failures > 0, 10,
                 what="the sender to notice Alertmanager is down")
        assert h.svc.alertmanager is not None and h.svc.alertmanager.pending_resolutions == 1
        stack.start("alertmanager")
        wait_for(lambda: set(_by_device(alertmanager, district)) == {"wp-1", "wp-3"}, 20,
                 what="after the restart: wp-3 firing, wp-2 resolved, wp-1 still firing")
        assert h.svc.alertmanager.pending_resolutions == 0
        # resolved for good
        h.send("wp-1", t + 2000, 0.3)
        h.send("wp-3", t + 2000, 0.3)
        wait_for(lambda: not _by_device(alertmanager, district), 15, what="every alert resolved in Alertmanager")
    finally:
        h.close()


def test_a_restarted_instance_keeps_telling_alertmanager_of_what_still_fires(
        stack: Stack, influx_db: InfluxClient, tmp_path: Path, alertmanager: str) -> None:
    """The warm start takes a firing alert as announced (not published again), but
    Alertmanager hears of it again: otherwise it would resolve it by itself when the last
    endsAt passed, and page "resolved" for a pressure still low."""
    (tmp_path / "water.yaml").write_text(RULES)
    district = f"amw{uuid.uuid4().hex[:6]}"
    now = int(time.time() * 1000)
    influx_db.write("\n".join(f"water,district={district},gateway=gw-1,device=wp-1 pressure_mpa=0.1 {now - s * 1000}"
                              for s in (120, 90, 60)))
    h = Harness(stack, influx_db, tmp_path, district, lookback_s=300, alertmanager_url=alertmanager)
    try:
        wait_for(lambda: set(_by_device(alertmanager, district)) == {"wp-1"}, 15,
                 what="the alert firing before the restart in Alertmanager")
        h.no_alert(0.2)  # and not published again on MQTT
    finally:
        h.close()


def test_a_district_handed_over_is_no_longer_sent_and_not_resolved() -> None:
    """Cluster mode: the instance that gave a district up stops sending its alerts (its new
    holder sends them) without resolving them."""
    sender = AlertmanagerSender("http://127.0.0.1:9", lambda e: ("gw-1", {}, "threshold", "hazard"))
    sender.offer(_event("water.low", "wp-1", "east"))
    sender.offer(_event("water.low", "wp-1", "west"))
    sender.hand_over("east")
    assert (sender.firing, sender.pending_resolutions) == (1, 0)


def _event(rule: str, device: str, district: str, severity: str = "warning", domain: str = "water") -> AlertEvent:
    now = int(time.time() * 1000)
    return AlertEvent(id=f"{rule}:{district}:{device}", rule=rule, domain=domain, severity=severity, state="firing",
                      district=district, device=device, metric=None, value=None, threshold=None, started=now, t=now,
                      message=f"{rule} at {device}")


def test_shipped_inhibition_silences_what_a_gateway_outage_or_a_burst_explains(alertmanager: str) -> None:
    district = f"inh{uuid.uuid4().hex[:6]}"
    alerts = [
        am_alert(_event("system.gateway_offline", "gw-1", district, domain="system"),
                 ("gw-1", {}, "gateway_offline", "health")),
        am_alert(_event("water.device_silent", "wp-1", district), ("gw-1", {}, "deadman", "health")),
        am_alert(_event("water.device_silent", "wp-9", district), ("gw-2", {}, "deadman", "health")),
        am_alert(_event("water.pipe_burst", "wp-5", district, "critical"),
                 ("gw-2", {"dma": "dma-a"}, "composite", "hazard")),
        am_alert(_event("water.pressure_low", "wp-6", district), ("gw-2", {"dma": "dma-a"}, "threshold", "hazard")),
        am_alert(_event("water.pressure_low", "wp-7", district), ("gw-2", {"dma": "dma-b"}, "threshold", "hazard")),
        am_alert(_event("water.pressure_low", "wp-8", district), ("gw-2", {}, "threshold", "hazard")),
        # a burst at a point in no metered area explains nothing else (not every dma-less point)
        am_alert(_event("water.pipe_burst", "wp-10", district, "critical"), ("gw-2", {}, "composite", "hazard")),
    ]
    ends = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 600))
    requests.post(f"{alertmanager}/api/v2/alerts", json=[{**a, "endsAt": ends} for a in alerts],
                  timeout=5).raise_for_status()

    def inhibited() -> dict[str, bool] | None:
        got = _by_device(alertmanager, district)
        if len(got) < 8:
            return None
        return {dev: bool(a["status"]["inhibitedBy"]) for dev, a in got.items()}

    state = wait_for(lambda: (s := inhibited()) is not None and s["wp-1"] and s["wp-6"] and s, 15,
                     what="Alertmanager's inhibition applied")
    assert state == {"gw-1": False, "wp-1": True, "wp-9": False, "wp-5": False, "wp-6": True, "wp-7": False,
                     "wp-8": False, "wp-10": False}


def test_an_alert_carries_its_forecast_and_recommended_action() -> None:
    event = _event("flood.outfall_rising", "of-1", "pudong", domain="flood")
    event.forecast = Forecast(crosses_at=1_764_190_000_000, eta_s=840.0)
    event.command = {"topic": "city/pudong/pd-gw-flood/cmd", "dev": "ps-0101", "field": "pump3_run", "value": True}
    alert = am_alert(event, ("pd-gw-flood", {"dma": "x", "not a label": "y"}, "forecast", "hazard"))
    assert alert["annotations"]["forecast_eta_s"] == "840"
    assert alert["annotations"]["forecast_crosses_at"].startswith("2025-11-26T20:46:40")
    assert "pump3_run of ps-0101 to True" in alert["annotations"]["recommended_action"]
    assert alert["labels"]["dma"] == "x" and "not a label" not in alert["labels"]
    assert "contributing_sensors" not in alert["annotations"]  # one device: nothing more to name
    event.contributors = ["lc-1", "lc-2"]
    alert = am_alert(event, ("pd-gw-flood", {}, "composite", "hazard"))
    assert alert["annotations"]["contributing_sensors"] == "lc-1, lc-2"
    line = notify.alert_line({**alert, "status": "firing"})
    assert line.endswith("; sensors: lc-1, lc-2; recommended: set pump3_run of ps-0101 to True "
                         "(urbansense edge command --alert)"), line
