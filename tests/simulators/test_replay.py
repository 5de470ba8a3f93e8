"""Replay of recorded readings (CSV and line protocol) into MQTT."""

from __future__ import annotations

import csv
import queue
import subprocess
import sys
import time
import uuid
from itertools import islice
from pathlib import Path

import pytest

from application.stack import Stack
from simulators.recordings import parse_line, read_recording
from simulators.replay import replay
from simulators.scenario import load_scenario
from tests.simulators.conftest import FIXED_NOW_MS
from urbansense import codec
from urbansense.lineprotocol import encode_point
from urbansense.mqtt import MqttClient, MqttSettings
from urbansense.schema import Sample

pytestmark = pytest.mark.integration


def _recorded(district: str, ticks: int = 5) -> list[tuple[str, Sample]]:
    """A few polls of the water and lighting gateways, under a test-only district name."""
    s = load_scenario("pudong-incidents")
    out: list[tuple[str, Sample]] = []
    for tick in islice(s.play_offline(2, s.aligned_start_ms(FIXED_NOW_MS), step_s=60), ticks):
        for b in tick.batches:
            if b.gw in ("pd-gw-water", "pd-gw-light"):
                out.extend((b.gw, x) for x in b.samples if x.q == "good")
    assert out
    return out[:200]


def _write_lp(path: Path, district: str, rows: list[tuple[str, Sample]]) -> None:
    lines = [encode_point(x.m, {"district": district, "gateway": gw, "device": x.dev}, x.f, x.t) for gw, x in rows]
    path.write_text("\n".join(lines) + "\n")


def _write_csv(path: Path, district: str, rows: list[tuple[str, Sample]]) -> None:
    fields = sorted({k for _gw, x in rows for k in x.f})
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["time", "measurement", "district", "gateway", "device", *fields])
        for gw, x in rows:
            w.writerow([x.t, x.m, district, gw, x.dev, *[str(x.f.get(k, "")).lower()
                                                           if isinstance(x.f.get(k), bool) else x.f.get(k, "")
                                                           for k in fields]])


def _collect(stack: Stack, district: str) -> tuple[MqttClient, queue.Queue[bytes]]:
    got: queue.Queue[bytes] = queue.Queue()
    client = MqttClient(MqttSettings.from_url(stack.mqtt_url), client_id=f"t-replay-{uuid.uuid4().hex[:8]}")
    client.subscribe(f"city/{district}/+/telemetry", lambda m: got.put(bytes(m.payload)), qos=1)
    client.connect()
    return client, got


def _drain(got: queue.Queue[bytes], expected: int, timeout_s: float = 10.0) -> list[tuple[str, Sample]]:
    samples: list[tuple[str, Sample]] = []
    deadline = time.monotonic() + timeout_s
    while len(samples) < expected and time.monotonic() < deadline:
        try:
            batch = codec.decode_batch(got.get(timeout=0.5))
        except queue.Empty:
            continue
        samples.extend((batch.gw, x) for x in batch.samples)
    return samples


def test_line_protocol_parser_round_trips_escapes() -> None:
    line = encode_point("water", {"district": "a b", "gateway": "g,1", "device": "d=1"},
                        {"note": 'say "hi"\\', "n": 3, "ok": True, "x": 0.5}, 1764190000000)
    measurement, tags, fields, t = parse_line(line)
    assert (measurement, t) == ("water", 1764190000000)
    assert tags == {"district": "a b", "gateway": "g,1", "device": "d=1"}
    assert fields == {"note": 'say "hi"\\', "n": 3, "ok": True, "x": 0.5}


@pytest.mark.parametrize("fmt", ["lp", "csv"])
def test_replay_publishes_every_recorded_sample_unchanged(stack: Stack, tmp_path: Path, fmt: str) -> None:
    district = f"t-replay-{uuid.uuid4().hex[:8]}"
    rows = _recorded(district)
    path = tmp_path / f"rec.{fmt}"
    (_write_lp if fmt == "lp" else _write_csv)(path, district, rows)
    loaded = read_recording(path)
    assert len(loaded) == len(rows)
    client, got = _collect(stack, district)
    publisher = MqttClient(MqttSettings.from_url(stack.mqtt_url), client_id=f"t-replay-pub-{uuid.uuid4().hex[:8]}")
    publisher.connect()
    try:
        span_s = (rows[-1][1].t - rows[0][1].t) / 1000
        speed = span_s / 1.0  # the recording in about one second
        t0 = time.monotonic()
        stats = replay(loaded, publisher, speed=speed)
        elapsed = time.monotonic() - t0
        received = _drain(got, len(rows))
    finally:
        publisher.close()
        client.close()
    assert stats.samples == len(rows)
    assert elapsed >= 0.9 * span_s / speed  # paced, not dumped
    assert sorted((gw, x.dev, x.t) for gw, x in received) == sorted((gw, x.dev, x.t) for gw, x in rows)
    by_key = {(x.dev, x.t): x.f for _gw, x in received}
    for _gw, x in rows:
        got_f = by_key[(x.dev, x.t)]
        assert got_f.keys() == x.f.keys()
        for k, v in x.f.items():
            assert got_f[k] == pytest.approx(v) if isinstance(v, float) else got_f[k] == v


def test_replay_cli_with_shift_to_now(stack: Stack, tmp_path: Path) -> None:
    district = f"t-replay-{uuid.uuid4().hex[:8]}"
    rows = _recorded(district, ticks=3)
    path = tmp_path / "rec.lp"
    _write_lp(path, district, rows)
    client, got = _collect(stack, district)
    try:
        before = int(time.time() * 1000)
        out = subprocess.run([sys.executable, "-m", "application.cli", "sim", "replay", str(path), "--speed", "0",
                              "--shift-to-now", "--mqtt", stack.mqtt_url], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert f"replayed {len(rows)} samples" in out.stdout
        received = _drain(got, len(rows))
    finally:
        client.close()
    assert len(received) == len(rows)
    # Shifted so the recording ends now; spacing between readings is kept.
    last = max(x.t for _gw, x in received)
    assert before - 5_000 <= last <= int(time.time() * 1000) + 1
    span = rows[-1][1].t - rows[0][1].t
    assert max(x.t for _gw, x in received) - min(x.t for _gw, x in received) == span


def test_replay_refuses_a_recording_without_tags(tmp_path: Path) -> None:
    path = tmp_path / "bad.lp"
    path.write_text("water,device=wp-1 pressure_mpa=0.3 1764190000000\n")
    out = subprocess.run([sys.executable, "-m", "application.cli", "sim", "replay", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "bad.lp:1: tags lack district, gateway" in out.stdout
