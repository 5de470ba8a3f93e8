"""Chaos runs of the whole pipeline (issue 9): faults injected on a schedule into a live
district (simulators, three edge agents, two ingesters, the rules engine, real Mosquitto
and InfluxDB), then, per device, every reading the edges published is compared with what
InfluxDB holds (counts and values exact, nothing extra, nothing twice) and the
scenario's incidents must still raise their alerts.

Each run plays 2 h of event time at x120 (60 s wall) plus start and drain; results of the
last runs are recorded in docs/reliability-chaos.md."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from application.stack import Stack
from tests.chaos.district_run import CUT_GATEWAY, INGESTERS, DistrictRun
from tests.chaos.ledger import compare, largest_gap_ms

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

# Where a run writes its counts (for docs/reliability-chaos.md), if set.
REPORT_DIR = os.environ.get("URBANSENSE_CHAOS_REPORT_DIR")


def _check(run: DistrictRun, name: str, max_gap_steps: int | None) -> None:
    drained_s = run.finish()
    verdict = compare(run.watcher, run.influx, run.start_ms - 600_000)
    incidents = run.incident_scores()
    gaps = largest_gap_ms(run.influx, run.start_ms - 600_000)
    report = {"run": name, "faults": run.log, "drain_s": round(drained_s, 1), "published": verdict.published,
              "wire_copies": verdict.wire_copies, "stored": verdict.stored, "missing": len(verdict.missing),
              "extra": len(verdict.extra), "duplicates": len(verdict.duplicates),
              "wrong_values": len(verdict.wrong_values), "conflicting_resends": len(verdict.conflicts),
              "per_device": verdict.per_device, "largest_gap_city_s": {d: g / 1000 for d, g in gaps.items()},
              "uplink_refused": run.uplink.refused, "incidents": incidents,
              "alerts_seen": len(run.watcher.alerts)}
    print(json.dumps({k: v for k, v in report.items() if k not in ("per_device", "largest_gap_city_s")}, indent=1))
    if REPORT_DIR:
        Path(REPORT_DIR).mkdir(parents=True, exist_ok=True)
        (Path(REPORT_DIR) / f"{name}.json").write_text(json.dumps(report, indent=1))

    # Every device of the scenario published, and enough to mean something.
    devices = {d.id for g in run.scenario.loaded for link in g.config.links for d in link.devices}
    assert set(verdict.per_device) == devices, sorted(devices ^ set(verdict.per_device))
    assert verdict.published > 20 * len(devices)
    assert verdict.exact, verdict.summary() + "\n" + run.log_tails()
    for dev, (published, stored) in verdict.per_device.items():
        assert published == stored, f"{dev}: {published} published, {stored} stored"
    if max_gap_steps is not None:
        # No component was killed: every device was polled on schedule throughout, so a
        # window lost on the wire AND in the database (the watcher blind too) shows here.
        limit_ms = max_gap_steps * run.scenario.step_s * 1000
        holes = {d: g / 1000 for d, g in gaps.items() if g > limit_ms}
        assert not holes, f"event-time holes (city s) in the stored readings: {holes}"
    for inc in incidents:
        assert inc["detected"], f"incident {inc} raised no alert\n{run.log_tails()}"
        assert run.firing_alerts_stored(inc["device"]) >= 1, f"no firing alert stored for {inc['device']}"


def test_broker_influxdb_restarts_slow_writes_and_an_uplink_cut_lose_nothing(tmp_path: Path,
                                                                           private_stack: Stack) -> None:
    run = DistrictRun(tmp_path, private_stack)
    try:
        run.start()
        run.run_schedule([
            (5.0, f"uplink of {CUT_GATEWAY} cut (connections dropped, new ones refused)", run.cut_uplink()),
            (9.0, "Mosquitto restarted (SIGTERM, 3 s down, same port)", run.restart_service("mosquitto")),
            (20.0, "InfluxDB restarted (SIGTERM, 3 s down, same port)", run.restart_service("influxd")),
            (29.0, f"uplink of {CUT_GATEWAY} restored after 24 s (48 min city time)", run.restore_uplink()),
            (34.0, "slow InfluxDB: influxd frozen (SIGSTOP) for 8 s, then SIGCONT", run.freeze_influxd(8.0)),
            (46.0, "Mosquitto restarted again (SIGTERM, 2 s down)", run.restart_service("mosquitto", 2.0)),
        ])
        assert run.uplink.refused > 0, "the edge never tried its cut uplink: the cut proved nothing"
        # Nothing was killed: each device polled every 15 s of city time; allow 6 steps of jitter.
        _check(run, "infrastructure", max_gap_steps=6)
    finally:
        run.close()


def test_sigkill_of_each_component_in_turn_loses_nothing(tmp_path: Path, private_stack: Stack) -> None:
    run = DistrictRun(tmp_path, private_stack)
    try:
        run.start()
        schedule = [(4.0, "SIGKILL simulators, restarted after 1.5 s (same seed and clock)",
                     run.kill_and_restart("sim"))]
        at = 10.0
        for name in [n for n in run.commands if n.startswith("edge-")] + list(INGESTERS) + ["rules"]:
            schedule.append((at, f"SIGKILL {name}, restarted after 1.5 s (same instance / client id / log)",
                             run.kill_and_restart(name)))
            at += 6.0
        schedule.append((at, "SIGKILL both ingesters at once, restarted after 3 s",
                         _both(run.kill_and_restart(INGESTERS[0], 0.0), run.kill_and_restart(INGESTERS[1], 3.0))))
        run.run_schedule(schedule)
        # The simulator kill bit: the edges reported its devices failed (the scenario itself has no faults).
        assert any("device_error" in fields for _, fields in run.watcher.snapshot().values())
        _check(run, "crashes", max_gap_steps=None)
    finally:
        run.close()


def test_faults_on_top_of_each_other_lose_nothing(tmp_path: Path, private_stack: Stack) -> None:
    """Each fault while another one holds: the moments where a component's recovery
    depends on a second one that is itself down."""
    run = DistrictRun(tmp_path, private_stack)
    a, b = INGESTERS
    edge = f"edge-{CUT_GATEWAY}"
    try:
        run.start()
        run.run_schedule([
            (4.0, f"uplink of {CUT_GATEWAY} cut", run.cut_uplink()),
            (7.0, f"SIGKILL {edge} while its uplink is cut (its backlog is only in its log)", run.kill(edge)),
            (9.0, f"{edge} restarted on the same log, uplink still cut", run.restart(edge)),
            (13.0, "influxd frozen (SIGSTOP): writes hang", run.freeze_influxd_until_thawed()),
            (16.0, f"SIGKILL {a} while its writes hang (it holds unacknowledged messages)", run.kill(a)),
            (18.0, f"{a} restarted (same instance name), influxd still frozen", run.restart(a)),
            (22.0, "influxd thawed (SIGCONT) after 9 s", run.thaw_influxd),
            (25.0, f"uplink of {CUT_GATEWAY} restored after 21 s: backlog replay", run.restore_uplink()),
            (26.0, f"SIGKILL {b} (its session now queues its share of the stream)", run.kill(b)),
            (28.0, f"Mosquitto stopped (SIGTERM) while {b} is dead", run.stop_service("mosquitto")),
            (31.0, "Mosquitto started: the dead ingester's session must have survived", run.start_service("mosquitto")),
            (33.0, f"{b} restarted (same instance name)", run.restart(b)),
            (38.0, "InfluxDB crash: influxd SIGKILLed, restarted after 2 s", _then(
                run.stop_service("influxd", kill=True), run.start_service("influxd"), pause_s=2.0)),
            (46.0, "SIGKILL the rules engine and the simulators together", _then(run.kill("rules"), run.kill("sim"))),
            (48.0, "both restarted", _then(run.restart("sim"), run.restart("rules"))),
        ])
        assert run.uplink.refused > 0, "the edge never tried its cut uplink: the cut proved nothing"
        _check(run, "compound", max_gap_steps=None)
    finally:
        run.close()


def _then(first: Callable[[], None], second: Callable[[], None], pause_s: float = 0.0) -> Callable[[], None]:
    def act() -> None:
        first()
        time.sleep(pause_s)
        second()
    return act


def _both(first: Callable[[], None], second: Callable[[], None]) -> Callable[[], None]:
    def act() -> None:
        first()
        second()
    return act
