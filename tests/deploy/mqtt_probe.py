"""MQTT clients that probe a broker's access control: each keeps its CONNACK, the
messages it received, the PUBACK and SUBACK codes it got and whether the broker closed
its connection, and never reconnects (a refusal is final). The Mosquitto and RabbitMQ
account tests read these the way their broker answers."""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


@dataclass
class Probe:
    paho: paho.Client
    connack: int = -1
    messages: queue.Queue[tuple[str, bytes]] = field(default_factory=queue.Queue)
    acks: dict[int, int] = field(default_factory=dict)  # message id -> PUBACK reason code
    subacks: dict[int, list[int]] = field(default_factory=dict)
    closed: bool = False


P = TypeVar("P", bound=Probe)


@contextlib.contextmanager
def probes(kind: type[P], port: int,
           protocol: paho.MQTTProtocolVersion) -> Iterator[Callable[[str | None, str | None, str], P]]:
    """open(user, password, client_id) -> a connected `kind` on 127.0.0.1:`port`; all
    closed at the end."""
    clients: list[paho.Client] = []

    def _open(user: str | None, password: str | None, client_id: str) -> P:
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        if user is not None:
            c.username_pw_set(user, password)
        connacks: queue.Queue[int] = queue.Queue()
        probe = kind(c)
        c.on_connect = lambda _c, _u, _f, rc, _p: connacks.put(rc.value)
        c.on_message = lambda _c, _u, m: probe.messages.put((m.topic, bytes(m.payload)))
        c.on_publish = lambda _c, _u, mid, rc, _p: probe.acks.__setitem__(mid, rc.value)
        c.on_subscribe = lambda _c, _u, mid, rcs, _p: probe.subacks.__setitem__(mid, [r.value for r in rcs])

        def closed(*_: object) -> None:
            probe.closed = True
            c.disconnect()  # no reconnecting

        c.on_disconnect = closed
        c.connect("127.0.0.1", port)
        c.loop_start()
        clients.append(c)
        probe.connack = connacks.get(timeout=10)
        return probe

    try:
        yield _open
    finally:
        for c in clients:
            c.disconnect()
            c.loop_stop()
