"""The umbrella CLI: `urbansense stack|broker|sim|edge|ingest|rules|dashboards|demo ...`.

Each component registers its own subcommands (its `cli.register`), importing heavy
modules only when a command runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from urbansense import __version__
from urbansense.config import ConfigError
from urbansense.paths import STATE_ENV
from urbansense.registry import RegistryError

COMPONENT_CLIS = (
    "application.stack_cli",
    "urbansense.broker_cli",
    "simulators.cli",
    "edge.cli",
    "ingest.cli",
    "rules.cli",
    "dashboards.cli",
    "application.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="urbansense",
        description="UrbanSense: city sensing from Modbus/MQTT devices to InfluxDB, with early warnings.",
    )
    parser.add_argument("--version", action="version", version=f"urbansense {__version__}")
    parser.add_argument("--state-dir", type=Path, metavar="DIR",
                        help="where state goes: the local stack, edge logs, demo runs (default: "
                             "$URBANSENSE_RUN_DIR, .run/ in a checkout, else ~/.local/share/urbansense)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMPONENT_CLIS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # component not built yet
            raise
        module.register(sub)
    # scoring against simulations (application layer) joins the rules engine's command
    from application import scoring_cli

    scoring_cli.register(_subcommands(sub.choices["rules"]))
    # `broker rabbitmq`: a cluster's accounts and queues (it declares the components' queues)
    from application import rabbit_accounts

    rabbit_accounts.register(_subcommands(sub.choices["broker"]))
    # `sim run --with-edge`: the simulators' run with edge agents beside it
    sim_run = _subcommands(sub.choices["sim"]).choices["run"]
    sim_run.add_argument("--with-edge", action="store_true", help="also run one edge agent per gateway")
    sim_run.set_defaults(start_edges=_start_edges)
    return parser


def _start_edges(configs: list[Path], mqtt_url: str | None, log_dir: Path) -> Callable[[], None]:
    """One `urbansense edge run` per gateway config; returns what stops them all."""
    from application.processes import ProcessGroup

    procs = ProcessGroup(log_dir)
    for path in configs:
        procs.start(f"edge-{path.stem}", "edge", "run", "--config", str(path),
                    *(["--mqtt", mqtt_url] if mqtt_url else []))
    return procs.stop_all


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        # the parser imports the component CLIs, which may read the domain registry
        args = build_parser().parse_args(argv)
        if args.state_dir is not None:  # for this process and every process it starts
            os.environ[STATE_ENV] = str(args.state_dir.resolve())
        return int(args.func(args) or 0)
    except (ConfigError, RegistryError) as exc:
        print("configuration error:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except RuntimeError as exc:  # StackError, MqttError, InfluxError: messages meant for users
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
