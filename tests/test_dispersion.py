"""The Gaussian plume (urbansense/dispersion.py) against published figures."""

from __future__ import annotations

import math

import pytest

from urbansense.dispersion import EARTH_M_PER_DEG, downwind, ground_level_ugm3, reach_m, sigmas


@pytest.mark.parametrize(("stability", "x", "sy", "sz"), [
    # Briggs (1973) open country, as tabulated by Hanna, Briggs & Hosker (1982) and by
    # Turner's workbook charts: class D at 1 km ~ 76 m / 38 m; class F at 1 km ~ 38 m / 12 m
    ("D", 1000.0, 76.3, 37.9),
    ("F", 1000.0, 38.1, 12.3),
    ("A", 500.0, 107.3, 100.0),
])
def test_briggs_open_country_curves(stability: str, x: float, sy: float, sz: float) -> None:
    got_y, got_z = sigmas(x, stability)
    assert got_y == pytest.approx(sy, rel=0.01) and got_z == pytest.approx(sz, rel=0.01)


def test_ground_level_concentration_of_a_ground_release() -> None:
    # 100 g/s in 3 m/s, 2 km downwind on the axis, class D: q / (pi u sy sz)
    sy, sz = sigmas(2000.0)
    on_axis = ground_level_ugm3(100.0, 3.0, 2000.0, 0.0)
    assert on_axis == pytest.approx(1e8 / (math.pi * 3.0 * sy * sz), rel=1e-9)
    assert ground_level_ugm3(100.0, 3.0, 2000.0, sy) == pytest.approx(on_axis * math.exp(-0.5), rel=1e-9)
    assert ground_level_ugm3(100.0, 3.0, -500.0, 0.0) == 0.0  # upwind
    assert reach_m(2000.0, 2.0) == pytest.approx(2 * sy)


def test_downwind_axes_follow_the_meteorological_wind() -> None:
    src = (31.3452, 121.5758)
    south = (src[0] - 1000.0 / EARTH_M_PER_DEG, src[1])
    x, y = downwind(src, south, 0.0)  # a north wind blows to the south
    assert x == pytest.approx(1000.0, rel=1e-6) and y == pytest.approx(0.0, abs=1e-6)
    x, y = downwind(src, south, 90.0)  # an east wind: the point is across it
    assert abs(x) < 1e-6 and abs(y) == pytest.approx(1000.0, rel=1e-6)
