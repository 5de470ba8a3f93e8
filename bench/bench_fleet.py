"""Fleet: N vehicle terminals reporting every 10 s through one edge agent and the ingester.

On a private stack (Mosquitto, InfluxDB), each its own process: one edge agent whose
MQTT link reads `--vehicles` tanker terminals (profile dg-tanker-terminal, each with its
own time in `ts`), one ingester, and the rules engine with the shipped catalogue (the
vehicle rules judge every report against the zones). This process plays the terminals:
every vehicle drives its route (the simulator's vehicle model) and publishes a report
every `--every` seconds, spread evenly over the interval, QoS 1.

It prints, every `--print` seconds, the reports published and stored, and the CPU and
RSS of the edge agent, the ingester, the rules engine and the broker; at the end: every
report counted in InfluxDB (one point per vehicle and time: nothing lost, nothing
twice), the rules engine's inbox depth and evaluation latency (its self-metrics), and
CPU and memory per process. Not part of `make test`.

    .venv/bin/python bench/bench_fleet.py                   # 5,000 vehicles every 10 s, 3 min
    .venv/bin/python bench/bench_fleet.py --vehicles 500 --minutes 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from bench_soak import cpu_s, ingest_metrics, init_database, rss_mb

from application.processes import ProcessGroup
from application.stack import Stack
from simulators.stations import station_payload, station_topic
from simulators.world import World
from urbansense import registry
from urbansense.config import load_gateway
from urbansense.influx import InfluxClient, InfluxError
from urbansense.mqtt import MqttClient, MqttSettings

ROUTES = ("r1", "r2")


def write_gateway(directory: Path, vehicles: int, mqtt_port: int) -> Path:
    """One fleet gateway: an MQTT link with `vehicles` tanker terminals."""
    profiles = registry.families()["vehicle"].profiles_dir
    devices = [{"id": f"vt-{i:05d}", "profile": "dg-tanker-terminal",
                "labels": {"class": "tanker", "route": ROUTES[i % 2], "operator": "bench"}} for i in range(vehicles)]
    cfg = {"gateway": "bench-fleet", "district": "pudong", "profiles_dir": str(profiles),
           "uplink": {"host": "127.0.0.1", "port": mqtt_port},
           "batch": {"max_samples": 500, "max_interval_s": 1.0},
           "links": [{"name": "fleet-mqtt", "transport": "mqtt", "host": "127.0.0.1", "port": mqtt_port,
                      "devices": devices}]}
    path = directory / "bench-fleet.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def rules_metrics(influx: InfluxClient, seconds: float) -> dict[str, float]:
    try:
        for s in influx.query('SELECT max("inbox_depth") AS inbox_peak, last("inbox_depth") AS inbox, '
                              'max("eval_latency_ms") AS latency_max_ms, mean("samples_per_s") AS samples_per_s '
                              f'FROM "urbansense_rules" WHERE time > now() - {int(seconds)}s'):
            for row in s.rows():
                return {k: float(row.get(k) or 0) for k in ("inbox_peak", "inbox", "latency_max_ms", "samples_per_s")}
    except InfluxError:
        pass
    return {}


def stored(influx: InfluxClient, since_ms: int) -> int:
    rows = influx.query(f'SELECT count("speed_kmh") FROM "vehicle" WHERE time >= {since_ms}ms')
    return int(next((row.get("count") for s in rows for row in s.rows()), 0) or 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vehicles", type=int, default=5000)
    ap.add_argument("--every", type=float, default=10.0, help="seconds between a vehicle's reports (default 10)")
    ap.add_argument("--minutes", type=float, default=3.0, help="how long the terminals report (default 3)")
    ap.add_argument("--print", type=float, default=15.0, help="seconds between progress lines")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    run_dir = Path(tempfile.mkdtemp(prefix="urbansense-fleet-"))
    stack = Stack(run_dir / "stack")
    stack.up()
    procs: ProcessGroup | None = None
    terminals: MqttClient | None = None
    try:
        init_database(stack)
        gw_dir = run_dir / "gateways"
        gw_dir.mkdir()
        path = write_gateway(gw_dir, args.vehicles, stack.mqtt_port)
        loaded = load_gateway(path)
        t0 = int(time.time() * 1000)
        world = World([loaded], seed=1, epoch_ms=t0)
        devices = list(world.devices.values())
        procs = ProcessGroup(run_dir / "logs", stack.env())
        procs.start("ingest", "ingest", "run", "--instance", "fleet-ingest", "--metrics-interval", "5")
        procs.start("rules", "rules", "run", "--gateways", str(gw_dir), "--instance", "fleet-rules")
        procs.start("edge", "edge", "run", "--config", str(path))
        influx = InfluxClient(stack.influx_url, "city", timeout_s=30)
        time.sleep(5.0)  # the agent subscribes to its 5,000 topics
        terminals = MqttClient(MqttSettings.from_url(stack.mqtt_url), client_id="bench-fleet-terminals")
        terminals.connect()

        def pids() -> dict[str, int]:
            assert procs is not None
            return {**{n: p.pid for n, p in procs.procs.items()},
                    **{n: s.pid for n, s in stack.services().items()}}

        print(f"fleet: {args.vehicles:,} vehicles every {args.every:g} s "
              f"({args.vehicles / args.every:,.0f} reports/s) for {args.minutes:g} min; logs in {procs.log_dir}",
              flush=True)
        start = time.time()
        start_ms = int(start * 1000)
        end = start + args.minutes * 60
        gap = args.every / args.vehicles
        published = 0
        cpu0 = {n: cpu_s(p) for n, p in pids().items()}
        rss_peak: dict[str, float] = {}
        next_print = start + args.print
        k = 0
        while time.time() < end:
            due = start + k * gap
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            dev = devices[k % len(devices)]
            t = int(due * 1000)
            terminals.publish(station_topic(dev.profile, dev.id), station_payload(dev.profile, t, dev.engineering(t)),
                              qos=1)
            published += 1
            k += 1
            if time.time() >= next_print:
                next_print += args.print
                for n, p in pids().items():
                    rss_peak[n] = max(rss_peak.get(n, 0.0), rss_mb(p))
                dead = procs.check()
                if dead:
                    raise RuntimeError(f"component exited: {dead}")
                now_stored = stored(influx, start_ms)
                print(f"t={time.time() - start:5.0f}s published {published:8,d}  stored {now_stored:8,d}  "
                      f"RSS {json.dumps({n: round(v) for n, v in rss_peak.items()})}", flush=True)
        wall = time.time() - start
        cpu1 = {n: cpu_s(p) for n, p in pids().items()}
        # everything published must land: wait for the edge's batches and the ingester
        deadline = time.time() + 120
        got = stored(influx, start_ms)
        while got < published and time.time() < deadline:
            time.sleep(2.0)
            got = stored(influx, start_ms)
        for n, p in pids().items():
            rss_peak[n] = max(rss_peak.get(n, 0.0), rss_mb(p))
        rules = rules_metrics(influx, wall + 60)
        result: dict[str, Any] = {
            "vehicles": args.vehicles, "every_s": args.every, "minutes": args.minutes,
            "published": published, "stored": got, "lost": published - got,
            "reports_per_s": round(published / wall, 1),
            "cpu_pct": {n: round(100 * (cpu1[n] - cpu0[n]) / wall, 1) for n in cpu1},
            "rss_peak_mb": {n: round(v, 1) for n, v in rss_peak.items()},
            "rules": rules, "ingest": ingest_metrics(influx),
        }
        print(f"\npublished {published:,} reports ({result['reports_per_s']:,.0f}/s), stored {got:,}: "
              f"{'nothing lost' if got == published else f'{published - got:,} MISSING'}")
        print(f"rules engine: inbox peak {rules.get('inbox_peak', float('nan')):.0f} messages, "
              f"evaluation latency max {rules.get('latency_max_ms', float('nan')):.0f} ms, "
              f"{rules.get('samples_per_s', float('nan')):,.0f} samples/s")
        print("\nprocess        CPU % of one core   RSS peak MB")
        for n in sorted(result["cpu_pct"]):
            print(f"{n:14} {result['cpu_pct'][n]:17.1f} {result['rss_peak_mb'].get(n, float('nan')):13.1f}")
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
        influx.close()
        return 0 if got == published else 1
    finally:
        if terminals is not None:
            terminals.close()
        if procs is not None:
            procs.stop_all(timeout_s=35.0)
        stack.down()


if __name__ == "__main__":
    sys.exit(main())
