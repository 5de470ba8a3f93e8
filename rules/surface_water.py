"""Surface-water class I-V per GB 3838-2002, vectorised over many stations.

The limits are versioned data (rules/tables/surface-water-gb3838-2002.yaml). Each
parameter's class is the best class whose limit the value meets; a station's class is
the worst over its parameters (the standard's single-factor method), and the parameters
at that class are named, as the AQI names its primary pollutant. Class 6 is "worse than
V"; 0 means no value.

e.g. ammonia nitrogen 1.2 mg/L: over III (1.0), within IV (1.5) -> IV; with dissolved
oxygen 5.5 mg/L (III) and permanganate 3 mg/L (II) the station is IV, named by nh3n.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import yaml

from rules.aqi import TABLES_DIR

DEFAULT_TABLE = TABLES_DIR / "surface-water-gb3838-2002.yaml"
WORSE = 6  # worse than class V (劣V)

FloatArray = npt.NDArray[np.float64]
ClassArray = npt.NDArray[np.int8]


class SurfaceWaterTableError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Parameter:
    name: str
    metric: str
    better: Literal["lower", "higher", "inside"]
    limits: tuple[float, ...]  # one per class I..V (lower/higher)
    range: tuple[float, float] | None  # inside
    waterbody: str  # any (the general row) or lake (lakes and reservoirs)

    def class_of(self, values: FloatArray) -> ClassArray:
        """Class 1..6 of each value (0 where NaN)."""
        v = np.asarray(values, np.float64)
        if self.better == "inside":
            assert self.range is not None
            out = np.where((v >= self.range[0]) & (v <= self.range[1]), 1, WORSE)
        elif self.better == "lower":
            # classes whose limit the value exceeds; equal limits count once each
            out = 1 + np.searchsorted(np.asarray(self.limits), v, side="left")
        else:
            out = 1 + np.searchsorted(-np.asarray(self.limits), -v, side="left")
        return np.where(np.isnan(v), 0, out).astype(np.int8)


class SurfaceWaterTable:
    def __init__(self, standard: str, version: int, classes: list[str], worse: str,
                 parameters: list[Parameter]) -> None:
        self.standard, self.version = standard, version
        self.names = [*classes, worse]
        if len(classes) != WORSE - 1:
            raise SurfaceWaterTableError(f"{standard}: give five classes (I-V), not {len(classes)}")
        self.parameters: dict[tuple[str, str], Parameter] = {}
        for p in parameters:
            if p.better == "inside":
                if p.range is None or p.range[0] >= p.range[1]:
                    raise SurfaceWaterTableError(f"{p.name}: better: inside needs range: [low, high]")
            else:
                if len(p.limits) != len(classes):
                    raise SurfaceWaterTableError(f"{p.name}: give one limit per class ({len(classes)})")
                steps = np.diff(p.limits) if p.better == "lower" else -np.diff(p.limits)
                if (steps < 0).any():
                    worse_way = "rise" if p.better == "lower" else "fall"
                    raise SurfaceWaterTableError(f"{p.name}: limits must {worse_way} from class I to V")
            self.parameters[(p.name, p.waterbody)] = p

    @classmethod
    def load(cls, path: Path = DEFAULT_TABLE) -> SurfaceWaterTable:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        try:
            params = [Parameter(str(p["parameter"]), str(p["metric"]), p["better"],
                                tuple(float(x) for x in p.get("limits", ())),
                                (float(p["range"][0]), float(p["range"][1])) if "range" in p else None,
                                str(p.get("waterbody", "any"))) for p in raw["parameters"]]
            for p in params:
                if p.better not in ("lower", "higher", "inside"):
                    raise SurfaceWaterTableError(f"{path}: {p.name}: better must be lower, higher or inside")
            return cls(str(raw["standard"]), int(raw["version"]), [str(c) for c in raw["classes"]],
                       str(raw.get("worse", "worse than V")), params)
        except (KeyError, TypeError, IndexError) as exc:
            raise SurfaceWaterTableError(f"{path}: malformed surface-water table ({exc!r})") from None

    def parameter(self, name: str, waterbody: str = "any") -> Parameter:
        p = self.parameters.get((name, waterbody)) or self.parameters.get((name, "any"))
        if p is None:
            have = ", ".join(sorted({n for n, _w in self.parameters}))
            raise SurfaceWaterTableError(f"no parameter {name!r} in {self.standard}; have {have}")
        return p

    def metrics(self) -> dict[str, str]:
        """parameter -> metric (field) it reads."""
        return {n: p.metric for (n, _w), p in self.parameters.items()}

    def name(self, cls: int) -> str:
        return self.names[cls - 1] if 1 <= cls <= WORSE else "unknown"

    @staticmethod
    def station_class(classes: dict[str, ClassArray]) -> ClassArray:
        """Worst class over the parameters (0 where none has a value)."""
        return np.max(np.vstack(list(classes.values())), axis=0).astype(np.int8)

    @staticmethod
    def deciding(classes: dict[str, int], station: int) -> list[str]:
        """The parameters that set the station's class (those at it), when it is worse than I."""
        return [] if station <= 1 else [p for p, c in classes.items() if c == station]
