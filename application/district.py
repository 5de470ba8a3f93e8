"""Pieces for starting a whole simulated district on real parts, shared by the demo
(`urbansense demo`) and the whole-pipeline chaos runs (tests/chaos/).

A district run: simulator ports remapped to free loopback ports, one scenario clock for
every process (URBANSENSE_CLOCK), gateway configs written per run with short link
time-outs, and edges started only once the simulators listen and the clock has started.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import yaml

from application.processes import ProcessGroup
from urbansense.ports import free_offset


def port_offset(ports: list[int]) -> int:
    """An offset at which every shipped simulator port is free on loopback, below the
    ephemeral range and reserved against this process's later picks (urbansense.ports)."""
    return free_offset(ports)


def wait_ports(ports: list[int], procs: ProcessGroup, timeout_s: float = 30.0, sim_name: str = "sim",
               what: str = "simulator") -> None:
    """Wait until every port of `what` accepts connections; fail early if a child died
    (with the log of `sim_name`)."""
    deadline = time.monotonic() + timeout_s
    pending = set(ports)
    while pending and time.monotonic() < deadline:
        if procs.check():
            raise RuntimeError(f"component exited at start: {', '.join(procs.check())}\n{procs.log_tail(sim_name)}")
        for port in list(pending):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                pending.discard(port)
            except OSError:
                pass
        time.sleep(0.2)
    if pending:
        raise RuntimeError(f"{what} ports {sorted(pending)} did not open within {timeout_s:.0f} s")


def tune_gateway_configs(paths: list[Path], poll_s: float, batch_interval_s: float = 0.5,
                         link_timeout_s: float = 0.2) -> None:
    """Rewrite per-run gateway configs for an accelerated scenario.

    A Modbus time-out of 1 s wall is `speed` seconds of city time: a short link time-out
    keeps a dead device from holding up its link's healthy neighbours long enough to look
    silent."""
    for path in paths:
        cfg = yaml.safe_load(path.read_text())
        cfg["poll_interval_s"] = poll_s
        cfg["batch"]["max_interval_s"] = batch_interval_s
        for link in cfg["links"]:
            link["timeout_s"] = min(float(link.get("timeout_s", 1.0)), link_timeout_s)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def uplink_to_cluster(paths: list[Path], nodes: list[tuple[str, int]]) -> None:
    """Point per-run gateway configs' uplink at a broker cluster's MQTT nodes (MQTT 3.1.1,
    RabbitMQ 3.10's), spreading the gateways over the nodes; the others are fallbacks."""
    for i, path in enumerate(paths):
        cfg = yaml.safe_load(path.read_text())
        order = nodes[i % len(nodes):] + nodes[:i % len(nodes)]
        cfg["uplink"].update(host=order[0][0], port=order[0][1], protocol="3.1.1",
                             fallbacks=[f"{host}:{port}" for host, port in order[1:]])
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
