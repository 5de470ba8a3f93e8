"""Alert episodes owned by people: open on firing, acknowledge, assign, resolve with a note,
escalate what nobody acknowledges (on a fake clock), survive a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from rules.duty import DutyBook, DutyError, Episode, episode_line, load_escalation
from rules.routing import config as routing_config
from urbansense.config import ConfigError
from urbansense.schema import AlertEvent

REPO = Path(__file__).resolve().parents[2]
T0 = 1_764_190_000_000


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> int:
        return self.t


def _event(state: str = "firing", severity: str = "critical", domain: str = "water", device: str = "wp-1",
           started: int = T0) -> AlertEvent:
    return AlertEvent(id=f"{domain}.x:pudong:{device}", rule=f"{domain}.x", domain=domain, severity=severity,
                      state=state, district="pudong", device=device, metric=None, value=None, threshold=None,
                      started=started, t=started, message=f"{device} in trouble")


@pytest.fixture
def book(tmp_path: Path) -> tuple[DutyBook, Clock, list[str]]:
    clock = Clock()
    lines: list[str] = []
    b = DutyBook(tmp_path / "duty.sqlite", load_escalation(REPO / "rules" / "escalation.yaml"), clock,
                 on_change=lambda ep, who, action: lines.append(episode_line(ep, who, action)))
    return b, clock, lines


def test_an_episode_is_owned_acknowledged_assigned_and_resolved_with_a_note(
        book: tuple[DutyBook, Clock, list[str]]) -> None:
    b, clock, lines = book
    ep = b.observe(_event())
    assert ep is not None and (ep.state, ep.level_name, ep.owner) == ("new", "duty-officer", None)
    clock.t += 60_000
    assert b.acknowledge(ep.id, "li.wei").owner == "li.wei"
    assert b.assign(ep.id, "li.wei", "zhang.min").owner == "zhang.min"
    b.observe(_event("resolved"))  # the alert clears: the episode stays with its owner
    assert (b.get(ep.id).alert_state, b.get(ep.id).state) == ("resolved", "acknowledged")
    with pytest.raises(DutyError, match="needs a note"):
        b.resolve(ep.id, "zhang.min", "  ")
    done = b.resolve(ep.id, "zhang.min", "valve v-3 closed, main repaired")
    assert (done.state, done.note) == ("resolved", "valve v-3 closed, main repaired")
    with pytest.raises(DutyError, match="already resolved"):
        b.acknowledge(ep.id, "li.wei")
    other = b.observe(_event(device="wp-2"))
    assert other is not None
    with pytest.raises(DutyError, match="say who"):
        b.acknowledge(other.id, " ")
    assert [(h["who"], h["action"]) for h in b.history(ep.id)] == [
        ("rules", "opened"), ("li.wei", "acknowledged"), ("li.wei", "assigned"), ("rules", "alert cleared"),
        ("zhang.min", "resolved")]
    assert b.open_episodes()[0].device == "wp-2"
    assert any("action=\"resolved: valve v-3 closed, main repaired\"" in line for line in lines)
    assert lines[0].startswith("alert_episodes,device=wp-1,district=pudong,domain=water,rule=water.x ")
    assert 'state="new"' in lines[0] and 'severity="critical"' in lines[0]


def test_unacknowledged_critical_episodes_climb_their_domains_chain(book: tuple[DutyBook, Clock, list[str]]) -> None:
    b, clock, _lines = book
    water = b.observe(_event())
    gas = b.observe(_event(domain="gas", device="gs-1"))
    warning = b.observe(_event(severity="warning", device="wp-9"))
    acked = b.observe(_event(device="wp-5"))
    assert water and gas and warning and acked
    b.acknowledge(acked.id, "li.wei")
    assert b.next_escalation_ms(b.get(water.id)) == T0 + 600_000
    assert b.next_escalation_ms(b.get(gas.id)) == T0 + 300_000
    clock.t = T0 + 299_000
    assert b.escalate_due() == []
    clock.t = T0 + 300_000
    assert [(e.device, e.level_name) for e in b.escalate_due()] == [("gs-1", "shift-supervisor")]
    clock.t = T0 + 2_000_000  # past every step: straight to the top, once
    assert sorted((e.device, e.level_name) for e in b.escalate_due()) == [
        ("gs-1", "city-operations-centre"), ("wp-1", "city-operations-centre")]
    assert b.escalate_due() == [] and b.next_escalation_ms(b.get(water.id)) is None
    assert (b.get(warning.id).level, b.get(acked.id).level) == (0, 0)
    assert "not acknowledged 2000 s after it opened (limit 1800 s)" in b.history(water.id)[-1]["detail"]


def test_the_book_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    escalation = load_escalation(REPO / "rules" / "escalation.yaml")
    first = DutyBook(tmp_path / "duty.sqlite", escalation, clock)
    ep = first.observe(_event())
    assert ep is not None
    first.acknowledge(ep.id, "li.wei")
    first.close()
    again = DutyBook(tmp_path / "duty.sqlite", escalation, clock)
    got: Episode = again.get(ep.id)
    assert (got.state, got.owner) == ("acknowledged", "li.wei") and len(again.history(ep.id)) == 2


def test_escalation_levels_are_receivers_and_a_bad_chain_is_refused(tmp_path: Path) -> None:
    shipped = load_escalation(REPO / "rules" / "escalation.yaml")
    receivers = {r["name"] for r in routing_config()["receivers"]}
    levels = {s.level for chain in (shipped.default, *shipped.domains.values()) for s in chain.chain}
    assert levels <= receivers, levels - receivers
    bad = tmp_path / "escalation.yaml"
    bad.write_text("default:\n  chain:\n    - {level: a, after_s: 60}\n")
    with pytest.raises(ConfigError, match=r"escalation\.yaml"):
        load_escalation(bad)


@pytest.mark.integration
def test_the_duty_service_follows_alerts_serves_officers_and_keeps_the_record(tmp_path: Path) -> None:
    """Real Mosquitto and InfluxDB: an alert published by the rules service opens an
    episode; the API acknowledges it; a restarted service still has it; an unacknowledged
    critical one escalates on the (fake) clock and is announced; the record is in InfluxDB."""
    import json as json_
    import queue
    import threading
    import urllib.parse

    import requests

    from application.stack import Stack, free_port
    from rules.duty_service import ESCALATIONS, DutyService, serve
    from tests.waiting import wait_for
    from urbansense import codec, topics
    from urbansense.influx import InfluxClient
    from urbansense.mqtt import MqttClient, MqttSettings

    stack = Stack(tmp_path / "stack")
    stack.up()
    influx = InfluxClient(stack.influx_url, "duty_test")
    influx.create_database()
    clock = Clock()
    escalation = load_escalation(REPO / "rules" / "escalation.yaml")
    escalated: queue.Queue[dict[str, object]] = queue.Queue()
    publisher = MqttClient(MqttSettings.from_url(stack.mqtt_url), client_id="t-duty-pub")
    publisher.subscribe(ESCALATIONS, lambda m: escalated.put(json_.loads(m.payload)), qos=1)
    publisher.connect()

    def start() -> tuple[DutyService, threading.Thread, object, str]:
        book = DutyBook(tmp_path / "duty.sqlite", escalation, clock)
        svc = DutyService(book, MqttSettings.from_url(stack.mqtt_url), influx=influx, instance="t-duty", tick_s=0.2)
        thread = threading.Thread(target=svc.run, daemon=True)
        thread.start()
        assert svc.mqtt.wait_subscribed(10)
        server = serve(book, "127.0.0.1", free_port())
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return svc, thread, server, f"http://127.0.0.1:{server.server_address[1]}/api/episodes"

    try:
        assert publisher.wait_subscribed(10)
        svc, thread, server, api = start()
        for event in (_event(device="wp-1"), _event(device="wp-2")):
            publisher.publish_wait(topics.alert(event.domain, event.district, event.severity),
                                   codec.encode_alert(event))
        episodes = wait_for(lambda: (got := requests.get(api, timeout=5).json()["episodes"]) and len(got) == 2
                            and got, 10, what="two episodes opened from the alerts")
        first = next(e for e in episodes if e["device"] == "wp-1")
        assert first["next_escalation"] == T0 + 600_000
        url = f"{api}/{urllib.parse.quote(first['id'], safe='')}"
        clock.t += 40_000  # the officer reads it first
        assert requests.post(f"{url}/acknowledge", json={"who": "li.wei"}, timeout=5).json()["owner"] == "li.wei"
        refused = requests.post(f"{url}/resolve", json={"who": "li.wei"}, timeout=5)
        assert refused.status_code == 409 and "needs a note" in refused.json()["reason"]
        assert requests.post(f"{api}/nope/acknowledge", json={"who": "x"}, timeout=5).status_code == 404
        svc.stop()
        thread.join(10)
        server.shutdown()  # type: ignore[attr-defined]
        svc, thread, server, api = start()  # a restart
        again = requests.get(f"{api}/{urllib.parse.quote(first['id'], safe='')}", timeout=5).json()
        assert (again["state"], again["owner"]) == ("acknowledged", "li.wei")
        assert [h["action"] for h in again["history"]] == ["opened", "acknowledged"]
        clock.t = T0 + 600_000  # wp-2, critical and unacknowledged, climbs
        announced = escalated.get(timeout=10)
        assert (announced["device"], announced["level_name"]) == ("wp-2", "shift-supervisor")
        rows = wait_for(lambda: influx.rows('SELECT "action", "who" FROM "alert_episodes"'), 10,
                        what="the record in InfluxDB")
        wait_for(lambda: len(influx.rows('SELECT "action" FROM "alert_episodes"')) >= 4, 10, what="four changes")
        actions = [r["action"] for r in influx.rows('SELECT "action", "who" FROM "alert_episodes"')]
        assert "acknowledged" in actions and any(a.startswith("escalated") for a in actions), rows
        svc.stop()
        thread.join(10)
        server.shutdown()  # type: ignore[attr-defined]
    finally:
        publisher.close()
        stack.down()
