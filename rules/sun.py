"""Sun elevation for many devices at once (for day-burning and night-only rules).

The US Naval Observatory's low-precision formulas (about 0.01 degrees over decades
around 2000), vectorised with numpy: a per-sample call into astral would cost more
than the rest of a rule. A test checks the result against astral.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

_J2000_MS = 946_728_000_000  # 2000-01-01 12:00 UTC
FloatArray = npt.NDArray[np.float64]


def sun_elevation_deg(lat_deg: FloatArray, lon_deg: FloatArray, t_ms: npt.NDArray[np.int64]) -> FloatArray:
    d = (t_ms - _J2000_MS) / 86_400_000.0
    g = np.radians(357.529 + 0.98560028 * d)
    q = 280.459 + 0.98564736 * d
    ecl_lon = np.radians(q + 1.915 * np.sin(g) + 0.020 * np.sin(2 * g))
    obliquity = np.radians(23.439 - 0.00000036 * d)
    ra = np.arctan2(np.cos(obliquity) * np.sin(ecl_lon), np.cos(ecl_lon))
    dec = np.arcsin(np.sin(obliquity) * np.sin(ecl_lon))
    gmst_deg = (18.697374558 + 24.06570982441908 * d) * 15.0
    hour_angle = np.radians(gmst_deg + lon_deg) - ra
    lat = np.radians(lat_deg)
    s = np.sin(lat) * np.sin(dec) + np.cos(lat) * np.cos(dec) * np.cos(hour_angle)
    return np.degrees(np.arcsin(np.clip(s, -1.0, 1.0)))
