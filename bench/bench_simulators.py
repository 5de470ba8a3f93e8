"""Benchmark: one simulator process serving the district-scale scenario (600 Modbus
devices on 13 TCP ports + 40 MQTT stations) while a separate poller reads every Modbus
device once per second, the way the edge agents do (their read plans, one connection
per port, devices in turn). Reports the simulator's CPU and RSS and the poll results.
Also measures offline play (play_offline) throughput.

    .venv/bin/python bench/bench_simulators.py [--seconds 30] [--warmup 5]

Prints numbers; asserts nothing about time (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient

from edge.planner import ReadRequest, plan_reads
from simulators.scenario import load_scenario
from urbansense.config import LinkSpec, load_gateway
from urbansense.stack import Stack

CLK_TCK = os.sysconf("SC_CLK_TCK")
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
#: district-scale's devices without its incidents and faults: a dropout would show up as
#: poll errors and overruns that are the scenario's doing, not the simulator's.
CLEAN_SCENARIO = """
scenario: district-scale-clean
duration: 1h
gateways: [xh-gw-water, xh-gw-gas, xh-gw-light, xh-gw-lift, xh-gw-air]
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_mb(pid: int) -> tuple[float, float]:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


class LinkPoller:
    """Polls every device of one link once per second, in turn, on one connection."""

    def __init__(self, link: LinkSpec, plans: dict[str, list[ReadRequest]]) -> None:
        self.link = link
        self.plans = plans
        self.latencies: list[float] = []
        self.polls = 0
        self.errors = 0
        self.overruns = 0

    async def _read(self, client: AsyncModbusTcpClient, req: ReadRequest, unit: int) -> None:
        if req.table == "holding":
            rr = await client.read_holding_registers(req.address, count=req.count, device_id=unit)
        elif req.table == "input":
            rr = await client.read_input_registers(req.address, count=req.count, device_id=unit)
        elif req.table == "coil":
            rr = await client.read_coils(req.address, count=req.count, device_id=unit)
        else:
            rr = await client.read_discrete_inputs(req.address, count=req.count, device_id=unit)
        if rr.isError():
            raise RuntimeError(f"exception {rr.exception_code}")

    async def run(self, until: float, measure_from: float) -> None:
        client = AsyncModbusTcpClient(self.link.host, port=self.link.port, timeout=1.0, retries=0)
        await client.connect()
        next_cycle = time.monotonic()
        try:
            while time.monotonic() < until:
                for dev in self.link.devices:
                    t0 = time.monotonic()
                    try:
                        for req in self.plans[dev.profile]:
                            await self._read(client, req, dev.unit)
                        ok = True
                    except Exception:
                        ok = False
                    if t0 >= measure_from:
                        self.polls += 1
                        self.errors += not ok
                        self.latencies.append(time.monotonic() - t0)
                next_cycle += 1.0
                delay = next_cycle - time.monotonic()
                if delay < 0:
                    if time.monotonic() >= measure_from:
                        self.overruns += 1
                    next_cycle = time.monotonic()
                    delay = 0
                await asyncio.sleep(delay)
        finally:
            client.close()


async def poll_all(gateway_paths: list[Path], seconds: float, warmup: float) -> list[LinkPoller]:
    pollers: list[LinkPoller] = []
    for path in gateway_paths:
        loaded = load_gateway(path)
        plans = {name: plan_reads(p.fields) for name, p in loaded.profiles.items()}
        pollers.extend(LinkPoller(link, plans) for link in loaded.config.links if link.transport == "tcp")
    start = time.monotonic()
    await asyncio.gather(*(p.run(start + warmup + seconds, start + warmup) for p in pollers))
    return pollers


def bench_live(seconds: float, warmup: float) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
        scenario_path = Path(tmp) / "district-scale-clean.yaml"
        scenario_path.write_text(CLEAN_SCENARIO)
        scenario = load_scenario(scenario_path)
        stack = Stack(Path(tmp) / "stack")
        stack.up()
        gw_dir = Path(tmp) / "gateways"
        cmd = [sys.executable, "-m", "urbansense.cli", "sim", "run", "--scenario", str(scenario_path), "--speed", "1",
               "--free-ports", "--write-gateways", str(gw_dir), "--mqtt", stack.mqtt_url, "--tick", "1.0",
               "--duration", str(seconds + warmup + 15)]
        log = open(Path(tmp) / "sim.log", "wb")  # noqa: SIM115
        sim = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while len(list(gw_dir.glob("*.yaml"))) < len(scenario.gateways) and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(2.0)  # servers listening
            paths = sorted(p for p in gw_dir.glob("*.yaml") if "air" not in p.name)
            cpu0, wall0 = cpu_seconds(sim.pid), time.monotonic()
            pollers = asyncio.run(poll_all(paths, seconds, warmup))
            wall = time.monotonic() - wall0
            cpu = cpu_seconds(sim.pid) - cpu0
            rss, hwm = rss_mb(sim.pid)
        finally:
            sim.terminate()
            sim.wait(20)
            log.close()
            stack.down()
        tail = (Path(tmp) / "sim.log").read_text().splitlines()[-3:]
    lat = sorted(x for p in pollers for x in p.latencies)
    polls = sum(p.polls for p in pollers)
    devices = sum(len(p.link.devices) for p in pollers)
    print(f"live: district-scale gateways (no incidents/faults), {devices} Modbus devices on {len(pollers)} "
          f"TCP ports + {scenario.device_count('mqtt')} MQTT stations, one simulator process, speed 1, tick 1 s")
    print(f"  simulator CPU   {100 * cpu / wall:.1f} % of one core over {wall:.0f} s (incl. {warmup:.0f} s warm-up)")
    print(f"  simulator RSS   {rss:.0f} MB (peak {hwm:.0f} MB)")
    print(f"  device polls    {polls / seconds:.0f}/s for {devices} devices (target {devices}/s at 1 Hz), "
          f"errors {sum(p.errors for p in pollers)}, overrun cycles {sum(p.overruns for p in pollers)}")
    if lat:
        print(f"  poll latency    p50 {1000 * statistics.median(lat):.2f} ms, "
              f"p99 {1000 * lat[int(0.99 * (len(lat) - 1))]:.2f} ms, max {1000 * lat[-1]:.1f} ms")
    print("  simulator log: " + " | ".join(line[-110:] for line in tail))


def bench_offline() -> None:
    for name in ("pudong-incidents", "district-scale"):
        s = load_scenario(name)
        start = s.default_start_ms()
        ticks = 200 if name == "district-scale" else 10_000
        t0 = time.perf_counter()
        n = sum(len(b.samples) for tick in islice(s.play_offline(1, start), ticks) for b in tick.batches)
        dt = time.perf_counter() - t0
        print(f"offline: {name}: {n} samples in {dt:.2f} s = {n / dt:,.0f} samples/s")
        t0 = time.perf_counter()
        s.ground_truth(1, start)
        print(f"offline: {name}: ground truth in {time.perf_counter() - t0:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start (shared machine)")
    bench_live(args.seconds, args.warmup)
    bench_offline()
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
