"""`urbansense sim ...`: run scenarios live, replay recordings, write ground truth, and
the minimal single-gateway `serve` used by the demo."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    p = sub.add_parser("sim", help="device simulators (real Modbus TCP / MQTT)")
    ssub = p.add_subparsers(dest="sim_cmd", required=True)

    run = ssub.add_parser("run", help="serve a scenario's devices on Modbus TCP and MQTT")
    run.add_argument("--scenario", required=True, help="scenario YAML or a name in simulators/scenarios/")
    run.add_argument("--speed", type=float, help="event-time speed-up (default: the scenario's suggestion)")
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("--truth", type=Path, help="write the ground truth here (JSON lines)")
    run.add_argument("--mqtt", help="broker for the air stations (default: URBANSENSE_MQTT_URL / local stack)")
    run.add_argument("--duration", type=float, metavar="S", help="stop after S wall-clock seconds")
    run.add_argument("--port-offset", type=int, default=0, help="add N to every Modbus TCP port")
    run.add_argument("--free-ports", action="store_true",
                     help="serve on free loopback ports instead (see --write-gateways for the configs)")
    run.add_argument("--write-gateways", type=Path, metavar="DIR",
                     help="write the gateway configs as served (for edge agents)")
    run.add_argument("--no-align", action="store_true",
                     help="start the clock at now-D+D/S even if the scenario has start_local")
    run.add_argument("--tick", type=float, metavar="S",
                     help="wall seconds between register updates (default 0.1 up to 100 Modbus devices, else 0.5)")
    run.set_defaults(func=_run)

    replay = ssub.add_parser("replay", help="play recorded readings (CSV or line protocol) into MQTT")
    replay.add_argument("file", type=Path)
    replay.add_argument("--speed", type=float, default=1.0, help="0 = as fast as possible")
    replay.add_argument("--mqtt", help="broker URL (default: URBANSENSE_MQTT_URL / local stack)")
    replay.add_argument("--format", choices=("csv", "lp"), help="default: by file suffix (.csv, else lp)")
    replay.add_argument("--shift-to-now", action="store_true", help="move timestamps so the replay ends now")
    replay.add_argument("--batch-size", type=int, default=500)
    replay.set_defaults(func=_replay)

    truth = ssub.add_parser("truth", help="print or write a scenario's ground truth (no servers)")
    truth.add_argument("--scenario", required=True)
    truth.add_argument("--seed", type=int, default=1)
    truth.add_argument("--start-ms", type=int, help="scenario start (default: aligned, ending before now)")
    truth.add_argument("--out", type=Path, help="file to write (default: stdout)")
    truth.set_defaults(func=_truth)

    comp = ssub.add_parser("compose", help="write a randomised district day (each seed plays another day)")
    comp.add_argument("--district", help="a district of the shipped scenarios (pudong, xuhui)")
    comp.add_argument("--gateway", type=Path, action="append", dest="gateways", metavar="FILE",
                      help="gateway config files instead of a district's (repeat)")
    comp.add_argument("--name", help="scenario name (default: DISTRICT-random-day, or -quiet with --quiet)")
    comp.add_argument("--quiet", action="store_true", help="faults only, no incident (false-alarm days)")
    comp.add_argument("--out", type=Path, required=True, help="scenario YAML to write")
    comp.set_defaults(func=_compose)

    serve = ssub.add_parser("serve", help="serve every Modbus device of a gateway config")
    serve.add_argument("--gateway", required=True, type=Path, help="gateway config YAML")
    serve.add_argument("--seed", type=int, default=1)
    serve.add_argument("--duration", type=float)
    serve.add_argument("--pressure-drop-at", type=float, metavar="S",
                       help="seconds after start at which the first water point's pressure drops")
    serve.add_argument("--pressure-drop-for", type=float, default=15.0, metavar="S")
    serve.add_argument("--pressure-drop-to", type=float, default=0.12, metavar="MPA")
    serve.set_defaults(func=_serve)


def _mqtt_url(arg: str | None) -> str:
    if arg:
        return arg
    from urbansense.endpoints import default_urls

    return default_urls()[0]


def _write_truth(records: list[dict[str, Any]], path: Path) -> None:
    import orjson

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        for rec in records:
            fh.write(orjson.dumps(rec) + b"\n")


def _run(args: argparse.Namespace) -> int:
    from simulators.runner import LiveSimulator
    from simulators.scenario import load_scenario
    from urbansense import clock as clockmod

    logging.basicConfig(level=logging.INFO, format="%(asctime)s sim %(levelname)s %(message)s")
    log = logging.getLogger("urbansense.sim")
    scenario = load_scenario(args.scenario, port_offset=args.port_offset, free_ports=args.free_ports)
    speed = args.speed or scenario.speed
    if os.environ.get(clockmod.ENV):
        clock = clockmod.current()
        log.info("using the scenario clock from %s", clockmod.ENV)
    else:
        clock = clockmod.ScenarioClock.for_scenario(scenario.duration_s, speed)
        if scenario.start_local and not args.no_align:
            start = scenario.aligned_start_ms(clock.origin_event_ms)
            clock = clockmod.ScenarioClock(start, clock.origin_wall_ms, speed)
        os.environ[clockmod.ENV] = clock.to_env()  # children follow the same event time
    start_ms = clock.origin_event_ms
    if clock.now_ms() >= start_ms + scenario.duration_s * 1000:
        log.error("%s=%s puts the whole scenario (%.0f s of event time) in the past; unset it to start a "
                  "new clock", clockmod.ENV, clock.to_env(), scenario.duration_s)
        return 2
    has_stations = scenario.device_count("mqtt") > 0
    # --with-edge: the umbrella CLI (application layer) adds it and the starter of the agents
    with_edge = getattr(args, "with_edge", False)
    mqtt_url = _mqtt_url(args.mqtt) if (has_stations or with_edge) else args.mqtt
    if args.truth:
        _write_truth(scenario.ground_truth(args.seed, start_ms), args.truth)
        log.info("ground truth: %s", args.truth)
    sim = LiveSimulator(scenario, args.seed, start_ms, mqtt_url)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sim.start()
    log.info("scenario %s: %d Modbus device(s) on ports %s, %d MQTT station(s); seed %d, speed %g; "
             "event time %s .. %s; %s=%s", scenario.name, len(sim.modbus_devices),
             ",".join(map(str, sim.ports)), len(sim.stations), args.seed, speed,
             time.strftime("%Y-%m-%d %H:%M", time.gmtime(start_ms / 1000)) + "Z",
             time.strftime("%Y-%m-%d %H:%M", time.gmtime(sim.end_ms / 1000)) + "Z",
             clockmod.ENV, clock.to_env())
    gw_dir = args.write_gateways
    stop_edges: Callable[[], None] | None = None
    if with_edge and gw_dir is None:
        gw_dir = Path(tempfile.mkdtemp(prefix=f"sim-{scenario.name}-"))
    if gw_dir is not None:
        from urllib.parse import urlparse

        port = urlparse(mqtt_url).port if mqtt_url else None
        paths = scenario.write_gateway_configs(gw_dir, mqtt_port=port, seed=args.seed)
        log.info("gateway configs as served: %s", gw_dir)
        if with_edge:
            stop_edges = args.start_edges(paths, mqtt_url, gw_dir / "logs")
            log.info("edge agents started (logs in %s)", gw_dir / "logs")
    last_log = [time.monotonic()]

    def progress(t_ms: int) -> None:
        if time.monotonic() - last_log[0] >= 10.0:
            last_log[0] = time.monotonic()
            done = (t_ms - start_ms) / max(1, sim.end_ms - start_ms)
            local = time.strftime("%H:%M", time.gmtime(t_ms / 1000 + 8 * 3600))
            log.info("event time %s Shanghai (%.0f %%), tick %.1f ms", local, 100 * done,
                     1000 * sim.stats.tick_seconds / max(1, sim.stats.ticks))

    # The tick (all 600 devices of district-scale: ~17 ms of Python) runs in this thread
    # while the Modbus server's thread answers polls. With the default 5 ms GIL switch
    # interval every link stalls for most of a tick; 0.5 ms keeps answers flowing.
    sys.setswitchinterval(0.0005)
    try:
        tick = args.tick or (0.1 if len(sim.modbus_devices) <= 100 else 0.5)
        sim.run(clock, stop=stop, tick_s=tick, wall_duration_s=args.duration, on_progress=progress)
    finally:
        if stop_edges is not None:
            stop_edges()
        sim.stop()
    log.info("done: %d ticks, %d station messages (%d malformed)", sim.stats.ticks, sim.stats.published,
             sim.stats.malformed)
    return 0


def _replay(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from simulators.recordings import RecordingError, read_recording
    from simulators.replay import replay
    from urbansense.mqtt import MqttClient, MqttSettings

    try:
        rows = read_recording(args.file, args.format)
    except RecordingError as exc:
        print(f"error: {exc}")
        return 2
    if not rows:
        print(f"{args.file}: no readings to replay")
        return 0
    client = MqttClient(MqttSettings.from_url(_mqtt_url(args.mqtt)), client_id=f"sim-replay-{time.time_ns()}")
    client.connect()
    span_s = (rows[-1].sample.t - rows[0].sample.t) / 1000.0
    try:
        with Progress(TextColumn("[bold]replay[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("samples"), TimeRemainingColumn()) as bar:
            task = bar.add_task(f"{args.file.name} ({span_s:.0f} s recorded, x{args.speed:g})", total=len(rows))
            stats = replay(rows, client, speed=args.speed, shift_to_now=args.shift_to_now,
                           batch_size=args.batch_size, on_batch=lambda n: bar.advance(task, n))
    finally:
        time.sleep(0.2)
        client.close()
    print(f"replayed {stats.samples} samples in {stats.batches} batches in {stats.wall_s:.1f} s")
    return 0


def _truth(args: argparse.Namespace) -> int:
    import sys

    import orjson

    from simulators.scenario import load_scenario

    scenario = load_scenario(args.scenario)
    start = args.start_ms if args.start_ms is not None else scenario.default_start_ms()
    records = scenario.ground_truth(args.seed, start)
    if args.out:
        _write_truth(records, args.out)
    else:
        for rec in records:
            sys.stdout.write(orjson.dumps(rec).decode() + "\n")
    return 0


def _compose(args: argparse.Namespace) -> int:
    from simulators.compose import district_gateways, write_day
    from simulators.scenario import load_scenario
    from urbansense.config import ConfigError

    if not args.gateways and not args.district:
        print("error: give --district NAME or --gateway FILE", file=sys.stderr)
        return 2
    try:
        gateways = args.gateways or district_gateways(args.district)
        district = args.district or "custom"
        name = args.name or f"{district}-random-{'quiet' if args.quiet else 'day'}"
        write_day(args.out, gateways, name, quiet=args.quiet)
        scenario = load_scenario(args.out)  # checks it, every range at both ends
    except (ValueError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    events = scenario.events_for(1)
    incidents = sum(1 for e in events if e.kind == "incident")
    print(f"wrote {args.out}: {len(scenario.loaded)} gateways, {incidents} incidents and "
          f"{len(events) - incidents} faults a day, drawn per seed")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from simulators.signals import SimulatedGateway

    logging.basicConfig(level=logging.INFO, format="%(asctime)s sim %(levelname)s %(message)s")
    sim = SimulatedGateway.from_config(args.gateway, seed=args.seed)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sim.start()
    water = next((d for d in sim.devices.values() if "pressure_mpa" in d.values), None)
    logging.info("serving %d device(s) on %s", len(sim.devices),
                 ", ".join(f"{ep.host}:{ep.port}" for ep in sim.server.endpoints))
    start = time.monotonic()
    dropped = False
    try:
        while not stop.is_set():
            elapsed = time.monotonic() - start
            if args.duration is not None and elapsed >= args.duration:
                break
            override = None
            if args.pressure_drop_at is not None and water is not None:
                in_drop = args.pressure_drop_at <= elapsed < args.pressure_drop_at + args.pressure_drop_for
                if in_drop != dropped:
                    dropped = in_drop
                    logging.info("pressure %s", "DROP (simulated burst)" if in_drop else "recovered")
                override = args.pressure_drop_to if in_drop else None
            sim.tick(pressure_override=override)
            stop.wait(1.0 - (time.monotonic() - start) % 1.0)
    finally:
        sim.stop()
    return 0
