"""The instant offline tests play as "now", so a scenario's start (the latest day that
ends before now) and its sun times are the same on whatever day the suite runs."""

from __future__ import annotations

import datetime as dt

from simulators.scenario import load_scenario

#: A fixed late-November day.
PINNED_NOW_MS = int(dt.datetime(2026, 11, 21, tzinfo=dt.UTC).timestamp() * 1000)


def pinned_start(scenario: str) -> int:
    """The scenario's start as `urbansense rules backtest` would pick it on PINNED_NOW_MS."""
    return load_scenario(scenario).default_start_ms(PINNED_NOW_MS)
