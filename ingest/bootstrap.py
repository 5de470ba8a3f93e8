"""`urbansense ingest init`: the database, its retention policies and the continuous-query
roll-ups that dashboards use for long time ranges (InfluxQL, tested on InfluxDB 1.6.7).

Worked example for database `city` and measurement `water`::

    raw        30d  DEFAULT   water                           (what the ingester writes)
    rollup_1m  365d           water_1m  mean_*, min_*, max_*  GROUP BY time(1m), *
    rollup_1h  1825d          water_1h  mean_*, min_*, max_*  GROUP BY time(1h), *

so `SELECT mean_pressure_mpa FROM "city"."rollup_1h"."water_1h" WHERE district = 'pudong'`
gives hourly means for a year-long panel. Both roll-ups read the raw measurement (not
each other), so min/max are exact; tags (district, gateway, device) are kept.

Late readings (store-and-forward after an uplink cut) are rolled up by recomputing past
windows. Each recompute re-reads raw data, so the look-back is what a roll-up costs: at
10,000 readings/s the 1 m roll-up with `RESAMPLE FOR 10m` re-read 6 M points every minute
(half a core of influxd, docs/reliability-chaos.md "Soak"). So the 1 m roll-up runs in two
tiers: `<m>_1m` every minute over the last 2 minutes (readings up to 1 min late, and the
previous minute's last readings still in flight), and `<m>_1m_late` every 10 minutes over
the last 20 (readings up to 10 min late, as `FOR 10m` did), which reads 4 minutes of raw
data per minute instead of 10. `late_bound_s()` gives the lateness a roll-up is sure to
cover.
"""

from __future__ import annotations

from dataclasses import dataclass

from urbansense.identifiers import MEASUREMENTS
from urbansense.influx import InfluxClient, InfluxError
from urbansense.influxql import parse_duration_ms

RAW_RP = "raw"


def duration_s(text: str) -> int:
    """Seconds of a simple InfluxQL duration (`90s`, `10m`, `3h`, `1d`)."""
    try:
        return parse_duration_ms(text) // 1000
    except ValueError:
        raise ValueError(f"not a simple InfluxQL duration: {text!r}") from None


@dataclass(frozen=True, slots=True)
class Rollup:
    interval: str  # InfluxQL duration: 1m, 1h
    retention_policy: str
    duration: str
    resample_for: str  # recompute the last windows too: late readings (store-and-forward)
    #: (EVERY, FOR) of a second, less frequent continuous query `<m>_<interval>_late` that
    #: recomputes a longer look-back for readings that arrive later than `resample_for` covers.
    catch_up: tuple[str, str] | None = None

    def measurement(self, source: str) -> str:
        return f"{source}_{self.interval}"

    def schedules(self) -> list[tuple[str, str, str]]:
        """(name suffix, EVERY, FOR) of each continuous query of this roll-up."""
        out = [("", self.interval, self.resample_for)]
        if self.catch_up is not None:
            out.append(("_late", *self.catch_up))
        return out

    def late_bound_s(self) -> int:
        """Readings at most this late (arrival minus event time) are always rolled up.

        A query run every E over the last F recomputes the window holding a reading of
        time T at the first run after its arrival T + L (at the latest T + L + E) only if
        that run's range still starts before T: L + E <= F. And every window is computed
        at least once when it closes: L = 0 needs F >= E and F >= the interval."""
        interval = duration_s(self.interval)
        bound = 0
        for _suffix, every, look_back in self.schedules():
            e, f = duration_s(every), duration_s(look_back)
            if f < e or f < interval or e % interval:
                raise ValueError(f"roll-up {self.interval}: EVERY {every} FOR {look_back} leaves windows out")
            bound = max(bound, f - e)
        return bound


ROLLUPS = (
    Rollup("1m", "rollup_1m", "365d", "2m", catch_up=("10m", "20m")),
    Rollup("1h", "rollup_1h", "1825d", "3h"),
)


def _q(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def retention_statements(database: str, raw_duration: str = "30d",
                         rollups: tuple[Rollup, ...] = ROLLUPS) -> list[tuple[str, str, bool]]:
    """(name, duration, default) of each retention policy."""
    return [(RAW_RP, raw_duration, True)] + [(r.retention_policy, r.duration, False) for r in rollups]


def continuous_query(database: str, source: str, rollup: Rollup) -> tuple[str, str]:
    """(name, CREATE CONTINUOUS QUERY statement) of a roll-up's main (frequent) query."""
    return continuous_queries(database, source, rollup)[0]


def continuous_queries(database: str, source: str, rollup: Rollup) -> list[tuple[str, str]]:
    """(name, CREATE CONTINUOUS QUERY statement) of each query of one roll-up: the main
    one, then the catch-up one if any (same SELECT, longer look-back, less often)."""
    db = _q(database)
    select = (f"SELECT mean(*), min(*), max(*) INTO {db}.{_q(rollup.retention_policy)}."
              f"{_q(rollup.measurement(source))} FROM {db}.{_q(RAW_RP)}.{_q(source)} "
              f"GROUP BY time({rollup.interval}), *")
    out = []
    for suffix, every, look_back in rollup.schedules():
        name = f"{source}_{rollup.interval}{suffix}"
        out.append((name, f"CREATE CONTINUOUS QUERY {_q(name)} ON {db} "
                          f"RESAMPLE EVERY {every} FOR {look_back} BEGIN {select} END"))
    return out


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
    wanted: set[str] = set()
    for rollup in rollups:
        for source in sources:
            for name, statement in continuous_queries(database, source, rollup):
                wanted.add(name)
                current = existing_cqs.get(name)
                if current is not None and _same_query(current, statement):
                    continue
                if current is not None:
                    run(f"DROP CONTINUOUS QUERY {_q(name)} ON {_q(database)}")
                run(statement)
    # A catch-up query of an earlier configuration that is no longer wanted (names that
    # follow our pattern only: other continuous queries on the database are not ours).
    ours = {continuous_queries(database, s, r)[0][0] + "_late" for r in rollups for s in sources}
    for name in sorted((ours & set(existing_cqs)) - wanted):
        run(f"DROP CONTINUOUS QUERY {_q(name)} ON {_q(database)}")
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
