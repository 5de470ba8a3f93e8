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
import os
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

from application.stack import Stack
from edge.modbus_pdu import parse_response, read_request
from edge.modbus_transport import TcpMaster
from edge.planner import ReadRequest, plan_reads
from simulators.scenario import load_scenario
from urbansense.config import LinkSpec, load_gateway

CLK_TCK = os.sysconf("SC_CLK_TCK")
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
    """Polls every device of one link once per interval, in turn, on one connection, with
    the edge agent's own Modbus master (so the poller's CPU stays small beside the simulator's)."""

    def __init__(self, link: LinkSpec, plans: dict[str, list[ReadRequest]], interval_s: float = 1.0) -> None:
        self.link = link
        self.plans = plans
        self.interval_s = interval_s
        self.latencies: list[float] = []
        self.polls = 0
        self.requests = 0
        self.errors = 0
        self.overruns = 0

    async def run(self, until: float, measure_from: float) -> None:
        master = TcpMaster(self.link.host, self.link.port)
        next_cycle = time.monotonic()
        try:
            while time.monotonic() < until:
                for dev in self.link.devices:
                    t0 = time.monotonic()
                    try:
                        for req in self.plans[dev.profile]:
                            request = read_request(dev.unit, req.table, req.address, req.count)
                            parse_response(request, await master.transact(request, 1.0), req.count)
                            if t0 >= measure_from:
                                self.requests += 1
                        ok = True
                    except Exception:
                        ok = False
                    if t0 >= measure_from:
                        self.polls += 1
                        self.errors += not ok
                        self.latencies.append(time.monotonic() - t0)
                next_cycle += self.interval_s
                delay = next_cycle - time.monotonic()
                if delay < 0:
                    if time.monotonic() >= measure_from:
                        self.overruns += 1
                    next_cycle = time.monotonic()
                    delay = 0
                await asyncio.sleep(delay)
        finally:
            await master.close()


async def poll_all(gateway_paths: list[Path], seconds: float, warmup: float,
                   interval_s: float, sim_pid: int) -> tuple[list[LinkPoller], float]:
    """The pollers, and the simulator's CPU seconds when the measured window began."""
    pollers: list[LinkPoller] = []
    for path in gateway_paths:
        loaded = load_gateway(path)
        plans = {name: plan_reads(p.fields) for name, p in loaded.profiles.items()}
        pollers.extend(LinkPoller(link, plans, interval_s) for link in loaded.config.links if link.transport == "tcp")
    start = time.monotonic()
    cpu_at_start: list[float] = []

    async def mark() -> None:
        await asyncio.sleep(warmup)
        cpu_at_start.append(cpu_seconds(sim_pid))

    await asyncio.gather(mark(), *(p.run(start + warmup + seconds, start + warmup) for p in pollers))
    return pollers, cpu_at_start[0]


def bench_live(seconds: float, warmup: float, interval_s: float) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
        scenario_path = Path(tmp) / "district-scale-clean.yaml"
        scenario_path.write_text(CLEAN_SCENARIO)
        scenario = load_scenario(scenario_path)
        stack = Stack(Path(tmp) / "stack")
        stack.up()
        gw_dir = Path(tmp) / "gateways"
        cmd = [sys.executable, "-m", "application.cli", "sim", "run", "--scenario", str(scenario_path), "--speed", "1",
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
            pollers, cpu0 = asyncio.run(poll_all(paths, seconds, warmup, interval_s, sim.pid))
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
    requests = sum(p.requests for p in pollers)
    print(f"  simulator CPU   {100 * cpu / seconds:.1f} % of one core over the {seconds:.0f} s measured, "
          f"{1e6 * cpu / max(1, requests):.0f} us per Modbus request served ({requests / seconds:,.0f} requests/s, "
          f"{1e6 * cpu / max(1, polls):.0f} us per device poll)")
    print(f"  simulator RSS   {rss:.0f} MB (peak {hwm:.0f} MB)")
    print(f"  device polls    {polls / seconds:.0f}/s for {devices} devices (target {devices / interval_s:.0f}/s), "
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
    parser.add_argument("--interval", type=float, default=1.0, help="poll interval per device, s (default 1)")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start (shared machine)")
    bench_live(args.seconds, args.warmup, args.interval)
    bench_offline()
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
