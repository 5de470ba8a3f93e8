"""Checks of the dashboards that need no Grafana: structure, and every query against a
real InfluxDB (with the variables substituted as Grafana would)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dashboards.builder import DATASOURCE_UID
from urbansense.influx import InfluxClient, Series
from urbansense.influxql import TimeRange, expand, parse_duration_ms, variables_in

Json = dict[str, Any]
#: Variables Grafana itself provides to InfluxQL queries.
MACROS = {"timeFilter", "__interval", "interval", "__interval_ms", "__range", "__range_s",
          "__range_ms"}


@dataclass(frozen=True, slots=True)
class PanelTarget:
    dashboard: str  # uid
    panel: str  # title
    panel_type: str
    ref: str
    query: str
    time_from: str | None  # the panel's fixed relative range, e.g. "30d"
    min_interval: str | None
    table: bool

    @property
    def name(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref}"

    def time_range(self, dashboard_range: TimeRange) -> TimeRange:
        if self.time_from:
            end = dashboard_range.end_ms
            return TimeRange(end - parse_duration_ms(self.time_from), end)
        return dashboard_range

    def expanded(self, dashboard_range: TimeRange, variables: Mapping[str, str | Sequence[str]]) -> str:
        return expand(self.query, self.time_range(dashboard_range), variables,
                      min_interval=self.min_interval)


def iter_panels(dashboard: Json) -> Iterator[Json]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # panels inside a collapsed row


def targets(dashboard: Json) -> list[PanelTarget]:
    out = []
    for panel in iter_panels(dashboard):
        for t in panel.get("targets", []):
            if t.get("hide"):
                continue
            out.append(PanelTarget(dashboard["uid"], panel.get("title", "?"), panel["type"],
                                   t.get("refId", "A"), t["query"], panel.get("timeFrom"),
                                   panel.get("interval"), t.get("resultFormat") == "table"))
    return out


def variable_names(dashboard: Json) -> list[str]:
    return [v["name"] for v in dashboard.get("templating", {}).get("list", [])]


def structure_problems(dashboards: Mapping[str, Json]) -> list[str]:
    """Data source uids, variables defined before use, unique ids, grid within 24 columns."""
    problems: list[str] = []
    uids: dict[str, str] = {}
    for name, dash in dashboards.items():
        where = f"dashboards/json/{name}.json"
        uid = dash.get("uid")
        if not uid:
            problems.append(f"{where}: no uid (Grafana would invent one on every load)")
        elif uid in uids:
            problems.append(f"{where}: uid {uid!r} is also used by {uids[uid]}")
        else:
            uids[uid] = where
        defined = set(variable_names(dash))
        for var in dash.get("templating", {}).get("list", []):
            ds = var.get("datasource") or {}
            if var.get("type") == "query" and ds.get("uid") != DATASOURCE_UID:
                problems.append(f"{where}: variable ${var['name']}: data source {ds!r}, "
                                f"expected uid {DATASOURCE_UID!r}")
            undefined = variables_in(var.get("query", "")) - defined - MACROS
            if undefined:
                problems.append(f"{where}: variable ${var['name']} uses undefined ${sorted(undefined)}")
        ids: set[object] = set()
        for panel in iter_panels(dash):
            title = panel.get("title", "?")
            pid = panel.get("id")
            if pid in ids:
                problems.append(f"{where}: panel {title!r}: id {pid} used twice")
            ids.add(pid)
            grid = panel.get("gridPos", {})
            if grid.get("x", 0) + grid.get("w", 0) > 24:
                problems.append(f"{where}: panel {title!r} runs past the 24-column grid")
            if panel["type"] == "row":
                continue
            if (panel.get("datasource") or {}).get("uid") != DATASOURCE_UID:
                problems.append(f"{where}: panel {title!r}: data source is not {DATASOURCE_UID!r}")
            if not panel.get("targets"):
                problems.append(f"{where}: panel {title!r} has no query")
            for t in panel.get("targets", []):
                if (t.get("datasource") or {}).get("uid") != DATASOURCE_UID:
                    problems.append(f"{where}: panel {title!r} query {t.get('refId')}: data source "
                                    f"is not {DATASOURCE_UID!r}")
                undefined = variables_in(t.get("query", "")) - defined - MACROS
                if undefined:
                    problems.append(f"{where}: panel {title!r} query {t.get('refId')} uses "
                                    f"undefined variables {sorted(undefined)}")
    return problems


def has_values(series: list[Series]) -> bool:
    """At least one non-null value in a column other than time."""
    for s in series:
        for row in s.values:
            if any(v is not None for v in row[1:]):
                return True
    return False


def run_target(influx: InfluxClient, target: PanelTarget, dashboard_range: TimeRange,
               variables: Mapping[str, str | Sequence[str]]) -> list[Series]:
    return influx.query(target.expanded(dashboard_range, variables))


def variable_values(influx: InfluxClient, dashboard: Json,
                    selected: Mapping[str, str | Sequence[str]]) -> dict[str, list[str]]:
    """Run each query variable (earlier variables substituted): name -> values."""
    out: dict[str, list[str]] = {}
    dummy = TimeRange(0, 1)
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        q = expand(var["query"], dummy, {k: v for k, v in selected.items() if k != var["name"]})
        rows = [r for s in influx.query(q) for r in s.rows()]
        out[var["name"]] = sorted({str(r["value"]) for r in rows})
    return out
