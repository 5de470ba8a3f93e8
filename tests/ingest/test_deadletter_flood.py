"""A flood of malformed payloads mixed into good traffic: every good reading arrives,
every bad payload is in the dead letter (exactly once, with a reason)."""

from __future__ import annotations

import base64
import random

import orjson
import pytest

from application.stack import Stack
from tests.ingest.harness import (
    Collector,
    Publisher,
    batch_payload,
    expected_keys,
    isolated_settings,
    now_ms,
    running_ingester,
    stored_keys,
    unique,
    wait_for,
)
from urbansense import topics
from urbansense.influx import InfluxClient

pytestmark = pytest.mark.integration

GOOD, BAD = 200, 200
DEVICES = 5


def _bad_payloads(district: str, gw: str, now: int, n: int) -> list[tuple[bytes, str]]:
    """(payload, what the reason must mention), cycling through the kinds of damage."""
    def envelope(**change: object) -> bytes:
        body: dict[str, object] = {"v": 1, "gw": gw, "district": district, "seq": 1, "sent": now,
                                   "samples": [{"dev": "x-1", "m": "water", "t": now - 1000,
                                                "f": {"pressure_mpa": 0.3}}]}
        body.update(change)
        return orjson.dumps(body)

    def sample(**change: object) -> bytes:
        s: dict[str, object] = {"dev": "x-1", "m": "water", "t": now - 1000, "f": {"pressure_mpa": 0.3}}
        s.update(change)
        return envelope(samples=[s])

    kinds: list[tuple[bytes, str]] = [
        (b"\xff\xfe not utf-8", "not valid UTF-8 JSON"),
        (b'{"v": 1, "gw": ', "not valid UTF-8 JSON"),
        (b"[1, 2, 3]", "must be a JSON object"),
        (envelope(v=7), "unsupported contract version"),
        (envelope(gw="Not Valid"), "gw: "),
        (envelope(gw="other-gw"), "arrived on"),
        (envelope(seq=-1), "seq: must be >= 0"),
        (envelope(samples="nope"), "samples: must be a list"),
        (sample(m="sewage"), "samples[0].m: must be one of"),
        (sample(f={"Pressure": 1.0}), "not a valid metric name"),
        (sample(f={"pressure_mpa": [1]}), "must be a number, boolean or string"),
        (sample(f={"pressure_mpa": 2**63}), "does not fit in 64 bits"),
        (sample(t=now + 86_400_000), "in the future"),
        (sample(t=now - 400 * 86_400_000), "retention"),
        (sample(f={"time": 1.0}), "reserved"),
        (sample(f={"device_error": 5.0}), "device_error are reserved"),
        (sample(q="uncertain", f={"quality_uncertain": 5.0}), "quality_uncertain are reserved"),
        (sample(err="fouled"), 'only a sample with q="bad" or q="uncertain" says why'),
        (sample(f={f"m{i}": 1.0 for i in range(65)}), "65 fields, more than the limit of 64"),
        (sample(f={"pressure_mpa": "BIG"}).replace(b'"BIG"', b"18446744073709551616"), "does not fit in 64 bits"),
        (sample(f={"pressure_mpa": "BIG"}).replace(b'"BIG"', b"-9223372036854775809"), "does not fit in 64 bits"),
        (sample(f={"pressure_mpa": "BIG"}).replace(b'"BIG"', b"1" * 30), "does not fit in 64 bits"),
        (envelope(extra="DEEP").replace(b'"DEEP"', b"[" * 1000 + b"]" * 1000), "nested deeper than 16 levels"),
        (sample(q="bad", f={}), 'must say why in "err"'),
        (b"x" * 300_000, "larger than the limit"),
    ]
    out = []
    for i in range(n):
        payload, expect = kinds[i % len(kinds)]
        # make each payload distinct so every one can be found in the dead letters
        if payload.startswith(b"{\"v\""):
            payload = payload[:-1] + b',"nonce":' + str(i).encode() + b"}"
        else:
            payload = payload + b" " * (i // len(kinds) + 1)
        out.append((payload, expect))
    return out


def test_flood_of_malformed_payloads(stack: Stack, influx_db: InfluxClient, caplog: pytest.LogCaptureFixture) -> None:
    district, gw = unique("flood"), "gw-1"
    now = now_ms()
    t0 = now - 300_000
    good = [(topics.telemetry(district, gw), batch_payload(district, gw, seq, t0, DEVICES))
            for seq in range(GOOD)]
    bad = _bad_payloads(district, gw, now, BAD)
    mixed = good + [(topics.telemetry(district, gw), payload) for payload, _ in bad]
    random.Random(5).shuffle(mixed)
    dead = Collector(stack.mqtt_url, topics.DEADLETTER)
    pub = Publisher(stack.mqtt_url)
    try:
        with running_ingester(stack.mqtt_url, stack.influx_url, influx_db.database,
                              settings=isolated_settings(max_age_s=30 * 86400)) as ing:
            pub.publish_all(mixed)
            wait_for(lambda: ing.stats.messages == GOOD + BAD and ing.held == 0, 60, "all handled")
        mine = {}
        wait_for(lambda: sum(d["topic"] == topics.telemetry(district, gw) for d in dead.payloads) >= BAD,
                 20, "every dead letter")
        for letter in dead.payloads:
            if letter["topic"] == topics.telemetry(district, gw):
                payload = base64.b64decode(letter["payload_b64"])
                assert payload not in mine, "a payload was dead-lettered twice"
                mine[payload] = letter
        assert len(mine) == BAD
        for payload, expect in bad:
            letter = mine[payload]
            assert expect in letter["reason"], (expect, letter["reason"])
        assert stored_keys(influx_db, district) == expected_keys(range(GOOD), t0, DEVICES)
        assert ing.stats.deadletters == BAD
        # bad input is a dead letter with a reason, never an internal error with a traceback
        assert [r.getMessage() for r in caplog.records if r.exc_info] == []
    finally:
        pub.close()
        dead.close()
