"""A family's dashboard, drawn from its data in the domain registry.

The "Now" panels are the family's ``dashboard.panels`` (urbansense.registry.PanelHint);
without them, a time series per numeric field (by device, in the field's unit), a state
timeline per boolean field and the latest value of every field by device. Every family
dashboard then has its active alerts on a map and in a table, the devices not answering,
and the "Long range" row from the 1 h roll-up for the fields the family names. Its
queries are checked like every other panel's (tests/dashboards/).
"""

from __future__ import annotations

from dashboards.builder.catalog import (
    DEVICE_FILTER,
    alerts_table,
    aqi_panels,
    aqi_table,
    by_device,
    count_active,
    device_errors_panel,
    device_variable,
    district_variable,
    geomap_panel,
    last_by_device,
    long_range_panel,
    pollutant_steps,
    tracks_panel,
    water_class_panels,
)
from dashboards.builder.panels import (
    Json,
    Panel,
    Steps,
    dashboard,
    influxql,
    row,
    stat,
    state_timeline,
    table,
    timeseries,
    value_map,
)
from urbansense.registry import Family, FieldInfo, PanelHint

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


class _Drawer:
    """Draws one family's panel hints."""

    def __init__(self, fam: Family) -> None:
        self.fam = fam
        self.m = fam.family

    def info(self, hint: PanelHint) -> FieldInfo | None:
        return self.fam.fields[hint.field] if hint.field is not None else None

    def unit(self, hint: PanelHint) -> str | None:
        if hint.unit is not None:
            return None if hint.unit == "none" else hint.unit
        info = self.info(hint)
        return grafana_unit(info.unit) if info is not None else None

    def steps(self, hint: PanelHint) -> tuple[Steps | None, str]:
        """Colour bands and what they mean (for the description)."""
        if hint.steps_from is None:
            return (list(hint.steps) if hint.steps is not None else None), ""
        pollutant, _, period = hint.steps_from.partition("/")
        standard, bps = aqi_table().breakpoints(pollutant, period)
        label = self.info(hint).display if hint.field else pollutant  # type: ignore[union-attr]
        return pollutant_steps(bps), f"{standard} {label} {period} breakpoints: {', '.join(str(b) for b in bps)}."

    def title(self, hint: PanelHint) -> str:
        if hint.title is not None:
            return hint.title
        info = self.info(hint)
        base = info.display if info is not None else hint.kind
        if hint.steps_from is not None:
            return f"{base} ({hint.steps_from.partition('/')[2]} breakpoints)"
        return base

    def query(self, hint: PanelHint) -> str:
        assert hint.query is not None
        return hint.query.replace("{measurement}", self.m).replace("{device_filter}", DEVICE_FILTER)

    def panels(self, hint: PanelHint) -> list[Panel]:
        info = self.info(hint)
        w = hint.w or (24 if hint.kind == "table" else 12)
        description = hint.description or (info.description if info is not None else "")
        if hint.kind == "row":
            return [row(self.title(hint))]
        if hint.kind == "aqi":
            return aqi_panels()
        if hint.kind == "water_class":
            return water_class_panels()
        if hint.kind == "tracks":
            return [tracks_panel(self.m, self.title(hint), w=hint.w or 24, h=hint.h)]
        if hint.kind == "stat":
            if hint.query is not None:
                target = influxql(self.query(hint))
                return [stat(self.title(hint), [target], unit=self.unit(hint), steps=hint.steps, w=w, h=hint.h)]
            assert hint.field is not None and hint.condition is not None
            q = count_active(self.m, hint.field, f'"{hint.field}" {hint.condition}')
            return [stat(self.title(hint), [influxql(q)], steps=hint.steps, w=w, h=hint.h, no_value="0")]
        if hint.kind == "state":
            assert hint.field is not None and hint.values is not None
            return [state_timeline(self.title(hint), [influxql(last_by_device(self.m, hint.field),
                                                                alias="$tag_device")],
                                   mappings=value_map(dict(hint.values)), w=w, h=hint.h)]
        if hint.kind == "table":
            if hint.query is None:
                return [latest_table(self.fam)]
            return [table(self.title(hint), [influxql(self.query(hint), table=True)], w=w, h=hint.h)]
        steps, bands = self.steps(hint)
        if hint.query is not None:
            target = influxql(self.query(hint), alias=hint.alias)
        else:
            assert hint.field is not None
            target = influxql(by_device(self.m, hint.field, hint.agg), alias="$tag_device")
        return [timeseries(self.title(hint), [target], unit=self.unit(hint), steps=steps, w=w, h=hint.h,
                           threshold_style="line+area" if steps else "off",
                           description=hint.description or bands or description)]

    def long_range(self, hint: PanelHint) -> Panel:
        assert hint.field is not None
        steps, _ = self.steps(hint)
        title = hint.title or self.fam.fields[hint.field].display
        return long_range_panel(self.m, hint.field, title, self.unit(hint), steps)


def default_hints(fam: Family) -> list[PanelHint]:
    """One panel per field: numbers as time series, flags as state timelines; then the
    latest values by device."""
    hints = []
    for name, info in fam.fields.items():
        if info.type in ("float", "int"):
            hints.append(PanelHint(field=name))
        elif info.type == "bool":
            hints.append(PanelHint(kind="state", field=name,
                                   values={"true": ("yes", "orange"), "false": ("no", "green")}))
    return [*hints, PanelHint(kind="table")]


def latest_table(fam: Family) -> Panel:
    cols = ", ".join(f'last("{name}") AS "{info.display}"' for name, info in fam.fields.items())
    q = (f'SELECT {cols} FROM "{fam.family}" WHERE {DEVICE_FILTER} AND $timeFilter '
         'GROUP BY "gateway", "device"')
    return table(f"Latest {fam.title.lower()} values by device", [influxql(q, table=True)], w=24)


def family_dashboard(fam: Family) -> Json:
    m = fam.family
    draw = _Drawer(fam)
    hints = fam.dashboard.panels or default_hints(fam)
    panels: list[Panel] = [] if hints[0].kind in ("row", "aqi", "water_class") else [row("Now")]
    for hint in hints:
        panels += draw.panels(hint)
    panels += [
        alerts_table(m, f"Active alerts: {fam.title}", by_device=True),
        device_errors_panel(m),
        geomap_panel(m, by_device=True),
    ]
    if fam.dashboard.long_range:
        panels.append(row("Long range"))
        panels += [draw.long_range(h) for h in fam.dashboard.long_range]
    return dashboard(fam.dashboard_uid, fam.dashboard.title, panels,
                     variables=[district_variable(m), device_variable(m)], tags=[m],
                     description=fam.description)
