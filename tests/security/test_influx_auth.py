"""InfluxDB with auth enabled and least-privilege service users: the ingester may only
write, Grafana may only read, the rules engine both; nobody gets in anonymously."""

from __future__ import annotations

import time

import pytest
import requests

from tests.security.conftest import DATABASE, SecureStack

pytestmark = pytest.mark.integration


def _write(secure: SecureStack, user: str | None, line: str) -> int:
    auth = (user, secure.influx_passwords[user]) if user else None
    return requests.post(f"{secure.influx_url}/write", params={"db": DATABASE, "precision": "ms"},
                         data=line, auth=auth, timeout=10).status_code


def _read(secure: SecureStack, user: str | None, q: str) -> requests.Response:
    auth = (user, secure.influx_passwords[user]) if user else None
    return requests.post(f"{secure.influx_url}/query", data={"q": q, "db": DATABASE}, auth=auth, timeout=10)


def _refused(r: requests.Response) -> bool:
    """InfluxDB 1.x refuses with 401/403 and {"error": ...}, or 200 with the error per statement."""
    if r.status_code in (401, 403):
        return True
    body = r.json()
    return "error" in body or "error" in body.get("results", [{}])[0]


def test_least_privilege_users(secure: SecureStack) -> None:
    t = int(time.time() * 1000)
    line = f"sec_probe,device=d1 v=1.0 {t}"
    assert _write(secure, None, line) == 401  # anonymous
    assert _write(secure, "grafana", line) == 403  # read-only user cannot write
    assert _write(secure, "ingest", line) == 204
    assert _write(secure, "rules", f"sec_probe,device=d2 v=2.0 {t}") == 204

    select = "SELECT count(v) FROM sec_probe"
    assert _read(secure, None, select).status_code == 401
    grafana = _read(secure, "grafana", select)
    assert grafana.status_code == 200 and grafana.json()["results"][0]["series"][0]["values"][0][1] == 2
    assert "series" in _read(secure, "rules", select).json()["results"][0]
    # the write-only ingester cannot read the city's data back
    assert _refused(_read(secure, "ingest", select))


def test_service_users_cannot_administer(secure: SecureStack) -> None:
    for user in ("ingest", "rules", "grafana"):
        for q in (f'DROP DATABASE "{DATABASE}"', "CREATE DATABASE other", f"CREATE USER x_{user} WITH "
                  "PASSWORD 'x' WITH ALL PRIVILEGES", 'DROP MEASUREMENT "sec_probe"'):
            r = _read(secure, user, q)
            assert _refused(r), (user, q, r.text)
    databases = _read(secure, "admin", "SHOW DATABASES").json()["results"][0]["series"][0]["values"]
    assert [DATABASE] in databases


def test_wrong_password_is_refused(secure: SecureStack) -> None:
    r = requests.post(f"{secure.influx_url}/write", params={"db": DATABASE}, data="sec_probe v=1",
                      auth=("ingest", secure.influx_passwords["rules"]), timeout=10)
    assert r.status_code == 401
