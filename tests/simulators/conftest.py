"""Shared fixtures: pudong-incidents played offline once per session (it is the slow part)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pytest

from simulators.scenario import Scenario, load_scenario
from tests.dates import PINNED_NOW_MS
from urbansense.schema import Sample

#: A fixed late-November day, so sun times (and therefore lamp behaviour) are fixed too.
FIXED_NOW_MS = PINNED_NOW_MS
SEED = 7


@dataclass
class Played:
    scenario: Scenario
    start_ms: int
    series: dict[str, list[Sample]]
    truth: dict[str, dict[str, Any]]

    def window(self, dev: str, t0: int, t1: int) -> list[Sample]:
        return [s for s in self.series[dev] if t0 <= s.t < t1]


@pytest.fixture(scope="session")
def pudong() -> Played:
    scenario = load_scenario("pudong-incidents")
    start = scenario.aligned_start_ms(FIXED_NOW_MS)
    series: dict[str, list[Sample]] = defaultdict(list)
    for tick in scenario.play_offline(SEED, start):
        for batch in tick.batches:
            for s in batch.samples:
                series[s.dev].append(s)
    truth = {r["type"]: r for r in scenario.ground_truth(SEED, start)}
    return Played(scenario, start, dict(series), truth)
