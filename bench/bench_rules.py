"""Rules engine benchmark: prints numbers, asserts nothing.

1. Throughput: the full shipped catalog over 5,000 devices (an equal share per family), pinned to
   one core, numpy single-threaded. Batches are built beforehand; the clock runs over
   `RulesEngine.ingest` only ("engine"), and over decode + ingest from JSON bytes
   ("decode+engine").
2. Latency through the real broker: a private Mosquitto + influxd (the stack runner),
   `urbansense rules run` as a child process, 5,000 devices publishing at 1 Hz each in
   500-sample batches; once a second one elevator reports a trapped passenger (critical
   at once). Latency = the alert's arrival at a subscriber minus the moment the batch
   carrying the sample was published (so it includes two broker hops).

    .venv/bin/python bench/bench_rules.py [--devices 5000] [--seconds 60] [--latency-seconds 30]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import contextlib
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from rules.catalog import load_catalog
from rules.engine import RulesEngine
from rules.inventory import InventoryDevice
from urbansense import codec, topics
from urbansense.identifiers import MEASUREMENTS
from urbansense.schema import Sample, TelemetryBatch

DOMAINS = MEASUREMENTS
T0 = 1_764_190_000_000  # 04:46 Shanghai: lamps lit


def inventory(n: int) -> list[InventoryDevice]:
    per = n // len(DOMAINS)
    out = []
    for m in DOMAINS:
        for i in range(per):
            labels = ({"circuit": f"c{i // 10}"} if m == "lighting" else
                      {"warning_level_m": "4.55", "guaranteed_level_m": "5.86", "target_class": "III",
                       "waterbody": "river"} if m == "river" else
                      {"warning_level_m": "4.90"} if m == "sea" else
                      {"background_ngyh": "85", "alarm_ngyh": "200"} if m == "radiation" else
                      {"compartment": ("gas", "power", "water")[i % 3], "high_level_m": "0.8"} if m == "tunnel" else
                      {"hh_pct": "90", "max_temp_c": "45", "relief_kpa": "100", "oel_ppm": "28"} if m == "chemical" else
                      {"class": "tanker", "route": "r1"} if m == "vehicle" else
                      {"alarm_cm": "15", "weir_m": "1.80", "high_level_m": "3.50",
                       "pump_station": f"fl-{i - i % 4 + 3:05d}"} if m == "flood" else {})
            out.append(InventoryDevice("bench", f"gw-{m}-{i // 500}", f"{m[:2]}-{i:05d}", m,
                                       31.2 + (i % 50) * 0.001, 121.5, labels))
    return out


def fields(m: str, i: int, rng: random.Random, trapped: bool = False) -> dict[str, Any]:
    g = rng.gauss
    if m == "water":
        return {"pressure_mpa": 0.32 + 0.002 * g(0, 1), "flow_m3h": 120 + 1.5 * g(0, 1),
                "turbidity_ntu": 0.35 + 0.02 * g(0, 1), "chlorine_mgl": 0.6 + 0.01 * g(0, 1),
                "ph": 7.2 + 0.02 * g(0, 1), "volume_total_m3": 1_000_000 + i}
    if m == "gas":
        if i % 2:
            return {"methane_lel_pct": max(0.0, 0.5 + 0.3 * g(0, 1)), "alarm_level": 0, "sensor_fault": False}
        return {"pressure_kpa": 100 + 0.4 * g(0, 1), "inlet_pressure_kpa": 350 + 1.5 * g(0, 1),
                "temperature_c": 15.0, "valve_open": True, "station_alarm": False}
    if m == "lighting":
        v = 222 + 0.8 * g(0, 1)
        return {"lamp_on": True, "dim_level_pct": 60, "voltage_v": v, "current_a": 90 / (v * 0.95),
                "power_w": 90.0, "lamp_fault": False, "burning_hours": 12000}
    if m == "elevator":
        return {"running": False, "door_open": False, "trapped_passenger": trapped,
                "door_open_while_moving": False, "outside_door_zone": trapped, "floor": 1, "speed_ms": 0.0,
                "load_pct": 0, "fault_code": 12 if trapped else 0}
    if m == "river":
        return {"level_m": round(2.3 + 0.01 * g(0, 1), 3), "flow_m3s": 400 + 40 * g(0, 1),
                "do_mgl": 6.4 + 0.08 * g(0, 1), "codmn_mgl": 3.8 + 0.1 * g(0, 1), "nh3n_mgl": 0.55 + 0.02 * g(0, 1),
                "tp_mgl": 0.14 + 0.004 * g(0, 1), "ph": 7.5 + 0.03 * g(0, 1), "turbidity_ntu": 35 + 2 * g(0, 1),
                "water_temp_c": 18.0, "do_check_pct": 0.5, "codmn_check_pct": -1.0, "nh3n_check_pct": 1.2,
                "tp_check_pct": 0.3}
    if m == "flood":  # rain gauge, low point, outfall, pump station in turn
        kind = i % 4
        if kind == 0:
            return {"rain_total_mm": 1000.0 + i % 7 * 0.1, "rain_rate_mmh": 0.0}
        if kind == 1:
            return {"depth_cm": round(max(0.0, 0.2 * g(0, 1)), 1)}
        if kind == 2:
            return {"cso_level_m": round(0.4 + 0.01 * g(0, 1), 3), "overflowing": False}
        return {"sump_level_m": round(1.3 + 0.005 * g(0, 1), 3), "pump1_run": True, "pump2_run": False,
                "pump3_run": False, "pump1_current_a": 85 + g(0, 1), "pump2_current_a": 0.0, "pump3_current_a": 0.0,
                "pump_faults": 0, "station_flow_m3s": 2.0}
    if m == "radiation":
        return {"dose_ngyh": round(85 * (1 + 0.02 * g(0, 1)), 1)}
    if m == "chemical":  # tank, flammable detector, toxic detector in turn
        kind = i % 3
        if kind == 0:
            return {"level_pct": round(55 + 0.05 * g(0, 1), 2), "temperature_c": round(20 + 0.1 * g(0, 1), 1),
                    "pressure_kpa": round(15 + 0.2 * g(0, 1), 1), "relief_open": False}
        if kind == 1:
            return {"lel_pct": round(max(0.0, 0.3 + 0.2 * g(0, 1)), 1), "alarm_level": 0, "sensor_fault": False}
        return {"toxic_ppm": round(max(0.0, 0.3 + 0.15 * g(0, 1)), 2), "alarm_level": 0, "sensor_fault": False}
    if m == "vehicle":  # on tanker route r1, at 50 km/h
        return {"lat": round(31.24 + 0.0001 * (i % 100), 6), "lon": 121.578, "speed_kmh": round(50 + g(0, 1), 1),
                "heading_deg": 180, "gnss_fix": True, "emergency": False}
    if m == "tunnel":
        return {"o2_pct": round(20.9 + 0.03 * g(0, 1), 2), "ch4_pct_vol": round(max(0.0, 0.01 + 0.004 * g(0, 1)), 3),
                "h2s_ppm": 0.2, "co_ppm": round(1.0 + 0.3 * g(0, 1), 1), "temperature_c": round(22 + 0.1 * g(0, 1), 1),
                "humidity_pct": 72.0, "sump_level_m": 0.15, "fan_run": False, "sump_pump_run": False,
                "door_open": False}
    if m == "sea":  # tide gauge, wave buoy, quality buoy in turn
        kind = i % 3
        if kind == 0:
            return {"level_m": round(2.2 + 0.01 * g(0, 1), 3)}
        if kind == 1:
            return {"wave_height_m": round(0.9 + 0.08 * g(0, 1), 2), "wave_period_s": 5.8}
        return {"chla_ugl": round(4 + 0.3 * g(0, 1), 2), "do_mgl": 7.6 + 0.08 * g(0, 1), "ph": 8.1,
                "water_temp_c": 18.0, "salinity_psu": 24.0}
    return {"pm25_ugm3": round(35 + 3 * g(0, 1)), "pm10_ugm3": round(60 + 5 * g(0, 1)),
            "no2_ugm3": round(40 + 4 * g(0, 1)), "so2_ugm3": round(8 + g(0, 1)), "o3_ugm3": round(70 + 5 * g(0, 1)),
            "co_mgm3": round(0.6 + 0.05 * g(0, 1), 2), "temperature_c": 18.0, "humidity_pct": 65.0,
            "wind_speed_ms": round(3.0 + 0.2 * g(0, 1), 1), "wind_dir_deg": round(60 + 4 * g(0, 1)) % 360,
            "tvoc_ugm3": round(150 + 12 * g(0, 1))}


def tick_batches(inv: list[InventoryDevice], t: int, rng: random.Random, size: int = 500,
                 trapped: str | None = None) -> list[TelemetryBatch]:
    by_gw: dict[str, list[Sample]] = {}
    for i, d in enumerate(inv):
        by_gw.setdefault(d.gateway, []).append(
            Sample(d.device, d.measurement, t, fields(d.measurement, i, rng, d.device == trapped)))
    out = []
    for gw, samples in by_gw.items():
        for k in range(0, len(samples), size):
            out.append(TelemetryBatch(gw, "bench", k, t, samples[k:k + size]))
    return out


def bench_throughput(devices: int, seconds: int) -> None:
    with contextlib.suppress(AttributeError, OSError):  # not on every OS
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    rules = load_catalog()
    inv = inventory(devices)
    rng = random.Random(1)
    ticks = [tick_batches(inv, T0 + s * 1000, rng) for s in range(seconds)]
    payloads = [[codec.encode_batch(b) for b in tick] for tick in ticks]
    n = sum(len(b.samples) for tick in ticks for b in tick)
    print(f"throughput: {len(rules)} rules, {len(inv)} devices, {seconds} s of event time at 1 Hz = {n:,} samples")

    for label, run in (("engine", lambda eng: [eng.ingest(tick) for tick in ticks]),
                       ("decode+engine", lambda eng: [eng.ingest([codec.decode_batch_lenient(p)[0] for p in tick])
                                                      for tick in payloads])):
        best = 0.0
        for _ in range(3):
            eng = RulesEngine(rules, inv)
            eng.ingest(ticks[0])  # first-touch allocations out of the timing
            t = time.perf_counter()
            run(eng)
            dt = time.perf_counter() - t
            best = max(best, n / dt)
        print(f"  {label:14} {best:12,.0f} samples/s (best of 3, one core)")


def bench_latency(devices: int, seconds: int) -> None:
    from application.stack import Stack
    from urbansense.mqtt import MqttClient, MqttSettings

    run_dir = Path(tempfile.mkdtemp(prefix="bench-rules-"))
    stack = Stack(run_dir / "stack")
    stack.up()
    empty = run_dir / "gateways"
    empty.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "application.cli", "rules", "run", "--mqtt", stack.mqtt_url,
                             "--influx", stack.influx_url, "--database", "bench", "--gateways", str(empty),
                             "--lookback", "0", "--instance", "bench-rules"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sent: dict[str, float] = {}
    latencies: list[float] = []
    done = threading.Event()

    def on_alert(msg: Any) -> None:
        ev = codec.decode_alert(msg.payload)
        if ev.rule == "elevator.trapped_passenger" and ev.state == "firing" and ev.device in sent:
            latencies.append((time.monotonic() - sent.pop(ev.device)) * 1000)

    try:
        settings = MqttSettings.from_url(stack.mqtt_url)
        sub = MqttClient(settings, client_id=f"bench-sub-{uuid.uuid4().hex[:6]}")
        sub.subscribe(topics.ALL_ALERTS, on_alert, qos=1)
        sub.connect()
        pub = MqttClient(settings, client_id=f"bench-pub-{uuid.uuid4().hex[:6]}")
        pub.connect()
        time.sleep(3.0)  # the engine connects and subscribes
        inv = inventory(devices)
        lifts = [d.device for d in inv if d.measurement == "elevator"]
        rng = random.Random(2)
        start = time.monotonic()
        published = 0
        for s in range(seconds):
            trapped = lifts[s % len(lifts)]
            t_ms = int(time.time() * 1000)
            batches = tick_batches(inv, t_ms, rng, trapped=trapped)
            for b in batches:
                payload = codec.encode_batch(b)
                if any(x.dev == trapped for x in b.samples):
                    sent[trapped] = time.monotonic()
                pub.publish(topics.telemetry(b.district, b.gw), payload, qos=1)
                published += len(b.samples)
            time.sleep(max(0.0, start + s + 1 - time.monotonic()))
        time.sleep(2.0)
        done.set()
        sub.close()
        pub.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stack.down()
        shutil.rmtree(run_dir, ignore_errors=True)
    print(f"latency: {devices} devices at 1 Hz ({published:,} samples in {seconds} s), "
          f"{len(latencies)} trapped-passenger alerts")
    if latencies:
        q = statistics.quantiles(latencies, n=100, method="inclusive")
        print(f"  sample publish -> alert received: p50 {statistics.median(latencies):.1f} ms, "
              f"p99 {q[98]:.1f} ms, max {max(latencies):.1f} ms; missing {len(sent)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=5000)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--latency-seconds", type=int, default=30)
    ap.add_argument("--skip-latency", action="store_true")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} (shared with other work)")
    bench_throughput(args.devices, args.seconds)
    if not args.skip_latency:
        bench_latency(args.devices, args.latency_seconds)


if __name__ == "__main__":
    main()
