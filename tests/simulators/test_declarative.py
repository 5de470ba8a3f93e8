"""Families simulated from data: the incident shapes and the field hints of
simulators/families/declarative.py, on the noise family of tests/data."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulators.families import DeviceContext, model_for
from simulators.families.declarative import DeclarativeDevice, envelope
from simulators.incidents import ActiveIncident
from urbansense import registry
from urbansense.config import load_profile
from urbansense.registry import Effect

NOISE = Path(__file__).resolve().parents[1] / "data" / "families" / "noise"
T0 = 1_764_190_800_000  # 2025-11-27 05:00 Shanghai
MIN = 60_000


def _incident(params: dict[str, float], minutes: int = 60) -> ActiveIncident:
    return ActiveIncident("x", T0, T0 + minutes * MIN, params)


def test_ramp_rises_over_rise_s_and_falls_over_fall_s() -> None:
    inc, fx = _incident({"rise_s": 600.0, "fall_s": 300.0}), Effect(shape="ramp")
    assert envelope(fx, inc, T0) == 0.0
    assert envelope(fx, inc, T0 + 5 * MIN) == pytest.approx(0.5)
    assert envelope(fx, inc, T0 + 30 * MIN) == 1.0
    assert envelope(fx, inc, T0 + 57 * MIN + 30_000) == pytest.approx(0.5)


def test_exponential_accelerates_like_a_runaway() -> None:
    inc, fx = _incident({"rise_s": 1200.0}), Effect(shape="exponential")
    e = [envelope(fx, inc, T0 + m * MIN) for m in (0, 5, 10, 15, 20)]
    steps = [b - a for a, b in itertools.pairwise(e)]
    assert e[0] == 0.0 and e[-1] == pytest.approx(1.0)
    assert all(b > a for a, b in itertools.pairwise(steps))  # each step bigger than the last


def test_spike_oscillation_plume_and_step() -> None:
    inc = _incident({"decay_s": 60.0, "period_s": 600.0})
    assert envelope(Effect(shape="spike"), inc, T0) == 1.0
    assert envelope(Effect(shape="spike"), inc, T0 + 3 * MIN) < 0.06
    osc = Effect(shape="oscillation")
    assert envelope(osc, inc, T0 + 5 * MIN) == pytest.approx(1.0)
    assert envelope(osc, inc, T0 + 10 * MIN) == pytest.approx(0.0, abs=1e-9)
    plume = Effect(shape="plume")
    assert envelope(plume, inc, T0 + 30 * MIN) == pytest.approx(1.0)
    assert envelope(plume, inc, T0 + 30 * MIN) > envelope(plume, inc, T0 + 15 * MIN) > envelope(plume, inc, T0)
    assert envelope(Effect(shape="step"), inc, T0) == 1.0


@pytest.fixture
def noise_family() -> Iterator[None]:
    mp = pytest.MonkeyPatch()
    mp.setenv(registry.FAMILIES_ENV, str(NOISE.parent))
    registry.families.cache_clear()
    yield
    mp.undo()
    registry.families.cache_clear()


def _num(v: object) -> float:
    assert isinstance(v, int | float) and not isinstance(v, bool), v
    return float(v)


def _device(dev: str = "nm-0001", seed: int = 1) -> DeclarativeDevice:
    model = model_for(DeviceContext(dev, seed, load_profile(NOISE / "profiles" / "noise-monitor.yaml"), epoch_ms=T0))
    assert isinstance(model, DeclarativeDevice)
    return model


def test_a_profile_without_a_hook_is_simulated_from_its_hints(noise_family: None) -> None:
    dev = _device()
    v = dev.values(T0, [])
    assert set(v) == {"laeq_dba", "lmax_dba", "l90_dba", "enclosure_open"}
    assert v["enclosure_open"] is False
    assert 50 < _num(v["laeq_dba"]) < 66 and v["laeq_dba"] == round(_num(v["laeq_dba"]), 1)
    assert dev.values(T0, []) == _device().values(T0, [])  # a pure function of time and seed
    # the daily profile: the morning rush (08:00) is louder than the small hours (03:00)
    quiet = sum(_num(dev.values(T0 - 2 * 3_600_000 + s * 1000, [])["laeq_dba"]) for s in range(60)) / 60
    rush = sum(_num(dev.values(T0 + 3 * 3_600_000 + s * 1000, [])["laeq_dba"]) for s in range(60)) / 60
    assert rush - quiet > 8


def test_an_incident_effect_moves_its_fields_and_the_followers(noise_family: None) -> None:
    dev = _device()
    inc = ActiveIncident("night_construction", T0, T0 + 60 * MIN,
                         {"level_dba": 82.0, "rise_s": 600.0, "fall_s": 300.0})
    before = dev.values(T0 + 20 * MIN, [])
    during = dev.values(T0 + 20 * MIN, [inc])
    assert _num(during["laeq_dba"]) == pytest.approx(82.0, abs=3)
    rise = _num(during["laeq_dba"]) - _num(before["laeq_dba"])
    assert _num(during["lmax_dba"]) - _num(before["lmax_dba"]) == pytest.approx(rise, abs=4)
    after = dev.values(T0 + 61 * MIN, [inc])  # ended: back to normal
    assert _num(after["laeq_dba"]) < 70


def test_ranges_clamp_the_signal(noise_family: None) -> None:
    dev = _device()
    inc = ActiveIncident("night_construction", T0, T0 + 60 * MIN, {"level_dba": 400.0, "rise_s": 0.0})
    v = dev.values(T0 + MIN, [inc])
    assert v["laeq_dba"] == 140 and v["lmax_dba"] == 150
