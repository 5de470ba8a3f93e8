"""Duty officers who sign in: the officers file (names, and the variables holding their
passwords), and the duty console's API answering only them, recording each action under
the name signed in (a real HTTP server; the browser side is in test_console.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from application.stack import free_port
from rules.duty import DutyBook, load_escalation
from rules.duty_service import serve
from rules.officers import Officers, load_officers
from tests.rules.test_duty import REPO, Clock, _event
from urbansense.config import ConfigError

ENV = {"DUTY_PASSWORD_LI_WEI": "li-secret:with colon", "DUTY_PASSWORD_ZHANG_MIN": "zhang-secret"}


def _officers_file(tmp_path: Path, text: str = "# duty officers\nli.wei     DUTY_PASSWORD_LI_WEI\n"
                   "zhang.min  DUTY_PASSWORD_ZHANG_MIN\n") -> Path:
    path = tmp_path / "officers"
    path.write_text(text)
    return path


def test_the_officers_file_names_each_problem_by_line(tmp_path: Path) -> None:
    officers = load_officers(_officers_file(tmp_path), ENV)
    assert officers.names == ["li.wei", "zhang.min"]
    with pytest.raises(ConfigError, match="DUTY_PASSWORD_ZHANG_MIN"):
        load_officers(_officers_file(tmp_path), {"DUTY_PASSWORD_LI_WEI": "x"})
    for text, says in (("Li Wei DUTY_PASSWORD_LI_WEI\n", ":1: 'Li Wei DUTY_PASSWORD_LI_WEI' is not"),
                       ("li.wei DUTY_PASSWORD_LI_WEI\nli.wei DUTY_PASSWORD_ZHANG_MIN\n",
                        ":2: officer li.wei is listed twice"),
                       ("# nobody yet\n", "lists no officer")):
        with pytest.raises(ConfigError) as caught:
            load_officers(_officers_file(tmp_path, text), ENV)
        assert says in str(caught.value), caught.value
    with pytest.raises(ConfigError, match="fix: create it"):
        load_officers(tmp_path / "missing", ENV)


def test_a_sign_in_is_checked_name_and_password() -> None:
    import base64

    officers = Officers({"li.wei": "pw:1"})

    def basic(text: str) -> str:
        return "Basic " + base64.b64encode(text.encode()).decode()

    assert officers.signed_in(basic("li.wei:pw:1")) == "li.wei"  # a password may hold a colon
    for header in (None, "", basic("li.wei:pw"), basic("zhang.min:pw:1"), basic("li.wei"), "Basic !!!",
                   "Bearer " + base64.b64encode(b"li.wei:pw:1").decode()):
        assert officers.signed_in(header) is None, header


@pytest.fixture
def console(tmp_path: Path) -> Iterator[tuple[str, DutyBook]]:
    book = DutyBook(tmp_path / "duty.sqlite", load_escalation(REPO / "rules" / "escalation.yaml"), Clock())
    server = serve(book, "127.0.0.1", free_port(), officers=load_officers(_officers_file(tmp_path), ENV))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", book
    finally:
        server.shutdown()
        server.server_close()
        book.close()


def test_only_officers_who_sign_in_see_or_act_and_actions_carry_their_name(
        console: tuple[str, DutyBook]) -> None:
    base, book = console
    ep = book.observe(_event())
    assert ep is not None
    li = ("li.wei", ENV["DUTY_PASSWORD_LI_WEI"])
    url = f"{base}/api/episodes/{urllib.parse.quote(ep.id, safe='')}"
    # nobody signed in, or a wrong password: nothing, not even the page
    for auth in (None, ("li.wei", "guess"), ("mallory", "x")):
        for path in ("/", "/console.js", "/api/episodes", "/api/me"):
            answer = requests.get(base + path, auth=auth, timeout=5)
            assert answer.status_code == 401, (auth, path)
            assert answer.headers["WWW-Authenticate"].startswith("Basic realm=")
        assert requests.post(f"{url}/acknowledge", json={"who": "li.wei"}, auth=auth, timeout=5).status_code == 401
    assert book.get(ep.id).state == "new"
    assert requests.get(f"{base}/healthz", timeout=5).json() == {"ok": True}  # health checks need no sign-in
    assert requests.get(f"{base}/api/me", auth=li, timeout=5).json() == {"who": "li.wei", "sign_in": True}
    assert requests.get(base + "/", auth=li, timeout=5).status_code == 200
    # acting in someone else's name is refused; the signed-in name is recorded
    other = requests.post(f"{url}/acknowledge", json={"who": "zhang.min"}, auth=li, timeout=5)
    assert other.status_code == 403 and "signed in as li.wei" in other.json()["reason"]
    assert requests.post(f"{url}/acknowledge", json={}, auth=li, timeout=5).json()["owner"] == "li.wei"
    resolved = requests.post(f"{url}/resolve", json={"note": "valve closed"},
                             auth=("zhang.min", ENV["DUTY_PASSWORD_ZHANG_MIN"]), timeout=5)
    assert resolved.status_code == 200
    assert [(h["who"], h["action"]) for h in book.history(ep.id)][-2:] == [("li.wei", "acknowledged"),
                                                                           ("zhang.min", "resolved")]


def test_without_officers_the_console_says_so_and_takes_the_typed_name(tmp_path: Path) -> None:
    book = DutyBook(tmp_path / "duty.sqlite", load_escalation(REPO / "rules" / "escalation.yaml"), Clock())
    server = serve(book, "127.0.0.1", free_port())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert requests.get(f"{base}/api/me", timeout=5).json() == {"who": None, "sign_in": False}
        ep = book.observe(_event())
        assert ep is not None
        url = f"{base}/api/episodes/{urllib.parse.quote(ep.id, safe='')}/acknowledge"
        assert requests.post(url, json={"who": "li.wei"}, timeout=5).json()["owner"] == "li.wei"
    finally:
        server.shutdown()
        server.server_close()
        book.close()


def test_the_command_refuses_to_start_without_an_officer_s_password(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUTY_PASSWORD_")}
    env["DUTY_PASSWORD_LI_WEI"] = "x"
    out = subprocess.run([sys.executable, "-m", "application.cli", "rules", "duty", "--officers",
                          str(_officers_file(tmp_path)), "--listen", f"127.0.0.1:{free_port()}",
                          "--db", str(tmp_path / "duty.sqlite")],
                         env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 2 and "DUTY_PASSWORD_ZHANG_MIN" in out.stderr and "fix:" in out.stderr
