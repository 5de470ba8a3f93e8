"""`urbansense rules duty`: the duty book as a service. It follows the rules service's
alerts (`city/alerts/#`), keeps the episodes (rules/duty.py), escalates what nobody
acknowledges (each escalation published on `city/duty/escalations`), writes every change
to InfluxDB (`alert_episodes`) and serves the officers' JSON API:

    GET  /                                  the duty console (rules/console/)
    GET  /api/episodes                      {"now", "episodes"}: open episodes, with each one's escalation
                                            time, location and dashboard link
    GET  /api/episodes/<id>                 one episode and its history
    POST /api/episodes/<id>/acknowledge     {"who": "li.wei"}
    POST /api/episodes/<id>/assign          {"who": "li.wei", "to": "zhang.min"}
    POST /api/episodes/<id>/resolve         {"who": "zhang.min", "note": "valve closed, main repaired"}
    GET  /api/me                            {"who", "sign_in"}: the officer signed in, and whether signing in
                                            is required
    GET  /healthz                           {"ok": true}, without signing in (container health checks)

An action that does not apply is answered 409 with the reason; an unknown episode 404.
With officers (rules/officers.py, `--officers`), everything asks for an officer's sign-in
(HTTP Basic; 401 otherwise) and an action is recorded under the officer signed in: a body
naming someone else is refused (403). Without, anyone who reaches the console acts in the
name they type.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from rules.duty import DutyBook, DutyError, Episode, episode_line
from rules.json_http import JsonHandler
from rules.officers import Officers
from urbansense import codec, registry
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


@dataclass(frozen=True)
class ConsoleSite:
    """What the console shows beside an episode: where its device is (the gateway configs'
    locations) and its family's Grafana dashboard."""

    locations: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    grafana_url: str | None = None

    def link(self, ep: Episode) -> str | None:
        if not self.grafana_url:
            return None
        fam = registry.families().get(ep.domain)
        uid = fam.dashboard_uid if fam is not None else "urbansense-system"
        query = urllib.parse.urlencode({"var-district": ep.district, **({"var-device": ep.device} if ep.device
                                                                           else {})})
        return f"{self.grafana_url.rstrip('/')}/d/{uid}?{query}"


def _view(book: DutyBook, ep: Episode, site: ConsoleSite | None = None) -> dict[str, Any]:
    out = {**asdict(ep), "next_escalation": book.next_escalation_ms(ep)}
    if site is not None:
        where = site.locations.get((ep.district, ep.device or ""))
        out.update(lat=where[0] if where else None, lon=where[1] if where else None, dashboard=site.link(ep))
    return out


#: What an officer may do to an episode: POST /api/episodes/<id>/<action> with a JSON body.
ACTIONS: dict[str, Callable[[DutyBook, str, dict[str, Any]], Episode]] = {
    "acknowledge": lambda b, i, body: b.acknowledge(i, str(body.get("who", ""))),
    "assign": lambda b, i, body: b.assign(i, str(body.get("who", "")), str(body.get("to", ""))),
    "resolve": lambda b, i, body: b.resolve(i, str(body.get("who", "")), str(body.get("note", ""))),
}


CONSOLE = Path(__file__).with_name("console")
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}


class _Handler(JsonHandler):
    book: DutyBook
    site: ConsoleSite
    officers: Officers | None

    def _officer(self) -> tuple[bool, str | None]:
        """(may go on, the officer signed in). Without officers anyone may; with them, a
        request without a valid sign-in is answered 401 here."""
        if self.officers is None:
            return True, None
        who = self.officers.signed_in(self.headers.get("Authorization"))
        if who is None:
            self.answer(401, {"reason": "sign in as a duty officer"},
                        {"WWW-Authenticate": 'Basic realm="UrbanSense duty console", charset="UTF-8"'})
            return False, None
        return True, who

    def _parts(self) -> list[str]:
        path = urllib.parse.urlsplit(self.path).path
        return [urllib.parse.unquote(p) for p in path.strip("/").split("/")]

    def do_GET(self) -> None:
        if self._parts() == ["healthz"]:  # for health checks: says nothing about the episodes
            self.answer(200, {"ok": True})
            return
        allowed, who = self._officer()
        if not allowed:
            return
        parts = self._parts()
        if parts[0] != "api":
            self._static(parts)
        elif parts == ["api", "me"]:
            self.answer(200, {"who": who, "sign_in": self.officers is not None})
        elif parts == ["api", "episodes"]:
            self.answer(200, {"now": self.book.now_ms(),
                              "episodes": [_view(self.book, ep, self.site) for ep in self.book.open_episodes()]})
        elif len(parts) == 3 and parts[:2] == ["api", "episodes"]:
            try:
                ep = self.book.get(parts[2])
            except DutyError as exc:
                self.answer(404, {"reason": str(exc)})
                return
            self.answer(200, {**_view(self.book, ep, self.site), "history": self.book.history(ep.id)})
        else:
            self.answer(404, {"reason": "GET /api/episodes or /api/episodes/<id>"})

    def do_POST(self) -> None:
        allowed, signed_in = self._officer()
        if not allowed:
            return
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
        if signed_in is not None:
            named = str(body.get("who") or signed_in)
            if named != signed_in:
                self.answer(403, {"reason": f"you are signed in as {signed_in}: you act in your own name"})
                return
            body = {**body, "who": signed_in}
        try:
            ep = ACTIONS[parts[3]](self.book, parts[2], body)
        except DutyError as exc:
            self.answer(404 if str(exc).startswith("no episode") else 409, {"reason": str(exc)})
            return
        self.answer(200, _view(self.book, ep, self.site))

    def _static(self, parts: list[str]) -> None:
        """The console's files (and nothing outside its folder)."""
        path = (CONSOLE / "/".join(p for p in parts if p) if parts != [""] else CONSOLE / "index.html").resolve()
        if not path.is_relative_to(CONSOLE.resolve()) or not path.is_file():
            self.answer(404, {"reason": "not found"})
            return
        raw = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPES.get(path.suffix, "application/octet-stream"))
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.wfile.write(raw)



def serve(book: DutyBook, host: str, port: int, site: ConsoleSite | None = None,
          officers: Officers | None = None) -> ThreadingHTTPServer:
    """The console and its API; with `officers`, only for officers who sign in."""
    handler = type("DutyHandler", (_Handler,), {"book": book, "site": site or ConsoleSite(), "officers": officers})
    return ThreadingHTTPServer((host, port), handler)
