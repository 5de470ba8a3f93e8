"""One chaos run of the whole pipeline on a private stack: the simulators, one edge agent
per gateway (one of them behind a cuttable uplink), two ingesters sharing the stream
under stable instance names, the rules engine; faults injected on a schedule of wall
seconds after the scenario clock starts; the run stops by itself at the end of the
scenario's event time and drains."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from application.district import port_offset, tune_gateway_configs, wait_ports
from application.processes import ProcessGroup
from application.stack import Stack
from simulators.scenario import load_scenario
from tests.chaos.ledger import Watcher
from tests.chaos.uplink import Uplink
from urbansense.clock import ScenarioClock
from urbansense.influx import InfluxClient

SCENARIO = Path(__file__).parent / "chaos-district.yaml"
INGESTERS = ("chaos-ingest-a", "chaos-ingest-b")
CUT_GATEWAY = "pd-gw-lift"  # its edge reaches the broker only through an Uplink proxy
SEED = 7


class DistrictRun:
    def __init__(self, tmp: Path, stack: Stack, scenario_path: Path = SCENARIO) -> None:
        self.tmp = tmp
        self.stack = stack
        probe = load_scenario(str(scenario_path))
        self.offset = port_offset(sorted({link.port for g in probe.loaded for link in g.config.links
                                          if link.on_tcp_port}))
        # the simulator's Modbus ports (edge agents listen on the hj212/jt808 ones)
        self.tcp_ports = sorted({link.port for g in probe.loaded for link in g.config.links
                                 if link.transport == "tcp"})
        self.scenario = load_scenario(str(scenario_path), port_offset=self.offset)
        self.speed = float(self.scenario.speed or 120.0)
        self.truth_path = tmp / "truth.jsonl"
        self.gw_dir = tmp / "gateways"
        self.uplink = Uplink(stack.mqtt_port)
        self.watcher = Watcher(stack.mqtt_url, f"chaos-watch-{uuid.uuid4().hex[:8]}")
        self.influx = InfluxClient(stack.influx_url, "city")
        self.commands: dict[str, tuple[str, ...]] = {}
        self.procs: ProcessGroup | None = None
        self.clock: ScenarioClock | None = None
        self.start_ms = 0
        self.end_ms = 0
        self.log: list[str] = []  # what was done when, for the report
        self.down: set[str] = set()  # components killed on purpose and not yet restarted
        self.influxd_frozen = False

    # ------------------------------------------------------------------ start / stop
    def start(self, startup_s: float = 6.0) -> None:
        init = subprocess.run([sys.executable, "-m", "application.cli", "ingest", "init", "--influx",
                               self.stack.influx_url], capture_output=True, text=True, timeout=60)
        assert init.returncode == 0, init.stderr or init.stdout
        wall_s = self.scenario.duration_s / self.speed
        now = int(time.time() * 1000)
        end_wall = now + int((startup_s + wall_s) * 1000)
        self.start_ms = self.scenario.default_start_ms(end_wall)
        self.end_ms = self.start_ms + int(self.scenario.duration_s * 1000)
        self.clock = ScenarioClock(self.start_ms, now + int(startup_s * 1000), self.speed)
        paths = self.scenario.write_gateway_configs(self.gw_dir, mqtt_port=self.stack.mqtt_port)
        tune_gateway_configs(paths, poll_s=max(0.1, self.scenario.step_s / self.speed))
        for path in paths:  # a device back from a fault is polled again within 2 s
            cfg = yaml.safe_load(path.read_text())
            cfg["polling"]["backoff_max_s"] = 2.0
            cfg["uplink"]["reconnect_max_s"] = 2.0
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.watcher.connect()
        self.procs = ProcessGroup(self.tmp / "logs", {**self.stack.env(), "URBANSENSE_CLOCK": self.clock.to_env()})
        for name in INGESTERS:
            self._launch(name, "ingest", "run", "--instance", name)
        self._launch("rules", "rules", "run", "--gateways", str(self.gw_dir), "--instance", "chaos-rules")
        self._launch("sim", "sim", "run", "--scenario", str(self.scenario.path), "--speed", str(self.speed),
                     "--seed", str(SEED), "--truth", str(self.truth_path), "--port-offset", str(self.offset),
                     "--tick", "0.05")
        wait_ports([p + self.offset for p in self.tcp_ports], self.procs)
        time.sleep(max(0.0, self.clock.wall_s_for(self.start_ms) - time.time()))
        for path in paths:
            gw = path.stem
            uplink = ["--mqtt", self.uplink.url] if gw == CUT_GATEWAY else []
            self._launch(f"edge-{gw}", "edge", "run", "--config", str(path), "--wal",
                         str(self.gw_dir / f"{gw}.wal"), *uplink)
        self.note("started: sim, 3 edges, 2 ingesters, rules")

    def _launch(self, name: str, *args: str) -> None:
        assert self.procs is not None
        self.commands[name] = args
        self.procs.start(name, *args)

    def elapsed(self) -> float:
        assert self.clock is not None
        return time.time() - self.clock.wall_s_for(self.start_ms)

    def note(self, what: str) -> None:
        self.log.append(f"t={self.elapsed():5.1f}s ({(self.elapsed() * self.speed) / 60:5.1f} min city): {what}")

    def run_schedule(self, schedule: list[tuple[float, str, Callable[[], None]]]) -> None:
        """Inject each fault at its time (wall s after the clock start), then wait for the
        end of the scenario's event time. A component that dies unasked fails the run."""
        assert self.procs is not None and self.clock is not None
        for at, what, action in sorted(schedule, key=lambda s: s[0]):
            self._sleep_until(at)
            self.note(what)
            action()
        self._sleep_until(self.scenario.duration_s / self.speed)

    def _sleep_until(self, at: float) -> None:
        assert self.procs is not None
        while self.elapsed() < at:
            dead = [n for n in self.procs.check() if n.split(" ")[0] not in self.down]
            assert not dead, f"component exited unasked: {dead}\n" + "\n".join(
                f"--- {n}\n{self.procs.log_tail(n.split(' ')[0])}" for n in dead)
            time.sleep(min(0.2, max(0.01, at - self.elapsed())))

    def finish(self, drain_timeout_s: float = 60.0) -> float:
        """Stop the edges (they flush what they can) and the simulator, wait until every
        reading seen on the wire is stored, then stop ingesters and rules. Returns the
        drain time in seconds."""
        assert self.procs is not None
        for name in [n for n in self.procs.procs if n.startswith("edge-")] + ["sim"]:
            self.procs.stop(name)
        t0 = time.monotonic()
        from tests.chaos.ledger import stored_points

        while time.monotonic() - t0 < drain_timeout_s:
            if set(self.watcher.snapshot()) <= set(stored_points(self.influx, self.start_ms - 600_000)):
                break
            time.sleep(1.0)
        drained = time.monotonic() - t0
        time.sleep(2.0)  # the rules engine evaluates the last readings
        self.procs.stop_all(timeout_s=35.0)
        return drained

    def close(self) -> None:
        self.thaw_influxd()
        if self.procs is not None:
            self.procs.stop_all(timeout_s=35.0)
        self.watcher.close()
        self.uplink.close()
        self.influx.close()

    # ------------------------------------------------------------------ faults
    def kill_and_restart(self, name: str, down_s: float = 1.5) -> Callable[[], None]:
        """SIGKILL a component, then start it again the way a supervisor would: same
        arguments, so the same instance name / client id and the same store-and-forward log."""
        def act() -> None:
            assert self.procs is not None
            self.procs.stop(name, sig=signal.SIGKILL)
            time.sleep(down_s)
            self.procs.start(name, *self.commands[name])
        return act

    def kill(self, name: str) -> Callable[[], None]:
        """SIGKILL a component and leave it down until `restart`."""
        def act() -> None:
            assert self.procs is not None
            self.down.add(name)
            self.procs.stop(name, sig=signal.SIGKILL)
        return act

    def restart(self, name: str) -> Callable[[], None]:
        def act() -> None:
            assert self.procs is not None
            self.procs.start(name, *self.commands[name])
            self.down.discard(name)
        return act

    def stop_service(self, service: str, *, kill: bool = False) -> Callable[[], None]:
        return lambda: self.stack.stop(service, kill=kill)

    def start_service(self, service: str) -> Callable[[], None]:
        def act() -> None:
            self.stack.start(service)
        return act

    def freeze_influxd_until_thawed(self) -> Callable[[], None]:
        def act() -> None:
            self.stack.pause("influxd")
            self.influxd_frozen = True
        return act

    def thaw_influxd(self) -> None:
        if self.influxd_frozen:
            self.stack.resume("influxd")
            self.influxd_frozen = False

    def restart_service(self, service: str, down_s: float = 3.0) -> Callable[[], None]:
        def act() -> None:
            self.stack.stop(service)
            time.sleep(down_s)
            self.stack.start(service)
        return act

    def freeze_influxd(self, for_s: float) -> Callable[[], None]:
        """A slow InfluxDB: influxd stopped (SIGSTOP) for `for_s`; writes hang, then finish."""
        def act() -> None:
            with self.stack.paused("influxd"):
                time.sleep(for_s)
        return act

    def cut_uplink(self) -> Callable[[], None]:
        return self.uplink.cut

    def restore_uplink(self) -> Callable[[], None]:
        return self.uplink.restore

    # ------------------------------------------------------------------ results
    def truth(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.truth_path.read_text().splitlines()]

    def incident_scores(self) -> list[dict[str, Any]]:
        from application.backtest import score
        from rules.inventory import from_gateways

        with self.watcher.lock:
            events = list(self.watcher.alerts)
        result = score(self.scenario.name, self.truth(), events, from_gateways(self.scenario.loaded),
                       self.start_ms, self.end_ms)
        return [{"type": s.record["type"], "device": s.record.get("device"), "detected": s.detected,
                 "rule": s.first_alert.rule if s.first_alert else None,
                 "lead_time_s": s.lead_time_s} for s in result.incidents]

    def firing_alerts_stored(self, device: str) -> int:
        rows = self.influx.rows(f"SELECT count(alert_id) FROM alerts WHERE state = 'firing' AND device = "
                                f"'{device}' AND time >= {self.start_ms}ms")
        return int(rows[0]["count"]) if rows else 0

    def log_tails(self) -> str:
        if self.procs is None:
            return ""
        return "\n".join(f"--- {n}\n{self.procs.log_tail(n, 8)}" for n in self.procs.procs)
