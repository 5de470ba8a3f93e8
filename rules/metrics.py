"""The rules service's Prometheus metrics (`urbansense rules run --metrics-port`), read
when Prometheus scrapes from numbers the evaluation loop keeps (no lock on the hot path).
deploy/prometheus's rules alert on them: the service down, its evaluation behind the
stream, Alertmanager unreachable."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from rules.service import RulesService

log = logging.getLogger("urbansense.rules")


class _RulesCollector(Collector):
    def __init__(self, service: RulesService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        s = self.service
        labels = ["instance"]
        values = [s.config.instance]

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            return family

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            return family

        yield counter("urbansense_rules_samples", "samples evaluated", s.samples_seen)
        yield counter("urbansense_rules_events_published", "alert events published", s.events_published)
        yield gauge("urbansense_rules_alerts_active", "alerts firing", s.active_alerts)
        yield gauge("urbansense_rules_inbox_depth", "messages received and not yet evaluated", s._inbox.qsize())
        yield gauge("urbansense_rules_evaluation_delay_seconds",
                    "from the oldest message of the last evaluated chunk arriving to its evaluation",
                    s.evaluation_delay_s)
        yield counter("urbansense_rules_reloads_refused", "rule-file changes refused as invalid", s.reloads_refused)
        if s.alertmanager is not None:
            yield counter("urbansense_rules_alertmanager_failures", "requests Alertmanager did not take",
                          s.alertmanager.failures)
            yield gauge("urbansense_rules_alertmanager_pending_resolutions", "resolutions waiting for Alertmanager",
                        s.alertmanager.pending_resolutions)


def serve_metrics(service: RulesService, host: str, port: int) -> None:
    registry = CollectorRegistry()
    registry.register(_RulesCollector(service))
    start_http_server(port, addr=host, registry=registry)
    log.info("Prometheus metrics on http://%s:%d/metrics", host, port)
