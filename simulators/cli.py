"""`urbansense sim ...`"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("sim", help="device simulators (real Modbus TCP / MQTT)")
    ssub = p.add_subparsers(dest="sim_cmd", required=True)
    serve = ssub.add_parser("serve", help="serve every Modbus device of a gateway config")
    serve.add_argument("--gateway", required=True, type=Path, help="gateway config YAML")
    serve.add_argument("--seed", type=int, default=1)
    serve.add_argument("--duration", type=float)
    serve.add_argument("--pressure-drop-at", type=float, metavar="S",
                       help="seconds after start at which the first water point's pressure drops")
    serve.add_argument("--pressure-drop-for", type=float, default=15.0, metavar="S")
    serve.add_argument("--pressure-drop-to", type=float, default=0.12, metavar="MPA")
    serve.set_defaults(func=_serve)


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
