"""The rule kinds, each a vectorised evaluator over a `Round` of samples.

An evaluator turns the round's values into a lifecycle signal per device (clear /
hysteresis band / breach), a severity and the value and threshold to report; the
engine then runs the lifecycle over those arrays. A missing value (NaN) gives BAND:
no information never resolves nor fires an alert.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from rules.aqi import TABLES_DIR, AqiTable
from rules.catalog import (
    AccumulationRule,
    AnomalyRule,
    AqiRule,
    CompositeRule,
    CounterCheckRule,
    DeadmanRule,
    DriftRule,
    FlatlineRule,
    ForecastRule,
    RateRule,
    Rule,
    ThresholdRule,
    TideForecastRule,
    WaterClassRule,
)
from rules.devices import NEVER, Devices, Index, Round
from rules.lifecycle import SEVERITY_LEVELS, LifecycleArrays, Signal, State
from rules.surface_water import WORSE, SurfaceWaterTable
from rules.tides import GRID_MS, HOUR_MS, StationRecord, TidePrediction
from rules.tides import fit as fit_tide
from rules.windows import (
    TimeBuckets,
    first_crossing,
    half_slopes,
    linear_fit,
    quadratic_fit,
    row_nanmedian,
    slope_stderr,
    theil_sen,
)
from urbansense.codec import MAX_CONTRIBUTORS
from urbansense.lineprotocol import encode_point

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
SmallArray = npt.NDArray[np.int8]
_CLEAR, _BAND, _BREACH = np.int8(Signal.CLEAR), np.int8(Signal.BAND), np.int8(Signal.BREACH)


def sev_index(name: str) -> int:
    return SEVERITY_LEVELS.index(name)


@dataclass(slots=True)
class Signals:
    keys: Index
    t: IntArray
    sig: SmallArray
    sev: SmallArray
    value: FloatArray
    threshold: FloatArray
    eta_s: FloatArray | None = None

    def subset(self, rows: npt.NDArray[np.bool_]) -> Signals:
        return Signals(self.keys[rows], self.t[rows], self.sig[rows], self.sev[rows], self.value[rows],
                       self.threshold[rows], None if self.eta_s is None else self.eta_s[rows])


class Buffers:
    """Shared window buffers, keyed by (measurement, metric, window, buckets)."""

    def __init__(self, devices: Devices) -> None:
        self.devices = devices
        self._buffers: dict[tuple[str, str, float, int], TimeBuckets] = {}
        self._fed: set[tuple[int, tuple[str, str, float, int]]] = set()
        self.round_id = 0
        devices.on_grow(self._grow)

    def _grow(self, cap: int) -> None:
        for b in self._buffers.values():
            b.grow(cap)

    def get(self, measurement: str, metric: str, window_s: float, buckets: int) -> TimeBuckets:
        key = (measurement, metric, float(window_s), buckets)
        b = self._buffers.get(key)
        if b is None:
            b = self._buffers[key] = TimeBuckets(window_s, buckets, self.devices.capacity)
        return b

    def fed(self, rnd: Round, measurement: str, metric: str, window_s: float, buckets: int) -> TimeBuckets:
        """The buffer with this round's values added exactly once, however many rules share it."""
        key = (measurement, metric, float(window_s), buckets)
        b = self.get(*key)
        mark = (self.round_id, key)
        if mark not in self._fed:
            self._fed.add(mark)
            b.add(rnd.dev, rnd.t, rnd.values[metric])
        return b

    def next_round(self) -> None:
        self.round_id += 1
        self._fed.clear()


class Evaluator:
    """Base: lifecycle arrays per key, last breach time per device (composites read it)."""

    def __init__(self, rule: Rule, devices: Devices, buffers: Buffers) -> None:
        self.rule = rule
        self.devices = devices
        self.buffers = buffers
        self.for_ms = int(rule.for_s * 1000)
        self.severity = sev_index(rule.severity)
        self.lifecycle = LifecycleArrays()
        self.last_breach: IntArray
        self.measurement: str | None = getattr(rule, "measurement", None)
        self.metrics: tuple[str, ...] = (rule.metric,) if hasattr(rule, "metric") else ()
        #: Whether keys are devices whose breach times composites may read.
        self.tracks_breach = not (isinstance(rule, CompositeRule) and rule.scope == "group")
        devices.on_grow(self.grow)

    #: Per-device state arrays: name -> (initial value, dtype); grown with the device table.
    STATE: ClassVar[dict[str, tuple[float, type]]] = {"last_breach": (NEVER, np.int64),
                                                      "breach_value": (np.nan, np.float64)}
    #: each device's value at its last breach (a leak's reading, for the plume rule)
    breach_value: FloatArray

    def grow(self, cap: int) -> None:
        self.lifecycle.grow(cap)
        for name, (fill, dtype) in self.STATE.items():
            old = getattr(self, name, None)
            n = 0 if old is None else len(old)
            if cap > n:
                extra: npt.NDArray[Any] = np.full(cap - n, fill, dtype)
                setattr(self, name, extra if old is None else np.concatenate([old, extra]))

    def evaluate(self, rnd: Round) -> Signals | None:
        raise NotImplementedError

    def describe(self, key: int) -> dict[str, object]:
        """Extra fields an alert's message may use (beyond value, threshold, eta_min)."""
        return {}

    def contributors(self, key: int) -> list[str] | None:
        """The sensors whose readings make the alert of `key`, when they are more than its
        own device (None: just the device)."""
        return None

    def drain_lines(self) -> list[str]:
        """Points the rule computed since the last call (line protocol): `aqi`, `water_class`."""
        return []

    def history_needs(self) -> tuple[str, str, float] | None:
        """(measurement, metric, seconds) of past record the rule needs before it can
        speak (a tide fit), seeded by `seed_history` from storage or a simulation."""
        return None

    def seed_history(self, dev: int, t_ms: Sequence[int], values: Sequence[float]) -> None:
        """Take a device's past record (hourly means will do)."""

    def nearest_judged(self) -> Index:
        """Each device's nearest device this rule judges (its measurement and `labels`, a
        profile reading its metric; -1: none): the neighbour other rules consult."""
        return self.devices.nearest(self.measurement, self.rule.labels, self.metrics[0] if self.metrics else None)

    def affected(self, key: int, label: str) -> str:
        """The devices of the key's district whose `label` names the key's device, by
        their `place` label where they have one: the places an alert affects."""
        devices = self.devices
        me, district = devices.device[key], devices.district[key]
        hit = [i for i, lab in enumerate(devices.labels) if lab.get(label) == me and devices.district[i] == district]
        named = [f"{devices.labels[i]['place']} ({devices.device[i]})" if "place" in devices.labels[i]
                 else devices.device[i] for i in hit]
        return ", ".join(named) or "no device recorded downstream"

    def matching(self, keys: Index) -> npt.NDArray[np.bool_] | None:
        """Which of these devices the rule judges (`labels`); None: all of them."""
        want = self.rule.labels
        if not want or not self.tracks_breach:
            return None
        return self.devices.carrying(want)[keys]

    def reference(self, rnd: Round) -> FloatArray | None:
        """Each round device's own reference level (`offset_from`, `multiple_of`), NaN
        where it has none."""
        label = getattr(self.rule, "reference_label", None)
        return None if label is None else self.devices.label_values(label)[rnd.dev]

    def levels(self, value: FloatArray, ref: FloatArray) -> FloatArray:
        """A value on the rule's scale: its offset from the reference, or its multiple of it."""
        if getattr(self.rule, "multiple_of", None) is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                return value / np.where(ref > 0, ref, np.nan)
        return value - ref

    def actual(self, level: FloatArray | float, ref: FloatArray) -> FloatArray:
        """A level of the rule's scale as a value of the metric (the inverse of levels)."""
        if getattr(self.rule, "multiple_of", None) is not None:
            return np.asarray(level * ref, np.float64)
        return np.asarray(level + ref, np.float64)

    def _grow_keys(self, n: int) -> None:
        """Group-keyed rules: room in the lifecycle for n groups."""
        self.lifecycle.grow(max(n, len(self.lifecycle.state)))

    def key_label(self, key: int) -> tuple[str, str]:
        """(district, device-or-group) of a lifecycle key."""
        return self.devices.district[key], self.devices.device[key]

    def _hysteresis(self, rnd: Round, v: FloatArray, op: str, thr: float, clear: float | None,
                    critical: float | None) -> Signals:
        clr = thr if clear is None else clear
        if op == "above":
            breach, ok = v > thr, v <= clr
            crit = v > critical if critical is not None else None
        else:
            breach, ok = v < thr, v >= clr
            crit = v < critical if critical is not None else None
        sig = np.where(breach, _BREACH, np.where(ok, _CLEAR, _BAND)).astype(np.int8)
        sig[np.isnan(v)] = _BAND
        sev = np.full(len(v), self.severity, np.int8)
        if crit is not None:
            sev[crit] = sev_index("critical")
        return Signals(rnd.dev, rnd.t, sig, sev, v, np.full(len(v), thr))


class ThresholdEval(Evaluator):
    rule: ThresholdRule

    def evaluate(self, rnd: Round) -> Signals | None:
        r = self.rule
        v = np.abs(rnd.values[r.metric]) if r.absolute else rnd.values[r.metric]
        ref = self.reference(rnd)
        if ref is None:
            return self._hysteresis(rnd, v, r.op, r.threshold, r.clear, r.critical_threshold)
        s = self._hysteresis(rnd, self.levels(v, ref), r.op, r.threshold, r.clear, r.critical_threshold)
        s.value, s.threshold = v, self.actual(s.threshold, ref)
        return s


class RateEval(Evaluator):
    rule: RateRule

    def evaluate(self, rnd: Round) -> Signals | None:
        r = self.rule
        buf = self.buffers.fed(rnd, r.measurement, r.metric, r.window_s, r.buckets)
        means, x, valid = buf.view(rnd.dev, rnd.t)
        _, slope, n = linear_fit(x, means, valid)
        per_min = np.where(n >= r.min_points, slope * 60.0, np.nan)
        return self._hysteresis(rnd, per_min, r.op, r.threshold, r.clear, r.critical_threshold)


class ForecastEval(Evaluator):
    rule: ForecastRule

    def evaluate(self, rnd: Round) -> Signals | None:
        r = self.rule
        buf = self.buffers.fed(rnd, r.measurement, r.metric, r.window_s, r.buckets)
        # Only the devices that report the metric this round and that the rule judges
        # (a family of several device kinds shares a measurement): a row without a value
        # would only hold its state, and the window fits are the costly part.
        keep = ~np.isnan(rnd.values[r.metric])
        judged = self.matching(rnd.dev)
        if judged is not None:
            keep &= judged
        if not keep.all():
            if not keep.any():
                return None
            rnd = rnd.only(keep, r.metric)
        reported = v = rnd.values[r.metric]
        ref = self.reference(rnd)
        if ref is not None:  # levels as offsets from (or multiples of) each device's own reference
            v = self.levels(v, ref)
        sign = 1.0 if r.op == "above" else -1.0
        with np.errstate(invalid="ignore"):
            armed = np.ones(len(v), bool) if r.arm is None else sign * (v - r.arm) >= 0
        busy = self.lifecycle.state[rnd.dev] != State.INACTIVE
        if not armed.any() and not busy.any():
            return None  # nothing armed and nothing pending or firing: no row can change
        means, x, valid = buf.view(rnd.dev, rnd.t)
        if ref is not None:
            means = self.levels(means, ref[:, None])
            valid = valid & ~np.isnan(ref)[:, None] & ~np.isnan(means)
        # Least squares first (cheap); the robust line only where it can matter: armed rows
        # that move toward the limit at all, or whose warning is pending or firing. A spike
        # steepens least squares, so a row it fools is always among them.
        level, slope, n = linear_fit(x, means, valid)
        pick = np.flatnonzero(armed & ((sign * slope * 60.0 > 0.25 * r.min_slope_per_min) | busy))
        if len(pick):
            level[pick], slope[pick], _n = theil_sen(x[pick], means[pick], valid[pick])
        toward = sign * slope * 60.0  # units per minute toward the limit
        gap = sign * (r.limit - level)  # > 0 while the limit is still ahead
        with np.errstate(invalid="ignore", divide="ignore"):
            eta = np.where(gap <= 0, 0.0, gap / np.where(toward > 0, toward / 60.0, np.nan))
        trending = (n >= r.min_points) & (toward > max(r.min_slope_per_min, 1e-12)) & armed
        # A warning resolves when the trend is clearly gone (under half the least slope),
        # not whenever one of the checks below wavers near its edge: no flapping on a creep.
        gone = ~((n >= r.min_points) & (toward > 0.5 * r.min_slope_per_min))
        t_rows = np.flatnonzero(trending)
        if r.min_slope_z > 0 and len(t_rows):
            se = slope_stderr(x[t_rows], means[t_rows], valid[t_rows], level[t_rows], slope[t_rows])
            trending[t_rows] &= np.abs(slope[t_rows]) > r.min_slope_z * se
            t_rows = np.flatnonzero(trending)
        if r.sustained > 0 and len(t_rows):
            older, newer = half_slopes(x[t_rows], means[t_rows], valid[t_rows])
            floor = r.sustained * toward[t_rows] / 60.0
            with np.errstate(invalid="ignore"):
                trending[t_rows] &= (sign * older >= floor) & (sign * newer >= floor)
            t_rows = np.flatnonzero(trending)
        if r.curvature and len(t_rows):
            # a signal that turns (a tide slowing to its high water): when does the parabola
            # through the window reach the limit, if it does before turning back at all.
            # Curvature may only put a warning off, never bring it on: a rise that is
            # speeding up (a tide leaving its low water) keeps the straight line's time.
            a, b, c = quadratic_fit(x[t_rows], means[t_rows], valid[t_rows])
            bent = first_crossing(a, b, c, r.limit, sign, 2 * r.horizon_s)
            eta[t_rows] = np.where(np.isnan(c), eta[t_rows], np.fmax(eta[t_rows], bent))
        ahead = gap > 0
        breach = ahead & trending & (eta <= r.horizon_s)  # trending rows are armed
        clear = ahead & (gone | ~armed | (eta > 2 * r.horizon_s))
        # Beyond the limit the forecast has come true: hold (the threshold alarm speaks now),
        # so a plateau above the limit neither resolves the warning nor fires it again.
        sig = np.where(breach, _BREACH, np.where(clear, _CLEAR, _BAND)).astype(np.int8)
        sig[np.isnan(v)] = _BAND
        sev = np.full(len(v), self.severity, np.int8)
        limit = np.full(len(v), r.limit) if ref is None else self.actual(r.limit, ref)
        return Signals(rnd.dev, rnd.t, sig, sev, reported, limit, np.where(breach, eta, np.nan))


class AnomalyEval(Evaluator):
    rule: AnomalyRule

    def evaluate(self, rnd: Round) -> Signals | None:
        r = self.rule
        v = rnd.values[r.metric]
        buf = self.buffers.fed(rnd, r.measurement, r.metric, r.window_s, r.buckets)
        means, _x, valid = buf.view(rnd.dev, rnd.t)
        masked = np.where(valid, means, np.nan)
        with np.errstate(invalid="ignore"):  # all-NaN rows: not enough data yet
            med = row_nanmedian(masked)
            mad = row_nanmedian(np.abs(masked - med[:, None]))
        m = 0.6745 * (v - med) / np.maximum(np.nan_to_num(mad), r.mad_floor)
        score = np.abs(m) if r.direction == "both" else (m if r.direction == "up" else -m)
        enough = valid.sum(axis=1) >= r.min_points
        sig = np.where(score > r.threshold, _BREACH, np.where(score < r.threshold / 2, _CLEAR, _BAND))
        sig = np.where(enough & ~np.isnan(score), sig, _BAND).astype(np.int8)
        sev = np.full(len(v), self.severity, np.int8)
        return Signals(rnd.dev, rnd.t, sig, sev, v, np.full(len(v), r.threshold))


class FlatlineEval(Evaluator):
    rule: FlatlineRule

    STATE: ClassVar[dict[str, tuple[float, type]]] = {**Evaluator.STATE, "ref": (np.nan, np.float64),
                                                      "run_start": (0, np.int64)}
    ref: FloatArray
    run_start: IntArray

    def evaluate(self, rnd: Round) -> Signals | None:
        r = self.rule
        v = rnd.values[r.metric]
        have = ~np.isnan(v)
        dev, t, vv = rnd.dev[have], rnd.t[have], v[have]
        moved = ~(np.abs(vv - self.ref[dev]) <= r.tolerance)
        self.ref[dev[moved]] = vv[moved]
        self.run_start[dev[moved]] = t[moved]
        held_s = np.full(len(v), np.nan)
        held_s[have] = (t - self.run_start[dev]) / 1000.0
        sig = np.where(held_s >= r.suspect_s, _BREACH, np.where(held_s < r.suspect_s, _CLEAR, _BAND))
        sig = sig.astype(np.int8)
        sev = np.where(held_s >= r.fail_s, self.severity, sev_index("info")).astype(np.int8)
        return Signals(rnd.dev, rnd.t, sig, sev, v, np.full(len(v), r.suspect_s))


#: Samples a drift baseline (and a device's size in its district) needs before a device
#: is judged against it.
MIN_BASELINE_POINTS = 20


class DriftEval(Evaluator):
    rule: DriftRule

    STATE: ClassVar[dict[str, tuple[float, type]]] = {
             **Evaluator.STATE, "count": (0.0, np.float64), "mean": (0.0, np.float64),
             "m2": (0.0, np.float64), "hi": (0.0, np.float64), "lo": (0.0, np.float64),
             "first": (NEVER, np.int64), "size": (0.0, np.float64), "size_n": (0.0, np.float64)}
    count: FloatArray
    mean: FloatArray
    m2: FloatArray
    hi: FloatArray
    lo: FloatArray
    first: IntArray
    size: FloatArray
    size_n: FloatArray

    def _share(self, rnd: Round, v: FloatArray, age_s: FloatArray) -> FloatArray:
        """The device's share of the district (relative_to: district_median), NaN while
        its size is learnt. Over the first half of learn_s each device's size is learnt:
        its mean ratio to the district median. From then on its share is v divided by the
        median, over the district's *other* sized devices, of their v / size: the district's
        demand as the others see it. Leaving the device out keeps it from being its own
        reference (in an odd group one device is the median, and its share would be 1 with
        no noise while the baseline is learnt); dividing by sizes keeps one device going
        wild (a burst) from moving the others' reference."""
        dev = rnd.dev
        sizing = (age_s < self.rule.learn_s / 2) | (self.size_n[dev] < MIN_BASELINE_POINTS)
        if sizing.any():  # the district medians are needed only while sizes are learnt
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = v / _district_median(self.devices, dev, v, leave_out=False)
            learn = sizing & ~np.isnan(ratio)
            n = self.size_n[dev[learn]] + 1
            self.size[dev[learn]] += (ratio[learn] - self.size[dev[learn]]) / n
            self.size_n[dev[learn]] = n
        sized = ~sizing & (self.size_n[dev] > 0) & (self.size[dev] > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            scaled = np.where(sized, v / self.size[dev], np.nan)
            return np.where(sized, v / _district_median(self.devices, dev, scaled, leave_out=True), np.nan)

    def evaluate(self, rnd: Round) -> Signals | None:
        r = self.rule
        v = rnd.values[r.metric]
        if r.counter_rate_s is not None:
            buf = self.buffers.fed(rnd, r.measurement, r.metric, r.counter_rate_s, COUNTER_RATE_BUCKETS)
            rate, span_s, _points = counter_rates(*buf.view(rnd.dev, rnd.t))
            # Only over (nearly) the whole window: every device's rate over the same hour, or
            # one back from a gap would compare its last minutes of a morning ramp with the
            # others' whole hour.
            v = np.where(~np.isnan(v) & (span_s >= COUNTER_RATE_FULL * r.counter_rate_s), rate, np.nan)
        seen = ~np.isnan(v)
        self.first[rnd.dev[seen]] = np.where(self.first[rnd.dev[seen]] == NEVER, rnd.t[seen],
                                             self.first[rnd.dev[seen]])
        age_s = (rnd.t - self.first[rnd.dev]) / 1000.0
        learn_s = r.learn_s
        if r.relative_to == "district_median":
            v = self._share(rnd, v, age_s)
            learn_s = r.learn_s / 2  # the baseline: the second half of learn_s
            age_s = age_s - r.learn_s / 2
        have = ~np.isnan(v)
        dev, x = rnd.dev[have], v[have]
        # A device silent while others learnt (dead, not yet installed) learns on its return.
        learning = (age_s[have] < learn_s) | (self.count[dev] < MIN_BASELINE_POINTS)
        # Welford while learning: the baseline mean and sigma, then frozen.
        ld, lx = dev[learning], x[learning]
        c = self.count[ld] + 1
        delta = lx - self.mean[ld]
        mean = self.mean[ld] + delta / c
        self.m2[ld] += delta * (lx - mean)
        self.mean[ld], self.count[ld] = mean, c
        sigma = np.maximum(np.sqrt(self.m2[dev] / np.maximum(self.count[dev] - 1, 1)), r.sigma_floor)
        z = (x - self.mean[dev]) / sigma
        if r.test == "level":
            hi = np.where(learning, 0.0, np.maximum(0.0, z))
            lo = np.where(learning, 0.0, np.maximum(0.0, -z))
        else:
            # Capped at 2h: a burst on the same pipe (z in the hundreds) is forgotten within
            # minutes of its end instead of holding the alert for hours.
            hi = np.where(learning, 0.0, np.clip(self.hi[dev] + z - r.k, 0.0, 2 * r.h))
            lo = np.where(learning, 0.0, np.clip(self.lo[dev] - z - r.k, 0.0, 2 * r.h))
        self.hi[dev], self.lo[dev] = hi, lo
        s = np.full(len(v), np.nan)
        s[have] = hi if r.direction == "up" else lo if r.direction == "down" else np.maximum(hi, lo)
        sig = np.where(s > r.h, _BREACH, np.where(s < r.h / 2, _CLEAR, _BAND)).astype(np.int8)
        sig[~have] = _BAND
        sev = np.full(len(v), self.severity, np.int8)
        return Signals(rnd.dev, rnd.t, sig, sev, v, np.full(len(v), r.h))


def _district_median(devices: Devices, dev: Index, v: FloatArray, *, leave_out: bool) -> FloatArray:
    """Per row: the median of `v` over the rows of the same district (`leave_out`: over the
    *other* rows), NaN unless 3 or more report and it is positive."""
    districts = [devices.district[i] for i in dev]
    out = np.full(len(v), np.nan)
    for d in set(districts):
        rows = np.array([j for j, x in enumerate(districts) if x == d], np.intp)
        vals = v[rows]
        ok = ~np.isnan(vals)
        good = np.sort(vals[ok])
        m = len(good)
        if m < 3:
            continue
        ref = np.full(len(rows), float(np.median(good)))
        if leave_out:
            ref[ok] = _median_without(good, np.searchsorted(good, vals[ok]))
        out[rows] = np.where(ref > 0, ref, np.nan)
    return out


def _median_without(good: FloatArray, place: Index) -> FloatArray:
    """For each `place` in the sorted values `good`: the median of `good` without the value
    at that place. Element p of what remains is good[p] before the place, good[p + 1] from
    it on."""
    def remaining(p: int) -> FloatArray:
        return np.where(p < place, good[p], good[p + 1])

    r = len(good) - 1
    return remaining(r // 2) if r % 2 else (remaining(r // 2 - 1) + remaining(r // 2)) / 2


#: Buckets of a counter's trailing window (drift with counter_rate_s), and the share of
#: the window its valid buckets must span.
COUNTER_RATE_BUCKETS = 60
COUNTER_RATE_FULL = 0.9


def counter_rates(count: FloatArray, x: FloatArray, valid: npt.NDArray[np.bool_],
                  per_s: float = 3600.0) -> tuple[FloatArray, FloatArray, IntArray]:
    """Per row of bucketed counter values: the rate per `per_s` between the first and the
    last valid bucket, the span between them (s) and the number of valid buckets (rate
    NaN with fewer than two)."""
    points = valid.sum(axis=1)
    first = np.argmin(np.where(valid, x, np.inf), axis=1)
    last = np.argmax(np.where(valid, x, -np.inf), axis=1)
    rows = np.arange(len(count))
    span_s = np.where(points >= 2, x[rows, last] - x[rows, first], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(span_s > 0, (count[rows, last] - count[rows, first]) / span_s * per_s, np.nan)
    return rate, span_s, points


class CounterCheckEval(Evaluator):
    rule: CounterCheckRule

    def __init__(self, rule: CounterCheckRule, devices: Devices, buffers: Buffers) -> None:
        super().__init__(rule, devices, buffers)
        self.metrics = (rule.metric, rule.counter)

    def evaluate(self, rnd: Round) -> Signals | None:
        r = self.rule
        rate_buf = self.buffers.fed(rnd, r.measurement, r.metric, r.window_s, r.buckets)
        count_buf = self.buffers.fed(rnd, r.measurement, r.counter, r.window_s, r.buckets)
        rate, _x, ok_rate = rate_buf.view(rnd.dev, rnd.t)
        count, xc, ok_count = count_buf.view(rnd.dev, rnd.t)
        valid = ok_rate & ok_count
        counted, span_s, points = counter_rates(count, xc, valid, r.per_s)
        with np.errstate(invalid="ignore", divide="ignore"):
            read = np.where(valid, rate, 0.0).sum(axis=1) / points
            off = np.abs(read - counted)
            allowed = np.maximum(r.tolerance * np.abs(counted), r.floor)
            share = off / np.maximum(np.abs(counted), 1e-9)
        enough = (points >= r.min_points) & (span_s >= r.window_s / 2)
        sig = np.where(off > allowed, _BREACH, np.where(off <= allowed / 2, _CLEAR, _BAND))
        sig = np.where(enough & np.isfinite(off), sig, _BAND).astype(np.int8)
        n = len(rnd.dev)
        return Signals(rnd.dev, rnd.t, sig, np.full(n, self.severity, np.int8), share, np.full(n, r.tolerance))


class Groups:
    """The groups a rule's devices form by a label (`circuit`) or by `district`: each
    device's group index (-1: not in one) and each group's (district, label) name. Grows
    with the device table; the rule's lifecycle is keyed by group."""

    def __init__(self, devices: Devices, measurement: str | None, group_by: str,
                 on_new_groups: Callable[[int], None]) -> None:
        self.devices = devices
        self.measurement = measurement
        self.group_by = group_by
        self.on_new_groups = on_new_groups
        self.index: dict[tuple[str, str], int] = {}
        self.names: list[tuple[str, str]] = []
        self.dev_group = np.zeros(0, np.intp)
        self._done = 0

    def of_devices(self) -> Index:
        """Group index per device (-1: none), current with the device table."""
        devices = self.devices
        if self._done < len(devices):
            if len(self.dev_group) < len(devices):
                self.dev_group = np.concatenate([self.dev_group, np.full(len(devices) - len(self.dev_group), -1,
                                                                         np.intp)])
            for i in range(self._done, len(devices)):
                if devices.measurement[i] != self.measurement:
                    continue
                label = devices.district[i] if self.group_by == "district" else devices.labels[i].get(self.group_by)
                if label is None:
                    continue
                key = (devices.district[i], label)
                g = self.index.get(key)
                if g is None:
                    g = self.index[key] = len(self.names)
                    self.names.append(key)
                self.dev_group[i] = g
            self._done = len(devices)
            self.on_new_groups(len(self.names))
        return self.dev_group

    def members(self) -> tuple[Index, Index]:
        """(devices of the measurement that are in a group, their group)."""
        members = self.devices.of_measurement(self.measurement)
        mg = self.of_devices()[members]
        return members[mg >= 0], mg[mg >= 0]


class AccumulationEval(Evaluator):
    """A counter's gain over the trailing window: each sample's increase over the device's
    previous one (nothing for a reset or wrap) summed in time buckets."""

    rule: AccumulationRule
    last_count: FloatArray
    last_total: FloatArray
    STATE: ClassVar[dict[str, tuple[float, type]]] = {**Evaluator.STATE,
                                                       "last_count": (np.nan, np.float64),
                                                       "last_total": (np.nan, np.float64)}

    def __init__(self, rule: AccumulationRule, devices: Devices, buffers: Buffers) -> None:
        self.gains = TimeBuckets(rule.window_s, rule.buckets, 0)
        super().__init__(rule, devices, buffers)

    def grow(self, cap: int) -> None:
        super().grow(cap)
        self.gains.grow(cap)

    def evaluate(self, rnd: Round) -> Signals | None:
        r = self.rule
        count = rnd.values[r.metric]
        last = self.last_count[rnd.dev]
        with np.errstate(invalid="ignore"):
            gain = np.where(np.isnan(last) | np.isnan(count) | (count < last), 0.0, count - last)
        seen = ~np.isnan(count)
        self.last_count[rnd.dev[seen]] = count[seen]
        self.gains.add(rnd.dev, rnd.t, gain)
        total = self.gains.window_sum(rnd.dev, rnd.t)
        self.last_total[rnd.dev] = total
        return self._hysteresis(rnd, total, "above", r.threshold, r.clear, r.critical_threshold)


class TideForecastEval(Evaluator):
    """The compound-flood forecast per station (catalog.TideForecastRule): its record,
    its fitted tide, its surge; few stations, so a loop over the round's rows."""

    rule: TideForecastRule
    STATE: ClassVar[dict[str, tuple[float, type]]] = {**Evaluator.STATE,
                                                       "surge": (np.nan, np.float64),
                                                       "surge_t": (NEVER, np.int64),
                                                       "surge_slope": (0.0, np.float64),
                                                       "surge_at_peak": (np.nan, np.float64),
                                                       "peak": (np.nan, np.float64),
                                                       "peak_t": (NEVER, np.int64),
                                                       "rain_rise": (0.0, np.float64),
                                                       # the hour being summed, per device
                                                       "hour": (NEVER, np.int64),
                                                       "hour_sum": (0.0, np.float64),
                                                       "hour_n": (0.0, np.float64),
                                                       "hour_times": (0.0, np.float64),
                                                       # when a device's fit is next worth trying
                                                       "next_check": (NEVER, np.int64),
                                                       "fitted": (0, np.bool_)}
    hour: IntArray
    hour_sum: FloatArray
    hour_n: FloatArray
    hour_times: FloatArray
    next_check: IntArray
    fitted: npt.NDArray[np.bool_]
    surge: FloatArray
    surge_t: IntArray
    surge_slope: FloatArray
    surge_at_peak: FloatArray
    peak: FloatArray
    peak_t: IntArray
    rain_rise: FloatArray

    def __init__(self, rule: TideForecastRule, devices: Devices, buffers: Buffers, rain: Evaluator | None) -> None:
        super().__init__(rule, devices, buffers)
        self.rain = rain
        self.records: dict[int, StationRecord] = {}
        self.tides: dict[int, TidePrediction] = {}

    def history_needs(self) -> tuple[str, str, float] | None:
        return self.rule.measurement, self.rule.metric, self.rule.history_s

    def _record(self, dev: int) -> StationRecord:
        rec = self.records.get(dev)
        if rec is None:
            rec = self.records[dev] = StationRecord(int(self.rule.history_s // 3600))
        return rec

    def seed_history(self, dev: int, t_ms: Sequence[int], values: Sequence[float]) -> None:
        rec = self._record(dev)
        for t, v in zip(t_ms, values, strict=True):
            rec.add(int(t), float(v))

    def _tide(self, dev: int, t: int) -> TidePrediction | None:
        r = self.rule
        tide = self.tides.get(dev)
        if tide is not None and t - tide.fitted_at < r.refit_every_s * 1000:
            return tide
        still = tide if tide is not None and t - tide.fitted_at < (r.refit_every_s + r.horizon_s) * 1000 else None
        if t < self.next_check[dev]:
            return still
        self.next_check[dev] = t + 3_600_000  # a record too short now is worth a look in an hour
        rec = self.records.get(dev)
        if rec is None or rec.span_h() * 3600 < r.min_history_s:
            return still
        lat = float(self.devices.lat[dev]) if np.isfinite(self.devices.lat[dev]) else r.lat
        tide = fit_tide(rec, r.constituents, lat, t, int((r.refit_every_s + r.horizon_s) * 1000))
        self.tides[dev] = tide
        self.fitted[dev] = True
        return tide

    def _sum_hours(self, dev: Index, t: IntArray, v: FloatArray) -> None:
        """Add the round's readings to each device's current hour; an hour that has ended
        goes into the device's record (once per device and hour, not per reading)."""
        hour = t // HOUR_MS
        ended = dev[(self.hour[dev] != hour) & (self.hour_n[dev] > 0)]
        for d in ended.tolist():
            self._record(d).add_hour(int(self.hour[d]), float(self.hour_sum[d]), int(self.hour_n[d]),
                                     float(self.hour_times[d]))
        new = dev[self.hour[dev] != hour]
        self.hour_sum[new] = self.hour_n[new] = self.hour_times[new] = 0.0
        self.hour[dev] = hour
        self.hour_sum[dev] += v
        self.hour_n[dev] += 1.0
        self.hour_times[dev] += (t - hour * HOUR_MS).astype(np.float64)

    def evaluate(self, rnd: Round) -> Signals | None:
        r = self.rule
        v_all = rnd.values[r.metric]
        ref = self.reference(rnd)
        n = len(rnd.dev)
        sig = np.full(n, _BAND, np.int8)
        value = np.full(n, np.nan)
        limit = np.full(n, r.limit) if ref is None else r.limit + ref
        eta = np.full(n, np.nan)
        rain_near = None
        if self.rain is not None and r.rain_m_per_mm > 0:
            near = self.rain.nearest_judged()[rnd.dev]
            totals = getattr(self.rain, "last_total", None)
            if totals is not None:
                rain_near = np.where(near >= 0, totals[np.maximum(near, 0)], 0.0)
        ahead = np.arange(GRID_MS, int(r.horizon_s * 1000) + GRID_MS, GRID_MS, dtype=np.float64)
        good = np.isfinite(v_all)
        self._sum_hours(rnd.dev[good], rnd.t[good], v_all[good])
        # only stations with a tide, or due a try at fitting one, need more than that
        busy = np.flatnonzero(good & (self.fitted[rnd.dev] | (rnd.t >= self.next_check[rnd.dev])))
        for i in busy.tolist():
            dev, t, v = int(rnd.dev[i]), int(rnd.t[i]), float(v_all[i])
            tide = self._tide(dev, t)
            if tide is None or not np.isfinite(limit[i]):
                continue
            now = float(tide.at(t))
            if not np.isfinite(now):
                continue
            residual = v - now
            prev_t = int(self.surge_t[dev])
            if prev_t == NEVER or not np.isfinite(self.surge[dev]):
                self.surge[dev] = residual
            elif t > prev_t:
                dt_s = (t - prev_t) / 1000.0
                before = float(self.surge[dev])
                self.surge[dev] += (residual - before) * (1.0 - np.exp(-dt_s / r.surge_tau_s))
                rate = (float(self.surge[dev]) - before) / dt_s
                self.surge_slope[dev] += (rate - self.surge_slope[dev]) * (1.0 - np.exp(-dt_s / 3600.0))
            self.surge_t[dev] = t
            rise = 0.0
            if rain_near is not None and np.isfinite(rain_near[i]):
                rise = float(rain_near[i]) * r.rain_m_per_mm
            self.rain_rise[dev] = rise
            if r.watch == "surge":
                surge = float(self.surge[dev])
                value[i] = surge
                limit[i] = r.limit
                if surge >= r.limit:
                    sig[i] = _BREACH
                elif surge < r.limit - r.clear_margin:
                    sig[i] = _CLEAR
                continue
            rising = float(self.surge_slope[dev]) if self.surge[dev] >= r.surge_trend_min_m else 0.0
            trend = max(0.0, rising) * np.minimum(ahead, r.surge_trend_s * 1000) / 1000.0
            future = tide.at(t + ahead) + self.surge[dev] + trend + rise
            if not np.isfinite(future).any():
                continue
            k = int(np.nanargmax(future))
            self.peak[dev], self.peak_t[dev] = future[k], t + int(ahead[k])
            self.surge_at_peak[dev] = self.surge[dev] + trend[k]
            value[i] = future[k]
            over = np.flatnonzero(future >= limit[i])
            if v >= limit[i]:
                continue  # the level is over: the threshold alarm speaks, the warning holds
            if len(over):
                sig[i], eta[i] = _BREACH, ahead[over[0]] / 1000.0
            elif future[k] < limit[i] - r.clear_margin:
                sig[i] = _CLEAR
        sev = np.full(n, self.severity, np.int8)
        return Signals(rnd.dev, rnd.t, sig, sev, value, limit, eta)

    def describe(self, key: int) -> dict[str, object]:
        import datetime as dt

        peak_t = int(self.peak_t[key]) if key < len(self.peak_t) else NEVER
        local = dt.datetime.fromtimestamp(peak_t / 1000, dt.UTC) + dt.timedelta(hours=8) if peak_t != NEVER else None
        out: dict[str, object] = {
            "surge": float(self.surge_at_peak[key]), "rain": float(self.rain_rise[key]),
            "tide": float(self.peak[key] - self.surge_at_peak[key] - self.rain_rise[key]),
            "peak": float(self.peak[key]), "peak_at": local.strftime("%H:%M") if local else "?",
        }
        return out


class CompositeEval(Evaluator):
    rule: CompositeRule

    def __init__(self, rule: CompositeRule, devices: Devices, buffers: Buffers, deps: list[Evaluator]) -> None:
        #: every part, in the order all_of, nearby, not_nearby
        self.deps = deps
        n_all, n_near = len(rule.all_of), len(rule.nearby)
        self.own = deps[:n_all]
        self.near = deps[n_all:n_all + n_near]
        self.not_near = deps[n_all + n_near:]
        super().__init__(rule, devices, buffers)
        self.groups = Groups(devices, rule.measurement, rule.group_by, self._grow_keys)

    def _all_recent(self, dev: Index, since: IntArray) -> npt.NDArray[np.bool_]:
        ok = np.ones(len(dev), bool)
        for d in self.own:
            ok &= d.last_breach[dev] >= since
        return ok

    def _neighbours_agree(self, dev: Index, t: IntArray) -> npt.NDArray[np.bool_]:
        ok = np.ones(len(dev), bool)
        since = t - int(self.rule.nearby_within_s * 1000)
        for deps, wanted in ((self.near, True), (self.not_near, False)):
            for d in deps:
                near = d.nearest_judged()[dev]
                breached = np.where(near >= 0, d.last_breach[np.maximum(near, 0)] >= since, False)
                ok &= breached if wanted else ~breached
        return ok

    def describe(self, key: int) -> dict[str, object]:
        out: dict[str, object] = {}
        for d in (*self.near, *self.not_near):
            near = int(d.nearest_judged()[key]) if key < len(self.devices) else -1
            out[f"near_{d.rule.id.split('.')[-1]}"] = self.devices.device[near] if near >= 0 else "none"
        return out

    def key_label(self, key: int) -> tuple[str, str]:
        if self.rule.scope == "device":
            return super().key_label(key)
        return self.groups.names[key]

    def contributors(self, key: int) -> list[str] | None:
        """Scope device: the device and the nearest sensors that agreed; scope group: the
        members whose own conditions held within the rule's time, as of the group's now."""
        devices = self.devices
        if self.rule.scope == "device":
            agreeing = [int(d.nearest_judged()[key]) for d in self.near] if key < len(devices) else []
            names = [devices.device[key], *(devices.device[n] for n in agreeing if n >= 0)]
            return names if len(names) > 1 else None
        members, mg = self.groups.members()
        mine = members[mg == key]
        if len(mine) == 0:
            return None
        since = int(devices.last_seen[mine].max()) - int(self.rule.within_s * 1000)
        held = mine[self._all_recent(mine, np.full(len(mine), since, np.int64))]
        return [devices.device[i] for i in held[:MAX_CONTRIBUTORS]] or None

    def evaluate(self, rnd: Round) -> Signals | None:
        r = self.rule
        within = int(r.within_s * 1000)
        if r.scope == "device":
            ok = self._all_recent(rnd.dev, rnd.t - within)
            if self.near or self.not_near:
                ok &= self._neighbours_agree(rnd.dev, rnd.t)
            sig = np.where(ok, _BREACH, _CLEAR).astype(np.int8)
            first = self.own[0]
            v = rnd.values[first.metrics[0]] if first.metrics and first.metrics[0] in rnd.values \
                else np.full(len(ok), np.nan)
            return Signals(rnd.dev, rnd.t, sig, np.full(len(ok), self.severity, np.int8), v,
                           np.full(len(ok), np.nan))
        dev_group = self.groups.of_devices()
        gid = dev_group[rnd.dev]
        touched = np.unique(gid[gid >= 0])
        if len(touched) == 0:
            return None
        ngroups = len(self.groups.names)
        g_now = np.full(ngroups, NEVER, np.int64)
        np.maximum.at(g_now, gid[gid >= 0], rnd.t[gid >= 0])
        members, mg = self.groups.members()
        # members still reporting: a silent one (a dead controller) counts neither way
        alive = self.devices.last_seen[members] >= g_now[mg] - int(r.member_silent_s * 1000)
        members, mg = members[alive], mg[alive]
        ok = self._all_recent(members, g_now[mg] - within) & (g_now[mg] > NEVER)
        size = np.bincount(mg, minlength=ngroups)[touched]
        hit = np.bincount(mg[ok], minlength=ngroups)[touched]
        frac = hit / np.maximum(size, 1)
        breach = (frac >= r.min_fraction) & (size >= r.min_group_size)
        sig = np.where(breach, _BREACH, _CLEAR).astype(np.int8)
        n = len(touched)
        return Signals(touched.astype(np.intp), g_now[touched], sig, np.full(n, self.severity, np.int8),
                       frac.astype(np.float64), np.full(n, r.min_fraction))


class DeadmanEval(Evaluator):
    rule: DeadmanRule

    def __init__(self, rule: DeadmanRule, devices: Devices, buffers: Buffers) -> None:
        super().__init__(rule, devices, buffers)
        self.groups = (Groups(devices, rule.measurement, rule.group_by, self._grow_keys)
                       if rule.scope == "group" else None)
        self.tracks_breach = self.groups is None

    def key_label(self, key: int) -> tuple[str, str]:
        return super().key_label(key) if self.groups is None else self.groups.names[key]

    def contributors(self, key: int) -> list[str] | None:
        """Scope group: the members silent beyond the rule's time-out, each against its
        gateway's now."""
        if self.groups is None:
            return None
        members, mg = self.groups.members()
        mine = members[mg == key]
        gw = self.devices.gateway[mine]
        mine, gw = mine[gw >= 0], gw[gw >= 0]
        last = self.devices.last_seen[mine]
        last = np.where(last == NEVER, self.devices.gateways.first[gw], last)
        silent = mine[(self.devices.gateways.now[gw] - last) / 1000.0 > self.rule.timeout_s]
        return [self.devices.device[i] for i in silent[:MAX_CONTRIBUTORS]] or None

    def evaluate_gateways(self, gateways: Index) -> Signals | None:
        """Devices of the gateways whose event time advanced, against their gateway's now
        (scope group: their groups, by the share of members silent)."""
        devs = self.devices.of_measurement(self.rule.measurement)
        if len(devs) == 0:
            return None
        gw = self.devices.gateway[devs]
        sel = np.isin(gw, gateways)
        devs, gw = devs[sel], gw[sel]
        if len(devs) == 0:
            return None
        now = self.devices.gateways.now[gw]
        last = self.devices.last_seen[devs]
        last = np.where(last == NEVER, self.devices.gateways.first[gw], last)
        silent_s = (now - last) / 1000.0
        if self.groups is not None:
            return self._groups_silent(devs, now, silent_s)
        sig = np.where(silent_s > self.rule.timeout_s, _BREACH, _CLEAR).astype(np.int8)
        n = len(devs)
        return Signals(devs, now, sig, np.full(n, self.severity, np.int8), silent_s,
                       np.full(n, self.rule.timeout_s))

    def _groups_silent(self, devs: Index, now: IntArray, silent_s: FloatArray) -> Signals | None:
        assert self.groups is not None
        r = self.rule
        gid = self.groups.of_devices()[devs]
        keep = gid >= 0
        devs, now, silent_s, gid = devs[keep], now[keep], silent_s[keep], gid[keep]
        if len(devs) == 0:
            return None
        n_groups = len(self.groups.names)
        size = np.bincount(gid, minlength=n_groups)
        quiet = np.bincount(gid[silent_s > r.timeout_s], minlength=n_groups)
        g_now = np.full(n_groups, NEVER, np.int64)
        np.maximum.at(g_now, gid, now)
        touched = np.unique(gid)
        frac = quiet[touched] / np.maximum(size[touched], 1)
        breach = (frac >= r.min_fraction) & (size[touched] >= r.min_group_size)
        sig = np.where(breach, _BREACH, _CLEAR).astype(np.int8)
        k = len(touched)
        return Signals(touched.astype(np.intp), g_now[touched], sig, np.full(k, self.severity, np.int8),
                       frac.astype(np.float64), np.full(k, r.min_fraction))


class AqiEval(Evaluator):
    """Rolling means per pollutant -> IAQI -> AQI; alerts on AQI and emits `aqi` points."""

    rule: AqiRule
    WINDOWS: ClassVar[dict[str, tuple[float, int]]] = {
        "1h": (3600.0, 12), "8h": (8 * 3600.0, 16), "24h": (24 * 3600.0, 24)}

    def __init__(self, rule: Rule, devices: Devices, buffers: Buffers) -> None:
        super().__init__(rule, devices, buffers)
        assert isinstance(rule, AqiRule)
        self.table = AqiTable.load(TABLES_DIR / rule.table)
        self.inputs: list[tuple[str, str]] = []
        for item in rule.inputs:
            pollutant, _, period = item.partition("/")
            row = self.table.row(pollutant, period)
            self.inputs.append((pollutant, period))
            if row.above_top:
                self.table.row(pollutant, row.above_top)
        self.metric_of = {p: self.table.row(p, q).metric for p, q in self.inputs}
        self.metrics = tuple(sorted(set(self.metric_of.values())))
        #: (device index, t, aqi, level, primary, {pollutant: iaqi}) waiting to be written.
        self.points: list[tuple[int, int, int, str, str, dict[str, float]]] = []

    STATE: ClassVar[dict[str, tuple[float, type]]] = {**Evaluator.STATE, "last_eval": (NEVER, np.int64)}
    last_eval: IntArray

    def _mean(self, rnd: Round, rows: Index, metric: str, period: str) -> FloatArray:
        window_s, buckets = self.WINDOWS[period]
        buf = self.buffers.fed(rnd, self.rule.measurement, metric, window_s, buckets)
        return buf.rolling_mean(rnd.dev[rows], rnd.t[rows])

    def evaluate(self, rnd: Round) -> Signals | None:
        r = self.rule
        # Every sample feeds the windows; the AQI itself (hour-long means) is worked out
        # once per write_every_s per station, which is all an hourly index needs.
        for pollutant, period in self.inputs:
            metric = self.metric_of[pollutant]
            if metric in rnd.values:
                for p in {period, "1h", self.table.row(pollutant, period).above_top or period}:
                    self.buffers.fed(rnd, self.rule.measurement, metric, *self.WINDOWS[p])
        rows = np.flatnonzero(rnd.t - self.last_eval[rnd.dev] >= r.write_every_s * 1000)
        if len(rows) == 0:
            return None
        iaqi: dict[str, FloatArray] = {}
        for pollutant, period in self.inputs:
            metric = self.metric_of[pollutant]
            if metric not in rnd.values:
                continue
            means: dict[str, FloatArray] = {}
            row = self.table.row(pollutant, period)
            feed = "1h" if (r.hourly_pm and pollutant in ("pm25", "pm10")) else period
            means[period] = self._mean(rnd, rows, metric, feed)
            if row.above_top:
                means[row.above_top] = self._mean(rnd, rows, metric, row.above_top)
            value = self.table.iaqi_of(pollutant, period, means)
            iaqi[pollutant] = value if pollutant not in iaqi else np.fmax(iaqi[pollutant], value)
        if not iaqi:
            return None
        dev, t = rnd.dev[rows], rnd.t[rows]
        self.last_eval[dev] = t
        aqi = self.table.aqi_of(iaqi)
        for j in np.flatnonzero(aqi >= 0):
            station = {p: float(a[j]) for p, a in iaqi.items() if not np.isnan(a[j])}
            level, primary = self.table.describe(station, int(aqi[j]))
            self.points.append((int(dev[j]), int(t[j]), int(aqi[j]), level, primary, station))
        value = np.where(aqi >= 0, aqi, np.nan).astype(np.float64)
        sub = Round(rnd.measurement, dev, t, {})
        return self._hysteresis(sub, value, "above", r.threshold, r.clear, r.critical_threshold)

    def drain_lines(self) -> list[str]:
        lines: list[str] = []
        for dev, t, aqi, level, primary, iaqi in self.points:
            fields: dict[str, object] = {"aqi": aqi, "level": level, "primary": primary}
            fields.update({f"iaqi_{p}": round(v, 2) for p, v in iaqi.items()})
            lines.append(encode_point("aqi", {"district": self.devices.district[dev],
                                              "device": self.devices.device[dev]}, fields, t))
        self.points.clear()
        return lines


class WaterClassEval(Evaluator):
    """Rolling means per parameter -> class per parameter -> the station's class (the
    worst); alerts while it is worse than the station's target, writes `water_class`."""

    rule: WaterClassRule
    BUCKETS: ClassVar[int] = 12

    def __init__(self, rule: Rule, devices: Devices, buffers: Buffers) -> None:
        super().__init__(rule, devices, buffers)
        assert isinstance(rule, WaterClassRule)
        self.table = SurfaceWaterTable.load(TABLES_DIR / rule.table)
        self.metric_of = {p: self.table.parameter(p).metric for p in rule.parameters}
        self.metrics = tuple(sorted(set(self.metric_of.values())))
        #: (device index, t, class, {parameter: class}) waiting to be written.
        self.points: list[tuple[int, int, int, dict[str, int]]] = []
        #: device index -> its last class and the parameters that set it (for messages).
        self.last: dict[int, tuple[int, list[str]]] = {}

    STATE: ClassVar[dict[str, tuple[float, type]]] = {**Evaluator.STATE, "last_eval": (NEVER, np.int64)}
    last_eval: IntArray

    def evaluate(self, rnd: Round) -> Signals | None:
        r = self.rule
        for metric in self.metrics:
            if metric in rnd.values:
                self.buffers.fed(rnd, r.measurement, metric, r.window_s, self.BUCKETS)
        rows = np.flatnonzero(rnd.t - self.last_eval[rnd.dev] >= r.write_every_s * 1000)
        if len(rows) == 0:
            return None
        dev, t = rnd.dev[rows], rnd.t[rows]
        lake = np.array([self.devices.labels[d].get(r.waterbody_label) == "lake" for d in dev], bool)
        per: dict[str, npt.NDArray[np.int8]] = {}
        for name, metric in self.metric_of.items():
            if metric not in rnd.values:
                continue
            means = self.buffers.get(r.measurement, metric, r.window_s, self.BUCKETS).rolling_mean(dev, t)
            cls = self.table.parameter(name).class_of(means)
            if lake.any():
                cls = np.where(lake, self.table.parameter(name, "lake").class_of(means), cls).astype(np.int8)
            per[name] = cls
        if not per:
            return None
        self.last_eval[dev] = t
        station = SurfaceWaterTable.station_class(per)
        for j in np.flatnonzero(station > 0):
            classes = {p: int(c[j]) for p, c in per.items() if c[j] > 0}
            self.points.append((int(dev[j]), int(t[j]), int(station[j]), classes))
            self.last[int(dev[j])] = (int(station[j]), SurfaceWaterTable.deciding(classes, int(station[j])))
        target = self._targets(dev)
        value = np.where(station > 0, station, np.nan).astype(np.float64)
        sig = np.where(value > target, _BREACH, _CLEAR).astype(np.int8)
        sig[np.isnan(value)] = _BAND
        sev = np.where(station >= WORSE, sev_index("critical"), self.severity).astype(np.int8)
        return Signals(dev, t, sig, sev, value, target)

    def _targets(self, dev: Index) -> FloatArray:
        """Each station's target class: its own label, else the rule's."""
        r = self.rule
        target = np.full(len(dev), float(r.target))
        if r.target_label is None:
            return target
        own = self.devices.label_values(r.target_label)[dev]
        return np.where(np.isnan(own), target, own)

    def describe(self, key: int) -> dict[str, object]:
        cls, deciding = self.last.get(key, (0, []))
        target = float(self._targets(np.array([key], np.intp))[0])
        names = {name: self.table.parameter(name).metric for name in deciding}
        return {"class_name": f"class {self.table.name(cls)}" if 1 <= cls < WORSE else self.table.name(cls),
                "target_name": f"class {self.table.name(int(target))}",
                "deciding": ", ".join(f"{n} ({m})" for n, m in names.items()) or "-"}

    def drain_lines(self) -> list[str]:
        lines: list[str] = []
        for dev, t, cls, classes in self.points:
            fields: dict[str, object] = {"class": cls, "class_name": self.table.name(cls),
                                         "deciding": ",".join(SurfaceWaterTable.deciding(classes, cls))}
            fields.update({f"class_{p}": c for p, c in classes.items()})
            lines.append(encode_point("water_class", {"district": self.devices.district[dev],
                                                      "device": self.devices.device[dev]}, fields, t))
        self.points.clear()
        return lines


KIND_EVALUATORS: dict[str, type[Evaluator]] = {
    "threshold": ThresholdEval, "rate": RateEval, "forecast": ForecastEval, "anomaly": AnomalyEval,
    "flatline": FlatlineEval, "drift": DriftEval, "deadman": DeadmanEval, "aqi": AqiEval,
    "counter_check": CounterCheckEval, "water_class": WaterClassEval, "accumulation": AccumulationEval,
}
