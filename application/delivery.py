"""The demo's alert delivery, on the parts a city runs: Prometheus Alertmanager with the
shipped routing (rules/routing.py), every receiver's webhook pointed at the relay
(`urbansense rules relay`), and the relay publishing each receiver's notifications on
`city/notify/<receiver>`, where a utility's systems read them.

`DeliveryWatch` follows both ends: each alert as the rules service publishes it on
`city/alerts/...`, each notification as a receiver gets it, and Alertmanager's own view
(its v2 API: which alerts it holds, which it inhibits). From them: delivery latency, from
the alert's publication to each receiver's notification (wall clock, both seen by one
subscriber); the alerts inhibited; and the firing alerts no receiver was told of.

The demo runs event time 60x (or more) faster than the wall clock, so its routing groups
faster than the shipped one (DEMO_GROUP_WAIT_S and DEMO_GROUP_INTERVAL_S against 10 s and
1 min): Alertmanager's timers are wall-clock timers.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import requests
import yaml

from rules.routing import config, via_relay
from urbansense.schema import AlertEvent

DEMO_GROUP_WAIT_S = 2
DEMO_GROUP_INTERVAL_S = 5
#: Where the relay publishes (rules.relay.NOTIFY_TOPIC, every receiver).
NOTIFY_TOPICS = "city/notify/#"

#: An Alertmanager alert of ours: the rules service's alert id and the severity (an
#: escalation is a new Alertmanager alert under the same id).
Key = tuple[str, str]


def alertmanager_config(relay_url: str) -> str:
    """The shipped routing, every receiver posting to the relay, grouping at demo speed."""
    return yaml.safe_dump(via_relay(config(), relay_url, group_wait=f"{DEMO_GROUP_WAIT_S}s",
                                    group_interval=f"{DEMO_GROUP_INTERVAL_S}s"), sort_keys=False)


@dataclass(slots=True)
class Raised:
    at: float  # wall clock, when the watcher saw it on city/alerts
    domain: str
    resolved_at: float | None = None


@dataclass
class DeliveryWatch:
    alertmanager_url: str
    raised: dict[Key, Raised] = field(default_factory=dict)
    #: (alert, receiver) -> wall time of the first firing notification
    notified: dict[tuple[Key, str], float] = field(default_factory=dict)
    repeats: int = 0  # firing notifications of an (alert, receiver) already told
    in_alertmanager: set[Key] = field(default_factory=set)
    inhibited: set[Key] = field(default_factory=set)
    silenced: set[Key] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    # ------------------------------------------------------------------ inputs
    def on_alert(self, event: AlertEvent) -> None:
        """A published alert event (any thread): firing ones are expected at receivers."""
        key = (event.id, event.severity)
        now = time.time()
        with self.lock:
            if event.state == "firing":
                self.raised.setdefault(key, Raised(now, event.domain))
            elif event.state == "resolved":
                for k, r in self.raised.items():
                    if k[0] == event.id and r.resolved_at is None:
                        r.resolved_at = now
            if event.supersedes:  # the escalation ends the warning's Alertmanager alert
                old = self.raised.get((event.id, event.supersedes))
                if old is not None and old.resolved_at is None:
                    old.resolved_at = now

    def on_notification(self, payload: bytes) -> None:
        """One alert state the relay published on city/notify/<receiver> (any thread)."""
        try:
            body = json.loads(payload)
            key = (str(body["annotations"]["alert_id"]), str(body["labels"]["severity"]))
            receiver, status = str(body["receiver"]), body["status"]
        except (ValueError, KeyError, TypeError) as exc:
            with self.lock:
                self.errors.append(f"unreadable notification: {exc}")
            return
        if status != "firing":
            return
        now = time.time()
        with self.lock:
            if (key, receiver) in self.notified:
                self.repeats += 1
            else:
                self.notified[(key, receiver)] = now

    def poll_alertmanager(self, timeout_s: float = 2.0) -> None:
        """What Alertmanager holds now: our alerts, and which it inhibits or silences."""
        try:
            resp = requests.get(f"{self.alertmanager_url}/api/v2/alerts", timeout=timeout_s)
            resp.raise_for_status()
            alerts = resp.json()
        except (requests.RequestException, ValueError) as exc:
            with self.lock:
                self.errors.append(f"Alertmanager: {type(exc).__name__}")
            return
        with self.lock:
            for a in alerts:
                alert_id = a.get("annotations", {}).get("alert_id")
                if not alert_id:
                    continue
                key = (str(alert_id), str(a.get("labels", {}).get("severity", "")))
                self.in_alertmanager.add(key)
                status = a.get("status", {})
                if status.get("inhibitedBy"):
                    self.inhibited.add(key)
                if status.get("silencedBy"):
                    self.silenced.add(key)

    # ------------------------------------------------------------------ views
    def outstanding(self) -> list[Key]:
        """Firing alerts no receiver has been told of yet that one should be: neither held
        back by Alertmanager (inhibited, silenced) nor over before their group was due."""
        with self.lock:
            told = {k for k, _r in self.notified}
            return [k for k, r in self.raised.items()
                    if k not in told and k not in self.inhibited and k not in self.silenced
                    and not _over_before_due(r)]

    def delivered_to(self, alert_id: str, receiver: str) -> bool:
        with self.lock:
            return any(k[0] == alert_id and r == receiver for k, r in self.notified)

    def live_line(self) -> str:
        with self.lock:
            told = {k for k, _r in self.notified}
            return (f"Alertmanager: {len(self.in_alertmanager)} alert(s), {len(self.inhibited)} inhibited; "
                    f"receivers told of {len(told)} of {len(self.raised)} firing")

    def summary(self) -> dict[str, Any]:
        with self.lock:
            delays = [at - self.raised[k].at for (k, _r), at in self.notified.items() if k in self.raised]
            told = {k for k, _r in self.notified}
            receivers: dict[str, int] = {}
            for _k, r in self.notified:
                receivers[r] = receivers.get(r, 0) + 1
            firing = list(self.raised)
            short = [k for k in firing if k not in told and _over_before_due(self.raised[k])]
        undelivered = self.outstanding()
        return {
            "firing_alerts": len(firing),
            "in_alertmanager": len(self.in_alertmanager | told),
            "notified_alerts": len(told & set(firing)),
            "notifications": len(delays),
            "repeats_at_receivers": self.repeats,
            "by_receiver": dict(sorted(receivers.items())),
            "latency_p50_s": _pct(delays, 50),
            "latency_p99_s": _pct(delays, 99),
            "inhibited": len(self.inhibited),
            "silenced": len(self.silenced),
            "over_before_due": len(short),
            "undelivered": [f"{k[0]} ({k[1]})" for k in undelivered],
            "group_wait_s": DEMO_GROUP_WAIT_S,
            "group_interval_s": DEMO_GROUP_INTERVAL_S,
            "errors": self.errors[-5:],
        }


def _over_before_due(r: Raised) -> bool:
    """Resolved before its group was due (a new group waits group_wait, a change to a
    group group_interval; a second of slack): Alertmanager then tells no receiver that it
    fired, only, with the group, that it resolved."""
    return r.resolved_at is not None and r.resolved_at - r.at <= max(DEMO_GROUP_WAIT_S, DEMO_GROUP_INTERVAL_S) + 1.0


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None
