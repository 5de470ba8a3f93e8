"""A RabbitMQ cluster on loopback, for cluster mode (docs/OPERATIONS.md, "Beyond one
machine"): N nodes of Debian's `rabbitmq-server` with the MQTT plugin, formed from a
fixed node list (classic config peer discovery), each on free loopback ports (AMQP, MQTT,
Erlang distribution) with its own Erlang port mapper (epmd) on a private port, so two
clusters (two test runs) never meet. The settings a city's cluster has too (the MQTT
plugin's exchange and replicated sessions, pause_minority, the Raft log capped for small
machines) come from deploy/rabbitmq/conf.d/cluster.conf, as docker-compose.yml's do.
`up()` declares the topology (ingest/amqp.py) before anything publishes:
RabbitMQ acknowledges and drops what no binding routes.

Nothing here listens beyond 127.0.0.1, the CLI tools' own Erlang node included. For the
network-partition test, each node may instead run in a network namespace the test created
(`netns`), on that namespace's private address (`ip`), with its own port mapper there:
cutting a namespace's link partitions its node from the others.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from application.stack import StackError, pid_alive, reap
from ingest import amqp
from rules.partitions import declare_partitions
from urbansense.amqp import connect_any
from urbansense.paths import RABBIT_CLUSTER_CONF
from urbansense.ports import free_port

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def dist_on(ip: str) -> str:
    """Erlang distribution listening on one address only."""
    return "-kernel inet_dist_use_interface {" + ip.replace(".", ",") + "}"


NODE_CONF = """\
# Written by urbansense (application/cluster.py): node {index} of a private cluster.
listeners.tcp.default = {ip}:{amqp_port}
mqtt.listeners.tcp.default = {ip}:{mqtt_port}
mqtt.allow_anonymous = {anonymous}
loopback_users = none
cluster_formation.peer_discovery_backend = classic_config
{peers}
log.console = false
log.file.level = warning
{management}
"""


def rabbit_tool(name: str) -> str:
    path = RABBIT_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise StackError(f"{name} is not installed; install it with: sudo apt-get install -y rabbitmq-server "
                         "(make test does this for you when run as root)")
    return found


@dataclass
class RabbitNode:
    index: int
    amqp_port: int
    mqtt_port: int
    dist_port: int
    pid: int = 0
    #: the management plugin's HTTP API (0: not enabled)
    http_port: int = 0
    #: where it listens, and the network namespace it runs in ("": this process's)
    ip: str = "127.0.0.1"
    netns: str = ""
    epmd_pid: int = 0  # its own port mapper, in its namespace

    @property
    def name(self) -> str:
        # in a namespace of its own, other nodes reach it by its address (long names)
        return f"rmq{self.index}@{self.ip}" if self.netns else f"rmq{self.index}@localhost"

    def inside(self) -> list[str]:
        """The command prefix that runs a program in the node's namespace."""
        return ["ip", "netns", "exec", self.netns] if self.netns else []


class RabbitCluster:
    def __init__(self, run_dir: Path, size: int = 3, *, netns: list[tuple[str, str]] | None = None,
                 management: bool = False, anonymous_mqtt: bool = True) -> None:
        """`netns`: (namespace, address) per node, for nodes in namespaces of their own.
        `management`: each node also serves the management plugin's HTTP API (users and
        permissions are provisioned through it: application/rabbit_accounts.py).
        `anonymous_mqtt`: MQTT clients without credentials are let in (as the AMQP default
        user), as on the private clusters of tests and demos; a city's cluster refuses
        them and gives each account its permissions (docs/OPERATIONS.md)."""
        if size < 1:
            raise StackError(f"a cluster has at least one node (got {size})")
        if netns is not None and len(netns) != size:
            raise StackError(f"give a (namespace, address) for each of the {size} nodes (got {len(netns)})")
        self.netns = netns
        self.management = management
        self.anonymous_mqtt = anonymous_mqtt
        self.dir = (run_dir / "rabbitmq").resolve()
        self.size = size
        self.state_file = self.dir / "cluster.json"
        self.nodes: list[RabbitNode] = []
        self.epmd_port = 0
        self.epmd_pid = 0
        self._load()

    # ------------------------------------------------------------------ state
    def _load(self) -> None:
        if not self.state_file.exists():
            return
        state = json.loads(self.state_file.read_text())
        self.epmd_port = int(state["epmd_port"])
        self.epmd_pid = int(state.get("epmd_pid", 0))
        self.nodes = [RabbitNode(**n) for n in state["nodes"]]
        self.size = len(self.nodes)

    def _save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"epmd_port": self.epmd_port, "epmd_pid": self.epmd_pid,
                                   "nodes": [asdict(n) for n in self.nodes]}, indent=2))
        tmp.replace(self.state_file)

    def _plan(self) -> None:
        """Ports and the shared Erlang cookie, once per cluster folder."""
        if self.nodes:
            return
        taken: list[int] = []

        def port() -> int:
            p = free_port(besides=tuple(taken))
            taken.append(p)
            return p

        self.epmd_port = port()
        self.nodes = [RabbitNode(i, port(), port(), port(), http_port=port() if self.management else 0)
                      for i in range(1, self.size + 1)]
        for node, (ns, ip) in zip(self.nodes, self.netns or [], strict=False):
            node.netns, node.ip = ns, ip
        self.dir.mkdir(parents=True, exist_ok=True)
        cookie = self.dir / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)
        plugins = ["rabbitmq_mqtt", *(["rabbitmq_management"] if self.management else [])]
        (self.dir / "enabled_plugins").write_text(f"[{','.join(plugins)}].\n")
        self._save()

    # ------------------------------------------------------------------ environment
    def _env(self, node: RabbitNode | None = None) -> dict[str, str]:
        """The Erlang environment every node and CLI call shares: the cookie (in HOME),
        the private port mapper, distribution on loopback only (on `node`'s address, and
        long names, for a node in a namespace and the CLI calls to it)."""
        env = {**os.environ, "HOME": str(self.dir), "ERL_EPMD_PORT": str(self.epmd_port),
               "ERL_EPMD_ADDRESS": "127.0.0.1",
               "RABBITMQ_CTL_ERL_ARGS": dist_on(node.ip if node is not None else "127.0.0.1")}
        if node is not None and node.netns:
            env["RABBITMQ_USE_LONGNAME"] = "true"
        return env

    def _server_env(self, node: RabbitNode) -> dict[str, str]:
        """`_env` and what the node's server reads: its name, ports, folders and config."""
        env = self._env(node)
        nd = self.dir / f"node{node.index}"
        env.update({
            "RABBITMQ_NODENAME": node.name, "RABBITMQ_NODE_IP_ADDRESS": node.ip,
            "RABBITMQ_NODE_PORT": str(node.amqp_port), "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_MNESIA_BASE": str(nd / "mnesia"), "RABBITMQ_LOG_BASE": str(nd / "log"),
            "RABBITMQ_PID_FILE": str(nd / "pid"), "RABBITMQ_CONFIG_FILE": str(nd / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(nd / "plugins"),
            # in namespaces (the partition test): a lost peer noticed in about 10 s, not 60
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": dist_on(node.ip) + (" -kernel net_ticktime 10"
                                                                       if node.netns else ""),
        })
        return env

    def ctl(self, *args: str, node: RabbitNode | None = None, timeout_s: float = 60.0) -> str:
        """`rabbitmqctl` against a node (default: the first one alive)."""
        target = node or next((n for n in self.nodes if self.alive(n)), self.nodes[0])
        command = [*target.inside(), rabbit_tool("rabbitmqctl"), *(["-l"] if target.netns else []), "-n",
                   target.name, "-q", *args]
        out = subprocess.run(command, env=self._env(target), capture_output=True, text=True, timeout=timeout_s,
                             check=False)
        if out.returncode != 0:
            raise StackError(f"rabbitmqctl {' '.join(args)} on {target.name}: {(out.stderr or out.stdout).strip()}")
        return out.stdout

    # ------------------------------------------------------------------ lifecycle
    def alive(self, node: RabbitNode) -> bool:
        return node.pid > 0 and pid_alive(node.pid)

    def up(self, timeout_s: float = 180.0) -> None:
        """Start every node that is not running, wait for the cluster to have them all,
        declare the topology."""
        self._plan()
        for node in self.nodes:
            if node.netns and not (node.epmd_pid and pid_alive(node.epmd_pid)):
                node.epmd_pid = self._epmd(node.inside(), f"127.0.0.1,{node.ip}")
                self._wait_port(self.epmd_port, node.ip)
        if not any(n.netns for n in self.nodes) and not (self.epmd_pid and pid_alive(self.epmd_pid)):
            # our own port mapper, in the foreground: the nodes would otherwise start one as
            # a daemon that outlives them
            self.epmd_pid = self._epmd([], "127.0.0.1")
            self._wait_port(self.epmd_port)
        for node in self.nodes:
            if not self.alive(node):
                self._start(node)
        self._save()
        self.wait_running(len(self.nodes), timeout_s)
        asyncio.run(amqp.declare_topology(self.amqp_urls))

    def _epmd(self, prefix: list[str], addresses: str) -> int:
        return subprocess.Popen([*prefix, "epmd", "-port", str(self.epmd_port), "-address", addresses],
                                env=self._env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True).pid

    def _start(self, node: RabbitNode) -> None:
        nd = self.dir / f"node{node.index}"
        nd.mkdir(parents=True, exist_ok=True)
        peers = "\n".join(f"cluster_formation.classic_config.nodes.{n.index} = {n.name}" for n in self.nodes)
        (nd / "rabbitmq.conf").write_text(NODE_CONF.format(index=node.index, amqp_port=node.amqp_port, ip=node.ip,
                                                            mqtt_port=node.mqtt_port, peers=peers,
                                                            anonymous=str(self.anonymous_mqtt).lower(),
                                                            management=_management_conf(node))
                                            + RABBIT_CLUSTER_CONF.read_text(encoding="utf-8"))
        with open(nd / "stdout.log", "ab") as out:
            proc = subprocess.Popen([*node.inside(), rabbit_tool("rabbitmq-server")], env=self._server_env(node),
                                    stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                    cwd=nd)
        node.pid = proc.pid

    def start_node(self, index: int, timeout_s: float = 120.0, *, wait: bool = True) -> None:
        """Start one node again (after kill_node); with `wait`, until the cluster has it back."""
        node = self.nodes[index - 1]
        if not self.alive(node):
            self._start(node)
            self._save()
        if wait:
            self.wait_running(sum(1 for n in self.nodes if self.alive(n)), timeout_s)

    def kill_node(self, index: int) -> None:
        """SIGKILL one node: what a crash does."""
        node = self.nodes[index - 1]
        if self.alive(node):
            os.killpg(node.pid, signal.SIGKILL)
            reap(node.pid)
        node.pid = 0
        self._save()

    def down(self) -> None:
        """Stop every node (its data stays in the folder) and the cluster's port mapper."""
        for node in self.nodes:
            if self.alive(node):
                os.killpg(node.pid, signal.SIGTERM)
        for node in self.nodes:
            if node.pid:
                reap(node.pid, timeout_s=30.0)
                if pid_alive(node.pid):
                    os.killpg(node.pid, signal.SIGKILL)
                    reap(node.pid)
            node.pid = 0
        for pid in [self.epmd_pid, *(n.epmd_pid for n in self.nodes)]:
            if pid and pid_alive(pid):
                os.kill(pid, signal.SIGTERM)
                reap(pid)
        self.epmd_pid = 0
        for node in self.nodes:
            node.epmd_pid = 0
        if self.nodes:
            self._save()

    def wait_running(self, count: int, timeout_s: float) -> None:
        """Until `count` nodes are running members of the cluster (each node's AMQP port
        open and the cluster's own status says so)."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            dead = [n.name for n in self.nodes if n.pid and not self.alive(n)]
            if dead:
                raise StackError(f"RabbitMQ node(s) {', '.join(dead)} exited at start; see "
                                 f"{self.dir}/node*/log/ and stdout.log")
            try:
                if all(_port_open(n.amqp_port, n.ip) for n in self.nodes if self.alive(n)):
                    status = json.loads(self.ctl("cluster_status", "--formatter", "json", timeout_s=30))
                    running = status.get("running_nodes", [])
                    if len(running) >= count:
                        return
                    last = f"running: {', '.join(running)}"
            except (StackError, ValueError, subprocess.TimeoutExpired) as exc:
                last = str(exc)
            time.sleep(1.0)
        raise StackError(f"the RabbitMQ cluster in {self.dir} did not have {count} running node(s) within "
                         f"{timeout_s:.0f} s ({last})")

    @staticmethod
    def _wait_port(port: int, host: str = "127.0.0.1", timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not _port_open(port, host):
            if time.monotonic() > deadline:
                raise StackError(f"the Erlang port mapper did not open {host}:{port} within {timeout_s:.0f} s")
            time.sleep(0.05)

    def declare_partitions(self, districts: list[str]) -> None:
        """The rules' district queues (rules/partitions.py), before the gateways publish:
        the rules instances declare them too, but what comes before is not routed to them."""
        asyncio.run(declare_district_queues(self.amqp_urls, districts))

    # ------------------------------------------------------------------ views
    def queue_leader(self, queue: str) -> int:
        """The index of the node that leads a quorum queue."""
        rows = json.loads(self.ctl("list_queues", "name", "leader", "--formatter", "json"))
        for row in rows:
            if row.get("name") == queue:
                return next(n.index for n in self.nodes if n.name == row["leader"])
        raise StackError(f"no queue {queue} in the cluster")

    @property
    def mqtt_url(self) -> str:
        """Every node, MQTT 3.1.1 (the plugin of RabbitMQ 3.10 has no MQTT 5)."""
        return "mqtt://" + ",".join(f"{n.ip}:{n.mqtt_port}" for n in self.nodes) + "?protocol=3.1.1"

    @property
    def amqp_urls(self) -> list[str]:
        return [f"amqp://guest:guest@{n.ip}:{n.amqp_port}/" for n in self.nodes]

    @property
    def management_urls(self) -> list[str]:
        """Each node's management API (with `management=True`)."""
        return [f"http://{n.ip}:{n.http_port}" for n in self.nodes if n.http_port]


def _management_conf(node: RabbitNode) -> str:
    if not node.http_port:
        return ""
    return f"management.tcp.ip = {node.ip}\nmanagement.tcp.port = {node.http_port}\n"


async def declare_district_queues(urls: Sequence[str], districts: Sequence[str]) -> None:
    """The rules' district queues, on the first node of `urls` that answers."""
    conn = await connect_any(urls, 30.0)
    try:
        await declare_partitions(await conn.channel(), districts)
    finally:
        await conn.close()


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False
