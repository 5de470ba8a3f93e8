"""Acceptance: a 60 s broker outage while agents poll 50 simulated devices each, checked
end to end through the real ingester into InfluxDB against the simulator's own record
of every value it served.

One outage serves both acceptance cases at once, on two gateways with their own
simulators and logs: gateway "steady" just rides the outage out; gateway "killed" is
killed with SIGKILL in the middle of it and restarted on the same log."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from application.stack import Stack
from tests.edge.conftest import (
    ModbusSim,
    agent_process,
    logged_counters,
    running_ingester,
    tcp_links,
    unique,
    write_gateway,
)
from urbansense.influx import InfluxClient

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTAGE_S = 60.0
Served = set[tuple[str, int]]


class Gateway:
    """A simulator (5 endpoints x 10 units) and the agent process that polls it."""

    def __init__(self, tmp: Path, name: str, mqtt_url: str) -> None:
        self.tmp = tmp / name
        self.mqtt_url = mqtt_url
        self.sim = ModbusSim(tmp / "profiles" / "test-meter.yaml", endpoints=5, units=10)
        self.gw = unique(name)
        cfg = {"gateway": self.gw, "district": "outage", "poll_interval_s": 1.0,
               "uplink": {"reconnect_min_s": 0.5, "reconnect_max_s": 2.0},
               "batch": {"max_samples": 500, "max_interval_s": 0.5},
               "links": tcp_links(self.sim, prefix=name, timeout_s=1.0)}
        self.config = write_gateway(self.tmp, cfg)
        self.wal = self.tmp / "edge.wal"
        self.dev_ids = {key: f"{name}-{self.sim.ports.index(key[0])}-{key[1]}" for key in self.sim.devices}
        self.agent: subprocess.Popen[bytes] | None = None

    def start_agent(self) -> None:
        self.agent = agent_process(self.config, self.mqtt_url, self.wal, self.tmp / "agent.log")

    def alive(self) -> bool:
        return self.agent is not None and self.agent.poll() is None

    def served(self, until: float, since: float = 0.0) -> Served:
        return {(self.dev_ids[key], n) for key, dev in self.sim.devices.items()
                for n, at in list(dev.served) if since <= at <= until}

    def stored(self, influx: InfluxClient) -> list[tuple[str, int]]:
        out = []
        for series in influx.query(f"SELECT poll_counter FROM water WHERE gateway = '{self.gw}' GROUP BY device"):
            out += [(series.tags["device"], int(row[1])) for row in series.values if row[1] is not None]
        return out

    def log_tail(self) -> str:
        return (self.tmp / "agent.log").read_text()[-3000:]

    def stop(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            try:
                self.agent.wait(20)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait(5)


@pytest.fixture
def outage(tmp_path: Path, private_stack: Stack, meter_profile_dir: Path) -> Iterator[tuple[Stack, InfluxClient,
                                                                                             Gateway, Gateway]]:
    mqtt_url = private_stack.mqtt_url  # stays valid while the broker is stopped
    influx = InfluxClient(private_stack.influx_url, "t_" + uuid.uuid4().hex[:10])
    influx.create_database()
    steady, killed = Gateway(tmp_path, "steady", mqtt_url), Gateway(tmp_path, "killed", mqtt_url)
    with steady.sim, killed.sim, running_ingester(mqtt_url, private_stack.influx_url, influx.database):
        try:
            yield private_stack, influx, steady, killed
        finally:
            steady.stop()
            killed.stop()
    influx.close()


def _wait_stored(influx: InfluxClient, expect: dict[str, tuple[Gateway, Served]],
                 timeout_s: float = 90.0) -> dict[str, list[tuple[str, int]]]:
    deadline = time.monotonic() + timeout_s
    while True:
        got = {name: gw.stored(influx) for name, (gw, _) in expect.items()}
        if all(want <= set(got[name]) for name, (_, want) in expect.items()) or time.monotonic() > deadline:
            return got
        time.sleep(2.0)


def _assert_exactly_once(gw: Gateway, got: list[tuple[str, int]], expected: Served) -> None:
    missing = expected - set(got)
    assert not missing, (f"{gw.gw}: {len(missing)} served sample(s) never reached InfluxDB, e.g. "
                         f"{sorted(missing)[:5]}\n{gw.log_tail()}")
    dupes = len(got) - len(set(got))
    assert dupes == 0, f"{gw.gw}: {dupes} sample(s) landed twice"


def test_60s_broker_outage_loses_nothing_even_with_the_agent_killed(
        outage: tuple[Stack, InfluxClient, Gateway, Gateway]) -> None:
    stack, influx, steady, killed = outage
    steady.start_agent()
    killed.start_agent()
    time.sleep(6)
    t_out = time.time()
    stack.stop("mosquitto")

    time.sleep(20)
    assert killed.agent is not None
    os.kill(killed.agent.pid, signal.SIGKILL)
    killed.agent.wait(10)
    t_kill = time.time()
    logged = logged_counters(killed.wal)
    assert len(logged) >= 50 * 18, len(logged)
    time.sleep(3)
    killed.start_agent()
    t_restart = time.time()

    time.sleep(max(0.0, OUTAGE_S - (time.time() - t_out)))
    stack.start("mosquitto")
    t_back = time.time()
    time.sleep(8)
    now = time.time()
    during = steady.served(until=t_back, since=t_out)
    assert len(during) >= 50 * (OUTAGE_S - 5), len(during)  # the agent really polled through the outage
    expect = {
        # every value the simulator served, up to a moment ago
        "steady": (steady, steady.served(until=now - 3)),
        # what reached the log before the kill, everything served well before it (the
        # group commit is 0.1 s), and everything served once the new agent was up
        "killed": (killed, logged | killed.served(until=t_kill - 1.0)
                   | killed.served(since=t_restart + 3, until=now - 3)),
    }
    got = _wait_stored(influx, expect)
    for name, (gw, want) in expect.items():
        _assert_exactly_once(gw, got[name], want)
    assert steady.alive() and killed.alive(), "an agent died"
