"""A network partition of one RabbitMQ node, in network namespaces this test creates: a
hub namespace with a bridge (the clients: gateway, ingester, InfluxDB) and one namespace
per node, each joined to the bridge by a veth pair, on a private 10.213.x.0/24 that
exists only inside them. Cutting node 3's veth partitions it from the majority and from
the clients; the scenario (partition_run.py) runs in the hub. Every reading the gateway
had acknowledged is in InfluxDB exactly once."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def namespaces() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail("the partition test creates network namespaces: run it as root with iproute2 "
                    "(make test runs as root; apt-get install -y iproute2)")
    tag = uuid.uuid4().hex[:6]
    net = f"10.213.{random.randint(1, 254)}"
    hub = f"us-{tag}-hub"
    nodes = [(f"us-{tag}-n{i}", f"{net}.{i}") for i in (1, 2, 3)]
    made: list[str] = []
    try:
        for ns in [hub, *(n for n, _ip_ in nodes)]:
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", hub, "addr", "add", f"{net}.100/24", "dev", "br0")
        _ip("-n", hub, "link", "set", "br0", "up")
        for i, (ns, address) in enumerate(nodes, start=1):
            _ip("-n", hub, "link", "add", f"h{i}", "type", "veth", "peer", "name", "e0", "netns", ns)
            _ip("-n", hub, "link", "set", f"h{i}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "e0")
            _ip("-n", ns, "link", "set", "e0", "up")
        yield hub, nodes
    finally:
        for ns in made:  # whatever still runs in them first, then the namespaces (and their veths)
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_a_partitioned_node_loses_no_acknowledged_reading(tmp_path: Path,
                                                           namespaces: tuple[str, list[tuple[str, str]]]) -> None:
    hub, nodes = namespaces
    run = subprocess.run(["ip", "netns", "exec", hub, sys.executable, "-m", "tests.cluster.partition_run",
                          str(tmp_path), hub, *(f"{ns}:{address}" for ns, address in nodes)],
                         cwd=REPO, capture_output=True, text=True, timeout=540)
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["acked"] == list(range(1, len(result["acked"]) + 1)) and len(result["acked"]) >= 300
    # every acknowledged reading stored, once (a batch published again overwrites its points)
    assert result["points"] == result["distinct"] == result["expected"]
    assert result["cut_for_s"] >= 30
    assert result["moved_to"] in (1, 2)  # the gateway left the cut-off node for the majority
    print(f"partition: {len(result['acked'])} batches, {result['republished']} published again, longest wait "
          f"{result['longest_wait_s']:.1f} s, node 3 back {result['rejoined_s']:.1f} s after the link")
