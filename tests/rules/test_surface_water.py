"""GB 3838-2002 surface-water classes (rules/surface_water.py) at every class boundary
of the standard's table 1, written out here from the standard rather than read from
the shipped table, so a wrong number in either shows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rules.surface_water import WORSE, SurfaceWaterTable, SurfaceWaterTableError

TABLE = SurfaceWaterTable.load()
I, II, III, IV, V = 1, 2, 3, 4, 5  # noqa: E741 (the standard names its classes so)
EPS = 1e-3

# (parameter, waterbody) -> [(value, class)], each limit and just past it
BOUNDARIES = {
    ("do", "any"): [(7.5, I), (7.5 - EPS, II), (6, II), (6 - EPS, III), (5, III), (5 - EPS, IV),
                      (3, IV), (3 - EPS, V), (2, V), (2 - EPS, WORSE), (9.1, I), (0.0, WORSE)],
    ("codmn", "any"): [(2, I), (2 + EPS, II), (4, II), (4 + EPS, III), (6, III), (6 + EPS, IV),
                         (10, IV), (10 + EPS, V), (15, V), (15 + EPS, WORSE), (0.0, I)],
    ("cod", "any"): [(15, I), (15 + EPS, III), (20, III), (20 + EPS, IV), (30, IV), (30 + EPS, V),
                       (40, V), (40 + EPS, WORSE)],
    ("bod5", "any"): [(3, I), (3 + EPS, III), (4, III), (4 + EPS, IV), (6, IV), (6 + EPS, V),
                        (10, V), (10 + EPS, WORSE)],
    ("nh3n", "any"): [(0.15, I), (0.15 + EPS, II), (0.5, II), (0.5 + EPS, III), (1.0, III),
                        (1.0 + EPS, IV), (1.5, IV), (1.5 + EPS, V), (2.0, V), (2.0 + EPS, WORSE)],
    ("tp", "any"): [(0.02, I), (0.02 + EPS, II), (0.1, II), (0.1 + EPS, III), (0.2, III),
                      (0.2 + EPS, IV), (0.3, IV), (0.3 + EPS, V), (0.4, V), (0.4 + EPS, WORSE)],
    ("tp", "lake"): [(0.01, I), (0.01 + EPS / 10, II), (0.025, II), (0.025 + EPS, III), (0.05, III),
                     (0.05 + EPS, IV), (0.1, IV), (0.1 + EPS, V), (0.2, V), (0.2 + EPS, WORSE)],
    ("ph", "any"): [(6.0, I), (6.0 - EPS, WORSE), (9.0, I), (9.0 + EPS, WORSE), (7.4, I)],
}


@pytest.mark.parametrize("key", sorted(BOUNDARIES))
def test_each_parameter_meets_the_class_its_limit_sets(key: tuple[str, str]) -> None:
    name, waterbody = key
    values, expected = zip(*BOUNDARIES[key], strict=True)
    got = TABLE.parameter(name, waterbody).class_of(np.array(values))
    assert [TABLE.name(int(c)) for c in got] == [TABLE.name(c) for c in expected], list(zip(values, got, strict=True))


def test_a_station_takes_its_worst_parameter_and_names_it() -> None:
    # three stations: clean; ammonia at IV; dissolved oxygen and permanganate both at V
    per = {"do": TABLE.parameter("do").class_of(np.array([8.0, 5.5, 2.5])),
           "codmn": TABLE.parameter("codmn").class_of(np.array([1.5, 3.0, 12.0])),
           "nh3n": TABLE.parameter("nh3n").class_of(np.array([0.1, 1.2, np.nan]))}
    station = SurfaceWaterTable.station_class(per)
    assert station.tolist() == [I, IV, V]
    assert [TABLE.name(int(c)) for c in station] == ["I", "IV", "V"]
    assert per["nh3n"].tolist()[2] == 0  # no value: not a class
    for j, deciding in enumerate([[], ["nh3n"], ["do", "codmn"]]):
        assert SurfaceWaterTable.deciding({p: int(c[j]) for p, c in per.items()}, int(station[j])) == deciding
    assert TABLE.name(WORSE) == "worse than V" and TABLE.name(0) == "unknown"


def test_a_lake_station_reads_the_lake_row_and_other_parameters_fall_back_to_rivers() -> None:
    assert TABLE.parameter("tp", "lake").class_of(np.array([0.08]))[0] == IV
    assert TABLE.parameter("tp", "any").class_of(np.array([0.08]))[0] == II
    assert TABLE.parameter("nh3n", "lake") is TABLE.parameter("nh3n", "any")
    with pytest.raises(SurfaceWaterTableError, match=r"no parameter 'cod_x'.*have bod5, cod, codmn"):
        TABLE.parameter("cod_x")


def test_a_table_with_limits_in_the_wrong_order_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "t.yaml"
    bad.write_text("standard: X\nversion: 1\nclasses: [I, II, III, IV, V]\nparameters:\n"
                   "  - {parameter: nh3n, metric: nh3n_mgl, better: lower, limits: [0.15, 1.0, 0.5, 1.5, 2.0]}\n")
    with pytest.raises(SurfaceWaterTableError, match="nh3n: limits must rise from class I to V"):
        SurfaceWaterTable.load(bad)
    bad.write_text("standard: X\nversion: 1\nclasses: [I, II, III, IV, V]\nparameters:\n"
                   "  - {parameter: do, metric: do_mgl, better: higher, limits: [7.5, 6, 5]}\n")
    with pytest.raises(SurfaceWaterTableError, match="do: give one limit per class"):
        SurfaceWaterTable.load(bad)
