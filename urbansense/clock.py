"""Event-time clock shared by simulators and edge agents.

In real time it is the wall clock. For an accelerated scenario (`--speed S`) every
process that stamps or generates readings uses the same scenario clock, handed down in
the environment variable URBANSENSE_CLOCK = "<origin_event_ms>:<origin_wall_ms>:<speed>":

    event_ms(now) = origin_event_ms + (wall_ms(now) - origin_wall_ms) * speed

DESIGN.md: a scenario of duration D at speed S starts at event time now - D + D/S, so
its clock reaches the wall clock exactly when the run ends and never runs ahead of it.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import time
from dataclasses import dataclass

ENV = "URBANSENSE_CLOCK"


@dataclass(frozen=True, slots=True)
class ScenarioClock:
    origin_event_ms: int
    origin_wall_ms: int
    speed: float = 1.0

    def now_ms(self) -> int:
        wall = time.time() * 1000.0
        return int(self.origin_event_ms + (wall - self.origin_wall_ms) * self.speed)

    def wall_s_for(self, event_ms: int) -> float:
        """Wall-clock time (epoch seconds) at which event time `event_ms` is reached."""
        return (self.origin_wall_ms + (event_ms - self.origin_event_ms) / self.speed) / 1000.0

    def to_env(self) -> str:
        return f"{self.origin_event_ms}:{self.origin_wall_ms}:{self.speed}"

    @classmethod
    def from_env(cls, value: str) -> ScenarioClock:
        try:
            event, wall, speed = value.split(":")
            return cls(int(event), int(wall), float(speed))
        except ValueError:
            raise ValueError(
                f"{ENV}={value!r} is not '<origin_event_ms>:<origin_wall_ms>:<speed>'"
            ) from None

    @classmethod
    def realtime(cls) -> ScenarioClock:
        now = int(time.time() * 1000)
        return cls(now, now, 1.0)

    @classmethod
    def for_scenario(cls, duration_s: float, speed: float) -> ScenarioClock:
        """Back-dated so that the scenario ends at the wall-clock end of the run."""
        now = int(time.time() * 1000)
        start = int(now - duration_s * 1000 + duration_s * 1000 / speed)
        return cls(start, now, speed)


def current() -> ScenarioClock:
    value = os.environ.get(ENV)
    return ScenarioClock.from_env(value) if value else ScenarioClock.realtime()


def now_ms() -> int:
    """Event time now: the scenario clock if one is set in the environment, else wall clock."""
    value = os.environ.get(ENV)
    if not value:
        return int(time.time() * 1000)
    return ScenarioClock.from_env(value).now_ms()


#: (above this magnitude, divide by this to get ms): epoch ns, us, ms; anything smaller is s
_EPOCH_UNITS = ((10**17, 1_000_000), (10**14, 1_000), (10**11, 1))


class TimeFormatError(ValueError):
    """A time given by a user (CLI option, recording column) that is not a time."""


def parse_time_ms(value: str | int | float) -> int:
    """Epoch milliseconds from epoch s, ms, us or ns (told apart by magnitude: any date after
    1973 is unambiguous) or an ISO 8601 string (UTC when it has no offset)."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text) if "." in text else int(text)
        except ValueError:
            try:
                parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise TimeFormatError(
                    f"time {text!r} is neither epoch (s/ms/us/ns) nor ISO 8601 "
                    "(e.g. 2026-11-26T14:00:00+08:00)") from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=dt.UTC)
            return int(parsed.timestamp() * 1000)
    if not isinstance(value, int) and not math.isfinite(value):
        raise TimeFormatError(f"time {value!r} is not a finite number")
    # ints stay ints: a float loses the last digits of epoch ns
    for limit, divisor in _EPOCH_UNITS:
        if value > limit:
            return int(value // divisor)
    return int(value * 1000)
