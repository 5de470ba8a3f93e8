"""`urbansense ingest init`: the database, its retention policies and the continuous-query
roll-ups that dashboards use for long time ranges (InfluxQL, tested on InfluxDB 1.6.7).

Worked example for database `city` and measurement `water`::

    raw        30d  DEFAULT   water                           (what the ingester writes)
    rollup_1m  365d           water_1m  mean_*, min_*, max_*  GROUP BY time(1m), *
    rollup_1h  1825d          water_1h  mean_*, min_*, max_*  GROUP BY time(1h), *

so `SELECT mean_pressure_mpa FROM "city"."rollup_1h"."water_1h" WHERE district = 'pudong'`
gives hourly means for a year-long panel. Both roll-ups read the raw measurement (not
each other), so min/max are exact; tags (district, gateway, device) are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from urbansense.identifiers import MEASUREMENTS
from urbansense.influx import InfluxClient, InfluxError

RAW_RP = "raw"


@dataclass(frozen=True, slots=True)
class Rollup:
    interval: str  # InfluxQL duration: 1m, 1h
    retention_policy: str
    duration: str
    resample_for: str  # recompute the last windows too: late readings (store-and-forward)

    def measurement(self, source: str) -> str:
        return f"{source}_{self.interval}"


ROLLUPS = (
    Rollup("1m", "rollup_1m", "365d", "10m"),
    Rollup("1h", "rollup_1h", "1825d", "3h"),
)


def _q(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def retention_statements(database: str, raw_duration: str = "30d",
                         rollups: tuple[Rollup, ...] = ROLLUPS) -> list[tuple[str, str, bool]]:
    """(name, duration, default) of each retention policy."""
    return [(RAW_RP, raw_duration, True)] + [(r.retention_policy, r.duration, False) for r in rollups]


def continuous_query(database: str, source: str, rollup: Rollup) -> tuple[str, str]:
    """(name, CREATE CONTINUOUS QUERY statement) of one roll-up."""
    name = f"{source}_{rollup.interval}"
    db = _q(database)
    statement = (
        f"CREATE CONTINUOUS QUERY {_q(name)} ON {db} "
        f"RESAMPLE EVERY {rollup.interval} FOR {rollup.resample_for} BEGIN "
        f"SELECT mean(*), min(*), max(*) INTO {db}.{_q(rollup.retention_policy)}.{_q(rollup.measurement(source))} "
        f"FROM {db}.{_q(RAW_RP)}.{_q(source)} GROUP BY time({rollup.interval}), * END"
    )
    return name, statement


def init_database(influx: InfluxClient, database: str, *, raw_duration: str = "30d",
                  rollups: tuple[Rollup, ...] = ROLLUPS, sources: tuple[str, ...] = MEASUREMENTS,
                  dry_run: bool = False) -> list[str]:
    """Create (or bring up to date) database, retention policies and continuous queries.
    Idempotent; returns the statements it ran (or would run, with dry_run)."""
    done: list[str] = []

    def run(statement: str) -> None:
        done.append(statement)
        if not dry_run:
            influx.query(statement, database=database)

    run(f"CREATE DATABASE {_q(database)}")
    existing_rps = {} if dry_run else {
        row["name"]: row for row in influx.rows(f"SHOW RETENTION POLICIES ON {_q(database)}")}
    for name, duration, default in retention_statements(database, raw_duration, rollups):
        verb = "ALTER" if name in existing_rps else "CREATE"
        run(f"{verb} RETENTION POLICY {_q(name)} ON {_q(database)} DURATION {duration} "
            f"REPLICATION 1{' DEFAULT' if default else ''}")
    existing_cqs = {} if dry_run else _continuous_queries(influx, database)
    for rollup in rollups:
        for source in sources:
            name, statement = continuous_query(database, source, rollup)
            current = existing_cqs.get(name)
            if current is not None and _same_query(current, statement):
                continue
            if current is not None:
                run(f"DROP CONTINUOUS QUERY {_q(name)} ON {_q(database)}")
            run(statement)
    return done


def _continuous_queries(influx: InfluxClient, database: str) -> dict[str, str]:
    try:
        series = influx.query("SHOW CONTINUOUS QUERIES", database=database)
    except InfluxError:
        return {}
    return {str(row[0]): str(row[1]) for s in series if s.name == database for row in s.values}


def _same_query(shown: str, statement: str) -> bool:
    # InfluxDB shows the query with identifiers unquoted where quoting is not needed
    def norm(text: str) -> str:
        return text.replace('"', "").lower()

    return norm(shown) == norm(statement)
