"""The vectorised sun elevation agrees with astral."""

from __future__ import annotations

import datetime as dt

import numpy as np
from astral import Observer
from astral.sun import elevation

from rules.sun import sun_elevation_deg


def test_sun_elevation_matches_astral_over_a_year() -> None:
    places = [(31.2304, 121.4737), (39.9, 116.4), (22.5, 114.1), (-33.9, 151.2), (51.5, -0.1)]
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for lat, lon in places:
        times = [start + dt.timedelta(hours=37 * i + 0.5) for i in range(240)]
        ours = sun_elevation_deg(np.full(len(times), lat), np.full(len(times), lon),
                                 np.array([int(t.timestamp() * 1000) for t in times], np.int64))
        ref = np.array([elevation(Observer(lat, lon), t, with_refraction=False) for t in times])
        assert np.max(np.abs(ours - ref)) < 0.1
