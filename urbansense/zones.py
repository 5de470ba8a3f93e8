"""Zones from GeoJSON: geofences, speed zones and route corridors.

A zone file is a GeoJSON FeatureCollection (coordinates [lon, lat], WGS 84). Each
feature is a Polygon or MultiPolygon (an area), or a LineString with `corridor_m` (a
route: the area within that many metres of the line). Its properties:

- `name` (required, unique in the file): what an alert calls it;
- `classes`: the vehicle classes it applies to (a device's `class` label, e.g.
  `[tanker]`); none: every class;
- `hours`: when it applies, local time "HH:MM-HH:MM" (may run past midnight,
  "22:00-06:00"); none: always;
- `speed_limit_kmh`: the speed limit inside it;
- `route`: a corridor's route id (a device's `route` label names the route it must keep
  to); any other property is kept for rules to match (`tunnel`).

Geometry is shapely's, in local metres: an equirectangular projection about the file's
first coordinate, good to a metre over a city (the rules and the simulators both go
through `ZoneSet.project`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry import LineString, shape

EARTH_M_PER_DEG = 111_320.0
_HOURS = re.compile(r"^(\d\d):(\d\d)-(\d\d):(\d\d)$")
FloatArray = npt.NDArray[np.float64]


class ZoneError(ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class Zone:
    name: str
    #: The area, in the set's local metres (a corridor: its line buffered by corridor_m).
    area: shapely.Geometry
    properties: Mapping[str, Any]
    classes: frozenset[str] | None = None
    #: (start, end) minute of the local day; end < start runs past midnight.
    hours: tuple[int, int] | None = None
    speed_limit_kmh: float | None = None
    #: A corridor's centre line (local metres), which a simulated vehicle drives.
    line: LineString | None = None

    def applies_to(self, vehicle_class: str | None) -> bool:
        return self.classes is None or (vehicle_class is not None and vehicle_class in self.classes)

    def in_force(self, minute_of_day: int) -> bool:
        if self.hours is None:
            return True
        start, end = self.hours
        if start <= end:
            return start <= minute_of_day < end
        return minute_of_day >= start or minute_of_day < end


class ZoneSet:
    """The zones of one file, with point-in-zone tests over arrays of positions."""

    def __init__(self, path: Path, zones: list[Zone], lat0: float, lon0: float) -> None:
        self.path = path
        self.zones = zones
        self.lat0, self.lon0 = lat0, lon0
        self._kx = EARTH_M_PER_DEG * math.cos(math.radians(lat0))
        for z in zones:
            shapely.prepare(z.area)

    def __len__(self) -> int:
        return len(self.zones)

    def project(self, lat: FloatArray | float, lon: FloatArray | float) -> tuple[FloatArray, FloatArray]:
        """Local metres (x east, y north) of positions."""
        return ((np.asarray(lon, np.float64) - self.lon0) * self._kx,
                (np.asarray(lat, np.float64) - self.lat0) * EARTH_M_PER_DEG)

    def unproject(self, x: float, y: float) -> tuple[float, float]:
        """(lat, lon) of a local point."""
        return self.lat0 + y / EARTH_M_PER_DEG, self.lon0 + x / self._kx

    def inside(self, lat: FloatArray, lon: FloatArray) -> npt.NDArray[np.bool_]:
        """[position, zone]: whether each position is in each zone (NaN: in none)."""
        x, y = self.project(lat, lon)
        out = np.zeros((len(x), len(self.zones)), bool)
        ok = ~(np.isnan(x) | np.isnan(y))
        if ok.any():
            for j, z in enumerate(self.zones):
                out[ok, j] = shapely.contains_xy(z.area, x[ok], y[ok])
        return out

    def distance_m(self, lat: FloatArray, lon: FloatArray) -> FloatArray:
        """[position, zone]: metres from each position to each zone (0 inside)."""
        x, y = self.project(lat, lon)
        pts = shapely.points(x, y)
        return np.stack([shapely.distance(z.area, pts) for z in self.zones], axis=1) if self.zones \
            else np.zeros((len(x), 0))

    def contains(self, zone: Zone, lat: float, lon: float) -> bool:
        """Whether one position is in one of this set's zones."""
        x, y = self.project(lat, lon)
        return bool(shapely.contains_xy(zone.area, float(x), float(y)))

    def named(self, name: str) -> Zone | None:
        return next((z for z in self.zones if z.name == name), None)

    @classmethod
    def load(cls, path: Path) -> ZoneSet:
        """A zone file, validated; ZoneError names the file, the feature and the key."""
        shown = str(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ZoneError([f"{shown}: cannot read: {exc.strerror or exc}"]) from None
        except ValueError as exc:
            raise ZoneError([f"{shown}: not valid JSON: {exc}"]) from None
        if not isinstance(raw, dict) or raw.get("type") != "FeatureCollection" or not isinstance(
                raw.get("features"), list):
            raise ZoneError([f"{shown}: expected a GeoJSON FeatureCollection with a list of features"])
        problems: list[str] = []
        feats: list[tuple[int, dict[str, Any], Any]] = []
        for i, feat in enumerate(raw["features"]):
            where = f"{shown}: features[{i}]"
            if not isinstance(feat, dict) or not isinstance(feat.get("geometry"), dict):
                problems.append(f"{where}: a Feature with a geometry")
                continue
            props = feat.get("properties") or {}
            if not isinstance(props, dict):
                problems.append(f"{where}.properties: must be an object")
                continue
            try:
                geom = shape(feat["geometry"])
            except Exception as exc:
                problems.append(f"{where}.geometry: not a usable GeoJSON geometry ({exc})")
                continue
            if geom.is_empty or geom.geom_type not in ("Polygon", "MultiPolygon", "LineString"):
                problems.append(f"{where}.geometry: {geom.geom_type} - use a Polygon, MultiPolygon or a "
                                "LineString with corridor_m")
                continue
            feats.append((i, props, geom))
        if not feats and not problems:
            problems.append(f"{shown}: no features\n  fix: add at least one zone")
        if problems:
            raise ZoneError(problems)
        first = shapely.get_coordinates(feats[0][2])[0]
        lon0, lat0 = float(first[0]), float(first[1])
        kx = EARTH_M_PER_DEG * math.cos(math.radians(lat0))
        zones: list[Zone] = []
        names: set[str] = set()
        for i, props, geom in feats:
            where = f"{shown}: features[{i}].properties"
            local = shapely.transform(geom, lambda c: np.column_stack(((c[:, 0] - lon0) * kx,
                                                                       (c[:, 1] - lat0) * EARTH_M_PER_DEG)))
            zone = _zone(where, props, local, problems)
            if zone is None:
                continue
            if zone.name in names:
                problems.append(f"{where}.name: {zone.name!r} is used twice\n  fix: give each zone its own name")
            names.add(zone.name)
            zones.append(zone)
        if problems:
            raise ZoneError(problems)
        return cls(path, zones, lat0, lon0)


def _zone(where: str, props: Mapping[str, Any], geom: Any, problems: list[str]) -> Zone | None:
    name = props.get("name")
    if not isinstance(name, str) or not name:
        problems.append(f"{where}.name: every zone needs a name (what its alerts call it)")
        return None
    classes = props.get("classes")
    if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
        problems.append(f"{where}.classes: a list of vehicle classes, e.g. [tanker]")
        return None
    hours = _hours(where, props.get("hours"), problems)
    limit = props.get("speed_limit_kmh")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int | float) or limit <= 0):
        problems.append(f"{where}.speed_limit_kmh: a speed in km/h above 0, got {limit!r}")
        return None
    line = None
    if geom.geom_type == "LineString":
        width = props.get("corridor_m")
        if isinstance(width, bool) or not isinstance(width, int | float) or width <= 0:
            problems.append(f"{where}.corridor_m: a route (LineString) needs its corridor's half-width in "
                            f"metres, got {width!r}")
            return None
        line, geom = geom, geom.buffer(float(width))
    elif not geom.is_valid:
        problems.append(f"{where}: the polygon is not valid ({shapely.is_valid_reason(geom)})\n"
                        "  fix: redraw it without self-intersections")
        return None
    return Zone(name, geom, dict(props), None if classes is None else frozenset(classes), hours,
                None if limit is None else float(limit), line)


def _hours(where: str, raw: object, problems: list[str]) -> tuple[int, int] | None:
    if raw is None:
        return None
    m = _HOURS.match(raw) if isinstance(raw, str) else None
    if m is None or int(m[1]) > 23 or int(m[3]) > 24 or int(m[2]) > 59 or int(m[4]) > 59:
        problems.append(f"{where}.hours: {raw!r} is not local HH:MM-HH:MM\n  fix: e.g. \"07:00-20:00\"")
        return None
    return int(m[1]) * 60 + int(m[2]), int(m[3]) * 60 + int(m[4])


def line_points(line: LineString, every_m: float) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(distance along, x, y) every `every_m` metres of a line (its end included)."""
    n = max(2, math.ceil(line.length / every_m) + 1)
    s = np.linspace(0.0, line.length, n)
    pts = shapely.line_interpolate_point(line, s)
    xy = shapely.get_coordinates(pts)
    return s, xy[:, 0], xy[:, 1]
