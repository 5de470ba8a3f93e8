"""Samples -> lines, the time window, reserved names; sequence gaps and repeats; settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.points import LineEncoder, TimeWindow, batch_lines, status_line
from ingest.sequence import SequenceTracker
from ingest.service import parse_duration_ms
from ingest.settings import IngestSettings
from urbansense.config import ConfigError
from urbansense.lineprotocol import encode_point
from urbansense.schema import FieldValue, GatewayStatus, Sample, TelemetryBatch

NOW = 1_764_190_000_000


def _batch(*samples: Sample) -> TelemetryBatch:
    return TelemetryBatch(gw="pd-gw-01", district="pudong", seq=1, sent=NOW, samples=list(samples))


def test_design_example_lines() -> None:
    lines = batch_lines(_batch(
        Sample("wp-0007", "water", NOW, {"pressure_mpa": 0.312, "flow_m3h": 120.5}),
        Sample("wp-0008", "water", NOW, {}, q="bad", err="timeout"),
        Sample("wp-0009", "water", NOW, {"pressure_mpa": 0.2}, q="uncertain"),
    ))
    assert sorted(lines) == [
        "water,device=wp-0007,district=pudong,gateway=pd-gw-01 pressure_mpa=0.312,flow_m3h=120.5 1764190000000",
        'water,device=wp-0008,district=pudong,gateway=pd-gw-01 device_error="timeout" 1764190000000',
        "water,device=wp-0009,district=pudong,gateway=pd-gw-01 pressure_mpa=0.2,quality_uncertain=true "
        "1764190000000",
    ]


@pytest.mark.parametrize(("t", "reason"), [
    (NOW + 5 * 60_000, None),                 # the edge of the future limit: accepted
    (NOW + 5 * 60_000 + 1, "in the future"),
    (NOW - 30 * 86_400_000, None),            # the edge of retention: accepted
    (NOW - 30 * 86_400_000 - 1, "older than the retention policy"),
])
def test_time_window(t: int, reason: str | None) -> None:
    out: list[str] = []
    problems = LineEncoder(TimeWindow()).batch_lines(_batch(Sample("d1", "gas", t, {"x": 1.0})), NOW, out)
    if reason is None:
        assert problems == [] and len(out) == 1
    else:
        assert out == [] and len(problems) == 1 and reason in problems[0] and "sample d1 (0)" in problems[0]


def test_infinite_retention_accepts_old_samples() -> None:
    out: list[str] = []
    encoder = LineEncoder(TimeWindow(retention_ms=0))
    assert encoder.batch_lines(_batch(Sample("d1", "gas", 5, {"x": 1.0})), NOW, out) == []
    assert len(out) == 1


@pytest.mark.parametrize("name", ["time", "device", "district", "gateway"])
def test_reserved_field_names_refused(name: str) -> None:
    out: list[str] = []
    problems = LineEncoder().batch_lines(_batch(Sample("d1", "air", NOW, {name: 1.0, "ok": 2.0}),
                                                Sample("d2", "air", NOW, {"ok": 2.0})), NOW, out)
    assert len(out) == 1 and out[0].startswith("air,device=d2")
    assert f"field name(s) {name} are reserved" in problems[0]


def test_numeric_chunk_and_general_lines_agree() -> None:
    """Plain numeric samples take the one-call path; keys with JSON punctuation or escapes
    and non-float values take the general encoder; both give the same lines."""
    fields_list: list[dict[str, FieldValue]] = [
        {"p": 0.1, "big": 1e16, "tiny": 5e-324, "neg": -0.0, "on": True},
        {"x{y": 1.5, "a": 2.0}, {"k,1": 1.5}, {"k:v": 1.0}, {"q\"": 1.0}, {"n": 3}, {"s": "t"},
    ]
    samples = [Sample(f"d{i}", "air", NOW + i, f) for i, f in enumerate(fields_list)]
    encoded = LineEncoder(TimeWindow(retention_ms=0)).encode(_batch(*samples), NOW)
    assert encoded.chunk_points == 1
    general = sorted(encode_point("air", {"district": "pudong", "gateway": "pd-gw-01", "device": s.dev},
                                  s.f, s.t) for s in samples)
    assert sorted(encoded.all_lines()) == general


def test_status_line() -> None:
    status = GatewayStatus("offline", NOW, devices={"a": "ok", "b": "fail", "c": "fail"}, stats={"wal_depth": 2})
    assert status_line("pudong", "gw-1", status) == (
        "gateway_status,district=pudong,gateway=gw-1 online=false,devices_ok=1i,devices_fail=2i,"
        "wal_depth=2.0 1764190000000")


SEQUENCE_TABLE = [
    # (seq, (gaps, repeats)) in order: the worked example of ingest/sequence.py
    (7, (0, 0)), (8, (0, 0)), (11, (2, 0)), (9, (0, 1)), (11, (0, 1)), (12, (0, 0)),
    (0, (0, 1)),            # a small fall is a repeat, not a restart
    (500_000, (499_987, 0)),
    (3, (0, 0)),            # a gateway that lost its state starts over
    (4, (0, 0)),
]


def test_sequence_table() -> None:
    tracker = SequenceTracker()
    assert [tracker.observe("pudong", "gw-1", seq) for seq, _ in SEQUENCE_TABLE] == [e for _, e in SEQUENCE_TABLE]
    assert tracker.observe("other", "gw-1", 100) == (0, 0)  # per gateway


def test_parse_duration() -> None:
    assert parse_duration_ms("720h0m0s") == 30 * 86_400_000
    assert parse_duration_ms("0s") == 0
    assert parse_duration_ms("1h30m15s") == 5_415_000


def test_settings_from_example_file_and_errors(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "ingest" / "ingest.example.yaml"
    loaded = IngestSettings.load(example)
    assert loaded == IngestSettings()  # the example documents the defaults
    assert IngestSettings.load(example, batch_lines=100).batch_lines == 100
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest:\n  batch_lines: many\n  recieve_maximum: 5\n")
    with pytest.raises(ConfigError) as err:
        IngestSettings.load(bad)
    # the one config loader's messages: file, key, and a fix for a misspelt key
    assert "bad.yaml: recieve_maximum: unknown key 'recieve_maximum'" in str(err.value)
    assert "fix: did you mean 'receive_maximum'?" in str(err.value)
    assert "bad.yaml: batch_lines: Input should be a valid integer (got 'many')" in str(err.value)
    bad.write_text("ingest:\n  leave_on_stop: 1\n  gzip_level: '3'\n")
    with pytest.raises(ConfigError) as err:
        IngestSettings.load(bad)  # strict: no 1 for true, no number in quotes
    assert "leave_on_stop: Input should be a valid boolean (got 1)" in str(err.value)
    assert "gzip_level: Input should be a valid integer (got '3')" in str(err.value)
    bad.write_text("ingest:\n  batch_lines: [\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:3:1: YAML syntax error"):
        IngestSettings.load(bad)
    with pytest.raises(ConfigError, match="receive_maximum: MQTT allows at most 65535"):
        IngestSettings(receive_maximum=70000).check()
