"""The whole chain on the hardened stack: a simulated Modbus meter -> edge agent ->
Mosquitto (TLS, accounts, deployment ACL) -> ingester -> InfluxDB (auth, write-only
user), with the rules engine beside it (read+write user). Each component is its own
process, configured only through the environment (URBANSENSE_MQTT_CA_FILE / USERNAME /
PASSWORD, URBANSENSE_INFLUX_USERNAME / PASSWORD), exactly as deployed. Afterwards no
password appears in any log."""

from __future__ import annotations

import contextlib
import queue
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from tests.edge.conftest import METER_PROFILE, ModbusSim, tcp_links, write_gateway, write_profile
from tests.security.conftest import DATABASE, SecureStack
from urbansense.mqtt import MqttClient, MqttSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]
GATEWAY = "pudong/sec-gw-a"


class Components:
    """`urbansense ...` child processes, each with its own environment and log file."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, env: dict[str, str], *args: str) -> None:
        with open(self.log_dir / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen([sys.executable, "-m", "application.cli", *args], env=env,
                                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True)

    def alive(self) -> None:
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        assert not dead, f"exited: {dead}\n" + "\n".join(self.log(n)[-2000:] for n in dead)

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@pytest.fixture
def components(tmp_path: Path) -> Iterator[Components]:
    group = Components(tmp_path / "logs")
    yield group
    group.stop_all()


def _count(secure: SecureStack, q: str) -> int:
    """A count read as Grafana reads: with the read-only user."""
    r = requests.post(f"{secure.influx_url}/query", data={"q": q, "db": DATABASE},
                      auth=("grafana", secure.influx_passwords["grafana"]), timeout=10)
    r.raise_for_status()
    series: list[dict[str, Any]] = r.json()["results"][0].get("series", [])
    return sum(int(row[1]) for s in series for row in s["values"])


def _wait_until(what: str, cond: Any, components: Components, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        components.alive()
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_edge_ingest_rules_over_tls_with_least_privilege(tmp_path: Path, secure: SecureStack,
                                                         components: Components) -> None:
    init = subprocess.run([sys.executable, "-m", "application.cli", "ingest", "init", "--database", DATABASE],
                          env=secure.env(None, "admin"), capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr + init.stdout
    write_profile(tmp_path / "profiles", METER_PROFILE)
    sim = ModbusSim(tmp_path / "profiles" / "test-meter.yaml", endpoints=1, units=2)
    district, gw = GATEWAY.split("/")
    gw_path = write_gateway(tmp_path, {"gateway": gw, "district": district, "poll_interval_s": 0.2,
                                       "links": tcp_links(sim, prefix="sec"), "batch": {"max_interval_s": 0.2}})
    with sim:
        components.start("ingest", secure.env("ingest", "ingest"), "ingest", "run", "--database", DATABASE,
                         "--instance", "sec-ingest", "--batch-delay", "0.2", "--metrics-interval", "1",
                         "--log-level", "DEBUG")
        components.start("rules", secure.env("rules", "rules"), "rules", "run", "--database", DATABASE,
                         "--gateways", str(gw_path.parent), "--instance", "sec-rules")
        components.start("edge", secure.env(GATEWAY), "edge", "run", "--config", str(gw_path),
                         "--wal", str(tmp_path / "edge.wal"), "--log-level", "DEBUG")
        _wait_until("readings of both devices in InfluxDB",
                    lambda: _count(secure, 'SELECT count(pressure_mpa) FROM water GROUP BY device') >= 10
                    and len(requests.post(f"{secure.influx_url}/query",
                                          data={"q": "SHOW TAG VALUES FROM water WITH KEY = device",
                                                "db": DATABASE},
                                          auth=("grafana", secure.influx_passwords["grafana"]),
                                          timeout=10).json()["results"][0]["series"][0]["values"]) == 2,
                    components)
        _wait_until("the gateway's status", lambda: _count(
            secure, f"SELECT count(*) FROM gateway_status WHERE gateway = '{gw}'") > 0, components)
        _wait_until("the ingester's self-metrics", lambda: _count(
            secure, "SELECT count(messages_total) FROM urbansense_ingest") > 0, components)
        _wait_until("the rules engine's self-metrics", lambda: _count(
            secure, "SELECT count(*) FROM urbansense_rules") > 0, components)
        _commands_over_tls(secure, district, gw)
        components.alive()
        components.stop_all()

    # Each service came in over TLS under its own account (the broker logs who connected).
    broker_log = secure.broker_log.read_text(errors="replace")
    for user in ("ingest", "rules", GATEWAY):
        assert f"u'{user}'" in broker_log, user
    # No secret in any log: the components' (at DEBUG), the broker's and InfluxDB's.
    logs = {name: components.log(name) for name in components.procs}
    logs["mosquitto"] = broker_log
    for path in (secure.stack.run_dir / "influxd").glob("*.log"):
        logs[path.name] = path.read_text(errors="replace")
    assert all(logs[name].strip() for name in ("ingest", "rules", "edge")), "a component logged nothing"
    for name, text in logs.items():
        for secret in secure.secrets():
            assert secret not in text, f"a password appears in the {name} log"
    with contextlib.suppress(FileNotFoundError):
        for path in tmp_path.rglob("*.yaml"):
            assert not any(secret in path.read_text() for secret in secure.secrets()), path


def _commands_over_tls(secure: SecureStack, district: str, gw: str) -> None:
    """The duty officer's tool (account ops) commands the gateway over TLS: a writable field
    within its limits is written, a read-only field and an out-of-range value are refused
    by the edge (tests/edge covers every refusal; this is the path through the broker)."""
    results: queue.Queue[dict[str, Any]] = queue.Queue()
    settings = MqttSettings(port=secure.stack.mqtt_port, tls=True, ca_file=str(secure.pki.ca_file),
                            username="ops", password=secure.mqtt_passwords["ops"])
    ops = MqttClient(settings, f"sec-ops-{uuid.uuid4().hex[:6]}")
    ops.subscribe(f"city/{district}/{gw}/cmd/result", lambda m: results.put(orjson.loads(m.payload)))
    ops.connect(timeout_s=10)
    try:
        assert ops.wait_subscribed(10)
        sent = {"w": ("setpoint_pct", 42.0), "ro": ("pressure_mpa", 1.0), "max": ("setpoint_pct", 150)}
        for cid, (field, value) in sent.items():
            ops.publish_wait(f"city/{district}/{gw}/cmd", orjson.dumps(
                {"id": cid, "dev": "sec-0-1", "field": field, "value": value, "t": int(time.time() * 1000)}))
        got: dict[str, dict[str, Any]] = {}
        while len(got) < len(sent):
            answer = results.get(timeout=15)
            got[answer["id"]] = answer
        assert got["w"]["ok"] is True
        assert got["ro"]["ok"] is False and "read-only" in got["ro"]["reason"]
        assert got["max"]["ok"] is False and "maximum" in got["max"]["reason"]
    finally:
        ops.close()


def test_a_refused_component_says_why_without_the_password(tmp_path: Path, secure: SecureStack,
                                                           components: Components) -> None:
    """Wrong password, and no CA (plaintext to a TLS-only port): the ingester keeps
    retrying and logs the refusal - and neither the wrong nor the right password."""
    wrong = "Wr0ng-" + secure.mqtt_passwords["ingest"][::-1]
    env = secure.env("ingest", "ingest")
    env["URBANSENSE_MQTT_PASSWORD"] = wrong
    components.start("wrong-password", env, "ingest", "run", "--database", DATABASE, "--instance",
                     "sec-wrong", "--duration", "4", "--log-level", "DEBUG")
    plain = secure.env("ingest", "ingest")
    del plain["URBANSENSE_MQTT_CA_FILE"]
    plain["URBANSENSE_MQTT_URL"] = secure.mqtts_url.replace("mqtts://", "mqtt://")
    components.start("plaintext", plain, "ingest", "run", "--database", DATABASE, "--instance",
                     "sec-plain", "--duration", "4", "--log-level", "DEBUG")
    for proc in components.procs.values():
        proc.wait(timeout=60)
    refused = components.log("wrong-password")
    assert "not authori" in refused.lower() or "refused" in refused.lower(), refused[-2000:]
    assert "use mqtts://" in components.log("plaintext"), "the plaintext attempt did not say why it fails"
    for name in components.procs:
        text = components.log(name)
        for secret in (wrong, *secure.secrets()):
            assert secret not in text, f"a password appears in the {name} log"
    # and the broker let neither in
    assert "sec-wrong" not in _accepted_clients(secure) and "sec-plain" not in _accepted_clients(secure)


def _accepted_clients(secure: SecureStack) -> str:
    """The broker log's lines of accepted connections ('New client connected ... as ID')."""
    return "\n".join(line for line in secure.broker_log.read_text(errors="replace").splitlines()
                     if "New client connected" in line)
