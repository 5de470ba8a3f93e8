"""Dashboard load time: every panel query of each dashboard against a district-sized
InfluxDB, as Grafana would send them on opening the dashboard (variables = All).

Fills a private InfluxDB (the stack runner) with the `district-scale` scenario (Xuhui,
640 devices) played offline for `--hours` of event time at `--step` seconds, writes the
1 h roll-ups with the ingester's own statements, then times each dashboard's queries (telemetry only: alert, AQI and
self-metric panels run but find nothing)
(sequentially: an upper bound of Grafana's parallel load) and, separately, what a
30-day panel would cost on raw data against the roll-up it reads.

    .venv/bin/python bench/bench_dashboards.py                  # 2 h at 10 s
    .venv/bin/python bench/bench_dashboards.py --hours 6 --step 15
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from application.stack import Stack  # noqa: E402
from dashboards.builder.checks import has_values, targets  # noqa: E402
from dashboards.builder.provisioning import load_dashboards  # noqa: E402
from ingest.bootstrap import ROLLUPS, continuous_query, init_database  # noqa: E402
from ingest.points import batch_lines  # noqa: E402
from simulators.scenario import load_scenario  # noqa: E402
from urbansense.identifiers import MEASUREMENTS  # noqa: E402
from urbansense.influx import InfluxClient  # noqa: E402
from urbansense.influxql import ALL, TimeRange  # noqa: E402


def fill(influx: InfluxClient, hours: float, step_s: float) -> tuple[int, int, int]:
    init_database(influx, influx.database)
    scenario = load_scenario("district-scale")
    end = int(time.time() * 1000) - 5_000
    start = end - int(hours * 3_600_000)
    steps = int(hours * 3600 / step_s)
    lines: list[str] = []
    points = 0
    for n, tick in enumerate(scenario.play_offline(1, start, step_s=step_s)):
        for batch in tick.batches:
            lines += batch_lines(batch)
        if len(lines) >= 20_000:
            influx.write("\n".join(lines))
            points += len(lines)
            lines = []
        if n + 1 >= steps:
            break
    if lines:
        influx.write("\n".join(lines))
        points += len(lines)
    rollup = next(r for r in ROLLUPS if r.retention_policy == "rollup_1h")
    for source in MEASUREMENTS:
        _name, statement = continuous_query(influx.database, source, rollup)
        select = statement.split(" BEGIN ", 1)[1].rsplit(" END", 1)[0]
        head, group = select.split(" GROUP BY ", 1)
        influx.query(f"{head} WHERE time > now() - 2d GROUP BY {group}")
    return start, end, points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=2.0, help="event time to fill (default 2)")
    ap.add_argument("--step", type=float, default=10.0, help="poll period in s (default 10)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per dashboard (default 3)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp) / "stack")
        stack.start("influxd")
        try:
            influx = InfluxClient(stack.influx_url, "bench_dash", timeout_s=120)
            t0 = time.perf_counter()
            start, end, points = fill(influx, args.hours, args.step)
            print(f"filled {points} points ({args.hours} h of district-scale at {args.step} s) "
                  f"in {time.perf_counter() - t0:.1f} s")
            window = TimeRange(start, end)
            variables = {"district": ALL, "device": ALL, "gateway": ALL}
            print(f"\n{'dashboard':28} {'queries':>7} {'median s':>9} {'max s':>7}  slowest panel")
            for name, dash in load_dashboards().items():
                ts = targets(dash)
                runs = []
                empty: set[str] = set()
                slowest = ("", 0.0)
                for _ in range(args.repeat):
                    began = time.perf_counter()
                    for t in ts:
                        q0 = time.perf_counter()
                        series = influx.query(t.expanded(window, variables))
                        took = time.perf_counter() - q0
                        if took > slowest[1]:
                            slowest = (t.panel, took)
                        if not has_values(series):
                            empty.add(t.name)
                    runs.append(time.perf_counter() - began)
                print(f"{name:28} {len(ts):7} {statistics.median(runs):9.3f} {max(runs):7.3f}  "
                      f"{slowest[0]} ({slowest[1]:.3f} s); {len(empty)} without data")
            # A 30-day panel on raw data against the roll-up it reads.
            raw = ('SELECT min("pressure_mpa"), mean("pressure_mpa"), max("pressure_mpa") FROM "water" '
                   f"WHERE time >= {end - 30 * 86_400_000}ms AND time <= {end}ms GROUP BY time(1h)")
            rolled = ('SELECT min("min_pressure_mpa"), mean("mean_pressure_mpa"), max("max_pressure_mpa") '
                      f'FROM "rollup_1h"."water_1h" WHERE time >= {end - 30 * 86_400_000}ms '
                      f"AND time <= {end}ms GROUP BY time(1h)")
            for label, q in (("raw", raw), ("rollup_1h", rolled)):
                durations: list[float] = []
                for _ in range(args.repeat):
                    q0 = time.perf_counter()
                    influx.query(q)
                    durations.append(time.perf_counter() - q0)
                print(f"30-day water pressure panel from {label:10}: median {statistics.median(durations):.3f} s")
        finally:
            stack.down()


if __name__ == "__main__":
    main()
