"""Rules on moving devices (rules/motion.py) over the vehicle family's shipped zones:
speeding per zone, banned zones with hours, route corridors, stops in no-stopping
places, a tanker at a utility tunnel whose gas rises, and drivers' hours."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rules.catalog import GeofenceRule, load_catalog
from rules.engine import RulesEngine
from rules.inventory import InventoryDevice
from urbansense import registry
from urbansense.config import ConfigError
from urbansense.schema import AlertEvent, Sample, TelemetryBatch

from .helpers import T0, rule

ZONES = registry.families()["vehicle"].folder / "zones"
#: 2025-11-27 10:00 Shanghai (02:00 UTC): downtown's daytime tanker ban is in force.
DAY = 1_764_208_800_000
#: 2025-11-27 22:00 Shanghai: it is not.
NIGHT = DAY + 12 * 3_600_000
#: Points of the shipped zones (lat, lon).
SCHOOL = (31.2455, 121.5400)            # jinqiao school zone, 30 km/h, on bus route b82
OPEN_ROAD = (31.2400, 121.5780)         # tanker route r1, 60 km/h
DOWNTOWN = (31.2400, 121.5050)          # lujiazui downtown, tankers banned 07:00-20:00
TUNNEL = (31.2295, 121.5315)            # the century avenue utility tunnel's zone
HOMES = (31.2480, 121.5830)             # jinqiao residential, no stopping for tankers


def vehicles(*specs: tuple[str, str, str]) -> list[InventoryDevice]:
    return [InventoryDevice("pudong", "pd-gw-fleet", name, "vehicle", None, None,
                            {"class": cls, "route": route}, frozenset()) for name, cls, route in specs]


def geofence(**raw: Any) -> GeofenceRule:
    raw.setdefault("id", "vehicle.test")
    r = rule(kind="geofence", measurement="vehicle", **raw)
    assert isinstance(r, GeofenceRule)
    r.folder = ZONES.parent
    return r


def report(t: int, dev: str, where: tuple[float, float], speed: float = 40.0, fix: bool = True,
           **more: Any) -> TelemetryBatch:
    f = {"lat": where[0], "lon": where[1], "speed_kmh": speed, "gnss_fix": fix, **more}
    return TelemetryBatch(gw="pd-gw-fleet", district="pudong", seq=0, sent=t,
                          samples=[Sample(dev=dev, m="vehicle", t=t, f=f)])


def run(engine: RulesEngine, batches: list[TelemetryBatch]) -> list[AlertEvent]:
    return [e for b in batches for e in engine.ingest([b])]


def test_speeding_is_judged_against_the_limit_of_the_zone_it_is_in() -> None:
    speeding = geofence(zones="zones/speed-limits.geojson", speed_above="limit", tolerance_pct=10)
    eng = RulesEngine([speeding], vehicles(("vb-1", "bus", "b82"), ("vt-1", "tanker", "r1")))
    ev = run(eng, [report(DAY, "vb-1", SCHOOL, speed=32.0), report(DAY, "vt-1", OPEN_ROAD, speed=45.0),
                   report(DAY + 10_000, "vb-1", SCHOOL, speed=45.0),   # 45 in a 30 zone
                   report(DAY + 10_000, "vt-1", OPEN_ROAD, speed=64.0)])  # within 10 % of 60
    assert [(e.device, e.state, e.value, e.threshold) for e in ev] == [("vb-1", "firing", 45.0, 30.0)]
    assert "jinqiao school zone" in ev[0].message
    ev = run(eng, [report(DAY + 20_000, "vt-1", OPEN_ROAD, speed=70.0)])
    assert [(e.device, e.threshold) for e in ev] == [("vt-1", 60.0)]


def test_a_banned_zone_applies_to_its_class_in_its_hours() -> None:
    banned = geofence(zones="zones/restricted.geojson")
    eng = RulesEngine([banned], vehicles(("vt-1", "tanker", "r1"), ("vb-1", "bus", "b81")))
    assert run(eng, [report(NIGHT, "vt-1", DOWNTOWN), report(NIGHT, "vb-1", DOWNTOWN)]) == []  # ban not in force
    ev = run(eng, [report(DAY, "vt-1", DOWNTOWN), report(DAY, "vb-1", DOWNTOWN)])  # buses are welcome
    assert [(e.device, e.state) for e in ev] == [("vt-1", "firing")]
    assert "lujiazui downtown" in ev[0].message
    ev = run(eng, [report(DAY + 10_000, "vt-1", OPEN_ROAD)])
    assert [(e.device, e.state) for e in ev] == [("vt-1", "resolved")]


def test_a_report_without_a_fix_tells_nothing() -> None:
    banned = geofence(zones="zones/restricted.geojson")
    eng = RulesEngine([banned], vehicles(("vt-1", "tanker", "r1")))
    assert run(eng, [report(DAY, "vt-1", DOWNTOWN, fix=False)]) == []
    assert [e.state for e in run(eng, [report(DAY + 10_000, "vt-1", DOWNTOWN)])] == ["firing"]
    # a lost fix neither resolves it
    assert run(eng, [report(DAY + 20_000, "vt-1", OPEN_ROAD, fix=False)]) == []


def test_the_corridor_is_the_route_the_vehicle_is_assigned() -> None:
    off = geofence(zones="zones/routes.geojson", when="outside", match="route")
    eng = RulesEngine([off], vehicles(("vt-1", "tanker", "r1"), ("vt-2", "tanker", "r2"), ("vt-3", "tanker", "none")))
    # r1's line is on OPEN_ROAD: vt-2 (route r2) there is 2.8 km off its own corridor; a
    # vehicle whose route no zone names is not judged
    ev = run(eng, [report(DAY, d, OPEN_ROAD) for d in ("vt-1", "vt-2", "vt-3")])
    assert [(e.device, e.state) for e in ev] == [("vt-2", "firing")]
    assert ev[0].value == pytest.approx(2700, abs=300) and "tanker route r2" in ev[0].message


def test_a_stop_in_a_no_stopping_place_fires_after_its_time() -> None:
    stop = geofence(zones="zones/no-stopping.geojson", speed_below=2, for_s=600, labels={"class": "tanker"})
    eng = RulesEngine([stop], vehicles(("vt-1", "tanker", "r1"), ("vt-2", "tanker", "r1")))
    batches = [report(DAY + k * 10_000, "vt-1", HOMES, speed=0.0) for k in range(62)]
    batches += [report(DAY + k * 10_000, "vt-2", HOMES, speed=30.0) for k in range(62)]  # driving through
    ev = run(eng, batches)
    assert [(e.device, e.state, e.t - DAY) for e in ev] == [("vt-1", "firing", 600_000)]


def _tunnel_inventory() -> list[InventoryDevice]:
    return [*vehicles(("vt-1", "tanker", "r1"), ("vb-1", "bus", "b81")),
            InventoryDevice("pudong", "pd-gw-tunnel", "tn-0201", "tunnel", 31.2295, 121.5315,
                            {"tunnel": "century-avenue", "compartment": "gas"}, frozenset({"ch4_pct_vol"}))]


def test_a_tanker_at_a_tunnel_whose_gas_rises_is_one_alert_naming_both() -> None:
    gas = rule(id="tunnel.gas_alarm", kind="threshold", measurement="tunnel", metric="ch4_pct_vol", op="above",
               threshold=1.0)
    both = geofence(id="vehicle.tanker_at_tunnel_hazard", zones="zones/restricted.geojson",
                    labels={"class": "tanker"}, while_alerts=["tunnel.gas_alarm"], zone_label="tunnel",
                    alerts_within_s=900, severity="critical",
                    message="Tanker {device} inside {zone} while the tunnel reports {partners}")
    eng = RulesEngine([gas, both], _tunnel_inventory())
    # the tanker in the tunnel's zone while the tunnel is clean: nothing from this rule
    assert run(eng, [report(DAY, "vt-1", TUNNEL)]) == []
    methane = TelemetryBatch(gw="pd-gw-tunnel", district="pudong", seq=0, sent=DAY + 10_000,
                             samples=[Sample(dev="tn-0201", m="tunnel", t=DAY + 10_000, f={"ch4_pct_vol": 1.3})])
    assert [e.rule for e in run(eng, [methane])] == ["tunnel.gas_alarm"]
    ev = run(eng, [report(DAY + 20_000, "vt-1", TUNNEL), report(DAY + 20_000, "vb-1", TUNNEL)])
    assert [(e.rule, e.device, e.severity) for e in ev] == [("vehicle.tanker_at_tunnel_hazard", "vt-1", "critical")]
    assert "century avenue utility tunnel" in ev[0].message and "tn-0201 (tunnel.gas_alarm)" in ev[0].message
    # a tanker elsewhere is none of its business, and the gas alert 15 min old no longer counts
    assert run(eng, [report(DAY + 30_000, "vt-1", OPEN_ROAD)])[0].state == "resolved"
    assert run(eng, [report(DAY + 20 * 60_000, "vt-1", TUNNEL)]) == []


def test_driving_time_warns_before_four_hours_and_a_rest_resets_it() -> None:
    hours = rule(id="vehicle.continuous_driving", kind="driving_time", measurement="vehicle", metric="speed_kmh",
                 moving_above=5, rest_s=1200, op="above", threshold=3.75, critical_threshold=4.0)
    eng = RulesEngine([hours], vehicles(("vt-1", "tanker", "r1"), ("vt-2", "tanker", "r2")))
    step = 60_000
    out: list[AlertEvent] = []
    for k in range(0, 4 * 60 + 10):
        t = T0 + k * step
        # vt-1 drives on; vt-2 takes a 15-minute stop (too short) and, at 3 h, a 25-minute rest
        v2 = 0.0 if 60 <= k < 75 or 180 <= k < 205 else 50.0
        out += run(eng, [TelemetryBatch(gw="g", district="pudong", seq=0, sent=t, samples=[
            Sample(dev="vt-1", m="vehicle", t=t, f={"speed_kmh": 50.0}),
            Sample(dev="vt-2", m="vehicle", t=t, f={"speed_kmh": v2})])])
    assert [(e.device, e.severity, (e.t - T0) // step) for e in out] == [("vt-1", "warning", 226),
                                                                          ("vt-1", "critical", 241)]
    # a report held through a coverage gap, older than what was counted, does not rewind it
    late = TelemetryBatch(gw="g", district="pudong", seq=0, sent=T0, samples=[
        Sample(dev="vt-1", m="vehicle", t=T0 + 100 * step, f={"speed_kmh": 0.0})])
    assert run(eng, [late]) == []


def test_zone_problems_name_the_file_the_rule_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / "zones").mkdir()
    (tmp_path / "zones" / "bad.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": "a", "hours": "25:00-06:00"},
         "geometry": {"type": "Polygon",
                      "coordinates": [[[121.5, 31.2], [121.6, 31.2], [121.6, 31.3], [121.5, 31.2]]]}},
        {"type": "Feature", "properties": {"name": "r"},
         "geometry": {"type": "LineString", "coordinates": [[121.5, 31.2], [121.6, 31.3]]}}]}))
    (tmp_path / "vehicle.yaml").write_text(
        "domain: vehicle\nversion: 1\nrules:\n"
        "  - {id: vehicle.x, kind: geofence, measurement: vehicle, zones: zones/bad.geojson}\n"
        "  - {id: vehicle.y, kind: geofence, measurement: vehicle, zones: zones/missing.geojson}\n"
        "  - {id: vehicle.z, kind: geofence, measurement: vehicle, zones: zones/bad.geojson, "
        "while_alerts: [tunnel.none], zone_label: tunnel}\n")
    with pytest.raises(ConfigError) as exc:
        load_catalog(tmp_path)
    text = "\n".join(exc.value.problems)
    assert "rule 'vehicle.x'" in text and "features[0].properties.hours: '25:00-06:00'" in text
    assert "features[1].properties.corridor_m" in text
    assert "rule 'vehicle.y'" in text and "missing.geojson: cannot read" in text


def test_the_shipped_vehicle_rules_load() -> None:
    ids = {r.id for r in load_catalog()}
    assert {"vehicle.speeding", "vehicle.banned_zone", "vehicle.off_route", "vehicle.long_stop", "vehicle.anchoring",
            "vehicle.tanker_at_tunnel_hazard", "vehicle.continuous_driving", "vehicle.position_lost"} <= ids
