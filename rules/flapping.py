"""The flapping gate's numbers, in one place (rules/README.md, "Flapping").

An alert that changes state FLAP_CHANGES times within FLAP_WINDOW_S, or fires
FLAP_CHANGES times within FLAP_CLEAR_S, opens a flapping episode of its device; the
episode ends after FLAP_CLEAR_S without a change. `rules.lifecycle.Publisher` applies
them; the CLI, the service and the calendar sweep read them from here (no numpy, so the
CLI stays quick to start).
"""

from __future__ import annotations

FLAP_CHANGES = 6
FLAP_WINDOW_S = 1800.0
FLAP_CLEAR_S = 4 * 3600.0


def storm_limit(flap_changes: int = FLAP_CHANGES) -> int:
    """The most events one alert can publish within a flap-clear window before its episode
    holds it: flap_changes - 1 short firings, each with its resolve (the next firing opens
    the episode and is held). More than this is a storm the gate failed to stop."""
    return 2 * (flap_changes - 1)
