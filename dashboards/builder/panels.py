"""Builders for the Grafana dashboard JSON model (schema 39, Grafana 11).

Each builder returns the plain dict Grafana stores, so a dashboard reads like a list of
panels: ``timeseries("Pressure", [influxql(...)], unit="pressurembar")``. Layout is
done once, by :func:`layout`, which flows panels left to right in a 24-column grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dashboards.builder import DATASOURCE

Json = dict[str, Any]
#: Threshold steps as (colour, lower bound); the first bound is None (-infinity).
Steps = list[tuple[str, float | None]]

GREEN_ONLY: Steps = [("green", None)]


def influxql(query: str, *, ref: str = "A", alias: str | None = None, table: bool = False,
             hide: bool = False) -> Json:
    """A raw InfluxQL target. ``$timeFilter``, ``$__interval`` and the template
    variables are expanded by Grafana (and by :mod:`urbansense.influxql`)."""
    target: Json = {"refId": ref, "datasource": dict(DATASOURCE), "query": query, "rawQuery": True,
                    "resultFormat": "table" if table else "time_series"}
    if alias:
        target["alias"] = alias
    if hide:
        target["hide"] = True
    return target


def thresholds(steps: Steps) -> Json:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


def value_map(mapping: dict[str, tuple[str, str]]) -> list[Json]:
    """Value -> (display text, colour), e.g. {"true": ("ONLINE", "green")}."""
    return [{"type": "value", "options": {k: {"text": t, "color": c, "index": i}
                                          for i, (k, (t, c)) in enumerate(mapping.items())}}]


@dataclass
class Panel:
    """A panel before layout: its JSON model and its size in grid units."""

    model: Json
    w: int = 12
    h: int = 8
    targets: list[Json] = field(default_factory=list)


def _panel(kind: str, title: str, targets: list[Json], *, w: int, h: int, unit: str | None = None,
           steps: Steps | None = None, description: str = "", options: Json | None = None,
           custom: Json | None = None, mappings: list[Json] | None = None,
           time_from: str | None = None, interval: str | None = None,
           transformations: list[Json] | None = None, decimals: int | None = None,
           min_value: float | None = None, max_value: float | None = None,
           no_value: str | None = None) -> Panel:
    defaults: Json = {"thresholds": thresholds(steps or GREEN_ONLY)}
    if unit:
        defaults["unit"] = unit
    if custom:
        defaults["custom"] = custom
    if mappings:
        defaults["mappings"] = mappings
    if decimals is not None:
        defaults["decimals"] = decimals
    if min_value is not None:
        defaults["min"] = min_value
    if max_value is not None:
        defaults["max"] = max_value
    if no_value is not None:
        defaults["noValue"] = no_value
    if steps and len(steps) > 1 and kind in ("stat", "gauge", "bargauge"):
        defaults["color"] = {"mode": "thresholds"}
    model: Json = {"type": kind, "title": title, "datasource": dict(DATASOURCE),
                   "fieldConfig": {"defaults": defaults, "overrides": []},
                   "options": options or {}, "targets": targets}
    if description:
        model["description"] = description
    if time_from:
        # A fixed long window overriding the dashboard's range: these panels read roll-ups.
        model["timeFrom"] = time_from
    if interval:
        model["interval"] = interval  # Grafana's "min interval": $__interval never goes below it
    if transformations:
        model["transformations"] = transformations
    return Panel(model, w=w, h=h, targets=targets)


def timeseries(title: str, targets: list[Json], *, unit: str | None = None, steps: Steps | None = None,
               w: int = 12, h: int = 8, threshold_style: str = "off", **kw: Any) -> Panel:
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 5, "spanNulls": True,
              "showPoints": "never", "thresholdsStyle": {"mode": threshold_style}}
    options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
               "tooltip": {"mode": "multi", "sort": "desc"}}
    return _panel("timeseries", title, targets, w=w, h=h, unit=unit, steps=steps, custom=custom,
                  options=options, **kw)


def stat(title: str, targets: list[Json], *, unit: str | None = None, steps: Steps | None = None,
         w: int = 6, h: int = 4, reducer: str = "lastNotNull", **kw: Any) -> Panel:
    options = {"reduceOptions": {"calcs": [reducer], "fields": "", "values": False},
               "colorMode": "background", "graphMode": "none", "textMode": "auto",
               "orientation": "auto", "justifyMode": "auto"}
    return _panel("stat", title, targets, w=w, h=h, unit=unit, steps=steps, options=options, **kw)


def bargauge(title: str, targets: list[Json], *, unit: str | None = None, steps: Steps | None = None,
             w: int = 12, h: int = 8, **kw: Any) -> Panel:
    options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
               "orientation": "horizontal", "displayMode": "gradient", "showUnfilled": True}
    return _panel("bargauge", title, targets, w=w, h=h, unit=unit, steps=steps, options=options, **kw)


def state_timeline(title: str, targets: list[Json], *, mappings: list[Json], w: int = 12, h: int = 8,
                   **kw: Any) -> Panel:
    options = {"mergeValues": True, "showValue": "auto", "alignValue": "left", "rowHeight": 0.9,
               "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}
    return _panel("state-timeline", title, targets, w=w, h=h, mappings=mappings, options=options,
                  custom={"fillOpacity": 70, "lineWidth": 0}, **kw)


def table(title: str, targets: list[Json], *, w: int = 24, h: int = 8, **kw: Any) -> Panel:
    options = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
    return _panel("table", title, targets, w=w, h=h, options=options, **kw)


def row(title: str) -> Panel:
    return Panel({"type": "row", "title": title, "collapsed": False, "panels": []}, w=24, h=1)


def layout(panels: list[Panel]) -> list[Json]:
    """Give each panel an id and a grid position, flowing left to right, wrapping at 24."""
    out: list[Json] = []
    x = y = line_h = 0
    for i, p in enumerate(panels, start=1):
        if p.model["type"] == "row" or x + p.w > 24:
            x, y, line_h = 0, y + line_h, 0
        model = dict(p.model)
        model["id"] = i
        model["gridPos"] = {"x": x, "y": y, "w": p.w, "h": p.h}
        out.append(model)
        x += p.w
        line_h = max(line_h, p.h)
        if p.model["type"] == "row":
            x, y, line_h = 0, y + p.h, 0
    return out


# ---------------------------------------------------------------------------- variables

def query_variable(name: str, label: str, query: str, *, include_all: bool = True,
                   multi: bool = True) -> Json:
    """A variable filled from InfluxDB (refreshed on time-range change). "All" is the
    regex `.*`, which Grafana inserts unescaped, so `=~ /^$var$/` matches everything."""
    var: Json = {"type": "query", "name": name, "label": label, "datasource": dict(DATASOURCE),
                 "query": query, "definition": query, "refresh": 2, "sort": 1,
                 "includeAll": include_all, "multi": multi,
                 "current": {"selected": True, "text": ["All"], "value": ["$__all"]} if include_all else {},
                 "options": [], "hide": 0}
    if include_all:
        var["allValue"] = ".*"
    return var


def dashboard(uid: str, title: str, panels: list[Panel], *, variables: list[Json], tags: list[str],
              description: str = "", time_from: str = "now-6h", refresh: str = "30s",
              links: list[Json] | None = None) -> Json:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["urbansense", *tags],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": refresh,
        "time": {"from": time_from, "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "templating": {"list": variables},
        "annotations": {"list": []},
        "links": links or [],
        "panels": layout(panels),
    }
