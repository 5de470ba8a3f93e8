"""`urbansense rules duty`: the duty book as a service. It follows the rules service's
alerts (`city/alerts/#`), keeps the episodes (rules/duty.py), escalates what nobody
acknowledges (each escalation published on `city/duty/escalations`), writes every change
to InfluxDB (`alert_episodes`) and serves the officers' JSON API:

    GET  /api/episodes                      open episodes, with each one's escalation time
    GET  /api/episodes/<id>                 one episode and its history
    POST /api/episodes/<id>/acknowledge     {"who": "li.wei"}
    POST /api/episodes/<id>/assign          {"who": "li.wei", "to": "zhang.min"}
    POST /api/episodes/<id>/resolve         {"who": "zhang.min", "note": "valve closed, main repaired"}

An action that does not apply is answered 409 with the reason; an unknown episode 404.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict
from http.server import ThreadingHTTPServer
from typing import Any

from rules.duty import DutyBook, DutyError, Episode, episode_line
from rules.json_http import JsonHandler
from urbansense import codec
from urbansense.influx import InfluxClient, InfluxError
from urbansense.mqtt import Message, MqttClient, MqttSettings

log = logging.getLogger("urbansense.rules.duty")

ESCALATIONS = "city/duty/escalations"
#: Lines kept while InfluxDB does not answer (the oldest go first beyond this).
MAX_PENDING_LINES = 100_000


class DutyService:
    def __init__(self, book: DutyBook, mqtt: MqttSettings, *, influx: InfluxClient | None = None,
                 instance: str = "duty-1", tick_s: float = 1.0) -> None:
        self.book = book
        self.influx = influx
        self.tick_s = tick_s
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        book.on_change = self._changed
        self.mqtt = MqttClient(mqtt, client_id=f"urbansense-{instance}", clean_start=False, session_expiry_s=3600)
        self.mqtt.subscribe("city/alerts/#", self._on_alert, qos=1)

    def _changed(self, ep: Episode, who: str, action: str) -> None:
        with self._lock:
            self._pending.append(episode_line(ep, who, action))
            if len(self._pending) > MAX_PENDING_LINES:
                del self._pending[0]

    def _on_alert(self, msg: Message) -> None:  # network thread
        try:
            event = codec.decode_alert(bytes(msg.payload))
        except codec.PayloadError as exc:
            log.warning("ignoring %s: %s", msg.topic, exc)
            return
        self.book.observe(event)

    def tick(self) -> None:
        """Escalate what is due, announce it, write the record."""
        for ep in self.book.escalate_due():
            log.warning("ESCALATED %s to %s (%s)", ep.id, ep.level_name, ep.message)
            self.mqtt.publish(ESCALATIONS, json.dumps(_view(self.book, ep)).encode(), qos=1)
        self._flush()

    def _flush(self) -> None:
        with self._lock:
            lines, self._pending = self._pending, []
        if not lines or self.influx is None:
            return
        try:
            self.influx.write("\n".join(lines))
        except InfluxError as exc:
            log.warning("could not write alert_episodes to InfluxDB (kept for retry): %s", exc)
            with self._lock:
                self._pending[:0] = lines

    def run(self) -> None:
        self.mqtt.connect(wait=False)
        try:
            while not self._stop.wait(self.tick_s):
                self.tick()
        finally:
            self._flush()
            self.mqtt.close()

    def stop(self) -> None:
        self._stop.set()


def _view(book: DutyBook, ep: Episode) -> dict[str, Any]:
    return {**asdict(ep), "next_escalation": book.next_escalation_ms(ep)}


#: What an officer may do to an episode: POST /api/episodes/<id>/<action> with a JSON body.
ACTIONS: dict[str, Callable[[DutyBook, str, dict[str, Any]], Episode]] = {
    "acknowledge": lambda b, i, body: b.acknowledge(i, str(body.get("who", ""))),
    "assign": lambda b, i, body: b.assign(i, str(body.get("who", "")), str(body.get("to", ""))),
    "resolve": lambda b, i, body: b.resolve(i, str(body.get("who", "")), str(body.get("note", ""))),
}


class _Handler(JsonHandler):
    book: DutyBook

    def _parts(self) -> list[str]:
        path = urllib.parse.urlsplit(self.path).path
        return [urllib.parse.unquote(p) for p in path.strip("/").split("/")]

    def do_GET(self) -> None:
        parts = self._parts()
        if parts == ["api", "episodes"]:
            self.answer(200, [_view(self.book, ep) for ep in self.book.open_episodes()])
        elif len(parts) == 3 and parts[:2] == ["api", "episodes"]:
            try:
                ep = self.book.get(parts[2])
            except DutyError as exc:
                self.answer(404, {"reason": str(exc)})
                return
            self.answer(200, {**_view(self.book, ep), "history": self.book.history(ep.id)})
        else:
            self.answer(404, {"reason": "GET /api/episodes or /api/episodes/<id>"})

    def do_POST(self) -> None:
        parts = self._parts()
        if len(parts) != 4 or parts[:2] != ["api", "episodes"] or parts[3] not in ACTIONS:
            self.answer(404, {"reason": "POST /api/episodes/<id>/acknowledge | assign | resolve"})
            return
        try:
            body = self.read_json(65536)
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            self.answer(400, {"reason": 'the body is a JSON object, e.g. {"who": "li.wei"}'})
            return
        try:
            ep = ACTIONS[parts[3]](self.book, parts[2], body)
        except DutyError as exc:
            self.answer(404 if str(exc).startswith("no episode") else 409, {"reason": str(exc)})
            return
        self.answer(200, _view(self.book, ep))



def serve(book: DutyBook, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("DutyHandler", (_Handler,), {"book": book})
    return ThreadingHTTPServer((host, port), handler)
