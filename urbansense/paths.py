"""Where the files that ship with UrbanSense live, in one place: gateway configs,
dashboards, the deployment's broker settings, the AQI table, and the state folder.

They are read from the checkout when the package runs from one, else from the package
data of the installed wheel (urbansense/shipped/ holds links to the checkout's
firmware-configs/gateways and the broker's delivery settings; the build copies the files
they point to).
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_SITE = _PACKAGE.parent
#: The checkout this package runs from, or None for an installed package.
CHECKOUT: Path | None = _SITE if (_SITE / "pyproject.toml").is_file() and (_SITE / "firmware-configs").is_dir() \
    else None


def _shipped(checkout_path: str, packaged: str) -> Path:
    return CHECKOUT / checkout_path if CHECKOUT is not None else _PACKAGE / "shipped" / packaged


GATEWAYS_DIR = _shipped("firmware-configs/gateways", "gateways")
DASHBOARDS_DIR = _SITE / "dashboards"
#: The broker's delivery settings, shared by the deployment and the stack runner.
BROKER_DELIVERY_CONF = _shipped("deploy/mosquitto/conf.d/delivery.conf", "delivery.conf")
#: Cluster mode's RabbitMQ settings, shared by the compose profile and the stack runner.
RABBIT_CLUSTER_CONF = _shipped("deploy/rabbitmq/conf.d/cluster.conf", "rabbitmq-cluster.conf")
#: The shipped Alertmanager routing (generated from the registry: rules/routing.py).
ALERTMANAGER_CONF = _shipped("deploy/alertmanager/alertmanager.yml", "alertmanager.yml")
#: The deployment's broker files (ACL, accounts): a checkout's deploy/mosquitto.
BROKER_DEPLOY_DIR = (CHECKOUT or Path.cwd()) / "deploy" / "mosquitto"
#: HJ 633-2012 breakpoints (read by the rules engine and the dashboards' AQI colours).
AQI_TABLE = _SITE / "rules" / "tables" / "aqi-hj633-2012.yaml"
#: Where state goes when neither --state-dir nor URBANSENSE_RUN_DIR says.
STATE_ENV = "URBANSENSE_RUN_DIR"


def user_data_dir() -> Path:
    """$XDG_DATA_HOME/urbansense, else ~/.local/share/urbansense."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "urbansense"


def default_run_dir() -> Path:
    """Where state goes (the local stack, edge logs, demo runs): URBANSENSE_RUN_DIR (set by
    --state-dir), else .run/ in the checkout, else the user's data directory."""
    env = os.environ.get(STATE_ENV)
    if env:
        return Path(env)
    return CHECKOUT / ".run" if CHECKOUT is not None else user_data_dir()


def shown(path: Path) -> str:
    """A shipped file's path as a user should read it: relative to the checkout if inside."""
    if CHECKOUT is not None:
        try:
            return str(path.resolve().relative_to(CHECKOUT))
        except ValueError:
            pass
    return str(path)
