"""Where the files that ship with UrbanSense live, in one place: gateway
configs, dashboards, the deployment's broker settings, the AQI table, and the
default run folder. Today they are read from the checkout the package runs from; when
they move into package data, this module is the one to change.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The checkout (the folder holding firmware-configs/, dashboards/, deploy/, rules/).
CHECKOUT = Path(__file__).resolve().parent.parent

GATEWAYS_DIR = CHECKOUT / "firmware-configs" / "gateways"
DASHBOARDS_DIR = CHECKOUT / "dashboards"
#: The broker's delivery settings, shared by the deployment and the stack runner.
BROKER_DEPLOY_DIR = CHECKOUT / "deploy" / "mosquitto"
BROKER_DELIVERY_CONF = BROKER_DEPLOY_DIR / "conf.d" / "delivery.conf"
#: HJ 633-2012 breakpoints (read by the rules engine and the dashboards' AQI colours).
AQI_TABLE = CHECKOUT / "rules" / "tables" / "aqi-hj633-2012.yaml"


def default_run_dir() -> Path:
    """Where the local stack keeps its state: URBANSENSE_RUN_DIR, else .run/ in the checkout."""
    env = os.environ.get("URBANSENSE_RUN_DIR")
    return Path(env) if env else CHECKOUT / ".run"
