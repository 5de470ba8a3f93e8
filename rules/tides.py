"""A tide station's own record and its harmonic prediction, for the compound-flood rule.

The rules engine keeps each station's hourly mean level over the last weeks, fits the
tidal constituents to it with UTide (Codiga 2011; the Python port `utide`, least
squares, no nodal corrections over a few weeks), and predicts the astronomical tide
ahead. What the station reads above that prediction is the surge (wind, pressure, an
upstream flood). A fit needs a record long enough to tell its constituents apart: M2
from S2 takes 14.77 days (the Rayleigh criterion, 1 / (1/12.00 h - 1/12.42 h)), K1 from
O1 13.66 days.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
HOUR_MS = 3_600_000
#: Prediction grid (ms) cached at each fit.
GRID_MS = 300_000


@dataclass
class StationRecord:
    """Hourly means of one station's level (and of its readings' times), the newest
    `keep_h` hours."""

    keep_h: int
    sums: dict[int, float] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)
    times: dict[int, float] = field(default_factory=dict)

    def add(self, t_ms: int, value: float) -> None:
        if not np.isfinite(value):
            return
        hour = t_ms // HOUR_MS
        self.add_hour(hour, value, 1, float(t_ms - hour * HOUR_MS))

    def add_hour(self, hour: int, total: float, count: int, times_ms: float) -> None:
        """Add an hour's readings at once: their sum, count and the sum of their times
        after the hour's start (ms)."""
        if count <= 0:
            return
        self.sums[hour] = self.sums.get(hour, 0.0) + total
        self.counts[hour] = self.counts.get(hour, 0) + count
        self.times[hour] = self.times.get(hour, 0.0) + times_ms
        if len(self.sums) > self.keep_h + 24:
            newest = max(self.sums)
            for h in [h for h in self.sums if h <= newest - self.keep_h]:
                del self.sums[h], self.counts[h], self.times[h]

    def span_h(self) -> int:
        """Hours between the first and the last hour with data."""
        return max(self.sums) - min(self.sums) + 1 if self.sums else 0

    def hourly(self) -> tuple[FloatArray, FloatArray]:
        """(the mean time of each hour's readings in ms, their mean), oldest first."""
        hours = sorted(self.sums)
        t = np.array([h * HOUR_MS + self.times[h] / self.counts[h] for h in hours], np.float64)
        v = np.array([self.sums[h] / self.counts[h] for h in hours], np.float64)
        return t, v


def _datetimes(t_ms: FloatArray) -> npt.NDArray[np.datetime64]:
    return (t_ms.astype(np.int64)).astype("datetime64[ms]")


@dataclass
class TidePrediction:
    """The fitted tide of one station, tabulated on a grid from its fit onwards."""

    fitted_at: int
    grid_t0: int
    values: FloatArray
    amplitudes: dict[str, float]

    def at(self, t_ms: FloatArray | int) -> FloatArray:
        """The predicted tide at these instants (linear between grid points; NaN outside)."""
        x = (np.asarray(t_ms, np.float64) - self.grid_t0) / GRID_MS
        out: FloatArray = np.interp(x, np.arange(len(self.values), dtype=np.float64), self.values,
                                    left=np.nan, right=np.nan)
        return out


def fit(record: StationRecord, constituents: list[str], lat: float, now_ms: int, ahead_ms: int) -> TidePrediction:
    """Fit `constituents` to the station's hourly record and tabulate the prediction from
    two hours before `now_ms` to `ahead_ms` after it."""
    import utide  # imported on first use: the fit is the only thing that needs it

    t, v = record.hourly()
    coef: Any = utide.solve(_datetimes(t), v, lat=lat, constit=constituents, method="ols", conf_int="none",
                            nodal=False, trend=False, verbose=False)
    t0 = now_ms - 2 * HOUR_MS
    grid = t0 + np.arange(0, ahead_ms + 2 * HOUR_MS + GRID_MS, GRID_MS, dtype=np.float64)
    recon: Any = utide.reconstruct(_datetimes(grid), coef, verbose=False)
    amplitudes = {str(n): float(a) for n, a in zip(coef.name, coef.A, strict=True)}
    return TidePrediction(now_ms, t0, np.asarray(recon.h, np.float64), amplitudes)
