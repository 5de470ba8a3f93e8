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


# ---------------------------------------------------------------------------- plume
TANK_FARM = (31.3452, 121.5758)


def _plume_engine(**more: Any) -> RulesEngine:
    leak = rule(id="chemical.flammable_alarm", kind="threshold", measurement="chemical", metric="lel_pct",
                op="above", threshold=25)
    plume = rule(id="air.plume_approaching", kind="plume", measurement="air", sources=["chemical.flammable_alarm"],
                 release_per_unit=2, assume_at_least=25, warn_at=450, horizon_s=3600, places="zones/places.geojson",
                 message="Plume of the leak at {source} expected at {device} in about {eta_min:.0f} min; "
                         "places downwind: {places}", **more)
    plume.folder = registry.families()["air"].folder  # type: ignore[union-attr]
    import math

    from urbansense.dispersion import EARTH_M_PER_DEG

    def station(name: str, bearing: float, dist: float) -> InventoryDevice:
        b = math.radians(bearing)
        lat = TANK_FARM[0] + dist * math.cos(b) / EARTH_M_PER_DEG
        lon = TANK_FARM[1] + dist * math.sin(b) / (EARTH_M_PER_DEG * math.cos(math.radians(TANK_FARM[0])))
        return InventoryDevice("pudong", "pd-gw-air-north", name, "air", lat, lon, {}, frozenset())

    inventory = [InventoryDevice("pudong", "pd-gw-chem", "cf-0101", "chemical", *TANK_FARM,
                                 {"site": "gaoqiao-tank-farm"}, frozenset({"lel_pct"})),
                 station("aq-down", 232, 2600), station("aq-side", 270, 2600), station("aq-up", 52, 2600)]
    return RulesEngine([leak, plume], inventory)


def _air(t: int, from_deg: float, speed: float = 2.5) -> TelemetryBatch:
    return TelemetryBatch(gw="pd-gw-air-north", district="pudong", seq=0, sent=t, samples=[
        Sample(dev=d, m="air", t=t, f={"wind_speed_ms": speed, "wind_dir_deg": from_deg})
        for d in ("aq-down", "aq-side", "aq-up")])


def _lel(t: int, lel: float) -> TelemetryBatch:
    return TelemetryBatch(gw="pd-gw-chem", district="pudong", seq=0, sent=t,
                          samples=[Sample(dev="cf-0101", m="chemical", t=t, f={"lel_pct": lel})])


def test_a_leak_s_plume_warns_the_stations_downwind_with_the_time_and_the_places() -> None:
    eng = _plume_engine()
    # a breeze from the north-east (52 deg) blows toward aq-down (232 deg from the site)
    assert run(eng, [_air(DAY, 52.0), _lel(DAY, 3.0), _air(DAY + 10_000, 52.0)]) == []  # no leak: nothing
    out = [e for e in run(eng, [_lel(DAY + 20_000, 30.0), _air(DAY + 30_000, 52.0)]) if e.domain == "air"]
    assert [(e.rule, e.device) for e in out] == [("air.plume_approaching", "aq-down")]
    warning = out[0]
    # 2.6 km at 2.5 m/s: the front takes 17 min, less the 10 s since the alarm
    assert warning.forecast is not None and 16 * 60 < warning.forecast.eta_s < 18 * 60
    assert "cf-0101 (gaoqiao-tank-farm)" in warning.message and "gaoqiao town (~" in warning.message
    # the wind veering to the east: the plume now goes west, to aq-side; aq-down clears
    batches = [b for k in range(1, 90) for b in (_lel(DAY + 30_000 + k * 10_000, 30.0),
                                                 _air(DAY + 30_000 + k * 10_000, 90.0))]
    later = [e for e in run(eng, batches) if e.domain == "air"]
    assert ("aq-side", "firing") in [(e.device, e.state) for e in later]
    assert ("aq-down", "resolved") in [(e.device, e.state) for e in later]
    assert all(e.device != "aq-up" for e in out + later)  # upwind: never


def test_no_plume_is_predicted_in_a_calm_or_once_the_leak_has_stopped() -> None:
    eng = _plume_engine(within_s=300)
    calm = run(eng, [_lel(DAY, 30.0), _air(DAY + 10_000, 52.0, speed=0.2)])
    assert [e.rule for e in calm] == ["chemical.flammable_alarm"]  # calm: no direction, no plume
    # the breeze picks up (the rule takes a ten-minute mean wind)
    out = [e for e in run(eng, [b for k in range(2, 40) for b in (_lel(DAY + k * 10_000, 30.0),
                                                                   _air(DAY + k * 10_000, 52.0))])
           if e.domain == "air"]
    assert [e.device for e in out] == ["aq-down"]
    quiet = [b for k in range(40, 80) for b in (_lel(DAY + k * 10_000, 1.0), _air(DAY + k * 10_000, 52.0))]
    assert [(e.device, e.state) for e in run(eng, quiet) if e.domain == "air"] == [("aq-down", "resolved")]
