"""The UrbanSense dashboards: city overview, one per domain, air quality, system health.

Conventions every panel follows (the check and the tests rely on them):

- one data source, ``urbansense-influxdb`` (InfluxQL, database ``city``);
- template variables ``$district`` and ``$device`` (system health: ``$district`` and
  ``$gateway``), used as regexes ``"district" =~ /^$district$/`` so "All" is ``.*``;
- numeric fields are aggregated with mean/min/max; boolean and enum fields (lamp_on,
  running, direction, ...) only with last()/count(), which InfluxDB allows for them;
- the "last 30 days" panels read the 1 h roll-up (``rollup_1h``, see ROLLUP_*), with a
  fixed ``timeFrom`` and a 1 h min interval, so a long range never scans raw points.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

from dashboards.builder.inventory import GAZETTEER_PATH, GEOJSON_PATH
from dashboards.builder.panels import (
    Json,
    Panel,
    Steps,
    bargauge,
    dashboard,
    influxql,
    query_variable,
    row,
    stat,
    state_timeline,
    table,
    timeseries,
    value_map,
)
from urbansense import registry
from urbansense.paths import AQI_TABLE

#: The versioned AQI table the rules engine computes with; the air dashboard draws the
#: same breakpoints (one source of numbers).

# Roll-ups made by `urbansense ingest init` (continuous queries; see ingest/README.md).
ROLLUP_RP = "rollup_1h"
ROLLUP_SUFFIX = "_1h"
ROLLUP_WINDOW = "30d"
ROLLUP_INTERVAL = "1h"


def rollup_source(measurement: str) -> str:
    return f'"{ROLLUP_RP}"."{measurement}{ROLLUP_SUFFIX}"'


def rollup_field(agg: str, field: str) -> str:
    """Field name inside the roll-up: mean_pressure_mpa, min_..., max_..."""
    return f"{agg}_{field}"


DEVICE_FILTER = '"district" =~ /^$district$/ AND "device" =~ /^$device$/'
DISTRICT_FILTER = '"district" =~ /^$district$/'
GATEWAY_FILTER = '"district" =~ /^$district$/ AND "gateway" =~ /^$gateway$/'
#: An alert is active when its newest event is firing (or escalated), not pending/resolved.
ACTIVE = "\"state\" <> 'resolved' AND \"state\" <> 'pending'"

ONLINE_MAP = value_map({"true": ("ONLINE", "green"), "false": ("OFFLINE", "red")})
SEVERITY_MAP = value_map({"info": ("info", "blue"), "warning": ("warning", "orange"),
                          "critical": ("critical", "red")})
# AQI levels of HJ 633-2012: 0-50 excellent ... >300 severe.
AQI_STEPS: Steps = [("green", None), ("yellow", 51), ("orange", 101), ("red", 151),
                    ("purple", 201), ("dark-red", 301)]


def district_variable(measurement: str = "gateway_status") -> Json:
    return query_variable("district", "District",
                          f'SHOW TAG VALUES FROM "{measurement}" WITH KEY = "district"')


def device_variable(measurement: str) -> Json:
    return query_variable(
        "device", "Device",
        f'SHOW TAG VALUES FROM "{measurement}" WITH KEY = "device" WHERE "district" =~ /^$district$/')


def by_device(measurement: str, field: str, agg: str = "mean") -> str:
    return (f'SELECT {agg}("{field}") FROM "{measurement}" WHERE {DEVICE_FILTER} AND $timeFilter '
            f'GROUP BY time($__interval), "device" fill(null)')


def last_by_device(measurement: str, field: str) -> str:
    """For boolean/enum fields: the state in each interval, carried forward."""
    return (f'SELECT last("{field}") FROM "{measurement}" WHERE {DEVICE_FILTER} AND $timeFilter '
            f'GROUP BY time($__interval), "device" fill(previous)')


def metric_panel(measurement: str, field: str, title: str, unit: str | None, *,
                 agg: str = "mean", steps: Steps | None = None, w: int = 12,
                 description: str = "") -> Panel:
    return timeseries(title, [influxql(by_device(measurement, field, agg), alias="$tag_device")],
                      unit=unit, steps=steps, w=w, threshold_style="line+area" if steps else "off",
                      description=description)


def long_range_panel(measurement: str, field: str, title: str, unit: str | None,
                     steps: Steps | None = None) -> Panel:
    """min / mean / max over the selected devices, from the 1 h roll-up, last 30 days."""
    src = rollup_source(measurement)
    q = (f'SELECT min("{rollup_field("min", field)}") AS "min", mean("{rollup_field("mean", field)}") '
         f'AS "mean", max("{rollup_field("max", field)}") AS "max" FROM {src} '
         f'WHERE {DEVICE_FILTER} AND $timeFilter GROUP BY time($__interval) fill(null)')
    return timeseries(f"{title} - last {ROLLUP_WINDOW} (1 h roll-up)", [influxql(q)], unit=unit,
                      steps=steps, threshold_style="line" if steps else "off",
                      time_from=ROLLUP_WINDOW, interval=ROLLUP_INTERVAL,
                      description=f"Reads {src}: hourly min/mean/max written by the ingester's "
                                  "continuous queries, so 30 days cost 720 points per series.")


def count_active(measurement: str, field: str, condition: str, filt: str = DEVICE_FILTER,
                 group: str = '"device"') -> str:
    """How many series' newest `field` satisfies `condition` (e.g. lamps on now)."""
    return (f'SELECT count("{field}") FROM (SELECT last("{field}") AS "{field}" FROM "{measurement}" '
            f'WHERE {filt} AND $timeFilter GROUP BY {group}) WHERE {condition}')


def device_errors_panel(measurement: str) -> Panel:
    q = (f'SELECT last("device_error") AS "error", count("device_error") AS "bad samples" '
         f'FROM "{measurement}" WHERE {DEVICE_FILTER} AND $timeFilter GROUP BY "gateway", "device"')
    return table("Devices not answering (bad samples)", [influxql(q, table=True)], w=24, h=6,
                 description="Samples the edge marked q=bad (timeout, exception): the ingester "
                             "stores them as a device_error string.")


def alerts_table(domain: str | None, title: str = "Active alerts") -> Panel:
    domain_filter = f"\"domain\" = '{domain}' AND " if domain else ""
    q = ('SELECT "state", "value", "threshold", "message" FROM (SELECT last("state") AS "state", '
         'last("value") AS "value", last("threshold") AS "threshold", last("message") AS "message" '
         f'FROM "alerts" WHERE {domain_filter}{DISTRICT_FILTER} AND $timeFilter '
         'GROUP BY "domain", "district", "rule", "device", "severity") '
         f'WHERE {ACTIVE} GROUP BY "domain", "district", "rule", "device", "severity"')
    return table(title, [influxql(q, table=True)], w=24, h=8,
                 description="Alerts whose newest event (from the rules engine) is firing, "
                             "one row per rule and device.")


# ---------------------------------------------------------------------------- overview

def geomap_panel(domain: str | None = None) -> Panel:
    """Every device of the inventory, and on top those with an active alert (of `domain`)."""
    domain_filter = f"\"domain\" = '{domain}' AND " if domain else ""
    alerts_q = ('SELECT "state", "message" FROM (SELECT last("state") AS "state", last("message") '
                f'AS "message" FROM "alerts" WHERE {domain_filter}{DISTRICT_FILTER} AND $timeFilter '
                'GROUP BY "device", "severity", "rule", "domain") '
                f'WHERE {ACTIVE} GROUP BY "device", "severity", "rule", "domain"')
    p = Panel({
        "type": "geomap", "title": "City map: devices by state",
        "description": "Base layer: every device in the inventory (green = no active alert), "
                       "generated from firmware-configs/gateways by `urbansense dashboards "
                       "inventory`. Top layer: devices with an active alert, coloured by "
                       "severity, placed by looking their device id up in the same inventory.",
        "datasource": {"type": "influxdb", "uid": "urbansense-influxdb"},
        "targets": [influxql(alerts_q, ref="alerts", table=True)],
        "fieldConfig": {"defaults": {"color": {"mode": "fixed", "fixedColor": "red"}},
                        "overrides": [{"matcher": {"id": "byName", "options": "severity"},
                                       "properties": [{"id": "mappings", "value": SEVERITY_MAP},
                                                      {"id": "color", "value": {"mode": "thresholds"}}]}]},
        "options": {
            "view": {"id": "fit", "allLayers": True, "padding": 10, "lat": 31.23, "lon": 121.47,
                     "zoom": 11},
            "controls": {"showZoom": True, "mouseWheelZoom": True, "showAttribution": True},
            "basemap": {"type": "default", "name": "Basemap"},
            "tooltip": {"mode": "details"},
            "layers": [
                {"type": "geojson", "name": "Devices (inventory)", "tooltip": True,
                 "config": {"src": GEOJSON_PATH, "rules": [],
                            "style": {"color": {"fixed": "green"}, "opacity": 0.7,
                                      "size": {"fixed": 5}}}},
                {"type": "markers", "name": "Active alerts", "tooltip": True,
                 "location": {"mode": "lookup", "lookup": "device", "gazetteer": GAZETTEER_PATH},
                 "filterData": {"id": "byRefId", "options": "alerts"},
                 "config": {"showLegend": True,
                            "style": {"color": {"field": "severity", "fixed": "red"},
                                      "size": {"fixed": 9},
                                      "symbol": {"mode": "fixed", "fixed": "img/icons/marker/circle.svg"},
                                      "opacity": 0.9}}},
            ],
        },
    }, w=14, h=16, targets=[])
    p.targets = p.model["targets"]
    return p


def overview() -> Json:
    panels = [
        geomap_panel(),
        stat("Alerts active", [influxql(
            f'SELECT count("state") FROM (SELECT last("state") AS "state" FROM "alerts" WHERE '
            f'{DISTRICT_FILTER} AND $timeFilter GROUP BY "rule", "device") WHERE {ACTIVE}')],
            steps=[("green", None), ("red", 1)], w=5, no_value="0"),
        stat("Gateways online", [influxql(count_active(
            "gateway_status", "online", '"online" = true', DISTRICT_FILTER, '"gateway"'))],
            w=5, no_value="0"),
        bargauge("Current AQI by station", [influxql(
            f'SELECT last("aqi") FROM "aqi" WHERE {DISTRICT_FILTER} AND $timeFilter GROUP BY "device"',
            alias="$tag_device")], steps=AQI_STEPS, w=10, h=12, min_value=0, max_value=500),
        alerts_table(None),
        table("Gateways", [influxql(
            'SELECT last("online") AS "online", last("devices_ok") AS "devices ok", '
            'last("devices_fail") AS "devices failing" FROM "gateway_status" '
            f'WHERE {DISTRICT_FILTER} AND $timeFilter GROUP BY "district", "gateway"', table=True)],
            mappings=ONLINE_MAP, w=24, h=8),
    ]
    return dashboard("urbansense-overview", "UrbanSense - City overview", panels,
                     variables=[district_variable()], tags=["overview"],
                     description="Where is something wrong right now: map, active alerts, AQI, "
                                 "gateways.", time_from="now-3h")


# ---------------------------------------------------------------------------- domains

def water() -> Json:
    m = "water"
    panels = [
        row("Now"),
        metric_panel(m, "pressure_mpa", "Pressure", "pressurempa",
                     steps=[("red", None), ("green", 0.2)],
                     description="Red band: below the 0.20 MPa minimum service pressure "
                                 "(rules/catalog/water.yaml)."),
        metric_panel(m, "flow_m3h", "Flow", "m3/h"),
        metric_panel(m, "turbidity_ntu", "Turbidity (GB 5749-2022: <= 1 NTU)", "NTU", w=8,
                     steps=[("green", None), ("red", 1)]),
        metric_panel(m, "chlorine_mgl", "Residual chlorine (0.05-2 mg/L)", "mg/L", w=8,
                     steps=[("red", None), ("green", 0.05), ("red", 2)]),
        metric_panel(m, "ph", "pH (6.5-8.5)", None, w=8,
                     steps=[("red", None), ("green", 6.5), ("red", 8.5)]),
        timeseries("Consumption per interval", [influxql(
            f'SELECT non_negative_difference(last("volume_total_m3")) FROM "{m}" WHERE {DEVICE_FILTER} '
            'AND $timeFilter GROUP BY time($__interval), "device" fill(null)', alias="$tag_device")],
            unit="m3", w=24, description="Difference of the totaliser between intervals."),
        alerts_table("water", "Active water alerts"),
        device_errors_panel(m),
        row("Long range"),
        long_range_panel(m, "pressure_mpa", "Pressure", "pressurempa", [("red", None), ("green", 0.2)]),
        long_range_panel(m, "flow_m3h", "Flow", "m3/h"),
    ]
    return dashboard("urbansense-water", "UrbanSense - Water supply", panels,
                     variables=[district_variable(m), device_variable(m)], tags=["water"])


def gas() -> Json:
    m = "gas"
    lel: Steps = [("green", None), ("orange", 20), ("red", 25), ("dark-red", 50)]
    panels = [
        row("Now"),
        metric_panel(m, "methane_lel_pct", "Methane (%LEL)", "percent", agg="max", steps=lel,
                     description="GB/T 50493-2019: first-level alarm <= 25 %LEL, second-level "
                                 "<= 50 %LEL; 20 %LEL is the utility-tunnel practice."),
        stat("Methane detectors at or above 20 %LEL", [influxql(count_active(
            m, "methane_lel_pct", '"methane_lel_pct" >= 20'))], steps=[("green", None), ("red", 1)],
            w=6, h=8, no_value="0"),
        stat("Stations with alarm", [influxql(count_active(
            m, "station_alarm", '"station_alarm" = true'))], steps=[("green", None), ("red", 1)],
            w=6, h=8, no_value="0"),
        metric_panel(m, "pressure_kpa", "Outlet pressure", "pressurekpa"),
        metric_panel(m, "inlet_pressure_kpa", "Inlet pressure", "pressurekpa"),
        metric_panel(m, "temperature_c", "Station temperature", "celsius", w=8),
        state_timeline("Valve open", [influxql(last_by_device(m, "valve_open"), alias="$tag_device")],
                       mappings=value_map({"true": ("open", "green"), "false": ("closed", "red")}), w=8),
        state_timeline("Detector faults", [influxql(last_by_device(m, "sensor_fault"),
                                                    alias="$tag_device")],
                       mappings=value_map({"true": ("fault", "red"), "false": ("ok", "green")}), w=8),
        alerts_table("gas", "Active gas alerts"),
        device_errors_panel(m),
        row("Long range"),
        long_range_panel(m, "methane_lel_pct", "Methane (%LEL)", "percent", lel),
        long_range_panel(m, "pressure_kpa", "Outlet pressure", "pressurekpa"),
    ]
    return dashboard("urbansense-gas", "UrbanSense - Gas distribution", panels,
                     variables=[district_variable(m), device_variable(m)], tags=["gas"])


def lighting() -> Json:
    m = "lighting"
    panels = [
        row("Now"),
        stat("Lamps on", [influxql(count_active(m, "lamp_on", '"lamp_on" = true'))], w=6, h=5,
             no_value="0"),
        stat("Lamps off", [influxql(count_active(m, "lamp_on", '"lamp_on" = false'))], w=6, h=5,
             no_value="0"),
        stat("Lamp faults", [influxql(count_active(m, "lamp_fault", '"lamp_fault" = true'))],
             steps=[("green", None), ("red", 1)], w=6, h=5, no_value="0"),
        stat("Circuit power now", [influxql(
            f'SELECT sum("power_w") FROM (SELECT last("power_w") AS "power_w" FROM "{m}" '
            f'WHERE {DEVICE_FILTER} AND $timeFilter GROUP BY "device")')], unit="watt", w=6, h=5),
        timeseries("Total power", [influxql(
            f'SELECT sum("power_w") FROM (SELECT mean("power_w") AS "power_w" FROM "{m}" '
            f'WHERE {DEVICE_FILTER} AND $timeFilter GROUP BY time($__interval), "device") '
            'WHERE $timeFilter GROUP BY time($__interval) fill(null)', alias="total")],
            unit="watt", description="Sum over lamps of each lamp's mean power; a sudden drop of a "
                                     "whole circuit at night is the cable-theft signature."),
        metric_panel(m, "voltage_v", "Supply voltage", "volt", steps=[("red", None), ("green", 198),
                                                                       ("red", 242)],
                     description="220 V +/-10 %."),
        metric_panel(m, "current_a", "Lamp current", "amp"),
        metric_panel(m, "dim_level_pct", "Dim level", "percent"),
        state_timeline("Lamp on/off", [influxql(last_by_device(m, "lamp_on"), alias="$tag_device")],
                       mappings=value_map({"true": ("on", "yellow"), "false": ("off", "dark-blue")}),
                       w=24, h=10),
        table("Burning hours", [influxql(
            f'SELECT last("burning_hours") AS "burning hours", last("lamp_fault") AS "fault" FROM "{m}" '
            f'WHERE {DEVICE_FILTER} AND $timeFilter GROUP BY "gateway", "device"', table=True)], w=24),
        alerts_table("lighting", "Active lighting alerts"),
        device_errors_panel(m),
        row("Long range"),
        long_range_panel(m, "power_w", "Lamp power", "watt"),
        long_range_panel(m, "voltage_v", "Supply voltage", "volt"),
    ]
    return dashboard("urbansense-lighting", "UrbanSense - Road lighting", panels,
                     variables=[district_variable(m), device_variable(m)], tags=["lighting"])


def elevators() -> Json:
    m = "elevator"
    panels = [
        row("Now"),
        stat("Trapped passengers", [influxql(count_active(m, "trapped_passenger",
                                                          '"trapped_passenger" = true'))],
             steps=[("green", None), ("red", 1)], w=8, h=5, no_value="0"),
        stat("Door open while moving", [influxql(count_active(m, "door_open_while_moving",
                                                              '"door_open_while_moving" = true'))],
             steps=[("green", None), ("red", 1)], w=8, h=5, no_value="0"),
        stat("Lifts with a fault code", [influxql(count_active(m, "fault_code", '"fault_code" > 0'))],
             steps=[("green", None), ("orange", 1)], w=8, h=5, no_value="0"),
        state_timeline("Running", [influxql(last_by_device(m, "running"), alias="$tag_device")],
                       mappings=value_map({"true": ("running", "green"), "false": ("stopped", "gray")})),
        state_timeline("Door open", [influxql(last_by_device(m, "door_open"), alias="$tag_device")],
                       mappings=value_map({"true": ("open", "orange"), "false": ("closed", "green")})),
        metric_panel(m, "floor", "Floor", None, agg="last"),
        metric_panel(m, "load_pct", "Load", "percent", steps=[("green", None), ("orange", 90),
                                                              ("red", 110)]),
        metric_panel(m, "speed_ms", "Speed", "velocityms", agg="max"),
        table("Lift state", [influxql(
            'SELECT last("running") AS "running", last("direction") AS "direction", last("floor") AS '
            '"floor", last("door_open") AS "door open", last("fault_code") AS "fault code", '
            'last("trapped_passenger") AS "trapped", last("outside_door_zone") AS "outside door zone" '
            f'FROM "{m}" WHERE {DEVICE_FILTER} AND $timeFilter GROUP BY "gateway", "device"', table=True)]),
        alerts_table("elevator", "Active elevator alerts"),
        device_errors_panel(m),
        row("Long range"),
        long_range_panel(m, "load_pct", "Load", "percent"),
        long_range_panel(m, "speed_ms", "Speed", "velocityms"),
    ]
    return dashboard("urbansense-elevators", "UrbanSense - Elevators", panels,
                     variables=[district_variable(m), device_variable(m)], tags=["elevator"])


def _aqi_rows(path: Path = AQI_TABLE) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


def pollutant_steps(breakpoints: list[float]) -> Steps:
    """Colour bands at a pollutant's concentration breakpoints (IAQI 50, 100, 150, ...)."""
    colours = ["green", "yellow", "orange", "red", "purple", "dark-red", "dark-red"]
    return [("green", None)] + [(colours[i + 1], float(bp))
                                for i, bp in enumerate(breakpoints[1:-1]) if i + 1 < len(colours)]


#: Which averaging period's breakpoints each panel draws: the 1 h rows where the standard
#: has them (they match what a duty officer watches), the 24 h rows for PM.
POLLUTANT_PANELS = (
    ("pm25", "24h", "pm25_ugm3", "PM2.5", "conµgm3"),
    ("pm10", "24h", "pm10_ugm3", "PM10", "conµgm3"),
    ("no2", "1h", "no2_ugm3", "NO2", "conµgm3"),
    ("so2", "1h", "so2_ugm3", "SO2", "conµgm3"),
    ("o3", "1h", "o3_ugm3", "O3", "conµgm3"),
    ("co", "1h", "co_mgm3", "CO", "conmgm3"),
)


def air_quality() -> Json:
    m = "air"
    table_doc = _aqi_rows()
    breakpoints = {(r["pollutant"], r["period"]): r["breakpoints"] for r in table_doc["rows"]}
    standard = table_doc.get("standard", "HJ 633-2012")
    aqi_filter = DEVICE_FILTER
    panels: list[Panel] = [
        row("AQI"),
        timeseries("AQI by station", [influxql(
            f'SELECT max("aqi") FROM "aqi" WHERE {aqi_filter} AND $timeFilter '
            'GROUP BY time($__interval), "device" fill(null)', alias="$tag_device")],
            steps=AQI_STEPS, threshold_style="area", w=16, min_value=0,
            description=f"China AQI ({standard}), computed by the rules engine into `aqi`. Bands: "
                        "0-50 excellent, 51-100 good, 101-150 light, 151-200 moderate, "
                        "201-300 heavy, >300 severe."),
        bargauge("Current AQI", [influxql(
            f'SELECT last("aqi") FROM "aqi" WHERE {aqi_filter} AND $timeFilter GROUP BY "device"',
            alias="$tag_device")], steps=AQI_STEPS, w=8, min_value=0, max_value=500),
        table("Level and primary pollutant", [influxql(
            'SELECT last("aqi") AS "aqi", last("level") AS "level", last("primary") AS "primary" '
            f'FROM "aqi" WHERE {aqi_filter} AND $timeFilter GROUP BY "district", "device"',
            table=True)], w=24, h=6),
        row("Pollutants against their breakpoints"),
    ]
    for pollutant, period, field, label, unit in POLLUTANT_PANELS:
        bps = breakpoints[(pollutant, period)]
        panels.append(metric_panel(
            m, field, f"{label} ({period} breakpoints)", unit, steps=pollutant_steps(bps), w=8,
            description=f"{standard} {label} {period} breakpoints: {', '.join(str(b) for b in bps)}."))
    panels += [
        metric_panel(m, "temperature_c", "Temperature", "celsius"),
        metric_panel(m, "humidity_pct", "Humidity", "humidity"),
        alerts_table("air", "Active air-quality alerts"),
        row("Long range"),
        long_range_panel(m, "pm25_ugm3", "PM2.5", "conµgm3",
                         pollutant_steps(breakpoints[("pm25", "24h")])),
        long_range_panel(m, "no2_ugm3", "NO2", "conµgm3"),
    ]
    return dashboard("urbansense-air", "UrbanSense - Air quality", panels,
                     variables=[district_variable(m), device_variable(m)], tags=["air"])


def system_health() -> Json:
    gw = "gateway_status"

    def svc(measurement: str, field: str, agg: str = "mean") -> Json:
        return influxql(f'SELECT {agg}("{field}") FROM "{measurement}" WHERE $timeFilter '
                        'GROUP BY time($__interval), "instance" fill(null)', alias="$tag_instance")

    def counter(measurement: str, field: str, *, ref: str = "A", alias: str = "$tag_instance") -> Json:
        """The ingester's counters are cumulative since its start: plot the increase per
        interval (a restart's reset to 0 is dropped, not drawn as a negative spike)."""
        return influxql(f'SELECT non_negative_difference(max("{field}")) FROM "{measurement}" '
                        'WHERE $timeFilter GROUP BY time($__interval), "instance" fill(null)',
                        ref=ref, alias=alias)

    def per_gateway(field: str, agg: str = "max") -> Json:
        return influxql(f'SELECT {agg}("{field}") FROM "{gw}" WHERE {GATEWAY_FILTER} AND $timeFilter '
                        'GROUP BY time($__interval), "gateway" fill(null)', alias="$tag_gateway")

    panels = [
        row("Ingest"),
        timeseries("Ingest rate", [svc("urbansense_ingest", "points_per_s")], unit="pps", w=8),
        timeseries("Batch latency (receive to written)", [svc("urbansense_ingest", "batch_latency_ms")],
                   unit="ms", w=8),
        timeseries("Ingest queue depth", [svc("urbansense_ingest", "queue_depth", "max")], w=8),
        timeseries("Dead letters per interval", [counter("urbansense_ingest", "deadletters")], w=8,
                   description="Batches or samples the ingester could not store (bad payload, "
                               "refused samples); they are on city/ingest/deadletter."),
        timeseries("Sequence gaps and repeats per interval", [
            counter("urbansense_ingest", "seq_gaps", alias="gaps $tag_instance"),
            counter("urbansense_ingest", "seq_repeats", ref="B", alias="repeats $tag_instance")], w=8,
                   description="Gaps: batches lost between edge and ingester. Repeats: re-sent "
                               "batches (store-and-forward), harmless."),
        timeseries("Write retries per interval", [counter("urbansense_ingest", "retries")], w=8),
        timeseries("Telemetry by decode path per interval", [
            counter("urbansense_ingest", "decoded_c", alias="C $tag_instance"),
            counter("urbansense_ingest", "decoded_python", ref="B", alias="Python fast $tag_instance"),
            counter("urbansense_ingest", "decoded_full", ref="C", alias="full $tag_instance")], w=24,
                   description="Telemetry messages by the ingester's decode path: C (the accelerator), "
                               "the Python fast path, or the full path (bad, uncertain or urgent samples, "
                               "unusual JSON). Ordinary traffic on the full path means the accelerator is "
                               "not built or the gateways send something it leaves alone; each costs "
                               "about 4x the CPU of the C path (ingest/README.md, Performance)."),
        row("Rules engine"),
        timeseries("Rules throughput", [svc("urbansense_rules", "samples_per_s")], unit="short", w=8),
        timeseries("Alerts active", [svc("urbansense_rules", "alerts_active", "max")], w=8),
        timeseries("Evaluation latency", [svc("urbansense_rules", "eval_latency_ms")], unit="ms", w=8),
        row("Gateways"),
        timeseries("Edge log depth (store-and-forward backlog)", [per_gateway("wal_depth")], w=8),
        timeseries("Uplink reconnects per interval", [influxql(
            f'SELECT non_negative_difference(max("reconnects")) FROM "{gw}" WHERE {GATEWAY_FILTER} '
            'AND $timeFilter GROUP BY time($__interval), "gateway" fill(null)', alias="$tag_gateway")],
            w=8, description="The edge agent's reconnect count is cumulative since its start."),
        timeseries("Devices failing", [per_gateway("devices_fail")], w=8),
        state_timeline("Gateway online", [influxql(
            f'SELECT last("online") FROM "{gw}" WHERE {GATEWAY_FILTER} AND $timeFilter '
            'GROUP BY time($__interval), "gateway" fill(previous)', alias="$tag_gateway")],
            mappings=ONLINE_MAP, w=24),
        alerts_table("system", "Active system alerts"),
    ]
    gateway_var = query_variable(
        "gateway", "Gateway",
        f'SHOW TAG VALUES FROM "{gw}" WITH KEY = "gateway" WHERE "district" =~ /^$district$/')
    return dashboard("urbansense-system", "UrbanSense - System health", panels,
                     variables=[district_variable(), gateway_var], tags=["system"],
                     time_from="now-1h")


def family_dashboards() -> dict[str, Json]:
    """One per family of the domain registry: its hand-written builder, else generated."""
    from dashboards.builder.generated import family_dashboard

    out: dict[str, Json] = {}
    for fam in registry.families().values():
        hook = fam.dashboard.builder
        if hook is None:
            out[fam.dashboard_file] = family_dashboard(fam)
            continue
        module, _, name = hook.partition(":")
        out[fam.dashboard_file] = getattr(importlib.import_module(module), name)()
    return out


def all_dashboards() -> dict[str, Json]:
    """File name (without .json) -> dashboard model."""
    return {"overview": overview(), **family_dashboards(), "system-health": system_health()}
