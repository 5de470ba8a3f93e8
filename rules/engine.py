"""The rules engine: telemetry batches in, alert events out, all on event time.

A chunk of batches becomes, per measurement, columns (device index, t, one float array
per metric); a device that appears twice in a chunk splits it into rounds so every
round has each device at most once and rounds run in event-time order. Each rule
evaluates a round with a few numpy operations, the lifecycle (rules/lifecycle.py)
runs over the resulting arrays, and only the transitions become Python objects.

`alert_line(event)` encodes an event as an InfluxDB `alerts` point (also used by the
dashboards' tests to write test alerts); `alert_lines(event)` adds, on an escalation, the
point that closes the replaced severity's entry.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from rules.catalog import (
    CompositeRule,
    GatewayClockRule,
    GatewayOfflineRule,
    GeofenceRule,
    PlumeRule,
    Rule,
    TideForecastRule,
    WaterClassRule,
)
from rules.devices import NEVER, Devices, Index, Round
from rules.flapping import FLAP_CHANGES, FLAP_CLEAR_S, FLAP_WINDOW_S
from rules.inventory import InventoryDevice
from rules.kinds import (
    KIND_EVALUATORS,
    Buffers,
    CompositeEval,
    DeadmanEval,
    Evaluator,
    Signals,
    TideForecastEval,
)
from rules.lifecycle import (
    SEVERITY_LEVELS,
    AlertState,
    Change,
    EpisodeChange,
    Publisher,
    Signal,
    State,
    step,
    step_many,
)
from rules.motion import MOTION_EVALUATORS, GeofenceEval
from rules.plume import PlumeEval
from rules.silences import SilenceSet
from rules.sun import sun_elevation_deg
from urbansense import topics
from urbansense.lineprotocol import encode_point
from urbansense.schema import AlertEvent, Forecast, GatewayStatus, TelemetryBatch

log = logging.getLogger("urbansense.rules")
EVALUATORS: dict[str, type[Evaluator]] = {**KIND_EVALUATORS, **MOTION_EVALUATORS}
_CLEAR, _BREACH = int(Signal.CLEAR), int(Signal.BREACH)

#: The rule id of a device's flapping (sensor-health) episode; not a catalogue rule.
FLAPPING_RULE = "system.flapping"

DEFAULT_MESSAGES = {
    "threshold": "{metric} at {device} is {value:.4g}, {op} {threshold:g}",
    "rate": "{metric} at {device} changing {value:+.3g} per minute ({op} {threshold:g})",
    "forecast": ("{metric} at {device} at {value:.4g} and heading for {threshold:g}; "
                 "expected in about {eta_min:.0f} min"),
    "anomaly": "{metric} at {device} is {value:.4g}, far off its recent median (modified z-score > {threshold:g})",
    "flatline": "{metric} at {device} stuck at {value:.4g} for more than {threshold:g} s",
    "drift": "{metric} at {device} is drifting (CUSUM > {threshold:g} sigma); now {value:.4g}",
    "deadman": "No data from {device} for {value:.0f} s (limit {threshold:g} s)",
    "gateway_offline": "Gateway {device} in {district} is offline",
    "gateway_clock": ("Gateway {device} in {district}: clock {value:+.0f} s off (limit {threshold:g} s); its "
                      "readings' times are in doubt, fix its NTP"),
    "composite": "{rule} at {device}",
    "aqi": "AQI at {device} is {value:.0f} (threshold {threshold:g})",
    "water_class": "{device} is {class_name} under GB 3838-2002 (target {target_name}), set by {deciding}",
    "geofence": "{device} in {zone} ({rule})",
    "driving_time": "{device} driving {value:.1f} h without a rest (limit {threshold:g} h)",
    "plume": "The plume of the leak at {source} reaches {device} in about {eta_min:.0f} min ({value:.0f} predicted)",
}


class _Fields(dict[str, object]):
    def __missing__(self, key: str) -> str:
        return "?"


def _message(rule: Rule, fields: dict[str, object]) -> str:
    template = rule.message or DEFAULT_MESSAGES.get(rule.kind, "{rule} at {device}")
    try:
        return template.format_map(_Fields(fields))
    except (ValueError, TypeError):
        return DEFAULT_MESSAGES.get(rule.kind, "{rule} at {device}").format_map(
            _Fields({k: (v if v is not None else float("nan")) for k, v in fields.items()}))


@dataclass(slots=True)
class _GatewayAlert:
    state: AlertState
    t: int
    value: float | None = None  # a clock rule's offset (s)


class RulesEngine:
    def __init__(self, rules: list[Rule], inventory: list[InventoryDevice] | None = None, *,
                 flap_changes: int = FLAP_CHANGES, flap_window_s: float = FLAP_WINDOW_S,
                 flap_clear_s: float = FLAP_CLEAR_S) -> None:
        self.devices = Devices()
        self.buffers = Buffers(self.devices)
        self.silences = SilenceSet()
        self.publisher = Publisher(flap_changes, int(flap_window_s * 1000), int(flap_clear_s * 1000))
        self.evaluators: dict[str, Evaluator] = {}
        self.gateway_rules: list[GatewayOfflineRule | GatewayClockRule] = []
        self._gateway_alerts: dict[tuple[str, str, str], _GatewayAlert] = {}
        self.samples_seen = 0
        self.newest_t = 0
        self._install(rules)
        if inventory:
            self.devices.seed(inventory)
            for problem in self.unlabelled():
                log.warning("%s", problem)

    def unlabelled(self) -> list[str]:
        """Inventory devices a rule judges against their own label (offset_from,
        target_label) that have no number in it, said in words a user can act on."""
        out: list[str] = []
        for r in self.rules:
            label = getattr(r, "reference_label", None) or getattr(r, "target_label", None)
            if label is None:
                continue
            values = self.devices.label_values(label)
            metric = getattr(r, "metric", None)
            devs = self.devices
            # a device whose profile does not read the rule's metric is none of its business
            missing = [devs.device[i] for i in devs.of_measurement(getattr(r, "measurement", None))
                       if devs.expected[i] and np.isnan(values[i])
                       and (metric is None or not devs.fields[i] or metric in devs.fields[i])]
            if not missing:
                continue
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            if isinstance(r, WaterClassRule):
                out.append(f"rule {r.id}: {shown} have no class in label {label!r}; judged against "
                           f"class {r.target} (fix: add labels: {{{label}: III}} or the like to its gateway config)")
            else:
                out.append(f"rule {r.id}: {shown} have no number in label {label!r}; the rule does "
                           f"not judge them (fix: add labels: {{{label}: ...}} to each in its gateway config)")
        return out

    # ------------------------------------------------------------------ rules
    def _install(self, rules: list[Rule], keep: dict[str, Evaluator] | None = None) -> None:
        self.rules = rules
        self.evaluators = {}
        self.gateway_rules = [r for r in rules if isinstance(r, GatewayOfflineRule | GatewayClockRule)]
        later = CompositeRule | TideForecastRule | GeofenceRule | PlumeRule  # built after the rules they read
        ordered: list[Rule] = [r for r in rules if not isinstance(r, later | GatewayOfflineRule | GatewayClockRule)]
        ordered += [r for r in rules if isinstance(r, later)]
        for r in ordered:
            old = (keep or {}).get(r.id)
            same_parts = not isinstance(old, CompositeEval | GeofenceEval | PlumeEval) or all(
                self.evaluators.get(d) is dep for d, dep in zip(r.parts, old.deps, strict=False))  # type: ignore[union-attr]
            if isinstance(old, TideForecastEval) and isinstance(r, TideForecastRule):
                same_parts = old.rain is (self.evaluators.get(r.rain_from) if r.rain_from else None)
            if old is not None and old.rule == r and same_parts:
                self.evaluators[r.id] = old  # unchanged: keep every bit of state
                continue
            if isinstance(r, CompositeRule):
                ev: Evaluator = CompositeEval(r, self.devices, self.buffers,
                                              [self.evaluators[d] for d in r.parts])
            elif isinstance(r, GeofenceRule):
                ev = GeofenceEval(r, self.devices, self.buffers, [self.evaluators[d] for d in r.parts])
            elif isinstance(r, PlumeRule):
                ev = PlumeEval(r, self.devices, self.buffers, [self.evaluators[d] for d in r.parts])
            elif isinstance(r, TideForecastRule):
                ev = TideForecastEval(r, self.devices, self.buffers,
                                      self.evaluators.get(r.rain_from) if r.rain_from else None)
            else:
                ev = EVALUATORS[r.kind](r, self.devices, self.buffers)
            if old is not None and type(old) is type(ev):
                ev.lifecycle = old.lifecycle  # changed thresholds: alerts already firing stay firing
            self.evaluators[r.id] = ev
        self._by_measurement: dict[str, list[Evaluator]] = {}
        # Sensor-health rules run first in a round, so an early warning on the same sensor
        # in that round already knows it is suspect (composites stay after their parts).
        for ev in sorted(self.evaluators.values(),
                         key=lambda e: (isinstance(e, CompositeEval), e.rule.purpose != "health")):
            if ev.measurement is not None and not isinstance(ev, DeadmanEval):
                self._by_measurement.setdefault(ev.measurement, []).append(ev)
        self._holds = _health_holds(list(self.evaluators.values()))
        self._deadman = [ev for ev in self.evaluators.values() if isinstance(ev, DeadmanEval)]
        self._metrics: dict[str, set[str]] = {}
        for m, evs in self._by_measurement.items():
            self._metrics[m] = {metric for ev in evs for metric in ev.metrics}

    def history_needs(self) -> list[tuple[str, str, float]]:
        """(measurement, metric, seconds) of past record some rule needs (a tide fit)."""
        needs = {n for ev in self.evaluators.values() if (n := ev.history_needs()) is not None}
        return sorted(needs)

    def seed_history(self, district: str, device: str, measurement: str, metric: str,
                     t_ms: list[int], values: list[float]) -> bool:
        """Give the rules that need it a device's past record; False for an unknown device."""
        i = self.devices.index.get((district, device))
        if i is None:
            return False
        for ev in self.evaluators.values():
            if ev.history_needs() is not None and ev.measurement == measurement and metric in ev.metrics:
                ev.seed_history(i, t_ms, values)
        return True

    def reload(self, rules: list[Rule]) -> list[AlertEvent]:
        """Swap in a new rule set keeping the state of every unchanged rule; alerts of
        rules that disappeared are resolved."""
        old = self.evaluators
        self._install(rules, keep=old)
        events: list[AlertEvent] = []
        for rid, ev in old.items():
            if rid in self.evaluators:
                continue
            firing = np.flatnonzero(ev.lifecycle.state == State.FIRING)
            for key in firing:
                events.extend(self._emit(ev, int(key), Change.RESOLVED, int(ev.lifecycle.severity[key]),
                                         self.newest_t, math.nan, math.nan, None))
        return events

    # ------------------------------------------------------------------ input
    def ingest(self, batches: Iterable[TelemetryBatch]) -> list[AlertEvent]:
        cols: dict[str, tuple[list[int], list[int], list[dict[str, object]]]] = {}
        index = self.devices.index
        touched_gw: set[int] = set()
        last_seen = self.devices.last_seen
        for b in batches:
            district = b.district
            g = -1
            newest = NEVER
            for s in b.samples:
                if s.t > newest:
                    newest = s.t
                if s.q == "bad":
                    continue
                i = index.get((district, s.dev))
                if i is None:
                    i = self.devices.add(district, b.gw, s.dev, s.m)
                    last_seen = self.devices.last_seen
                col = cols.get(s.m)
                if col is None:
                    col = cols[s.m] = ([], [], [])
                col[0].append(i)
                col[1].append(s.t)
                col[2].append(s.f)  # type: ignore[arg-type]
                if s.t > last_seen[i]:
                    last_seen[i] = s.t
            if newest > NEVER:
                g = self.devices.gateways.get(district, b.gw)
                self.devices.gateways.saw(g, newest)
                touched_gw.add(g)
                if newest > self.newest_t:
                    self.newest_t = newest
        events: list[AlertEvent] = []
        for m, (devs, ts, fs) in cols.items():
            self.samples_seen += len(devs)
            evs = self._by_measurement.get(m)
            if not evs:
                continue
            for rnd in self._rounds(m, np.asarray(devs, np.intp), np.asarray(ts, np.int64), fs):
                self.buffers.next_round()
                for ev in evs:
                    sigs = ev.evaluate(rnd)
                    if sigs is not None:
                        events.extend(self._apply(ev, sigs))
        if touched_gw and self._deadman:
            gws = np.fromiter(touched_gw, np.intp, len(touched_gw))
            for dm in self._deadman:
                sigs = dm.evaluate_gateways(gws)
                if sigs is not None:
                    events.extend(self._apply(dm, sigs))
        events.extend(self._gateway_tick())
        for alert_id, change, sev in self.publisher.settle(self.newest_t):
            events.extend(self._owed(alert_id, change, sev))
        for ep in self.publisher.episode_changes():
            events.extend(self._episode_event(ep))
        return events

    def _rounds(self, m: str, dev: Index, t: np.ndarray, fs: list[dict[str, object]]) -> list[Round]:
        metrics = self._metrics.get(m, set())
        values: dict[str, np.ndarray] = {}
        n = len(dev)
        for metric in metrics:
            try:
                values[metric] = np.array([f.get(metric, math.nan) for f in fs], np.float64)
            except (TypeError, ValueError):  # a string where a number belongs: treat as missing
                values[metric] = np.array([_as_float(f.get(metric)) for f in fs], np.float64)
        if len(np.unique(dev)) == n:
            if n > 1 and np.any(np.diff(t) < 0):
                order = np.argsort(t, kind="stable")
                dev, t = dev[order], t[order]
                values = {k: v[order] for k, v in values.items()}
            return [Round(m, dev, t, values)]
        # The k-th sample of each device (in event time) goes to round k.
        order = np.lexsort((t, dev))
        sdev = dev[order]
        starts = np.r_[0, np.flatnonzero(np.diff(sdev)) + 1]
        rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
        rounds = []
        for k in range(int(rank.max()) + 1):
            sel = order[rank == k]
            sel = sel[np.argsort(t[sel], kind="stable")]
            rounds.append(Round(m, dev[sel], t[sel], {key: v[sel] for key, v in values.items()}))
        return rounds

    def status(self, district: str, gateway: str, status: GatewayStatus) -> list[AlertEvent]:
        """A gateway birth/last-will message."""
        events: list[AlertEvent] = []
        sig = Signal.BREACH if status.state == "offline" else Signal.CLEAR
        for rule in self.gateway_rules:
            if isinstance(rule, GatewayOfflineRule):
                events.extend(self._gateway_step(rule, district, gateway, sig, status.t))
        return events

    def clock(self, district: str, gateway: str, offset_s: float, t: int) -> list[AlertEvent]:
        """A gateway's clock offset, measured as one of its batches arrived (event time t)."""
        events: list[AlertEvent] = []
        for rule in self.gateway_rules:
            if isinstance(rule, GatewayClockRule):
                sig = Signal.BREACH if abs(offset_s) > rule.max_offset_s else Signal.CLEAR
                events.extend(self._gateway_step(rule, district, gateway, sig, t, offset_s))
        return events

    def _gateway_step(self, rule: GatewayOfflineRule | GatewayClockRule, district: str, gateway: str, sig: Signal,
                      t: int, value: float | None = None) -> list[AlertEvent]:
        ga = self._gateway_alerts.setdefault((rule.id, district, gateway), _GatewayAlert(AlertState(), t))
        ga.t, ga.value = t, value
        change = step(ga.state, sig, t, int(rule.for_s * 1000), SEVERITY_LEVELS.index(rule.severity))
        return self._gateway_event(rule, district, gateway, change, t)

    def _gateway_tick(self) -> list[AlertEvent]:
        """Pending gateway-offline alerts advance on the newest event time of their district."""
        events: list[AlertEvent] = []
        for (rid, district, gateway), ga in self._gateway_alerts.items():
            if ga.state.state is not State.PENDING:
                continue
            rule = next(r for r in self.gateway_rules if r.id == rid)
            now = max((int(self.devices.gateways.now[i]) for (d, _g), i in self.devices.gateways.index.items()
                       if d == district), default=ga.t)
            change = step(ga.state, Signal.BREACH, now, int(rule.for_s * 1000),
                          SEVERITY_LEVELS.index(rule.severity))
            events.extend(self._gateway_event(rule, district, gateway, change, now))
        return events

    def _gateway_event(self, rule: GatewayOfflineRule | GatewayClockRule, district: str, gateway: str,
                       change: Change, t: int) -> list[AlertEvent]:
        if change is Change.NONE:
            return []
        alert_id = f"{rule.id}:{district}:{gateway}"
        sev = SEVERITY_LEVELS.index(rule.severity)
        labels: dict[str, str | None] = {"rule": rule.id, "domain": "system", "district": district,
                                         "device": gateway, "severity": rule.severity}
        out = self.publisher.offer(alert_id, change, sev, t, self.silences.silenced(labels, t))
        if out is Change.NONE:
            return []
        ga = self._gateway_alerts[(rule.id, district, gateway)]
        threshold = rule.max_offset_s if isinstance(rule, GatewayClockRule) else None
        msg = _message(rule, {"device": gateway, "district": district, "rule": rule.id, "value": ga.value,
                              "threshold": threshold})
        if out is Change.RESOLVED:
            msg = (f"Resolved: gateway {gateway} in {district} is back online" if threshold is None else
                   f"Resolved: gateway {gateway} in {district}: clock within {threshold:g} s")
        return [AlertEvent(id=alert_id, rule=rule.id, domain="system", severity=rule.severity,
                           state="resolved" if out is Change.RESOLVED else "firing", district=district,
                           device=gateway, metric="clock_offset_s" if threshold is not None else None,
                           value=ga.value, threshold=threshold,
                           started=ga.state.since, t=t, message=msg)]

    # ------------------------------------------------------------------ lifecycle -> events
    def _apply(self, ev: Evaluator, s: Signals) -> list[AlertEvent]:
        judged = ev.matching(s.keys)
        if judged is not None:
            if not judged.any():
                return []
            s = s.subset(judged)
        rule = ev.rule
        if rule.when_sun is not None and not isinstance(ev, CompositeEval | DeadmanEval):
            lat, lon = self.devices.lat[s.keys], self.devices.lon[s.keys]
            up = sun_elevation_deg(lat, lon, s.t) > rule.sun_elevation_deg
            applies = (up if rule.when_sun == "up" else ~up) & ~np.isnan(lat)
            s.sig = np.where(applies, s.sig, np.int8(_CLEAR)).astype(np.int8)
        holds = self._holds.get(rule.id)
        if holds:
            _hold_suspect(s, holds, rule.hold_ms)
        if ev.tracks_breach:
            breach = s.sig == _BREACH
            if breach.any():
                ev.last_breach[s.keys[breach]] = s.t[breach]
                ev.breach_value[s.keys[breach]] = s.value[breach]
        change = step_many(ev.lifecycle, s.keys, s.sig, s.t, ev.for_ms, s.sev)
        hits = np.flatnonzero(change)
        if len(hits) == 0 or not rule.publish:
            return []
        events: list[AlertEvent] = []
        for j in hits:
            eta = None if s.eta_s is None else float(s.eta_s[j])
            key = int(s.keys[j])
            what = Change(int(change[j]))
            sev = int(ev.lifecycle.severity[key]) if what is Change.RESOLVED else int(s.sev[j])
            events.extend(self._emit(ev, key, what, sev, int(s.t[j]), float(s.value[j]), float(s.threshold[j]),
                                     eta))
        return events

    def _emit(self, ev: Evaluator, key: int, change: Change, sev: int, t: int, value: float,
              threshold: float, eta_s: float | None) -> list[AlertEvent]:
        rule = ev.rule
        district, device = ev.key_label(key)
        alert_id = f"{rule.id}:{district}:{device}"
        severity = SEVERITY_LEVELS[sev]
        labels: dict[str, str | None] = {"rule": rule.id, "domain": rule.domain, "district": district,
                                         "device": device, "severity": severity}
        silenced = change is not Change.RESOLVED and self.silences.silenced(labels, t)
        before = self.publisher.published_severity(alert_id)
        out = self.publisher.offer(alert_id, change, sev, t, silenced)
        if out is Change.NONE:
            return []
        supersedes = SEVERITY_LEVELS[before] if out is Change.ESCALATED and 0 <= before != sev else None
        metric = ev.metrics[0] if ev.metrics else None
        val = None if math.isnan(value) else value
        thr = None if math.isnan(threshold) else threshold
        forecast = None
        if eta_s is not None and not math.isnan(eta_s) and out is not Change.RESOLVED:
            forecast = Forecast(crosses_at=t + int(eta_s * 1000), eta_s=round(eta_s, 1))
        fields: dict[str, object] = {
            "rule": rule.id, "device": device, "district": district, "metric": metric, "value": val,
            "threshold": thr, "op": getattr(rule, "op", ""), "severity": severity,
            "eta_min": (eta_s / 60.0) if eta_s is not None and not math.isnan(eta_s) else math.nan,
            **ev.describe(key),
        }
        if rule.affects_label is not None and ev.tracks_breach:  # keys are devices
            fields["affected"] = ev.affected(key, rule.affects_label)
        if out is Change.RESOLVED:
            # The firing template describes the breach ("below 0.2 MPa", "in about N min"),
            # which no longer holds: say what the value is now instead.
            now = f": {metric} now {val:g}" if metric and val is not None else ""
            message = f"Resolved: {rule.id} at {device}{now}"
        else:
            message = _message(rule, fields)
        # an operator confirms a recommended command; a response is sent once, as the alert fires
        wanted = rule.respond if rule.respond is not None and out is Change.FIRING else rule.recommend
        command = None
        if wanted is not None and out is not Change.RESOLVED and ev.tracks_breach:
            gw = int(self.devices.gateway[key])
            if gw >= 0:
                command = {"topic": topics.command(district, self.devices.gateways.names[gw][1]), "dev": device,
                           "field": wanted.field, "value": wanted.value}
                if wanted is rule.respond:
                    command["auto"] = True
        return [AlertEvent(id=alert_id, rule=rule.id, domain=rule.domain, severity=severity,
                           state="resolved" if out is Change.RESOLVED else "firing", district=district,
                           device=device, metric=metric, value=val, threshold=thr,
                           started=int(ev.lifecycle.since[key]), t=t, message=message, forecast=forecast,
                           supersedes=supersedes, command=command,
                           contributors=None if out is Change.RESOLVED else ev.contributors(key))]

    def _owed(self, alert_id: str, change: Change, sev: int) -> list[AlertEvent]:
        """The event a flapping alert owes once a firing has held for a flap window."""
        rule_id, district, device = alert_id.split(":", 2)
        ev = self.evaluators.get(rule_id)
        if ev is None and not any(r.id == rule_id for r in self.gateway_rules):
            return []  # the rule was removed meanwhile
        return [AlertEvent(id=alert_id, rule=rule_id, domain=self._rule_domain(rule_id),
                           severity=SEVERITY_LEVELS[sev], state="firing", district=district, device=device,
                           metric=ev.metrics[0] if ev is not None and ev.metrics else None, value=None,
                           threshold=None,
                           started=self.newest_t, t=self.newest_t,
                           message=f"{rule_id} at {device} is firing (held for "
                                   f"{self.publisher.flap_window_ms / 60_000:g} min while flapping)")]

    def _rule_domain(self, rule_id: str) -> str:
        ev = self.evaluators.get(rule_id)
        return ev.rule.domain if ev is not None else "system"

    def _episode_event(self, ep: EpisodeChange) -> list[AlertEvent]:
        """The sensor-health event of a device's flapping episode (rules/README.md)."""
        district, device = ep.subject.split(":", 1)
        alert_id = f"{FLAPPING_RULE}:{ep.subject}"
        rules = sorted({a.split(":", 1)[0] for a in ep.alerts})
        domain = self._rule_domain(rules[0])
        severity = SEVERITY_LEVELS[ep.severity]
        labels: dict[str, str | None] = {"rule": FLAPPING_RULE, "domain": domain, "district": district,
                                         "device": device, "severity": severity}
        silenced = ep.change is not Change.RESOLVED and self.silences.silenced(labels, ep.t)
        before = self.publisher.published_severity(alert_id)
        out = self.publisher.offer(alert_id, ep.change, ep.severity, ep.t, silenced)
        if out is Change.NONE:
            return []
        pub = self.publisher
        if out is Change.RESOLVED:
            message = (f"Resolved: {device} stopped flapping (no change of {', '.join(rules)} for "
                       f"{pub.flap_clear_ms / 3_600_000:g} h)")
        else:
            message = (f"{device} is flapping: {', '.join(rules)} {ep.reason}; a sensor-health problem, not new "
                       f"incidents. Its alerts are held until one lasts {pub.flap_window_ms / 60_000:g} min; the "
                       f"episode ends after {pub.flap_clear_ms / 3_600_000:g} h without a change")
        supersedes = SEVERITY_LEVELS[before] if out is Change.ESCALATED and 0 <= before != ep.severity else None
        return [AlertEvent(id=alert_id, rule=FLAPPING_RULE, domain=domain, severity=severity,
                           state="resolved" if out is Change.RESOLVED else "firing", district=district,
                           device=device, metric=None, value=None, threshold=None, started=ep.started, t=ep.t,
                           message=message, supersedes=supersedes)]

    # ------------------------------------------------------------------ outputs
    def derived_lines(self) -> list[str]:
        """Points the rules computed since the last call (line protocol): the `aqi` of air
        stations, the `water_class` of river and lake stations."""
        return [line for ev in self.evaluators.values() for line in ev.drain_lines()]

    def active_alerts(self) -> int:
        n = sum(int(np.count_nonzero(ev.lifecycle.state == State.FIRING)) for ev in self.evaluators.values()
                if ev.rule.publish)
        return n + sum(1 for ga in self._gateway_alerts.values() if ga.state.state is State.FIRING)


def _health_holds(evaluators: list[Evaluator]) -> dict[str, list[Evaluator]]:
    """rule id -> the health evaluators that vouch for its sensors (same measurement, one of
    its metrics among theirs or among those they are `sensor_of`)."""
    health = [h for h in evaluators if h.rule.purpose == "health" and h.metrics and h.tracks_breach]
    out: dict[str, list[Evaluator]] = {}
    for ev in evaluators:
        r = ev.rule
        if r.purpose == "health" or r.hold_ms <= 0 or not ev.metrics or isinstance(ev, CompositeEval):
            continue
        hs = [h for h in health if h.measurement == ev.measurement
              and any(m in h.metrics or m in h.rule.sensor_of for m in ev.metrics)]
        if hs:
            out[r.id] = hs
    return out


def _hold_suspect(s: Signals, holds: list[Evaluator], hold_ms: int) -> None:
    """Turn breaches on devices whose sensor a health rule suspects (firing, or breached
    within `hold_ms`) into 'no change': the early warning neither fires nor resolves."""
    breach = s.sig == _BREACH
    if not breach.any():
        return
    suspect = np.zeros(len(s.keys), bool)
    for h in holds:
        suspect |= (h.lifecycle.state[s.keys] == State.FIRING) | (h.last_breach[s.keys] >= s.t - hold_ms)
    if suspect.any():
        s.sig = np.where(breach & suspect, np.int8(Signal.BAND), s.sig).astype(np.int8)


def _as_float(value: object) -> float:
    if isinstance(value, bool | int | float):
        return float(value)
    return math.nan


def alert_line(event: AlertEvent) -> str:
    """The InfluxDB `alerts` point of an alert event (docs/ARCHITECTURE.md schema)."""
    tags = {"rule": event.rule, "domain": event.domain, "district": event.district,
            "severity": event.severity, "device": event.device or ""}
    fields: dict[str, object] = {"state": event.state, "message": event.message, "alert_id": event.id,
                                 "started": event.started, "firing": event.state == "firing"}
    if event.value is not None:
        fields["value"] = float(event.value)
    if event.threshold is not None:
        fields["threshold"] = float(event.threshold)
    if event.forecast is not None:
        fields["eta_s"] = float(event.forecast.eta_s)
    if event.response is not None:
        fields["response_ok"] = bool(event.response["ok"])
    return encode_point("alerts", tags, fields, event.t)


def alert_lines(event: AlertEvent) -> list[str]:
    """The `alerts` points of an event. An escalation also closes the entry of the severity
    it replaces (state `resolved`, same alert id and time), so that the warning entry of an
    alert now critical does not stay active on the dashboards until the alert resolves."""
    lines = [alert_line(event)]
    if event.supersedes and event.supersedes != event.severity:
        closed = dataclasses.replace(event, severity=event.supersedes, state="resolved", forecast=None,
                                     message=f"Escalated to {event.severity}: {event.message}", supersedes=None)
        lines.append(alert_line(closed))
    return lines
