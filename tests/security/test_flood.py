"""Floods from one gateway: the ingester's per-gateway rate limit (ingest/ratelimit.py)
refuses what one gateway sends above its share, before decoding, to the dead letter with
the reason - so a normal gateway's readings still flow and are all stored, and nothing
of the flood is lost silently (stored + dead-lettered = sent)."""

from __future__ import annotations

import pytest

from application.stack import Stack
from ingest.ratelimit import GatewayRateLimit
from ingest.settings import IngestSettings
from tests.ingest.harness import (
    Collector,
    Publisher,
    batch_payload,
    isolated_settings,
    now_ms,
    running_ingester,
    unique,
    wait_for,
)
from urbansense import topics
from urbansense.config import ConfigError
from urbansense.influx import InfluxClient


def test_token_bucket_per_gateway() -> None:
    limit = GatewayRateLimit(rate_bytes_per_s=1000, burst_s=2)
    assert [limit.allow("d", "flood", 500, now=0.0) for _ in range(5)] == [True, True, True, True, False]
    assert limit.allow("d", "normal", 2000, now=0.0)  # another gateway has its own bucket
    assert not limit.allow("d", "flood", 600, now=0.5)  # 500 bytes refilled: not enough
    assert limit.allow("d", "flood", 1000, now=1.0)  # refilled since: a refused message took nothing
    assert not limit.allow("d", "flood", 2001, now=100.0)  # never more than the burst
    assert "rate limit" in limit.reason("d", "flood") and "d/flood" in limit.reason("d", "flood")


def test_a_burst_smaller_than_one_payload_is_refused() -> None:
    with pytest.raises(ConfigError, match="gateway_rate"):
        IngestSettings(gateway_rate_bytes_per_s=1000, gateway_rate_burst_s=1).check()
    assert IngestSettings().gateway_rate_bytes_per_s == 0  # off unless configured


@pytest.mark.integration
def test_a_flooding_gateway_does_not_starve_a_normal_one(stack: Stack, influx_db: InfluxClient) -> None:
    district = unique("flood")
    t0 = now_ms() - 120_000
    normal = [(topics.telemetry(district, "normal"), batch_payload(district, "normal", seq, t0, devices=5))
              for seq in range(20)]
    flood = [(topics.telemetry(district, "flood"), batch_payload(district, "flood", seq, t0, devices=40))
             for seq in range(300)]
    # 10 kB/s per gateway, burst 10 s = 100 kB: ~25 flood batches (~4 kB each) and all 20
    # normal ones (~0.6 kB); the flood's 1.2 MB would need 110 s at that rate.
    rate = 10_000
    messages = flood[:150] + [m for pair in zip(normal, flood[150:], strict=False) for m in pair] + flood[170:]
    dead = Collector(stack.mqtt_url, topics.DEADLETTER)
    pub = Publisher(stack.mqtt_url)
    try:
        settings = isolated_settings(gateway_rate_bytes_per_s=rate, gateway_rate_burst_s=10,
                                     max_payload_bytes=64 * 1024)
        with running_ingester(stack.mqtt_url, stack.influx_url, influx_db.database, settings=settings) as ing:
            pub.publish_all(messages)
            wait_for(lambda: ing.stats.messages == len(messages) and ing.held == 0, 60, "all handled")
        wait_for(lambda: len([d for d in dead.payloads if d["topic"].startswith(f"city/{district}/")])
                 == ing.stats.deadletters, 10, "every dead letter")
        limited = [d for d in dead.payloads if d["topic"].startswith(f"city/{district}/")]
        # the normal gateway: every reading stored, none refused
        assert all(d["topic"] == topics.telemetry(district, "flood") for d in limited)
        assert all("rate limit" in d["reason"] for d in limited)
        normal_stored = _points(influx_db, district, "normal")
        flood_stored = _points(influx_db, district, "flood")
        assert normal_stored == 20 * 5
        # the flood: limited, and nothing lost silently
        assert 0 < flood_stored < len(flood) * 40
        assert flood_stored + len(limited) * 40 == len(flood) * 40
    finally:
        pub.close()
        dead.close()


def _points(influx: InfluxClient, district: str, gateway: str) -> int:
    rows = influx.rows(f"SELECT count(pressure_mpa) FROM water WHERE district = '{district}' "
                       f"AND gateway = '{gateway}'")
    return int(rows[0]["count"]) if rows else 0
