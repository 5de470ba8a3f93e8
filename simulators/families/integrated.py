"""Models with state that integrates over event time (water stored in a sump, ponding on
a street, radon progeny on the ground): they step in fixed 30 s of event time from the
scenario's start, keeping a checkpoint every ten minutes. A model is still a function of
event time (the same at any speed, in live and offline play); asking for an earlier time
restarts from the checkpoint before it. Each device sees the district's rain
(simulators/weather.py) times its own factor.
"""

from __future__ import annotations

from collections.abc import Sequence

from simulators.families.base import DeviceContext, FamilyModel
from simulators.incidents import ActiveIncident
from simulators.weather import rain_rate

STEP_MS = 30_000
CHECKPOINT_MS = 600_000


class Integrated(FamilyModel):
    """A model whose state integrates over event time: `initial()` and `step()` say how."""

    def __init__(self, ctx: DeviceContext) -> None:
        super().__init__(ctx)
        self.rain_factor = ctx.variation("rain", 0.85, 1.15)
        self._t: int | None = None
        self._state: list[float] = []
        self._checkpoints: dict[int, tuple[float, ...]] = {}

    def initial(self) -> list[float]:
        raise NotImplementedError

    def step(self, state: list[float], t_ms: int, dt_s: float, incidents: Sequence[ActiveIncident]) -> None:
        """Advance `state` in place by dt_s from t_ms."""
        raise NotImplementedError

    def rain(self, t_ms: int, incidents: Sequence[ActiveIncident]) -> float:
        """The rain falling on this device (mm/h)."""
        return self.rain_factor * rain_rate(incidents, t_ms)

    def state_at(self, t_ms: int, incidents: Sequence[ActiveIncident]) -> list[float]:
        epoch = self.ctx.epoch_ms
        if t_ms <= epoch:
            return self.initial()
        grid = t_ms - (t_ms - epoch) % STEP_MS
        if self._t is None or grid < self._t:
            before = [c for c in self._checkpoints if c <= grid]
            if before:
                self._t = max(before)
                self._state = list(self._checkpoints[self._t])
            else:
                self._t, self._state = epoch, self.initial()
        while self._t < grid:
            self.step(self._state, self._t, STEP_MS / 1000, incidents)
            self._t += STEP_MS
            if (self._t - epoch) % CHECKPOINT_MS == 0:
                self._checkpoints[self._t] = tuple(self._state)
        return self._state
