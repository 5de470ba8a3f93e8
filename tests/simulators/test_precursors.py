"""Precursors (issue 17): incidents that announce themselves in the simulated data before
they strike, and only those that were given one (docs/PRECURSORS.md)."""

from __future__ import annotations

from pathlib import Path

import yaml

from simulators.incidents import ActiveIncident
from simulators.scenario import Scenario, load_scenario

T_START = 1_780_000_000_000


def _scenario(tmp_path: Path, incidents: list[dict[str, object]]) -> Path:
    doc = {"scenario": "precursor-test", "duration": "8h", "step": "60s",
           "gateways": ["pd-gw-lift", "pd-gw-light"], "incidents": incidents}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _series(sc: Scenario, seed: int, start: int, device: str, metric: str) -> list[tuple[float, float]]:
    dev = sc.world(seed, start).devices[device]
    times = range(start, start + 8 * 3_600_000, 300_000)
    return [((t - start) / 3_600_000, float(dev.engineering(t)[metric])) for t in times]


def test_the_precursor_grows_linearly_to_the_incident_start() -> None:
    inc = ActiveIncident("door_open_while_moving", T_START, T_START + 600_000, {"precursor_s": 3600.0})
    assert inc.lead_ms == 3_600_000
    assert inc.precursor(T_START - 4_000_000) == 0.0
    assert inc.precursor(T_START - 1_800_000) == 0.5
    assert inc.precursor(T_START) == 1.0
    assert ActiveIncident("elevator_fault", T_START, T_START + 1, {}).precursor(T_START) == 0.0


def test_worn_doors_levelling_and_an_ageing_driver_show_before_the_incident(tmp_path: Path) -> None:
    sc = load_scenario(_scenario(tmp_path, [
        {"type": "door_open_while_moving", "device": "el-0101", "at": "6h", "duration": "30m",
         "params": {"precursor_s": 10800}},
        {"type": "elevator_entrapment", "device": "el-0102", "at": "6h", "duration": "30m",
         "params": {"precursor_s": 10800}},
        {"type": "lamp_failure", "device": "lc-0101", "at": "6h", "duration": "1h", "params": {"precursor_s": 10800}},
        {"type": "elevator_entrapment", "device": "el-0103", "at": "6h", "duration": "30m"},  # unannounced
    ]))
    truth = {r["devices"][0]: r for r in sc.ground_truth(1, T_START)}
    assert truth["el-0101"]["warn_from"] == T_START + 3 * 3_600_000
    assert truth["el-0103"]["warn_from"] == truth["el-0103"]["start"]

    def before_and_just_before(device: str, metric: str) -> tuple[float, float]:
        xs = _series(sc, 1, T_START, device, metric)
        early = [v for h, v in xs if h < 3]
        late = [v for h, v in xs if 5.6 <= h < 6]
        return sum(early) / len(early), sum(late) / len(late)

    door0, door1 = before_and_just_before("el-0101", "door_close_time_s")
    assert door1 - door0 > 1.5
    reopen0, reopen1 = before_and_just_before("el-0101", "door_reopens_pct")
    assert reopen1 - reopen0 > 20
    level0, level1 = before_and_just_before("el-0102", "levelling_error_mm")
    assert level1 - level0 > 10
    pf0, pf1 = before_and_just_before("lc-0101", "power_factor")
    assert pf0 - pf1 > 0.1
    # the lift without a precursor does not change before its entrapment
    calm0, calm1 = before_and_just_before("el-0103", "levelling_error_mm")
    assert abs(calm1 - calm0) < 1.0


def test_a_share_of_composed_incidents_come_unannounced() -> None:
    sc = load_scenario("pudong-random-day")
    leads = [e.params["precursor_s"] for seed in range(1, 41) for e in sc.events_for(seed)
             if e.type == "elevator_entrapment"]
    without = sum(1 for x in leads if x == 0)
    assert 0 < without < len(leads) / 2, leads
    assert all(x == 0 or 3600 <= x <= 14400 for x in leads)
    # and a precursor begins after the first hour (the rules learn each device's baseline then)
    for seed in range(1, 21):
        for e in sc.events_for(seed):
            if e.params.get("precursor_s"):
                assert e.at_s - e.params["precursor_s"] >= 3600, (seed, e.type)


def test_a_stolen_cable_can_take_the_controllers_with_it(tmp_path: Path) -> None:
    path = tmp_path / "theft.yaml"
    path.write_text(yaml.safe_dump({
        "scenario": "theft", "duration": "2h", "step": "60s", "start_local": "21:00", "gateways": ["pd-gw-light"],
        "incidents": [{"type": "cable_theft", "labels": {"circuit": "pd-cab-01-c1"}, "at": "30m", "duration": "30m",
                       "params": {"controllers_silent": 1}},
                      {"type": "cable_theft", "labels": {"circuit": "pd-cab-02-c2"}, "at": "30m", "duration": "30m"}]}))
    sc = load_scenario(path)
    start = sc.aligned_start_ms(T_START)
    during = start + 45 * 60_000
    world = sc.world(1, start)
    silent = {d for d, dev in world.devices.items() if dev.spec.labels.get("circuit") == "pd-cab-01-c1"}
    dark = {d for d, dev in world.devices.items() if dev.spec.labels.get("circuit") == "pd-cab-02-c2"}
    assert silent and dark
    for d in silent:
        s = world.devices[d].sample(during)
        assert s is not None and s.q == "bad" and s.err == "timeout"
        assert world.devices[d].sample(start + 10 * 60_000).q == "good"  # type: ignore[union-attr]
    for d in dark:
        s = world.devices[d].sample(during)
        assert s is not None and s.q == "good" and s.f["current_a"] == 0.0


def test_a_cable_theft_cuts_the_far_segment_first(tmp_path: Path) -> None:
    """With a precursor, the circuit's far lamp (last in its gateway's order) loses its
    supply alone, then the whole circuit; with controllers fed by the cable, that lamp's
    controller falls silent first."""
    path = tmp_path / "theft.yaml"
    path.write_text(yaml.safe_dump({
        "scenario": "theft", "duration": "2h", "step": "60s", "start_local": "21:00", "gateways": ["pd-gw-light"],
        "incidents": [{"type": "cable_theft", "labels": {"circuit": "pd-cab-02-c2"}, "at": "1h", "duration": "30m",
                       "params": {"precursor_s": 1200}},
                      {"type": "cable_theft", "labels": {"circuit": "pd-cab-01-c1"}, "at": "1h", "duration": "30m",
                       "params": {"precursor_s": 1200, "controllers_silent": 1}}]}))
    sc = load_scenario(path)
    start = sc.aligned_start_ms(T_START)
    world = sc.world(1, start)

    def circuit(name: str) -> list[str]:
        return [d for d, dev in world.devices.items() if dev.spec.labels.get("circuit") == name]

    dark, silent = circuit("pd-cab-02-c2"), circuit("pd-cab-01-c1")
    before, first_cut, theft = start + 30 * 60_000, start + 50 * 60_000, start + 70 * 60_000
    def volts_at(d: str, t: int) -> float:
        s = world.devices[d].sample(t)
        assert s is not None and s.f is not None
        return float(s.f["voltage_v"])

    volts = {d: [volts_at(d, t) for t in (before, first_cut, theft)] for d in dark}
    far = dark[-1]
    assert volts[far][0] > 200 and volts[far][1] == 0.0 and volts[far][2] == 0.0
    for d in dark[:-1]:
        assert volts[d][0] > 200 and volts[d][1] > 200 and volts[d][2] == 0.0
    assert world.devices[silent[-1]].sample(first_cut).err == "timeout"  # type: ignore[union-attr]
    assert all(world.devices[d].sample(first_cut).q == "good" for d in silent[:-1])  # type: ignore[union-attr]
    # the ground truth lets an alert on the first cut count as a warning
    rec = next(r for r in sc.ground_truth(1, start) if r["labels"].get("circuit") == "pd-cab-02-c2")
    assert rec["warn_from"] == rec["start"] - 1_200_000 and rec["hazard_crossed_at"] == rec["start"]


def test_a_methane_detector_loses_its_zero_before_it_fails(tmp_path: Path) -> None:
    path = tmp_path / "detector.yaml"
    path.write_text(yaml.safe_dump({
        "scenario": "detector", "duration": "8h", "step": "60s", "gateways": ["pd-gw-gas"],
        "incidents": [{"type": "detector_failure", "device": "md-0101", "at": "6h", "duration": "1h",
                       "params": {"precursor_s": 10800, "zero_drift_lel_pct": 5}},
                      {"type": "detector_failure", "device": "md-0102", "at": "6h", "duration": "1h"}]}))
    sc = load_scenario(path)
    early = [v for h, v in _series(sc, 1, T_START, "md-0101", "methane_lel_pct") if h < 3]
    late = [v for h, v in _series(sc, 1, T_START, "md-0101", "methane_lel_pct") if 5.6 <= h < 6]
    assert min(early) > -1.5 and max(late) < -2.5  # reads below clean air before it fails
    calm = [v for h, v in _series(sc, 1, T_START, "md-0102", "methane_lel_pct") if h < 6]
    assert min(calm) > -1.5  # the one that fails unannounced does not
    failed = sc.world(1, T_START).devices["md-0101"].engineering(T_START + int(6.5 * 3_600_000))
    assert failed["sensor_fault"] is True and failed["methane_lel_pct"] == 0.0
    truth = {r["devices"][0]: r for r in sc.ground_truth(1, T_START)}
    assert truth["md-0101"]["sensor"] is True  # its health alerts detect it
    assert truth["md-0101"]["hazard_crossed_at"] == truth["md-0101"]["start"]
