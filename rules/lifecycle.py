"""Alert lifecycle: inactive -> pending -> firing -> resolved, on event time.

A condition must hold for `for_ms` before an alert fires; it resolves only when the
value is back beyond the clear level (hysteresis), so one noisy reading near the
threshold cannot make an alert flap. A firing alert whose condition gets worse
(warning -> critical) escalates on the same alert id. Exactly one event per change.

    state     input                          -> state     event
    inactive  breach, for = 0                -> firing    firing
    inactive  breach, for > 0                -> pending   -
    pending   breach, held < for             -> pending   -
    pending   breach, held >= for            -> firing    firing
    pending   band                           -> pending   -
    pending   clear                          -> inactive  -
    firing    breach, severity higher        -> firing    escalated
    firing    breach or band                 -> firing    -
    firing    clear                          -> inactive  resolved

`step` is the reference for one alert; `step_many` is the same table applied to numpy
arrays of many alerts at once (the engine's hot path); a test checks they agree.

After the state machine, two gates decide what is *published* (`Publisher`):
flapping suppression (an alert that changed state `flap_changes` times within
`flap_window_ms` stays quiet until it has been stable for that window, then one event
states where it ended up) and silences (matchers with an expiry). A resolved event is
always sent for an alert whose firing was sent, whatever the gates say, so no
subscriber is left with an alert that never ends.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
import numpy.typing as npt

SEVERITY_LEVELS: tuple[str, ...] = ("info", "warning", "critical")


class Signal(IntEnum):
    CLEAR = 0  # back beyond the clear level
    BAND = 1  # between threshold and clear level: keep the current state
    BREACH = 2  # condition holds


class State(IntEnum):
    INACTIVE = 0
    PENDING = 1
    FIRING = 2


class Change(IntEnum):
    NONE = 0
    FIRING = 1
    ESCALATED = 2
    RESOLVED = 3


@dataclass(slots=True)
class AlertState:
    state: State = State.INACTIVE
    since: int = 0  # event time the condition started to hold
    severity: int = 0  # index into SEVERITY_LEVELS while firing


def step(alert: AlertState, signal: Signal, t: int, for_ms: int, severity: int = 1) -> Change:
    """Advance `alert` by one observation at event time `t`; returns the change to publish."""
    if alert.state is State.INACTIVE:
        if signal is Signal.BREACH:
            alert.since = t
            alert.state = State.PENDING
        else:
            return Change.NONE
    if alert.state is State.PENDING:
        if signal is Signal.CLEAR:
            alert.state = State.INACTIVE
            return Change.NONE
        if signal is Signal.BREACH and t - alert.since >= for_ms:
            alert.state, alert.severity = State.FIRING, severity
            return Change.FIRING
        return Change.NONE
    # FIRING
    if signal is Signal.CLEAR:
        alert.state = State.INACTIVE
        return Change.RESOLVED
    if signal is Signal.BREACH and severity > alert.severity:
        alert.severity = severity
        return Change.ESCALATED
    return Change.NONE


# Plain ints for the hot path (attribute access on an Enum class is slow).
_CLEAR, _BREACH = int(Signal.CLEAR), int(Signal.BREACH)
_INACTIVE, _PENDING, _FIRING = int(State.INACTIVE), int(State.PENDING), int(State.FIRING)
_FIRED, _ESCALATED, _RESOLVED = int(Change.FIRING), int(Change.ESCALATED), int(Change.RESOLVED)

IntArray = npt.NDArray[np.int64]
SmallArray = npt.NDArray[np.int8]


@dataclass(slots=True)
class LifecycleArrays:
    """The lifecycle state of many alerts of one rule, indexed by key (device or group)."""

    state: SmallArray = field(default_factory=lambda: np.zeros(0, np.int8))
    since: IntArray = field(default_factory=lambda: np.zeros(0, np.int64))
    severity: SmallArray = field(default_factory=lambda: np.zeros(0, np.int8))

    def grow(self, capacity: int) -> None:
        n = len(self.state)
        if capacity <= n:
            return
        extra = capacity - n
        self.state = np.concatenate([self.state, np.zeros(extra, np.int8)])
        self.since = np.concatenate([self.since, np.zeros(extra, np.int64)])
        self.severity = np.concatenate([self.severity, np.zeros(extra, np.int8)])


def step_many(
    arrays: LifecycleArrays,
    keys: npt.NDArray[np.intp],
    signal: SmallArray,
    t: IntArray,
    for_ms: int,
    severity: SmallArray,
) -> SmallArray:
    """`step` for many alerts at once; `keys` must be unique. Returns a Change per key."""
    old = arrays.state[keys]
    breach = signal == _BREACH
    if not breach.any() and not old.any():
        return np.zeros(len(keys), np.int8)  # the common case: all quiet, nothing to do
    st = old.copy()
    since = arrays.since[keys]
    sev = arrays.severity[keys]
    clear = signal == _CLEAR

    start = (old == _INACTIVE) & breach
    since = np.where(start, t, since)
    st[start] = _PENDING
    pending = st == _PENDING
    st[pending & clear] = _INACTIVE
    fire = pending & breach & (t - since >= for_ms)
    st[fire] = _FIRING
    sev = np.where(fire, severity, sev)

    was_firing = old == _FIRING
    resolve = was_firing & clear
    escalate = was_firing & breach & (severity > sev)
    sev = np.where(escalate, severity, sev)
    st[resolve] = _INACTIVE

    arrays.state[keys] = st
    arrays.since[keys] = since
    arrays.severity[keys] = sev
    change = np.zeros(len(keys), np.int8)
    change[fire] = _FIRED
    change[escalate] = _ESCALATED
    change[resolve] = _RESOLVED
    return change


# ---------------------------------------------------------------------------- publishing gates


@dataclass(slots=True)
class _Published:
    changes: deque[int] = field(default_factory=deque)  # event times of recent state changes
    flapping: bool = False
    published_firing: bool = False
    published_severity: int = -1
    firing: bool = False  # where the state machine is now
    severity: int = 0


class Publisher:
    """Decides which lifecycle changes become published events (flapping, silences).

    `offer(alert_id, change, severity, t, silenced)` returns the change to publish (or
    NONE). `settle(t)` returns the (alert_id, change, severity) an alert that stopped
    flapping owes its subscribers.
    """

    def __init__(self, flap_changes: int = 6, flap_window_ms: int = 30 * 60_000) -> None:
        self.flap_changes = flap_changes
        self.flap_window_ms = flap_window_ms
        self._alerts: dict[str, _Published] = {}
        self._flapping: set[str] = set()

    def is_flapping(self, alert_id: str) -> bool:
        p = self._alerts.get(alert_id)
        return bool(p and p.flapping)

    def published_severity(self, alert_id: str) -> int:
        """The severity subscribers last saw firing for this alert, or -1."""
        p = self._alerts.get(alert_id)
        return p.published_severity if p is not None else -1

    def offer(self, alert_id: str, change: Change, severity: int, t: int, silenced: bool) -> Change:
        p = self._alerts.setdefault(alert_id, _Published())
        if change in (Change.FIRING, Change.RESOLVED):
            p.changes.append(t)
            while p.changes and t - p.changes[0] > self.flap_window_ms:
                p.changes.popleft()
            if len(p.changes) >= self.flap_changes:
                p.flapping = True
                self._flapping.add(alert_id)
        p.firing = change in (Change.FIRING, Change.ESCALATED)
        p.severity = severity
        if change is Change.RESOLVED:
            p.firing = False
            if p.published_firing:  # always close what subscribers saw open
                p.published_firing = False
                p.published_severity = -1
                return Change.RESOLVED
            return Change.NONE
        if p.flapping or silenced:
            return Change.NONE
        out = Change.FIRING if not p.published_firing else Change.ESCALATED
        if out is Change.ESCALATED and severity <= p.published_severity:
            return Change.NONE
        p.published_firing, p.published_severity = True, severity
        return out

    def settle(self, t: int) -> list[tuple[str, Change, int]]:
        """Alerts that have been stable for a flap window stop flapping; publish where they are."""
        owed: list[tuple[str, Change, int]] = []
        for alert_id in list(self._flapping):
            p = self._alerts[alert_id]
            if p.changes and t - p.changes[-1] < self.flap_window_ms:
                continue
            p.flapping = False
            self._flapping.discard(alert_id)
            p.changes.clear()
            if p.firing and not p.published_firing:
                p.published_firing, p.published_severity = True, p.severity
                owed.append((alert_id, Change.FIRING, p.severity))
        return owed
