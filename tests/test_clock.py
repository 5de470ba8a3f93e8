"""The one user-time parser (CLI --from/--to, recording columns) and the scenario clock."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from urbansense.clock import ScenarioClock, TimeFormatError, parse_time_ms

T_MS = 1_764_190_000_000  # 2025-11-26T20:46:40Z


@pytest.mark.parametrize("text", [
    "1764190000", "1764190000000", "1764190000000000", "1764190000000000000",  # s, ms, us, ns
    "1764190000.0", "2025-11-26T20:46:40Z", "2025-11-26T20:46:40+00:00", "2025-11-27T04:46:40+08:00",
    "2025-11-26T20:46:40",  # no offset: UTC
    " 2025-11-26T20:46:40Z ",
])
def test_every_accepted_form_means_the_same_instant(text: str) -> None:
    assert parse_time_ms(text) == T_MS


def test_numbers_are_told_apart_by_magnitude() -> None:
    assert parse_time_ms(1764190000) == T_MS
    assert parse_time_ms(1764190000.5) == T_MS + 500
    assert parse_time_ms(T_MS) == T_MS


@pytest.mark.parametrize("bad", ["yesterday", "2025-13-01", "", "12:00", "nan", "inf"])
def test_a_bad_time_says_which_forms_work(bad: str) -> None:
    with pytest.raises(TimeFormatError, match=r"epoch|finite"):
        parse_time_ms(bad)


@given(st.integers(min_value=100_000_000_001, max_value=4_000_000_000_000))  # 1973 .. 2096
def test_ms_seconds_us_and_ns_round_trip(ms: int) -> None:
    assert parse_time_ms(ms) == ms
    assert parse_time_ms(str(ms * 1000)) == ms
    assert parse_time_ms(str(ms * 1_000_000)) == ms
    if ms % 1000 == 0:
        assert parse_time_ms(str(ms // 1000)) == ms


def test_backtest_cli_reports_a_bad_time_in_words() -> None:
    out = subprocess.run([str(Path(sys.executable).parent / "urbansense"), "rules", "backtest", "--from", "noon",
                          "--to", "2025-11-26T20:46:40Z", "--influx", "http://127.0.0.1:9"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "'noon' is neither epoch" in out.stderr


def test_scenario_clock_round_trips_through_the_environment() -> None:
    clock = ScenarioClock(origin_event_ms=T_MS, origin_wall_ms=1_000, speed=60.0)
    assert ScenarioClock.from_env(clock.to_env()) == clock
    assert clock.wall_s_for(T_MS + 60_000) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="origin_event_ms"):
        ScenarioClock.from_env("12:x")


@given(st.lists(st.tuples(st.integers(0, 5000), st.integers(-400_000, 400_000)), min_size=1, max_size=60))
def test_clock_offset_is_the_largest_sent_minus_received_of_the_window(steps: list[tuple[int, int]]) -> None:
    """The sliding-window maximum against a brute-force one, at speed 1 and at speed 10."""
    from urbansense.clock_offset import ClockOffsets

    for speed in (1.0, 10.0):
        offsets = ClockOffsets(window_s=10, speed=speed)
        seen: list[tuple[int, int]] = []
        received = T_MS
        for gap, difference in steps:
            received += gap
            got = offsets.observe("d", "g", received + difference, received)
            seen.append((received, difference))
            window = [v for at, v in seen if at >= received - 10_000 * speed]
            assert got == pytest.approx(max(window) / 1000 / speed)
        assert offsets.offset_s("d", "g") == got and offsets.offset_s("d", "other") is None


def test_clock_offset_ignores_a_batch_held_in_the_broker() -> None:
    """A gateway 300 s behind: prompt batches say -300.0x s; one held 40 s in the broker
    (-340 s) does not move the estimate."""
    from urbansense.clock_offset import ClockOffsets

    offsets = ClockOffsets(window_s=60, speed=1.0)
    assert offsets.observe("d", "g", T_MS - 300_000, T_MS + 40) == pytest.approx(-300.04)
    assert offsets.observe("d", "g", T_MS + 1000 - 300_000, T_MS + 1015) == pytest.approx(-300.015)
    assert offsets.observe("d", "g", T_MS - 300_000, T_MS + 40_000) == pytest.approx(-300.015)
    # 75 s on, the prompt batches have left the window: the least-delayed one left counts
    assert offsets.observe("d", "g", T_MS - 300_000, T_MS + 76_100) == pytest.approx(-340.0)
