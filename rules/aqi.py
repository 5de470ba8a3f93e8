"""China AQI per HJ 633-2012, vectorised over many stations.

The breakpoint table is versioned data (rules/tables/aqi-hj633-2012.yaml). For a
concentration C in the bracket [BP_lo, BP_hi] with index bounds [I_lo, I_hi]:

    IAQI = (I_hi - I_lo) / (BP_hi - BP_lo) * (C - BP_lo) + I_lo

e.g. PM2.5 24 h = 55 ug/m3 lies in [35, 75] -> (100-50)/(75-35)*(55-35)+50 = 75.
AQI = max IAQI, rounded up to an integer (HJ 633-2012 5.2: results are carried up to
whole numbers); the primary pollutant is named only when AQI > 50. Above a row's top
breakpoint the IAQI is 500, except where the standard redirects: SO2 1 h > 800 uses
the SO2 24 h IAQI, O3 8 h > 800 uses the O3 1 h IAQI.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import yaml

TABLES_DIR = Path(__file__).resolve().parent / "tables"
DEFAULT_TABLE = TABLES_DIR / "aqi-hj633-2012.yaml"

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class AqiRow:
    pollutant: str
    metric: str
    period: str
    breakpoints: tuple[float, ...]
    above_top: str | None


@dataclass(frozen=True, slots=True)
class AqiLevel:
    max: int
    level: str
    zh: str
    color: str


class AqiTableError(ValueError):
    pass


class AqiTable:
    def __init__(self, standard: str, version: int, iaqi: list[float], rows: list[AqiRow],
                 levels: list[AqiLevel]) -> None:
        self.standard = standard
        self.version = version
        self.iaqi = tuple(float(x) for x in iaqi)
        self.rows = {(r.pollutant, r.period): r for r in rows}
        self.levels = levels
        for r in rows:
            bps = r.breakpoints
            if len(bps) > len(self.iaqi):
                raise AqiTableError(f"{r.pollutant} {r.period}: more breakpoints than IAQI levels")
            if any(nxt <= cur for cur, nxt in itertools.pairwise(bps)):
                raise AqiTableError(f"{r.pollutant} {r.period}: breakpoints must increase")
            if r.above_top and (r.pollutant, r.above_top) not in {(x.pollutant, x.period) for x in rows}:
                raise AqiTableError(f"{r.pollutant} {r.period}: above_top names missing row {r.above_top}")

    @classmethod
    def load(cls, path: Path = DEFAULT_TABLE) -> AqiTable:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        try:
            rows = [AqiRow(str(r["pollutant"]), str(r["metric"]), str(r["period"]),
                           tuple(float(b) for b in r["breakpoints"]), r.get("above_top"))
                    for r in raw["rows"]]
            levels = [AqiLevel(int(lv["max"]), str(lv["level"]), str(lv.get("zh", "")),
                               str(lv.get("color", ""))) for lv in raw["levels"]]
            return cls(str(raw["standard"]), int(raw["version"]), list(raw["iaqi"]), rows, levels)
        except (KeyError, TypeError) as exc:
            raise AqiTableError(f"{path}: malformed AQI table ({exc})") from None

    def row(self, pollutant: str, period: str) -> AqiRow:
        try:
            return self.rows[(pollutant, period)]
        except KeyError:
            have = ", ".join(f"{p}/{q}" for p, q in self.rows)
            raise AqiTableError(f"no AQI row {pollutant}/{period} in {self.standard}; have {have}") from None

    def _interp(self, row: AqiRow, conc: FloatArray) -> FloatArray:
        bps = np.asarray(row.breakpoints)
        out = np.interp(conc, bps, np.asarray(self.iaqi[: len(bps)]))
        if row.above_top is None:
            out = np.where(conc > bps[-1], self.iaqi[-1], out)
        return np.where(np.isnan(conc) | (conc < 0), np.nan, out)

    def iaqi_of(self, pollutant: str, period: str, means: dict[str, FloatArray]) -> FloatArray:
        """IAQI of `pollutant` over `period` given rolling means keyed by period ("1h", ...)."""
        row = self.row(pollutant, period)
        conc = means[period]
        out = self._interp(row, conc)
        if row.above_top is not None:
            above = conc > row.breakpoints[-1]
            if np.any(above):
                other = means.get(row.above_top)
                fallback = (self._interp(self.row(pollutant, row.above_top), other)
                            if other is not None else np.full_like(conc, np.nan))
                out = np.where(above, fallback, out)
        return out

    def aqi_of(self, iaqi: dict[str, FloatArray]) -> npt.NDArray[np.int64]:
        """Per-pollutant IAQI -> AQI carried up to an integer (-1 where no pollutant is known)."""
        stack = np.vstack(list(iaqi.values()))
        known = ~np.all(np.isnan(stack), axis=0)
        top = np.max(np.where(np.isnan(stack), -1.0, stack), axis=0)
        # round first so that 75.0000000001 from float arithmetic is not carried up to 76
        return np.where(known, np.ceil(np.round(top, 9)), -1).astype(np.int64)

    def describe(self, iaqi: dict[str, float], aqi: int) -> tuple[str, str]:
        """(level, primary pollutants) of one station; primary only when AQI > 50."""
        if aqi <= 50:
            return self.level(aqi), ""
        vals = {p: round(v, 9) for p, v in iaqi.items() if not math.isnan(v)}
        best = max(vals.values())
        return self.level(aqi), ",".join(p for p, v in vals.items() if v == best)

    def combine(self, iaqi: dict[str, FloatArray]) -> tuple[npt.NDArray[np.int64], list[str], list[str]]:
        """Per-pollutant IAQI -> (AQI, level names, primary pollutants) per station."""
        aqi = self.aqi_of(iaqi)
        described = [self.describe({p: float(a[j]) for p, a in iaqi.items()}, int(aqi[j])) for j in range(len(aqi))]
        return aqi, [d[0] for d in described], [d[1] for d in described]

    def level(self, aqi: int) -> str:
        if aqi < 0:
            return "unknown"
        for lv in self.levels:
            if aqi <= lv.max:
                return lv.level
        return self.levels[-1].level
