"""Alertmanager's e-mail with the shipped template (deploy/alertmanager/templates), sent by
a real Alertmanager to a local SMTP sink."""

from __future__ import annotations

import email
import email.policy
import queue
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from aiosmtpd.controller import Controller

from application.stack import Stack, free_port
from rules.routing import config

pytestmark = pytest.mark.integration


class _Sink:
    def __init__(self) -> None:
        self.messages: queue.Queue[email.message.EmailMessage] = queue.Queue()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.put(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"


def _alert(device: str, district: str, *, resolved: bool = False) -> dict[str, Any]:
    now = time.time()
    return {"labels": {"alertname": "gas.methane_alarm", "domain": "gas", "district": district, "device": device,
                       "severity": "critical"},
            "annotations": {"summary": f"methane at {device} is 31 %LEL", "recommended_action": "close valve v-1",
                            "contributing_sensors": f"{device}, gs-2"},
            "startsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 30)),
            "endsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 1 if resolved else now + 600))}


def test_alert_mail_uses_the_shipped_template(tmp_path: Path) -> None:
    sink = _Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    am_config = config()
    am_config["route"].update(group_wait="0s", group_interval="1s", routes=[], receiver="duty-officer")
    am_config["receivers"] = [{"name": "duty-officer", "email_configs": [{
        "to": "duty@city.example", "from": "urbansense@city.example", "require_tls": False,
        "smarthost": f"127.0.0.1:{controller.port}", "send_resolved": True,
        "headers": {"Subject": '{{ template "urbansense.email.subject" . }}'},
        "html": '{{ template "urbansense.email.html" . }}', "text": '{{ template "urbansense.email.text" . }}'}]}]
    stack = Stack(tmp_path / "stack")
    stack.alertmanager_config = yaml.safe_dump(am_config)
    stack.start("alertmanager")
    try:
        district = f"m{uuid.uuid4().hex[:6]}"
        requests.post(f"{stack.alertmanager_url}/api/v2/alerts", json=[_alert("gs-1", district)],
                      timeout=5).raise_for_status()
        mail = sink.messages.get(timeout=30)
        assert mail["Subject"] == f"[FIRING:1] gas {district} gas.methane_alarm"
        assert mail["To"] == "duty@city.example"
        text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
        for body in (text, html):
            assert f"CRITICAL gas.methane_alarm gs-1 ({district}): methane at gs-1 is 31 %LEL" in body
            assert "recommended: close valve v-1" in body
            assert "sensors: gs-1, gs-2" in body
        requests.post(f"{stack.alertmanager_url}/api/v2/alerts", json=[_alert("gs-1", district, resolved=True)],
                      timeout=5).raise_for_status()
        resolved = sink.messages.get(timeout=30)
        assert resolved["Subject"] == f"[RESOLVED] gas {district} gas.methane_alarm"
        body = resolved.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert "RESOLVED gas.methane_alarm gs-1" in body and "recommended" not in body and "sensors" not in body
    finally:
        stack.down()
        controller.stop()
