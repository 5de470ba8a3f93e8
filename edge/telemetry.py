"""Self-telemetry: poll latency and jitter, errors by exception code, log depth, drops,
reconnects and per-device state; published in the status message and, when a port is
configured, as Prometheus metrics."""

from __future__ import annotations

import bisect
import itertools
import logging
from collections import Counter, deque
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Gauge, start_http_server
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("urbansense.edge")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


#: Polls the status message's jitter and latency percentiles cover.
RECENT_POLLS = 5000


def _percentile(ordered: list[float], q: float) -> float:
    """The q-quantile of values sorted ascending."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _hist(hists: dict[str, tuple[list[int], list[float]]], link: str) -> tuple[list[int], list[float]]:
    """A link's histogram, [bucket counts..., +Inf count] and [sum], made on first use."""
    hist = hists.get(link)
    if hist is None:
        hist = hists[link] = ([0] * (len(_LATENCY_BUCKETS) + 1), [0.0])
    return hist


def _observe(hists: dict[str, tuple[list[int], list[float]]], link: str, value: float) -> None:
    hist = _hist(hists, link)
    hist[0][bisect.bisect_left(_LATENCY_BUCKETS, value)] += 1
    hist[1][0] += value


def _histogram(name: str, doc: str, hists: dict[str, tuple[list[int], list[float]]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["link"])
    bounds = [*(str(b) for b in _LATENCY_BUCKETS), "+Inf"]
    for link, (counts, total) in list(hists.items()):
        cumulative = list(itertools.accumulate(list(counts)))
        family.add_metric([link], list(zip(bounds, cumulative, strict=True)), total[0])
    return family


class _HotCounters(Collector):
    """Counters and histograms updated on every poll, kept as plain numbers and exposed at
    scrape time (prometheus_client's own take a lock and more on every update)."""

    def __init__(self, telemetry: SelfTelemetry) -> None:
        self.telemetry = telemetry

    def collect(self) -> Iterator[Metric]:
        t = self.telemetry
        requests = CounterMetricFamily("edge_modbus_requests", "Modbus requests sent", labels=["link"])
        for link, n in list(t.requests_by_link.items()):
            requests.add_metric([link], n)
        yield requests
        yield CounterMetricFamily("edge_samples", "Samples taken (appended to the log)", value=t.samples)
        yield _histogram("edge_poll_latency_seconds", "Time to poll one device", t.latency_hist)
        yield _histogram("edge_poll_jitter_seconds", "Poll start minus scheduled time", t.jitter_hist)


class SelfTelemetry:
    def __init__(self, gateway: str) -> None:
        self.gateway = gateway
        self.polls = 0
        self.modbus_requests = 0
        self.errors: Counter[str] = Counter()
        self.samples = 0
        self.mqtt_messages = 0
        #: Messages from HJ 212 stations and JT/T 808 terminals, and those refused, by reason.
        self.push_messages = 0
        self.protocol_errors: Counter[str] = Counter()
        self.commands: Counter[str] = Counter()
        # Recent values only: bounded so memory does not grow with uptime, and so the status
        # message's percentiles (two sorts) stay cheap: 20,000 cost 4 ms a status.
        self.jitter_s: deque[float] = deque(maxlen=RECENT_POLLS)
        self.latency_s: deque[float] = deque(maxlen=RECENT_POLLS)
        self.registry = CollectorRegistry()
        r = self.registry
        # Per-poll histograms: [bucket counts..., +Inf count] and sum, per link (_HotCounters).
        self.latency_hist: dict[str, tuple[list[int], list[float]]] = {}
        self.jitter_hist: dict[str, tuple[list[int], list[float]]] = {}
        self._errors = PromCounter("edge_poll_errors", "Failed polls by reason (timeout, exception_N, link)",
                                   ["reason"], registry=r)
        # Per-poll counters are plain ints, read when Prometheus scrapes (_HotCounters).
        self.requests_by_link: Counter[str] = Counter()
        r.register(_HotCounters(self))
        self.wal_depth = Gauge("edge_wal_depth", "Samples in the log awaiting PUBACK", registry=r)
        self.wal_bytes = Gauge("edge_wal_bytes", "Payload bytes in the log", registry=r)
        self.wal_dropped = Gauge("edge_wal_dropped", "Samples dropped by the size cap (ever)", registry=r)
        self.reconnects = Gauge("edge_mqtt_reconnects", "Uplink reconnects since start", registry=r)
        self.connected = Gauge("edge_mqtt_connected", "1 while the uplink is connected", registry=r)
        self.device_up = Gauge("edge_device_up", "1 when the device answered its last poll", ["device"],
                               registry=r)
        self._protocol_errors = PromCounter(
            "edge_protocol_errors", "HJ 212 / JT/T 808 messages refused, by link and reason (crc, length, "
            "unknown_device, password, unauthenticated, garbage, body)", ["link", "reason"], registry=r)
        self._commands = PromCounter("edge_commands", "Commands by outcome", ["outcome"], registry=r)
        # Labelled children looked up once (labels() costs more than the setting).
        self._device_up: dict[str, tuple[Gauge, list[int]]] = {}

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
        log.info("Prometheus metrics on http://%s:%d/metrics", host, port)

    # ------------------------------------------------------------------ hot path
    def poll_done(self, link: str, jitter_s: float, latency_s: float, requests: int) -> None:
        self.polls += 1
        self.modbus_requests += requests
        self.jitter_s.append(jitter_s)
        self.latency_s.append(latency_s)
        _observe(self.jitter_hist, link, max(0.0, jitter_s))
        _observe(self.latency_hist, link, latency_s)
        self.requests_by_link[link] += requests

    def polls_done(self, link: str, jitters_s: list[float], latency_s: float, requests: int) -> None:
        """`poll_done` for the devices of one coalesced exchange (one latency, their own jitters)."""
        n = len(jitters_s)
        self.polls += n
        self.modbus_requests += requests
        self.jitter_s.extend(jitters_s)
        self.latency_s.extend([latency_s] * n)
        counts, total = _hist(self.jitter_hist, link)
        for value in jitters_s:
            value = max(0.0, value)
            counts[bisect.bisect_left(_LATENCY_BUCKETS, value)] += 1
            total[0] += value
        latency = _hist(self.latency_hist, link)
        latency[0][bisect.bisect_left(_LATENCY_BUCKETS, latency_s)] += n
        latency[1][0] += latency_s * n
        self.requests_by_link[link] += requests

    def poll_failed(self, reason_code: str) -> None:
        self.errors[reason_code] += 1
        self._errors.labels(reason_code).inc()

    def sample_taken(self) -> None:
        self.samples += 1

    def device_state(self, device: str, ok: bool) -> None:
        entry = self._device_up.get(device)
        if entry is None:
            entry = self._device_up[device] = (self.device_up.labels(device), [-1])
        value = 1 if ok else 0
        if entry[1][0] != value:  # set on a change only: every poll calls this
            entry[1][0] = value
            entry[0].set(value)

    def protocol_error(self, link: str, reason: str) -> None:
        self.protocol_errors[reason] += 1
        self._protocol_errors.labels(link, reason).inc()

    def command(self, outcome: str) -> None:
        self.commands[outcome] += 1
        self._commands.labels(outcome).inc()

    # ------------------------------------------------------------------ summary
    def summary(self) -> dict[str, float]:
        jitter = sorted(self.jitter_s)
        latency = sorted(self.latency_s)
        out = {
            "polls": float(self.polls),
            "samples": float(self.samples),
            "modbus_requests": float(self.modbus_requests),
            "poll_jitter_p50_ms": round(_percentile(jitter, 0.5) * 1000, 3),
            "poll_jitter_p99_ms": round(_percentile(jitter, 0.99) * 1000, 3),
            "poll_latency_p50_ms": round(_percentile(latency, 0.5) * 1000, 3),
            "poll_latency_p99_ms": round(_percentile(latency, 0.99) * 1000, 3),
            "mqtt_input_messages": float(self.mqtt_messages),
            "push_messages": float(self.push_messages),
        }
        for reason, n in self.protocol_errors.items():
            out[f"protocol_errors_{reason}"] = float(n)
        for reason, n in self.errors.items():
            out[f"errors_{reason}"] = float(n)
        return out
