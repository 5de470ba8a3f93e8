"""Read telemetry back from InfluxDB as batches: the warm start after a restart (a short
look-back so windows, for-durations and firing alerts are not forgotten) and the
backtest over recorded data (`--from/--to`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterator

from rules.engine import RulesEngine
from urbansense.identifiers import MEASUREMENTS, RESERVED_FIELDS
from urbansense.influx import InfluxClient, InfluxError
from urbansense.schema import AlertEvent, FieldValue, Sample, TelemetryBatch

log = logging.getLogger("urbansense.rules")


def influx_ticks(client: InfluxClient, start_ms: int, end_ms: int, *, step_s: float = 10.0, page_s: float = 600.0,
                 districts: set[str] | None = None) -> Iterator[tuple[int, list[TelemetryBatch]]]:
    """Stored samples between start_ms and end_ms as (t, batches) in event-time order,
    one tick per `step_s`, read page by page so memory stays bounded."""
    measurements = ",".join(f'"{m}"' for m in MEASUREMENTS)
    page_ms = int(page_s * 1000)
    step_ms = int(step_s * 1000)
    for lo in range(start_ms, end_ms, page_ms):
        hi = min(end_ms, lo + page_ms)
        q = f"SELECT * FROM {measurements} WHERE time >= {lo}ms AND time < {hi}ms"
        ticks: dict[int, dict[tuple[str, str], list[Sample]]] = defaultdict(lambda: defaultdict(list))
        for series in client.query(q):
            cols = series.columns
            for row in series.values:
                rec = dict(zip(cols, row, strict=False))
                district, gateway, device = rec.get("district"), rec.get("gateway"), rec.get("device")
                if not (district and gateway and device) or (districts and district not in districts):
                    continue
                fields: dict[str, FieldValue] = {k: v for k, v in rec.items()
                                                 if k not in RESERVED_FIELDS and v is not None
                                                 and isinstance(v, int | float | bool)}
                if not fields:
                    continue
                t = int(rec["time"])
                ticks[t - (t - start_ms) % step_ms][(district, gateway)].append(
                    Sample(dev=device, m=series.name, t=t, f=fields))
        for tick in sorted(ticks):
            batches = [TelemetryBatch(gw=gw, district=d, seq=0, sent=tick, samples=sorted(s, key=lambda x: x.t))
                       for (d, gw), s in ticks[tick].items()]
            yield tick, batches


def warm_start(engine: RulesEngine, client: InfluxClient, now_ms: int, lookback_s: float,
               districts: set[str] | None = None, on_event: Callable[[AlertEvent], None] | None = None) -> int:
    """Replay the last `lookback_s` of stored telemetry into the engine without publishing.

    Alerts that end up firing are taken as already announced by the previous instance,
    so a restart neither repeats them nor forgets to resolve them; `on_event` sees the
    replay's events (the service tells Alertmanager what is still firing). Returns samples
    read."""
    samples = 0
    try:
        for _t, batches in influx_ticks(client, now_ms - int(lookback_s * 1000), now_ms, districts=districts):
            events = engine.ingest(batches)
            if on_event is not None:
                for event in events:
                    on_event(event)
            samples += sum(len(b.samples) for b in batches)
    except InfluxError as exc:
        log.warning("warm start skipped: %s", exc)
    return samples


def history_start(engine: RulesEngine, client: InfluxClient, now_ms: int, districts: set[str] | None = None) -> int:
    """Give the rules that need weeks of record (a tide station's harmonic fit) each
    device's hourly means from InfluxDB, up to `now_ms`. Returns the devices seeded."""
    seeded = 0
    for measurement, metric, history_s in engine.history_needs():
        q = (f'SELECT mean("{metric}") FROM "{measurement}" WHERE time >= {now_ms - int(history_s * 1000)}ms '
             f'AND time < {now_ms}ms GROUP BY time(1h), "district", "device" fill(none)')
        try:
            found = client.query(q)
        except InfluxError as exc:
            log.warning("history for %s.%s skipped: %s", measurement, metric, exc)
            continue
        for series in found:
            district, device = series.tags.get("district"), series.tags.get("device")
            if not (district and device) or (districts and district not in districts):
                continue
            rows = [(int(t) + 1_800_000, float(v)) for t, v in series.values if v is not None]
            if rows and engine.seed_history(district, device, measurement, metric, [t for t, _ in rows],
                                            [v for _, v in rows]):
                seeded += 1
    return seeded
