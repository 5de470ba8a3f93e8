"""Rain as the simulated district's weather: the hyetograph of a rain incident.

A `rainstorm` or `rain` incident (flood family) is scheduled on the district's rain
gauges and felt by every device of the district (urbansense/registry.py `felt_by`). Its
intensity is a bell over the incident (peak `peak_mmh` at `peak_at` of its length,
`width` wide) with convective cells on top; each device sees it times its own factor.
Families read it here: the flood models integrate it, a river station's level rises with
the rain on its catchment (the declarative `rain_rise` hint).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from simulators.incidents import ActiveIncident

RAIN_KINDS = frozenset({"rainstorm", "rain"})
#: Step of the sum behind `fallen_mm`.
SUM_STEP_MS = 300_000


def storm_rate(inc: ActiveIncident, t_ms: int) -> float:
    """A rain incident's intensity (mm/h) at t, before any device's own factor."""
    if not inc.active(t_ms) or inc.end_ms <= inc.start_ms:
        return 0.0
    u = (t_ms - inc.start_ms) / (inc.end_ms - inc.start_ms)
    peak_at = float(inc.params.get("peak_at", 0.4))
    width = float(inc.params.get("width", 0.2))
    bell = math.exp(-(((u - peak_at) / width) ** 2)) * math.sqrt(math.sin(math.pi * u))
    # convective cells: a few tens of percent up and down over half an hour or so
    cells = 1.0 + 0.2 * math.sin(2 * math.pi * t_ms / 2_220_000 + inc.start_ms % 7) \
        + 0.1 * math.sin(2 * math.pi * t_ms / 780_000)
    return max(0.0, inc.p("peak_mmh") * bell * cells)


def rain_rate(incidents: Sequence[ActiveIncident], t_ms: int) -> float:
    """The district's rain (mm/h) at t from these incidents."""
    return sum(storm_rate(i, t_ms) for i in incidents if i.type in RAIN_KINDS)


def fallen_mm(incidents: Sequence[ActiveIncident], t_ms: int, window_ms: int) -> float:
    """Rain fallen over the `window_ms` before t (mm; a sum in five-minute steps)."""
    rain = [i for i in incidents if i.type in RAIN_KINDS and i.start_ms < t_ms and i.end_ms > t_ms - window_ms]
    if not rain:
        return 0.0
    end = t_ms - t_ms % SUM_STEP_MS
    steps = range(end - window_ms + SUM_STEP_MS // 2, end, SUM_STEP_MS)
    return sum(rain_rate(rain, t) for t in steps) * SUM_STEP_MS / 3_600_000


# ---------------------------------------------------------------------------- wind
WIND_KINDS = frozenset({"wind_regime"})


def wind(seed_key: int, incidents: Sequence[ActiveIncident], t_ms: int, epoch_ms: int) -> tuple[float, float]:
    """The district's wind at t: (speed m/s, direction it blows from, degrees). A
    `wind_regime` incident sets it over its spell; otherwise a light wind drawn once per
    seed (`seed_key`). Either meanders: +/- 8 degrees over three hours, +/- 10 % over two."""
    from simulators import noise

    from_deg = 360.0 * noise.uniform(seed_key, 0)
    speed = 1.5 + 2.0 * noise.uniform(seed_key, 1)
    for inc in incidents:
        if inc.type in WIND_KINDS and inc.active(t_ms):
            from_deg, speed = inc.p("from_deg"), inc.p("speed_ms")
    s = (t_ms - epoch_ms) / 1000.0
    from_deg += 8.0 * math.sin(2 * math.pi * s / 10_800.0 + 0.3)
    speed *= 1.0 + 0.1 * math.sin(2 * math.pi * s / 7_200.0 + 1.1)
    return max(0.2, speed), from_deg % 360.0
