"""Gateway fleet benchmark (issue 23): clock health and remote configuration, measured
on real parts: Mosquitto, influxd, the ingester, the rules service with the shipped
system rules, and N edge agents as processes polling simulated Modbus devices.

1. Clock: one agent runs with its wall clock skewed (libfaketime, monotonic clock real).
   Measured from the agents' start: when the `system.gateway_clock` alert fires, when the
   first reading is stored flagged, when its status carries the offset; and the honest
   gateways' alerts and flagged readings (both should be 0).
2. Config push to gateway 0: a config whose devices are all unreachable (rolled back
   within `trial_s`), then one that works (kept). Measured: push to answer, push to
   rollback against trial_s, and readings served by its devices against readings in
   InfluxDB across both changes (lost = served - stored).
3. The receivers' cost of measuring clocks: ClockOffsets.observe per batch.

    .venv/bin/python bench/bench_gateway_fleet.py
    .venv/bin/python bench/bench_gateway_fleet.py --gateways 10 --skew-s 300 --trial-s 20
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import timeit
import uuid
from pathlib import Path
from typing import Any

import orjson
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from application.stack import Stack, free_port  # noqa: E402
from ingest.service import Ingester  # noqa: E402
from rules.service import RulesService, ServiceConfig  # noqa: E402
from simulators.device import DeviceTables  # noqa: E402
from simulators.modbus_server import ModbusEndpoint, ThreadedModbusServer  # noqa: E402
from urbansense import codec  # noqa: E402
from urbansense.clock_offset import ClockOffsets  # noqa: E402
from urbansense.config import load_profile  # noqa: E402
from urbansense.influx import InfluxClient  # noqa: E402
from urbansense.mqtt import MqttClient, MqttSettings  # noqa: E402

#: One read per poll (four registers), so a device's Modbus requests are its readings.
PROFILE: dict[str, Any] = {
    "profile": "bench-meter", "measurement": "water", "protocol": "modbus", "order": "ABCD",
    "fields": [{"name": "pressure_mpa", "address": 0, "type": "float32", "sim": {"initial": 0.31}},
               {"name": "flow_m3h", "address": 2, "type": "float32", "sim": {"initial": 12.5}}],
}
DISTRICT = "fleet"


def _until(cond: Any, timeout_s: float, since: float | None = None, step_s: float = 0.2) -> float | None:
    """Seconds from `since` (default: now) until cond() holds, or None after timeout_s."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if cond():
            return time.monotonic() - (start if since is None else since)
        time.sleep(step_s)
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateways", type=int, default=5)
    ap.add_argument("--devices", type=int, default=5, help="devices per gateway")
    ap.add_argument("--skew-s", type=int, default=-300, help="the skewed gateway's clock offset (default -300)")
    ap.add_argument("--trial-s", type=float, default=10.0, help="remote_config.trial_s (default 10)")
    args = ap.parse_args()
    if shutil.which("faketime") is None:
        print("faketime is not installed: apt-get install -y faketime", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bench-gwfleet-"))
    stack = Stack(tmp / "stack")
    stack.up()
    database = "bench_fleet_" + uuid.uuid4().hex[:8]
    influx = InfluxClient(stack.influx_url, database)
    influx.create_database()
    (tmp / "profiles").mkdir()
    (tmp / "profiles" / "bench-meter.yaml").write_text(yaml.safe_dump(PROFILE, sort_keys=False))
    profile = load_profile(tmp / "profiles" / "bench-meter.yaml")
    endpoints: list[ModbusEndpoint] = []
    configs: dict[str, dict[str, Any]] = {}
    for g in range(args.gateways):
        port = free_port()
        endpoints.append(ModbusEndpoint("127.0.0.1", port, {u: DeviceTables(profile)
                                                            for u in range(1, args.devices + 1)}))
        gw = f"gw-{g:02d}"
        configs[gw] = {"gateway": gw, "district": DISTRICT, "version": "v1", "poll_interval_s": 1.0,
                       "profiles_dir": str(tmp / "profiles"), "batch": {"max_interval_s": 0.5},
                       "polling": {"status_interval_s": 5}, "remote_config": {"trial_s": args.trial_s},
                       "links": [{"name": "plc", "host": "127.0.0.1", "port": port, "timeout_s": 0.5,
                                  "devices": [{"id": f"{gw}-m{u}", "profile": "bench-meter", "unit": u}
                                              for u in range(1, args.devices + 1)]}]}
        (tmp / f"{gw}.yaml").write_text(yaml.safe_dump(configs[gw], sort_keys=False))
    server = ThreadedModbusServer(endpoints)
    server.start()
    rules_dir = tmp / "rules"
    rules_dir.mkdir()
    shutil.copy(REPO / "rules" / "catalog" / "system.yaml", rules_dir)
    ingester = Ingester(MqttSettings.from_url(stack.mqtt_url), stack.influx_url, database=database,
                        instance="bench-ingest")
    rules = RulesService(ServiceConfig(
        rules_path=rules_dir, mqtt=MqttSettings.from_url(stack.mqtt_url), influx_url=stack.influx_url,
        database=database, instance="bench-rules", districts={DISTRICT}, gateways=[], lookback_s=0,
        reload_interval_s=30, metrics_interval_s=30))
    threads = [threading.Thread(target=ingester.run, daemon=True),
               threading.Thread(target=rules.run, args=(3600,), daemon=True)]
    for t in threads:
        t.start()
    alerts: queue.Queue[Any] = queue.Queue()
    results: queue.Queue[dict[str, Any]] = queue.Queue()
    ops = MqttClient(MqttSettings.from_url(stack.mqtt_url), client_id=f"bench-ops-{os.getpid()}")
    ops.subscribe(f"city/alerts/system/{DISTRICT}/+", lambda m: alerts.put(codec.decode_alert(bytes(m.payload))))
    ops.subscribe(f"city/{DISTRICT}/+/config/result", lambda m: results.put(orjson.loads(m.payload)))
    ops.connect()
    ops.wait_subscribed(10)
    _until(lambda: ingester.mqtt.stats.extra.get("subacks", 0) >= 2 and rules.ready.is_set(), 30)
    skewed = f"gw-{args.gateways - 1:02d}"
    procs: list[subprocess.Popen[bytes]] = []
    out: dict[str, Any] = {}
    try:
        started = time.monotonic()
        for gw in configs:
            command = [sys.executable, "-m", "application.cli", "edge", "run", "--config", str(tmp / f"{gw}.yaml"),
                       "--mqtt", stack.mqtt_url, "--wal", str(tmp / f"{gw}.wal"), "--log-level", "WARNING"]
            env = {**os.environ}
            if gw == skewed:
                command = ["faketime", "-f", f"{args.skew_s:+d}s", *command]
                env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
            with open(tmp / f"{gw}.log", "ab") as log:
                # own process group: faketime runs the agent as its child and does not pass signals on
                procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        # 1. clock
        fired: list[Any] = []

        def alert_for_skewed() -> bool:
            while not alerts.empty():
                fired.append(alerts.get())
            return any(e.device == skewed and e.state == "firing" for e in fired)

        def flagged(gw: str) -> int:
            rows = influx.rows(f"SELECT count(quality_reason) FROM water WHERE gateway = '{gw}'")
            return int(rows[0]["count"]) if rows else 0

        out["alert_s"] = _until(alert_for_skewed, 120, started)
        out["flagged_s"] = _until(lambda: flagged(skewed) > 0, 120, started)
        out["status_s"] = _until(lambda: influx.rows(
            f"SELECT clock_offset_s FROM gateway_status WHERE gateway = '{skewed}' AND "
            f"(clock_offset_s > 30 OR clock_offset_s < -30)"), 120, started)
        offset_rows = influx.rows(f"SELECT last(clock_offset_s) FROM gateway_status WHERE gateway = '{skewed}'")
        out["measured_offset_s"] = offset_rows[0]["last"] if offset_rows else None
        alert_for_skewed()
        out["honest_alerts"] = sum(1 for e in fired if e.device != skewed and e.rule == "system.gateway_clock")
        out["honest_flagged"] = sum(flagged(gw) for gw in configs if gw != skewed)
        out["elapsed_clock_s"] = time.monotonic() - started
        # 2. config push to gw-00
        target = "gw-00"
        broken = {**configs[target], "version": "v2-broken",
                  "links": [{**configs[target]["links"][0], "port": free_port()}]}
        good = {**configs[target], "version": "v3", "poll_interval_s": 0.5}

        def push(cfg: dict[str, Any], push_id: str) -> None:
            ops.publish_wait(f"city/{DISTRICT}/{target}/config", orjson.dumps(
                {"id": push_id, "config": yaml.safe_dump(cfg, sort_keys=False), "by": "bench"}))

        def answer(push_id: str, state: str, timeout_s: float) -> float | None:
            t0 = time.monotonic()
            while time.monotonic() - t0 < timeout_s:
                try:
                    got = results.get(timeout=0.5)
                except queue.Empty:
                    continue
                if got.get("id") == push_id and got.get("state") == state:
                    return time.monotonic()
            return None

        t_push = time.monotonic()
        push(broken, "broken")
        t_trial = answer("broken", "trial", 30)
        t_back = answer("broken", "rolled_back", args.trial_s + 30)
        out["trial_answer_ms"] = None if t_trial is None else (t_trial - t_push) * 1000
        out["rollback_after_s"] = None if t_back is None else t_back - t_push
        t_push = time.monotonic()
        push(good, "good")
        answer("good", "trial", 30)
        t_kept = answer("good", "kept", args.trial_s + 30)
        out["kept_after_s"] = None if t_kept is None else t_kept - t_push
        time.sleep(2.0)  # the last polls' batches
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)  # the agent too, not only faketime
        for p in procs:
            p.wait(30)
    served = endpoints[0].context.requests  # one read per poll: each request is a reading
    _until(lambda: ingester.held == 0, 10)
    time.sleep(1.5)  # the ingester's batch delay
    stored_rows = influx.rows("SELECT count(pressure_mpa) FROM water WHERE gateway = 'gw-00'")
    stored = int(stored_rows[0]["count"]) if stored_rows else 0
    out["gw00_served"], out["gw00_stored"], out["gw00_lost"] = served, stored, served - stored
    ingester.stop()
    rules.stop()
    ops.close()
    server.stop()
    stack.down()
    # 3. cost per batch of measuring a clock
    offsets = ClockOffsets(window_s=60, speed=1.0)
    n = 200_000
    per_s = timeit.timeit(lambda: offsets.observe("d", "g", 1_764_190_000_000, 1_764_190_000_040), number=n) / n
    out["observe_us"] = per_s * 1e6

    def fmt(v: float | None, unit: str = "s") -> str:
        return "not seen" if v is None else f"{v:.1f} {unit}"

    print(f"\n{args.gateways} gateways x {args.devices} devices at 1 Hz; {skewed} skewed {args.skew_s:+d} s "
          f"(libfaketime); trial_s {args.trial_s:g}\n")
    print("| what | measured |\n|---|---|")
    print(f"| skewed gateway: system.gateway_clock alert after agents start | {fmt(out['alert_s'])} |")
    print(f"| skewed gateway: first reading stored flagged | {fmt(out['flagged_s'])} |")
    print(f"| skewed gateway: status with its offset in InfluxDB | {fmt(out['status_s'])} "
          f"(offset {out['measured_offset_s']} s) |")
    print(f"| honest gateways: clock alerts, flagged readings | {out['honest_alerts']}, {out['honest_flagged']} |")
    print(f"| push of a config with every device unreachable: trial answer | {fmt(out['trial_answer_ms'], 'ms')} |")
    print(f"| same: rolled back after the push | {fmt(out['rollback_after_s'])} (trial_s {args.trial_s:g}) |")
    print(f"| push of a working config: kept after the push | {fmt(out['kept_after_s'])} |")
    print(f"| gw-00 readings served / stored / lost across both pushes | {out['gw00_served']} / "
          f"{out['gw00_stored']} / {out['gw00_lost']} |")
    print(f"| ClockOffsets.observe per batch | {out['observe_us']:.2f} us |")
    return 0 if out["gw00_lost"] == 0 and out["alert_s"] is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
