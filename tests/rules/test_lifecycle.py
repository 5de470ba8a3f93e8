"""The alert lifecycle as tables of (state, input) -> (state, event)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.lifecycle import (
    AlertState,
    Change,
    LifecycleArrays,
    Publisher,
    Signal,
    State,
    step,
    step_many,
)

B, N, C = Signal.BREACH, Signal.BAND, Signal.CLEAR
W, CR = 1, 2  # warning, critical

# (start state, since, fired severity, signal, t, for_ms, severity in) -> (state, change, severity)
STEP_TABLE = [
    # inactive
    (State.INACTIVE, 0, 0, C, 10, 0, W, State.INACTIVE, Change.NONE, 0),
    (State.INACTIVE, 0, 0, N, 10, 0, W, State.INACTIVE, Change.NONE, 0),
    (State.INACTIVE, 0, 0, B, 10, 0, W, State.FIRING, Change.FIRING, W),  # for = 0 fires at once
    (State.INACTIVE, 0, 0, B, 10, 5, W, State.PENDING, Change.NONE, 0),
    (State.INACTIVE, 0, 0, B, 10, 0, CR, State.FIRING, Change.FIRING, CR),
    # pending (since = 10)
    (State.PENDING, 10, 0, B, 14, 5, W, State.PENDING, Change.NONE, 0),  # held 4 < 5
    (State.PENDING, 10, 0, B, 15, 5, W, State.FIRING, Change.FIRING, W),  # held 5 >= 5
    (State.PENDING, 10, 0, N, 20, 5, W, State.PENDING, Change.NONE, 0),  # band: keep waiting
    (State.PENDING, 10, 0, C, 20, 5, W, State.INACTIVE, Change.NONE, 0),  # cleared before firing
    # firing at warning
    (State.FIRING, 10, W, B, 30, 5, W, State.FIRING, Change.NONE, W),
    (State.FIRING, 10, W, N, 30, 5, W, State.FIRING, Change.NONE, W),  # hysteresis band holds it
    (State.FIRING, 10, W, B, 30, 5, CR, State.FIRING, Change.ESCALATED, CR),  # same id, worse
    (State.FIRING, 10, W, C, 30, 5, W, State.INACTIVE, Change.RESOLVED, W),
    # firing at critical: a lower severity does not de-escalate, no event
    (State.FIRING, 10, CR, B, 30, 5, W, State.FIRING, Change.NONE, CR),
]


@pytest.mark.parametrize(("state", "since", "sev", "signal", "t", "for_ms", "sev_in",
                          "want_state", "want_change", "want_sev"), STEP_TABLE)
def test_step_table(state: State, since: int, sev: int, signal: Signal, t: int, for_ms: int, sev_in: int,
                    want_state: State, want_change: Change, want_sev: int) -> None:
    alert = AlertState(state, since, sev)
    assert step(alert, signal, t, for_ms, sev_in) is want_change
    assert alert.state is want_state
    if want_state is State.FIRING:
        assert alert.severity == want_sev


@pytest.mark.parametrize(("state", "since", "sev", "signal", "t", "for_ms", "sev_in",
                          "want_state", "want_change", "want_sev"), STEP_TABLE)
def test_step_many_follows_the_same_table(state: State, since: int, sev: int, signal: Signal, t: int,
                                          for_ms: int, sev_in: int, want_state: State, want_change: Change,
                                          want_sev: int) -> None:
    arrays = LifecycleArrays()
    arrays.grow(3)
    arrays.state[1], arrays.since[1], arrays.severity[1] = state, since, sev
    change = step_many(arrays, np.array([1]), np.array([signal], np.int8), np.array([t], np.int64), for_ms,
                       np.array([sev_in], np.int8))
    assert Change(int(change[0])) is want_change
    assert State(int(arrays.state[1])) is want_state
    assert arrays.state[0] == arrays.state[2] == State.INACTIVE  # other keys untouched


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 1, 2]), st.integers(0, 3), st.sampled_from([1, 2])),
                min_size=1, max_size=40), st.integers(0, 5))
def test_step_many_equals_step_on_any_sequence(seq: list[tuple[int, int, int]], for_ms: int) -> None:
    alert = AlertState()
    arrays = LifecycleArrays()
    arrays.grow(1)
    t = 0
    for sig, dt, sev in seq:
        t += dt
        want = step(alert, Signal(sig), t, for_ms, sev)
        got = step_many(arrays, np.array([0]), np.array([sig], np.int8), np.array([t], np.int64), for_ms,
                        np.array([sev], np.int8))
        assert Change(int(got[0])) is want
        assert State(int(arrays.state[0])) is alert.state


# Publisher: (changes offered in order) -> what is published
F, E, R, X = Change.FIRING, Change.ESCALATED, Change.RESOLVED, Change.NONE
PUBLISH_TABLE = [
    ("plain fire and resolve", [(F, 1, 0, False), (R, 1, 10, False)], [F, R]),
    ("escalation on the same id", [(F, 1, 0, False), (E, 2, 5, False), (R, 2, 9, False)], [F, E, R]),
    ("silenced firing stays quiet, its resolve too", [(F, 1, 0, True), (R, 1, 5, False)], [X, X]),
    ("silence starting after firing: resolved still sent", [(F, 1, 0, False), (E, 2, 3, True), (R, 2, 5, True)],
     [F, X, R]),
    # flap_changes = 4 within 100: the 4th change marks it flapping
    ("flapping is suppressed, resolved still closes the open alert",
     [(F, 1, 0, False), (R, 1, 10, False), (F, 1, 20, False), (R, 1, 30, False), (F, 1, 40, False),
      (R, 1, 50, False)],
     [F, R, F, R, X, X]),
    ("flapping while firing: the final resolve is sent",
     [(F, 1, 0, False), (R, 1, 10, False), (F, 1, 20, False), (R, 1, 30, False), (F, 1, 40, False),
      (R, 1, 45, False), (F, 1, 47, False)],
     [F, R, F, R, X, X, X]),
]


@pytest.mark.parametrize(("name", "offers", "want"), PUBLISH_TABLE, ids=[p[0] for p in PUBLISH_TABLE])
def test_publisher_table(name: str, offers: list[tuple[Change, int, int, bool]], want: list[Change]) -> None:
    pub = Publisher(flap_changes=4, flap_window_ms=100)
    got = [pub.offer("a", change, sev, t, silenced) for change, sev, t, silenced in offers]
    assert got == want


def test_flapping_alert_owes_a_firing_that_holds_and_stays_in_its_episode_until_clean() -> None:
    pub = Publisher(flap_changes=4, flap_window_ms=100, flap_clear_ms=400)
    for change, t in ((F, 0), (R, 10), (F, 20), (R, 30), (F, 40)):
        pub.offer("a:d:dev", change, 1, t, False)
    assert pub.is_flapping("a:d:dev")
    [begun] = pub.episode_changes()
    assert (begun.subject, begun.change, begun.started, begun.alerts) == ("d:dev", Change.FIRING, 30, ("a:d:dev",))
    assert pub.settle(100) == []  # 60 ms since the last change: not yet held for a window
    assert pub.settle(141) == [("a:d:dev", Change.FIRING, 1)]  # held a whole window: a real condition
    assert pub.is_flapping("a:d:dev")  # still the same episode
    assert pub.offer("a:d:dev", R, 1, 150, False) is R  # what was published is closed
    assert pub.offer("a:d:dev", F, 1, 160, False) is X  # and the next firing is held again
    assert pub.offer("a:d:dev", R, 1, 170, False) is X
    assert pub.settle(569) == [] and pub.episode_changes() == []  # 399 ms clean: not yet
    assert pub.settle(570) == []
    [ended] = pub.episode_changes()
    assert (ended.subject, ended.change, ended.t) == ("d:dev", Change.RESOLVED, 570)
    assert not pub.is_flapping("a:d:dev")
    assert pub.offer("a:d:dev", F, 1, 600, False) is F  # a clean alert publishes again at once


def test_one_episode_per_device_with_the_highest_severity() -> None:
    pub = Publisher(flap_changes=4, flap_window_ms=100, flap_clear_ms=400)
    for alert, sev, t0 in (("spike:d:dev", 0, 0), ("low:d:dev", 2, 200), ("spike:d:other", 0, 0)):
        for i, change in enumerate((F, R, F, R)):
            pub.offer(alert, change, sev, t0 + 10 * i, False)
    got = [(e.subject, e.change, e.severity) for e in pub.episode_changes()]
    assert got == [("d:dev", Change.FIRING, 0), ("d:dev", Change.ESCALATED, 2), ("d:other", Change.FIRING, 0)]
    pub.settle(430)  # spike:d:dev and spike:d:other clean for 400 ms, low:d:dev not yet
    assert [(e.subject, e.change) for e in pub.episode_changes()] == [("d:other", Change.RESOLVED)]
    pub.settle(630)
    [ended] = pub.episode_changes()
    assert (ended.subject, ended.change, ended.alerts) == ("d:dev", Change.RESOLVED, ("low:d:dev", "spike:d:dev"))


def test_slow_refiring_is_flapping_too() -> None:
    """Firings 110 ms apart never make 4 changes within the 100 ms window, but four of
    them fall within flap_clear: the fourth starts the episode and is held."""
    pub = Publisher(flap_changes=4, flap_window_ms=100, flap_clear_ms=400)
    got = []
    for i in range(6):
        got += [pub.offer("a:d:dev", F, 1, 110 * i, False), pub.offer("a:d:dev", R, 1, 110 * i + 5, False)]
    assert got == [F, R, F, R, F, R, X, X, X, X, X, X]
    assert [e.change for e in pub.episode_changes()] == [Change.FIRING]


def test_flap_clear_shorter_than_the_window_is_refused() -> None:
    with pytest.raises(ValueError, match="flap_clear"):
        Publisher(flap_changes=4, flap_window_ms=100, flap_clear_ms=50)
