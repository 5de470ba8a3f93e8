"""The provisioning files: current with the code, well-formed, and consistent with each
other (data source uid, variables, alert rules, contact points, policies, AQI table)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from dashboards.builder import DATASOURCE_UID
from dashboards.builder.catalog import AQI_TABLE, ROLLUP_RP
from dashboards.builder.checks import iter_panels, structure_problems, targets, variable_names
from dashboards.builder.inventory import gazetteer, geojson, load_inventory
from dashboards.builder.provisioning import DASHBOARDS_DIR, load_dashboards, stale_files
from urbansense import registry
from urbansense.config import ConfigError, load_gateway
from urbansense.identifiers import DOMAINS, SEVERITIES
from urbansense.paths import GATEWAYS_DIR

DASHBOARDS = load_dashboards()


def _yaml(rel: str) -> dict:
    return yaml.safe_load((DASHBOARDS_DIR / rel).read_text())


def test_files_in_the_repo_are_what_the_code_renders() -> None:
    assert stale_files() == [], "run: urbansense dashboards build"


def test_every_file_parses() -> None:
    for path in DASHBOARDS_DIR.rglob("*"):
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".yaml":
            assert isinstance(yaml.safe_load(path.read_text()), dict), path


def test_structure_is_clean() -> None:
    assert structure_problems(DASHBOARDS) == []


def test_structure_check_catches_a_wrong_datasource_and_an_undefined_variable() -> None:
    broken = json.loads(json.dumps(DASHBOARDS["water"]))
    panel = next(p for p in broken["panels"] if p["type"] == "timeseries")
    panel["targets"][0]["datasource"]["uid"] = "someone-elses-influx"
    panel["targets"][0]["query"] += " AND $gateway"
    problems = structure_problems({"water": broken})
    assert any("someone-elses-influx" not in p and "data source is not" in p for p in problems)
    assert any("undefined variables ['gateway']" in p for p in problems)


def test_datasource_is_influxql_with_secrets_from_the_environment() -> None:
    (ds,) = _yaml("provisioning/datasources/urbansense.yaml")["datasources"]
    assert ds["uid"] == DATASOURCE_UID and ds["type"] == "influxdb"
    assert ds["jsonData"]["version"] == "InfluxQL" and ds["jsonData"]["dbName"] == "city"
    assert ds["secureJsonData"]["password"].startswith("$")
    assert ds["user"].startswith("$") and ds["url"].startswith("$")


def test_dashboard_provider_points_where_compose_mounts_the_json() -> None:
    (provider,) = _yaml("provisioning/dashboards/urbansense.yaml")["providers"]
    compose = yaml.safe_load((DASHBOARDS_DIR.parent / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert any(m.startswith("./dashboards/json:") and m.split(":")[1] == provider["options"]["path"]
               for m in mounts)


def test_domain_dashboards_have_district_and_device_variables() -> None:
    for name in ("water", "gas", "lighting", "elevators", "air-quality"):
        assert variable_names(DASHBOARDS[name]) == ["district", "device"], name
    assert variable_names(DASHBOARDS["overview"]) == ["district"]
    assert variable_names(DASHBOARDS["system-health"]) == ["district", "gateway"]


def test_long_range_panels_read_the_rollups_and_short_ones_do_not() -> None:
    for name, dash in DASHBOARDS.items():
        for panel in iter_panels(dash):
            for t in panel.get("targets", []):
                reads_rollup = f'"{ROLLUP_RP}".' in t["query"]
                assert reads_rollup == bool(panel.get("timeFrom")), (name, panel["title"])
                if reads_rollup:
                    assert panel["interval"] == "1h"
    assert sum(1 for d in DASHBOARDS.values() for t in targets(d) if t.time_from) >= 10


def test_dashboards_draw_the_rules_engines_aqi_breakpoints() -> None:
    """A panel with steps_from (the air family's pollutants) has its colour bands at the
    AQI table's breakpoints, the same numbers the rules engine computes with."""
    table = yaml.safe_load(AQI_TABLE.read_text())
    rows = {(r["pollutant"], r["period"]): r["breakpoints"] for r in table["rows"]}
    drawn = [(fam, hint) for fam in registry.families().values() for hint in fam.dashboard.panels
             if hint.steps_from is not None]
    assert len(drawn) >= 6
    for fam, hint in drawn:
        assert hint.steps_from is not None and hint.field is not None
        pollutant, _, period = hint.steps_from.partition("/")
        panels = {p["title"]: p for p in iter_panels(DASHBOARDS[fam.dashboard_file])}
        panel = panels[f"{fam.fields[hint.field].display} ({period} breakpoints)"]
        steps = [s["value"] for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]
        assert steps[1:] == [float(b) for b in rows[(pollutant, period)][1:-1]][: len(steps) - 1]
        assert len(steps) >= 4


def test_alert_rules_cover_every_domain_and_severity() -> None:
    doc = _yaml("provisioning/alerting/rules.yaml")
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert {(r["labels"]["domain"], r["labels"]["severity"]) for r in rules} == {
        (d, s) for d in DOMAINS for s in SEVERITIES}
    assert len({r["uid"] for r in rules}) == len(rules)
    for r in rules:
        query = r["data"][0]
        assert query["datasourceUid"] == DATASOURCE_UID
        # Grafana expands $NAME from the environment in provisioning files: no $ in queries.
        assert "$" not in query["model"]["query"]
        assert "$" not in json.dumps(r["annotations"])
        assert 'GROUP BY "district"' in query["model"]["query"]
        assert r["condition"] in {d["refId"] for d in r["data"]}


def test_contact_points_and_policies_group_by_district() -> None:
    cps = _yaml("provisioning/alerting/contact-points.yaml")["contactPoints"]
    types = {cp["name"]: cp["receivers"][0]["type"] for cp in cps}
    assert sorted(types.values()) == ["mqtt", "webhook"]
    mqtt = next(cp["receivers"][0]["settings"] for cp in cps if cp["receivers"][0]["type"] == "mqtt")
    assert mqtt["password"].startswith("$") and mqtt["topic"].startswith("city/ops/grafana")
    (policy,) = _yaml("provisioning/alerting/policies.yaml")["policies"]
    assert policy["receiver"] in types and "district" in policy["group_by"]
    for route in policy["routes"]:
        assert route["receiver"] in types and "district" in route["group_by"]
    # Critical alerts reach both the MQTT and the webhook contact points.
    critical = [r["receiver"] for r in policy["routes"]
                if all(m[2] in ("urbansense-rules", "critical") for m in r["object_matchers"])]
    assert set(critical) == set(types)


def test_inventory_has_every_located_device_of_every_gateway_config() -> None:
    devices = load_inventory()
    expected = {d.id for p in GATEWAYS_DIR.glob("*.yaml") for link in load_gateway(p).config.links
                for d in link.devices if d.location is not None}
    assert {d.device for d in devices} == expected
    gaz = gazetteer(devices)
    assert all(set(e) == {"key", "latitude", "longitude", "name"} for e in gaz)
    features = geojson(devices)["features"]
    assert len(features) == len(devices)
    first = features[0]
    assert first["geometry"]["coordinates"] == [devices[0].lon, devices[0].lat]


def test_inventory_refuses_a_device_id_used_twice(tmp_path: Path) -> None:
    src = GATEWAYS_DIR / "pd-gw-01.yaml"
    for name in ("a", "b"):
        text = src.read_text().replace("gateway: pd-gw-01", f"gateway: gw-{name}")
        text = text.replace("profiles_dir", "x_profiles_dir")
        doc = yaml.safe_load(text)
        doc["profiles_dir"] = str(GATEWAYS_DIR.parent / "profiles")
        (tmp_path / f"gw-{name}.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="unique across the city"):
        load_inventory(tmp_path)


def test_geomap_uses_the_inventory_files() -> None:
    geomap = next(p for p in iter_panels(DASHBOARDS["overview"]) if p["type"] == "geomap")
    layers = geomap["options"]["layers"]
    assert layers[0]["config"]["src"] == "public/urbansense/urbansense-devices.geojson"
    assert layers[1]["location"] == {"mode": "lookup", "lookup": "device",
                                     "gazetteer": "public/urbansense/urbansense-devices.json"}
    assert re.search(r'GROUP BY "device"', geomap["targets"][0]["query"])


def test_rollup_names_match_what_the_ingester_creates() -> None:
    from dashboards.builder.catalog import ROLLUP_INTERVAL, ROLLUP_SUFFIX, rollup_field
    from ingest.bootstrap import ROLLUPS, continuous_query

    (rollup,) = [r for r in ROLLUPS if r.retention_policy == ROLLUP_RP]
    assert rollup.measurement("water") == "water" + ROLLUP_SUFFIX
    assert rollup.interval == ROLLUP_INTERVAL
    _name, statement = continuous_query("city", "water", rollup)
    # mean(*) names its outputs mean_<field>: what rollup_field() reads
    assert "mean(*)" in statement and rollup_field("mean", "pressure_mpa") == "mean_pressure_mpa"


def test_build_command_writes_exactly_the_committed_files(tmp_path: Path) -> None:
    from application.cli import main

    assert main(["dashboards", "build", "--out", str(tmp_path), "--with-inventory"]) == 0
    for path in tmp_path.rglob("*.*"):
        rel = path.relative_to(tmp_path)
        if rel.parts[0] == "maps":
            continue
        assert path.read_text() == (DASHBOARDS_DIR / rel).read_text(), rel
    assert (tmp_path / "maps" / "urbansense-devices.json").is_file()
    assert len(json.loads((tmp_path / "maps" / "urbansense-devices.json").read_text())) == len(load_inventory())
