"""Alerts to Prometheus Alertmanager, through its v2 API (POST /api/v2/alerts), where the
routing tree (deploy/alertmanager, rules/routing.py) sends them on, groups, inhibits and
silences them.

As Prometheus does: a firing alert is sent again every `resend_s` with `endsAt` =
now + 4 x resend_s, so one the rules service stops repeating (it died) resolves by
itself; a resolved one is sent once more with `endsAt` = now. An escalation
(warning -> critical, one alert id) is a new Alertmanager alert (severity is a label):
the warning one is resolved with it.

While Alertmanager does not answer nothing is dropped: the firing alerts are state, the
resolutions wait (up to MAX_RESOLVED), and everything goes in the first request it
answers; Alertmanager deduplicates by labels, so a repeat is harmless.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from urbansense.schema import AlertEvent

log = logging.getLogger("urbansense.rules.alertmanager")

#: Resolutions kept while Alertmanager is unreachable (the oldest go first beyond this).
MAX_RESOLVED = 10_000

#: (gateway, inventory labels, rule kind, rule purpose) of an alert's device and rule.
Context = tuple[str | None, dict[str, str], str, str]


def _iso(epoch_s: float) -> str:
    return dt.datetime.fromtimestamp(epoch_s, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def am_alert(event: AlertEvent, context: Context) -> dict[str, Any]:
    """The Alertmanager alert of an event, without `endsAt`: its labels (what routing,
    grouping and inhibition match) and annotations (what a receiver shows)."""
    gateway, inventory, kind, purpose = context
    labels = {key: value for key, value in inventory.items() if key.isidentifier()}
    labels.update(alertname=event.rule, rule=event.rule, kind=kind, purpose=purpose, domain=event.domain,
                  district=event.district, severity=event.severity)
    if event.device:
        labels["device"] = event.device
    if gateway:
        labels["gateway"] = gateway
    annotations = {"summary": event.message, "alert_id": event.id}
    if event.metric:
        annotations["metric"] = event.metric
    for key, number in (("value", event.value), ("threshold", event.threshold)):
        if number is not None:
            annotations[key] = f"{number:g}"
    if event.forecast is not None:
        annotations["forecast_eta_s"] = f"{event.forecast.eta_s:.0f}"
        annotations["forecast_crosses_at"] = _iso(event.forecast.crosses_at / 1000)
    if event.contributors:
        annotations["contributing_sensors"] = ", ".join(event.contributors)
    if event.command is not None:
        annotations["recommended_action"] = (f"set {event.command['field']} of {event.command['dev']} to "
                                              f"{event.command['value']!r} (urbansense edge command --alert)")
    return {"labels": labels, "annotations": annotations, "startsAt": _iso(event.started / 1000)}


class AlertmanagerSender:
    def __init__(self, url: str, context_of: Callable[[AlertEvent], Context], *, resend_s: float = 30.0,
                 timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/") + "/api/v2/alerts"
        self.context_of = context_of
        self.resend_s = resend_s
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._wake = threading.Event()
        #: Firing alerts by (alert id, severity); resolutions not yet delivered.
        self._firing: dict[tuple[str, str], dict[str, Any]] = {}
        self._resolved: list[dict[str, Any]] = []
        self._session = requests.Session()
        self.sent_requests = 0
        self.failures = 0
        self.dropped_resolutions = 0
        self.last_error = ""
        self._down_since: float | None = None

    @property
    def firing(self) -> int:
        return len(self._firing)

    @property
    def pending_resolutions(self) -> int:
        return len(self._resolved)

    def offer(self, event: AlertEvent) -> None:
        """Take a published event (any thread); the sender's thread posts it at once."""
        if event.state == "pending" or event.response is not None:
            return  # not yet an alert; a response's outcome is history, not a new state
        alert = am_alert(event, self.context_of(event))
        with self._lock:
            if event.supersedes:
                self._resolve((event.id, event.supersedes))
            key = (event.id, event.severity)
            if event.state == "firing":
                self._firing[key] = alert
            elif not self._resolve(key):
                self._queue_resolved(alert)
        self._wake.set()

    def hand_over(self, district: str) -> None:
        """Stop sending the district's firing alerts, without resolving them: another
        rules instance holds the district now (cluster mode) and sends them itself."""
        with self._lock:
            for key in [k for k, alert in self._firing.items() if alert["labels"].get("district") == district]:
                del self._firing[key]

    def _resolve(self, key: tuple[str, str]) -> bool:
        alert = self._firing.pop(key, None)
        if alert is None:
            return False
        self._queue_resolved(alert)
        return True

    def _queue_resolved(self, alert: dict[str, Any]) -> None:
        self._resolved.append({**alert, "endsAt": _iso(time.time())})
        if len(self._resolved) > MAX_RESOLVED:
            del self._resolved[0]
            self.dropped_resolutions += 1

    def flush(self) -> bool:
        """Post every firing alert and every waiting resolution; True when Alertmanager took them."""
        with self._lock:
            ends = _iso(time.time() + 4 * self.resend_s)
            body = [{**alert, "endsAt": ends} for alert in self._firing.values()]
            resolved = list(self._resolved)
        if not body and not resolved:
            return True
        try:
            resp = self._session.post(self.url, json=body + resolved, timeout=self.timeout_s)
            ok = resp.status_code == 200
            why = "" if ok else f"answered {resp.status_code}: {resp.text.strip()[:200]}"
        except requests.RequestException as exc:
            ok, why = False, f"unreachable ({type(exc).__name__})"
        if not ok:
            self.failures += 1
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning("Alertmanager at %s %s; %d firing alert(s) and %d resolution(s) kept for when it "
                            "answers", self.url, why, len(body), len(resolved))
            self.last_error = why
            return False
        if self._down_since is not None:
            log.info("Alertmanager at %s answers again after %.0f s; %d alert(s) sent", self.url,
                     time.monotonic() - self._down_since, len(body) + len(resolved))
            self._down_since = None
        self.sent_requests += 1
        with self._lock:
            del self._resolved[: len(resolved)]
        return True

    def run(self, stop: threading.Event) -> None:
        """Post at once when an event comes, else every resend_s; after a failure, retry
        within a few seconds."""
        while not stop.is_set():
            ok = self.flush()
            self._wake.wait(self.resend_s if ok else min(self.resend_s, 2.0))
            self._wake.clear()
        self.flush()  # the last resolutions on a clean stop
        self._session.close()

    def wake(self) -> None:
        self._wake.set()
