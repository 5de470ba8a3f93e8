"""Loopback ports for the servers a process starts (the stack's services, simulated
devices, test servers): free now, never handed out twice by this process, and below the
kernel's ephemeral range. The kernel gives ports of that range to every outgoing
connection (and to bind to 0), so one picked there can be taken by a connection before
the server binds it: a test's HJ 212 server once found its port taken that way, and bind
to 0 once gave influxd the same port for HTTP and RPC."""

from __future__ import annotations

import random
import socket
from pathlib import Path

#: Ports this process has handed out (`free_port` never gives one twice).
_HANDED_OUT: set[int] = set()
_PORT_PICKER = random.SystemRandom()  # not the seedable module generator: two processes seeded alike
#: Where `free_port` looks, below the kernel's ephemeral range.
_LISTEN_PORTS_FROM = 10_000


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections (and for bind to 0)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[:2]
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", *, besides: tuple[int, ...] = ()) -> int:
    """A port free on `host` now, for a server this process is about to start: never one
    it handed out before, nor one of `besides`, below the kernel's ephemeral range."""
    low, _high = ephemeral_ports()
    if low - _LISTEN_PORTS_FROM >= 1000:
        for _ in range(500):
            port = _PORT_PICKER.randrange(_LISTEN_PORTS_FROM, low)
            if port not in _HANDED_OUT and port not in besides and _bindable(host, port):
                _HANDED_OUT.add(port)
                return port
    while True:  # an unusual ephemeral range (or nothing free below it): the kernel's pick
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT and port not in besides:
            _HANDED_OUT.add(port)
            return port


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct free ports (see free_port)."""
    return [free_port(host) for _ in range(n)]


def free_offset(ports: list[int], host: str = "127.0.0.1") -> int:
    """An offset that moves every one of `ports` (a scenario's simulated devices) to a port
    free on `host`, below the kernel's ephemeral range (an outgoing connection could take
    one there before its server binds it), and reserves them: `free_port` hands none of
    them out afterwards (the stack's and the cluster's servers, started before the
    simulator binds its ports)."""
    low, _high = ephemeral_ports()
    first, span = min(ports), max(ports) - min(ports)
    top = max(_LISTEN_PORTS_FROM + 1, low - span)
    for _ in range(500):
        offset = _PORT_PICKER.randrange(_LISTEN_PORTS_FROM, top) - first
        moved = [port + offset for port in ports]
        if not any(port in _HANDED_OUT for port in moved) and all(_bindable(host, port) for port in moved):
            _HANDED_OUT.update(moved)
            return offset
    raise RuntimeError(f"no free loopback ports for {len(ports)} simulated devices below {low}")
