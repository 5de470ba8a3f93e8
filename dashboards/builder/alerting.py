"""Grafana alerting provisioning: rules on the `alerts` measurement, contact points,
notification policies.

The rules engine decides *what* is wrong (early warnings, hysteresis, flapping); Grafana
only routes it to people. So there is one Grafana rule per domain and severity, each
counting, per district, the alerts whose newest event is firing:

    SELECT count("state") FROM (SELECT last("state") AS "state" FROM "alerts"
      WHERE "domain" = 'gas' AND "severity" = 'critical' AND time > now() - 7d
      GROUP BY "district", "rule", "device") WHERE "state" <> 'resolved' AND ...
      GROUP BY "district"

and firing when the count is above 0. The result keeps the `district` tag, so each
district is its own Grafana alert instance, and the policies group notifications by
district. No `$` appears in these queries: Grafana expands environment variables
(`$NAME`) in provisioning files, which is how the contact points get their secrets.
"""

from __future__ import annotations

from typing import Any

from dashboards.builder import DATASOURCE_UID, FOLDER_TITLE
from urbansense.identifiers import DOMAINS, SEVERITIES

Json = dict[str, Any]
#: How far back an alert's newest event is looked for. An alert that neither fired nor
#: resolved for this long drops out (the rules engine's own deadman covers silence).
LOOKBACK = "7d"
LOOKBACK_S = 7 * 86_400
EVALUATION_INTERVAL = "1m"
#: Contact point names (referenced by the policies).
MQTT_CONTACT = "urbansense-mqtt"
WEBHOOK_CONTACT = "urbansense-webhook"
#: Topic Grafana publishes its notifications on (the `grafana` MQTT account may write it).
NOTIFY_TOPIC = "city/ops/grafana/notifications"


def rule_query(domain: str, severity: str, lookback: str = LOOKBACK) -> str:
    return (
        'SELECT count("state") AS "active" FROM (SELECT last("state") AS "state" FROM "alerts" '
        f"WHERE \"domain\" = '{domain}' AND \"severity\" = '{severity}' AND time > now() - {lookback} "
        'GROUP BY "district", "rule", "device") '
        "WHERE \"state\" <> 'resolved' AND \"state\" <> 'pending' GROUP BY \"district\""
    )


def rule(domain: str, severity: str) -> Json:
    return {
        "uid": f"urbansense-{domain}-{severity}",
        "title": f"UrbanSense {domain} {severity} alerts",
        "condition": "C",
        "data": [
            {"refId": "A", "datasourceUid": DATASOURCE_UID,
             "relativeTimeRange": {"from": LOOKBACK_S, "to": 0},
             "model": {"refId": "A", "query": rule_query(domain, severity), "rawQuery": True,
                       "resultFormat": "time_series", "intervalMs": 60_000, "maxDataPoints": 43_200}},
            {"refId": "B", "datasourceUid": "__expr__", "relativeTimeRange": {"from": 0, "to": 0},
             "model": {"refId": "B", "type": "reduce", "expression": "A", "reducer": "last",
                       "settings": {"mode": "replaceNN", "replaceWithValue": 0}}},
            {"refId": "C", "datasourceUid": "__expr__", "relativeTimeRange": {"from": 0, "to": 0},
             "model": {"refId": "C", "type": "threshold", "expression": "B",
                       "conditions": [{"evaluator": {"type": "gt", "params": [0]}}]}},
        ],
        # No rows = no active alert of this kind: that is the normal, quiet state.
        "noDataState": "OK",
        "execErrState": "Error",
        "for": "0s",
        "labels": {"domain": domain, "severity": severity, "source": "urbansense-rules"},
        "annotations": {
            "summary": f"{{{{ .Values.B }}}} active {severity} {domain} alert(s) in "
                       "{{ .Labels.district }}",
            "description": f"The UrbanSense rules engine reports active {severity} {domain} "
                           "alerts in district {{ .Labels.district }}. Details: dashboard "
                           "'UrbanSense - City overview', table 'Active alerts'.",
        },
        "isPaused": False,
    }


def alert_rules() -> Json:
    groups = [{"orgId": 1, "name": f"urbansense-{domain}", "folder": FOLDER_TITLE,
               "interval": EVALUATION_INTERVAL,
               "rules": [rule(domain, severity) for severity in SEVERITIES]}
              for domain in DOMAINS]
    return {"apiVersion": 1, "groups": groups}


def contact_points() -> Json:
    return {"apiVersion": 1, "contactPoints": [
        {"orgId": 1, "name": MQTT_CONTACT, "receivers": [{
            "uid": "urbansense-mqtt", "type": "mqtt", "disableResolveMessage": False,
            "settings": {
                "brokerUrl": "$GRAFANA_MQTT_BROKER_URL",
                "clientId": "grafana-alerting",
                "topic": NOTIFY_TOPIC,
                "messageFormat": "json",
                "username": "$GRAFANA_MQTT_USERNAME",
                "password": "$GRAFANA_MQTT_PASSWORD",
                "qos": 1,
                "retain": False,
            }}]},
        {"orgId": 1, "name": WEBHOOK_CONTACT, "receivers": [{
            "uid": "urbansense-webhook", "type": "webhook", "disableResolveMessage": False,
            "settings": {"url": "$GRAFANA_WEBHOOK_URL", "httpMethod": "POST"}}]},
    ]}


def notification_policies() -> Json:
    """Everything to the webhook, grouped by district; warnings and critical ones also on
    MQTT (duty officers' tools and utilities listen there); critical repeats sooner."""
    group_by = ["district", "domain", "alertname"]
    return {"apiVersion": 1, "policies": [{
        "orgId": 1,
        "receiver": WEBHOOK_CONTACT,
        "group_by": group_by,
        "group_wait": "30s",
        "group_interval": "5m",
        "repeat_interval": "4h",
        "routes": [
            {"receiver": MQTT_CONTACT, "group_by": group_by, "continue": True,
             "object_matchers": [["source", "=", "urbansense-rules"], ["severity", "=", "critical"]],
             "group_wait": "0s", "group_interval": "1m", "repeat_interval": "30m"},
            {"receiver": MQTT_CONTACT, "group_by": group_by, "continue": True,
             "object_matchers": [["source", "=", "urbansense-rules"], ["severity", "=", "warning"]],
             "repeat_interval": "2h"},
            # A matching route with `continue` does not fall back to the root receiver,
            # so the webhook gets its own catch-all route after the MQTT ones.
            {"receiver": WEBHOOK_CONTACT, "group_by": group_by,
             "object_matchers": [["source", "=", "urbansense-rules"]]},
        ],
    }]}
