"""Rules engine memory over days of scenario time: leak or windows filling?

Feeds a `RulesEngine` (the shipped catalog, the scenario's device inventory) one sample
per device every `--step-s` seconds of event time, in-process and as fast as it goes, so
a day of a district takes a minute or two instead of a day. Every `--every-h` hours of
scenario time it prints the RSS, the bytes traced by tracemalloc and the engine's numpy
state; at the end the tracemalloc lines that grew most since the first report (after
`--warm-h` hours, when the longest look-back, the 24 h AQI means, has not yet filled:
growth after that point would be a leak).

Prints numbers, asserts nothing.

    .venv/bin/python bench/bench_rules_memory.py                      # district-scale, 26 h
    .venv/bin/python bench/bench_rules_memory.py --hours 50 --step-s 30
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from bench_rules import fields  # bench/ is on sys.path when run as a script

from rules.catalog import load_catalog
from rules.engine import RulesEngine
from rules.inventory import InventoryDevice, load_inventory
from simulators.scenario import load_scenario
from urbansense.schema import Sample, TelemetryBatch

T0 = 1_764_190_000_000  # 2025-11-26 20:46 UTC: lamps lit in Shanghai


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def numpy_state_mb(engine: RulesEngine) -> float:
    """Bytes of every numpy array the engine, its evaluators and buffers hold."""
    seen: set[int] = set()
    total = 0

    def add(obj: object) -> None:
        nonlocal total
        for value in vars(obj).values() if hasattr(obj, "__dict__") else ():
            if isinstance(value, np.ndarray) and id(value) not in seen:
                seen.add(id(value))
                total += value.nbytes

    add(engine.devices)
    add(engine.devices.gateways)
    for buf in engine.buffers._buffers.values():
        add(buf)
    for ev in engine.evaluators.values():
        add(ev)
        add(ev.lifecycle)
    return total / 2**20


def batches_at(inv: list[InventoryDevice], t: int, rng: random.Random, seq: int) -> list[TelemetryBatch]:
    by_gw: dict[tuple[str, str], list[Sample]] = {}
    for i, d in enumerate(inv):
        jitter = rng.randrange(0, 500)
        by_gw.setdefault((d.district, d.gateway), []).append(
            Sample(d.device, d.measurement, t + jitter, fields(d.measurement, i, rng)))
    return [TelemetryBatch(gw, district, seq, t, samples) for (district, gw), samples in by_gw.items()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="district-scale")
    ap.add_argument("--hours", type=float, default=26.0, help="hours of scenario time (default 26)")
    ap.add_argument("--step-s", type=float, default=10.0,
                    help="event-time seconds between two samples of a device (default 10)")
    ap.add_argument("--every-h", type=float, default=2.0, help="report every this many scenario hours")
    ap.add_argument("--warm-h", type=float, default=2.0,
                    help="scenario hours before the reference snapshot (default 2)")
    ap.add_argument("--top", type=int, default=8, help="tracemalloc lines to show")
    args = ap.parse_args()

    scenario = load_scenario(args.scenario)
    with tempfile.TemporaryDirectory() as tmp:
        scenario.write_gateway_configs(Path(tmp), mqtt_port=1883)
        inv = load_inventory([Path(tmp)], None, strict=False)
    rules = load_catalog()
    tracemalloc.start(1)
    engine = RulesEngine(rules, inv)
    rng = random.Random(1)
    step_ms = int(args.step_s * 1000)
    steps = int(args.hours * 3600 / args.step_s)
    every = max(1, int(args.every_h * 3600 / args.step_s))
    warm = int(args.warm_h * 3600 / args.step_s)
    print(f"{args.scenario}: {len(inv)} devices, {len(rules)} rules; one sample per device every "
          f"{args.step_s:g} s of event time, {args.hours:g} h ({steps * len(inv):,} samples)", flush=True)
    print(f"{'hours':>6} {'samples':>12} {'RSS MB':>8} {'traced MB':>10} {'numpy MB':>9} {'alerts':>7} "
          f"{'events':>7} {'wall s':>7}")
    reference: tracemalloc.Snapshot | None = None
    start = time.perf_counter()
    events = 0
    for k in range(1, steps + 1):
        events += len(engine.ingest(batches_at(inv, T0 + k * step_ms, rng, k)))
        engine.derived_lines()  # the service takes the `aqi` points after every chunk
        if k % every == 0 or k in (warm, steps):
            gc.collect()
            traced, _peak = tracemalloc.get_traced_memory()
            print(f"{k * args.step_s / 3600:6.1f} {engine.samples_seen:12,} {rss_mb():8.1f} {traced / 2**20:10.2f} "
                  f"{numpy_state_mb(engine):9.2f} {engine.active_alerts():7} {events:7} "
                  f"{time.perf_counter() - start:7.0f}", flush=True)
            if k == warm:
                reference = tracemalloc.take_snapshot()
    if reference is not None:
        print(f"\ntracemalloc: lines that grew most from {args.warm_h:g} h to {args.hours:g} h")
        for stat in tracemalloc.take_snapshot().compare_to(reference, "lineno")[:args.top]:
            print(f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+8} blocks  {stat.traceback[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
