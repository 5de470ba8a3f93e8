"""Alert lifecycle: inactive -> pending -> firing -> resolved, on event time.

A condition must hold for `for_ms` before an alert fires; it resolves only when the
value is back beyond the clear level (hysteresis), so one noisy reading near the
threshold cannot make an alert flap. Exactly one event per change: `step` returns the
transition that should be published, or None.

    state     input                          -> state     event
    inactive  breach                         -> pending   -
    pending   breach, held < for             -> pending   -
    pending   breach, held >= for            -> firing    firing
    pending   clear                          -> inactive  -
    firing    breach or in hysteresis band   -> firing    -
    firing    clear                          -> inactive  resolved
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Signal(Enum):
    BREACH = "breach"  # condition holds
    BAND = "band"  # between threshold and clear level: keep the current state
    CLEAR = "clear"  # back beyond the clear level


class State(Enum):
    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"


@dataclass(slots=True)
class AlertState:
    state: State = State.INACTIVE
    since: int = 0  # event time the condition started to hold
    fired_at: int = 0


def step(alert: AlertState, signal: Signal, t: int, for_ms: int) -> str | None:
    """Advance `alert` by one observation at event time `t`; returns "firing",
    "resolved" or None (no event)."""
    if alert.state is State.INACTIVE:
        if signal is Signal.BREACH:
            alert.since = t
            if for_ms <= 0:
                alert.state, alert.fired_at = State.FIRING, t
                return "firing"
            alert.state = State.PENDING
        return None
    if alert.state is State.PENDING:
        if signal is Signal.CLEAR:
            alert.state = State.INACTIVE
            return None
        if signal is Signal.BREACH and t - alert.since >= for_ms:
            alert.state, alert.fired_at = State.FIRING, t
            return "firing"
        return None
    # FIRING
    if signal is Signal.CLEAR:
        alert.state = State.INACTIVE
        return "resolved"
    return None
