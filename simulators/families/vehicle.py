"""Vehicles and vessels: tankers, buses and ferries driving their routes.

Where they drive is the family's data (urbansense/families/vehicle/zones/): a vehicle's
`route` label names a corridor of routes.geojson, whose centre line it drives out and
back at `cruise` (0.85) of the speed limit where it is (speed-limits.geojson, the lowest
limit of the zones of its `class`; 50 km/h where none). It drives `drive_h` hours, rests
`rest_min` minutes where it is, and again (the profile's `speed_kmh` sim hints), from a
phase and a place along its route drawn per device.

Incidents (family.yaml) change that:

- `speeding`, `channel_speeding`: `over_pct` faster than its cruise (so well past the
  limit) whenever it drives, progressing faster along the route (they last longer than
  a rest, so some driving falls in them);
- `banned_entry`: it leaves its route for a zone of restricted.geojson that bars its
  class at that hour (`target` 0: the nearest, towards 1: the farthest) and drives about
  inside it, then comes back to where it left the route;
- `route_deviation`: it leaves the route sideways by `offset_m` and comes back;
- `long_stop`, `anchoring`: it leaves for a no-stopping place (no-stopping.geojson,
  `target` as above), stops there, and comes back;
- `continuous_driving`: the driver skips the rests that fall in the incident;
- `gnss_loss`: the terminal reports its last fix with the fix flag down;
- `emergency_button`: the alarm bit is set.

A detour takes as long as the way there at cruise speed (at least a minute, at most a
third of the incident). Each incident's hazard (`hazard: model`) is judged here, on the
true position and speed: inside the banned zone while it is in force, outside the
corridor, stopped in the no-stopping place for 10 minutes, over the limit, driving 4 h
without a 20-minute rest, without a fix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from shapely.geometry import Point

from simulators.families.base import DeviceContext, FamilyModel, Values
from simulators.incidents import ActiveIncident
from urbansense import registry
from urbansense.zones import Zone, ZoneSet, line_points

STEP_M = 25.0
DEFAULT_LIMIT_KMH = 50.0
SPEEDING = ("speeding", "channel_speeding")
#: Incidents during which the vehicle does not rest.
NO_REST = ("continuous_driving",)
STOPS = ("long_stop", "anchoring")
DETOURS = ("banned_entry", "route_deviation", *STOPS)
#: Where each detour goes: the zone file it picks its target from.
TARGETS = {"banned_entry": "restricted", "long_stop": "no-stopping", "anchoring": "no-stopping"}
#: The hazards the simulator judges against (the rules' defaults, family rules.yaml).
STOP_ALLOWED_S = 600.0
DRIVING_LIMIT_S = 4 * 3600.0
REST_MIN_S = 1200.0
#: Minutes east of UTC of the zones' hours (Shanghai).
LOCAL_OFFSET_MIN = 480


@cache
def zone_set(folder: Path, name: str) -> ZoneSet:
    """A zone file of a family folder (zones/<name>.geojson)."""
    return ZoneSet.load(folder / "zones" / f"{name}.geojson")


def minute_of_day(t_ms: int) -> int:
    return int((t_ms // 60_000 + LOCAL_OFFSET_MIN) % 1440)


@dataclass(frozen=True)
class _Place:
    x: float
    y: float
    heading: float
    cruise_kmh: float


class Vehicle(FamilyModel):
    def __init__(self, ctx: DeviceContext) -> None:
        super().__init__(ctx)
        #: the family's folder, whose zones/ the vehicle drives by
        self.folder = registry.families()[ctx.profile.measurement].folder
        self.vclass = ctx.labels.get("class", "bus")
        route_id = ctx.labels.get("route")
        self.routes = zone_set(self.folder, "routes")
        route = next((z for z in self.routes.zones if route_id is not None
                      and str(z.properties.get("route")) == route_id and z.line is not None), None)
        if route is None:
            have = ", ".join(sorted(str(z.properties.get("route")) for z in self.routes.zones))
            raise ValueError(f"vehicle {ctx.id}: label route {route_id!r} names no route of "
                             f"zones/routes.geojson (have: {have})")
        self.route = route
        assert route.line is not None
        s, x, y = line_points(route.line, STEP_M)
        lat, lon = self.routes.unproject(x, y)  # type: ignore[arg-type]
        self.limits = zone_set(self.folder, "speed-limits")
        limit = self._limit(np.asarray(lat), np.asarray(lon))
        frac = ctx.sim("speed_kmh", "cruise", 0.85)
        cruise = frac * np.where(np.isfinite(limit), limit, DEFAULT_LIMIT_KMH)
        seg_speed = np.minimum(cruise[:-1], cruise[1:]) / 3.6
        self.T = np.concatenate([[0.0], np.cumsum(np.diff(s) / seg_speed)])
        #: each stretch is driven at the lower cruise of its ends (a school zone begins at full slowness)
        self.x, self.y, self.cruise = x, y, np.append(seg_speed * 3.6, seg_speed[-1] * 3.6)
        self.heading = np.degrees(np.arctan2(np.gradient(x), np.gradient(y))) % 360.0
        self.drive_s = ctx.sim("speed_kmh", "drive_h", 2.0) * 3600.0
        self.rest_s = ctx.sim("speed_kmh", "rest_min", 30.0) * 60.0
        self.cycle = self.drive_s + self.rest_s
        self.phase = ctx.variation("phase", 0.0, self.cycle)
        self.tau0 = ctx.variation("start", 0.0, 2.0 * float(self.T[-1]))
        self._targets: dict[tuple[str, int], tuple[float, float, Zone | None]] = {}

    # ------------------------------------------------------------------ the route
    def _limit(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """The speed limit (km/h, inf where none) of this vehicle's class at positions."""
        zones = self.limits.zones
        mine = np.array([z.applies_to(self.vclass) and z.speed_limit_kmh is not None for z in zones])
        lim = np.array([z.speed_limit_kmh or np.inf for z in zones])
        inside = self.limits.inside(lat, lon) & mine[None, :]
        return np.where(inside, lim[None, :], np.inf).min(axis=1, initial=np.inf)

    def _u(self, t_ms: int) -> float:
        return (t_ms - self.ctx.epoch_ms) / 1000.0 + self.phase

    def _base_drive(self, u: float) -> float:
        k, r = divmod(u, self.cycle)
        return k * self.drive_s + min(r, self.drive_s)

    def _driving(self, u: float, incidents: Sequence[ActiveIncident]) -> float:
        """Seconds driven along the route by u (rests, skipped rests, speeding, detours)."""
        d = self._driving_plain(u, incidents)
        for inc in incidents:
            if inc.type in SPEEDING:
                a, b = self._u(inc.start_ms), self._u(inc.end_ms)
                if u > a:
                    d += inc.p("over_pct") / 100.0 * (self._driving_plain(min(u, b), incidents)
                                                      - self._driving_plain(a, incidents))
        for inc in incidents:
            if inc.type in DETOURS:
                a, b = self._u(inc.start_ms), self._u(inc.end_ms)
                if u > a:
                    d -= self._driving_plain(min(u, b), incidents) - self._driving_plain(a, incidents)
        return d

    def _driving_plain(self, u: float, incidents: Sequence[ActiveIncident]) -> float:
        """Driving seconds with rests and skipped rests only."""
        d = self._base_drive(u)
        for inc in incidents:
            if inc.type in NO_REST:
                a, b = self._u(inc.start_ms), self._u(inc.end_ms)
                if u > a:
                    m = min(u, b)
                    d += (m - self._base_drive(m)) - (a - self._base_drive(a))
        return d

    def _moving(self, u: float, t_ms: int, incidents: Sequence[ActiveIncident]) -> bool:
        if any(inc.type in NO_REST and inc.active(t_ms) for inc in incidents):
            return True
        return u % self.cycle < self.drive_s

    def _place(self, tau: float) -> _Place:
        total = float(self.T[-1])
        p = (self.tau0 + tau) % (2.0 * total)
        back = p > total
        if back:
            p = 2.0 * total - p
        x = float(np.interp(p, self.T, self.x))
        y = float(np.interp(p, self.T, self.y))
        heading = float(np.interp(p, self.T, self.heading))
        i = min(len(self.T) - 2, max(0, int(np.searchsorted(self.T, p, side="right")) - 1))
        return _Place(x, y, (heading + 180.0) % 360.0 if back else heading, float(self.cruise[i]))

    # ------------------------------------------------------------------ detours
    def _target(self, inc: ActiveIncident, start: _Place) -> tuple[float, float, Zone | None]:
        key = (inc.type, inc.start_ms)
        got = self._targets.get(key)
        if got is not None:
            return got
        if inc.type == "route_deviation":
            h = math.radians(start.heading)
            off = inc.p("offset_m")
            got = (start.x - off * math.cos(h), start.y + off * math.sin(h), None)  # to the left
        else:
            zs = zone_set(self.folder, TARGETS[inc.type])
            minute = minute_of_day(inc.start_ms)
            mine = [z for z in zs.zones if z.applies_to(self.vclass) and z.in_force(minute)]
            if not mine:
                raise ValueError(f"vehicle {self.ctx.id}: no zone of zones/{TARGETS[inc.type]}.geojson applies to "
                                 f"class {self.vclass!r} at that hour, for its {inc.type}")
            # each zone file has its own local metres: go through (lat, lon)
            here = _point(*(float(v) for v in zs.project(*self.routes.unproject(start.x, start.y))))
            mine.sort(key=lambda z: float(z.area.distance(here)))
            zone = mine[min(len(mine) - 1, int(inc.params.get("target", 0.0) * len(mine)))]
            if zone.line is not None:
                pt = zone.line.interpolate(0.5, normalized=True)
            else:
                pt = zone.area.representative_point()
            tx, ty = self.routes.project(*zs.unproject(float(pt.x), float(pt.y)))
            got = (float(tx), float(ty), zone)
        self._targets[key] = got
        return got

    def _ramp_s(self, inc: ActiveIncident, start: _Place, target: tuple[float, float, Zone | None]) -> float:
        dist = math.hypot(target[0] - start.x, target[1] - start.y)
        return min(max(60.0, dist / max(1.0, start.cruise_kmh / 3.6)), (inc.end_ms - inc.start_ms) / 3000.0)

    def _away(self, inc: ActiveIncident, t_ms: int, start: _Place) -> tuple[float, tuple[float, float, Zone | None]]:
        """How far along the way to the detour's target (0..1) at t, and the target."""
        target = self._target(inc, start)
        ramp = self._ramp_s(inc, start, target)
        w = min(1.0, (t_ms - inc.start_ms) / 1000.0 / ramp, (inc.end_ms - t_ms) / 1000.0 / ramp)
        return max(0.0, w), target

    # ------------------------------------------------------------------ the reading
    def _state(self, t_ms: int, incidents: Sequence[ActiveIncident]) -> tuple[float, float, float, float, bool]:
        """(x, y, true speed km/h, heading, fix) at t."""
        u = self._u(t_ms)
        place = self._place(self._driving(u, incidents))
        x, y, heading = place.x, place.y, place.heading
        moving = self._moving(u, t_ms, incidents)
        speed = place.cruise_kmh if moving else 0.0
        for inc in incidents:
            if inc.type in SPEEDING and inc.active(t_ms) and moving:
                speed *= 1.0 + inc.p("over_pct") / 100.0
        for inc in incidents:
            if inc.type not in DETOURS or not inc.active(t_ms):
                continue
            w, (tx, ty, zone) = self._away(inc, t_ms, place)
            x, y = x + w * (tx - x), y + w * (ty - y)
            if w < 1.0 and inc.type in STOPS:  # on its way to stop (or back) it drives
                speed = max(speed, place.cruise_kmh)
            if w >= 1.0:
                if inc.type in STOPS:
                    speed = 0.0
                elif zone is not None:  # driving about inside the zone
                    a = (t_ms - inc.start_ms) / 1000.0 * speed / 3.6 / 40.0
                    x, y = x + 40.0 * math.cos(a), y + 40.0 * math.sin(a)
                    heading = (math.degrees(a) + 90.0) % 360.0
        fix = True
        for inc in incidents:
            if inc.type == "gnss_loss" and inc.active(t_ms):
                fix = False
                x, y, speed, heading, _ = self._state(inc.start_ms, [i for i in incidents if i is not inc])
        return x, y, speed, heading, fix

    def values(self, t_ms: int, incidents: Sequence[ActiveIncident]) -> Values:
        x, y, speed, heading, fix = self._state(t_ms, incidents)
        lat, lon = self.routes.unproject(x, y)
        if speed > 0:
            speed = max(0.0, speed + self.field_noise("speed_kmh", t_ms))
        emergency = any(inc.type == "emergency_button" and inc.active(t_ms) for inc in incidents)
        return {"lat": round(float(lat), 6), "lon": round(float(lon), 6), "speed_kmh": round(speed, 1),
                "heading_deg": round(heading) % 360, "gnss_fix": fix, "emergency": emergency}

    # ------------------------------------------------------------------ ground truth
    def hazard(self, t_ms: int, incident: ActiveIncident) -> bool:
        if not incident.active(t_ms):
            return False
        x, y, speed, _h, _fix = self._state(t_ms, [incident])
        if incident.type in SPEEDING:
            lat, lon = self.routes.unproject(x, y)
            limit = float(self._limit(np.array([lat]), np.array([lon]))[0])
            return speed > limit
        if incident.type == "gnss_loss":
            return True
        if incident.type == "continuous_driving":
            return self._u(t_ms) - self._run_start(incident) >= DRIVING_LIMIT_S
        start = self._place(self._driving(self._u(incident.start_ms), [incident]))
        _w, (tx, ty, zone) = self._away(incident, t_ms, start)
        if incident.type == "route_deviation":
            return not bool(self.route.area.contains(_point(x, y)))
        assert zone is not None
        lat, lon = self.routes.unproject(x, y)
        inside = zone_set(self.folder, TARGETS[incident.type]).contains(zone, lat, lon)
        if not inside or not zone.in_force(minute_of_day(t_ms)):
            return False
        if incident.type in STOPS:
            # stopped there for the allowed time: since it arrived (the way there done)
            arrived = incident.start_ms + self._ramp_s(incident, start, (tx, ty, zone)) * 1000.0
            return speed == 0.0 and t_ms - arrived >= STOP_ALLOWED_S * 1000.0
        return True

    def _run_start(self, inc: ActiveIncident) -> float:
        """Where (u) the driving that the skipped rests extend began."""
        ua = self._u(inc.start_ms)
        cs = self.cycle * math.floor(ua / self.cycle)
        if ua - cs < self.drive_s:
            return cs
        return ua if ua - cs - self.drive_s >= REST_MIN_S else cs


def _point(x: float, y: float) -> Point:
    return Point(x, y)
