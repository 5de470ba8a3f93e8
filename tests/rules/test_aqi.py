"""AQI per HJ 633-2012 against hand-computed values at and around every breakpoint.

The expected breakpoints are written out here from the standard (not read from the
data file), so a wrong row in rules/tables/ fails these tests.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from rules.aqi import AqiTable

IAQI = [0, 50, 100, 150, 200, 300, 400, 500]
STANDARD = {
    ("pm25", "24h"): [0, 35, 75, 115, 150, 250, 350, 500],
    ("pm10", "24h"): [0, 50, 150, 250, 350, 420, 500, 600],
    ("so2", "24h"): [0, 50, 150, 475, 800, 1600, 2100, 2620],
    ("so2", "1h"): [0, 150, 500, 650, 800],
    ("no2", "24h"): [0, 40, 80, 180, 280, 565, 750, 940],
    ("no2", "1h"): [0, 100, 200, 700, 1200, 2340, 3090, 3840],
    ("co", "24h"): [0, 2, 4, 14, 24, 36, 48, 60],
    ("co", "1h"): [0, 5, 10, 35, 60, 90, 120, 150],
    ("o3", "1h"): [0, 160, 200, 300, 400, 800, 1000, 1200],
    ("o3", "8h"): [0, 100, 160, 215, 265, 800],
}
TABLE = AqiTable.load()


def iaqi(pollutant: str, period: str, c: float, **other: float) -> float:
    means = {period: np.array([c], float)} | {k: np.array([v], float) for k, v in other.items()}
    return float(TABLE.iaqi_of(pollutant, period, means)[0])


def test_table_file_matches_the_standard() -> None:
    assert TABLE.standard == "HJ 633-2012"
    assert list(TABLE.iaqi) == IAQI
    for key, bps in STANDARD.items():
        assert list(TABLE.row(*key).breakpoints) == bps, key
    # the copy error REFERENCE.md warns about: SO2 24 h is not the SO2 1 h row
    assert TABLE.row("so2", "24h").breakpoints[:4] != TABLE.row("so2", "1h").breakpoints[:4]


CASES: list[tuple[str, str, float, float]] = []
for (pollutant, period), bps in STANDARD.items():
    for k, bp in enumerate(bps):
        CASES.append((pollutant, period, bp, IAQI[k]))  # exactly at each breakpoint
        if k + 1 < len(bps):
            lo, hi, ilo, ihi = bp, bps[k + 1], IAQI[k], IAQI[k + 1]
            CASES.append((pollutant, period, (lo + hi) / 2, (ilo + ihi) / 2))  # mid-bracket
            step = (hi - lo) / 100  # just above the breakpoint, inside the next bracket
            CASES.append((pollutant, period, lo + step, ilo + (ihi - ilo) / 100))
            CASES.append((pollutant, period, hi - step, ihi - (ihi - ilo) / 100))  # just below the next


@pytest.mark.parametrize(("pollutant", "period", "conc", "want"), CASES)
def test_iaqi_at_and_around_every_breakpoint(pollutant: str, period: str, conc: float, want: float) -> None:
    assert iaqi(pollutant, period, conc) == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize(("pollutant", "period", "conc", "want"), [
    # worked by hand: (IAQI_hi - IAQI_lo)/(BP_hi - BP_lo) * (C - BP_lo) + IAQI_lo
    ("pm25", "24h", 55, 75.0),            # 50/40*20 + 50
    ("pm25", "24h", 120, 50 / 35 * 5 + 150),  # 157.142857
    ("pm10", "24h", 380, 100 / 70 * 30 + 200),  # 242.857
    ("so2", "24h", 300, 50 / 325 * 150 + 100),  # 123.077
    ("no2", "1h", 450, 50 / 500 * 250 + 100),   # 125
    ("co", "1h", 7.5, 75.0),
    ("co", "24h", 3, 75.0),
    ("o3", "1h", 180, 75.0),               # 50/40*20 + 50
    ("o3", "8h", 190, 50 / 55 * 30 + 100),     # 127.27
])
def test_hand_worked_examples(pollutant: str, period: str, conc: float, want: float) -> None:
    assert iaqi(pollutant, period, conc) == pytest.approx(want, rel=1e-9)


def test_above_the_top_of_a_full_row_is_500() -> None:
    assert iaqi("pm25", "24h", 501) == 500
    assert iaqi("co", "1h", 999) == 500


def test_so2_1h_above_800_reports_the_24h_iaqi() -> None:
    # at 800 the 1 h table still applies: IAQI 200
    assert iaqi("so2", "1h", 800, **{"24h": 100}) == 200
    # above 800 the 1 h value is not used; the 24 h mean (here 475 -> 150) is reported
    assert iaqi("so2", "1h", 801, **{"24h": 475}) == 150
    assert iaqi("so2", "1h", 1500, **{"24h": 1600}) == 300
    # without a 24 h mean there is nothing to report
    assert math.isnan(iaqi("so2", "1h", 900))


def test_o3_8h_above_800_reports_the_1h_iaqi() -> None:
    assert iaqi("o3", "8h", 800, **{"1h": 100}) == 300
    assert iaqi("o3", "8h", 801, **{"1h": 900}) == 350  # 1 h: 100/200*100 + 300
    assert iaqi("o3", "8h", 850, **{"1h": 1200}) == 500


def test_aqi_is_the_max_carried_up_with_levels_and_primary() -> None:
    aqi, levels, primary = TABLE.combine({
        "pm25": np.array([75.0, 20.0, 157.142857, 10.0, np.nan]),
        "no2": np.array([50.0, 40.0, 157.142857, 350.2, np.nan]),
    })
    assert aqi.tolist() == [75, 40, 158, 351, -1]
    assert levels == ["good", "excellent", "moderate", "severe", "unknown"]
    assert primary == ["pm25", "", "pm25,no2", "no2", ""]


@pytest.mark.parametrize(("aqi", "level"), [(0, "excellent"), (50, "excellent"), (51, "good"), (100, "good"),
                                            (101, "light"), (150, "light"), (151, "moderate"), (200, "moderate"),
                                            (201, "heavy"), (300, "heavy"), (301, "severe"), (500, "severe")])
def test_levels(aqi: int, level: str) -> None:
    assert TABLE.level(aqi) == level
