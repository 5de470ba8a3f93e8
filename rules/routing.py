"""The Prometheus Alertmanager routing the rules service's alerts go through,
generated from the domain registry (deploy/alertmanager/alertmanager.yml;
`urbansense rules routing` writes it, `--check` says whether it is current).

- Every critical alert goes to the duty officer, and on (`continue`) to its domain's
  receiver too.
- Each family's alerts go to the utility that owns it (its broker account's name,
  `utility-<family>`), grouped by district and rule; the system's (gateways offline,
  clocks) to the operations engineers; anything else to the city operations centre.
- Inhibition: a gateway that is offline silences the silence (deadman) alerts of its
  own devices; a pipe burst in a district metered area (the devices' `dma` label)
  silences the pressure alerts of that area, which the burst explains.

The labels these match are those rules/alertmanager.py gives each alert: `alertname`
(the rule id), `rule`, `kind`, `purpose`, `domain`, `district`, `device`, `gateway`,
`severity`, and the device's inventory labels (`dma`, `area`, ...).
"""

from __future__ import annotations

from typing import Any

import yaml

from urbansense import registry

HEADER = """\
# Prometheus Alertmanager routing for UrbanSense alerts: generated from the domain registry
# by `urbansense rules routing` (rules/routing.py says why each part is there); edit the
# generator, not this file. `make test` checks that it is current and that amtool accepts it.
#
# The receivers name who gets an alert. Each posts to the relay (`urbansense rules relay`,
# the `relay` service of docker-compose.yml; a local stack rewrites the address to the
# relay's default, 127.0.0.1:9095), which publishes the receiver's notifications on
# city/notify/<receiver> (relay.yaml) and sends them to the WeCom, DingTalk and Feishu
# robots a city adds there (relay.example.yaml). For e-mail, add email_configs to a
# receiver, with the templates of templates/urbansense.tmpl.
"""

RELAY_HEADER = """\
# The relay's targets (`urbansense rules relay --config deploy/alertmanager/relay.yaml`):
# generated with alertmanager.yml by `urbansense rules routing`. Every receiver's
# notifications are published on city/notify/<receiver>, which only that receiver's
# broker account may read (deploy/mosquitto/acl). A city's own copy adds chat robots to a
# receiver (relay.example.yaml shows the keys; URLs and secrets stay in the environment).
"""

#: Where the shipped routing posts notifications: the relay as docker-compose.yml names it.
COMPOSE_RELAY_URL = "http://relay:9095"
#: ... and where a local stack's Alertmanager posts them: `urbansense rules relay`'s default.
LOCAL_RELAY_URL = "http://127.0.0.1:9095"

DUTY_OFFICER = "duty-officer"
#: The next levels of an unacknowledged critical alert (rules/escalation.yaml, rules/duty.py).
SHIFT_SUPERVISOR = "shift-supervisor"
OPERATIONS_CENTRE = "city-operations-centre"
ENGINEERS = "operations-engineers"
#: Pressure alerts a burst in the same metered area explains.
BURST_EXPLAINS = r"water\.pressure_(low|falling|drop_fast)"


def config() -> dict[str, Any]:
    families = list(registry.families().values())
    routes: list[dict[str, Any]] = [
        {"matchers": ['severity="critical"'], "receiver": DUTY_OFFICER, "continue": True},
        *({"matchers": [f'domain="{fam.family}"'], "receiver": fam.utility} for fam in families),
        {"matchers": ['domain="system"'], "receiver": ENGINEERS},
    ]
    receivers = [DUTY_OFFICER, SHIFT_SUPERVISOR, OPERATIONS_CENTRE, ENGINEERS, *(fam.utility for fam in families)]
    return {
        "global": {"resolve_timeout": "5m"},
        "route": {
            "receiver": OPERATIONS_CENTRE,
            "group_by": ["domain", "district", "alertname"],
            "group_wait": "10s",
            "group_interval": "1m",
            "repeat_interval": "4h",
            "routes": routes,
        },
        "inhibit_rules": [
            {"source_matchers": ['alertname="system.gateway_offline"'],
             "target_matchers": ['kind="deadman"', 'gateway=~".+"'],
             "equal": ["district", "gateway"]},
            {"source_matchers": ['alertname="water.pipe_burst"'],
             "target_matchers": [f'alertname=~"{BURST_EXPLAINS}"', 'dma=~".+"'],
             "equal": ["district", "dma"]},
        ],
        "receivers": [{"name": name} for name in receivers],
        # e-mail in the city's words (deploy/alertmanager/templates/urbansense.tmpl)
        "templates": ["templates/*.tmpl"],
    }


def via_relay(cfg: dict[str, Any], relay_url: str, *, group_wait: str | None = None,
              group_interval: str | None = None) -> dict[str, Any]:
    """`cfg` with every receiver's notifications posted to the relay (`urbansense rules
    relay` at `relay_url`, e.g. http://127.0.0.1:9095) and, for a run at accelerated event
    time, shorter grouping times."""
    out = {**cfg, "route": {**cfg["route"]}}
    if group_wait:
        out["route"]["group_wait"] = group_wait
    if group_interval:
        out["route"]["group_interval"] = group_interval
    out["receivers"] = [{**r, "webhook_configs": [{"url": f"{relay_url.rstrip('/')}/hook/{r['name']}"}]}
                        for r in cfg["receivers"]]
    return out


def render() -> str:
    return HEADER + yaml.safe_dump(via_relay(config(), COMPOSE_RELAY_URL), sort_keys=False, width=120)


def relay_targets() -> dict[str, Any]:
    """Every receiver's notifications on its MQTT topic (the relay's `mqtt` target)."""
    return {"receivers": {r["name"]: [{"kind": "mqtt"}] for r in config()["receivers"]}}


def render_relay() -> str:
    return RELAY_HEADER + yaml.safe_dump(relay_targets(), sort_keys=False, default_flow_style=None)
