"""`urbansense stack up|down|status|env`"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from application.cluster import RabbitCluster


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stack", help="private Mosquitto + InfluxDB on free loopback ports")
    p.add_argument("--run-dir", type=Path, help="state folder (default: urbansense --state-dir, .run/ in a checkout, "
                                                      "else ~/.local/share/urbansense)")
    ssub = p.add_subparsers(dest="stack_cmd", required=True)
    for name, helptext in (("up", "start both services (no-op for those running)"),
                           ("down", "stop every service"),
                           ("status", "show what runs where"),
                           ("env", "print shell exports for the running stack")):
        sp = ssub.add_parser(name, help=helptext)
        sp.set_defaults(func=_run)
        if name == "up":
            sp.add_argument("--with", dest="extra", action="append", choices=["alertmanager"], default=[],
                            help="also start Prometheus Alertmanager with the shipped routing (deploy/alertmanager)")
            sp.add_argument("--cluster", type=int, metavar="N", default=0,
                            help="also start an N-node RabbitMQ cluster (cluster mode: MQTT 3.1.1 on every node, "
                                 "the ingest quorum queue over AMQP); 3 tolerates the loss of one node")


def _run(args: argparse.Namespace) -> int:
    from application.cluster import RabbitCluster
    from application.stack import Stack

    stack = Stack(args.run_dir)
    size = getattr(args, "cluster", 0)
    cluster = RabbitCluster(stack.run_dir, size or 3)
    cmd = args.stack_cmd
    if cmd == "up":
        stack.up()
        for extra in args.extra:
            stack.start(extra)
        if size:
            cluster.up()
        for name, state in stack.services().items():
            print(f"{name:10} {state.url:28} pid {state.pid}")
        _print_cluster(cluster)
        print(f"state in {stack.state_file}; stop with: urbansense stack down")
        return 0
    if cmd == "down":
        stopped = stack.down()
        if any(cluster.alive(n) for n in cluster.nodes):
            cluster.down()
            stopped.append(f"rabbitmq ({len(cluster.nodes)} nodes)")
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    if cmd == "status":
        _print_cluster(cluster)
        code = 0
        for name, running in stack.status().items():
            if running is None:
                print(f"{name:10} not running")
                code = 3
            else:
                print(f"{name:10} {running.url:28} pid {running.pid}")
        return code
    env = stack.env()
    if any(cluster.alive(n) for n in cluster.nodes):
        env.update(URBANSENSE_CLUSTER_MQTT_URL=f"'{cluster.mqtt_url}'",
                   URBANSENSE_AMQP_URLS=",".join(cluster.amqp_urls))
    for key, value in env.items():
        print(f"export {key}={value}")
    return 0


def _print_cluster(cluster: RabbitCluster) -> None:
    alive = [n for n in cluster.nodes if cluster.alive(n)]
    if alive:
        print(f"{'rabbitmq':10} {len(alive)} of {len(cluster.nodes)} nodes: {cluster.mqtt_url}")
        print(f"{'':10} AMQP {', '.join(u.split('@')[-1].rstrip('/') for u in cluster.amqp_urls)}")
