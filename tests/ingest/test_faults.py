"""Fault tests with exact counts: InfluxDB down for 30 s, the ingester SIGKILLed and
restarted, two ingesters sharing the stream with one SIGKILLed. Every reading arrives,
once (the stored set of (device, time, value) equals what was published)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from application.processes import ProcessGroup
from application.stack import Stack
from tests.ingest.harness import (
    PacedPublisher,
    Publisher,
    expected_keys,
    isolated_settings,
    now_ms,
    running_ingester,
    stored_keys,
    telemetry_messages,
    unique,
    wait_for,
)
from urbansense.influx import InfluxClient

pytestmark = pytest.mark.integration

DEVICES = 10


def _count(influx: InfluxClient, district: str) -> int:
    rows = influx.rows(f"SELECT count(pressure_mpa) FROM water WHERE district = '{district}'")
    return int(rows[0]["count"]) if rows else 0


def _wait_subscribed(stack: Stack, influx: InfluxClient, instances: list[str]) -> None:
    """Publish probe batches until every instance reports handling one (its self-metrics):
    a shared subscription with no member yet drops what is published to it."""
    probe = Publisher(stack.mqtt_url)
    try:
        deadline = time.monotonic() + 30
        seq = 0
        while time.monotonic() < deadline:
            probe.publish_all(telemetry_messages("probe", "gw-probe", range(seq, seq + 4), now_ms() - 60_000))
            seq += 4
            series = influx.query("SELECT last(messages_total) FROM urbansense_ingest GROUP BY instance")
            handled = {s.tags.get("instance"): s.values[0][1] for s in series}
            if all(handled.get(name, 0) > 0 for name in instances):
                return
            time.sleep(0.3)
        raise AssertionError(f"ingesters {instances} did not subscribe within 30 s")
    finally:
        probe.close()


@pytest.mark.slow
def test_influxdb_down_for_30_s_holds_bounded_and_loses_nothing(private_stack: Stack) -> None:
    database = unique("db").replace("-", "_")
    district, gw = unique("dist"), "gw-1"
    t0 = now_ms() - 120_000
    influx = InfluxClient(private_stack.influx_url, database)
    settings = isolated_settings(receive_maximum=40, retry_max_s=2.0)
    with running_ingester(private_stack.mqtt_url, private_stack.influx_url, database,
                          settings=settings) as ing:
        first = PacedPublisher(private_stack.mqtt_url,
                               telemetry_messages(district, gw, range(0, 100), t0, DEVICES), 200)
        first.start()
        first.finish()
        wait_for(lambda: _count(influx, district) == 100 * DEVICES, 30, "the first 100 batches stored")
        private_stack.stop("influxd")
        during = PacedPublisher(private_stack.mqtt_url,
                                telemetry_messages(district, gw, range(100, 400), t0, DEVICES), 100)
        during.start()
        most_held = 0
        outage_end = time.monotonic() + 30
        while time.monotonic() < outage_end:
            most_held = max(most_held, ing.held)
            time.sleep(0.1)
        during.finish()
        received_while_down = ing.mqtt.stats.received
        private_stack.start("influxd")
        wait_for(lambda: _count(influx, district) == 400 * DEVICES, 60, "every batch stored after the outage")
        wait_for(lambda: ing.held == 0, 20, "everything acknowledged")
        assert ing.stats.retries > 0
    # the broker kept what this instance could not take: it never held more than Receive Maximum
    assert 0 < most_held <= 40, most_held
    # the broker sent nothing beyond the Receive Maximum while nothing was acknowledged
    assert received_while_down <= 100 + 40, received_while_down
    assert stored_keys(influx, district) == expected_keys(range(0, 400), t0, DEVICES)


def _ingest_args(stack: Stack, database: str, instance: str, group: str) -> list[str]:
    return ["ingest", "run", "--mqtt", stack.mqtt_url, "--influx", stack.influx_url,
            "--database", database, "--instance", instance, "--share-group", group,
            "--batch-delay", "0.2", "--metrics-interval", "0.5"]


def test_sigkill_mid_stream_and_restart_loses_nothing(stack: Stack, tmp_path: Path) -> None:
    database = unique("db").replace("-", "_")
    district, gw = unique("dist"), "gw-1"
    t0 = now_ms() - 120_000
    influx = InfluxClient(stack.influx_url, database)
    influx.create_database()
    procs = ProcessGroup(tmp_path / "logs")
    args = _ingest_args(stack, database, unique("kill"), unique("g"))
    try:
        procs.start("ingest", *args)
        _wait_subscribed(stack, influx, [args[args.index("--instance") + 1]])
        publisher = PacedPublisher(stack.mqtt_url, telemetry_messages(district, gw, range(600), t0, DEVICES), 150)
        publisher.start()
        wait_for(lambda: _count(influx, district) >= 100 * DEVICES, 30, "the stream flowing")
        procs.stop("ingest", sig=signal.SIGKILL)
        killed_at = publisher.sent
        assert killed_at < 600, "the kill did not land mid-stream"
        time.sleep(1.0)
        procs.start("ingest", *args)  # same instance name: same client id and session
        publisher.finish()
        wait_for(lambda: _count(influx, district) == 600 * DEVICES, 60,
                 f"every reading after the restart ({procs.log_tail('ingest')})")
        assert stored_keys(influx, district) == expected_keys(range(600), t0, DEVICES)
    finally:
        procs.stop_all()
        influx.query(f'DROP DATABASE "{database}"', database="")


def test_two_ingesters_one_killed_and_restarted_loses_nothing(stack: Stack, tmp_path: Path) -> None:
    database = unique("db").replace("-", "_")
    district, gw = unique("dist"), "gw-1"
    t0 = now_ms() - 120_000
    influx = InfluxClient(stack.influx_url, database)
    influx.create_database()
    procs = ProcessGroup(tmp_path / "logs")
    group = unique("g")
    a, b = unique("a"), unique("b")
    try:
        procs.start("a", *_ingest_args(stack, database, a, group))
        procs.start("b", *_ingest_args(stack, database, b, group))
        _wait_subscribed(stack, influx, [a, b])
        publisher = PacedPublisher(stack.mqtt_url, telemetry_messages(district, gw, range(600), t0, DEVICES), 150)
        publisher.start()
        wait_for(lambda: _count(influx, district) >= 100 * DEVICES, 30, "the stream flowing")
        procs.stop("a", sig=signal.SIGKILL)
        assert publisher.sent < 600, "the kill did not land mid-stream"
        time.sleep(2.0)  # b alone; a's share waits in its session
        procs.start("a", *_ingest_args(stack, database, a, group))
        publisher.finish()
        try:
            wait_for(lambda: _count(influx, district) == 600 * DEVICES, 60, "every reading")
        except AssertionError:
            missing = expected_keys(range(600), t0, DEVICES) - stored_keys(influx, district)
            seqs = sorted({int(v) for _, _, v in missing})
            raise AssertionError(f"missing seqs {seqs}\n{procs.log_tail('a', 40)}\n{procs.log_tail('b', 40)}") from None
        procs.stop("a")
        procs.stop("b")
        assert stored_keys(influx, district) == expected_keys(range(600), t0, DEVICES)
        shares = {series.tags["instance"]: series.values[0][1] for series in influx.query(
            "SELECT last(points_total) FROM urbansense_ingest GROUP BY instance")}
        assert shares.get(b, 0) > 0 and shares.get(a, 0) > 0, shares  # both carried part of it
    finally:
        procs.stop_all()
        influx.query(f'DROP DATABASE "{database}"', database="")
