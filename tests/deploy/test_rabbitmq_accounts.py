"""Cluster mode's accounts, proven on a real RabbitMQ node: `urbansense broker rabbitmq`
gives every account of deploy/mosquitto the rights the Mosquitto ACL gives it
(tests/deploy/test_mosquitto_acl.py), through the management API, with passwords
generated here. RabbitMQ 3.10 speaks MQTT 3.1.1, which has no refusal codes for PUBLISH
and SUBSCRIBE: a refused publish or subscription closes the client's connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import paho.mqtt.client as paho
import pytest

from application.cluster import RabbitCluster
from application.rabbit_accounts import ManagementApi, provision
from tests.deploy.mqtt_probe import Probe, probes
from tests.waiting import wait_for
from urbansense.amqp import with_credentials
from urbansense.broker_accounts import filter_regex, load_accounts, rabbit_permissions

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "mosquitto"


@dataclass
class Node:
    cluster: RabbitCluster
    passwords: dict[str, str]
    env: dict[str, str]

    @property
    def mqtt_port(self) -> int:
        return self.cluster.nodes[0].mqtt_port

    def amqp_url(self, user: str) -> str:
        n = self.cluster.nodes[0]
        return with_credentials(f"amqp://{n.ip}:{n.amqp_port}/", user, self.passwords[user])


def _passwords(folder: Path) -> tuple[dict[str, str], dict[str, str]]:
    accounts = load_accounts(folder)
    passwords = {a.name: secrets.token_urlsafe(12) + "@:/%" for a in accounts}  # URL-unsafe on purpose
    return passwords, {a.password_var: passwords[a.name] for a in accounts}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One RabbitMQ node (the MQTT plugin refusing anonymous clients, the management API),
    provisioned by the real command."""
    cluster = RabbitCluster(tmp_path_factory.mktemp("rabbit-accounts"), 1, management=True, anonymous_mqtt=False)
    try:
        cluster.up()
        passwords, env = _passwords(DEPLOY)
        run_env = {**os.environ, **env, "URBANSENSE_RABBITMQ_ADMIN_USER": "guest",
                   "URBANSENSE_RABBITMQ_ADMIN_PASSWORD": "guest"}
        n = cluster.nodes[0]
        out = subprocess.run([sys.executable, "-m", "application.cli", "broker", "rabbitmq",
                              "--management", cluster.management_urls[0], "--amqp", f"amqp://{n.ip}:{n.amqp_port}/",
                              "--district", "pudong"],
                             env=run_env, capture_output=True, text=True, timeout=120, cwd=REPO)
        assert out.returncode == 0, out.stderr
        assert f"{len(passwords)} accounts and their permissions set" in out.stdout
        assert "rules queues of pudong" in out.stdout
        yield Node(cluster, passwords, env)
    finally:
        cluster.down()


class Client(Probe):
    def _until(self, done: Any, timeout_s: float = 5.0) -> bool:
        """Until `done()` or the broker closes the connection; True if `done()`."""
        outcome = wait_for(lambda: "answered" if done() else "closed" if self.closed else None, timeout_s,
                           "the broker to answer or close the connection", interval_s=0.01)
        return outcome == "answered"

    def publish(self, topic: str, payload: bytes = b"x") -> bool:
        """QoS 1; True on PUBACK, False if the broker closed the connection instead."""
        info = self.paho.publish(topic, payload, qos=1)
        return self._until(lambda: info.mid in self.acks)

    def subscribe(self, topic: str) -> bool:
        """QoS 1; True on a granted SUBACK, False if refused (connection closed)."""
        _rc, mid = self.paho.subscribe(topic, qos=1)
        assert mid is not None
        return self._until(lambda: mid in self.subacks) and self.subacks[mid][0] < 128

    def expect(self, topics: set[str]) -> set[str]:
        """The topics received once `topics` have come (or 5 s passed), and a moment more
        for anything that should not come."""
        got: set[str] = set()
        deadline = time.monotonic() + 5
        while not topics <= got and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                got.add(self.messages.get(timeout=0.05)[0])
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            with contextlib.suppress(queue.Empty):
                got.add(self.messages.get(timeout=0.05)[0])
        return got


def _client_id(user: str | None) -> str:
    """A client id the account may use (urbansense/broker_accounts.py client_id_pattern)."""
    tag = uuid.uuid4().hex[:6]
    if user and "/" in user:
        return f"edge-{user.replace('/', '-')}"
    if user in ("rules", "relay", "duty", "ops"):
        return f"urbansense-{user}-{tag}"
    return f"{user}-{tag}"


@pytest.fixture
def connect(node: Node) -> Iterator[Any]:
    """connect(user, password=None, client_id=None) -> Client, MQTT 3.1.1; all closed at the end."""
    with probes(Client, node.mqtt_port, paho.MQTTv311) as open_probe:
        def _connect(user: str | None, password: str | None = None, client_id: str | None = None) -> Client:
            secret = password if password is not None or user is None else node.passwords[user]
            return open_probe(user, secret, client_id or _client_id(user))

        yield _connect


def refused(connect: Any, user: str, topic: str) -> bool:
    return not connect(user).publish(topic)


def test_the_node_runs_the_cluster_settings_a_city_s_nodes_run(node: Node) -> None:
    """The stack runner's nodes take deploy/rabbitmq/conf.d/cluster.conf, as the compose
    profile's do: what the node itself reports."""
    def setting(app: str, key: str) -> str:
        return node.cluster.ctl("eval", f"application:get_env({app}, {key}).").strip()

    assert setting("rabbit", "cluster_partition_handling") == "{ok,pause_minority}"
    assert setting("rabbitmq_mqtt", "durable_queue_type") == "{ok,quorum}"
    assert setting("rabbitmq_mqtt", "allow_anonymous") == "{ok,false}"
    assert setting("ra", "wal_max_size_bytes") == "{ok,67108864}"


def test_anonymous_and_wrong_passwords_are_refused(connect: Any) -> None:
    assert connect(None, client_id="anonymous").connack != 0
    assert connect("ingest", "not-the-password").connack != 0
    assert connect("pudong/pd-gw-nobody", "whatever").connack != 0
    assert connect("pudong/pd-gw-water").connack == 0


def test_a_gateway_publishes_only_under_its_own_prefix(connect: Any) -> None:
    ops = connect("ops")
    assert ops.subscribe("city/#")
    gw = connect("pudong/pd-gw-water")
    assert gw.publish("city/pudong/pd-gw-water/telemetry")
    assert gw.publish("city/pudong/pd-gw-water/status")
    for topic in ("city/pudong/pd-gw-gas/telemetry", "city/xuhui/pd-gw-water/telemetry",
                  "city/pudong/pd-gw-gas/status", "city/alerts/water/pudong/critical",
                  "city/ingest/deadletter", "city/pudong/pd-gw-water/cmd"):
        assert refused(connect, "pudong/pd-gw-water", topic), topic
    assert ops.expect({"city/pudong/pd-gw-water/telemetry", "city/pudong/pd-gw-water/status"}) == {
        "city/pudong/pd-gw-water/telemetry", "city/pudong/pd-gw-water/status"}


def test_a_gateway_reads_only_its_own_commands_and_configs(connect: Any) -> None:
    gw = connect("pudong/pd-gw-gas")
    assert gw.subscribe("city/pudong/pd-gw-gas/cmd") and gw.subscribe("city/pudong/pd-gw-gas/config")
    ops = connect("ops")
    for topic in ("city/pudong/pd-gw-gas/cmd", "city/pudong/pd-gw-water/cmd", "city/pudong/pd-gw-gas/config"):
        assert ops.publish(topic), topic
    assert gw.expect({"city/pudong/pd-gw-gas/cmd", "city/pudong/pd-gw-gas/config"}) == {
        "city/pudong/pd-gw-gas/cmd", "city/pudong/pd-gw-gas/config"}
    assert gw.publish("city/pudong/pd-gw-gas/cmd/result") and gw.publish("city/pudong/pd-gw-gas/config/result")
    # RabbitMQ refuses the subscription itself (Mosquitto grants it and delivers nothing)
    for topic in ("city/pudong/pd-gw-water/cmd", "city/+/+/telemetry", "city/pudong/+/cmd", "city/#"):
        assert not connect("pudong/pd-gw-gas").subscribe(topic), topic
    for topic in ("city/pudong/pd-gw-gas/config", "city/pudong/pd-gw-water/config"):
        assert refused(connect, "pudong/pd-gw-gas", topic), topic
    assert refused(connect, "rules", "city/pudong/pd-gw-gas/config")


def test_an_account_subscribes_only_with_its_own_client_ids(connect: Any) -> None:
    """A subscription is a queue named after the client id; an account may own only the
    queues of its client ids, so it cannot take over another client's session."""
    assert connect("pudong/pd-gw-gas", client_id="edge-pudong-pd-gw-gas-2").subscribe("city/pudong/pd-gw-gas/cmd")
    for client_id in ("edge-pudong-pd-gw-water", "utility-water", "someone"):
        assert not connect("pudong/pd-gw-gas", client_id=client_id).subscribe("city/pudong/pd-gw-gas/cmd"), client_id


def test_a_utility_reads_only_its_own_domains_alerts_and_notifications(connect: Any) -> None:
    water = connect("utility-water", client_id="utility-water-scada")
    assert water.subscribe("city/alerts/water/#") and water.subscribe("city/notify/utility-water")
    rules, relay = connect("rules"), connect("relay")
    assert rules.publish("city/alerts/water/pudong/critical") and rules.publish("city/alerts/gas/pudong/critical")
    assert relay.publish("city/notify/utility-water") and relay.publish("city/notify/utility-gas")
    assert water.expect({"city/alerts/water/pudong/critical", "city/notify/utility-water"}) == {
        "city/alerts/water/pudong/critical", "city/notify/utility-water"}
    for topic in ("city/alerts/#", "city/alerts/+/pudong/critical", "city/notify/utility-gas", "city/+/+/telemetry"):
        assert not connect("utility-water").subscribe(topic), topic
    assert refused(connect, "utility-water", "city/alerts/water/pudong/critical")
    assert refused(connect, "duty", "city/alerts/gas/pudong/critical")
    assert connect("duty").publish("city/duty/escalations")


def test_silences_and_the_rules_instances_announcements(connect: Any) -> None:
    rules = connect("rules")
    assert rules.subscribe("city/rules/silences/+") and rules.subscribe("city/rules/members/+/alive")
    assert connect("ops").publish("city/rules/silences/s-1")
    assert connect("rules").publish("city/rules/members/rules-2/alive")
    assert rules.expect({"city/rules/silences/s-1", "city/rules/members/rules-2/alive"}) == {
        "city/rules/silences/s-1", "city/rules/members/rules-2/alive"}
    assert refused(connect, "pudong/pd-gw-light", "city/rules/silences/s-2")
    assert refused(connect, "utility-water", "city/rules/silences/s-2")


async def _ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
    pass


async def _consume_once(url: str, queue_name: str) -> str:
    """'ok' if the account may consume `queue_name`, else RabbitMQ's refusal."""
    conn = await aio_pika.connect(url)
    try:
        ch = await conn.channel()
        q = await ch.get_queue(queue_name, ensure=True)
        await q.consume(_ignore)
        return "ok"
    except aio_pika.exceptions.AMQPError as exc:
        return str(exc)
    finally:
        await conn.close()


def test_over_amqp_each_service_consumes_only_its_own_queues(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    assert asyncio.run(_consume_once(node.amqp_url("ingest"), "ingest")) == "ok"
    assert asyncio.run(_consume_once(node.amqp_url("rules"), "rules.pudong")) == "ok"
    for user, queue_name in (("rules", "ingest"), ("ingest", "rules.pudong"), ("pudong/pd-gw-water", "ingest"),
                             ("utility-water", "rules.pudong"), ("ops", "ingest")):
        assert "ACCESS_REFUSED" in asyncio.run(_consume_once(node.amqp_url(user), queue_name)), (user, queue_name)
    # a service's AMQP URL without credentials uses its broker account from the environment
    n = node.cluster.nodes[0]
    monkeypatch.setenv("URBANSENSE_MQTT_USERNAME", "ingest")
    monkeypatch.setenv("URBANSENSE_MQTT_PASSWORD", node.passwords["ingest"])
    from urbansense.amqp import connect as amqp_connect

    async def as_ingest() -> str:
        conn = await amqp_connect(f"amqp://{n.ip}:{n.amqp_port}/")
        await conn.close()
        return "connected"

    assert asyncio.run(as_ingest()) == "connected"


def test_the_rules_account_declares_its_district_queues_and_ticks(node: Node) -> None:
    from rules.partitions import TICK_PREFIX, declare_partitions

    async def as_rules() -> tuple[str, str]:
        conn = await aio_pika.connect(node.amqp_url("rules"))
        try:
            ch = await conn.channel()
            await declare_partitions(ch, ["minhang"])  # a district the provisioning did not know
            await (await ch.get_exchange("amq.topic")).publish(aio_pika.Message(b""), TICK_PREFIX + "minhang")
            got = None
            async with (await ch.get_queue("rules.minhang")).iterator() as deliveries:
                got = await asyncio.wait_for(anext(deliveries), 10)  # single active consumer: no basic.get
                await got.ack()
            forged = "ok"
            try:  # but no telemetry in a gateway's name
                ch2 = await conn.channel()
                await (await ch2.get_exchange("amq.topic")).publish(aio_pika.Message(b""),
                                                                    "city.pudong.pd-gw-gas.telemetry")
                await ch2.get_queue("rules.minhang")  # the refusal closes the channel: seen here
            except aio_pika.exceptions.AMQPError as exc:
                forged = str(exc)
            return ("tick" if got is not None and got.routing_key == TICK_PREFIX + "minhang" else "none"), forged
        finally:
            await conn.close()

    tick, forged = asyncio.run(as_rules())
    assert tick == "tick"
    assert "ACCESS_REFUSED" in forged


def test_accounts_no_longer_listed_are_deleted_and_passwords_rotated(node: Node, tmp_path: Path,
                                                                     connect: Any) -> None:
    folder = tmp_path / "mosquitto"
    shutil.copytree(DEPLOY, folder)
    with (folder / "accounts").open("a") as f:
        f.write("pudong/pd-gw-extra   MQTT_PASSWORD_PD_GW_EXTRA\n")
    api = ManagementApi(node.cluster.management_urls, ("guest", "guest"))
    env = {**node.env, "MQTT_PASSWORD_PD_GW_EXTRA": "extra-pw"}
    assert provision(api, folder, env).deleted == []
    assert connect("pudong/pd-gw-extra", "extra-pw").connack == 0
    (folder / "accounts").write_text((DEPLOY / "accounts").read_text())
    env["MQTT_PASSWORD_PD_GW_WATER"] = rotated = "rotated-" + secrets.token_urlsafe(8)
    try:
        done = provision(api, folder, env)
        assert done.deleted == ["pudong/pd-gw-extra"]
        assert connect("pudong/pd-gw-extra", "extra-pw").connack != 0
        assert connect("pudong/pd-gw-water", node.passwords["pudong/pd-gw-water"]).connack != 0
        assert connect("pudong/pd-gw-water", rotated).connack == 0
        assert {u["name"] for u in api.call("GET", "/api/users").json()} >= {"guest", "ingest"}  # others kept
    finally:
        provision(api, DEPLOY, node.env)


def test_a_missing_password_is_named_and_nothing_is_changed(node: Node) -> None:
    from urbansense.config import ConfigError

    api = ManagementApi(node.cluster.management_urls, ("guest", "guest"))
    env = {k: v for k, v in node.env.items() if k != "MQTT_PASSWORD_RULES"}
    with pytest.raises(ConfigError, match="MQTT_PASSWORD_RULES"):
        provision(api, DEPLOY, env)


def test_the_command_names_a_wrong_administrator(node: Node) -> None:
    env = {**os.environ, "URBANSENSE_RABBITMQ_ADMIN_USER": "guest", "URBANSENSE_RABBITMQ_ADMIN_PASSWORD": "wrong"}
    out = subprocess.run([sys.executable, "-m", "application.cli", "broker", "rabbitmq",
                          "--management", node.cluster.management_urls[0], "--wait", "5"],
                         env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 1
    assert "refused the administrator 'guest'" in out.stderr and "URBANSENSE_RABBITMQ_ADMIN_PASSWORD" in out.stderr


# ---- the translation itself, account by account against MQTT's own matching


def test_every_acl_filter_means_the_same_on_rabbitmq() -> None:
    """For every account and a spread of topics, RabbitMQ's topic permissions allow what
    Mosquitto's ACL allows (paho's topic_matches_sub is MQTT's matching)."""
    topics = ["city/pudong/pd-gw-water/telemetry", "city/pudong/pd-gw-water/status", "city/pudong/pd-gw-water/cmd",
              "city/pudong/pd-gw-water/cmd/result", "city/pudong/pd-gw-gas/telemetry", "city/xuhui/x/config",
              "city/alerts/water/pudong/critical", "city/alerts/gas/pudong/warning", "city/alerts/water",
              "city/notify/utility-water", "city/notify/utility-gas", "city/ingest/deadletter",
              "city/rules/silences/s-1", "city/rules/members/rules-1/alive", "city/duty/escalations",
              "city/ops/grafana/x", "city/utility-water/telemetry", "other/topic", "city/a.b/c/telemetry"]

    for account in load_accounts(DEPLOY):
        perms = rabbit_permissions(account)
        for topic in topics:
            key = ".".join(level.replace(".", "/") for level in topic.split("/"))  # as the MQTT plugin routes it
            for filters, regex in ((account.write, perms.topic_write), (account.read, perms.topic_read)):
                mqtt = any(paho.topic_matches_sub(f, topic) for f in filters if not f.startswith("$"))
                assert bool(re.match(regex, key)) == mqtt, (account.name, topic, regex)


@pytest.mark.parametrize(("topic_filter", "allowed", "refused"), [
    ("city/+/+/telemetry", ["city.pudong.gw.telemetry", "city.*.*.telemetry", "city.pudong.*.telemetry"],
     ["city.#", "city.pudong.#", "city.pudong.gw.status", "city.pudong.gw.x.telemetry", "city.#.telemetry"]),
    ("city/alerts/water/#", ["city.alerts.water", "city.alerts.water.#", "city.alerts.water.*.critical"],
     ["city.alerts.#", "city.alerts.*.pudong.critical", "city.alerts.waterx"]),
    ("city/pudong/gw-1/cmd", ["city.pudong.gw-1.cmd"], ["city.pudong.gw-1.cmd.result", "city.pudong.*.cmd"]),
])
def test_a_filter_allows_the_narrower_subscriptions_and_no_wider(topic_filter: str, allowed: list[str],
                                                                 refused: list[str]) -> None:
    regex = filter_regex(topic_filter)
    assert regex is not None
    assert all(re.match(regex, k) for k in allowed), regex
    assert not any(re.match(regex, k) for k in refused), regex
    assert filter_regex("$SYS/#") is None


# ---- the services themselves, each on its own account, as the compose cluster profile runs them

AIR_PROFILE = {
    "profile": "acc-air", "measurement": "air", "protocol": "mqtt", "topic": "sensors/{device}/data",
    "fields": [{"name": "pm25_ugm3", "key": "pm25"}],
}


@contextlib.contextmanager
def _service(name: str, args: list[str], account: str, node: Node, tmp: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`urbansense <args>` with `account`'s credentials in its environment, as compose passes them."""
    log = tmp / f"{name}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "URBANSENSE_ALERTMANAGER_URL": "",
           "URBANSENSE_MQTT_USERNAME": account, "URBANSENSE_MQTT_PASSWORD": node.passwords[account]}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "application.cli", *args], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        text = log.read_text(errors="replace")
        assert "ACCESS_REFUSED" not in text and "not authori" not in text.lower(), f"{name}:\n{text[-3000:]}"


def test_gateway_ingester_and_rules_run_on_their_own_accounts(node: Node, stack: Any, influx_db: Any,
                                                              tmp_path: Path, connect: Any) -> None:
    """A gateway agent (its own account, MQTT 3.1.1, its commands subscribed), the ingester
    (AMQP with the same account as its MQTT) and a rules instance holding its district's
    queue: every reading reaches InfluxDB, no refusal in any log."""
    from application.rabbit_accounts import ManagementApi as Api
    from tests.edge.conftest import write_gateway
    from urbansense.mqtt import MqttClient, MqttSettings

    folder = tmp_path / "mosquitto"
    shutil.copytree(DEPLOY, folder)
    with (folder / "accounts").open("a") as f:
        f.write("acctest/gw-acc   MQTT_PASSWORD_ACCTEST_GW_ACC\n")
    node.passwords["acctest/gw-acc"] = "gw-" + secrets.token_urlsafe(8)
    api = Api(node.cluster.management_urls, ("guest", "guest"))
    provision(api, folder, {**node.env, "MQTT_PASSWORD_ACCTEST_GW_ACC": node.passwords["acctest/gw-acc"]})
    n = node.cluster.nodes[0]
    amqp, mqtt = f"amqp://{n.ip}:{n.amqp_port}/", f"mqtt://{n.ip}:{n.mqtt_port}?protocol=3.1.1"
    cfg = {"gateway": "gw-acc", "district": "acctest", "batch": {"max_interval_s": 0.2},
           "links": [{"name": "cabinet", "transport": "mqtt", "host": "127.0.0.1", "port": stack.mqtt_port,
                      "devices": [{"id": "acc-probe", "profile": "acc-air"},
                                  {"id": "acc-aq-1", "profile": "acc-air"}]}]}
    path = write_gateway(tmp_path, cfg, [AIR_PROFILE])
    announcements = connect("ops")
    assert announcements.subscribe("city/rules/members/+/alive")
    sensor = MqttClient(MqttSettings.from_url(stack.mqtt_url), client_id=f"sensor-{uuid.uuid4().hex[:6]}")
    sensor.connect()
    try:
        with _service("ingest", ["ingest", "run", "--amqp", amqp, "--mqtt", mqtt, "--influx", influx_db.url,
                                 "--database", influx_db.database, "--instance", "ingest-acc"], "ingest", node,
                      tmp_path), \
             _service("rules", ["rules", "run", "--amqp", amqp, "--mqtt", mqtt, "--influx", influx_db.url,
                                "--database", influx_db.database, "--instance", "rules-acc", "--district", "acctest",
                                "--gateways", str(path.parent)], "rules", node, tmp_path), \
             _service("edge", ["edge", "run", "--config", str(path), "--mqtt", mqtt, "--wal",
                               str(tmp_path / "edge.wal")], "acctest/gw-acc", node, tmp_path) as edge:
            assert announcements.expect({"city/rules/members/rules-acc/alive"}) >= {
                "city/rules/members/rules-acc/alive"}

            def subscribed() -> bool:
                """The agent's uplink session (its commands and configs) exists: it was let in."""
                queues = {q["name"] for q in api.call("GET", "/api/queues").json()}
                assert edge.poll() is None, (tmp_path / "edge.log").read_text()[-2000:]
                return any(q.startswith("mqtt-subscription-edge-acctest-gw-acc") for q in queues)

            wait_for(subscribed, 30, "the agent's command subscription on RabbitMQ")

            def count(device: str) -> int:
                series = influx_db.query(f'SELECT count("pm25_ugm3") FROM "air" WHERE "device" = \'{device}\'')
                return int(series[0].rows()[0]["count"]) if series and series[0].values else 0

            def probed() -> bool:
                """The agent's cabinet link listens once a probe reading has come all the way."""
                sensor.publish_wait("sensors/acc-probe/data", b'{"pm25": 1}')
                return count("acc-probe") > 0

            wait_for(probed, 60, "a probe reading through the agent, RabbitMQ and the ingester")
            for k in range(5):
                sensor.publish_wait("sensors/acc-aq-1/data", f'{{"pm25": {30 + k}}}'.encode())
            wait_for(lambda: count("acc-aq-1") == 5, 30, "the five readings in InfluxDB")

            def holds_its_district() -> bool:
                """The rules instance took its district's queue (it says so in its announcements)."""
                with contextlib.suppress(queue.Empty):
                    while True:
                        _topic, payload = announcements.messages.get(timeout=0.2)
                        if json.loads(payload).get("holds") == ["acctest"]:
                            return True
                return False

            wait_for(holds_its_district, 30, "the rules instance holding district acctest")
    finally:
        sensor.close()
        provision(api, DEPLOY, node.env)


@pytest.mark.parametrize(("user", "password", "seen"), [
    ("pudong/pd-gw-water", None, "ACCESS_REFUSED - access to queue 'ingest'"),  # a queue not its own
    ("ingest", "wrong", ""),  # a wrong password
])
def test_a_refused_account_is_reported_with_the_fix(node: Node, caplog: pytest.LogCaptureFixture, user: str,
                                                    password: str | None, seen: str) -> None:
    import logging

    from urbansense.amqp import AmqpConsumer

    n = node.cluster.nodes[0]
    url = with_credentials(f"amqp://{n.ip}:{n.amqp_port}/", user, password or node.passwords[user])
    source = AmqpConsumer([url], _ignore_sync, queues=["ingest"], reconnect_s=0.1)
    with caplog.at_level(logging.WARNING, logger="urbansense.amqp"):
        source.start()
        try:
            wait_for(lambda: any("refused account" in r.getMessage() for r in caplog.records), 30,
                     what="the refusal reported")
        finally:
            source.stop()
    message = next(r.getMessage() for r in caplog.records if "refused account" in r.getMessage())
    assert f"refused account {user!r}" in message and "urbansense broker rabbitmq" in message and seen in message
    assert node.passwords[user] not in caplog.text and "wrong" not in message  # no password in the log


def _ignore_sync(_message: Any) -> None:
    pass


@pytest.mark.parametrize(("acl", "says"), [
    ("pattern write city/%c/telemetry\n", "only %u (the username) is understood"),
    ("topic read city/#\n", "a topic line before any 'user' line"),
    ("user nobody\ntopic read city/#\n", "user nobody is not in"),
    ("user ingest\ntopic sometimes city/#\n", "access 'sometimes' is not read, write or readwrite"),
    ("user ingest\nallow everything please\n", "cannot read 'allow everything please'"),
])
def test_an_acl_the_translation_cannot_read_is_named_by_line(tmp_path: Path, acl: str, says: str) -> None:
    from urbansense.config import ConfigError

    (tmp_path / "accounts").write_text("ingest MQTT_PASSWORD_INGEST\n")
    (tmp_path / "acl").write_text("# comment\n" + acl)
    with pytest.raises(ConfigError) as caught:
        load_accounts(tmp_path)
    text = str(caught.value)
    assert says in text and f"{tmp_path / 'acl'}:" in text
