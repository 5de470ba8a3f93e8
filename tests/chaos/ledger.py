"""What the edges published, per device, as a watcher with a persistent broker session
saw it, checked against what InfluxDB holds: counts and values exact, nothing extra,
nothing twice."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Any

from urbansense import codec, topics
from urbansense.identifiers import MEASUREMENTS
from urbansense.influx import InfluxClient
from urbansense.mqtt import MqttClient, MqttSettings
from urbansense.schema import AlertEvent, Sample

TAG_COLUMNS = frozenset({"time", "device", "district", "gateway"})
Key = tuple[str, int]  # (device, edge timestamp t)


def expected_fields(s: Sample) -> dict[str, Any]:
    """The InfluxDB fields the wire contract makes of one sample (ingest/README.md)."""
    if s.q == "bad":
        return {"device_error": s.err or "unknown"}
    f: dict[str, Any] = dict(s.f)
    if s.q != "good":
        f["quality_uncertain"] = True
    return f


class Watcher:
    """Every telemetry batch and alert on the broker, through a persistent session (QoS 1,
    clean_start false), so a broker restart or a reconnect loses none of them."""

    def __init__(self, mqtt_url: str, client_id: str) -> None:
        self.lock = threading.Lock()
        self.published: dict[Key, tuple[str, dict[str, Any]]] = {}
        self.copies = 0  # samples received, resent ones included
        self.conflicts: list[Key] = []  # one (device, t) sent with two different values
        self.alerts: list[AlertEvent] = []
        self._client = MqttClient(MqttSettings.from_url(mqtt_url), client_id=client_id, clean_start=False,
                                  session_expiry_s=3600)
        self._client.subscribe(topics.ALL_TELEMETRY, self._on_batch)
        self._client.subscribe(topics.ALL_ALERTS, self._on_alert)

    def connect(self) -> None:
        self._client.connect()

    def close(self) -> None:
        self._client.close(session_expiry_s=0)

    def _on_batch(self, msg: Any) -> None:
        batch = codec.decode_batch_lenient(bytes(msg.payload))[0]
        with self.lock:
            for s in batch.samples:
                key = (s.dev, s.t)
                value = (s.m, expected_fields(s))
                self.copies += 1
                old = self.published.setdefault(key, value)
                if old != value:
                    self.conflicts.append(key)

    def _on_alert(self, msg: Any) -> None:
        event = codec.decode_alert(bytes(msg.payload))
        with self.lock:
            self.alerts.append(event)

    def snapshot(self) -> dict[Key, tuple[str, dict[str, Any]]]:
        with self.lock:
            return dict(self.published)


def stored_points(influx: InfluxClient, since_ms: int) -> dict[Key, list[tuple[str, dict[str, Any]]]]:
    """Every stored reading since `since_ms`, per (device, t); a list, so that one device
    stored under two measurements shows up as a duplicate."""
    out: dict[Key, list[tuple[str, dict[str, Any]]]] = {}
    for m in MEASUREMENTS:
        for series in influx.query(f'SELECT * FROM "{m}" WHERE time >= {since_ms}ms'):
            cols = series.columns
            t_i, d_i = cols.index("time"), cols.index("device")
            for row in series.values:
                fields = {c: v for c, v in zip(cols, row, strict=True) if c not in TAG_COLUMNS and v is not None}
                out.setdefault((row[d_i], int(row[t_i])), []).append((m, fields))
    return out


@dataclass
class Verdict:
    published: int = 0  # distinct (device, t) the edges published
    wire_copies: int = 0  # samples on the wire, resends included
    stored: int = 0
    missing: list[Key] = field(default_factory=list)
    extra: list[Key] = field(default_factory=list)
    duplicates: list[Key] = field(default_factory=list)
    wrong_values: list[tuple[Key, Any, Any]] = field(default_factory=list)
    conflicts: list[Key] = field(default_factory=list)
    per_device: dict[str, tuple[int, int]] = field(default_factory=dict)  # device -> (published, stored)

    @property
    def exact(self) -> bool:
        return not (self.missing or self.extra or self.duplicates or self.wrong_values or self.conflicts)

    def summary(self) -> str:
        return (f"published {self.published} distinct readings ({self.wire_copies} on the wire), stored "
                f"{self.stored}; missing {len(self.missing)}, extra {len(self.extra)}, duplicates "
                f"{len(self.duplicates)}, wrong values {len(self.wrong_values)}, conflicting resends "
                f"{len(self.conflicts)}; e.g. missing {sorted(self.missing)[:3]} extra {sorted(self.extra)[:3]} "
                f"wrong {self.wrong_values[:2]}")


def compare(watcher: Watcher, influx: InfluxClient, since_ms: int) -> Verdict:
    with watcher.lock:
        copies, conflicts = watcher.copies, list(watcher.conflicts)
    return compare_published(watcher.snapshot(), influx, since_ms, copies, conflicts)


def compare_published(published: dict[Key, tuple[str, dict[str, Any]]], influx: InfluxClient, since_ms: int,
                      wire_copies: int = 0, conflicts: list[Key] | None = None) -> Verdict:
    stored = stored_points(influx, since_ms)
    v = Verdict(published=len(published), wire_copies=wire_copies, stored=sum(map(len, stored.values())),
                conflicts=list(conflicts or []))
    v.missing = [k for k in published if k not in stored]
    v.extra = [k for k in stored if k not in published]
    v.duplicates = [k for k, rows in stored.items() if len(rows) > 1]
    for key, want in published.items():
        got = stored.get(key)
        # a device stored twice is a duplicate (above); it is a wrong value only if no copy
        # matches what was published (whichever measurement the database lists first)
        if got and want not in got:
            v.wrong_values.append((key, want, got[0]))
    for dev in sorted({d for d, _ in published} | {d for d, _ in stored}):
        v.per_device[dev] = (sum(1 for d, _ in published if d == dev), sum(1 for d, _ in stored if d == dev))
    return v


def largest_gap_ms(influx: InfluxClient, since_ms: int) -> dict[str, int]:
    """Per device, the longest stretch of event time with no stored reading: an edge that
    polls on schedule leaves none, so data lost on both the wire and in the database (where
    the watcher would be blind too) shows up here."""
    times: dict[str, list[int]] = {}
    for d, t in stored_points(influx, since_ms):
        times.setdefault(d, []).append(t)
    gaps = {}
    for d, ts in times.items():
        ts.sort()
        gaps[d] = max((b - a for a, b in itertools.pairwise(ts)), default=0)
    return gaps
