"""`urbansense edge ...`"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("edge", help="edge agent: poll devices, forward telemetry")
    esub = p.add_subparsers(dest="edge_cmd", required=True)
    run = esub.add_parser("run", help="run the agent for one gateway config")
    run.add_argument("--config", required=True, help="gateway config YAML (firmware-configs/gateways/...)")
    run.add_argument("--mqtt", help="uplink broker URL (default: env URBANSENSE_MQTT_URL, the local stack)")
    run.add_argument("--duration", type=float, help="stop after this many seconds")
    run.set_defaults(func=_run)
    check = esub.add_parser("check", help="validate a gateway config and its profiles")
    check.add_argument("--config", required=True)
    check.set_defaults(func=_check)


def _run(args: argparse.Namespace) -> int:
    from edge.agent import EdgeAgent
    from urbansense.config import load_gateway
    from urbansense.mqtt import MqttSettings
    from urbansense.stack import default_urls

    logging.basicConfig(level=logging.INFO, format="%(asctime)s edge %(levelname)s %(message)s")
    gateway = load_gateway(args.config)
    url = args.mqtt or default_urls()[0]
    agent = EdgeAgent(gateway, MqttSettings.from_url(url))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop)
        await agent.run(args.duration)

    asyncio.run(main())
    return 0


def _check(args: argparse.Namespace) -> int:
    from urbansense.config import load_gateway

    loaded = load_gateway(args.config)
    n = sum(len(link.devices) for link in loaded.config.links)
    print(f"{args.config}: ok - gateway {loaded.config.gateway} in {loaded.config.district}, "
          f"{len(loaded.config.links)} link(s), {n} device(s), profiles: {', '.join(sorted(loaded.profiles))}")
    return 0
