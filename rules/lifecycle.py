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
`flap_window_ms` starts a flapping episode of its device: one sensor-health event opens
it; the alert's own firings are held until one has lasted a whole flap window; the
episode ends when the alert has not changed for `flap_clear_ms`) and silences (matchers
with an expiry). A resolved event is always sent for an alert whose firing was sent,
whatever the gates say, so no subscriber is left with an alert that never ends.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from rules.flapping import FLAP_CHANGES, FLAP_CLEAR_S, FLAP_WINDOW_S

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
    changes: deque[int]  # event times of the last `flap_changes` firings and resolves
    firings: deque[int]  # event times of the last `flap_changes` firings
    flapping: bool = False  # in a flapping episode
    last_change: int = 0  # event time of the last firing or resolve of the state machine
    published_firing: bool = False
    published_severity: int = -1
    firing: bool = False  # where the state machine is now
    severity: int = 0


@dataclass(slots=True)
class Episode:
    """A device's flapping episode: one sensor-health problem, however many of its alerts
    flap and however often they re-fire, until all of them have been clean for a while."""

    subject: str  # "district:device" (the alert id without its rule)
    alerts: set[str]  # every alert that flapped in it
    active: set[str]  # those still flapping
    started: int
    severity: int  # the highest severity any of its alerts reached
    reason: str = ""  # what made its first alert flap, e.g. "fired 6 times within 4 h"


@dataclass(frozen=True, slots=True)
class EpisodeChange:
    """An episode began (FIRING), got a more severe alert (ESCALATED) or ended (RESOLVED)."""

    subject: str
    change: Change
    severity: int
    alerts: tuple[str, ...]
    started: int
    t: int
    reason: str = ""


class Publisher:
    """Decides which lifecycle changes become published events (flapping, silences).

    `offer(alert_id, change, severity, t, silenced)` returns the change to publish (or
    NONE). `settle(t)` returns the (alert_id, change, severity) a flapping alert owes its
    subscribers (it has held firing for a flap window). `episode_changes()` drains the
    flapping episodes that began, escalated or ended, one per device (`Episode`).

    An alert that changes state `flap_changes` times within `flap_window_ms`, or fires
    `flap_changes` times within `flap_clear_ms`, starts a flapping episode. While the
    episode lasts its changes are held: a firing is published only once it has held for
    a whole flap window (a real condition still gets through), a resolve is published
    whenever a firing was. The episode ends when the alert has not
    changed state for `flap_clear_ms` (longer than the window), so a sensor that flaps
    again after a quiet spell is still the same episode, not a new storm.
    """

    def __init__(self, flap_changes: int = FLAP_CHANGES, flap_window_ms: int = int(FLAP_WINDOW_S * 1000),
                 flap_clear_ms: int = int(FLAP_CLEAR_S * 1000)) -> None:
        if flap_changes < 2:
            raise ValueError(f"flap_changes must be at least 2 (got {flap_changes})")
        if flap_clear_ms < flap_window_ms:
            raise ValueError(f"flap_clear ({flap_clear_ms} ms) must be at least the flap window "
                             f"({flap_window_ms} ms)")
        self.flap_changes = flap_changes
        self.flap_window_ms = flap_window_ms
        self.flap_clear_ms = flap_clear_ms
        self._alerts: dict[str, _Published] = {}
        self._flapping: set[str] = set()
        self._episodes: dict[str, Episode] = {}
        self._episode_changes: list[EpisodeChange] = []

    def is_flapping(self, alert_id: str) -> bool:
        p = self._alerts.get(alert_id)
        return bool(p and p.flapping)

    def episode(self, subject: str) -> Episode | None:
        return self._episodes.get(subject)

    def published_severity(self, alert_id: str) -> int:
        """The severity subscribers last saw firing for this alert, or -1."""
        p = self._alerts.get(alert_id)
        return p.published_severity if p is not None else -1

    def offer(self, alert_id: str, change: Change, severity: int, t: int, silenced: bool) -> Change:
        p = self._alerts.get(alert_id)
        if p is None:
            n = self.flap_changes
            p = self._alerts[alert_id] = _Published(deque(maxlen=n), deque(maxlen=n))
        if change in (Change.FIRING, Change.RESOLVED):
            p.last_change = t
            p.changes.append(t)
            if change is Change.FIRING:
                p.firings.append(t)
            if not p.flapping:
                reason = self._flap_reason(p, t)
                if reason:
                    p.flapping = True
                    self._flapping.add(alert_id)
                    self._join_episode(alert_id, max(severity, p.severity), t, reason)
        p.firing = change in (Change.FIRING, Change.ESCALATED)
        p.severity = severity
        if change is Change.RESOLVED:
            p.firing = False
            if p.published_firing:  # always close what subscribers saw open
                p.published_firing = False
                p.published_severity = -1
                return Change.RESOLVED
            return Change.NONE
        if p.flapping:
            self._raise_episode(alert_id, severity, t)
        if silenced or (p.flapping and not p.published_firing):
            return Change.NONE
        out = Change.FIRING if not p.published_firing else Change.ESCALATED
        if out is Change.ESCALATED and severity <= p.published_severity:
            return Change.NONE
        p.published_firing, p.published_severity = True, severity
        return out

    def settle(self, t: int) -> list[tuple[str, Change, int]]:
        """Flapping alerts that have held firing for a flap window are published; those
        quiet for `flap_clear_ms` end their episode."""
        owed: list[tuple[str, Change, int]] = []
        for alert_id in list(self._flapping):
            p = self._alerts[alert_id]
            quiet = t - p.last_change
            if p.firing and not p.published_firing and quiet >= self.flap_window_ms:
                p.published_firing, p.published_severity = True, p.severity
                owed.append((alert_id, Change.FIRING, p.severity))
            if quiet >= self.flap_clear_ms:
                p.flapping = False
                self._flapping.discard(alert_id)
                p.changes.clear()
                p.firings.clear()
                self._leave_episode(alert_id, t)
        return owed

    def episode_changes(self) -> list[EpisodeChange]:
        """Episodes that began, escalated or ended since the last call."""
        out, self._episode_changes = self._episode_changes, []
        return out

    def _crowded(self, times: deque[int], t: int, window_ms: int) -> bool:
        return len(times) == self.flap_changes and t - times[0] <= window_ms

    def _flap_reason(self, p: _Published, t: int) -> str:
        """Why the alert starts flapping now ("" if it does not): its recent changes or firings."""
        if self._crowded(p.changes, t, self.flap_window_ms):
            return f"changed state {self.flap_changes} times within {self.flap_window_ms / 60_000:g} min"
        if self._crowded(p.firings, t, self.flap_clear_ms):
            return f"fired {self.flap_changes} times within {self.flap_clear_ms / 3_600_000:g} h"
        return ""

    # ------------------------------------------------------------------ episodes
    @staticmethod
    def subject(alert_id: str) -> str:
        return alert_id.split(":", 1)[1] if ":" in alert_id else alert_id

    def _note(self, ep: Episode, change: Change, t: int) -> None:
        self._episode_changes.append(EpisodeChange(ep.subject, change, ep.severity, tuple(sorted(ep.alerts)),
                                                   ep.started, t, ep.reason))

    def _join_episode(self, alert_id: str, severity: int, t: int, reason: str) -> None:
        subject = self.subject(alert_id)
        ep = self._episodes.get(subject)
        if ep is None:
            ep = self._episodes[subject] = Episode(subject, {alert_id}, {alert_id}, t, severity, reason)
            self._note(ep, Change.FIRING, t)
            return
        ep.alerts.add(alert_id)
        ep.active.add(alert_id)
        self._raise_episode(alert_id, severity, t)

    def _raise_episode(self, alert_id: str, severity: int, t: int) -> None:
        ep = self._episodes.get(self.subject(alert_id))
        if ep is not None and severity > ep.severity:
            ep.severity = severity
            self._note(ep, Change.ESCALATED, t)

    def _leave_episode(self, alert_id: str, t: int) -> None:
        subject = self.subject(alert_id)
        ep = self._episodes.get(subject)
        if ep is None:
            return
        ep.active.discard(alert_id)
        if not ep.active:
            del self._episodes[subject]
            self._note(ep, Change.RESOLVED, t)
