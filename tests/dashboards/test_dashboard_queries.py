"""Every panel query of every dashboard, run against a real InfluxDB filled by a short
simulation, with the template variables substituted the way Grafana does."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from application.cli import main
from application.stack import Stack
from dashboards.builder.alerting import rule_query
from dashboards.builder.checks import (
    PanelTarget,
    has_values,
    run_target,
    targets,
    variable_values,
)
from dashboards.builder.inventory import load_inventory
from dashboards.builder.provisioning import load_dashboards
from tests.dashboards.citydata import CityData, simulate
from urbansense import registry
from urbansense.influx import InfluxClient
from urbansense.influxql import ALL, TimeRange

pytestmark = pytest.mark.integration

DASHBOARDS = load_dashboards()
ALL_TARGETS = [t for d in DASHBOARDS.values() for t in targets(d)]
MEASUREMENT_OF = {fam.dashboard_uid: name for name, fam in registry.families().items()}


@pytest.fixture(scope="module")
def city(stack: Stack) -> Iterator[tuple[InfluxClient, CityData]]:
    name = "t_dash_" + uuid.uuid4().hex[:10]
    client = InfluxClient(stack.influx_url, name)
    client.create_database()
    data = simulate(client)
    yield client, data
    client.query(f'DROP DATABASE "{name}"', database="")
    client.close()


def _range(data: CityData) -> TimeRange:
    return TimeRange(data.start_ms - 60_000, data.end_ms + 1_000)


def _all_variables(target: PanelTarget) -> dict[str, str]:
    return {"district": ALL, "device": ALL, "gateway": ALL}


def test_every_dashboard_has_panels_and_queries() -> None:
    assert set(DASHBOARDS) == {"overview", "system-health", "fleet",
                               *(fam.dashboard_file for fam in registry.families().values())}
    for name, dash in DASHBOARDS.items():
        assert len(targets(dash)) >= 4, name


@pytest.mark.parametrize("target", ALL_TARGETS, ids=[t.name for t in ALL_TARGETS])
def test_panel_query_returns_data(city: tuple[InfluxClient, CityData], target: PanelTarget) -> None:
    influx, data = city
    series = run_target(influx, target, _range(data), _all_variables(target))
    assert has_values(series), f"no data for {target.name}:\n{target.expanded(_range(data), _all_variables(target))}"


@pytest.mark.parametrize("target", ALL_TARGETS, ids=[t.name for t in ALL_TARGETS])
def test_panel_query_honours_one_selected_device(city: tuple[InfluxClient, CityData],
                                                 target: PanelTarget) -> None:
    """With one district and one device (or gateway) selected, the query runs and every
    series it returns belongs to that selection."""
    influx, data = city
    measurement = MEASUREMENT_OF.get(target.dashboard, "water")
    device, (_m, district, gateway) = next(
        (d, v) for d, v in sorted(data.devices.items()) if v[0] == measurement)
    variables = {"district": district, "device": device, "gateway": gateway}
    series = run_target(influx, target, _range(data), variables)
    for s in series:
        rows = s.rows() or [{}]
        for key, expected in (("district", district), ("device", device), ("gateway", gateway)):
            seen = {s.tags.get(key)} | {r.get(key) for r in rows}
            seen.discard(None)
            seen.discard("")
            if key == "device" and target.dashboard in ("urbansense-overview", "urbansense-system",
                                                        "urbansense-fleet"):
                continue  # these dashboards have no device variable
            if key == "gateway" and target.dashboard not in ("urbansense-system", "urbansense-fleet"):
                continue
            assert seen <= {expected}, f"{target.name}: {key} {seen} leaked past the selection"


def test_variables_list_the_simulated_districts_and_devices(city: tuple[InfluxClient, CityData]) -> None:
    influx, data = city
    for name, dash in DASHBOARDS.items():
        values = variable_values(influx, dash, {"district": ALL, "device": ALL, "gateway": ALL})
        assert set(values["district"]) >= data.districts - {""} or name != "overview", name
        assert values["district"], name
        if "device" in values:
            m = MEASUREMENT_OF[dash["uid"]]
            assert set(values["device"]) == {d for d, v in data.devices.items() if v[0] == m}, name
        if "gateway" in values:
            assert set(values["gateway"]) == data.gateways


def test_device_variable_follows_the_selected_district(city: tuple[InfluxClient, CityData]) -> None:
    influx, data = city
    values = variable_values(influx, DASHBOARDS["water"], {"district": "xuhui"})
    expected = {d for d, v in data.devices.items() if v[0] == "water" and v[1] == "xuhui"}
    assert expected and set(values["device"]) == expected


def test_alert_rule_queries_count_active_alerts_per_district(city: tuple[InfluxClient, CityData]) -> None:
    """Critical test alerts are still firing; the warning ones resolved (except the
    system one), so the warning rules must stay quiet."""
    influx, _data = city
    for domain in ("water", "gas", "lighting", "elevator", "air"):
        critical = influx.query(rule_query(domain, "critical"))
        assert critical and all(s.tags.get("district") for s in critical), domain
        assert sum(row[1] for s in critical for row in s.values) == 1, domain
        assert influx.query(rule_query(domain, "warning")) == [], domain
    system = influx.query(rule_query("system", "warning"))
    assert [s.tags["district"] for s in system] == ["pudong"]


def test_map_alert_layer_finds_every_device_in_the_inventory(city: tuple[InfluxClient, CityData]) -> None:
    influx, data = city
    geomap = next(t for t in targets(DASHBOARDS["overview"]) if t.panel_type == "geomap")
    series = run_target(influx, geomap, _range(data), _all_variables(geomap))
    # Grafana's table format turns the GROUP BY tags into columns; the layer looks up `device`.
    devices = {s.tags["device"] for s in series if s.tags.get("device")}
    severities = {s.tags["severity"] for s in series if s.tags.get("device")}
    assert devices, "the alert layer found no active alert"
    inventory = {d.device for d in load_inventory()}
    assert devices <= inventory
    assert severities == {"critical"}  # the warning test alerts resolved: not on the map


def test_check_command_runs_every_query_against_the_database(
        city: tuple[InfluxClient, CityData], capsys: pytest.CaptureFixture[str]) -> None:
    influx, _data = city
    assert main(["dashboards", "check", "--influx", influx.url, "--database", influx.database,
                 "--range", "1h"]) == 0
    assert f"{len(ALL_TARGETS)} queries: 0 problems, 0 without data" in capsys.readouterr().out
    # an empty database: every panel reported, exit 1
    empty = "t_dash_empty_" + uuid.uuid4().hex[:6]
    influx.create_database(empty)
    try:
        assert main(["dashboards", "check", "--influx", influx.url, "--database", empty]) == 1
        err = capsys.readouterr().err
        rollup_panels = sum(1 for t in ALL_TARGETS if t.time_from)
        assert err.count("no data: ") == len(ALL_TARGETS) - rollup_panels
        assert err.count("create the roll-ups with: urbansense ingest init") == rollup_panels
    finally:
        influx.query(f'DROP DATABASE "{empty}"', database="")


def test_fleet_table_has_one_full_row_per_gateway_last_seen_at_its_latest_status(
        city: tuple[InfluxClient, CityData]) -> None:
    """The selector with fields beside it: each row is the gateway's latest status point, so
    its time is when it was last seen and every column is that point's."""
    from urbansense import __version__

    influx, data = city
    target = next(t for t in targets(DASHBOARDS["fleet"]) if t.panel == "Gateways")
    series = run_target(influx, target, _range(data), _all_variables(target))
    rows = {s.tags["gateway"]: s.rows()[0] for s in series}
    assert set(rows) == data.gateways
    newest = max(r["time"] for r in rows.values())
    for gw, r in rows.items():
        assert (r["agent"], r["config hash"], r["config version"]) == (__version__, "3f2a9c0d11e4", "v1"), gw
        assert 0.0 < r["clock offset (s)"] < 0.1 and r["log depth"] is not None and r["devices failing"] is not None
        assert r["time"] >= data.end_ms - 60_000 and r["time"] <= newest


def test_fleet_rows_link_to_a_dashboard_that_exists() -> None:
    links = [link["url"] for panel in DASHBOARDS["fleet"]["panels"]
             for override in panel.get("fieldConfig", {}).get("overrides", [])
             for prop in override["properties"] if prop["id"] == "links" for link in prop["value"]]
    uids = {d["uid"] for d in DASHBOARDS.values()}
    assert links and all(url.split("/d/")[1].split("?")[0] in uids for url in links), links
