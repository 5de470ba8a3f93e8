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

from dataclasses import dataclass
from functools import cache
from pathlib import Path

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
    thresholds,
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


def alerts_table(domain: str | None, title: str = "Active alerts", *, by_device: bool = False) -> Panel:
    domain_filter = f"\"domain\" = '{domain}' AND " if domain else ""
    # a family's table follows its device variable (the overview and system have none)
    where = f"{domain_filter}{DEVICE_FILTER if by_device else DISTRICT_FILTER}"
    q = ('SELECT "state", "value", "threshold", "message" FROM (SELECT last("state") AS "state", '
         'last("value") AS "value", last("threshold") AS "threshold", last("message") AS "message" '
         f'FROM "alerts" WHERE {where} AND $timeFilter '
         'GROUP BY "domain", "district", "rule", "device", "severity") '
         f'WHERE {ACTIVE} GROUP BY "domain", "district", "rule", "device", "severity"')
    return table(title, [influxql(q, table=True)], w=24, h=8,
                 description="Alerts whose newest event (from the rules engine) is firing, "
                             "one row per rule and device.")


# ---------------------------------------------------------------------------- overview

def tracks_panel(measurement: str, title: str, *, w: int = 24, h: int = 14) -> Panel:
    """Moving devices on a map: each one's track over the dashboard's time range (its
    `lat` and `lon` fields, a point a minute) and its latest position, with its speed."""
    track_q = (f'SELECT last("lat") AS "lat", last("lon") AS "lon" FROM "{measurement}" WHERE '
               f'{DEVICE_FILTER} AND "gnss_fix" = true AND $timeFilter GROUP BY time(1m), "device" fill(none)')
    last_q = (f'SELECT last("lat") AS "lat", last("lon") AS "lon", last("speed_kmh") AS "speed_kmh" '
              f'FROM "{measurement}" WHERE {DEVICE_FILTER} AND $timeFilter GROUP BY "device"')
    coords = {"mode": "coords", "latitude": "lat", "longitude": "lon"}
    return Panel({
        "type": "geomap", "title": title,
        "description": "Tracks (a point a minute, from reports with a satellite fix) and latest positions, "
                       "coloured by speed. Positions are fields of the measurement, not tags: one series "
                       "per vehicle however far it drives.",
        "datasource": {"type": "influxdb", "uid": "urbansense-influxdb"},
        "targets": [influxql(track_q, ref="tracks", table=True), influxql(last_q, ref="latest", table=True)],
        "fieldConfig": {"defaults": {"unit": "velocitykmh", "color": {"mode": "continuous-GrYlRd"},
                                     "min": 0, "max": 90}, "overrides": []},
        "options": {
            "view": {"id": "fit", "allLayers": True, "padding": 10, "lat": 31.23, "lon": 121.53, "zoom": 12},
            "controls": {"showZoom": True, "mouseWheelZoom": True, "showAttribution": True},
            "basemap": {"type": "default", "name": "Basemap"},
            "tooltip": {"mode": "details"},
            "layers": [
                {"type": "route", "name": "Tracks", "tooltip": True, "location": coords,
                 "filterData": {"id": "byRefId", "options": "tracks"},
                 "config": {"style": {"color": {"fixed": "blue"}, "opacity": 0.6, "lineWidth": 2},
                            "arrow": 0}},
                {"type": "markers", "name": "Latest positions", "tooltip": True, "location": coords,
                 "filterData": {"id": "byRefId", "options": "latest"},
                 "config": {"showLegend": True,
                            "style": {"color": {"field": "speed_kmh", "fixed": "green"}, "size": {"fixed": 7},
                                      "symbol": {"mode": "fixed", "fixed": "img/icons/marker/circle.svg"},
                                      "opacity": 0.9}}},
            ],
        },
    }, w=w, h=h)


def geomap_panel(domain: str | None = None, *, by_device: bool = False) -> Panel:
    """Every device of the inventory, and on top those with an active alert (of `domain`)."""
    domain_filter = f"\"domain\" = '{domain}' AND " if domain else ""
    # a family's map follows its device variable, as its alerts table does
    where = f"{domain_filter}{DEVICE_FILTER if by_device else DISTRICT_FILTER}"
    alerts_q = ('SELECT "state", "message" FROM (SELECT last("state") AS "state", last("message") '
                f'AS "message" FROM "alerts" WHERE {where} AND $timeFilter '
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


# ---------------------------------------------------------------------------- families
# Each family's dashboard is drawn from its data (dashboards/builder/generated.py); the
# helpers below are the panels that belong to no one family.

@dataclass(frozen=True)
class AqiTableDoc:
    """The AQI table's breakpoints, as the dashboards draw them."""

    standard: str
    rows: dict[tuple[str, str], list[float]]

    def breakpoints(self, pollutant: str, period: str) -> tuple[str, list[float]]:
        return self.standard, self.rows[(pollutant, period)]


@cache
def aqi_table(path: Path = AQI_TABLE) -> AqiTableDoc:
    """The AQI table, read once (every pollutant panel and the AQI panels draw from it)."""
    doc = dict(yaml.safe_load(path.read_text()))
    return AqiTableDoc(doc.get("standard", "HJ 633-2012"),
                       {(r["pollutant"], r["period"]): r["breakpoints"] for r in doc["rows"]})


def pollutant_steps(breakpoints: list[float]) -> Steps:
    """Colour bands at a pollutant's concentration breakpoints (IAQI 50, 100, 150, ...)."""
    colours = ["green", "yellow", "orange", "red", "purple", "dark-red", "dark-red"]
    return [("green", None)] + [(colours[i + 1], float(bp))
                                for i, bp in enumerate(breakpoints[1:-1]) if i + 1 < len(colours)]


def aqi_panels() -> list[Panel]:
    """The index the rules engine's `aqi` rule writes into the `aqi` measurement."""
    standard = aqi_table().standard
    return [
        row("AQI"),
        timeseries("AQI by station", [influxql(
            f'SELECT max("aqi") FROM "aqi" WHERE {DEVICE_FILTER} AND $timeFilter '
            'GROUP BY time($__interval), "device" fill(null)', alias="$tag_device")],
            steps=AQI_STEPS, threshold_style="area", w=16, min_value=0,
            description=f"China AQI ({standard}), computed by the rules engine into `aqi`. Bands: "
                        "0-50 excellent, 51-100 good, 101-150 light, 151-200 moderate, "
                        "201-300 heavy, >300 severe."),
        bargauge("Current AQI", [influxql(
            f'SELECT last("aqi") FROM "aqi" WHERE {DEVICE_FILTER} AND $timeFilter GROUP BY "device"',
            alias="$tag_device")], steps=AQI_STEPS, w=8, min_value=0, max_value=500),
        table("Level and primary pollutant", [influxql(
            'SELECT last("aqi") AS "aqi", last("level") AS "level", last("primary") AS "primary" '
            f'FROM "aqi" WHERE {DEVICE_FILTER} AND $timeFilter GROUP BY "district", "device"',
            table=True)], w=24, h=6),
    ]


#: GB 3838-2002 classes as the `water_class` rule writes them (6: worse than V).
WATER_CLASS_STEPS: Steps = [("blue", None), ("green", 2), ("yellow", 3), ("orange", 4), ("red", 5),
                            ("dark-red", 6)]
WATER_CLASS_NAMES = value_map({str(i): (name, colour) for i, (name, colour) in enumerate(
    [("I", "blue"), ("II", "green"), ("III", "yellow"), ("IV", "orange"), ("V", "red"),
     ("worse than V", "dark-red")], start=1)})


def water_class_panels() -> list[Panel]:
    """The class the rules engine's `water_class` rule writes into `water_class`."""
    return [
        row("Water quality class (GB 3838-2002)"),
        state_timeline("Class by station", [influxql(
            f'SELECT last("class") FROM "water_class" WHERE {DEVICE_FILTER} AND $timeFilter '
            'GROUP BY time($__interval), "device" fill(null)', alias="$tag_device")],
            mappings=WATER_CLASS_NAMES, w=16,
            description="Surface-water class per station from the last hour's means, worked out by the "
                        "rules engine (rules/tables/surface-water-gb3838-2002.yaml): the worst class over "
                        "dissolved oxygen, permanganate index, ammonia nitrogen, total phosphorus and pH."),
        bargauge("Current class", [influxql(
            f'SELECT last("class") FROM "water_class" WHERE {DEVICE_FILTER} AND $timeFilter GROUP BY "device"',
            alias="$tag_device")], steps=WATER_CLASS_STEPS, w=8, min_value=1, max_value=6,
            mappings=WATER_CLASS_NAMES),
        table("Class and the parameters that set it", [influxql(
            'SELECT last("class_name") AS "class", last("deciding") AS "set by", last("class_do") AS "DO", '
            'last("class_codmn") AS "CODMn", last("class_nh3n") AS "NH3-N", last("class_tp") AS "TP", '
            f'last("class_ph") AS "pH" FROM "water_class" WHERE {DEVICE_FILTER} AND $timeFilter '
            'GROUP BY "district", "device"', table=True)], w=24, h=6),
    ]


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


#: Where a gateway's row in the fleet view leads: the system health dashboard, on that gateway.
GATEWAY_DETAIL = ("/d/urbansense-system?var-district=${__data.fields.district}"
                  "&var-gateway=${__data.fields.gateway}&${__url_time_range}")


def fleet() -> Json:
    """Every gateway in one table (agent version, config, clock, log, devices), from its
    latest status as the ingester stored it, each row linked to the gateway's detail."""
    gw = "gateway_status"
    latest = influxql(
        'SELECT last("online") AS "online", "agent_version" AS "agent", "config_version" AS "config version", '
        '"config_hash" AS "config hash", "clock_offset_s" AS "clock offset (s)", "wal_depth" AS "log depth", '
        '"wal_dropped" AS "dropped (ever)", "devices_fail" AS "devices failing", "devices_ok" AS "devices ok" '
        f'FROM "{gw}" WHERE {GATEWAY_FILTER} AND $timeFilter GROUP BY "district", "gateway"', table=True)

    def per_gateway(field: str, agg: str = "last") -> Json:
        return influxql(f'SELECT {agg}("{field}") FROM "{gw}" WHERE {GATEWAY_FILTER} AND $timeFilter '
                        'GROUP BY time($__interval), "gateway" fill(null)', alias="$tag_gateway")

    gateways = table("Gateways", [latest], w=24, h=10,
                     description="One row per gateway from its latest status message (Time: last seen). "
                                 "Config hash: the first 12 hex digits of the SHA-256 of the config it runs "
                                 "(a push changes it; edge push-config). Clock offset: its clock minus the "
                                 "ingester's, measured on its batches; beyond 30 s its readings are stored "
                                 "uncertain. Log depth: samples waiting for the uplink. Click a gateway for "
                                 "its detail.")
    gateways.model["fieldConfig"]["overrides"] = [{
        "matcher": {"id": "byName", "options": "gateway"},
        "properties": [{"id": "links", "value": [{"title": "Gateway detail", "url": GATEWAY_DETAIL}]}]}, {
        "matcher": {"id": "byName", "options": "clock offset (s)"},
        "properties": [{"id": "thresholds", "value": thresholds([("green", None), ("red", 30)])},
                       {"id": "custom.cellOptions", "value": {"type": "color-text"}}]}]
    panels = [
        row("Fleet"),
        gateways,
        timeseries("Clock offset", [per_gateway("clock_offset_s")], unit="s", w=12,
                   steps=[("green", None), ("red", 30)], threshold_style="line",
                   description="Each gateway's clock minus the ingester's (positive: ahead). The "
                               "system.gateway_clock rule alerts beyond 30 s."),
        timeseries("Edge log depth (samples waiting)", [per_gateway("wal_depth", "max")], w=12),
        timeseries("Devices failing", [per_gateway("devices_fail", "max")], w=12),
        state_timeline("Config version", [influxql(
            f'SELECT last("config_version") FROM "{gw}" WHERE {GATEWAY_FILTER} AND $timeFilter '
            'GROUP BY time($__interval), "gateway" fill(previous)', alias="$tag_gateway")],
            mappings=[], w=12, description="The config each gateway ran: a push shows as a change, a "
                                            "rollback as a change back."),
        alerts_table("system", "Active gateway alerts (offline, clock)"),
    ]
    gateway_var = query_variable(
        "gateway", "Gateway",
        f'SHOW TAG VALUES FROM "{gw}" WITH KEY = "gateway" WHERE "district" =~ /^$district$/')
    return dashboard("urbansense-fleet", "UrbanSense - Gateway fleet", panels,
                     variables=[district_variable(), gateway_var], tags=["system", "fleet"], time_from="now-1h")


def family_dashboards() -> dict[str, Json]:
    """One per family of the domain registry, drawn from its data."""
    from dashboards.builder.generated import family_dashboard

    return {fam.dashboard_file: family_dashboard(fam) for fam in registry.families().values()}


def all_dashboards() -> dict[str, Json]:
    """File name (without .json) -> dashboard model."""
    return {"overview": overview(), **family_dashboards(), "system-health": system_health(), "fleet": fleet()}
