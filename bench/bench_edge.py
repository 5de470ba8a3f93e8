"""Edge agent benchmark: one agent, N devices x 10 fields at 1 Hz over Modbus TCP.

Prints the agent's CPU (share of one core), RSS, p99 poll jitter, and Modbus requests per
poll cycle against one request per field. The simulated devices (pymodbus servers) and
the MQTT collector run in this process; the agent runs as its own process, so only its
own CPU and memory are measured.

    .venv/bin/python bench/bench_edge.py                 # 500 devices, 60 s measured
    .venv/bin/python bench/bench_edge.py --devices 50 --duration 20
    .venv/bin/python bench/bench_edge.py --devices 200 --fields 6 --duration 30   # issue 20's workload
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from application.stack import Stack, free_port  # noqa: E402
from simulators.device import DeviceTables  # noqa: E402
from simulators.modbus_server import ModbusEndpoint, ThreadedModbusServer  # noqa: E402
from urbansense import codec  # noqa: E402
from urbansense.config import load_profile  # noqa: E402
from urbansense.mqtt import MqttClient, MqttSettings  # noqa: E402

#: Ten fields in two tables, the layout of a typical station RTU: nine holding fields
#: (two word-swapped floats, bits packed in one status register) and one input counter.
BENCH_PROFILE: dict[str, Any] = {
    "profile": "bench-station", "measurement": "water", "protocol": "modbus", "order": "ABCD",
    "fields": [
        {"name": "pressure_mpa", "address": 0, "type": "float32", "order": "CDAB", "sim": {"initial": 0.31}},
        {"name": "flow_m3h", "address": 2, "type": "float32", "order": "CDAB", "sim": {"initial": 120.5}},
        {"name": "temp_c", "address": 4, "type": "int16", "scale": 0.1, "sim": {"initial": 12.3}},
        {"name": "level_m", "address": 5, "type": "uint16", "scale": 0.01, "sim": {"initial": 3.2}},
        {"name": "pump_alarm", "address": 6, "type": "bit", "bit": 0},
        {"name": "door_open", "address": 6, "type": "bit", "bit": 1},
        {"name": "mode", "address": 7, "type": "uint16", "enum": {0: "auto", 1: "manual"}, "sim": {"initial": "auto"}},
        {"name": "runtime_h", "address": 8, "type": "uint32", "sim": {"initial": 12345}},
        {"name": "setpoint_pct", "address": 10, "type": "uint16", "scale": 0.1, "writable": True,
         "min": 0, "max": 100, "sim": {"initial": 50}},
        {"name": "volume_m3", "table": "input", "address": 0, "type": "uint32", "sim": {"initial": 1048576}},
    ],
}


def _cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _cpu_seconds(pid: int) -> float:
    """CPU seconds of a process: the scheduler's nanosecond run time of its threads
    (/proc/PID/task/*/schedstat), which /proc/PID/stat reports in 10-ms ticks (a 4 %
    step on a 60-s run of the issue-20 workload)."""
    try:
        return sum(int((task / "schedstat").read_text().split()[0])
                   for task in Path(f"/proc/{pid}/task").iterdir()) / 1e9
    except (OSError, ValueError):  # a thread ended while being read, or no schedstat
        return sum(_cpu_split(pid))


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=500)
    ap.add_argument("--endpoints", type=int, default=10, help="Modbus TCP endpoints (devices spread evenly)")
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    ap.add_argument("--interval", type=float, default=1.0, help="poll interval per device, s (default 1)")
    ap.add_argument("--pipeline", action="store_true", help="links send a device's reads back to back")
    ap.add_argument("--coalesce-ms", type=float, default=0.0,
                    help="with --pipeline: devices due within this many ms are polled in one exchange "
                         "(link coalesce_ms; default 0: one device per exchange)")
    ap.add_argument("--fields", type=int, default=10, choices=range(1, 11), metavar="1..10",
                    help="fields per device: the profile's first N (issue 20's workload: 6, one read)")
    ap.add_argument("--commit-interval-s", type=float, default=None,
                    help="the log's group-commit interval (wal commit_interval_s; default: the agent's)")
    ap.add_argument("--pin", action="store_true",
                    help="the agent on the last core, everything else (devices, broker, collector) on the others")
    ap.add_argument("--status-interval-s", type=float, default=30.0,
                    help="the agent's status message period (polling.status_interval_s; default 30, the "
                         "agent's own): the jitter figures come from the first status after the window")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    BENCH_PROFILE["fields"] = BENCH_PROFILE["fields"][:args.fields]

    tmp = Path(tempfile.mkdtemp(prefix="bench-edge-"))
    stack = Stack(tmp / "stack")
    stack.start("mosquitto")
    mqtt_url = stack.mqtt_url
    (tmp / "profiles").mkdir()
    (tmp / "profiles" / "bench-station.yaml").write_text(yaml.safe_dump(BENCH_PROFILE, sort_keys=False))
    profile = load_profile(tmp / "profiles" / "bench-station.yaml")
    per = -(-args.devices // args.endpoints)
    endpoints, links, n = [], [], 0
    for e in range(args.endpoints):
        port = free_port()
        units: dict[int, DeviceTables] = {}
        devs = []
        for u in range(1, per + 1):
            if n >= args.devices:
                break
            units[u] = DeviceTables(profile)
            devs.append({"id": f"st-{n:04d}", "profile": "bench-station", "unit": u})
            n += 1
        if not units:
            break
        endpoints.append(ModbusEndpoint("127.0.0.1", port, units))
        links.append({"name": f"ep-{e:02d}", "host": "127.0.0.1", "port": port, "timeout_s": 1.0,
                      "pipeline": args.pipeline, "coalesce_ms": args.coalesce_ms, "devices": devs})
    metrics_port = free_port()
    cfg = {"gateway": "bench-gw", "district": "bench", "poll_interval_s": args.interval,
           "profiles_dir": str(tmp / "profiles"),
           "batch": {"max_samples": 500, "max_interval_s": 1.0},
           "polling": {"status_interval_s": args.status_interval_s},
           "metrics": {"port": metrics_port}, "links": links}
    if args.commit_interval_s is not None:
        cfg["wal"] = {"commit_interval_s": args.commit_interval_s}
    gw_path = tmp / "bench-gw.yaml"
    gw_path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    server = ThreadedModbusServer(endpoints)
    server.start()
    inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
    collector = MqttClient(MqttSettings.from_url(mqtt_url), client_id=f"bench-{os.getpid()}")
    collector.subscribe("city/bench/bench-gw/#", lambda m: inbox.put((m.topic, bytes(m.payload))), qos=1)
    collector.connect()
    log = open(tmp / "agent.log", "wb")  # noqa: SIM115
    agent = subprocess.Popen([sys.executable, "-m", "application.cli", "edge", "run", "--config", str(gw_path),
                              "--mqtt", mqtt_url, "--wal", str(tmp / "edge.wal"), "--log-level", "WARNING"],
                             cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    samples = bad = 0
    status: dict[str, Any] = {}
    seen: dict[tuple[str, int], int] = {}

    def pump(seconds: float) -> None:
        nonlocal samples, bad, status
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                topic, payload = inbox.get(timeout=left)
            except queue.Empty:
                return
            if topic.endswith("/telemetry"):
                batch = codec.decode_batch(payload)
                samples += len(batch.samples)
                for s in batch.samples:
                    seen[(s.dev, s.t)] = seen.get((s.dev, s.t), 0) + 1
                bad += sum(1 for s in batch.samples if s.q != "good")
            elif topic.endswith("/status"):
                status = json.loads(payload)

    try:
        pump(args.warmup)
        cpu0, t0 = _cpu_seconds(agent.pid), time.monotonic()
        _user0, sys0 = _cpu_split(agent.pid)
        req0 = sum(ep.context.requests for ep in endpoints)
        samples = bad = 0
        rss_max = 0
        end = t0 + args.duration
        while time.monotonic() < end:
            pump(min(1.0, end - time.monotonic()))
            rss_max = max(rss_max, _status_kb(agent.pid, "VmRSS"))
        elapsed = time.monotonic() - t0
        cpu = (_cpu_seconds(agent.pid) - cpu0) / elapsed
        _user1, sys1 = _cpu_split(agent.pid)
        requests = sum(ep.context.requests for ep in endpoints) - req0
        hwm = _status_kb(agent.pid, "VmHWM")
        measured_samples, measured_bad = samples, bad
        pump(args.status_interval_s + 0.5)  # one more status message, covering the measured window
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
        collector.close()
        server.stop()
        stack.down()
        log.close()
    stats = status.get("stats", {})
    fields = len(BENCH_PROFILE["fields"])
    per_cycle = requests / elapsed * args.interval
    result = {
        "devices": n, "fields_per_device": fields, "endpoints": len(endpoints), "measured_s": round(elapsed, 1),
        "interval_s": args.interval, "pipeline": args.pipeline, "coalesce_ms": args.coalesce_ms,
        "commit_interval_s": args.commit_interval_s, "pinned": args.pin,
        "agent_cpu_share_of_one_core": round(cpu, 3),
        "agent_cpu_us_per_poll": round(1e6 * cpu * args.interval / n, 1),
        "of_which_kernel_us_per_poll": round(1e6 * (sys1 - sys0) / elapsed * args.interval / n, 1),
        "agent_rss_mb": round(rss_max / 1024, 1), "agent_rss_peak_mb": round(hwm / 1024, 1),
        "poll_jitter_p50_ms": stats.get("poll_jitter_p50_ms"), "poll_jitter_p99_ms": stats.get("poll_jitter_p99_ms"),
        "poll_latency_p99_ms": stats.get("poll_latency_p99_ms"),
        "modbus_requests_per_cycle": round(per_cycle, 1), "one_request_per_field": n * fields,
        "reduction_x": round(n * fields / per_cycle, 2) if per_cycle else None,
        "samples_per_s": round(measured_samples / elapsed, 1), "bad_samples": measured_bad,
        "duplicate_samples": sum(v - 1 for v in seen.values()),
        "wal_depth_at_end": stats.get("wal_depth"), "load_avg_1m": round(os.getloadavg()[0], 2),
        "cores": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:30} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
