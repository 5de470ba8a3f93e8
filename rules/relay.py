"""`urbansense rules relay`: Alertmanager's webhook receiver, forwarding each receiver's
notifications to the chat robots configured for it (WeCom, DingTalk, Feishu; formats in
rules/notify.py).

Alertmanager posts a receiver's notifications to `http://<relay>/hook/<receiver>`
(a `webhook_configs` entry in deploy/alertmanager/alertmanager.yml). The relay sends each
alert's new state (firing, resolved) to every target of that receiver once: Alertmanager
delivers at least once (a retry, a restart, the repeat interval), so what a target has
already had is skipped. A target that fails makes the answer 503, so Alertmanager
retries; the targets that took it are not sent it again.

The relay's config names, per receiver, the targets and the environment variables that
hold their URLs and secrets (a robot's URL carries its key: it is a secret too):

    receivers:
      duty-officer:
        - {kind: wecom, url_env: WECOM_DUTY_URL}
        - {kind: dingtalk, url_env: DINGTALK_DUTY_URL, secret_env: DINGTALK_DUTY_SECRET}
      utility-gas:
        - {kind: feishu, url_env: FEISHU_GAS_URL, secret_env: FEISHU_GAS_SECRET}
        - {kind: mqtt}          # city/notify/utility-gas, for the utility's own systems
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, cast

import requests
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rules.json_http import JsonHandler
from rules.notify import Kind, request
from urbansense.clock import TimeFormatError, parse_time_ms
from urbansense.config import ConfigError, load_model

log = logging.getLogger("urbansense.rules.relay")

#: Alert states remembered as delivered, per relay (the oldest are forgotten first).
REMEMBERED = 100_000


#: A target that is not a chat robot: the receiver's MQTT topic (NOTIFY_TOPIC).
MQTT = "mqtt"
#: Where an `mqtt` target publishes a receiver's notifications, one message per alert
#: state: the receiver is the account that may read it (a utility's, deploy/mosquitto/acl).
NOTIFY_TOPIC = "city/notify/{receiver}"


class TargetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Kind | Literal["mqtt"]
    url_env: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]*$")
    secret_env: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]*$")

    @model_validator(mode="after")
    def _url(self) -> TargetSpec:
        if self.kind != MQTT and self.url_env is None:
            raise ValueError(f"a {self.kind} target needs url_env: the variable holding the robot's URL")
        return self


class RelayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    receivers: dict[str, list[TargetSpec]]


@dataclass(frozen=True, slots=True)
class Target:
    receiver: str
    index: int
    kind: Kind | Literal["mqtt"]
    url: str
    secret: str | None


def load_targets(path: Path, environ: dict[str, str] | None = None) -> dict[str, list[Target]]:
    """The relay's targets with their URLs and secrets from the environment; every
    missing variable is reported with where it is named."""
    env = os.environ if environ is None else environ
    spec = load_model(path, RelayConfig)
    problems: list[str] = []
    out: dict[str, list[Target]] = {}
    for receiver, targets in spec.receivers.items():
        for i, t in enumerate(targets):
            for key in ("url_env", "secret_env"):
                name = getattr(t, key)
                if name is not None and not env.get(name):
                    problems.append(f"{path}: receivers.{receiver}[{i}].{key}: {name} is not set\n"
                                    f"  fix: export {name}=... (the robot's {'URL' if key == 'url_env' else 'secret'})")
            out.setdefault(receiver, []).append(Target(receiver, i, t.kind, env.get(t.url_env or "", ""),
                                                       env.get(t.secret_env) if t.secret_env else None))
    if problems:
        raise ConfigError(problems)
    return out


@dataclass
class RelayStats:
    notifications: int = 0
    delivered: int = 0
    skipped_repeats: int = 0
    failures: int = 0
    #: Seconds from an alert's start (startsAt) to its firing message reaching a target.
    latencies_s: list[float] = field(default_factory=list)


def _accepted(resp: requests.Response) -> bool:
    """The robots answer 200 with an error code in the body when they refuse."""
    if resp.status_code != 200:
        return False
    try:
        body = resp.json()
    except ValueError:
        return True
    if not isinstance(body, dict):
        return True
    code = body.get("errcode", body.get("code", body.get("StatusCode", 0)))
    return code in (0, None)


class Relay:
    def __init__(self, targets: dict[str, list[Target]], *, timeout_s: float = 10.0,
                 publish: Callable[[str, bytes], None] | None = None) -> None:
        """`publish(topic, payload)` for `mqtt` targets: returns once the broker has the
        message (QoS 1), raises when it does not."""
        self.targets = targets
        self.publish = publish
        self.timeout_s = timeout_s
        self.stats = RelayStats()
        self._sent: OrderedDict[tuple[str, int, str, str, str], None] = OrderedDict()
        self._lock = threading.Lock()
        self._session = requests.Session()

    def handle(self, receiver: str, notification: dict[str, Any]) -> tuple[int, str]:
        """(HTTP status, reason) for one Alertmanager notification."""
        targets = self.targets.get(receiver)
        if targets is None:
            return 404, f"no receiver {receiver!r} in the relay's config"
        alerts = notification.get("alerts")
        if not isinstance(alerts, list):
            return 400, "not an Alertmanager notification (no alerts list)"
        with self._lock:
            self.stats.notifications += 1
        failed = []
        for target in targets:
            with self._lock:
                fresh = [a for a in alerts if isinstance(a, dict) and self._key(target, a) not in self._sent]
                self.stats.skipped_repeats += len(alerts) - len(fresh)
            if not fresh:
                continue
            ok = self._send(target, notification, fresh)
            if not ok:
                with self._lock:
                    self.stats.failures += 1
                failed.append(f"{target.kind} #{target.index}")
                continue
            now = time.time()
            with self._lock:
                for a in fresh:
                    self._sent[self._key(target, a)] = None
                    if a.get("status") == "firing":
                        self.stats.latencies_s.append(now - _epoch_s(str(a.get("startsAt", ""))))
                while len(self._sent) > REMEMBERED:
                    self._sent.popitem(last=False)
                self.stats.delivered += len(fresh)
        if failed:
            return 503, f"not delivered to {', '.join(failed)} of {receiver}; retry"
        return 200, "ok"

    def _send(self, target: Target, notification: dict[str, Any], fresh: list[dict[str, Any]]) -> bool:
        if target.kind == MQTT:
            if self.publish is None:
                log.warning("%s target %d is mqtt but the relay has no broker (--mqtt)", target.receiver, target.index)
                return False
            topic = NOTIFY_TOPIC.format(receiver=target.receiver)
            try:
                for alert in fresh:
                    self.publish(topic, json.dumps({"v": 1, "receiver": target.receiver, **{
                        k: alert.get(k) for k in ("status", "labels", "annotations", "startsAt", "endsAt",
                                                  "fingerprint")}}).encode())
            except Exception as exc:  # the broker did not take it: Alertmanager retries
                log.warning("%s target %d (mqtt): %s", target.receiver, target.index, exc)
                return False
            return True
        kind = cast(Kind, target.kind)  # not mqtt, handled above
        url, body = request(kind, target.url, notification, fresh, secret=target.secret, now_s=time.time())
        try:
            return _accepted(self._session.post(url, json=body, timeout=self.timeout_s))
        except requests.RequestException as exc:
            log.warning("%s target %d (%s): %s", target.receiver, target.index, target.kind, type(exc).__name__)
            return False

    @staticmethod
    def _key(target: Target, alert: dict[str, Any]) -> tuple[str, int, str, str, str]:
        return (target.receiver, target.index, str(alert.get("fingerprint", "")), str(alert.get("status", "")),
                str(alert.get("startsAt", "")))


def _epoch_s(iso: str) -> float:
    """Alertmanager's RFC 3339 time in epoch seconds (now if it is not one)."""
    try:
        return parse_time_ms(iso) / 1000
    except TimeFormatError:
        return time.time()


class _Handler(JsonHandler):
    relay: Relay

    def do_POST(self) -> None:
        prefix = "/hook/"
        if not self.path.startswith(prefix):
            self._answer(404, f"post to {prefix}<receiver>")
            return
        try:
            notification = self.read_json(4 * 1024 * 1024)
        except (ValueError, OSError):
            self._answer(400, "the body is not JSON")
            return
        if not isinstance(notification, dict):
            self._answer(400, "the body is not a JSON object")
            return
        self._answer(*self.relay.handle(self.path[len(prefix):], notification))

    def _answer(self, status: int, reason: str) -> None:
        self.answer(status, {"status": status, "reason": reason})


def serve(relay: Relay, host: str, port: int) -> ThreadingHTTPServer:
    """The relay's HTTP server (serve_forever it in a thread, shutdown() to stop)."""
    handler = type("RelayHandler", (_Handler,), {"relay": relay})
    return ThreadingHTTPServer((host, port), handler)
