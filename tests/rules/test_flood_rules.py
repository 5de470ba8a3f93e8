"""Flooding and radiation in the rules engine: rain over a window from a gauge's counter
(`accumulation`), conditions on the nearest neighbour (`nearby`, `not_nearby`), the
places an alert affects, and the command an alert recommends."""

from __future__ import annotations

import pytest

from rules.engine import RulesEngine
from rules.inventory import InventoryDevice
from urbansense import codec
from urbansense.schema import AlertEvent, TelemetryBatch

from .helpers import T0, batch, rule


def run(engine: RulesEngine, batches: list[TelemetryBatch]) -> list[AlertEvent]:
    return [e for b in batches for e in engine.ingest([b])]


def dev(name: str, measurement: str, lat: float, lon: float, fields: tuple[str, ...], **labels: str) -> InventoryDevice:
    return InventoryDevice("pudong", "pd-gw-flood", name, measurement, lat, lon, labels, frozenset(fields))


RAIN_3H = rule(id="flood.rain_3h", kind="accumulation", measurement="flood", metric="rain_total_mm",
               window_s=10800, buckets=36, threshold=50, clear=40, critical_threshold=100)


def test_rain_over_a_window_is_what_the_counter_gained_through_gaps_and_resets() -> None:
    eng = RulesEngine([RAIN_3H], [dev("rg-1", "flood", 31.2, 121.5, ("rain_total_mm",))])
    counter = [1000.0, 1010.0, 1020.0, 1030.0]        # 30 mm in 30 min
    counter += [5.0, 15.0]                            # the logger reset: the step back adds nothing
    minutes = [0, 10, 20, 30, 40, 50]
    counter += [35.0]                                 # 20 mm while the gauge was not read: kept
    minutes += [90]
    ev = run(eng, [batch(T0 + m * 60_000, "flood", {"rg-1": {"rain_total_mm": c}}) for m, c in zip(minutes, counter,
                                                                                                 strict=True)])
    assert [(e.state, e.severity, e.value) for e in ev] == [("firing", "warning", pytest.approx(60.0))]
    # three hours later the window holds nothing
    ev = run(eng, [batch(T0 + (90 + 181) * 60_000, "flood", {"rg-1": {"rain_total_mm": 35.0}})])
    assert [e.state for e in ev] == ["resolved"]


def test_a_dose_rate_rise_is_a_suspected_source_only_without_rain_at_the_nearest_gauge() -> None:
    inventory = [
        dev("gm-1", "radiation", 31.200, 121.500, ("dose_ngyh",), background_ngyh="80"),
        # a low point is nearer than the gauge: its profile reads no rain, so it is not the neighbour
        dev("wl-1", "flood", 31.2001, 121.5001, ("depth_cm",)),
        dev("rg-near", "flood", 31.202, 121.502, ("rain_total_mm", "rain_rate_mmh")),
        dev("rg-far", "flood", 31.300, 121.600, ("rain_total_mm", "rain_rate_mmh")),
    ]
    rules = [
        rule(id="flood.raining", kind="accumulation", measurement="flood", metric="rain_total_mm", window_s=10800,
             buckets=36, threshold=0.5, clear=0.3, publish=False),
        rule(id="radiation.above_background", measurement="radiation", metric="dose_ngyh",
             offset_from="background_ngyh", op="above", threshold=25, clear=12, publish=False),
        rule(id="radiation.source_suspected", kind="composite", measurement="radiation",
             all_of=["radiation.above_background"], within_s=30, not_nearby=["flood.raining"], nearby_within_s=300,
             message="{device} at {value:.0f} nGy/h, no rain at {near_raining}"),
    ]
    eng = RulesEngine(rules, inventory)

    def minute(m: int, dose: float, near_mm: float, far_mm: float) -> list[AlertEvent]:
        t = T0 + m * 60_000
        return run(eng, [batch(t, "flood", {"rg-near": {"rain_total_mm": near_mm}, "rg-far": {"rain_total_mm": far_mm},
                                            "wl-1": {"depth_cm": 0.0}}),
                         batch(t, "radiation", {"gm-1": {"dose_ngyh": dose}})])

    # rain at the nearest gauge (none far away): the dose rises by 40 %, no source
    events = [e for m in range(30) for e in minute(m, 80 + (32 if m >= 10 else 0), 100 + m * 0.2, 50.0)]
    assert events == []
    # dry at the nearest gauge for three hours (it is raining far away): the same rise is a suspect
    events = [e for m in range(200, 215) for e in minute(m, 112 if m >= 205 else 80, 106.0, 50 + m * 0.2)]
    assert [(e.state, e.device) for e in events] == [("firing", "gm-1")]
    assert "no rain at rg-near" in events[0].message
    assert events[0].contributors is None  # a neighbour that must not agree is no contributor


def test_a_pump_trip_alert_names_the_streets_that_drain_to_the_station_and_recommends_a_command() -> None:
    inventory = [
        dev("ps-1", "flood", 31.20, 121.50, ("sump_level_m", "pump_faults", "pump3_run")),
        dev("wl-1", "flood", 31.21, 121.50, ("depth_cm",), pump_station="ps-1", place="Pudong Ave underpass"),
        dev("wl-2", "flood", 31.22, 121.50, ("depth_cm",), pump_station="ps-1"),
        dev("wl-3", "flood", 31.23, 121.50, ("depth_cm",), pump_station="ps-9"),
    ]
    rules = [
        rule(id="flood.pump_tripped", measurement="flood", metric="pump_faults", op="above", threshold=0.5),
        rule(id="flood.pump_trip_in_storm", kind="composite", measurement="flood", all_of=["flood.pump_tripped"],
             affects_label="pump_station", message="trip at {device}: {affected}"),
        rule(id="flood.sump_full", measurement="flood", metric="sump_level_m", op="above", threshold=1.5,
             recommend={"field": "pump3_run", "value": True}),
    ]
    eng = RulesEngine(rules, inventory)
    ev = run(eng, [batch(T0, "flood", {"ps-1": {"pump_faults": 1, "sump_level_m": 1.8}}, gw="pd-gw-flood")])
    by_rule = {e.rule: e for e in ev}
    assert by_rule["flood.pump_trip_in_storm"].message == "trip at ps-1: Pudong Ave underpass (wl-1), wl-2"
    assert by_rule["flood.pump_tripped"].command is None
    cmd = by_rule["flood.sump_full"].command
    assert cmd == {"topic": "city/pudong/pd-gw-flood/cmd", "dev": "ps-1", "field": "pump3_run", "value": True}
    # the command travels with the alert on the wire, and a malformed one is refused
    assert codec.decode_alert(codec.encode_alert(by_rule["flood.sump_full"])).command == cmd
    wire = by_rule["flood.sump_full"].to_wire()
    wire["command"] = {"topic": "city/alerts/x", "dev": "ps-1", "field": "pump3_run", "value": True}
    with pytest.raises(codec.PayloadError, match=r"command\.topic"):
        codec.decode_alert(codec.dumps(wire))


def test_a_compound_alert_names_the_neighbour_that_agreed() -> None:
    inventory = [dev("wl-1", "flood", 31.200, 121.500, ("depth_cm",)),
                 dev("rg-1", "flood", 31.201, 121.501, ("rain_rate_mmh",)),
                 dev("rg-2", "flood", 31.300, 121.600, ("rain_rate_mmh",))]
    rules = [
        rule(id="flood.deep", measurement="flood", metric="depth_cm", op="above", threshold=20, publish=False),
        rule(id="flood.rain_heavy", measurement="flood", metric="rain_rate_mmh", op="above", threshold=30,
             publish=False),
        rule(id="flood.ponding_in_rain", kind="composite", measurement="flood", all_of=["flood.deep"],
             within_s=60, nearby=["flood.rain_heavy"], nearby_within_s=300),
    ]
    eng = RulesEngine(rules, inventory)
    ev = run(eng, [batch(T0, "flood", {"rg-1": {"rain_rate_mmh": 45.0}, "rg-2": {"rain_rate_mmh": 0.0}}),
                   batch(T0 + 60_000, "flood", {"wl-1": {"depth_cm": 25.0}})])
    assert [(e.rule, e.state, e.contributors) for e in ev] == [("flood.ponding_in_rain", "firing", ["wl-1", "rg-1"])]
