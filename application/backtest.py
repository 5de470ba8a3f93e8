"""Backtest: run the rules over a simulated scenario (offline, accelerated) or over data
already in InfluxDB, and score them against the simulator's ground truth.

Scoring, per ground-truth incident:
- detected: a firing *hazard* or *maintenance* alert (the hazard, its early warning, or
  the ticket a precursor raised) of the incident's domain and district on one of its
  devices (or on a group, e.g. a circuit, that one of its devices belongs to) between its
  `warn_from` (its start, or earlier by its precursor's length) and its end plus
  `grace_s`; a sensor-health alert (stuck, drifting, spiking, silent) there does not
  count as a detection, nor does its time as a lead: it is listed apart (unless the
  incident is a sensor's own failure, `sensor: true`: a detector going blind);
- lead time: hazard_crossed_at minus the first such alert (positive = early);
- false alarms: firing hazard alerts that match no incident and no sensor fault, per
  1,000 device-hours of the scenario; health alerts and maintenance tickets that match
  nothing are counted apart.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rules.catalog import Rule, load_catalog
from rules.engine import RulesEngine
from rules.inventory import InventoryDevice
from urbansense.schema import AlertEvent, Sample, TelemetryBatch

if TYPE_CHECKING:
    from simulators.scenario import Scenario

#: An alert up to this long after an incident ends still belongs to it (resolution lag).
GRACE_S = 900.0


@dataclass(slots=True)
class IncidentScore:
    record: dict[str, Any]
    detected: bool
    first_alert: AlertEvent | None
    lead_time_s: float | None  # hazard_crossed_at - first alert; None without a hazard crossing
    alerts: list[AlertEvent] = field(default_factory=list)
    #: sensor-health alerts on its devices in its time (not a detection)
    health_alerts: list[AlertEvent] = field(default_factory=list)


@dataclass(slots=True)
class BacktestResult:
    name: str
    start_ms: int
    end_ms: int
    devices: int
    incidents: list[IncidentScore]
    faults: list[IncidentScore]
    false_alarms: list[AlertEvent]
    events: list[AlertEvent]
    samples: int
    signals: dict[tuple[str, str], list[tuple[int, float]]] = field(default_factory=dict)
    #: sensor-health alerts that match no incident and no fault
    health_unmatched: list[AlertEvent] = field(default_factory=list)
    #: maintenance tickets that match no incident (a worn part that did not fail today)
    maintenance_unmatched: list[AlertEvent] = field(default_factory=list)

    @property
    def device_hours(self) -> float:
        return self.devices * (self.end_ms - self.start_ms) / 3_600_000.0

    @property
    def false_alarms_per_1000_device_hours(self) -> float:
        return 1000.0 * len(self.false_alarms) / self.device_hours if self.device_hours > 0 else 0.0

    @property
    def missed(self) -> list[IncidentScore]:
        return [s for s in self.incidents if not s.detected]


def _group_labels(inventory: list[InventoryDevice]) -> dict[tuple[str, str], set[str]]:
    """(district, device) -> the names an alert about it may carry (itself, its groups)."""
    out: dict[tuple[str, str], set[str]] = {}
    for d in inventory:
        out[(d.district, d.device)] = {d.device, d.district, *d.labels.values()}
    return out


def _matches(rec: dict[str, Any], ev: AlertEvent, names: dict[tuple[str, str], set[str]],
             grace_ms: int) -> bool:
    if ev.district != rec["district"] or not (rec.get("warn_from", rec["start"]) <= ev.t <= rec["end"] + grace_ms):
        return False
    if ev.domain not in (rec["domain"], "system"):
        return False
    devices = rec.get("devices") or ([rec["device"]] if rec.get("device") else [])
    return any(ev.device in names.get((rec["district"], d), {d}) for d in devices)


def health_rules(rules: Iterable[Rule]) -> frozenset[str]:
    """The ids of the rules whose alerts are about a sensor's or a device's health."""
    return frozenset(r.id for r in rules if r.purpose == "health")


def maintenance_rules(rules: Iterable[Rule]) -> frozenset[str]:
    """The ids of the rules whose alerts are maintenance tickets (equipment degrading)."""
    return frozenset(r.id for r in rules if r.purpose == "maintenance")


def score(name: str, truth: list[dict[str, Any]], events: list[AlertEvent], inventory: list[InventoryDevice],
          start_ms: int, end_ms: int, samples: int = 0, grace_s: float = GRACE_S,
          health: frozenset[str] = frozenset(), maintenance: frozenset[str] = frozenset()) -> BacktestResult:
    """Score `events` against the ground truth; `health` names the sensor-health rules,
    whose alerts are listed apart, `maintenance` the rules whose unmatched tickets are
    counted apart from false alarms (see the module's doc)."""
    names = _group_labels(inventory)
    grace = int(grace_s * 1000)
    # an automatic response's outcome is an event of an alert already counted, not another alert
    firing = [e for e in events if e.state == "firing" and e.response is None]
    claimed: set[int] = set()

    def judge(rec: dict[str, Any], detect_on_health: bool) -> IncidentScore:
        matched = [e for e in firing if _matches(rec, e, names, grace)]
        claimed.update(id(e) for e in matched)
        hits = [e for e in matched if detect_on_health or e.rule not in health]
        first = min(hits, key=lambda e: e.t) if hits else None
        crossed = rec.get("hazard_crossed_at")
        lead = (crossed - first.t) / 1000.0 if first is not None and crossed is not None else None
        return IncidentScore(rec, first is not None, first, lead, hits,
                             [e for e in matched if e.rule in health])

    # light rain and the like (`benign`) asks for no detection; alerts it causes stay unclaimed
    incidents = [judge(r, bool(r.get("sensor"))) for r in truth if r["kind"] == "incident" and not r.get("benign")]
    faults = [judge(r, True) for r in truth if r["kind"] == "fault"]  # a sensor fault: health alerts find it
    unclaimed = [e for e in firing if id(e) not in claimed]
    return BacktestResult(name, start_ms, end_ms, len(inventory), incidents, faults,
                          [e for e in unclaimed if e.rule not in health and e.rule not in maintenance], events,
                          samples, health_unmatched=[e for e in unclaimed if e.rule in health],
                          maintenance_unmatched=[e for e in unclaimed if e.rule in maintenance])


def run_engine(engine: RulesEngine, ticks: Iterable[tuple[int, list[TelemetryBatch]]],
               watch: set[tuple[str, str, str]] | None = None,
               signals: dict[tuple[str, str], list[tuple[int, float]]] | None = None) -> tuple[list[AlertEvent], int]:
    """Feed ticks to the engine; records `watch`ed (district, device, metric) values into `signals`."""
    events: list[AlertEvent] = []
    samples = 0
    watched = {(d, dev): m for d, dev, m in watch or set()}
    for _t, batches in ticks:
        events.extend(engine.ingest(batches))
        for b in batches:
            samples += len(b.samples)
            if watched and signals is not None:
                for s in b.samples:
                    metric = watched.get((b.district, s.dev))
                    if metric is not None and metric in s.f:
                        signals.setdefault((s.dev, metric), []).append((s.t, float(s.f[metric])))
    return events, samples


def run_scenario(scenario: str | Path, rules: list[Rule] | None = None, *, seed: int = 1,
                 start_ms: int | None = None, progress: bool = False) -> BacktestResult:
    """Play a simulator scenario offline through the engine and score it."""
    from rules.inventory import from_gateways
    from simulators.incidents import INCIDENT_TYPES
    from simulators.scenario import load_scenario

    sc = load_scenario(scenario)
    start = sc.default_start_ms() if start_ms is None else start_ms
    end = start + int(sc.duration_s * 1000)
    inventory = from_gateways(sc.loaded_for(seed))
    rules = rules if rules is not None else load_catalog()
    engine = RulesEngine(rules, inventory)
    seed_history(engine, sc, seed, start)
    truth = sc.ground_truth(seed, start)
    watch: set[tuple[str, str, str]] = set()
    for rec in truth:
        if rec["kind"] == "incident":
            metric = rec.get("metric") or INCIDENT_TYPES[rec["type"]].metric
            for dev in (rec.get("devices") or [rec["device"]])[:4]:
                watch.add((rec["district"], dev, metric))
    signals: dict[tuple[str, str], list[tuple[int, float]]] = {}
    ticks: Iterator[tuple[int, list[TelemetryBatch]]] = ((t.t_ms, t.batches) for t in sc.play_offline(seed, start))
    if progress:
        ticks = _with_progress(ticks, start, end, sc.name)
    events, samples = run_engine(engine, ticks, watch, signals)
    result = score(sc.name, truth, events, inventory, start, end, samples, health=health_rules(rules),
                   maintenance=maintenance_rules(rules))
    result.signals = signals
    return result


def past_record(scenario: Scenario, seed: int, start_ms: int, needs: list[tuple[str, str, float]],
                every_s: float = 600.0) -> Iterator[TelemetryBatch]:
    """The readings the devices that rules need a record of (`needs`, from
    RulesEngine.history_needs) would have sent before the scenario's start, one every
    `every_s`, as batches per gateway: what a live city's InfluxDB already holds."""
    world = scenario.world(seed, start_ms)
    longest = {m: max(h for mm, _f, h in needs if mm == m) for m, _f, _h in needs}
    step = int(every_s * 1000)
    first = start_ms - int(max(longest.values(), default=0) * 1000)
    for gw in world.gateways:
        devs = [d for d in gw.devices if d.profile.measurement in longest]
        if not devs:
            continue
        for t in range(first - first % step, start_ms, step):
            samples = [Sample(dev=d.id, m=d.profile.measurement, t=t, f=dict(d.model.values(t, [])))
                       for d in devs if t >= start_ms - longest[d.profile.measurement] * 1000]
            if samples:
                yield TelemetryBatch(gw=gw.name, district=gw.district, seq=0, sent=t, samples=samples)


def seed_history(engine: RulesEngine, scenario: Scenario, seed: int, start_ms: int) -> int:
    """The past record rules need before they can speak (a tide station's weeks of level
    for its harmonic fit), taken hourly from the simulation before the scenario's start:
    what a live engine reads back from InfluxDB. Returns the devices seeded."""
    needs = engine.history_needs()
    if not needs:
        return 0
    world = scenario.world(seed, start_ms)
    seeded = 0
    for measurement, metric, history_s in needs:
        # one reading at the middle of each hour, as an hour's mean stands for it
        first = start_ms - int(history_s * 1000) // 3_600_000 * 3_600_000
        hours = range(first - first % 3_600_000 + 1_800_000, start_ms - 3_600_000, 3_600_000)
        for dev in world.devices.values():
            if dev.profile.measurement != measurement or metric not in {f.name for f in dev.profile.fields}:
                continue
            values = [float(dev.model.values(t, [])[metric]) for t in hours]
            seeded += engine.seed_history(dev.district, dev.id, measurement, metric, list(hours), values)
    return seeded


def _with_progress(ticks: Iterator[tuple[int, list[TelemetryBatch]]], start: int, end: int,
                   name: str) -> Iterator[tuple[int, list[TelemetryBatch]]]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn(f"backtest {name}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TextColumn("{task.fields[hours]:.1f} h simulated"), TimeElapsedColumn(),
                  TimeRemainingColumn()) as bar:
        task = bar.add_task("play", total=end - start, hours=0.0)
        for t, batches in ticks:
            yield t, batches
            bar.update(task, completed=t - start, hours=(t - start) / 3_600_000)
        bar.update(task, completed=end - start)


def run_influx(influx_url: str, database: str, start_ms: int, end_ms: int, rules: list[Rule] | None,
               inventory: list[InventoryDevice], truth: list[dict[str, Any]], *,
               progress: bool = False) -> BacktestResult:
    """Replay data already in InfluxDB between start_ms and end_ms."""
    from rules.warmstart import influx_ticks
    from urbansense.influx import InfluxClient

    client = InfluxClient(influx_url, database)
    rules = rules if rules is not None else load_catalog()
    engine = RulesEngine(rules, inventory)
    ticks: Iterator[tuple[int, list[TelemetryBatch]]] = influx_ticks(client, start_ms, end_ms)
    if progress:
        ticks = _with_progress(ticks, start_ms, end_ms, f"{database} {start_ms}..{end_ms}")
    events, samples = run_engine(engine, ticks)
    return score(database, truth, events, inventory, start_ms, end_ms, samples, health=health_rules(rules),
                 maintenance=maintenance_rules(rules))


# ---------------------------------------------------------------------------- report


def _fmt_lead(score_: IncidentScore) -> str:
    if score_.lead_time_s is None:
        return "-"
    return f"{score_.lead_time_s / 60:+.1f} min"


def print_report(result: BacktestResult) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)
    table = Table(title=f"backtest {result.name}: incidents")
    for col in ("type", "where", "start", "detected", "first alert", "rule", "lead time"):
        table.add_column(col)
    for s in result.incidents:
        rec = s.record
        devices = rec.get("devices", [])
        where = rec.get("device") or ",".join(devices[:3]) + ("..." if len(devices) > 3 else "")
        first = s.first_alert
        table.add_row(rec["type"], f"{rec['district']}/{where}", _clock(rec["start"], result.start_ms),
                      "[green]yes[/]" if s.detected else "[red]MISSED[/]",
                      _clock(first.t, result.start_ms) if first else "-", first.rule if first else "-",
                      _fmt_lead(s))
    console.print(table)
    if result.faults:
        ft = Table(title="sensor faults")
        for col in ("type", "device", "metric", "detected", "rule"):
            ft.add_column(col)
        for s in result.faults:
            ft.add_row(s.record["type"], ",".join(s.record.get("devices", [])[:3]), str(s.record.get("metric")),
                       "yes" if s.detected else "no", s.first_alert.rule if s.first_alert else "-")
        console.print(ft)
    console.print(f"samples evaluated: {result.samples:,}; device-hours: {result.device_hours:,.1f}; "
                  f"alert events: {len(result.events)}; false alarms: {len(result.false_alarms)} "
                  f"= {result.false_alarms_per_1000_device_hours:.2f} per 1,000 device-hours")
    for e in result.false_alarms[:20]:
        console.print(f"  false alarm: {_clock(e.t, result.start_ms)} {e.id} {e.message}")
    health = sum(len(s.health_alerts) for s in result.incidents)
    if health or result.health_unmatched:
        console.print(f"sensor-health alerts (not detections, not false alarms): {health} during incidents, "
                      f"{len(result.health_unmatched)} matching no incident or fault")
    if result.maintenance_unmatched:
        console.print(f"maintenance tickets matching no incident: {len(result.maintenance_unmatched)}")


def _clock(t: int, start: int) -> str:
    s = (t - start) / 1000.0
    return f"+{int(s // 3600)}:{int(s % 3600 // 60):02d}:{int(s % 60):02d}"


def plot_incidents(result: BacktestResult, out_dir: Path, rules: list[Rule] | None = None) -> list[Path]:
    """One PNG per incident: the signal, the hazard threshold, alert times and hazard crossing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for n, s in enumerate(result.incidents):
        rec = s.record
        fig, ax = plt.subplots(figsize=(9, 4))
        metric = None
        for dev in (rec.get("devices") or [rec.get("device")])[:4]:
            for (d, m), points in result.signals.items():
                if d != dev:
                    continue
                metric = m
                xs = [(t - rec["start"]) / 60000.0 for t, _v in points]
                ax.plot(xs, [v for _t, v in points], lw=1, label=f"{dev} {m}")
        if rec.get("hazard_threshold") is not None:
            ax.axhline(rec["hazard_threshold"], color="red", ls="--", lw=1, label="hazard threshold")
        if rec.get("hazard_crossed_at") is not None:
            ax.axvline((rec["hazard_crossed_at"] - rec["start"]) / 60000.0, color="red", lw=1.5,
                       label="hazard crossed")
        for i, e in enumerate(sorted(s.alerts, key=lambda e: e.t)[:8]):
            ax.axvline((e.t - rec["start"]) / 60000.0, color="orange" if e.severity != "critical" else "purple",
                       ls=":", lw=1.2, label=f"{e.rule} ({e.severity})" if i < 6 else None)
        lead = f", lead {s.lead_time_s / 60:.1f} min" if s.lead_time_s is not None else ""
        ax.set_title(f"{rec['type']} at {rec.get('device') or rec['district']}"
                     f" - {'detected' if s.detected else 'MISSED'}{lead}")
        ax.set_xlabel("minutes from incident start")
        ax.set_ylabel(metric or "value")
        ax.set_xlim(-15, (rec["end"] - rec["start"]) / 60000.0 + 15)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        path = out_dir / f"{result.name}-{n:02d}-{rec['type']}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths


def summary(result: BacktestResult) -> dict[str, Any]:
    """Machine-readable result (for --json and tests)."""
    return {
        "scenario": result.name,
        "devices": result.devices,
        "device_hours": round(result.device_hours, 2),
        "samples": result.samples,
        "false_alarms": len(result.false_alarms),
        "false_alarms_per_1000_device_hours": round(result.false_alarms_per_1000_device_hours, 3),
        "health_alerts_unmatched": len(result.health_unmatched),
        "maintenance_tickets_unmatched": len(result.maintenance_unmatched),
        "incidents": [{
            "type": s.record["type"], "device": s.record.get("device"), "detected": s.detected,
            "first_alert_rule": s.first_alert.rule if s.first_alert else None,
            "lead_time_s": None if s.lead_time_s is None or math.isnan(s.lead_time_s) else s.lead_time_s,
            "health_alerts": len(s.health_alerts),
        } for s in result.incidents],
    }
