"""Rules on moving devices: zones (`geofence`) and drivers' hours (`driving_time`).

A geofence rule reads each sample's position (and speed) against the zones of a GeoJSON
file (urbansense/zones.py, shapely underneath): in a banned area, over the limit of the
zone, stopped in a no-stopping place, outside the corridor of the route the vehicle is
assigned to. With `while_alerts` it joins another family's alerts: a tanker in a utility
tunnel's zone while that tunnel's gas rises is one critical alert naming both.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from rules.catalog import DrivingTimeRule, GeofenceRule
from rules.devices import NEVER, Devices, Round
from rules.kinds import _BAND, _BREACH, _CLEAR, Buffers, Evaluator, FloatArray, Signals
from urbansense.zones import ZoneSet

BoolArray = npt.NDArray[np.bool_]


class GeofenceEval(Evaluator):
    rule: GeofenceRule
    STATE: ClassVar[dict[str, tuple[float, type]]] = {**Evaluator.STATE, "zone_of": (-1, np.int64)}
    zone_of: npt.NDArray[np.int64]

    def __init__(self, rule: GeofenceRule, devices: Devices, buffers: Buffers,
                 deps: list[Evaluator] | None = None) -> None:
        self.deps = deps or []
        super().__init__(rule, devices, buffers)
        r = rule
        self.zones = ZoneSet.load(r.zone_path)
        self.metrics = tuple(m for m in (r.lat_metric, r.lon_metric, r.speed_metric, r.fix_metric) if m)
        self.tz = zoneinfo.ZoneInfo(r.timezone)
        self._applies = np.zeros((0, len(self.zones)), bool)
        self._partner_n = -1
        self._partner_idx: list[npt.NDArray[np.intp]] = []
        limits = [z.speed_limit_kmh if z.speed_limit_kmh is not None else np.inf for z in self.zones.zones]
        self._limits = np.asarray(limits, np.float64)

    def applies(self) -> BoolArray:
        """[device, zone]: the zone is one of the device's (its class, its `match` label)."""
        n = len(self.devices)
        if self._applies.shape[0] != n:
            r = self.rule
            out = np.zeros((n, len(self.zones)), bool)
            for i, labels in enumerate(self.devices.labels):
                if self.devices.measurement[i] != r.measurement:
                    continue
                for j, z in enumerate(self.zones.zones):
                    out[i, j] = z.applies_to(labels.get(r.class_label)) and (
                        r.match is None or labels.get(r.match) == str(z.properties.get(r.match)))
            self._applies = out
        return self._applies

    def _in_force(self, t_ms: int) -> BoolArray:
        local = dt.datetime.fromtimestamp(t_ms / 1000, self.tz)
        minute = local.hour * 60 + local.minute
        return np.array([z.in_force(minute) for z in self.zones.zones], bool)

    def _partners(self, t_ms: int) -> BoolArray:
        """Per zone: a device named by its `zone_label` property fired a `while_alerts`
        rule within alerts_within_s."""
        r = self.rule
        assert r.zone_label is not None
        since = t_ms - int(r.alerts_within_s * 1000)
        out = np.zeros(len(self.zones), bool)
        for j, idx in enumerate(self.partner_devices()):
            if len(idx):
                out[j] = any(bool((d.last_breach[idx] >= since).any()) for d in self.deps)
        return out

    def partner_devices(self) -> list[npt.NDArray[np.intp]]:
        """Per zone: the devices whose `zone_label` label equals the zone's property of
        that name (found once per size of the device table, not on every round)."""
        r = self.rule
        n = len(self.devices)
        if self._partner_n != n:
            labels = self.devices.labels
            self._partner_idx = []
            for z in self.zones.zones:
                name = z.properties.get(r.zone_label) if r.zone_label is not None else None
                members = [] if name is None else [i for i, lab in enumerate(labels)
                                                   if lab.get(r.zone_label or "") == str(name)]
                self._partner_idx.append(np.asarray(members, np.intp))
            self._partner_n = n
        return self._partner_idx

    def partners_firing(self, key: int) -> str:
        """The devices (and rules) of the zone's partners that fired: what the alert names."""
        r = self.rule
        j = int(self.zone_of[key]) if key < len(self.zone_of) else -1
        if j < 0 or r.zone_label is None:
            return ""
        since = self.devices.last_seen[key] - int(r.alerts_within_s * 1000)
        hits = []
        for raw in self.partner_devices()[j]:
            i = int(raw)
            fired = [d.rule.id for d in self.deps if d.last_breach[i] >= since]
            if fired:
                hits.append(f"{self.devices.device[i]} ({', '.join(fired)})")
        return "; ".join(hits)

    def describe(self, key: int) -> dict[str, object]:
        j = int(self.zone_of[key]) if key < len(self.zone_of) else -1
        out: dict[str, object] = {"zone": self.zones.zones[j].name if j >= 0 else "none"}
        if j >= 0 and self.zones.zones[j].speed_limit_kmh is not None:
            out["limit"] = self.zones.zones[j].speed_limit_kmh
        if self.rule.while_alerts:
            out["partners"] = self.partners_firing(key) or "none"
        return out

    def evaluate(self, rnd: Round) -> Signals | None:
        r = self.rule
        lat, lon = rnd.values[r.lat_metric], rnd.values[r.lon_metric]
        n = len(rnd.dev)
        valid = ~(np.isnan(lat) | np.isnan(lon))
        if r.fix_metric is not None:
            fix = rnd.values[r.fix_metric]
            valid &= ~(fix == 0)  # a report without a fix repeats an old position
        applies = self.applies()[rnd.dev] & self._in_force(int(rnd.t[-1]))[None, :]
        inside = self.zones.inside(lat, lon) & applies
        speed = rnd.values[r.speed_metric]
        value = np.ones(n)
        threshold = np.full(n, np.nan)
        zone = np.where(inside.any(axis=1), inside.argmax(axis=1), -1)
        if r.when == "outside":
            judged = applies.any(axis=1)
            breach = judged & ~inside.any(axis=1)
            dist = self.zones.distance_m(lat, lon)
            dist = np.where(applies, dist, np.inf)
            nearest = dist.argmin(axis=1) if len(self.zones) else np.zeros(n, np.intp)
            value = np.where(judged, dist.min(axis=1, initial=np.inf), np.nan)
            zone = np.where(judged, nearest, -1)
            valid &= judged
        elif r.speed_above == "limit":
            limit = np.where(inside, self._limits[None, :], np.inf).min(axis=1, initial=np.inf)
            breach = speed > limit * (1.0 + r.tolerance_pct / 100.0)
            zone = np.where(inside, np.where(np.isfinite(self._limits), self._limits, np.inf)[None, :],
                            np.inf).argmin(axis=1)
            zone = np.where(np.isfinite(limit), zone, -1)
            value, threshold = speed, np.where(np.isfinite(limit), limit, np.nan)
            valid &= ~np.isnan(speed)
        else:
            breach = inside.any(axis=1)
            if r.speed_above is not None:
                breach &= speed > float(r.speed_above)
                value, threshold = speed, np.full(n, float(r.speed_above))
            elif r.speed_below is not None:
                breach &= speed < r.speed_below
                value, threshold = speed, np.full(n, r.speed_below)
            if r.speed_above is not None or r.speed_below is not None:
                valid &= ~np.isnan(speed)
        if r.while_alerts:
            partners = self._partners(int(rnd.t[-1]))
            breach &= (inside & partners[None, :]).any(axis=1)
            zone = np.where((inside & partners[None, :]).any(axis=1),
                            (inside & partners[None, :]).argmax(axis=1), zone)
        keep = breach & valid & (zone >= 0)
        self.zone_of[rnd.dev[keep]] = zone[keep]
        sig = np.where(breach, _BREACH, _CLEAR).astype(np.int8)
        sig[~valid] = _BAND
        return Signals(rnd.dev, rnd.t, sig, np.full(n, self.severity, np.int8), value.astype(np.float64),
                       threshold.astype(np.float64))


class DrivingTimeEval(Evaluator):
    """Continuous driving in hours: since the first moving sample after a rest of at
    least `rest_s`, or after a gap in the reports that long (driving nobody saw is not
    counted; a coverage gap's backlog arrives with its own times and leaves no gap)."""

    rule: DrivingTimeRule
    STATE: ClassVar[dict[str, tuple[float, type]]] = {
        **Evaluator.STATE, "drive_start": (NEVER, np.int64),
        "stop_since": (NEVER, np.int64), "last_t": (NEVER, np.int64)}
    drive_start: npt.NDArray[np.int64]
    stop_since: npt.NDArray[np.int64]
    last_t: npt.NDArray[np.int64]

    def evaluate(self, rnd: Round) -> Signals | None:
        r = self.rule
        dev, t = rnd.dev, rnd.t
        speed: FloatArray = rnd.values[r.metric]
        known = ~np.isnan(speed)
        fresh = known & (t > self.last_t[dev])  # a late report already counted does not rewind
        dev, t, speed = dev[fresh], t[fresh], speed[fresh]
        if len(dev) == 0:
            return None
        rest_ms = int(r.rest_s * 1000)
        moving = speed > r.moving_above
        start, stop = self.drive_start[dev], self.stop_since[dev]
        # a gap in the reports as long as a rest (a dead terminal) restarts the count:
        # driving nobody saw is not counted
        start = np.where(t - self.last_t[dev] >= rest_ms, NEVER, start)
        # a stopped vehicle's stop begins at its first stopped report
        stop = np.where(moving, NEVER, np.where(stop == NEVER, t, stop))
        rested = ~moving & (t - stop >= rest_ms)
        start = np.where(rested, NEVER, start)
        start = np.where(moving & (start == NEVER), t, start)
        self.drive_start[dev], self.stop_since[dev], self.last_t[dev] = start, stop, t
        hours = np.where(start == NEVER, 0.0, (t - start) / 3_600_000.0)
        return self._hysteresis(Round(rnd.measurement, dev, t, {}), hours, r.op, r.threshold, r.clear,
                                r.critical_threshold)


MOTION_EVALUATORS: dict[str, type[Evaluator]] = {"geofence": GeofenceEval, "driving_time": DrivingTimeEval}
