"""A hardened private stack, as in the deployment: Mosquitto with a TLS-only listener
(certificates made by tests/security/pki.py), accounts hashed by
deploy/mosquitto/make-passwd.sh, deploy/mosquitto/acl; InfluxDB with auth enabled and one
least-privilege user per service. Passwords are generated per run; none is in the repo."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from application.stack import BrokerSecurity, Stack
from tests.security.pki import Pki, make_pki

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "mosquitto"
#: The gateways of the end-to-end test; usernames are "{district}/{gateway}" (see the ACL).
GATEWAYS = ("pudong/sec-gw-a", "pudong/sec-gw-b")
MQTT_ACCOUNTS = ("ingest", "rules", "grafana", "ops", *GATEWAYS)
#: InfluxDB users and their grants on `city` (None = admin).
INFLUX_USERS: dict[str, str | None] = {"admin": None, "ingest": "WRITE", "rules": "ALL", "grafana": "READ"}
DATABASE = "city"


@dataclass
class SecureStack:
    stack: Stack
    pki: Pki
    mqtt_passwords: dict[str, str]
    influx_passwords: dict[str, str]

    @property
    def mqtts_url(self) -> str:
        return self.stack.mqtt_url

    @property
    def influx_url(self) -> str:
        return self.stack.influx_url

    @property
    def broker_log(self) -> Path:
        return self.stack.run_dir / "mosquitto" / "mosquitto.log"

    def secrets(self) -> list[str]:
        return [*self.mqtt_passwords.values(), *self.influx_passwords.values()]

    def env(self, mqtt_user: str | None, influx_user: str | None = None) -> dict[str, str]:
        """The environment a component runs with: TLS CA and its own credentials only."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("URBANSENSE_")}
        env.update({"URBANSENSE_MQTT_URL": self.mqtts_url, "URBANSENSE_INFLUX_URL": self.influx_url,
                    "URBANSENSE_MQTT_CA_FILE": str(self.pki.ca_file),
                    "URBANSENSE_RUN_DIR": str(self.stack.run_dir)})
        if mqtt_user:
            env["URBANSENSE_MQTT_USERNAME"] = mqtt_user
            env["URBANSENSE_MQTT_PASSWORD"] = self.mqtt_passwords[mqtt_user]
        if influx_user:
            env["URBANSENSE_INFLUX_USERNAME"] = influx_user
            env["URBANSENSE_INFLUX_PASSWORD"] = self.influx_passwords[influx_user]
        return env


def influxql(url: str, q: str, auth: tuple[str, str] | None) -> requests.Response:
    return requests.post(f"{url}/query", data={"q": q}, auth=auth, timeout=10)


def _password_file(run_dir: Path, passwords: dict[str, str]) -> Path:
    """Hash the accounts with the deployment's own script (and its accounts format)."""
    accounts = run_dir / "accounts"
    variables = {user: "SEC_MQTT_" + "".join(c if c.isalnum() else "_" for c in user).upper()
                 for user in passwords}
    accounts.write_text("".join(f"{user} {var}\n" for user, var in variables.items()))
    env = {**os.environ, **{variables[u]: pw for u, pw in passwords.items()}}
    out = run_dir / "passwd"
    subprocess.run([str(DEPLOY / "make-passwd.sh"), str(accounts), str(out)], env=env, check=True,
                   capture_output=True, timeout=60)
    return out


@pytest.fixture(scope="session")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    base = tmp_path_factory.mktemp("secure")
    pki = make_pki(base / "pki")
    mqtt_pw = {user: secrets.token_urlsafe(16) for user in MQTT_ACCOUNTS}
    influx_pw = {user: secrets.token_urlsafe(16) for user in INFLUX_USERS}
    security = BrokerSecurity(cert_file=pki.cert_file, key_file=pki.key_file, ca_file=pki.ca_file,
                              password_file=_password_file(base, mqtt_pw), acl_file=DEPLOY / "acl")
    stack = Stack(base / "stack", broker_security=security, influx_auth=True)
    stack.up()
    try:
        url = stack.influx_url
        # With auth on and no user yet, InfluxDB 1.x accepts exactly one thing: the first admin.
        r = influxql(url, f"CREATE USER admin WITH PASSWORD '{influx_pw['admin']}' WITH ALL PRIVILEGES", None)
        assert r.status_code == 200 and "error" not in r.text, r.text
        admin = ("admin", influx_pw["admin"])
        statements = [f'CREATE DATABASE "{DATABASE}"']
        for user, grant in INFLUX_USERS.items():
            if grant:
                statements += [f"CREATE USER {user} WITH PASSWORD '{influx_pw[user]}'",
                               f'GRANT {grant} ON "{DATABASE}" TO {user}']
        for q in statements:
            r = influxql(url, q, admin)
            assert r.status_code == 200 and "error" not in r.text, (q, r.text)
        yield SecureStack(stack, pki, mqtt_pw, influx_pw)
    finally:
        stack.down()
