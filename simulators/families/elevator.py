"""Elevator controller: trips between floors, as a pure function of event time.

Time is cut into 90 s slots. In each slot the car makes a trip with a probability that
follows building traffic (busy mornings and evenings, quiet nights), from where the last
trip ended to a hashed destination floor; idle cars stay where they are (after 50 quiet
slots they are parked at the lobby, floor 1). Within a trip slot (u = seconds into it):

    0..4 s   doors open at the origin (boarding)
    4..6 s   doors closing
    6..6+T   moving at rated speed (T = 3 s + 1.7 s per floor)
    +4 s     doors open at the destination, then idle

Incidents: entrapment (car stops between floors with the doors shut: trapped_passenger,
outside_door_zone, fault 12, until rescue), door open while moving (the car moves with
the door open for `moving_s`, the safety gear stops it outside the door zone; the event
stays latched with fault 5 until the incident ends, i.e. a technician resets it),
elevator_fault (any other code of the profile's fault table, e.g. 13 overspeed or 1
safety circuit open: the car is stopped and out of service until the end; codes 4, 10,
11 and 13 leave it outside the door zone).

Condition statistics, as elevator IoT collectors report them over the last operations
(they change after each trip and hold between trips): mean door-closing time and the
share of door closings that re-opened, mean levelling error at the stops, mean drive
current at constant speed. Precursors (an incident's `precursor_s`; docs/PRECURSORS.md
gives the literature): worn doors close slower and re-open more often before the door
opens while moving (+2 s, +30 points); levelling drifts before an entrapment outside the
door zone (+15 mm); the drive current grows before a drive fault (+40 %). Each grows
linearly from nothing at `precursor_s` before the incident to its full size at the start.
"""

from __future__ import annotations

from collections.abc import Sequence

from simulators import noise
from simulators.daylight import local_hour
from simulators.families.base import DeviceContext, FamilyModel, Values
from simulators.incidents import ActiveIncident

SLOT_MS = 90_000
LOOKBACK_SLOTS = 50
FLOOR_TIME_S = 1.7
FAULT_TRAPPED = 12
FAULT_DOOR_OPEN_MOVING = 5


#: Condition statistics: typical value, its noise from one trip to the next (the mean over
#: the last operations moves little).
CONDITION: dict[str, tuple[float, float]] = {
    "door_close_time_s": (2.3, 0.03),
    "door_reopens_pct": (5.0, 1.0),
    "levelling_error_mm": (3.0, 0.3),
    "motor_current_a": (16.0, 0.25),
}
#: What a precursor adds at its full size (motor current: a share of it).
PRECURSOR: dict[str, dict[str, float]] = {
    "door_open_while_moving": {"door_close_time_s": 2.0, "door_reopens_pct": 30.0},
    "elevator_entrapment": {"levelling_error_mm": 15.0},
    "elevator_fault": {"motor_current_a": 0.4},
}


def traffic(hour: float) -> float:
    """Probability that a 90 s slot has a trip."""
    if 7.0 <= hour < 9.5 or 17.0 <= hour < 19.5:
        return 0.85
    if 6.0 <= hour < 23.0:
        return 0.5
    return 0.08


class ElevatorController(FamilyModel):
    def __init__(self, ctx: DeviceContext) -> None:
        super().__init__(ctx)
        self.floors = int(ctx.labels.get("floors", "18"))
        self.rated = ctx.sim("speed_ms", "rated", 1.75)
        self._trip = ctx.key("trip")
        self._dest = ctx.key("dest")
        self._load = ctx.key("load")
        self._slot0 = ctx.epoch_ms // SLOT_MS  # noise draws count slots from the epoch
        self._stats = {n: ctx.key("stat:" + n) for n in CONDITION}
        self._base = {n: base * ctx.variation(n, 0.9, 1.1) for n, (base, _sd) in CONDITION.items()}

    def _has_trip(self, slot: int) -> bool:
        return noise.uniform(self._trip, slot - self._slot0) < traffic(local_hour(slot * SLOT_MS))

    def _destination(self, slot: int) -> int:
        return 1 + int(noise.uniform(self._dest, slot - self._slot0) * self.floors)

    def _last_trip(self, slot: int) -> int | None:
        """The slot of the latest trip at or before `slot` (bounded look-back; None: none)."""
        for k in range(slot, slot - LOOKBACK_SLOTS, -1):
            if self._has_trip(k):
                return k
        return None

    def floor_after(self, slot: int) -> int:
        """Where the car is at the end of `slot` (parked at the lobby after a long quiet)."""
        k = self._last_trip(slot)
        return 1 if k is None else self._trip_floors(k)[1]

    def condition(self, slot: int) -> Values:
        """The condition statistics after the latest trip up to `slot`."""
        k = self._last_trip(slot)
        n = (slot - LOOKBACK_SLOTS if k is None else k) - self._slot0
        return {name: max(0.0, self._base[name] + sd * noise.gauss(self._stats[name], n))
                for name, (_base, sd) in CONDITION.items()}

    def degrade(self, t_ms: int, coming: Sequence[ActiveIncident], values: Values) -> Values:
        out = dict(values)
        for inc in coming:
            s = inc.precursor(t_ms)
            for name, size in PRECURSOR.get(inc.type, {}).items():
                if name not in out:
                    continue
                if name == "motor_current_a":
                    out[name] = float(out[name]) * (1.0 + size * s)
                else:
                    out[name] = float(out[name]) + size * s
        return out

    def _trip_floors(self, slot: int) -> tuple[int, int]:
        dest = self._destination(slot)
        # Origin: where the previous trip ended (bounded look-back, then the lobby).
        origin = 1
        for k in range(slot - 1, slot - LOOKBACK_SLOTS, -1):
            if self._has_trip(k):
                origin = self._destination(k)
                break
        if dest == origin:
            dest = origin + 1 if origin < self.floors else origin - 1
        return origin, dest

    def normal(self, t_ms: int) -> Values:
        slot, u_ms = divmod(t_ms, SLOT_MS)
        u = u_ms / 1000.0
        out: Values = {"running": False, "door_open": False, "trapped_passenger": False,
                       "door_open_while_moving": False, "outside_door_zone": False,
                       "direction": "idle", "floor": self.floor_after(slot - 1), "speed_ms": 0.0,
                       "load_pct": 0, "fault_code": 0, **self.condition(slot)}
        if not self._has_trip(slot):
            return out
        origin, dest = self._trip_floors(slot)
        travel = 3.0 + FLOOR_TIME_S * abs(dest - origin)
        load = int(10 + 70 * noise.uniform(self._load, slot - self._slot0))
        if u < 4.0:
            out.update(floor=origin, door_open=True, load_pct=load)
        elif u < 6.0:
            out.update(floor=origin, load_pct=load)
        elif u < 6.0 + travel:
            frac = (u - 6.0) / travel
            out.update(running=True, direction="up" if dest > origin else "down",
                       floor=round(origin + (dest - origin) * frac), load_pct=load,
                       speed_ms=self.rated * min(1.0, 4 * frac, 4 * (1 - frac)) or 0.1)
            out["outside_door_zone"] = abs(origin + (dest - origin) * frac - float(out["floor"])) > 0.1
        elif u < 10.0 + travel:
            out.update(floor=dest, door_open=True, load_pct=load)
        else:
            out.update(floor=dest)
        return out

    def values(self, t_ms: int, incidents: Sequence[ActiveIncident]) -> Values:
        for inc in incidents:
            if not inc.active(t_ms):
                continue
            at_start = self.normal(inc.start_ms)
            stopped: Values = {**at_start, "running": False, "direction": "idle", "speed_ms": 0.0,
                               "outside_door_zone": True,
                               "load_pct": max(20, int(at_start["load_pct"]))}
            if inc.type == "elevator_entrapment":
                return {**stopped, "door_open": False, "trapped_passenger": True,
                        "fault_code": FAULT_TRAPPED}
            if inc.type == "elevator_fault":
                code = int(inc.p("code"))
                return {**stopped, "door_open": False, "fault_code": code,
                        "outside_door_zone": code in (4, 10, 11, 13)}
            if inc.type == "door_open_while_moving":
                moving = inc.elapsed_s(t_ms) < inc.p("moving_s")
                if moving:
                    return {**stopped, "running": True, "direction": "up", "speed_ms": 0.6,
                            "door_open": True, "door_open_while_moving": True,
                            "fault_code": FAULT_DOOR_OPEN_MOVING}
                return {**stopped, "door_open": True, "door_open_while_moving": True,
                        "fault_code": FAULT_DOOR_OPEN_MOVING}
        return self.normal(t_ms)
