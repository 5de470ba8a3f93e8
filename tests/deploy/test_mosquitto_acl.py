"""The broker's access control, proven on a real Mosquitto running deploy/mosquitto's
config, ACL and a password file made by deploy/mosquitto/make-passwd.sh (passwords
generated here, so no secret is in the repository)."""

from __future__ import annotations

import contextlib
import getpass
import os
import queue
import re
import secrets
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from application.stack import find_binary, free_port
from tests.deploy.mqtt_probe import Probe, probes

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "mosquitto"
NOT_AUTHORIZED = 135  # MQTT 5 reason code 0x87
#: PUBACK reason codes of an accepted publish: success, or "no matching subscribers".
ACCEPTED = (0, 16)


@dataclass
class Broker:
    port: int
    passwords: dict[str, str]
    proc: subprocess.Popen[bytes]
    log: Path


def _accounts(deploy: Path = DEPLOY) -> list[tuple[str, str]]:
    out = []
    for line in (deploy / "accounts").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            user, var = line.split()[:2]
            out.append((user, var))
    return out


def deploy_config(port: int, run_dir: Path, deploy: Path = DEPLOY) -> str:
    """deploy/mosquitto/mosquitto.conf with the listener, paths and user adapted to a test."""
    conf = (deploy / "mosquitto.conf").read_text()
    conf = re.sub(r"^listener 1883$", f"listener {port} 127.0.0.1", conf, flags=re.M)
    conf = conf.replace("/mosquitto/data/passwd", str(run_dir / "passwd"))
    conf = conf.replace("/mosquitto/config/acl", str(deploy / "acl"))
    conf = conf.replace("/mosquitto/config/conf.d", str(deploy / "conf.d"))
    conf = conf.replace("/mosquitto/data/", f"{run_dir}/")
    conf = conf.replace("log_dest stdout", f"log_dest file {run_dir / 'mosquitto.log'}")
    assert str(run_dir / "passwd") in conf and str(deploy / "acl") in conf and str(deploy / "conf.d") in conf
    return conf + f"user {getpass.getuser()}\n"


@contextlib.contextmanager
def running_broker(run_dir: Path, deploy: Path = DEPLOY) -> Iterator[Broker]:
    """Mosquitto on a free loopback port with `deploy`'s config, ACL and accounts
    (passwords generated here)."""
    accounts = _accounts(deploy)
    passwords = {user: secrets.token_urlsafe(12) for user, _ in accounts}
    env = {**os.environ, **{var: passwords[user] for user, var in accounts}}
    subprocess.run([str(DEPLOY / "make-passwd.sh"), str(deploy / "accounts"), str(run_dir / "passwd")],
                   env=env, check=True, capture_output=True, timeout=60)
    port = free_port()
    (run_dir / "mosquitto.conf").write_text(deploy_config(port, run_dir, deploy))
    proc = subprocess.Popen([find_binary("mosquitto"), "-c", str(run_dir / "mosquitto.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            assert proc.poll() is None, (run_dir / "mosquitto.log").read_text(errors="replace")
            assert time.monotonic() < deadline, "mosquitto did not start"
            time.sleep(0.05)
    try:
        yield Broker(port, passwords, proc, run_dir / "mosquitto.log")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with running_broker(tmp_path_factory.mktemp("acl-broker")) as b:
        yield b


class Client(Probe):
    def publish(self, topic: str, payload: bytes = b"x") -> int:
        """Publish at QoS 1 and return the PUBACK reason code (135 = not authorised)."""
        info = self.paho.publish(topic, payload, qos=1)
        info.wait_for_publish(5)
        deadline = time.monotonic() + 5
        while info.mid not in self.acks and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.acks[info.mid]

    def subscribe(self, topic: str) -> int:
        """Subscribe at QoS 1; return the SUBACK reason code."""
        _rc, mid = self.paho.subscribe(topic, qos=1)
        assert mid is not None
        deadline = time.monotonic() + 5
        while mid not in self.subacks and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.subacks[mid][0]

    def received(self, wait_s: float = 0.6) -> set[str]:
        """Topics received within `wait_s` (the broker has had time to deliver)."""
        out = set()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                out.add(self.messages.get(timeout=0.05)[0])
        return out


@contextlib.contextmanager
def connector(broker: Broker) -> Iterator[Any]:
    """connect(user, password=None) -> Client on `broker` (MQTT 5); all closed at the end."""
    with probes(Client, broker.port, paho.MQTTv5) as open_probe:
        def _connect(user: str | None, password: str | None = None) -> Client:
            secret = password if password is not None or user is None else broker.passwords[user]
            return open_probe(user, secret, f"acl-{uuid.uuid4().hex[:8]}")

        yield _connect


@pytest.fixture
def connect(broker: Broker) -> Iterator[Any]:
    with connector(broker) as c:
        yield c


def test_anonymous_and_wrong_passwords_are_refused(connect: Any) -> None:
    assert connect(None).connack == NOT_AUTHORIZED
    assert connect("ingest", "not-the-password").connack != 0
    assert connect("pudong/pd-gw-nobody", "whatever").connack != 0
    assert connect("ingest").connack == 0


def refused(connect: Any, user: str, topic: str) -> bool:
    """Publish once on a fresh connection: Mosquitto 2.0 answers PUBACK 135 (not
    authorised) to a denied QoS 1 publish, then drops the connection."""
    return bool(connect(user).publish(topic) == NOT_AUTHORIZED)


def test_a_gateway_publishes_only_under_its_own_prefix(connect: Any) -> None:
    ops = connect("ops")
    ops.subscribe("city/#")
    gw = connect("pudong/pd-gw-water")
    assert gw.connack == 0
    assert gw.publish("city/pudong/pd-gw-water/telemetry") in ACCEPTED
    assert gw.publish("city/pudong/pd-gw-water/status") in ACCEPTED
    # another gateway's topics, another district, the alerts, the dead letters: refused
    for topic in ("city/pudong/pd-gw-gas/telemetry", "city/xuhui/pd-gw-water/telemetry",
                  "city/pudong/pd-gw-gas/status", "city/alerts/water/pudong/critical",
                  "city/ingest/deadletter", "city/pudong/pd-gw-water/cmd"):
        assert refused(connect, "pudong/pd-gw-water", topic), topic
    assert ops.received() == {"city/pudong/pd-gw-water/telemetry", "city/pudong/pd-gw-water/status"}


def test_a_gateway_reads_only_its_own_commands_and_configs(connect: Any) -> None:
    gw = connect("pudong/pd-gw-gas")
    # Mosquitto 2.0 grants every SUBSCRIBE and checks read access per message delivered.
    for topic in ("city/pudong/pd-gw-gas/cmd", "city/pudong/pd-gw-water/cmd", "city/+/+/telemetry",
                  "city/pudong/pd-gw-gas/config", "city/pudong/pd-gw-water/config"):
        gw.subscribe(topic)
    ops = connect("ops")
    for topic in ("city/pudong/pd-gw-gas/cmd", "city/pudong/pd-gw-water/cmd", "city/pudong/pd-gw-gas/config",
                  "city/pudong/pd-gw-water/config"):
        assert ops.publish(topic) in ACCEPTED, topic
    other = connect("pudong/pd-gw-water")
    assert other.publish("city/pudong/pd-gw-water/telemetry") in ACCEPTED
    assert gw.received() == {"city/pudong/pd-gw-gas/cmd", "city/pudong/pd-gw-gas/config"}
    assert gw.publish("city/pudong/pd-gw-gas/cmd/result") in ACCEPTED
    assert gw.publish("city/pudong/pd-gw-gas/config/result") in ACCEPTED
    # a gateway cannot push a config, to itself or another; nor can the rules service
    for topic in ("city/pudong/pd-gw-gas/config", "city/pudong/pd-gw-water/config"):
        assert refused(connect, "pudong/pd-gw-gas", topic), topic
    assert refused(connect, "rules", "city/pudong/pd-gw-gas/config")


def test_routed_notifications_reach_only_their_receivers_account(connect: Any) -> None:
    gas = connect("utility-gas")
    gas.subscribe("city/notify/#")
    relay = connect("relay")
    for topic in ("city/notify/utility-gas", "city/notify/utility-water"):
        assert relay.publish(topic) in ACCEPTED, topic
    assert gas.received() == {"city/notify/utility-gas"}
    assert refused(connect, "utility-gas", "city/notify/utility-gas")  # read only
    duty = connect("duty")
    assert duty.publish("city/duty/escalations") in ACCEPTED
    assert refused(connect, "duty", "city/alerts/gas/pudong/critical")


def test_a_utility_reads_only_its_own_domains_alerts(connect: Any) -> None:
    water = connect("utility-water")
    water.subscribe("city/alerts/#")
    water.subscribe("city/+/+/telemetry")
    rules = connect("rules")
    assert rules.publish("city/alerts/water/pudong/critical") in ACCEPTED
    assert rules.publish("city/alerts/gas/pudong/critical") in ACCEPTED
    gw = connect("pudong/pd-gw-light")
    assert gw.publish("city/pudong/pd-gw-light/telemetry") in ACCEPTED
    assert water.received() == {"city/alerts/water/pudong/critical"}
    assert refused(connect, "utility-water", "city/alerts/water/pudong/critical")
    assert refused(connect, "utility-gas", "city/pudong/pd-gw-gas/cmd")


def test_an_operator_silences_alerts_and_the_rules_service_reads_the_silence(connect: Any) -> None:
    """`urbansense rules silence add` (ops account) publishes a retained silence the rules
    service reads; rules instances in cluster mode say they are alive to each other."""
    rules = connect("rules")
    rules.subscribe("city/rules/silences/+")
    rules.subscribe("city/rules/members/+/alive")
    ops = connect("ops")
    assert ops.publish("city/rules/silences/s-1") in ACCEPTED
    assert rules.publish("city/rules/members/rules-2/alive") in ACCEPTED
    assert rules.received() == {"city/rules/silences/s-1", "city/rules/members/rules-2/alive"}
    ops.publish("city/rules/silences/s-1", b"")  # no retained silence left behind
    assert refused(connect, "pudong/pd-gw-light", "city/rules/silences/s-2")
    assert refused(connect, "utility-water", "city/rules/silences/s-2")


def test_the_ingester_reads_telemetry_through_its_shared_subscription(connect: Any) -> None:
    ingest = connect("ingest")
    ingest.subscribe("$share/ingest/city/+/+/telemetry")
    ingest.subscribe("city/alerts/#")
    gw = connect("pudong/pd-gw-light")
    assert gw.publish("city/pudong/pd-gw-light/telemetry") in ACCEPTED
    assert connect("rules").publish("city/alerts/air/pudong/warning") in ACCEPTED
    assert ingest.received() == {"city/pudong/pd-gw-light/telemetry"}
    # it cannot forge telemetry or alerts, only report dead letters
    assert refused(connect, "ingest", "city/pudong/pd-gw-light/telemetry")
    assert refused(connect, "ingest", "city/alerts/gas/pudong/critical")
    assert connect("ingest").publish("city/ingest/deadletter") in ACCEPTED


def test_make_passwd_names_the_missing_variable(tmp_path: Path) -> None:
    accounts = tmp_path / "accounts"
    accounts.write_text("# comment\ningest MQTT_TEST_INGEST\npudong/gw-1 MQTT_TEST_GW\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MQTT_TEST_")}
    env["MQTT_TEST_INGEST"] = "pw"
    out = subprocess.run([str(DEPLOY / "make-passwd.sh"), str(accounts), str(tmp_path / "passwd")],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "MQTT_TEST_GW" in out.stderr
    assert not (tmp_path / "passwd").exists()
    env["MQTT_TEST_GW"] = "pw2"
    out = subprocess.run([str(DEPLOY / "make-passwd.sh"), str(accounts), str(tmp_path / "passwd")],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = (tmp_path / "passwd").read_text().splitlines()
    assert [line.split(":", 1)[0] for line in lines] == ["ingest", "pudong/gw-1"]
    # hashed (mosquitto_passwd's $7$ PBKDF2 format), not plain; a substring check would be flaky
    assert all(line.split(":", 1)[1].startswith("$7$") for line in lines)
    assert (tmp_path / "passwd").stat().st_mode & 0o077 == 0
