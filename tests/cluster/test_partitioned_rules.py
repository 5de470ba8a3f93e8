"""Rules partitioned by district on the RabbitMQ cluster (rules/partitions.py): two rules
processes share four districts as rendezvous hashing says; SIGKILL of one moves its
districts to the other, which rebuilds their state from InfluxDB's look-back (an alert
that was firing is resolved, not announced again); a third instance takes its share;
each alert is published once. A utility whose persistent session was offline during the
alerts receives them when it comes back, on another node."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from application.cluster import RabbitCluster
from ingest.service import Ingester
from rules.partitions import MEMBERS_TOPIC, Membership, owner
from tests.waiting import wait_for
from urbansense import codec, topics
from urbansense.influx import InfluxClient
from urbansense.mqtt import MqttClient, MqttSettings
from urbansense.schema import AlertEvent, Sample, TelemetryBatch

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RULES = """
domain: water
rules:
  - {id: water.low, measurement: water, metric: pressure_mpa, op: below, threshold: 0.2, clear: 0.22,
     severity: critical}
"""


def _districts(count: int, *sets: tuple[str, ...]) -> list[str]:
    """District names each member set splits with every member owning at least one."""
    while True:
        names = [f"p{uuid.uuid4().hex[:6]}" for _ in range(count)]
        if all({owner(d, members) for d in names} == set(members) for members in sets):
            return names


class Rules:
    """A rules process in cluster mode."""

    def __init__(self, name: str, tmp: Path, cluster: RabbitCluster, influx: InfluxClient,
                 districts: list[str]) -> None:
        self.name = name
        (tmp / "gateways").mkdir(exist_ok=True)
        command = [sys.executable, "-m", "application.cli", "rules", "run", "--rules", str(tmp / "rules"),
                   "--amqp", ",".join(cluster.amqp_urls), "--mqtt", cluster.mqtt_url, "--influx", influx.url,
                   "--database", influx.database, "--instance", name, "--lookback", "300",
                   "--gateways", str(tmp / "gateways"), *[a for d in districts for a in ("--district", d)]]
        self.log = tmp / f"{name}.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1",
                                                                        "URBANSENSE_ALERTMANAGER_URL": ""})

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


class Watch:
    """The members' announcements and the alerts, as a dashboard or a utility sees them."""

    def __init__(self, url: str) -> None:
        self.members = Membership("watch", expire_s=2.5)
        self.alerts: queue.Queue[AlertEvent] = queue.Queue()
        self.client = MqttClient(MqttSettings.from_url(url), client_id=f"watch-{uuid.uuid4().hex[:6]}")
        self.client.subscribe(MEMBERS_TOPIC, lambda m: self.members.hear(bytes(m.payload)), qos=0)
        self.client.subscribe("city/alerts/water/+/+",
                              lambda m: self.alerts.put(codec.decode_alert(bytes(m.payload))), qos=1)
        self.client.connect()
        assert self.client.wait_subscribed(15)

    def holders(self) -> dict[str, set[str]]:
        return self.members.holders(time.monotonic())

    def spread_as(self, districts: list[str], members: tuple[str, ...]) -> bool:
        held = self.holders()
        return all(held.get(d) == {owner(d, members)} for d in districts)

    def take(self, count: int, what: str, timeout_s: float = 30.0) -> list[AlertEvent]:
        got: list[AlertEvent] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < count:
            try:
                got.append(self.alerts.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                pytest.fail(f"{what}: {len(got)} of {count} alerts within {timeout_s:.0f} s: {got}")
        return got


def _round(client: MqttClient, watch: Watch, districts: list[str], pressure: float, state: str, what: str) -> None:
    """A reading in every district, and every district's alert in `state`, once."""
    _send(client, districts, pressure)
    got = watch.take(len(districts), what)
    assert sorted((e.district, e.state) for e in got) == sorted((d, state) for d in districts)


def _send(client: MqttClient, districts: list[str], pressure: float) -> None:
    t = int(time.time() * 1000)
    for d in districts:
        batch = TelemetryBatch(gw="gw-1", district=d, seq=t, sent=t,
                               samples=[Sample("wp-1", "water", t, {"pressure_mpa": pressure})])
        client.publish_wait(topics.telemetry(d, "gw-1"), codec.encode_batch(batch), timeout_s=10)


@pytest.fixture
def rules_tmp(tmp_path: Path) -> Path:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "water.yaml").write_text(RULES)
    return tmp_path


@pytest.fixture
def processes() -> Iterator[list[Rules]]:
    started: list[Rules] = []
    yield started
    for r in started:
        r.stop()


def test_districts_spread_move_to_a_standby_when_an_instance_dies_and_alerts_reach_an_offline_utility(
        cluster: RabbitCluster, ingester: Ingester, influx_db: InfluxClient, rules_tmp: Path,
        processes: list[Rules]) -> None:
    districts = _districts(4, ("rules-a", "rules-b"), ("rules-b", "rules-c"))
    nodes = cluster.mqtt_url.split("?")[0].removeprefix("mqtt://").split(",")
    watch = Watch(cluster.mqtt_url)
    utility_id = f"utility-{uuid.uuid4().hex[:6]}"
    missed: queue.Queue[AlertEvent] = queue.Queue()

    def utility(node: str) -> MqttClient:
        client = MqttClient(MqttSettings.from_url(f"mqtt://{node}?protocol=3.1.1"), client_id=utility_id,
                            clean_start=False)
        client.subscribe("city/alerts/water/+/+", lambda m: missed.put(codec.decode_alert(bytes(m.payload))), qos=1)
        client.connect()
        assert client.wait_subscribed(15)
        return client

    utility(nodes[2]).close()  # subscribed, then offline: its session keeps what comes
    gateway = MqttClient(MqttSettings.from_url(cluster.mqtt_url), client_id=f"gw-{uuid.uuid4().hex[:6]}")
    gateway.connect()
    try:
        a = Rules("rules-a", rules_tmp, cluster, influx_db, districts)
        processes.append(a)
        processes.append(Rules("rules-b", rules_tmp, cluster, influx_db, districts))
        wait_for(lambda: watch.spread_as(districts, ("rules-a", "rules-b")), 60,
                 what="each district held by its owner among rules-a and rules-b")

        _round(gateway, watch, districts, 0.1, "firing", "low pressure in every district")
        stored = f"SELECT pressure_mpa FROM water WHERE district =~ /^({'|'.join(districts)})$/"
        wait_for(lambda: len(influx_db.rows(stored)) >= 4, 30,
                 what="the readings in InfluxDB (the look-back a standby reads)")

        moved = [d for d in districts if owner(d, ("rules-a", "rules-b")) == "rules-a"]
        killed_at = time.monotonic()
        a.kill()
        wait_for(lambda: all(watch.holders().get(d) == {"rules-b"} for d in districts), 30,
            what="rules-b holding every district after rules-a's SIGKILL")
        took_s = time.monotonic() - killed_at

        # the moved districts' alerts were firing: the standby knew it from the look-back
        _round(gateway, watch, districts, 0.3, "resolved", f"pressure back everywhere, {moved} included")

        processes.append(Rules("rules-c", rules_tmp, cluster, influx_db, districts))
        wait_for(lambda: watch.spread_as(districts, ("rules-b", "rules-c")), 60,
                 what="each district held by its owner among rules-b and rules-c")
        _round(gateway, watch, districts, 0.1, "firing", "low pressure again, with three instances having run")
        # each alert once: a district evaluated twice would have sent its firing again before these
        _round(gateway, watch, districts, 0.3, "resolved", "pressure back again")

        back = utility(nodes[0])  # the utility returns, on another node
        try:
            got: list[AlertEvent] = []

            def all_came() -> bool:
                got.extend(_drain(missed))
                return len(got) >= 16

            wait_for(all_came, 30, what="the 16 alert events the offline utility missed")
            assert sorted((e.district, e.state) for e in got) == sorted(
                (d, s) for d in districts for s in ("firing", "resolved", "firing", "resolved"))
        finally:
            back.close()
        print(f"take-over after SIGKILL: {took_s:.1f} s")
    finally:
        gateway.close()
        watch.client.close()


def _drain(q: queue.Queue[AlertEvent]) -> list[AlertEvent]:
    out = []
    while not q.empty():
        out.append(q.get())
    return out


GATEWAY = """
import sys, time
from urbansense import codec, topics
from urbansense.mqtt import MqttClient, MqttSettings, Will
from urbansense.schema import GatewayStatus
district, gateway, url = sys.argv[1:4]
topic = topics.status(district, gateway)
client = MqttClient(MqttSettings.from_url(url), client_id=f"edge-{district}-{gateway}", clean_start=False,
                    will=Will(topic, codec.encode_status(GatewayStatus(state="offline", t=int(time.time() * 1000)))))
client.connect()
client.publish_wait(topic, codec.encode_status(GatewayStatus(state="online", t=int(time.time() * 1000))),
                    retain=True, timeout_s=10)
print("online", flush=True)
sys.stdin.read()  # until the test kills it, or ends: then its stdin closes
"""


def test_a_gateways_birth_and_last_will_reach_influxdb_and_the_rules_from_any_node(
        cluster: RabbitCluster, ingester: Ingester, influx_db: InfluxClient, rules_tmp: Path,
        processes: list[Rules]) -> None:
    """No retained message is read: the status travels in the queues, whichever node the
    gateway used (node 3 here; the rules and the ingester are on other nodes)."""
    (rules_tmp / "rules" / "system.yaml").write_text(
        "domain: system\nrules:\n  - {id: system.gateway_offline, kind: gateway_offline, for_s: 0}\n")
    district = _districts(1, ("rules-s",))[0]
    watch = Watch(cluster.mqtt_url)
    alerts: queue.Queue[AlertEvent] = queue.Queue()
    watch.client.subscribe(f"city/alerts/system/{district}/+",
                           lambda m: alerts.put(codec.decode_alert(bytes(m.payload))), qos=1)
    assert watch.client.wait_subscribed(15)
    try:
        processes.append(Rules("rules-s", rules_tmp, cluster, influx_db, [district]))
        wait_for(lambda: watch.holders().get(district) == {"rules-s"}, 60, what=f"rules-s holding {district}")
        node3 = cluster.mqtt_url.split("?")[0].removeprefix("mqtt://").split(",")[2]
        gateway = subprocess.Popen([sys.executable, "-c", GATEWAY, district, "gw-s", f"mqtt://{node3}?protocol=3.1.1"],
                                   cwd=REPO, stdout=subprocess.PIPE, stdin=subprocess.PIPE)
        try:
            assert gateway.stdout is not None and gateway.stdout.readline().strip() == b"online"
            status = f"SELECT online FROM gateway_status WHERE district = '{district}'"
            wait_for(lambda: [r["online"] for r in influx_db.rows(status)] == [True], 30, what="the birth in InfluxDB")
        finally:
            gateway.kill()  # no DISCONNECT: the node publishes the last will
            gateway.wait(10)
        wait_for(lambda: [r["online"] for r in influx_db.rows(status)] == [True, False], 60,
                 what="the last will in InfluxDB")
        ev = alerts.get(timeout=30)
        assert (ev.rule, ev.device, ev.state) == ("system.gateway_offline", "gw-s", "firing")
    finally:
        watch.client.close()
