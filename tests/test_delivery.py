"""The demo's delivery watch: which firing alerts reached a receiver, which Alertmanager
held back, which were over before their group was due, and which were lost."""

from __future__ import annotations

import json
import time

import yaml

from application.delivery import DEMO_GROUP_INTERVAL_S, DeliveryWatch, Raised, alertmanager_config
from rules.routing import render_relay
from urbansense.schema import AlertEvent


def _event(alert_id: str, state: str, severity: str = "warning", supersedes: str | None = None) -> AlertEvent:
    return AlertEvent(id=alert_id, rule=alert_id.split(":")[0], domain="water", severity=severity, state=state,
                      district="d", device="wp-1", metric="pressure_mpa", value=0.1, threshold=0.2, started=0,
                      t=0, message="m", supersedes=supersedes)


def _notification(alert_id: str, severity: str, receiver: str, status: str = "firing") -> bytes:
    return json.dumps({"v": 1, "receiver": receiver, "status": status,
                       "labels": {"severity": severity, "alertname": alert_id.split(":")[0]},
                       "annotations": {"alert_id": alert_id}}).encode()


def test_told_held_back_short_and_lost_alerts_are_told_apart() -> None:
    watch = DeliveryWatch("http://127.0.0.1:1")
    for alert_id in ("a", "short", "lost", "held"):
        watch.on_alert(_event(alert_id, "firing"))
    watch.on_notification(_notification("a", "warning", "utility-water"))
    watch.on_notification(_notification("a", "warning", "utility-water"))  # Alertmanager's at-least-once
    watch.on_notification(_notification("a", "warning", "duty-officer"))
    watch.on_notification(_notification("a", "warning", "utility-water", status="resolved"))
    watch.on_alert(_event("short", "resolved"))  # over at once: its group never told anyone it fired
    watch.inhibited.add(("held", "warning"))
    watch.on_notification(b"{not json")
    assert watch.outstanding() == [("lost", "warning")]
    assert watch.delivered_to("a", "duty-officer") and not watch.delivered_to("lost", "utility-water")
    s = watch.summary()
    assert (s["firing_alerts"], s["notified_alerts"], s["notifications"], s["repeats_at_receivers"]) == (4, 1, 2, 1)
    assert (s["inhibited"], s["over_before_due"], s["undelivered"]) == (1, 1, ["lost (warning)"])
    assert s["by_receiver"] == {"duty-officer": 1, "utility-water": 1} and s["latency_p50_s"] is not None
    assert len(s["errors"]) == 1 and "unreadable notification" in s["errors"][0]


def test_an_escalation_ends_the_warning_and_a_long_alert_is_still_expected() -> None:
    watch = DeliveryWatch("http://127.0.0.1:1")
    watch.on_alert(_event("b", "firing"))
    watch.on_alert(_event("b", "firing", severity="critical", supersedes="warning"))
    # the warning ended with the escalation, before its group was due: not expected
    assert watch.outstanding() == [("b", "critical")]
    # a resolution long after firing does not excuse a missing notification
    watch.raised[("c", "warning")] = Raised(time.time() - 60, "water", resolved_at=time.time())
    assert ("c", "warning") in watch.outstanding()
    assert DEMO_GROUP_INTERVAL_S < 60


def test_every_receiver_posts_to_the_relay_which_publishes_it() -> None:
    am = yaml.safe_load(alertmanager_config("http://127.0.0.1:9"))
    relay = yaml.safe_load(render_relay())
    assert am["route"]["group_wait"] == "2s" and am["inhibit_rules"]  # the shipped tree, timed for the demo
    for receiver in am["receivers"]:
        assert receiver["webhook_configs"] == [{"url": f"http://127.0.0.1:9/hook/{receiver['name']}"}]
        assert relay["receivers"][receiver["name"]] == [{"kind": "mqtt"}]
