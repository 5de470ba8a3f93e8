"""The MQTT adapter reconnects on the schedule it is given (reconnect_min_s doubling up to
reconnect_max_s), and only one reconnector runs.

Why it matters: the edges hold a backlog after a broker restart for `uplink.resume_delay_s`
(2 s) so that an ingester (reconnect_max_s=1) is back in the shared group first; Mosquitto
drops what reaches a restored group with no member connected. With two reconnectors (ours
beside paho's own), a client came back up to 5 s after the broker, the ingester lost the
race and a chaos run lost 452 acknowledged readings."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from application.stack import Stack
from tests.waiting import wait_for
from urbansense.mqtt import MqttClient, MqttSettings


class HangUpListener:
    """A TCP port that accepts every connection and closes it without a CONNACK: what a
    client meets while a broker is shutting down or starting."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.attempts: list[float] = []
        self._closed = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.attempts.append(time.monotonic())
            conn.close()

    def close(self) -> None:
        self._closed = True
        self.sock.close()


@pytest.fixture
def hang_up() -> Iterator[HangUpListener]:
    listener = HangUpListener()
    yield listener
    listener.close()


def test_attempts_answered_by_a_hang_up_are_retried_at_reconnect_max_s(hang_up: HangUpListener) -> None:
    client = MqttClient(MqttSettings.from_url(f"mqtt://127.0.0.1:{hang_up.port}"), "reconnect-hangup",
                        reconnect_min_s=0.1, reconnect_max_s=0.3)
    client.connect(wait=False)
    try:
        # 8 attempts take about 2 s at 0.3 s apart; a client that waits 5 s for a CONNACK
        # that will not come, or backs off by paho's default 1-2-4 s, makes 2 or 3
        wait_for(lambda: len(hang_up.attempts) >= 8, 6.0, "8 connection attempts")
    finally:
        client.close()
    gaps = [b - a for a, b in zip(hang_up.attempts, hang_up.attempts[1:], strict=False)]
    assert max(gaps[2:]) < 1.0, f"attempts {gaps} s apart with reconnect_max_s=0.3"


def test_refused_attempts_are_counted_and_named() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nobody listens there now
    client = MqttClient(MqttSettings.from_url(f"mqtt://127.0.0.1:{port}"), "reconnect-refused",
                        reconnect_min_s=0.1, reconnect_max_s=0.2)
    client.connect(wait=False)
    try:
        # the first attempt counts too (an edge agent that found no broker at first waits
        # its resume_delay_s before publishing; it read this count)
        assert client.stats.connect_failures >= 1
        wait_for(lambda: client.stats.connect_failures >= 3, 5.0, "3 refused attempts")
        assert "refused" in client.stats.last_error.lower(), client.stats.last_error
    finally:
        client.close()


def test_back_soon_after_a_broker_restart(tmp_path: Path) -> None:
    """The broker stopped (SIGTERM) and started again: the client is connected again
    within about reconnect_max_s of the broker listening, not after its own 5 s wait."""
    stack = Stack(tmp_path / "stack")
    stack.start("mosquitto")
    try:
        client = MqttClient(MqttSettings.from_url(stack.mqtt_url), "reconnect-restart",
                            reconnect_min_s=0.25, reconnect_max_s=1.0)
        client.connect()
        stack.stop("mosquitto")
        failures = client.stats.connect_failures
        wait_for(lambda: not client.connected and client.stats.connect_failures >= failures + 3, 10.0,
                 "three attempts while the broker is down")
        stack.start("mosquitto")  # returns once the broker listens
        back = time.monotonic()
        assert client.wait_connected(10.0)
        took = time.monotonic() - back
        client.close()
        assert took < 3.0, f"reconnected {took:.1f} s after the broker was back (reconnect_max_s=1)"
    finally:
        stack.down()
