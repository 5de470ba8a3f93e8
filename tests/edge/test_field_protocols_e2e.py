"""End to end for the field protocols: simulated HJ 212 stations and JT/T 808 terminals
(simulators/field_protocols.py) push to a real edge agent's servers, which forwards
through a real Mosquitto to the real ingester and InfluxDB. Across the device links
lost (the agent stopped and started again on its log) and a broker outage, every
reading a device had acknowledged is in InfluxDB once, at the device's own time."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from application.stack import Stack, free_port
from simulators.field_protocols import Hj212Station, Jt808Terminal
from tests.edge.conftest import AgentThread, Collector, running_ingester, unique, write_gateway
from urbansense.config import load_gateway
from urbansense.influx import InfluxClient

pytestmark = pytest.mark.integration

STEP_MS = 10_000


@pytest.fixture
def pipeline(private_stack: Stack) -> Iterator[tuple[Stack, InfluxClient]]:
    influx = InfluxClient(private_stack.influx_url, "t_" + uuid.uuid4().hex[:10])
    influx.create_database()
    with running_ingester(private_stack.mqtt_url, private_stack.influx_url, influx.database):
        yield private_stack, influx
    influx.close()


def _until(condition: Callable[[], bool], timeout_s: float, what: str, tick: Callable[[], None],
           state: Callable[[], object] = lambda: "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {state()}"
        tick()
        time.sleep(0.05)


def test_stations_and_terminals_lose_nothing_across_link_loss_and_a_broker_outage(
        tmp_path: Path, pipeline: tuple[Stack, InfluxClient], monkeypatch: pytest.MonkeyPatch) -> None:
    stack, influx = pipeline
    gw = unique("gw")
    hj_port, jt_port = free_port(), free_port()
    cfg = {"gateway": gw, "district": "test", "batch": {"max_interval_s": 0.2},
           "uplink": {"reconnect_min_s": 0.2, "reconnect_max_s": 1.0, "resume_delay_s": 0.5},
           "links": [
               {"name": "env", "transport": "hj212", "port": hj_port, "devices": [
                   {"id": "aq-1", "profile": "air-quality-station", "ident": "AQ0001"},
                   {"id": "aq-2", "profile": "air-quality-station", "ident": "AQ0002"}]},
               {"name": "fleet", "transport": "jt808", "port": jt_port, "auth_key_env": "TEST_JT808_KEY",
                "devices": [
                    {"id": "vt-1", "profile": "dg-tanker-terminal", "ident": "13800000001"},   # 2019 header
                    {"id": "vt-2", "profile": "dg-tanker-terminal", "ident": "13800000002"}]}]}  # 2013 header
    path = write_gateway(tmp_path, cfg, [])
    profiles = load_gateway(path).profiles
    stations = [Hj212Station(host="127.0.0.1", port=hj_port, retry_s=0.2, mn=f"AQ000{i}", pw="123456", st="22",
                             profile=profiles["air-quality-station"]) for i in (1, 2)]
    terminals = [Jt808Terminal(host="127.0.0.1", port=jt_port, retry_s=0.2, phone=f"1380000000{i}",
                               version=1 if i % 2 else None, profile=profiles["dg-tanker-terminal"])
                 for i in (1, 2)]
    clients: list[Hj212Station | Jt808Terminal] = [*stations, *terminals]
    start = (int(time.time() * 1000) - 200 * STEP_MS) // 1000 * 1000
    k = 0

    def report(n: int) -> None:
        nonlocal k
        for _ in range(n):
            t = start + k * STEP_MS
            for i, s in enumerate(stations):
                s.report(t, {"pm25_ugm3": 30 + k % 17 + i, "pm10_ugm3": 50.5 + k % 7, "co_mgm3": 0.6})
            for i, term in enumerate(terminals):
                term.report(t, {"lat": 31.2 + k * 1e-4, "lon": 121.5 + i * 0.01, "speed_kmh": 40.0 + k % 9,
                                "heading_deg": 90, "gnss_fix": True, "emergency": k == 25 and i == 0})
            k += 1

    def settle() -> None:
        for c in clients:
            c.flush()
            c.read_answers(0.02)

    monkeypatch.setenv("TEST_JT808_KEY", "a-long-random-test-secret")
    wal = tmp_path / "edge.wal"
    try:
        with AgentThread(path, stack.mqtt_url, wal) as run:
            run.wait_ready()
            report(30)
            _until(lambda: all(c.unconfirmed == 0 for c in clients), 30, "the first readings' answers", settle)
        # the agent is gone: stations keep their packets, terminals their positions
        report(30)
        assert all(c.unconfirmed >= 30 for c in clients)
        with AgentThread(path, stack.mqtt_url, wal) as run:
            run.wait_ready()
            _until(lambda: all(c.unconfirmed == 0 for c in clients), 30, "the held readings' answers", settle,
                   lambda: [(type(c).__name__, len(c.held), len(c.pending), c.connects, c.sock) for c in clients])
            registered = sum(t.registrations for t in terminals)
            stack.stop("mosquitto")  # readings go on into the agent's log
            report(30)
            _until(lambda: all(c.unconfirmed == 0 for c in clients), 30, "answers during the outage", settle)
            stack.start("mosquitto")
            report(10)
            _until(lambda: all(c.unconfirmed == 0 for c in clients), 30, "the last answers", settle)
            expected = {("aq-1", t) for t, _ in stations[0].record} | {("aq-2", t) for t, _ in stations[1].record} \
                | {("vt-1", t) for t, _ in terminals[0].record} | {("vt-2", t) for t, _ in terminals[1].record}
            assert len(expected) == 4 * 100

            def stored() -> list[tuple[str, int]]:
                out = []
                for m, f in (("air", "pm25_ugm3"), ("vehicle", "lat")):
                    for series in influx.query(f"SELECT {f} FROM {m} WHERE gateway = '{gw}' GROUP BY device",
                                               epoch="ms"):
                        out += [(series.tags["device"], int(row[0])) for row in series.values]
                return out

            _until(lambda: set(stored()) >= expected, 60, "every reading in InfluxDB", lambda: None)
            status = run.agent.status()
    finally:
        for c in clients:
            c.close()
    got = stored()
    assert sorted(got) == sorted(expected), "exactly one point per acknowledged reading"
    # the terminals registered once and authenticated again on the new connection
    assert registered == 2 and all(t.connects >= 2 for t in terminals)
    # the values are the devices' own, at their own times
    pm = {int(r[0]): r[1] for s in influx.query(f"SELECT pm25_ugm3 FROM air WHERE device = 'aq-2' AND gateway = "
                                                  f"'{gw}'", epoch="ms") for r in s.values}
    assert pm == {t: v["a34004"] for t, v in stations[1].record}
    lat = {int(r[0]): r[1] for s in influx.query(f"SELECT lat FROM vehicle WHERE device = 'vt-1' AND gateway = "
                                                   f"'{gw}'", epoch="ms") for r in s.values}
    assert lat == {t: v["lat"] for t, v in terminals[0].record}
    assert status.devices == {"aq-1": "ok", "aq-2": "ok", "vt-1": "ok", "vt-2": "ok"}
    assert status.stats["push_messages"] > 0
    sos = [r for s in influx.query(f"SELECT emergency FROM vehicle WHERE device = 'vt-1' AND gateway = '{gw}' "
                                   "AND emergency = true", epoch="ms") for r in s.values]
    assert [int(r[0]) for r in sos] == [start + 25 * STEP_MS]  # the alarm bit, at its report's time


def _tick(station: Hj212Station) -> None:
    station.flush()
    station.read_answers(0.05)


def test_a_station_with_a_wrong_clock_is_flagged_and_set(tmp_path: Path, stack: Stack,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A station ten minutes fast: its readings are stamped on receipt and marked
    uncertain, the agent sends it the time (1012), the station answers 9011 and 9012, and
    its next readings are good at their own time. A backlog sent again is not mistaken for
    a wrong clock."""
    import edge.hj212_input
    monkeypatch.setattr(edge.hj212_input, "CLOCK_JUDGE_EVERY_MS", 0)
    gw, port = unique("gw"), free_port()
    cfg = {"gateway": gw, "district": "test", "batch": {"max_interval_s": 0.2},
           "links": [{"name": "env", "transport": "hj212", "port": port, "devices": [
               {"id": "aq-fast", "profile": "air-quality-station", "ident": "AQFAST"},
               {"id": "aq-late", "profile": "air-quality-station", "ident": "AQLATE"}]}]}
    path = write_gateway(tmp_path, cfg, [])
    profile = load_gateway(path).profiles["air-quality-station"]
    fast = Hj212Station(host="127.0.0.1", port=port, retry_s=0.2, mn="AQFAST", pw="123456", profile=profile,
                        clock_offset_ms=600_000)
    late = Hj212Station(host="127.0.0.1", port=port, retry_s=0.2, mn="AQLATE", pw="123456", profile=profile)
    collector = Collector(stack.mqtt_url, f"city/test/{gw}/telemetry")
    with AgentThread(path, stack.mqtt_url, tmp_path / "edge.wal") as run:
        run.wait_ready()
        now = int(time.time() * 1000)
        for k in range(30):  # a backlog: half an hour old, sent at once
            late.report(now - 1_800_000 + k * 60_000, {"pm25_ugm3": 20 + k})
        for k in range(5):
            fast.report(int(time.time() * 1000), {"pm25_ugm3": 40 + k})
            _until(lambda: fast.unconfirmed == 0, 10, "the fast station's answers", lambda: _tick(fast))
        _until(lambda: late.unconfirmed == 0, 10, "the backlog's answers", lambda: _tick(late))
        link = run.agent.pushed_links["env"]
        assert isinstance(link, edge.hj212_input.Hj212Link)
        _until(lambda: link.station_answers.get("9012:1", 0) == 1, 10, "the station's execution result",
               lambda: _tick(fast))
        assert fast.clock_offset_ms == 0 and fast.answers["1012"] == 1
        assert link.station_answers == {"9011:1": 1, "9012:1": 1}
        assert "AQLATE" not in link.time_set  # old data is not a wrong clock
        fast.report(int(time.time() * 1000), {"pm25_ugm3": 50})
        _until(lambda: fast.unconfirmed == 0, 10, "the answer after the time was set", lambda: _tick(fast))
        _until(lambda: len(collector.samples("aq-fast")) == 6 and len(collector.samples("aq-late")) == 30, 10,
               "the samples", lambda: collector.drain(0.1))
    fast.close()
    late.close()
    collector.close()
    samples = collector.samples("aq-fast")
    assert [s.q for s in samples] == ["uncertain"] * 3 + ["good"] * 3
    assert "ahead of the gateway clock" in (samples[0].err or "")
    assert all(s.q == "good" for s in collector.samples("aq-late"))
