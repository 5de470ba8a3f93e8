"""The ingester against the real broker and database: every reading stored once,
acknowledged after the write, statuses, sequence gaps, dead letters, self-metrics."""

from __future__ import annotations

import base64
import urllib.request

import orjson
import pytest

from application.stack import Stack, free_port
from ingest import points
from tests.ingest.harness import (
    Collector,
    Publisher,
    batch_payload,
    expected_keys,
    isolated_settings,
    now_ms,
    running_ingester,
    stored_keys,
    telemetry_messages,
    unique,
    wait_for,
)
from urbansense import topics
from urbansense.influx import InfluxClient

pytestmark = pytest.mark.integration


def test_readings_stored_once_with_edge_times_and_acknowledged(stack: Stack, influx_db: InfluxClient) -> None:
    district, gw = unique("dist"), "gw-1"
    t0 = now_ms() - 60_000
    pub = Publisher(stack.mqtt_url)
    try:
        with running_ingester(stack.mqtt_url, stack.influx_url, influx_db.database) as ing:
            msgs = telemetry_messages(district, gw, range(1, 41), t0)
            pub.publish_all(msgs)
            pub.publish_all(msgs[:10])  # a replay (store-and-forward re-send): same points
            wait_for(lambda: ing.stats.messages == 50 and ing.held == 0, 20, "all messages acknowledged")
            assert ing.stats.seq_repeats == 10
            assert ing.stats.deadletters == 0
        assert stored_keys(influx_db, district) == expected_keys(range(1, 41), t0, 5)
        rows = influx_db.rows(f"SELECT n, flow_m3h FROM water WHERE district = '{district}' AND device = 'd3'")
        assert [type(r["n"]) for r in rows] == [int] * 40  # integers stay integers
        assert rows[0]["flow_m3h"] == 3.0
    finally:
        pub.close()


def test_seq_gaps_status_and_self_metrics(stack: Stack, influx_db: InfluxClient) -> None:
    district, gw = unique("dist"), "gw-2"
    t0 = now_ms() - 60_000
    port = free_port()
    pub = Publisher(stack.mqtt_url)
    settings = isolated_settings(metrics_interval_s=0.5, prometheus_port=port)
    try:
        with running_ingester(stack.mqtt_url, stack.influx_url, influx_db.database,
                              instance="metrics-1", settings=settings) as ing:
            msgs = telemetry_messages(district, gw, range(1, 11), t0)
            pub.publish_all(msgs[:3] + msgs[6:])  # seq 4, 5, 6 never sent
            status = orjson.dumps({"v": 1, "state": "online", "t": t0, "version": "1.0",
                                   "devices": {"d0": "ok", "d1": "fail"}, "stats": {"wal_depth": 3}})
            pub.publish_all([(topics.status(district, gw), status)])
            wait_for(lambda: ing.stats.messages >= 8 and ing.held == 0, 20, "messages handled")
            assert ing.stats.seq_gaps == 3
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            assert 'urbansense_ingest_points_total{instance="metrics-1"} 36.0' in text
            assert "urbansense_ingest_batch_latency_seconds_bucket" in text
            # the 7 batches carry an integer field (n): the C path where it is built, else the
            # full path (the Python fast path takes floats and booleans only); the status
            # message is not telemetry
            path, other = ("c", "full") if points.accelerator_in_use() else ("full", "c")
            assert f'urbansense_ingest_decoded_messages_total{{instance="metrics-1",path="{path}"}} 7.0' in text
            assert f'urbansense_ingest_decoded_messages_total{{instance="metrics-1",path="{other}"}} 0.0' in text
            in_use = float(points.accelerator_in_use())
            assert f'urbansense_ingest_accelerator{{instance="metrics-1"}} {in_use}' in text
            assert ing.stats.decoded == {path: 7}
        rows = influx_db.rows(f"SELECT * FROM gateway_status WHERE district = '{district}'")
        assert len(rows) == 1
        assert rows[0]["online"] is True and rows[0]["devices_ok"] == 1 and rows[0]["devices_fail"] == 1
        assert rows[0]["wal_depth"] == 3.0 and rows[0]["time"] == t0
        metrics = influx_db.rows("SELECT * FROM urbansense_ingest WHERE instance = 'metrics-1'")
        assert metrics, "no self-metrics point"
        last = metrics[-1]
        assert last["points_total"] == 36 and last["seq_gaps"] == 3 and last["deadletters"] == 0
        assert {"points_per_s", "batch_latency_ms", "queue_depth", "retries"} <= set(last)
    finally:
        pub.close()


def test_bad_samples_and_bad_times_dead_lettered_good_neighbours_kept(
        stack: Stack, influx_db: InfluxClient) -> None:
    district, gw = unique("dist"), "gw-3"
    now = now_ms()
    good = {"dev": "ok-1", "m": "water", "t": now - 1000, "f": {"pressure_mpa": 0.3}}
    samples = [
        good,
        {"dev": "Bad Id", "m": "water", "t": now - 1000, "f": {"pressure_mpa": 0.3}},
        {"dev": "ok-2", "m": "water", "t": now + 3_600_000, "f": {"pressure_mpa": 0.3}},  # 1 h ahead
        {"dev": "ok-3", "m": "water", "t": now - 40 * 86_400_000, "f": {"pressure_mpa": 0.3}},  # too old
        {"dev": "ok-4", "m": "water", "t": now - 2000, "f": {}, "q": "bad", "err": "timeout"},
        {"dev": "ok-5", "m": "water", "t": now - 2000, "f": {"pressure_mpa": 0.2}, "q": "uncertain"},
    ]
    payload = orjson.dumps({"v": 1, "gw": gw, "district": district, "seq": 1, "sent": now,
                            "samples": samples})
    dead = Collector(stack.mqtt_url, topics.DEADLETTER)
    pub = Publisher(stack.mqtt_url)
    settings = isolated_settings(max_age_s=30 * 86400)
    try:
        with running_ingester(stack.mqtt_url, stack.influx_url, influx_db.database, settings=settings) as ing:
            pub.publish_all([(topics.telemetry(district, gw), payload)])
            wait_for(lambda: ing.stats.messages == 1 and ing.held == 0, 20, "message handled")
            assert ing.stats.decoded == {"full": 1}  # bad samples: the full path, with the reasons
        wait_for(lambda: any(d["topic"].startswith(f"city/{district}/") for d in dead.payloads), 10,
                 "the dead letter")
        mine = [d for d in dead.payloads if d["topic"] == topics.telemetry(district, gw)]
        assert len(mine) == 1
        letter = mine[0]
        assert letter["kind"] == "samples" and letter["samples_refused"] == 3
        assert base64.b64decode(letter["payload_b64"]) == payload
        reasons = " | ".join(letter["reasons"])
        assert "samples[1].dev" in reasons and "in the future" in reasons and "retention" in reasons
        rows = influx_db.rows(f"SELECT * FROM water WHERE district = '{district}'")
        by_dev = {r["device"]: r for r in rows}
        assert set(by_dev) == {"ok-1", "ok-4", "ok-5"}
        assert by_dev["ok-4"]["device_error"] == "timeout"
        assert by_dev["ok-5"]["quality_uncertain"] is True
    finally:
        pub.close()
        dead.close()


def test_wrong_topic_and_broken_payloads_dead_lettered_whole(stack: Stack, influx_db: InfluxClient) -> None:
    district = unique("dist")
    t0 = now_ms() - 10_000
    dead = Collector(stack.mqtt_url, topics.DEADLETTER)
    pub = Publisher(stack.mqtt_url)
    bad = [
        (topics.telemetry(district, "gw-a"), b"{not json"),
        (topics.telemetry(district, "gw-a"), batch_payload(district, "gw-b", 1, t0)),  # wrong topic
        (topics.telemetry(district, "gw-a"), orjson.dumps({"v": 2, "gw": "gw-a"})),
    ]
    try:
        with running_ingester(stack.mqtt_url, stack.influx_url, influx_db.database) as ing:
            pub.publish_all(bad)
            wait_for(lambda: ing.stats.messages == 3 and ing.held == 0, 20, "messages handled")
        wait_for(lambda: sum(d["topic"].startswith(f"city/{district}/") for d in dead.payloads) == 3,
                 10, "three dead letters")
        mine = [d for d in dead.payloads if d["topic"].startswith(f"city/{district}/")]
        assert {d["kind"] for d in mine} == {"payload"}
        reasons = sorted(d["reason"] for d in mine)
        assert any("not valid UTF-8 JSON" in r for r in reasons)
        assert any("arrived on" in r for r in reasons)
        assert any("unsupported contract version" in r for r in reasons)
        assert influx_db.rows("SHOW MEASUREMENTS") == []
    finally:
        pub.close()
        dead.close()


def test_a_last_will_is_stored_after_the_gateways_newest_status(stack: Stack, influx_db: InfluxClient) -> None:
    """A will carries the time it was set (the gateway's connect, here 10 min ago): stored
    at that time, the newest point would still say online."""
    district, gw = unique("dist"), "gw-3"
    t0 = now_ms()
    pub = Publisher(stack.mqtt_url)
    try:
        with running_ingester(stack.mqtt_url, stack.influx_url, influx_db.database) as ing:
            status = [(topics.status(district, gw), orjson.dumps({"v": 1, "state": state, "t": t}))
                      for state, t in (("online", t0 - 30_000), ("offline", t0 - 600_000), ("online", t0 - 20_000))]
            pub.publish_all(status[:2])
            wait_for(lambda: ing.stats.messages >= 2 and ing.held == 0, 20, "statuses handled")
            last = f"SELECT last(online) FROM gateway_status WHERE district = '{district}'"
            wait_for(lambda: influx_db.rows(last), 10, "the statuses in InfluxDB")
            assert influx_db.rows(last)[0]["last"] is False and influx_db.rows(last)[0]["time"] >= t0
            # back, from a gateway whose clock is behind: still after the will
            pub.publish_all(status[2:])
            wait_for(lambda: ing.stats.messages >= 3 and ing.held == 0, 20, "the birth handled")
        assert influx_db.rows(last)[0]["last"] is True
    finally:
        pub.close()
