"""Play recorded readings back into MQTT as telemetry batches, at any speed.

Rows are grouped per gateway and timestamp into batches (at most `batch_size` samples)
on `city/{district}/{gateway}/telemetry`, with seq counting from 1 per gateway. A row
recorded at t is published at wall time start + (t - t_first) / speed; speed 0 means as
fast as possible. With shift_to_now, timestamps are moved as a scenario clock would
(DESIGN.md): the recording ends at the wall-clock end of the replay.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from simulators.recordings import Row
from urbansense import clock, codec, topics
from urbansense.mqtt import MqttClient
from urbansense.schema import Sample, TelemetryBatch


@dataclass
class ReplayStats:
    samples: int = 0
    batches: int = 0
    wall_s: float = 0.0


def batches_of(rows: list[Row], batch_size: int = 500, shift_ms: int = 0) -> Iterator[tuple[int, TelemetryBatch]]:
    """(recorded t, batch) in time order; one batch per gateway and timestamp."""
    seqs: dict[str, int] = {}
    i = 0
    while i < len(rows):
        t = rows[i].sample.t
        j = i
        while j < len(rows) and rows[j].sample.t == t:
            j += 1
        by_gw: dict[tuple[str, str], list[Sample]] = {}
        for row in rows[i:j]:
            s = row.sample
            shifted = Sample(dev=s.dev, m=s.m, t=s.t + shift_ms, f=s.f, q=s.q, err=s.err, urgent=s.urgent)
            by_gw.setdefault((row.district, row.gateway), []).append(shifted)
        for (district, gateway), samples in by_gw.items():
            for k in range(0, len(samples), batch_size):
                seqs[gateway] = seqs.get(gateway, 0) + 1
                yield t, TelemetryBatch(gw=gateway, district=district, seq=seqs[gateway], sent=t + shift_ms,
                                        samples=samples[k : k + batch_size])
        i = j


def replay(rows: list[Row], mqtt: MqttClient, *, speed: float = 1.0, shift_to_now: bool = False,
           batch_size: int = 500, on_batch: Callable[[int], None] | None = None) -> ReplayStats:
    """Publish `rows` (sorted by time) at `speed`; on_batch(n_samples) after each batch."""
    stats = ReplayStats()
    if not rows:
        return stats
    t_first, t_last = rows[0].sample.t, rows[-1].sample.t
    shift = 0
    if shift_to_now:
        span = t_last - t_first
        now = int(time.time() * 1000)
        shift = now - span + (int(span / speed) if speed > 0 else 0) - t_first
    wall0 = time.monotonic()
    for t, batch in batches_of(rows, batch_size, shift):
        if speed > 0:
            due = wall0 + (t - t_first) / 1000.0 / speed
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        # `sent` is when the batch leaves, on this clock: the receivers measure the sender's
        # clock by it (urbansense/clock_offset.py); the recorded times stay in the samples
        batch.sent = clock.now_ms()
        mqtt.publish(topics.telemetry(batch.district, batch.gw), codec.encode_batch(batch), qos=1)
        stats.batches += 1
        stats.samples += len(batch.samples)
        if on_batch is not None:
            on_batch(len(batch.samples))
    stats.wall_s = time.monotonic() - wall0
    return stats
