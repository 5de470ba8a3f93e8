"""Which commands a rule may send by itself (`respond:`), checked when the rules load, and
what the responder makes of the gateways' answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from rules.catalog import load_catalog
from rules.response import Responder
from urbansense import codec
from urbansense.config import ConfigError
from urbansense.registry import FieldInfo
from urbansense.schema import AlertEvent

RULE = """
domain: {domain}
rules:
  - id: {domain}.x
    kind: threshold
    measurement: {domain}
    metric: {metric}
    op: above
    threshold: 1
    respond: {{field: {field}, value: {value}}}
"""


def _load(tmp_path: Path, domain: str, metric: str, field: str, value: str) -> None:
    (tmp_path / "r.yaml").write_text(RULE.format(domain=domain, metric=metric, field=field, value=value))
    load_catalog(tmp_path)


def test_a_rule_may_start_the_tunnel_fans_by_itself(tmp_path: Path) -> None:
    _load(tmp_path, "tunnel", "ch4_pct_vol", "fan_run", "true")


@pytest.mark.parametrize(("domain", "metric", "field", "value", "said"), [
    ("tunnel", "ch4_pct_vol", "fan_run", "false", "does not let a rule write fan_run = False without a person"),
    ("tunnel", "sump_level_m", "sump_pump_run", "true", "unattended values: none"),
    ("tunnel", "ch4_pct_vol", "door_open", "true", "not a writable field of family 'tunnel'"),
    ("flood", "sump_level_m", "pump3_run", "true", "use recommend: (an operator confirms it)"),
])
def test_anything_else_is_refused_when_the_rules_load(tmp_path: Path, domain: str, metric: str, field: str,
                                                      value: str, said: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, domain, metric, field, value)
    text = "\n".join(err.value.problems)
    assert f"rule '{domain}.x': respond:" in text and said in text and "fix:" in text, text


def test_a_family_cannot_leave_an_unwritable_field_to_rules() -> None:
    with pytest.raises(ValueError, match="unattended: values for a field nobody may write"):
        FieldInfo(display="x", type="bool", unattended=(True,))


def _alert(command: dict[str, object] | None, state: str = "firing") -> AlertEvent:
    return AlertEvent(id="tunnel.gas_alarm:pudong:tn-0101", rule="tunnel.gas_alarm", domain="tunnel",
                      severity="warning", state=state, district="pudong", device="tn-0101", metric="ch4_pct_vol",
                      value=1.2, threshold=1.0, started=1_000, t=2_000, message="m", command=command)


AUTO = {"topic": "city/pudong/pd-gw-tunnel/cmd", "dev": "tn-0101", "field": "fan_run", "value": True, "auto": True}


def test_the_responder_sends_once_and_records_the_answer_on_the_alert_as_it_now_stands() -> None:
    r = Responder()
    assert r.observe(_alert({**AUTO, "auto": False})) is None  # a recommendation waits for a person
    topic, payload = r.observe(_alert(AUTO)) or ("", b"")
    assert topic == "city/pudong/pd-gw-tunnel/cmd"
    sent = codec.loads(payload, "command")
    assert sent["by"] == "rule tunnel.gas_alarm" and sent["field"] == "fan_run" and sent["value"] is True
    r.observe(_alert(None, state="resolved"))  # resolved before the gateway answered
    assert r.answer(codec.dumps({"id": "c-operator", "ok": True})) is None  # someone else's command
    event = r.answer(codec.dumps({"id": sent["id"], "ok": False, "reason": "read back False after writing True"}))
    assert event is not None and event.state == "resolved" and event.response is not None
    assert event.response == {"id": sent["id"], "ok": False, "reason": "read back False after writing True"}
    assert "refused: read back False" in event.message and event.command is None
    codec.decode_alert(codec.encode_alert(event))  # on the wire as the contract says
    assert r.answer(codec.dumps({"id": sent["id"], "ok": True})) is None  # answered once
    assert (r.sent, r.done, r.failed) == (1, 0, 1)


def test_a_response_is_an_event_of_an_alert_already_counted_not_another_alarm() -> None:
    """Scoring (backtest, demo, chaos runs): the event recording the fans' read-back does
    not count as a second alert."""
    import dataclasses

    from application.backtest import score

    fired = _alert(AUTO)
    answered = dataclasses.replace(fired, t=3_000, command=None, response={"id": "r-1", "ok": True})
    result = score("t", [], [fired, answered], [], 0, 3_600_000)
    assert [e.id for e in result.false_alarms] == [fired.id]
