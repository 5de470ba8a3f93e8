"""A leak's plume on the wind: the Gaussian plume model with Briggs' dispersion curves.

A continuous ground-level release of `q` g/s in a wind of `u` m/s gives, at `x` metres
downwind and `y` metres across it, at ground level (full reflection from the ground):

    C = q / (pi u sigma_y sigma_z) * exp(-y^2 / (2 sigma_y^2))        [g/m3]

with sigma_y(x), sigma_z(x) from Briggs (1973) for open country, Pasquill stability
classes A (very unstable) to F (very stable); D (neutral: overcast, or a steady wind) is
the usual default. The plume front travels at the wind: it reaches x after x / u s. The
simulators use it to carry a leak to the air stations, the rules engine to say which
stations and places a leak will reach, and when (rules/plume.py).
"""

from __future__ import annotations

import math

EARTH_M_PER_DEG = 111_320.0
#: Briggs (1973) open country: (a, b) for sigma_y = a x (1 + b x)^-1/2, and
#: (c, d, p) for sigma_z = c x (1 + d x)^p.
BRIGGS_OPEN = {
    "A": ((0.22, 0.0001), (0.20, 0.0, 1.0)),
    "B": ((0.16, 0.0001), (0.12, 0.0, 1.0)),
    "C": ((0.11, 0.0001), (0.08, 0.0002, -0.5)),
    "D": ((0.08, 0.0001), (0.06, 0.0015, -0.5)),
    "E": ((0.06, 0.0001), (0.03, 0.0003, -1.0)),
    "F": ((0.04, 0.0001), (0.016, 0.0003, -1.0)),
}
STABILITY_CLASSES = tuple(BRIGGS_OPEN)


def sigmas(x_m: float, stability: str = "D") -> tuple[float, float]:
    """(sigma_y, sigma_z) in metres at x metres downwind (x > 0)."""
    (a, b), (c, d, p) = BRIGGS_OPEN[stability]
    return a * x_m / math.sqrt(1.0 + b * x_m), c * x_m * (1.0 + d * x_m) ** p


def ground_level_ugm3(q_gs: float, u_ms: float, x_m: float, y_m: float, stability: str = "D") -> float:
    """Ground-level concentration (ug/m3) of a ground-level release; 0 upwind."""
    if x_m <= 1.0 or u_ms <= 0.0 or q_gs <= 0.0:
        return 0.0
    sy, sz = sigmas(x_m, stability)
    return 1e6 * q_gs / (math.pi * u_ms * sy * sz) * math.exp(-(y_m * y_m) / (2.0 * sy * sy))


def downwind(src: tuple[float, float], at: tuple[float, float], wind_from_deg: float) -> tuple[float, float]:
    """(x, y): metres downwind of `src` and across the wind, of the point `at` (lat, lon),
    for a wind blowing from `wind_from_deg` (meteorological: 0 from the north)."""
    north = (at[0] - src[0]) * EARTH_M_PER_DEG
    east = (at[1] - src[1]) * EARTH_M_PER_DEG * math.cos(math.radians((at[0] + src[0]) / 2.0))
    to = math.radians((wind_from_deg + 180.0) % 360.0)  # where the wind blows to
    ux, uy = math.sin(to), math.cos(to)  # east, north of the downwind unit vector
    return east * ux + north * uy, -east * uy + north * ux


def reach_m(x_m: float, lateral_sigmas: float, stability: str = "D") -> float:
    """How far across the wind the plume reaches at x (lateral_sigmas standard deviations)."""
    return lateral_sigmas * sigmas(max(x_m, 1.0), stability)[0]
