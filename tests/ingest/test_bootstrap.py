"""`urbansense ingest init` on the real InfluxDB: retention policies, continuous queries
(idempotent), and roll-ups with the names the dashboards read."""

from __future__ import annotations

import time

import pytest

from ingest.bootstrap import ROLLUPS, continuous_query, init_database
from urbansense.cli import main
from urbansense.influx import InfluxClient
from urbansense.stack import Stack

pytestmark = pytest.mark.integration


def test_init_creates_policies_and_queries_idempotently(influx_db: InfluxClient) -> None:
    db = influx_db.database
    ran = init_database(influx_db, db)
    assert sum(s.startswith("CREATE CONTINUOUS QUERY") for s in ran) == 10
    policies = {r["name"]: r for r in influx_db.rows(f'SHOW RETENTION POLICIES ON "{db}"')}
    assert policies["raw"]["default"] is True and policies["raw"]["duration"] == "720h0m0s"
    assert policies["rollup_1m"]["duration"] == "8760h0m0s"
    assert policies["rollup_1h"]["duration"] == "43800h0m0s"
    shown = {row[0] for s in influx_db.query("SHOW CONTINUOUS QUERIES") if s.name == db for row in s.values}
    assert shown == {f"{m}_{i}" for m in ("water", "gas", "lighting", "elevator", "air") for i in ("1m", "1h")}
    again = init_database(influx_db, db)
    assert not any("CONTINUOUS QUERY" in s for s in again)  # nothing to change
    assert init_database(influx_db, db, raw_duration="7d")[1].startswith('ALTER RETENTION POLICY "raw"')
    policies = {r["name"]: r for r in influx_db.rows(f'SHOW RETENTION POLICIES ON "{db}"')}
    assert policies["raw"]["duration"] == "168h0m0s" and policies["raw"]["default"] is True


def test_rollup_query_yields_the_documented_fields(influx_db: InfluxClient) -> None:
    db = influx_db.database
    init_database(influx_db, db)
    minute = (int(time.time()) // 60 - 3) * 60_000
    lines = [f"water,device=wp-1,district=pd,gateway=gw pressure_mpa={0.1 * (i + 1)},pump_on=true,"
             f'mode="auto",starts={i}i {minute + i * 10_000}' for i in range(6)]
    influx_db.write("\n".join(lines))
    for rollup in ROLLUPS:
        # what the continuous query runs each interval, for the last window
        _, statement = continuous_query(db, "water", rollup)
        select = statement.split(" BEGIN ", 1)[1].removesuffix(" END")
        where = f" WHERE time >= {minute - 3_600_000}ms AND time < {minute + 60_000}ms GROUP BY"
        influx_db.query(select.replace(" GROUP BY", where, 1))
    rows = influx_db.rows(f'SELECT * FROM "{db}"."rollup_1m"."water_1m"')
    assert len(rows) == 1
    row = rows[0]
    assert row["device"] == "wp-1" and row["district"] == "pd" and row["gateway"] == "gw"
    assert row["mean_pressure_mpa"] == pytest.approx(0.35) and row["min_pressure_mpa"] == pytest.approx(0.1)
    assert row["max_pressure_mpa"] == pytest.approx(0.6) and row["max_starts"] == 5 and row["mean_starts"] == 2.5
    assert "mean_mode" not in row  # strings are not rolled up
    hourly = influx_db.rows(f'SELECT mean_pressure_mpa FROM "{db}"."rollup_1h"."water_1h"')
    assert len(hourly) == 1 and hourly[0]["mean_pressure_mpa"] == pytest.approx(0.35)


def test_cli_init_dry_run_prints_statements(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest", "init", "--influx", stack.influx_url, "--database", "never_created", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == 'CREATE DATABASE "never_created"'
    assert any('INTO "never_created"."rollup_1h"."air_1h"' in line for line in out)
    names = [r["name"] for r in InfluxClient(stack.influx_url).rows("SHOW DATABASES")]
    assert "never_created" not in names
