"""The small JSON-over-HTTP servers of alert delivery (the relay, the duty book's API):
stdlib http.server, one thread per request; alert traffic needs no more."""

from __future__ import annotations

import json
import logging
from http.server import BaseHTTPRequestHandler
from typing import Any

log = logging.getLogger("urbansense.rules.http")


class JsonHandler(BaseHTTPRequestHandler):
    def answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def read_json(self, limit: int) -> Any:
        """The request body as JSON (ValueError when it is not)."""
        return json.loads(self.rfile.read(min(int(self.headers.get("Content-Length", "0")), limit)) or b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)
