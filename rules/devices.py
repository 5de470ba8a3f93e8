"""The engine's device table: one integer index per (district, device), columns in numpy.

Every per-device state array of every rule is indexed by this number, so a batch of
samples becomes index arrays and value arrays (a `Round`) and each rule updates its
state with a handful of vectorised operations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from rules.inventory import InventoryDevice

Index = npt.NDArray[np.intp]
NEVER = np.iinfo(np.int64).min // 2


@dataclass(slots=True)
class Round:
    """Samples of one measurement with every device at most once, in event time."""

    measurement: str
    dev: Index
    t: npt.NDArray[np.int64]
    values: dict[str, npt.NDArray[np.float64]]

    def only(self, keep: npt.NDArray[np.bool_], metric: str) -> Round:
        """The rows `keep` selects, with `metric`'s values only (for an evaluator that
        reads nothing else)."""
        return Round(self.measurement, self.dev[keep], self.t[keep], {metric: self.values[metric][keep]})


@dataclass(slots=True)
class Gateways:
    index: dict[tuple[str, str], int] = field(default_factory=dict)
    names: list[tuple[str, str]] = field(default_factory=list)
    now: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    first: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))

    def get(self, district: str, gateway: str) -> int:
        key = (district, gateway)
        i = self.index.get(key)
        if i is None:
            i = self.index[key] = len(self.names)
            self.names.append(key)
            self.now = np.append(self.now, NEVER)
            self.first = np.append(self.first, NEVER)
        return i

    def saw(self, i: int, t: int) -> None:
        if t > self.now[i]:
            self.now[i] = t
        if self.first[i] == NEVER:
            self.first[i] = t


class Devices:
    def __init__(self) -> None:
        self.index: dict[tuple[str, str], int] = {}
        self.district: list[str] = []
        self.device: list[str] = []
        self.measurement: list[str] = []
        self.labels: list[dict[str, str]] = []
        #: The fields each device's profile reads (empty: not known).
        self.fields: list[frozenset[str]] = []
        self.capacity = 0
        self.gateway = np.zeros(0, np.intp)
        self.lat = np.zeros(0)
        self.lon = np.zeros(0)
        self.last_seen = np.zeros(0, np.int64)
        self.expected = np.zeros(0, bool)  # in the inventory (deadman seeds)
        self.gateways = Gateways()
        self._by_measurement: dict[str | None, Index] = {}
        self._label_values: dict[str, npt.NDArray[np.float64]] = {}
        self._label_masks: dict[str, npt.NDArray[np.bool_]] = {}
        self._nearest: dict[str, Index] = {}
        self._on_grow: list[Callable[[int], None]] = []

    def __len__(self) -> int:
        return len(self.device)

    def on_grow(self, callback: Callable[[int], None]) -> None:
        self._on_grow.append(callback)
        callback(self.capacity)

    def _ensure(self, n: int) -> None:
        if n <= self.capacity:
            return
        cap = max(1024, self.capacity)
        while cap < n:
            cap *= 2
        extra = cap - self.capacity
        self.gateway = np.concatenate([self.gateway, np.full(extra, -1, np.intp)])
        self.lat = np.concatenate([self.lat, np.full(extra, np.nan)])
        self.lon = np.concatenate([self.lon, np.full(extra, np.nan)])
        self.last_seen = np.concatenate([self.last_seen, np.full(extra, NEVER, np.int64)])
        self.expected = np.concatenate([self.expected, np.zeros(extra, bool)])
        self.capacity = cap
        for callback in self._on_grow:
            callback(cap)

    def about(self, district: str, device: str) -> tuple[str | None, dict[str, str]]:
        """A device's gateway (None if unknown) and its inventory labels."""
        i = self.index.get((district, device))
        if i is None:
            return None, {}
        g = int(self.gateway[i])
        return (self.gateways.names[g][1] if g >= 0 else None), self.labels[i]

    def add(self, district: str, gateway: str, device: str, measurement: str) -> int:
        key = (district, device)
        i = self.index.get(key)
        if i is not None:
            return i
        i = len(self.device)
        self._ensure(i + 1)
        self.index[key] = i
        self.district.append(district)
        self.device.append(device)
        self.measurement.append(measurement)
        self.labels.append({})
        self.fields.append(frozenset())
        self._by_measurement.clear()
        self._label_values.clear()
        self._label_masks.clear()
        self._nearest.clear()
        self.gateway[i] = self.gateways.get(district, gateway)
        return i

    def seed(self, inventory: list[InventoryDevice]) -> None:
        for d in inventory:
            i = self.add(d.district, d.gateway, d.device, d.measurement)
            self.expected[i] = True
            self.labels[i] = dict(d.labels)
            self.fields[i] = d.fields
            self._by_measurement.clear()
            self._label_values.clear()
            self._label_masks.clear()
            self._nearest.clear()
            if d.lat is not None and d.lon is not None:
                self.lat[i], self.lon[i] = d.lat, d.lon

    def label_values(self, label: str) -> npt.NDArray[np.float64]:
        """Each device's `label` as a number (NaN without it), indexed like the table.
        Numbers may be written as Roman numerals I-VI (a water-quality class)."""
        cached = self._label_values.get(label)
        if cached is None:
            cached = np.array([_number(lab.get(label)) for lab in self.labels], np.float64)
            self._label_values[label] = cached
        return cached

    def carrying(self, want: dict[str, str]) -> npt.NDArray[np.bool_]:
        """Which devices carry all of these labels, indexed like the table."""
        key = repr(sorted(want.items()))
        cached = self._label_masks.get(key)
        if cached is None:
            cached = np.array([all(lab.get(k) == v for k, v in want.items()) for lab in self.labels], bool)
            self._label_masks[key] = cached
        return cached

    def nearest(self, measurement: str | None, labels: dict[str, str], metric: str | None = None) -> Index:
        """Each device's nearest other device of `measurement` carrying `labels` (and whose
        profile reads `metric`, where the inventory says), by the locations in the gateway
        configs, in the same district (-1: none, or no location)."""
        key = f"{measurement}|{metric}|{sorted(labels.items())!r}"
        cached = self._nearest.get(key)
        if cached is None:
            n = len(self.device)
            cached = np.full(n, -1, np.intp)
            targets = self.of_measurement(measurement)
            if labels:
                targets = targets[self.carrying(labels)[targets]]
            if metric is not None:
                targets = np.array([i for i in targets if not self.fields[i] or metric in self.fields[i]], np.intp)
            targets = targets[~np.isnan(self.lat[targets])]
            if len(targets):
                lat, lon = self.lat[:n], self.lon[:n]
                # equirectangular distance: good to metres over a city
                dy = lat[:, None] - self.lat[targets][None, :]
                dx = (lon[:, None] - self.lon[targets][None, :]) * np.cos(np.radians(lat))[:, None]
                dist = dx * dx + dy * dy
                same = np.array(self.district)[:, None] == np.array(self.district)[targets][None, :]
                dist = np.where(same & (np.arange(n)[:, None] != targets[None, :]), dist, np.inf)
                best = np.argmin(np.where(np.isnan(dist), np.inf, dist), axis=1)
                found = np.isfinite(dist[np.arange(n), best])
                cached[found] = targets[best[found]]
            self._nearest[key] = cached
        return cached

    def of_measurement(self, measurement: str | None) -> Index:
        cached = self._by_measurement.get(measurement)
        if cached is None:
            n = len(self.device)
            cached = (np.arange(n, dtype=np.intp) if measurement is None else
                      np.array([i for i in range(n) if self.measurement[i] == measurement], dtype=np.intp))
            self._by_measurement[measurement] = cached
        return cached


_ROMAN = {"I": 1.0, "II": 2.0, "III": 3.0, "IV": 4.0, "V": 5.0, "VI": 6.0}


def _number(raw: str | None) -> float:
    if raw is None:
        return float("nan")
    text = raw.strip()
    if text.upper() in _ROMAN:
        return _ROMAN[text.upper()]
    try:
        return float(text)
    except ValueError:
        return float("nan")
