"""The umbrella CLI: `urbansense stack|sim|edge|ingest|rules|dashboards|demo ...`.

Each component registers its own subcommands (its `cli.register`), importing heavy
modules only when a command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from urbansense import __version__
from urbansense.config import ConfigError
from urbansense.registry import RegistryError

COMPONENT_CLIS = (
    "urbansense.stack_cli",
    "urbansense.broker_cli",
    "simulators.cli",
    "edge.cli",
    "ingest.cli",
    "rules.cli",
    "dashboards.cli",
    "urbansense.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="urbansense",
        description="UrbanSense: city sensing from Modbus/MQTT devices to InfluxDB, with early warnings.",
    )
    parser.add_argument("--version", action="version", version=f"urbansense {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMPONENT_CLIS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # component not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        # the parser imports the component CLIs, which may read the domain registry
        args = build_parser().parse_args(argv)
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
