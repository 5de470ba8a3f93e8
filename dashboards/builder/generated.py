"""A family's dashboard, generated from its fields in the domain registry.

For a family without a hand-written builder (``dashboard.builder`` in its family.yaml):
a time series per numeric field (by device, in the field's unit), a state timeline per
boolean field, the latest value of every field per device, the family's active alerts
on a map and in a table, devices not answering, and the "Long range" row from the 1 h
roll-up for the fields the family names. Its queries are checked like every other
panel's (tests/dashboards/).
"""

from __future__ import annotations

from dashboards.builder.catalog import (
    DEVICE_FILTER,
    alerts_table,
    by_device,
    device_errors_panel,
    device_variable,
    district_variable,
    geomap_panel,
    last_by_device,
    long_range_panel,
)
from dashboards.builder.panels import (
    Json,
    Panel,
    dashboard,
    influxql,
    row,
    state_timeline,
    table,
    timeseries,
    value_map,
)
from urbansense.registry import Family, FieldInfo

#: Grafana's unit ids for the units families use; others are shown as a suffix.
GRAFANA_UNITS = {
    "MPa": "pressurempa", "kPa": "pressurekpa", "Pa": "pressurepa", "degC": "celsius", "%": "percent",
    "V": "volt", "A": "amp", "W": "watt", "kW": "kwatt", "m/s": "velocityms", "ug/m3": "conµgm3",
    "mg/m3": "conmgm3", "m": "lengthm", "mm": "lengthmm", "h": "h", "s": "s",
}


def grafana_unit(unit: str | None) -> str | None:
    if unit is None:
        return None
    return GRAFANA_UNITS.get(unit, f"suffix: {unit}")


def _numeric_panel(measurement: str, name: str, info: FieldInfo) -> Panel:
    title = f"{info.display} ({info.unit})" if info.unit else info.display
    return timeseries(title, [influxql(by_device(measurement, name), alias="$tag_device")],
                      unit=grafana_unit(info.unit), description=info.description)


def _flag_panel(measurement: str, name: str, info: FieldInfo) -> Panel:
    return state_timeline(info.display, [influxql(last_by_device(measurement, name), alias="$tag_device")],
                          mappings=value_map({"true": ("yes", "orange"), "false": ("no", "green")}),
                          description=info.description)


def latest_table(fam: Family) -> Panel:
    cols = ", ".join(f'last("{name}") AS "{info.display}"' for name, info in fam.fields.items())
    q = (f'SELECT {cols} FROM "{fam.family}" WHERE {DEVICE_FILTER} AND $timeFilter '
         'GROUP BY "gateway", "device"')
    return table(f"Latest {fam.title.lower()} values by device", [influxql(q, table=True)], w=24)


def family_dashboard(fam: Family) -> Json:
    m = fam.family
    panels: list[Panel] = [row("Now")]
    for name, info in fam.fields.items():
        if info.type in ("float", "int"):
            panels.append(_numeric_panel(m, name, info))
        elif info.type == "bool":
            panels.append(_flag_panel(m, name, info))
    panels += [
        latest_table(fam),
        geomap_panel(m),
        alerts_table(m, f"Active {fam.title.lower()} alerts"),
        device_errors_panel(m),
    ]
    if fam.dashboard.long_range:
        panels.append(row("Long range"))
        for name in fam.dashboard.long_range:
            info = fam.fields[name]
            panels.append(long_range_panel(m, name, info.display, grafana_unit(info.unit)))
    return dashboard(f"urbansense-{fam.dashboard_file}", fam.dashboard.title, panels,
                     variables=[district_variable(m), device_variable(m)], tags=[m],
                     description=fam.description)
