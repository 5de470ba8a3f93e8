"""The local stack runner: real Mosquitto + influxd on free loopback ports, controlled
from other processes through the state file."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from application.stack import Stack, StackError, mqtt_answers, pid_alive
from urbansense.mqtt import MqttClient, MqttSettings


def cli(run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "URBANSENSE_RUN_DIR": str(run_dir)}
    return subprocess.run([sys.executable, "-m", "application.cli", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_up_status_down_from_another_process(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    up = cli(run_dir, "stack", "up")
    assert up.returncode == 0, up.stderr
    state = json.loads((run_dir / "stack.json").read_text())
    mq, ix = state["mosquitto"], state["influxd"]
    assert pid_alive(mq["pid"], "mosquitto") and pid_alive(ix["pid"], "influxd")
    assert mqtt_answers("127.0.0.1", mq["port"])
    assert requests.get(f"http://127.0.0.1:{ix['port']}/ping", timeout=2).status_code == 204
    # the private broker listens on loopback only
    conf = (run_dir / "mosquitto" / "mosquitto.conf").read_text()
    assert f"listener {mq['port']} 127.0.0.1" in conf

    status = cli(run_dir, "stack", "status")
    assert status.returncode == 0 and f"mqtt://127.0.0.1:{mq['port']}" in status.stdout

    down = cli(run_dir, "stack", "down")
    assert down.returncode == 0 and "mosquitto" in down.stdout
    assert not pid_alive(mq["pid"], "mosquitto") and not pid_alive(ix["pid"], "influxd")
    status = cli(run_dir, "stack", "status")
    assert status.returncode == 3 and "not running" in status.stdout


def test_up_with_alertmanager_exports_it_and_down_stops_it(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    up = cli(run_dir, "stack", "up", "--with", "alertmanager")
    assert up.returncode == 0, up.stderr
    am = json.loads((run_dir / "stack.json").read_text())["alertmanager"]
    assert pid_alive(am["pid"], "alertmanager") and f"http://127.0.0.1:{am['port']}" in up.stdout
    assert requests.get(f"http://127.0.0.1:{am['port']}/-/ready", timeout=2).status_code == 200
    assert "--cluster.listen-address=" in (Path(f"/proc/{am['pid']}/cmdline").read_bytes().decode().replace("\0", " "))
    # the shipped routing, its receivers posting to a local relay's default address (not compose's)
    running = requests.get(f"http://127.0.0.1:{am['port']}/api/v2/status", timeout=2).json()["config"]["original"]
    assert "http://127.0.0.1:9095/hook/duty-officer" in running and "relay:9095" not in running
    env = cli(run_dir, "stack", "env")
    assert f"URBANSENSE_ALERTMANAGER_URL=http://127.0.0.1:{am['port']}" in env.stdout
    down = cli(run_dir, "stack", "down")
    assert down.returncode == 0 and "alertmanager" in down.stdout and not pid_alive(am["pid"], "alertmanager")


def test_stale_pid_is_cleaned_and_restart_reuses_port(private_stack: Stack) -> None:
    port = private_stack.mqtt_port
    pid = private_stack.services()["mosquitto"].pid
    os.kill(pid, 9)
    # SIGKILL is delivered asynchronously: wait (bounded) until the kernel has ended it,
    # otherwise status() may truthfully still see it running (CI caught this race)
    deadline = time.monotonic() + 10
    while pid_alive(pid, "mosquitto") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not pid_alive(pid, "mosquitto"), "mosquitto survived SIGKILL for 10 s"
    # status notices the dead process and clears its pid, keeping the port for a restart
    assert private_stack.status()["mosquitto"] is None
    state = json.loads(private_stack.state_file.read_text())
    assert state["mosquitto"]["pid"] == 0 and state["mosquitto"]["port"] == port
    private_stack.start("mosquitto")
    assert private_stack.mqtt_port == port and mqtt_answers("127.0.0.1", port)


def test_a_paused_service_answers_nothing_until_resumed(private_stack: Stack) -> None:
    ping = f"{private_stack.influx_url}/ping"
    with private_stack.paused("influxd"), pytest.raises(requests.Timeout):
        requests.get(ping, timeout=1)
    assert requests.get(ping, timeout=5).status_code == 204
    private_stack.stop("influxd")
    with pytest.raises(StackError, match="cannot pause influxd: it is not running"):
        private_stack.pause("influxd")
    private_stack.resume("influxd")  # nothing to thaw: no error


def test_broker_does_not_drop_a_burst_for_a_slow_subscriber(stack: Stack) -> None:
    """Mosquitto's default max_queued_messages (1000) silently drops QoS 1 messages queued
    for an offline persistent subscriber; the stack raises the limit."""
    settings = MqttSettings.from_url(stack.mqtt_url)
    topic = f"test/burst/{os.getpid()}"
    received: set[int] = set()
    done = threading.Event()
    n = 5000

    def on_message(msg) -> None:
        received.add(int(msg.payload))
        if len(received) == n:
            done.set()

    client_id = f"burst-sub-{os.getpid()}"
    sub = MqttClient(settings, client_id, clean_start=True, session_expiry_s=600)
    sub.subscribe(topic, lambda m: None, qos=1)
    sub.connect()
    sub.close()  # offline now; its session keeps queueing

    pub = MqttClient(settings, f"burst-pub-{os.getpid()}")
    pub.connect()
    for i in range(n):
        pub.publish(topic, str(i).encode(), qos=1)
    pub.publish_wait(topic + "/end", b"x")
    pub.close()

    sub = MqttClient(settings, client_id, clean_start=False, session_expiry_s=600)
    sub.subscribe(topic, on_message, qos=1)
    sub.connect()
    done.wait(30)
    sub.close()
    assert len(received) == n


def test_restored_shared_group_takes_nothing_until_a_member_reconnects(private_stack: Stack) -> None:
    """Why the edges wait `uplink.resume_delay_s` after a reconnect and the ingesters retry
    every second: Mosquitto 2.0 restores a shared-subscription member's session and queue
    from its persistence file, but routes nothing new to the group until a member has
    reconnected, while acknowledging the publisher all the same. A plain persistent
    subscription keeps receiving. If this test fails, the broker has changed: the
    workaround (edge/store_and_forward.py) can go."""
    settings = MqttSettings.from_url(private_stack.mqtt_url)
    got: dict[str, list[bytes]] = {"shared": [], "plain": []}
    members = {"shared": ("$share/ingest/test/restart/#", "member-shared"),
               "plain": ("test/restart/#", "member-plain")}

    def session(kind: str) -> MqttClient:
        topic, client_id = members[kind]
        client = MqttClient(settings, client_id, clean_start=False, session_expiry_s=600)
        client.subscribe(topic, lambda m: got[kind].append(bytes(m.payload)), qos=1)
        client.connect()
        return client

    for kind in members:
        session(kind).close()  # offline; the sessions keep queueing

    def publish(payload: bytes) -> None:
        pub = MqttClient(MqttSettings.from_url(private_stack.mqtt_url), f"restart-pub-{os.getpid()}")
        pub.connect()
        pub.publish_wait("test/restart/a", payload)  # acknowledged by the broker
        pub.close()

    publish(b"before")
    private_stack.stop("mosquitto")  # SIGTERM: the broker saves its sessions
    private_stack.start("mosquitto")
    publish(b"after")
    clients = [session(kind) for kind in members]
    deadline = time.monotonic() + 5
    while len(got["plain"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    for client in clients:
        client.close()
    assert sorted(got["plain"]) == [b"after", b"before"]
    assert got["shared"] == [b"before"], "Mosquitto now routes to a restored shared group"


def test_the_private_broker_delivers_as_the_deployment_does(stack: Stack) -> None:
    """One set of delivery settings (deploy/mosquitto/conf.d/delivery.conf): every line of
    it is in the running broker's config, followed only by the documented differences."""
    from urbansense.paths import BROKER_DELIVERY_CONF as DELIVERY_CONF

    conf = (stack.run_dir / "mosquitto" / "mosquitto.conf").read_text()
    shared = [line for line in DELIVERY_CONF.read_text().splitlines() if line and not line.startswith("#")]
    assert {"max_queued_messages 0", "max_queued_bytes 268435456", "message_size_limit 262144"} <= set(shared)
    for line in shared:
        assert line in conf.splitlines(), line
    after = conf.split("this private broker's differences", 1)[1].split("\n", 1)[1]
    assert [line.split()[0] for line in after.splitlines() if line and not line.startswith("#")] == [
        "autosave_interval", "message_size_limit"]
    deployed = (DELIVERY_CONF.parent.parent / "mosquitto.conf").read_text()
    assert "include_dir /mosquitto/config/conf.d" in deployed
    assert not any(line.split()[0] in deployed for line in shared if line.split()[0] != "persistence")


def test_free_ports_are_never_handed_out_twice_nor_where_connections_take_theirs(stack: Stack) -> None:
    """The kernel gives the ports of outgoing connections (and of bind to 0) from its
    ephemeral range: a test's HJ 212 server once found the port it had been given taken
    by a connection in between, and CI once saw influxd given the same port for HTTP and
    RPC. Ports come from below that range, never twice in a process, and bindable."""
    from application.stack import ephemeral_ports, free_port

    low, _high = ephemeral_ports()
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(1024 < port < low for port in ports)
    with socket.socket() as server:  # free now: a server can have it
        server.bind(("127.0.0.1", free_port()))
    influxd = stack.services()["influxd"]
    assert influxd.port != influxd.extra_port


def test_a_scenarios_ports_move_below_the_ephemeral_range_and_are_not_handed_out_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo moves a scenario's device ports by one offset before it starts its stack and
    cluster: the moved ports were once in the ephemeral range (the cluster demo's simulator
    found one taken by a connection) and could be handed out to a server started next."""
    import random

    from application.stack import ephemeral_ports, free_port
    from urbansense import ports as picker
    from urbansense.ports import free_offset

    low, _high = ephemeral_ports()
    shipped = [502, 503, 504, 1502]
    offset = free_offset(shipped)
    moved = [port + offset for port in shipped]
    assert all(10_000 <= port < low for port in moved)
    # free_port proposes exactly the moved ports first: it must pass them over
    proposals = iter(moved)
    fallback = random.SystemRandom()
    monkeypatch.setattr(picker, "_PORT_PICKER", type("Picker", (), {
        "randrange": staticmethod(lambda a, b: next(proposals, None) or fallback.randrange(a, b))})())
    assert not set(moved) & {free_port() for _ in range(len(moved))}
