"""`python -m urbansense.mqtt.reachable URL`: exit 0 if any node of a broker URL accepts a
TCP connection, else 1 naming each node's reason. The services' container health checks
run it (docker-compose.yml), for one broker or a cluster's node list alike."""

from __future__ import annotations

import socket
import sys

from urbansense.mqtt.settings import MqttSettings


def unreachable(url: str, timeout_s: float = 3.0) -> list[str]:
    """Why each node of `url` could not be reached; empty as soon as one answers."""
    reasons = []
    for host, port in MqttSettings.from_url(url).nodes:
        try:
            socket.create_connection((host, port), timeout_s).close()
            return []
        except OSError as exc:
            reasons.append(f"{host}:{port}: {exc.strerror or exc}")
    return reasons


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m urbansense.mqtt.reachable mqtt://host:port[,host:port...]", file=sys.stderr)
        return 2
    reasons = unreachable(argv[0])
    if reasons:
        print("no broker node answers: " + "; ".join(reasons), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
