"""An alert escalated from warning to critical shows once on the dashboards: its warning
entry is closed by the escalation, not left active until the alert resolves."""

from __future__ import annotations

import time

import pytest

from dashboards.builder.alerting import rule_query
from dashboards.builder.catalog import alerts_table
from rules.engine import RulesEngine, alert_lines
from tests.rules.helpers import rule, series
from urbansense.influx import InfluxClient
from urbansense.influxql import ALL, TimeRange, expand

pytestmark = pytest.mark.integration


def _active(influx: InfluxClient, t_from: int, t_to: int) -> list[tuple[str, str]]:
    """(severity, state) of each row the 'Active gas alerts' table shows."""
    query = alerts_table("gas").targets[0]["query"]
    rows: list[tuple[str, str]] = []
    for s in influx.query(expand(query, TimeRange(t_from, t_to), {"district": ALL})):
        rows.extend((s.tags["severity"], r["state"]) for r in s.rows())
    return rows


def _counts(influx: InfluxClient) -> dict[str, int]:
    out = {}
    for severity in ("warning", "critical"):
        res = influx.query(rule_query("gas", severity))
        out[severity] = sum(r["active"] for s in res for r in s.rows())
    return out


def test_escalated_alert_is_active_once_at_its_new_severity(influx_db: InfluxClient) -> None:
    t0 = (int(time.time()) - 600) * 1000
    eng = RulesEngine([rule(id="gas.methane", measurement="gas", metric="methane_lel_pct", threshold=25,
                            critical_threshold=50, clear=20)])
    events = [e for b in series("gas", "md-1", "methane_lel_pct", [10, 30, 40, 55, 60, 30, 10], t0=t0)
              for e in eng.ingest([b])]
    assert [(e.state, e.severity) for e in events] == [
        ("firing", "warning"), ("firing", "critical"), ("resolved", "critical")]
    assert events[1].supersedes == "warning"
    # Up to the escalation: one active row, critical; the warning entry was closed by it
    influx_db.write("\n".join(line for e in events[:2] for line in alert_lines(e)))
    assert _active(influx_db, t0 - 1000, t0 + 120_000) == [("critical", "firing")]
    assert _counts(influx_db) == {"warning": 0, "critical": 1}
    # After it resolves: nothing active
    influx_db.write("\n".join(alert_lines(events[2])))
    assert _active(influx_db, t0 - 1000, t0 + 120_000) == []
    assert _counts(influx_db) == {"warning": 0, "critical": 0}
