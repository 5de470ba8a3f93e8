"""`urbansense dashboards push` against a stand-in for Grafana's HTTP API.

Grafana does not run on these machines, so a small loopback HTTP server plays the four
endpoints push uses (folder get/create, dashboard upsert) and records what it got.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from application.cli import main
from dashboards.builder.provisioning import load_dashboards
from dashboards.builder.push import PushError, push


class FakeGrafana:
    def __init__(self, token: str) -> None:
        self.token = token
        self.folders: dict[str, str] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                fake.requests.append((self.command, self.path))
                if self.headers.get("Authorization") != f"Bearer {fake.token}":
                    self._reply(401, {"message": "invalid API key"})
                    return False
                return True

            def do_GET(self) -> None:
                if not self._authorised():
                    return
                uid = self.path.rsplit("/", 1)[-1]
                if self.path.startswith("/api/folders/") and uid in fake.folders:
                    self._reply(200, {"uid": uid, "title": fake.folders[uid]})
                else:
                    self._reply(404, {"message": "folder not found"})

            def do_POST(self) -> None:
                if not self._authorised():
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/api/folders":
                    fake.folders[body["uid"]] = body["title"]
                    self._reply(200, {"uid": body["uid"]})
                elif self.path == "/api/dashboards/db":
                    dash = body["dashboard"]
                    if not body.get("overwrite") and dash["uid"] in fake.dashboards:
                        self._reply(412, {"message": "version-mismatch"})
                        return
                    fake.dashboards[dash["uid"]] = body
                    self._reply(200, {"status": "success", "uid": dash["uid"]})
                else:
                    self._reply(404, {"message": "not found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeGrafana:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    with FakeGrafana("s3cret-token") as g:
        yield g


def test_push_creates_the_folder_once_and_upserts_every_dashboard(grafana: FakeGrafana) -> None:
    dashboards = load_dashboards()
    first = push(grafana.url, dashboards, "s3cret-token")
    assert first.folder_created and sorted(first.dashboards) == sorted(d["uid"] for d in dashboards.values())
    second = push(grafana.url, dashboards, "s3cret-token")  # again: overwrite, no new folder
    assert not second.folder_created
    assert set(grafana.dashboards) == {d["uid"] for d in dashboards.values()}
    for body in grafana.dashboards.values():
        assert body["overwrite"] is True and body["folderUid"] == "urbansense"
        assert body["dashboard"]["id"] is None  # matched by uid, not by a foreign id
    assert grafana.folders == {"urbansense": "UrbanSense"}


def test_push_cli_reads_the_token_from_the_environment(grafana: FakeGrafana, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GRAFANA_TOKEN", "s3cret-token")
    assert main(["dashboards", "push", "--url", grafana.url]) == 0
    assert "pushed urbansense-overview" in capsys.readouterr().out
    monkeypatch.delenv("GRAFANA_TOKEN")
    assert main(["dashboards", "push", "--url", grafana.url]) == 1
    assert "set GRAFANA_TOKEN" in capsys.readouterr().err


def test_push_with_a_wrong_token_says_what_to_fix(grafana: FakeGrafana) -> None:
    with pytest.raises(PushError, match=r"refused the token .*GRAFANA_TOKEN"):
        push(grafana.url, load_dashboards(), "wrong")
    assert grafana.dashboards == {}
