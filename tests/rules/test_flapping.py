"""A spiking sensor is one sensor-health episode, not a storm (rules/README.md, "Flapping").

The shipped anomaly rule `water.turbidity_spike` over 14 h of a steady turbidity probe
(a reading every 15 s) with spikes placed at several spacings; the engine's defaults
(6 changes within 30 min, or 6 firings within the 4 h it takes to be clean again).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from rules.catalog import load_catalog
from rules.engine import FLAPPING_RULE, RulesEngine
from urbansense.schema import AlertEvent

from .helpers import T0, rule, series

STEP_S = 15
HOURS = 14
MIN = 60


def spikes_every(spacing_min: float, first_min: float = 60, last_min: float = HOURS * 60) -> list[float]:
    return list(np.arange(first_min, last_min, spacing_min))


def bursts(at_h: list[float], spikes: int = 4, spacing_min: float = 5) -> list[float]:
    return [h * 60 + i * spacing_min for h in at_h for i in range(spikes)]


def play(spike_minutes: list[float]) -> list[AlertEvent]:
    rule = next(r for r in load_catalog() if r.id == "water.turbidity_spike")
    engine = RulesEngine([rule])
    n = HOURS * 3600 // STEP_S
    rng = np.random.default_rng(5)
    values = 0.4 + 0.01 * rng.standard_normal(n)
    for m in spike_minutes:
        values[int(m * 60 // STEP_S)] = 2.5
    events: list[AlertEvent] = []
    for b in series("water", "wp-1", "turbidity_ntu", [float(v) for v in values], step_s=STEP_S):
        events.extend(engine.ingest([b]))
    return events


def by_rule(events: list[AlertEvent], rule: str) -> list[str]:
    return [e.state for e in events if e.rule == rule]


def at_min(events: list[AlertEvent], rule: str) -> list[tuple[str, int]]:
    return [(e.state, (e.t - T0) // 60_000) for e in events if e.rule == rule]


def test_isolated_spikes_are_each_reported() -> None:
    """Three spikes hours apart: three alerts, no episode (a sensor is not flapping yet)."""
    events = play([60, 300, 600])
    assert by_rule(events, "water.turbidity_spike") == ["firing", "resolved"] * 3
    assert by_rule(events, FLAPPING_RULE) == []


# (name, spike minutes, episodes expected, most events of the spike alert)
SPACINGS = [
    ("a spike every 5 min", spikes_every(5), 1, 6),
    ("a spike every 12 min", spikes_every(12), 1, 6),
    ("a spike every 20 min (never 6 changes in 30 min)", spikes_every(20), 1, 10),
    ("a spike every 40 min", spikes_every(40), 1, 10),
    ("bursts 2 h apart (the failure of 2026-12-02)", bursts([1, 3, 5]), 1, 6),
    ("bursts 3.5 h apart", bursts([1, 4.5, 8]), 1, 6),
    ("bursts 6 h apart: clean in between, two episodes", bursts([1, 7.5]), 2, 12),
]


@pytest.mark.parametrize(("name", "spikes", "episodes", "most"), SPACINGS, ids=[s[0] for s in SPACINGS])
def test_repeated_spikes_make_one_episode_per_clean_spell(name: str, spikes: list[float], episodes: int,
                                                          most: int) -> None:
    events = play(spikes)
    alert = by_rule(events, "water.turbidity_spike")
    episode = by_rule(events, FLAPPING_RULE)
    assert len(spikes) >= 6
    assert 0 < len(alert) <= most, (name, at_min(events, "water.turbidity_spike"))
    assert episode.count("firing") == episodes, (name, at_min(events, FLAPPING_RULE))
    # every episode that began was announced once and, 4 h after the last spike, ended once
    last_spike = max(spikes)
    ended = [t for s, t in at_min(events, FLAPPING_RULE) if s == "resolved"]
    assert len(ended) == (episodes if last_spike + 4 * 60 + 2 < HOURS * 60 else episodes - 1), name
    assert all(t >= last_spike + 4 * 60 - 1 for t in ended[-1:]), name
    for states in (alert, episode):
        assert all(a != b for a, b in itertools.pairwise(states))  # firing and resolved alternate
        assert states[0] == "firing"


def test_the_episode_names_the_device_and_rule_and_carries_the_rules_domain() -> None:
    events = play(spikes_every(5))
    first = next(e for e in events if e.rule == FLAPPING_RULE)
    assert (first.id, first.domain, first.device, first.severity) == (
        f"{FLAPPING_RULE}:pudong:wp-1", "water", "wp-1", "info")
    assert "water.turbidity_spike" in first.message and "flapping" in first.message
    assert "changed state 6 times within 30 min" in first.message


def test_the_episode_says_which_trigger_opened_it() -> None:
    """Slow re-firing (a spike every 40 min) never makes 6 changes in 30 min: the episode
    must say it fired 6 times within 4 h, not claim the fast trigger."""
    first = next(e for e in play(spikes_every(40)) if e.rule == FLAPPING_RULE)
    assert "fired 6 times within 4 h" in first.message, first.message
    assert "within 30 min" not in first.message


def test_a_real_condition_during_an_episode_is_still_published() -> None:
    """A threshold alert that flaps for an hour, then holds for 40 min (a real event, not
    a spike): its firing is held until it has lasted the 30 min flap window, then
    published and, when it ends, resolved; the episode stays open."""
    engine = RulesEngine([rule(id="water.turbidity_high", measurement="water", metric="turbidity_ntu",
                               op="above", threshold=1.0, clear=0.9, severity="warning")])
    values = [0.4] * (4 * 3600 // STEP_S)
    for m in spikes_every(5, 30, 90):
        values[int(m * 60 // STEP_S)] = 2.5
    values[120 * 60 // STEP_S:160 * 60 // STEP_S] = [2.0] * (40 * 60 // STEP_S)
    events: list[AlertEvent] = []
    for b in series("water", "wp-1", "turbidity_ntu", values, step_s=STEP_S):
        events.extend(engine.ingest([b]))
    alert = at_min(events, "water.turbidity_high")
    assert alert[:6] == [("firing", 30), ("resolved", 30), ("firing", 35), ("resolved", 35), ("firing", 40),
                         ("resolved", 40)]
    assert alert[6:] == [("firing", 150), ("resolved", 160)]
    assert "held for 30 min while flapping" in next(e.message for e in events if e.t // 60_000 == T0 // 60_000 + 150)
    assert by_rule(events, FLAPPING_RULE) == ["firing"]
