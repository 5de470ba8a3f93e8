"""Per-device look-back windows kept as ring buffers of time buckets, in numpy arrays.

A window of 600 s with 30 buckets keeps, per device, the sum and count of the samples
in each 20 s bucket, plus the bucket number each slot holds. A sample at event time t
goes to bucket b = t // 20000, slot b % 30; a slot holding an older bucket number is
stale and is reset before use. So for 5,000 devices a window costs 3 arrays of
5,000 x 30, whatever the sample rate, and one update is a few fancy-indexed writes.
Rules on the same (measurement, metric, window) share one buffer.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Index = npt.NDArray[np.intp]


class TimeBuckets:
    def __init__(self, window_s: float, buckets: int, capacity: int = 0) -> None:
        self.buckets = buckets
        self.width_ms = max(1, round(window_s * 1000 / buckets))
        self.sums = np.zeros((capacity, buckets))
        self.counts = np.zeros((capacity, buckets), np.int32)
        self.slot_bucket = np.full((capacity, buckets), -1, np.int64)

    def grow(self, capacity: int) -> None:
        n = self.sums.shape[0]
        if capacity <= n:
            return
        extra = capacity - n
        self.sums = np.vstack([self.sums, np.zeros((extra, self.buckets))])
        self.counts = np.vstack([self.counts, np.zeros((extra, self.buckets), np.int32)])
        self.slot_bucket = np.vstack([self.slot_bucket, np.full((extra, self.buckets), -1, np.int64)])

    def add(self, dev: Index, t: IntArray, value: FloatArray) -> None:
        """Add one sample per device (`dev` unique); NaN values are skipped."""
        ok = ~np.isnan(value)
        if not ok.all():
            dev, t, value = dev[ok], t[ok], value[ok]
        b = t // self.width_ms
        slot = b % self.buckets
        stale = self.slot_bucket[dev, slot] != b
        if stale.any():
            sd, ss = dev[stale], slot[stale]
            self.sums[sd, ss] = 0.0
            self.counts[sd, ss] = 0
            self.slot_bucket[sd, ss] = b[stale]
        self.sums[dev, slot] += value
        self.counts[dev, slot] += 1

    def view(self, dev: Index, t: IntArray) -> tuple[FloatArray, FloatArray, npt.NDArray[np.bool_]]:
        """(bucket means, bucket centre times relative to t in seconds, valid mask), rows per device."""
        b_now = (t // self.width_ms)[:, None]
        sb = self.slot_bucket[dev]
        cnt = self.counts[dev]
        valid = (cnt > 0) & (sb > b_now - self.buckets) & (sb <= b_now)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = self.sums[dev] / np.maximum(cnt, 1)
        centre_s = ((sb * self.width_ms + self.width_ms / 2) - t[:, None]) / 1000.0
        return means.astype(np.float64), centre_s.astype(np.float64), valid

    def rolling_mean(self, dev: Index, t: IntArray) -> FloatArray:
        """Mean of every sample in the window ending at t (NaN when there is none)."""
        b_now = (t // self.width_ms)[:, None]
        sb = self.slot_bucket[dev]
        valid = (sb > b_now - self.buckets) & (sb <= b_now)
        n = np.where(valid, self.counts[dev], 0).sum(axis=1)
        total = np.where(valid, self.sums[dev], 0.0).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, total / np.maximum(n, 1), np.nan)

    def window_sum(self, dev: Index, t: IntArray) -> FloatArray:
        """Sum of every sample in the window ending at t (0 when there is none)."""
        b_now = (t // self.width_ms)[:, None]
        sb = self.slot_bucket[dev]
        valid = (sb > b_now - self.buckets) & (sb <= b_now)
        return np.where(valid, self.sums[dev], 0.0).sum(axis=1)

    def state(self) -> dict[str, npt.NDArray[np.generic]]:
        return {"sums": self.sums, "counts": self.counts, "slot_bucket": self.slot_bucket}


def linear_fit(x: FloatArray, y: FloatArray,
               valid: npt.NDArray[np.bool_]) -> tuple[FloatArray, FloatArray, npt.NDArray[np.int64]]:
    """Row-wise least squares y = a + b x over valid cells: returns (a, b, n)."""
    w = valid.astype(np.float64)
    n = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        xm = np.where(valid, x, 0.0).sum(axis=1) / n
        ym = np.where(valid, y, 0.0).sum(axis=1) / n
        dx = np.where(valid, x - xm[:, None], 0.0)
        dy = np.where(valid, y - ym[:, None], 0.0)
        sxx = (dx * dx).sum(axis=1)
        slope = np.where(sxx > 0, (dx * dy).sum(axis=1) / np.where(sxx > 0, sxx, 1.0), np.nan)
    return ym - slope * xm, slope, n.astype(np.int64)


def quadratic_fit(x: FloatArray, y: FloatArray,
                  valid: npt.NDArray[np.bool_]) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Row-wise least squares y = a + b x + c x^2 over valid cells: returns (a, b, c), NaN
    where a row has fewer than three distinct points. For signals that turn (a tide
    slowing towards its high water), where a straight line overshoots."""
    w = valid.astype(np.float64)
    xs = np.where(valid, x, 0.0)
    ys = np.where(valid, y, 0.0)
    # normal equations in x (seconds, relative to now: the window's x are <= 0 and small)
    s = [(w * xs**k).sum(axis=1) for k in range(5)]
    t = [(w * ys * xs**k).sum(axis=1) for k in range(3)]
    m = np.stack([np.stack([s[0], s[1], s[2]], -1), np.stack([s[1], s[2], s[3]], -1),
                  np.stack([s[2], s[3], s[4]], -1)], -2)
    rhs = np.stack(t, -1)
    out = np.full((len(x), 3), np.nan)
    ok = (w.sum(axis=1) >= 3) & (np.abs(np.linalg.det(m)) > 1e-12)
    if ok.any():
        out[ok] = np.linalg.solve(m[ok], rhs[ok][..., None])[..., 0]
    return out[:, 0], out[:, 1], out[:, 2]


def first_crossing(a: FloatArray, b: FloatArray, c: FloatArray, limit: float | FloatArray,
                   sign: float, horizon_s: float) -> FloatArray:
    """Seconds until a + b t + c t^2 first reaches `limit` from below (sign 1) or above
    (sign -1), for t in [0, horizon_s]; inf when it does not within the horizon."""
    # sign * (a + b t + c t^2 - limit) >= 0: roots of the quadratic, the smallest in range
    qa, qb, qc = sign * c, sign * b, sign * (a - limit)
    with np.errstate(invalid="ignore", divide="ignore"):
        disc = qb * qb - 4 * qa * qc
        root = np.sqrt(np.where(disc >= 0, disc, np.nan))
        r1 = np.where(qa != 0, (-qb - root) / (2 * qa), -qc / np.where(qb != 0, qb, np.nan))
        r2 = np.where(qa != 0, (-qb + root) / (2 * qa), np.nan)
    lo, hi = np.fmin(r1, r2), np.fmax(r1, r2)
    eta = np.where(qc >= 0, 0.0, np.where((lo >= 0) & (lo <= horizon_s), lo,
                                          np.where((hi >= 0) & (hi <= horizon_s), hi, np.inf)))
    return np.where(np.isnan(eta), np.inf, eta)


def theil_sen(x: FloatArray, y: FloatArray,
              valid: npt.NDArray[np.bool_]) -> tuple[FloatArray, FloatArray, npt.NDArray[np.int64]]:
    """Row-wise Theil-Sen line y = a + b x over valid cells: b is the median of the
    slopes between every pair of points, a the median of y - b x. Up to about 29 % of
    the points may be wild without moving it (a spike is one point; least squares
    follows it). Returns (a, b, n) like `linear_fit`."""
    rows, cols = y.shape
    i, j = np.triu_indices(cols, 1)
    dx = x[:, j] - x[:, i]
    ok = valid[:, i] & valid[:, j] & (dx != 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        pair = np.where(ok, (y[:, j] - y[:, i]) / np.where(ok, dx, 1.0), np.nan)
    slope = row_nanmedian(pair) if len(i) else np.full(rows, np.nan)
    level = row_nanmedian(np.where(valid, y - slope[:, None] * x, np.nan))
    return level, slope, valid.sum(axis=1).astype(np.int64)


def slope_stderr(x: FloatArray, y: FloatArray, valid: npt.NDArray[np.bool_], level: FloatArray,
                 slope: FloatArray) -> FloatArray:
    """Standard error of a fitted slope per row: sigma / sqrt(sum (x - mean x)^2), sigma the
    residuals' root mean square (n - 2 degrees of freedom). A wild point inflates it,
    which only makes a trend harder to claim. A slope a few times this is a trend, not
    noise, whatever the signal's units."""
    resid = np.where(valid, y - (level[:, None] + slope[:, None] * x), 0.0)
    w = valid.astype(np.float64)
    n = np.maximum(w.sum(axis=1), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sigma = np.sqrt((resid * resid).sum(axis=1) / np.maximum(n - 2.0, 1.0))
    xm = np.where(valid, x, 0.0).sum(axis=1) / n
    sxx = (np.where(valid, x - xm[:, None], 0.0) ** 2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sxx > 0, sigma / np.sqrt(np.where(sxx > 0, sxx, 1.0)), np.inf)


def half_slopes(x: FloatArray, y: FloatArray,
                valid: npt.NDArray[np.bool_]) -> tuple[FloatArray, FloatArray]:
    """Least-squares slopes of the older and the newer half of each row's valid points
    (split half-way between the oldest and the newest); NaN for a half with fewer than two points. A trend
    moves both halves; a step (a stuck sensor letting go, one jump) moves at most one."""
    lo = np.where(valid, x, np.inf).min(axis=1, initial=np.inf)
    hi = np.where(valid, x, -np.inf).max(axis=1, initial=-np.inf)
    with np.errstate(invalid="ignore"):
        mid = ((lo + hi) / 2.0)[:, None]
    old, new = valid & (x <= mid), valid & (x > mid)
    _, s_old, n_old = linear_fit(x, y, old)
    _, s_new, n_new = linear_fit(x, y, new)
    return np.where(n_old >= 2, s_old, np.nan), np.where(n_new >= 2, s_new, np.nan)


def row_nanmedian(a: FloatArray) -> FloatArray:
    """`np.nanmedian(a, axis=1)` of a 2-D array (NaN for a row without numbers), without
    numpy's masked-array path for small arrays: one sort (NaN sorts last) and two
    gathers, ~10x faster on window-sized rows."""
    rows, cols = a.shape
    if cols == 0:
        return np.full(rows, np.nan)
    s = np.sort(a, axis=1)
    n = cols - np.count_nonzero(np.isnan(a), axis=1)
    r = np.arange(rows)
    lo, hi = np.maximum((n - 1) // 2, 0), n // 2
    hi = np.minimum(hi, cols - 1)
    with np.errstate(invalid="ignore", over="ignore"):
        med = (s[r, lo] + s[r, hi]) / 2.0
    med[n == 0] = np.nan
    return med
