"""Automatic responses: the command a rule sends by itself when its alert fires (`respond:`
in the rule, a value its family lists under the field's `unattended`), and what became
of it.

The command goes out on the gateway's command topic like an operator's, with `by` naming
the rule; the gateway writes it through the same allowlist, reads it back and answers on
`.../cmd/result`. The answer, or its absence after `timeout_s`, becomes an event of the
alert (same id, its current state and severity) carrying `response`, so the alert's
history on MQTT and in InfluxDB says whether the fans started."""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass
from typing import Any

from urbansense import clock, codec
from urbansense.schema import AlertEvent

#: How long a sent command may wait for the gateway's answer.
RESPONSE_TIMEOUT_S = 30.0


@dataclass
class _Pending:
    alert_id: str
    command: dict[str, Any]
    sent: float  # monotonic


class Responder:
    def __init__(self, timeout_s: float = RESPONSE_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._pending: dict[str, _Pending] = {}
        #: the latest event of every alert with a response under way or done
        self._latest: dict[str, AlertEvent] = {}
        self.sent = 0
        self.done = 0
        self.failed = 0

    def observe(self, event: AlertEvent) -> tuple[str, bytes] | None:
        """Every published event: the (topic, payload) of the command to send, if the event
        asks for an automatic response."""
        if event.id in self._latest:
            if event.state == "resolved" and not any(p.alert_id == event.id for p in self._pending.values()):
                del self._latest[event.id]  # nothing more to record about it
            else:
                self._latest[event.id] = event
        cmd = event.command
        if cmd is None or not cmd.get("auto"):
            return None
        cmd_id = f"r-{uuid.uuid4().hex[:12]}"
        body = {"id": cmd_id, "dev": cmd["dev"], "field": cmd["field"], "value": cmd["value"],
                "t": clock.now_ms(), "by": f"rule {event.rule}"}
        self._pending[cmd_id] = _Pending(event.id, {**cmd, "id": cmd_id}, time.monotonic())
        self._latest[event.id] = event
        self.sent += 1
        return str(cmd["topic"]), codec.dumps(body)

    def answer(self, payload: bytes) -> AlertEvent | None:
        """A gateway's command result: the alert's event that records it, if it answers one
        of our commands (an operator's results pass by)."""
        try:
            result = codec.loads(payload, "command result")
        except codec.PayloadError:
            return None
        if not isinstance(result, dict):
            return None
        pending = self._pending.pop(str(result.get("id", "")), None)
        if pending is None:
            return None
        ok = result.get("ok") is True
        response = {"id": pending.command["id"], "ok": ok}
        if ok:
            response["readback"] = result.get("readback")
            what = f"done, read back {result.get('readback')!r}"
        else:
            response["reason"] = str(result.get("reason", "no reason given"))[:300]
            what = f"refused: {response['reason']}"
        return self._record(pending, response, what)

    def overdue(self) -> list[AlertEvent]:
        """Commands no gateway answered within timeout_s, as alert events saying so."""
        now = time.monotonic()
        late = [k for k, p in self._pending.items() if now - p.sent > self.timeout_s]
        out = []
        for cmd_id in late:
            pending = self._pending.pop(cmd_id)
            response = {"id": cmd_id, "ok": False,
                        "reason": f"no answer from the gateway in {self.timeout_s:g} s (is its edge agent running?)"}
            out.append(self._record(pending, response, f"not confirmed: {response['reason']}"))
        return out

    def _record(self, pending: _Pending, response: dict[str, Any], what: str) -> AlertEvent:
        if response["ok"]:
            self.done += 1
        else:
            self.failed += 1
        latest = self._latest.get(pending.alert_id)
        assert latest is not None
        cmd = pending.command
        message = (f"Automatic response to {latest.rule} at {latest.device}: "
                   f"{cmd['dev']}.{cmd['field']} = {cmd['value']!r} {what}")
        event = dataclasses.replace(latest, t=max(latest.t, clock.now_ms()), message=message, command=None,
                                    forecast=None, supersedes=None, response=response)
        self._latest[pending.alert_id] = event
        return event
