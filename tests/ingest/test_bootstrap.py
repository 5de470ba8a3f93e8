"""`urbansense ingest init` on the real InfluxDB: retention policies, continuous queries
(idempotent), and roll-ups with the names the dashboards read."""

from __future__ import annotations

import time

import pytest

from application.cli import main
from application.stack import Stack
from ingest.bootstrap import ROLLUPS, Rollup, continuous_queries, continuous_query, duration_s, init_database
from urbansense.identifiers import MEASUREMENTS
from urbansense.influx import InfluxClient

pytestmark = pytest.mark.integration


def test_init_creates_policies_and_queries_idempotently(influx_db: InfluxClient) -> None:
    db = influx_db.database
    ran = init_database(influx_db, db)
    # every family's measurement x (1m, 1m_late, 1h)
    assert sum(s.startswith("CREATE CONTINUOUS QUERY") for s in ran) == 3 * len(MEASUREMENTS)
    policies = {r["name"]: r for r in influx_db.rows(f'SHOW RETENTION POLICIES ON "{db}"')}
    assert policies["raw"]["default"] is True and policies["raw"]["duration"] == "720h0m0s"
    assert policies["rollup_1m"]["duration"] == "8760h0m0s"
    assert policies["rollup_1h"]["duration"] == "43800h0m0s"
    shown = {row[0] for s in influx_db.query("SHOW CONTINUOUS QUERIES") if s.name == db for row in s.values}
    assert shown == {f"{m}_{i}" for m in MEASUREMENTS for i in ("1m", "1m_late", "1h")}
    assert {"water", "gas", "lighting", "elevator", "air"} <= set(MEASUREMENTS)
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


def test_rollups_cover_late_readings_with_a_short_frequent_look_back() -> None:
    one_minute, one_hour = ROLLUPS
    # what the 1 m roll-up re-reads from raw per minute: 2 min + 20 min / 10 (was 10 min)
    assert sum(duration_s(f) / duration_s(e) for _s, e, f in one_minute.schedules()) == 4
    assert one_minute.late_bound_s() == 600  # store-and-forward up to 10 min late, as before
    assert one_hour.late_bound_s() == 2 * 3600
    statements = dict(continuous_queries("city", "water", one_minute))
    assert "RESAMPLE EVERY 1m FOR 2m BEGIN" in statements["water_1m"]
    assert "RESAMPLE EVERY 10m FOR 20m BEGIN" in statements["water_1m_late"]
    assert statements["water_1m"].split(" BEGIN ")[1] == statements["water_1m_late"].split(" BEGIN ")[1]
    with pytest.raises(ValueError, match="leaves windows out"):
        Rollup("1m", "r", "1d", "2m", catch_up=("10m", "5m")).late_bound_s()
    with pytest.raises(ValueError, match="not a simple InfluxQL duration"):
        duration_s("10 minutes")


def _run_cq_at(influx: InfluxClient, statement: str, every: str, look_back: str, run_ms: int) -> None:
    """What InfluxDB runs for a continuous query at `run_ms` (a multiple of EVERY):
    its SELECT over [run - FOR, run)."""
    assert run_ms % (duration_s(every) * 1000) == 0
    select = statement.split(" BEGIN ", 1)[1].removesuffix(" END")
    where = f" WHERE time >= {run_ms - duration_s(look_back) * 1000}ms AND time < {run_ms}ms GROUP BY"
    influx.query(select.replace(" GROUP BY", where, 1))


def test_a_reading_minutes_late_reaches_the_1m_rollup_through_the_catch_up_query(
        influx_db: InfluxClient) -> None:
    db = influx_db.database
    init_database(influx_db, db)
    rollup = ROLLUPS[0]
    (main_name, main_cq), (late_name, late_cq) = continuous_queries(db, "water", rollup)
    assert late_name == main_name + "_late"
    schedules = {suffix: (every, look_back) for suffix, every, look_back in rollup.schedules()}
    ten_min = 600_000
    w = (int(time.time() * 1000) // ten_min - 12) * ten_min  # a minute two hours ago, on a 10-min boundary

    def line(value: float, t: int) -> str:
        return f"water,device=wp-1,district=pd,gateway=gw pressure_mpa={value} {t}"

    def mean_at_w() -> float:
        rows = influx_db.rows(f'SELECT mean_pressure_mpa FROM "{db}"."rollup_1m"."water_1m" '
                              f"WHERE time = {w}ms")
        return float(rows[0]["mean_pressure_mpa"])

    influx_db.write("\n".join(line(0.2, w + i * 10_000) for i in range(5)))  # on time
    for minute in (1, 2):
        _run_cq_at(influx_db, main_cq, *schedules[""], w + minute * 60_000)
    assert mean_at_w() == pytest.approx(0.2)
    # Late by 5 min: the edge's store-and-forward delivers a reading from minute w after an
    # uplink cut. The frequent query no longer looks back that far ...
    influx_db.write(line(0.8, w + 55_000))
    for minute in range(6, 10):
        _run_cq_at(influx_db, main_cq, *schedules[""], w + minute * 60_000)
    assert mean_at_w() == pytest.approx(0.2)
    # ... the catch-up query's next run (every 10 min over the last 20) does.
    _run_cq_at(influx_db, late_cq, *schedules["_late"], w + ten_min)
    assert mean_at_w() == pytest.approx(0.3)


def test_init_replaces_an_older_rollup_schedule_and_drops_a_catch_up_no_longer_wanted(
        influx_db: InfluxClient) -> None:
    db = influx_db.database
    old = (Rollup("1m", "rollup_1m", "365d", "10m"), ROLLUPS[1])
    init_database(influx_db, db, rollups=old)
    ran = init_database(influx_db, db)
    assert f'DROP CONTINUOUS QUERY "water_1m" ON "{db}"' in ran
    assert any(s.startswith('CREATE CONTINUOUS QUERY "water_1m_late"') for s in ran)
    shown = {row[0]: row[1] for s in influx_db.query("SHOW CONTINUOUS QUERIES") if s.name == db
             for row in s.values}
    assert "FOR 2m" in shown["water_1m"] and "FOR 20m" in shown["water_1m_late"]
    back = init_database(influx_db, db, rollups=old)
    assert f'DROP CONTINUOUS QUERY "water_1m_late" ON "{db}"' in back
    names = {row[0] for s in influx_db.query("SHOW CONTINUOUS QUERIES") if s.name == db for row in s.values}
    assert "water_1m_late" not in names and "water_1m" in names
