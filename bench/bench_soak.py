"""Soak: the whole pipeline on a district for N minutes at a target reading rate.

Runs the `district-scale` scenario (600 Modbus devices on 13 TCP ports, 40 MQTT air
stations; 5 gateways) in real time on a private stack: the simulators, one edge agent per
gateway, two ingesters sharing the stream, the rules engine, Mosquitto and InfluxDB, each
its own process. The Modbus poll period is set so that the devices would give `--rate`
readings/s (600 devices at 10,000/s: every 60 ms); the TCP links pipeline each device's
reads (`pipeline: true`; `--no-pipeline` to compare) with a `--timeout` of 0.25 s, and
poll the devices due within `--coalesce-ms` (default 8) of each other in one exchange.

Every `--every` seconds it prints the readings/s on the wire (a QoS 0 watcher counting
samples), the ingesters' points/s and queue depths (their self-metrics), the edges'
store-and-forward depths (their retained status), the broker's stored messages ($SYS),
and the RSS and CPU of every process. At the end: start RSS (after `--warmup`) and end
RSS of every process, the growth of each queue, and readings/s stored in InfluxDB over
the measured window. Not part of `make test`.

    .venv/bin/python bench/bench_soak.py                    # 30 min at 10,000 readings/s
    .venv/bin/python bench/bench_soak.py --minutes 4        # a short soak
    .venv/bin/python bench/bench_soak.py --minutes 4 --rate 2000 --json soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from application.district import port_offset, tune_gateway_configs, wait_ports
from application.processes import ProcessGroup
from application.stack import Stack
from ingest.metrics import DECODE_PATHS
from simulators.scenario import load_scenario
from urbansense import topics
from urbansense.clock import ScenarioClock
from urbansense.influx import InfluxClient, InfluxError
from urbansense.mqtt import MqttClient, MqttSettings

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS
    except (OSError, IndexError):
        return float("nan")


@dataclass
class Monitor:
    """What the pipeline says about itself, from the broker."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    wire_samples: int = 0
    wire_by_gateway: dict[str, int] = field(default_factory=dict)
    wal_depth: dict[str, float] = field(default_factory=dict)
    edge_stats: dict[str, dict[str, float]] = field(default_factory=dict)
    broker: dict[str, str] = field(default_factory=dict)

    def on_telemetry(self, msg: Any) -> None:
        # Counting without decoding keeps the watcher's own CPU out of the numbers.
        n = bytes(msg.payload).count(b'"dev"')
        gw = msg.topic.split("/")[2] if msg.topic.count("/") >= 3 else "?"
        with self.lock:
            self.wire_samples += n
            self.wire_by_gateway[gw] = self.wire_by_gateway.get(gw, 0) + n

    def on_status(self, msg: Any) -> None:
        try:
            body = orjson.loads(msg.payload)
            gw = str(body.get("gw") or msg.topic.split("/")[2])
            stats = body.get("stats", {})
            depth = float(stats.get("wal_depth", float("nan")))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError, IndexError):
            return
        with self.lock:
            self.wal_depth[gw] = depth
            if stats:
                self.edge_stats[gw] = stats

    def on_sys(self, msg: Any) -> None:
        with self.lock:
            self.broker[msg.topic.removeprefix("$SYS/broker/")] = bytes(msg.payload).decode(errors="replace")


def ingest_metrics(influx: InfluxClient) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    try:
        paths = ", ".join(f'last("decoded_{p}") AS "decoded_{p}"' for p in DECODE_PATHS)
        for s in influx.query('SELECT last("queue_depth") AS q, last("points_per_s") AS r, last("points_total") '
                              f'AS n, {paths} FROM "urbansense_ingest" WHERE time > now() - 1m GROUP BY "instance"'):
            for row in s.rows():
                out[s.tags.get("instance", "?")] = {"queue_depth": float(row.get("q") or 0),
                                                    "points_per_s": float(row.get("r") or 0),
                                                    "points_total": float(row.get("n") or 0),
                                                    **{f"decoded_{p}": float(row.get(f"decoded_{p}") or 0)
                                                       for p in DECODE_PATHS}}
    except InfluxError:
        pass
    return out


def rules_inbox(influx: InfluxClient, every_s: float) -> dict[str, float]:
    """The rules engine's inbox (messages received, not yet evaluated): last and peak over
    the last interval (its self-metrics, every 10 s)."""
    try:
        for s in influx.query(f'SELECT last("inbox_depth") AS q, max("inbox_depth") AS peak FROM "urbansense_rules" '
                              f"WHERE time > now() - {max(10, int(every_s))}s"):
            for row in s.rows():
                return {"inbox_depth": float(row.get("q") or 0), "inbox_peak": float(row.get("peak") or 0)}
    except InfluxError:
        pass
    return {}


def init_database(stack: Stack) -> None:
    """`urbansense ingest init` on the stack's InfluxDB (database, retention, roll-ups)."""
    init = subprocess.run([sys.executable, "-m", "application.cli", "ingest", "init", "--influx",
                           stack.influx_url], capture_output=True, text=True, timeout=60)
    if init.returncode != 0:
        raise RuntimeError(init.stderr or init.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="soak length after the warm-up (default 30)")
    ap.add_argument("--rate", type=float, default=10_000.0, help="target readings/s (default 10,000)")
    ap.add_argument("--scenario", default="district-scale")
    # Two minutes: the edges' poll-latency windows (the last 20,000 polls) fill up in that
    # time, and their RSS is flat from then on; growth after it is what a soak looks for.
    ap.add_argument("--warmup", type=float, default=120.0,
                    help="seconds before the start RSS is taken (default 120)")
    ap.add_argument("--every", type=float, default=30.0, help="seconds between progress lines")
    ap.add_argument("--ingesters", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=0.25,
                    help="Modbus time-out per request on every link, s (default 0.25)")
    ap.add_argument("--no-pipeline", action="store_true",
                    help="read each device one request at a time (default: the links pipeline a "
                         "device's reads, `pipeline: true`)")
    ap.add_argument("--coalesce-ms", type=float, default=8.0,
                    help="pipelined links poll the devices due within this many ms in one exchange "
                         "(link `coalesce_ms`, default 8; 0: one device per exchange)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the run folder (logs) afterwards")
    args = ap.parse_args()

    probe = load_scenario(args.scenario)
    total_s = args.warmup + args.minutes * 60
    if total_s > probe.duration_s:
        ap.error(f"{args.scenario} lasts {probe.duration_s / 60:.0f} min of event time in real time; "
                 f"ask for at most {(probe.duration_s - args.warmup) / 60:.0f} minutes")
    ports = sorted({link.port for g in probe.loaded for link in g.config.links if link.on_tcp_port})
    offset = port_offset(ports)
    tcp_ports = sorted({link.port for g in probe.loaded for link in g.config.links if link.transport == "tcp"})
    scenario = load_scenario(args.scenario, port_offset=offset)
    modbus = scenario.device_count() - scenario.device_count("mqtt")
    poll_s = max(0.02, modbus / args.rate)

    run_dir = Path(tempfile.mkdtemp(prefix="urbansense-soak-"))
    stack = Stack(run_dir / "stack")
    stack.up()
    procs: ProcessGroup | None = None
    watcher: MqttClient | None = None
    try:
        init_database(stack)
        gw_dir = run_dir / "gateways"
        paths = scenario.write_gateway_configs(gw_dir, mqtt_port=stack.mqtt_port)
        # A silent device holds its whole link (one transaction at a time) for the time-out:
        # with the scenario's dropout device (wp-1077, 20 % of polls) a 1 s time-out cost
        # its 50 link neighbours ~5 % of their 60-ms cycles. Answers on loopback take
        # ~6 ms at p99, so --timeout (default 0.25 s) is still 40 times that.
        tune_gateway_configs(paths, poll_s=poll_s, link_timeout_s=args.timeout)
        for path in paths:
            cfg = yaml.safe_load(path.read_text())
            cfg["polling"]["status_interval_s"] = 5.0  # the WAL depth, often enough to see a trend
            for link in cfg["links"]:
                if link.get("transport", "tcp") == "tcp":
                    link["pipeline"] = not args.no_pipeline
                    link["coalesce_ms"] = 0.0 if args.no_pipeline else args.coalesce_ms
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        startup_s = 8.0
        now = int(time.time() * 1000)
        clock = ScenarioClock(now + int(startup_s * 1000), now + int(startup_s * 1000), 1.0)
        env = {**stack.env(), "URBANSENSE_CLOCK": clock.to_env()}
        procs = ProcessGroup(run_dir / "logs", env)

        mon = Monitor()
        watcher = MqttClient(MqttSettings.from_url(stack.mqtt_url), client_id=f"soak-watch-{os.getpid()}")
        watcher.subscribe(topics.ALL_TELEMETRY, mon.on_telemetry, qos=0)
        watcher.subscribe(topics.ALL_STATUS, mon.on_status, qos=0)
        watcher.subscribe("$SYS/broker/store/messages/#", mon.on_sys, qos=0)
        watcher.subscribe("$SYS/broker/clients/connected", mon.on_sys, qos=0)
        watcher.connect()
        influx = InfluxClient(stack.influx_url, "city", timeout_s=30)

        for i in range(args.ingesters):
            procs.start(f"ingest-{i + 1}", "ingest", "run", "--instance", f"soak-ingest-{i + 1}",
                        "--metrics-interval", "5")
        procs.start("rules", "rules", "run", "--gateways", str(gw_dir), "--instance", "soak-rules")
        procs.start("sim", "sim", "run", "--scenario", str(scenario.path), "--speed", "1", "--seed", "1",
                    "--port-offset", str(offset))
        wait_ports([p + offset for p in tcp_ports], procs)
        time.sleep(max(0.0, clock.wall_s_for(clock.origin_event_ms) - time.time()))
        for path in paths:
            procs.start(f"edge-{path.stem}", "edge", "run", "--config", str(path))
        print(f"soak: {scenario.name}, {modbus} Modbus devices polled every {poll_s * 1000:.0f} ms "
              f"(target {args.rate:,.0f} readings/s) + {scenario.device_count('mqtt')} MQTT stations; "
              f"{args.ingesters} ingesters; {args.minutes:g} min after {args.warmup:g} s warm-up; "
              f"logs in {procs.log_dir}", flush=True)

        def pids() -> dict[str, int]:
            assert procs is not None
            out = {n: p.pid for n, p in procs.procs.items()}
            out.update({n: s.pid for n, s in stack.services().items()})
            return out

        t_start = time.time()
        samples: list[dict[str, Any]] = []
        first: dict[str, Any] | None = None
        last_wire, last_t = 0, time.monotonic()
        cpu_prev = {n: cpu_s(p) for n, p in pids().items()}
        next_at = t_start + min(args.every, args.warmup)
        while not samples or samples[-1]["t_s"] < total_s - 1:
            dead = procs.check()
            if dead:
                raise RuntimeError(f"component exited: {dead}\n" + "\n".join(procs.log_tail(n.split(" ")[0])
                                                                             for n in dead))
            if time.time() < next_at:
                time.sleep(0.5)
                continue
            next_at = min(next_at + args.every, t_start + total_s)
            now_m = time.monotonic()
            with mon.lock:
                wire, wal, broker = mon.wire_samples, dict(mon.wal_depth), dict(mon.broker)
                by_gw = dict(mon.wire_by_gateway)
            cpu_now = {n: cpu_s(p) for n, p in pids().items()}
            dt = now_m - last_t
            snap: dict[str, Any] = {
                "t_s": round(time.time() - t_start, 1),
                "wire_readings_per_s": round((wire - last_wire) / dt, 1),
                "ingest": ingest_metrics(influx),
                "rules": rules_inbox(influx, args.every),
                "edge_wal_depth": wal,
                "wire_readings_by_gateway": by_gw,
                "broker_stored_messages": broker.get("store/messages/count"),
                "rss_mb": {n: round(rss_mb(p), 1) for n, p in pids().items()},
                "cpu_pct": {n: round(100 * (cpu_now[n] - cpu_prev.get(n, cpu_now[n])) / dt, 1) for n in cpu_now},
            }
            last_wire, last_t, cpu_prev = wire, now_m, cpu_now
            samples.append(snap)
            if first is None and snap["t_s"] >= args.warmup - 1:
                first = snap
            iq = sum(v["queue_depth"] for v in snap["ingest"].values())
            ir = sum(v["points_per_s"] for v in snap["ingest"].values())
            print(f"t={snap['t_s']:6.0f}s wire {snap['wire_readings_per_s']:8.0f}/s  ingest {ir:8.0f}/s "
                  f"queue {iq:5.0f}  wal {sum(wal.values()):6.0f}  broker stored {snap['broker_stored_messages']}  "
                  f"rules inbox {snap['rules'].get('inbox_depth', float('nan')):4.0f} "
                  f"(peak {snap['rules'].get('inbox_peak', float('nan')):4.0f})  "
                  f"RSS {sum(snap['rss_mb'].values()):6.0f} MB  CPU {sum(snap['cpu_pct'].values()):4.0f} %",
                  flush=True)
        for name in [n for n in procs.procs if n.startswith("edge-")] + ["sim"]:
            procs.stop(name)
        first = first or samples[0]
        end = samples[-1]
        # Readings written by the ingesters (their own cumulative counters) between the
        # first and the last snapshot of the measured window.
        stored = int(sum(v["points_total"] for v in end["ingest"].values())
                     - sum(v["points_total"] for v in first["ingest"].values()))
        window = max(1.0, end["t_s"] - first["t_s"])
        measured = [s for s in samples if s["t_s"] > first["t_s"]] or [end]
        result = {
            "scenario": scenario.name, "modbus_devices": modbus, "poll_ms": round(poll_s * 1000, 1),
            "target_readings_per_s": args.rate, "pipeline": not args.no_pipeline, "timeout_s": args.timeout,
            "coalesce_ms": 0.0 if args.no_pipeline else args.coalesce_ms,
            "minutes": args.minutes,
            "warmup_s": args.warmup,
            "ingested_readings_per_s": round(stored / window, 1), "ingested_readings": stored,
            "wire_readings_per_s_mean": round(sum(s["wire_readings_per_s"] for s in measured) / len(measured), 1),
            "rss_start_mb": first["rss_mb"], "rss_end_mb": end["rss_mb"],
            "queues_start": {"ingest": first["ingest"], "edge_wal": first["edge_wal_depth"],
                             "broker_stored": first["broker_stored_messages"], "rules": first["rules"]},
            "queues_end": {"ingest": end["ingest"], "edge_wal": end["edge_wal_depth"],
                           "broker_stored": end["broker_stored_messages"], "rules": end["rules"]},
            "rules_inbox_peak": max((s["rules"].get("inbox_peak", 0.0) for s in measured), default=0.0),
            "samples": samples,
        }
        print("\nprocess              RSS start MB   RSS end MB   growth    CPU % (last interval)")
        for n in sorted(end["rss_mb"]):
            a, b = first["rss_mb"].get(n, float("nan")), end["rss_mb"][n]
            print(f"{n:20} {a:12.1f} {b:12.1f} {b - a:+8.1f}    {end['cpu_pct'].get(n, 0):6.1f}")
        print(f"\nreadings/s written to InfluxDB by the ingesters over the {window / 60:.1f} min window: "
              f"{result['ingested_readings_per_s']:,.0f} (target {args.rate:,.0f}); on the wire (mean of "
              f"intervals): {result['wire_readings_per_s_mean']:,.0f}")
        print(f"queues at start -> end: ingest {json.dumps(result['queues_start']['ingest'])} -> "
              f"{json.dumps(result['queues_end']['ingest'])}")
        print(f"  edge WAL depth {json.dumps(result['queues_start']['edge_wal'])} -> "
              f"{json.dumps(result['queues_end']['edge_wal'])}")
        print(f"  broker stored messages {result['queues_start']['broker_stored']} -> "
              f"{result['queues_end']['broker_stored']}")
        print(f"  rules inbox {json.dumps(result['queues_start']['rules'])} -> "
              f"{json.dumps(result['queues_end']['rules'])}, peak over the window {result['rules_inbox_peak']:.0f}")
        decoded = {p: sum(v.get(f"decoded_{p}", 0.0) for v in end["ingest"].values()) for p in DECODE_PATHS}
        result["decoded_messages"] = decoded
        total = sum(decoded.values()) or 1.0
        print("  telemetry messages by decode path: " + ", ".join(
            f"{p} {n:,.0f} ({100 * n / total:.0f} %)" for p, n in decoded.items()))
        with mon.lock:
            edge_stats = dict(mon.edge_stats)
        result["edge_stats_end"] = edge_stats
        print("\ngateway          readings/s on the wire   polls   poll errors   jitter p99 ms   latency p99 ms")
        for gw in sorted(end["wire_readings_by_gateway"]):
            rate = (end["wire_readings_by_gateway"][gw] - first["wire_readings_by_gateway"].get(gw, 0)) / window
            st = edge_stats.get(gw, {})
            errors = sum(v for k, v in st.items() if k.startswith("errors_"))
            print(f"{gw:16} {rate:22,.0f} {st.get('polls', 0):9.0f} {errors:11.0f} "
                  f"{st.get('poll_jitter_p99_ms', 0):15.1f} {st.get('poll_latency_p99_ms', 0):16.1f}")
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
        influx.close()
        return 0
    finally:
        if procs is not None:
            procs.stop_all(timeout_s=35.0)
        if watcher is not None:
            watcher.close()
        stack.down()
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
