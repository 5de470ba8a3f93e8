"""A short simulated city written into a real InfluxDB, for the dashboard query test.

The telemetry is the simulators' offline scenario API (`play_offline`): exactly the
batches the edge agents would publish, written with the ingester's own encoder. On the
newest tick one device of each kind is put in trouble (methane at 30 %LEL, a trapped
passenger, a failed lamp, ...) and another cleared, so that every "how many are in
trouble now" panel has something to count whatever the scenario is doing at that
moment. Alerts, AQI, gateway status and the services' self-metrics are written with the
encoders the rules engine and the ingester use; the water-quality classes by the rules
engine itself, from the river stations' readings.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from dashboards.builder.catalog import ROLLUP_RP
from ingest.bootstrap import ROLLUPS, continuous_query, init_database
from ingest.metrics import IngestMetrics
from ingest.points import batch_lines, status_line
from rules.catalog import load_catalog
from rules.engine import RulesEngine, alert_line
from simulators.scenario import load_scenario
from urbansense import __version__
from urbansense.identifiers import MEASUREMENTS
from urbansense.influx import InfluxClient
from urbansense.lineprotocol import encode_point
from urbansense.schema import AlertEvent, GatewayStatus, Sample

ROLLUP_1H = next(r for r in ROLLUPS if r.retention_policy == ROLLUP_RP)
TICK_MS = 30_000
TICKS = 40  # 20 minutes
#: Pudong's 50 devices with one of each incident, Xuhui's 640 devices, Pudong's river
#: and lake stations, its drainage and radiation stations, its tide gauges and buoys, its
#: utility tunnel, its chemical storage sites.
SCENARIOS = ("pudong-incidents", "district-scale", "huangpu-river-day", "typhoon-day", "hazmat-day")
#: Numeric values of the newest tick for the first device of a kind: the incidents.
INCIDENT = {"methane_lel_pct": 30, "fault_code": 3, "alarm_level": 1}


@dataclass
class CityData:
    start_ms: int
    end_ms: int
    devices: dict[str, tuple[str, str, str]]  # device -> (measurement, district, gateway)
    districts: set[str]
    gateways: set[str]


def _incident(sample: Sample, index: int) -> None:
    """The newest tick: device 0 of a kind in trouble (flags set, methane at 30 %LEL, a
    fault code), device 1 with every flag clear, so both "how many now" counts have rows."""
    for name, value in list(sample.f.items()):
        if isinstance(value, bool):
            sample.f[name] = index == 0
        elif name in INCIDENT:
            target = INCIDENT[name] if index == 0 else 0
            # keep the field's type: InfluxDB refuses an int into a float field
            sample.f[name] = float(target) if isinstance(value, float) else target


def simulate(influx: InfluxClient, *, seed: int = 7, end_ms: int | None = None) -> CityData:
    """Play each scenario's first TICKS poll steps (TICK_MS apart, ending at `end_ms`)
    offline, write the batches as the ingester would, plus alerts, AQI, gateway status
    and self-metrics."""
    rng = random.Random(seed)
    init_database(influx, influx.database)  # retention policies + roll-up CQs, as deployed
    end = end_ms or (int(time.time() * 1000) - 5_000)
    start = end - (TICKS - 1) * TICK_MS
    data = CityData(start, end, {}, set(), set())
    lines: list[str] = []
    # the rules engine, fed what the ingester writes, computes the water quality classes
    engine = RulesEngine([r for r in load_catalog() if r.kind == "water_class"])
    for name in SCENARIOS:
        scenario = load_scenario(name)
        for tick_no, tick in enumerate(scenario.play_offline(seed, start, step_s=TICK_MS / 1000)):
            last = tick_no == TICKS - 1
            for batch in tick.batches:
                data.districts.add(batch.district)
                data.gateways.add(batch.gw)
                kinds: dict[tuple[str, frozenset[str]], int] = {}
                for sample in batch.samples:
                    data.devices[sample.dev] = (sample.m, batch.district, batch.gw)
                    if last and sample.q != "bad":
                        kind = (sample.m, frozenset(sample.f))
                        kinds[kind] = kinds.get(kind, -1) + 1
                        _incident(sample, kinds[kind])
                if tick_no == TICKS // 2 and batch.samples:
                    # one device per gateway and measurement times out once: the "not answering" tables
                    last_of = {s.m: i for i, s in enumerate(batch.samples)}
                    for i in last_of.values():
                        batch.samples[i] = Sample(batch.samples[i].dev, batch.samples[i].m, tick.t_ms,
                                                  {}, q="bad", err="timeout")
                lines += batch_lines(batch)
                engine.ingest([batch])
                lines.append(status_line(batch.district, batch.gw, GatewayStatus(
                    "online", tick.t_ms, version=__version__, devices={s.dev: "fail" if s.q == "bad" else "ok"
                                                                       for s in batch.samples},
                    stats={"wal_depth": float(tick_no % 5), "reconnects": float(tick_no // 10),
                           "wal_dropped": 0.0}, config_hash="3f2a9c0d11e4", config_version="v1"),
                    clock_offset_s=0.02 + 0.01 * (tick_no % 3)))
            if last:
                break
    lines += _alerts(data)
    lines += _aqi(data, rng)
    lines += engine.derived_lines()
    lines += _self_metrics(data)
    for i in range(0, len(lines), 5000):
        influx.write("\n".join(lines[i:i + 5000]))
    write_rollups(influx)
    return data
def _alerts(data: CityData) -> list[str]:
    """Per domain: one alert still firing (critical), one that fired and resolved."""
    lines = []
    by_domain: dict[str, list[tuple[str, str]]] = {}
    for dev, (m, district, _gw) in data.devices.items():
        by_domain.setdefault(m, []).append((dev, district))
    t0 = data.start_ms + 5 * TICK_MS
    for domain in MEASUREMENTS:
        for i, (dev, district) in enumerate(by_domain.get(domain, [])[:2]):
            rule = f"{domain}.dashboard_test"
            events = ["pending", "firing"] + (["resolved"] if i == 1 else [])
            for k, state in enumerate(events):
                lines.append(alert_line(AlertEvent(
                    id=f"{rule}:{district}:{dev}", rule=rule, domain=domain,
                    severity="critical" if i == 0 else "warning", state=state, district=district,
                    device=dev, metric="x", value=1.0 + k, threshold=1.0, started=t0,
                    t=t0 + k * TICK_MS * 3, message=f"test alert {state} on {dev}")))
    # a system alert (no device): a gateway silent
    lines.append(alert_line(AlertEvent(
        id="system.gateway_silent:pudong:", rule="system.gateway_silent", domain="system",
        severity="warning", state="firing", district="pudong", device=None, metric=None,
        value=None, threshold=None, started=t0, t=t0, message="gateway silent")))
    return lines


def _aqi(data: CityData, rng: random.Random) -> list[str]:
    lines = []
    stations = [(d, district) for d, (m, district, _g) in data.devices.items() if m == "air"]
    for tick in range(0, TICKS, 2):
        t = data.start_ms + tick * TICK_MS
        for dev, district in stations:
            aqi = 40 + tick + rng.randint(0, 5)
            lines.append(encode_point("aqi", {"district": district, "device": dev}, {
                "aqi": aqi, "level": "good" if aqi > 50 else "excellent",
                "primary": "pm25" if aqi > 50 else "", "iaqi_pm25": float(aqi)}, t))
    return lines


def _self_metrics(data: CityData) -> list[str]:
    """The ingester's points as its own IngestMetrics writes them (so a panel on a field
    it stops writing has no data), and the rules engine's."""
    lines = []
    ingest = IngestMetrics("ingest-1")
    for tick in range(TICKS):
        t = data.start_ms + tick * TICK_MS
        ingest.messages(8, decoded_by="c")
        ingest.messages(1, decoded_by="python")
        ingest.messages(1, decoded_by="full")
        ingest.batch_written(1000, 0.0125)
        if tick % 20 == 19:
            ingest.deadletter("payload")
        if tick % 15 == 14:
            ingest.sequence(0, 1)
        if tick % 7 == 6:
            ingest.retry()
        lines.append(ingest.influx_line(t, queue_depth=tick % 3))
        lines.append(encode_point("urbansense_rules", {"instance": "rules-1"}, {
            "samples_per_s": 90.0, "alerts_active": 5.0, "eval_latency_ms": 0.8}, t))
    return lines


def write_rollups(influx: InfluxClient) -> None:
    """Run the ingester's 1 h roll-up continuous queries once over what was written (a
    CQ only covers its last few windows when InfluxDB schedules it)."""
    for source in MEASUREMENTS:
        _name, statement = continuous_query(influx.database, source, ROLLUP_1H)
        select = statement.split(" BEGIN ", 1)[1].rsplit(" END", 1)[0]
        head, group = select.split(" GROUP BY ", 1)
        influx.query(f"{head} WHERE time > now() - 1d GROUP BY {group}")
