"""Self-telemetry: poll latency and jitter, errors by exception code, log depth, drops,
reconnects and per-device state; published in the status message and, when a port is
configured, as Prometheus metrics."""

from __future__ import annotations

import logging
from collections import Counter, deque

from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server
from prometheus_client import Counter as PromCounter

log = logging.getLogger("urbansense.edge")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class SelfTelemetry:
    def __init__(self, gateway: str) -> None:
        self.gateway = gateway
        self.polls = 0
        self.modbus_requests = 0
        self.errors: Counter[str] = Counter()
        self.samples = 0
        self.mqtt_messages = 0
        self.commands: Counter[str] = Counter()
        # Recent values only: bounded so memory does not grow with uptime.
        self.jitter_s: deque[float] = deque(maxlen=20000)
        self.latency_s: deque[float] = deque(maxlen=20000)
        self.registry = CollectorRegistry()
        r = self.registry
        self._latency = Histogram("edge_poll_latency_seconds", "Time to poll one device", ["link"],
                                  buckets=_LATENCY_BUCKETS, registry=r)
        self._jitter = Histogram("edge_poll_jitter_seconds", "Poll start minus scheduled time", ["link"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self._errors = PromCounter("edge_poll_errors", "Failed polls by reason (timeout, exception_N, link)",
                                   ["reason"], registry=r)
        self._requests = PromCounter("edge_modbus_requests", "Modbus requests sent", ["link"], registry=r)
        self._samples = PromCounter("edge_samples", "Samples taken (appended to the log)", registry=r)
        self.wal_depth = Gauge("edge_wal_depth", "Samples in the log awaiting PUBACK", registry=r)
        self.wal_bytes = Gauge("edge_wal_bytes", "Payload bytes in the log", registry=r)
        self.wal_dropped = Gauge("edge_wal_dropped", "Samples dropped by the size cap (ever)", registry=r)
        self.reconnects = Gauge("edge_mqtt_reconnects", "Uplink reconnects since start", registry=r)
        self.connected = Gauge("edge_mqtt_connected", "1 while the uplink is connected", registry=r)
        self.device_up = Gauge("edge_device_up", "1 when the device answered its last poll", ["device"],
                               registry=r)
        self._commands = PromCounter("edge_commands", "Commands by outcome", ["outcome"], registry=r)

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
        log.info("Prometheus metrics on http://%s:%d/metrics", host, port)

    # ------------------------------------------------------------------ hot path
    def poll_done(self, link: str, jitter_s: float, latency_s: float, requests: int) -> None:
        self.polls += 1
        self.modbus_requests += requests
        self.jitter_s.append(jitter_s)
        self.latency_s.append(latency_s)
        self._jitter.labels(link).observe(max(0.0, jitter_s))
        self._latency.labels(link).observe(latency_s)
        self._requests.labels(link).inc(requests)

    def poll_failed(self, reason_code: str) -> None:
        self.errors[reason_code] += 1
        self._errors.labels(reason_code).inc()

    def sample_taken(self) -> None:
        self.samples += 1
        self._samples.inc()

    def device_state(self, device: str, ok: bool) -> None:
        self.device_up.labels(device).set(1 if ok else 0)

    def command(self, outcome: str) -> None:
        self.commands[outcome] += 1
        self._commands.labels(outcome).inc()

    # ------------------------------------------------------------------ summary
    def summary(self) -> dict[str, float]:
        jitter = list(self.jitter_s)
        latency = list(self.latency_s)
        out = {
            "polls": float(self.polls),
            "samples": float(self.samples),
            "modbus_requests": float(self.modbus_requests),
            "poll_jitter_p50_ms": round(_percentile(jitter, 0.5) * 1000, 3),
            "poll_jitter_p99_ms": round(_percentile(jitter, 0.99) * 1000, 3),
            "poll_latency_p50_ms": round(_percentile(latency, 0.5) * 1000, 3),
            "poll_latency_p99_ms": round(_percentile(latency, 0.99) * 1000, 3),
            "mqtt_input_messages": float(self.mqtt_messages),
        }
        for reason, n in self.errors.items():
            out[f"errors_{reason}"] = float(n)
        return out
