"""The ingester's self-metrics: kept as plain counters, written to InfluxDB as the
`urbansense_ingest` measurement and served as Prometheus metrics (own registry per
instance, so several instances can live in one process, as in tests)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from urbansense.lineprotocol import encode_point


@dataclass
class IngestCounts:
    """Cumulative since start (what `urbansense_ingest` stores, except the rates)."""

    messages: int = 0
    points: int = 0
    batches: int = 0
    deadletters: int = 0
    samples_refused: int = 0
    retries: int = 0
    seq_gaps: int = 0
    seq_repeats: int = 0
    #: points stored uncertain because their gateway's clock is off
    clock_flagged: int = 0
    last_batch_latency_ms: float = 0.0
    deadletter_kinds: dict[str, int] = field(default_factory=dict)
    #: telemetry messages by the path that decoded them (see DECODE_PATHS)
    decoded: dict[str, int] = field(default_factory=dict)


#: How a telemetry message was decoded: "c", the C accelerator's one pass; "python", the
#: Python fast path (codec.decode_plain_batch + points.transcode_plain); "full", the full
#: lenient path (anything else: bad samples, late samples, unusual but valid JSON).
DECODE_PATHS = ("c", "python", "full")


class IngestMetrics:
    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.counts = IngestCounts()
        self._lock = threading.Lock()
        self._rate_mark = (time.monotonic(), 0)
        self.registry = CollectorRegistry(auto_describe=True)
        labels = {"instance": instance}
        r = self.registry
        self._p_messages = Counter("urbansense_ingest_messages", "MQTT messages handled",
                                   ["instance"], registry=r).labels(**labels)
        self._p_points = Counter("urbansense_ingest_points", "points written to InfluxDB",
                                 ["instance"], registry=r).labels(**labels)
        self._p_deadletters = Counter("urbansense_ingest_deadletters",
                                      "dead letters published, by kind", ["instance", "kind"], registry=r)
        self._p_refused = Counter("urbansense_ingest_samples_refused",
                                  "samples refused (bad sample, bad time, refused by InfluxDB)",
                                  ["instance"], registry=r).labels(**labels)
        self._p_retries = Counter("urbansense_ingest_write_retries", "InfluxDB write retries",
                                  ["instance"], registry=r).labels(**labels)
        self._p_gaps = Counter("urbansense_ingest_seq_gaps", "missing batch sequence numbers seen",
                               ["instance"], registry=r).labels(**labels)
        self._p_repeats = Counter("urbansense_ingest_seq_repeats", "repeated batch sequence numbers seen",
                                  ["instance"], registry=r).labels(**labels)
        self._p_latency = Histogram(
            "urbansense_ingest_batch_latency_seconds",
            "from the first message of a batch arriving to its write being acknowledged",
            ["instance"], registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        ).labels(**labels)
        decoded = Counter("urbansense_ingest_decoded_messages",
                          "telemetry messages by decode path: c (the C accelerator), python (the Python "
                          "fast path), full (the full path: bad or late samples, unusual JSON)",
                          ["instance", "path"], registry=r)
        self._p_decoded = {path: decoded.labels(instance=instance, path=path) for path in DECODE_PATHS}
        self._p_accelerator = Gauge("urbansense_ingest_accelerator",
                                    "1 when the C accelerator (ingest._fastline) decodes telemetry, 0 when "
                                    "pure Python", ["instance"], registry=r).labels(**labels)
        self._p_clock = Gauge("urbansense_gateway_clock_offset_seconds",
                              "gateway clock minus this instance's clock, measured on the gateway's batches "
                              "(positive: the gateway is ahead)", ["district", "gateway"], registry=r)
        self._p_clock_children: dict[tuple[str, str], Any] = {}
        self._p_clock_flagged = Counter("urbansense_ingest_clock_flagged_points",
                                        "points stored uncertain because their gateway's clock is off",
                                        ["instance"], registry=r).labels(**labels)
        self._p_queue = Gauge("urbansense_ingest_queue_depth",
                              "messages received and not yet acknowledged", ["instance"],
                              registry=r).labels(**labels)

    # ------------------------------------------------------------------ events
    def messages(self, n: int, decoded_by: str | None = None) -> None:
        """n messages handled; `decoded_by` (one of DECODE_PATHS) for telemetry decoded."""
        with self._lock:
            self.counts.messages += n
            if decoded_by is not None:
                self.counts.decoded[decoded_by] = self.counts.decoded.get(decoded_by, 0) + n
        self._p_messages.inc(n)
        if decoded_by is not None:
            self._p_decoded[decoded_by].inc(n)

    def accelerator(self, in_use: bool) -> None:
        self._p_accelerator.set(1 if in_use else 0)

    def batch_written(self, points: int, latency_s: float) -> None:
        with self._lock:
            self.counts.points += points
            self.counts.batches += 1
            self.counts.last_batch_latency_ms = latency_s * 1000
        self._p_points.inc(points)
        self._p_latency.observe(latency_s)

    def retry(self) -> None:
        with self._lock:
            self.counts.retries += 1
        self._p_retries.inc()

    def deadletter(self, kind: str, samples_refused: int = 0) -> None:
        with self._lock:
            self.counts.deadletters += 1
            self.counts.samples_refused += samples_refused
            self.counts.deadletter_kinds[kind] = self.counts.deadletter_kinds.get(kind, 0) + 1
        self._p_deadletters.labels(instance=self.instance, kind=kind).inc()
        if samples_refused:
            self._p_refused.inc(samples_refused)

    def sequence(self, gaps: int, repeats: int) -> None:
        with self._lock:
            self.counts.seq_gaps += gaps
            self.counts.seq_repeats += repeats
        if gaps:
            self._p_gaps.inc(gaps)
        if repeats:
            self._p_repeats.inc(repeats)

    def clock_offset(self, district: str, gateway: str, offset_s: float) -> None:
        child = self._p_clock_children.get((district, gateway))
        if child is None:
            child = self._p_clock_children[(district, gateway)] = self._p_clock.labels(district, gateway)
        child.set(offset_s)

    def clock_flagged(self, points: int) -> None:
        with self._lock:
            self.counts.clock_flagged += points
        self._p_clock_flagged.inc(points)

    def queue_depth(self, depth: int) -> None:
        self._p_queue.set(depth)

    # ------------------------------------------------------------------ outputs
    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            c = self.counts
            return {"messages": c.messages, "points": c.points, "batches": c.batches,
                    "deadletters": c.deadletters, "samples_refused": c.samples_refused,
                    "retries": c.retries, "seq_gaps": c.seq_gaps, "seq_repeats": c.seq_repeats,
                    "clock_flagged": c.clock_flagged, "deadletter_kinds": dict(c.deadletter_kinds),
                    "decoded": dict(c.decoded)}

    def influx_line(self, now_ms: int, queue_depth: int) -> str:
        """One `urbansense_ingest` point; points_per_s is the rate since the last call."""
        now = time.monotonic()
        with self._lock:
            c = self.counts
            mark_t, mark_points = self._rate_mark
            rate = (c.points - mark_points) / max(now - mark_t, 1e-3)
            self._rate_mark = (now, c.points)
            fields: dict[str, object] = {
                "points_per_s": float(rate),
                "batch_latency_ms": float(c.last_batch_latency_ms),
                "queue_depth": queue_depth,
                "retries": c.retries,
                "deadletters": c.deadletters,
                "seq_gaps": c.seq_gaps,
                "seq_repeats": c.seq_repeats,
                "clock_flagged": c.clock_flagged,
                "points_total": c.points,
                "messages_total": c.messages,
            }
            for path in DECODE_PATHS:
                fields[f"decoded_{path}"] = c.decoded.get(path, 0)
        return encode_point("urbansense_ingest", {"instance": self.instance}, fields, now_ms)

    def serve(self, host: str, port: int) -> Any:
        """Start the Prometheus endpoint (a daemon thread); returns the server."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
