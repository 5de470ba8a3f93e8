"""Alertmanager notifications as the chat robots Chinese operators use want them: WeCom
(企业微信) group robots, DingTalk (钉钉) and Feishu (飞书) custom bots, with their
signing where the bot has a secret. Used by the relay (rules/relay.py).

- WeCom: POST the robot URL (its key in the query) `{"msgtype": "markdown", "markdown":
  {"content": ...}}`; content at most 4,096 bytes.
- DingTalk: POST the robot URL (access_token in the query) `{"msgtype": "markdown",
  "markdown": {"title", "text"}}`; with a secret, `&timestamp=<ms>&sign=<s>` where s is
  base64(HMAC-SHA256(key=secret, msg="<ms>\\n<secret>")), URL-encoded.
- Feishu: POST the bot URL `{"msg_type": "text", "content": {"text"}}`; with a secret,
  also `"timestamp": "<s>"` and `"sign"`: base64(HMAC-SHA256(key="<s>\\n<secret>", msg="")).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import urllib.parse
from typing import Any, Literal

from urbansense.clock import TimeFormatError, parse_time_ms
from urbansense.hj212 import CHINA

Kind = Literal["wecom", "dingtalk", "feishu"]
KINDS: tuple[Kind, ...] = ("wecom", "dingtalk", "feishu")
#: WeCom refuses markdown content beyond this many bytes.
WECOM_MAX_BYTES = 4096


def _when(iso: str) -> str:
    """Alertmanager's RFC 3339 time as local Beijing time (what an operator reads)."""
    try:
        t_ms = parse_time_ms(iso)
    except TimeFormatError:
        return iso
    return dt.datetime.fromtimestamp(t_ms / 1000, CHINA).strftime("%m-%d %H:%M")


def alert_line(alert: dict[str, Any]) -> str:
    """One alert of a notification, on one line."""
    labels, notes = alert.get("labels", {}), alert.get("annotations", {})
    state = "RESOLVED" if alert.get("status") == "resolved" else str(labels.get("severity", "?")).upper()
    where = " ".join(x for x in (labels.get("device"), f"({labels.get('district')})" if labels.get("district")
                                 else None) if x)
    line = f"{state} {labels.get('alertname', '?')} {where}: {notes.get('summary', '')}".strip()
    since = _when(str(alert.get("startsAt", "")))
    line += f" [since {since}" + (f", ended {_when(str(alert['endsAt']))}]" if alert.get("status") == "resolved"
                                  else "]")
    if notes.get("forecast_eta_s") and alert.get("status") != "resolved":
        line += f" threshold in about {int(float(notes['forecast_eta_s']) // 60)} min"
    if notes.get("contributing_sensors") and alert.get("status") != "resolved":
        line += f"; sensors: {notes['contributing_sensors']}"
    if notes.get("recommended_action") and alert.get("status") != "resolved":
        line += f"; recommended: {notes['recommended_action']}"
    return line


def title(notification: dict[str, Any], alerts: list[dict[str, Any]]) -> str:
    firing = sum(1 for a in alerts if a.get("status") != "resolved")
    group = notification.get("groupLabels", {})
    what = " ".join(str(group[k]) for k in ("domain", "district", "alertname") if group.get(k))
    state = f"FIRING:{firing}" if firing else "RESOLVED"
    return f"[{state}] {what or notification.get('receiver', '')}".strip()


def text(notification: dict[str, Any], alerts: list[dict[str, Any]]) -> str:
    return "\n".join([title(notification, alerts), *(f"- {alert_line(a)}" for a in alerts)])


def _fit(content: str, limit: int) -> str:
    raw = content.encode("utf-8")
    if len(raw) <= limit:
        return content
    return raw[: limit - 20].decode("utf-8", "ignore") + "\n... (cut)"


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    digest = hmac.new(secret.encode("utf-8"), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def feishu_sign(secret: str, timestamp_s: int) -> str:
    digest = hmac.new(f"{timestamp_s}\n{secret}".encode(), b"", hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def request(kind: Kind, url: str, notification: dict[str, Any], alerts: list[dict[str, Any]], *,
            secret: str | None = None, now_s: float) -> tuple[str, dict[str, Any]]:
    """(URL, JSON body) to POST for these alerts of a notification."""
    body_text = text(notification, alerts)
    if kind == "wecom":
        return url, {"msgtype": "markdown", "markdown": {"content": _fit(body_text, WECOM_MAX_BYTES)}}
    if kind == "dingtalk":
        if secret:
            ms = int(now_s * 1000)
            sep = "&" if "?" in url else "?"
            url = f"{url}{sep}timestamp={ms}&sign={urllib.parse.quote_plus(dingtalk_sign(secret, ms))}"
        return url, {"msgtype": "markdown", "markdown": {"title": title(notification, alerts),
                                                          "text": body_text.replace("\n", "\n\n")}}
    body: dict[str, Any] = {"msg_type": "text", "content": {"text": body_text}}
    if secret:
        seconds = int(now_s)
        body.update(timestamp=str(seconds), sign=feishu_sign(secret, seconds))
    return url, body
