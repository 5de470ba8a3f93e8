"""A RabbitMQ cluster made ready for a city (cluster mode): the accounts of
deploy/mosquitto with the same rights as on Mosquitto (urbansense/broker_accounts.py),
through the management plugin's HTTP API, and the topology the services consume (the
ingest queue, the rules' district queues) declared before any gateway publishes.

    urbansense broker rabbitmq --management http://rabbitmq-1:15672 --amqp amqp://rabbitmq-1:5672/

The administrator's credentials come from URBANSENSE_RABBITMQ_ADMIN_USER and
URBANSENSE_RABBITMQ_ADMIN_PASSWORD; each account's password from the variable the accounts
file names, as for Mosquitto. It runs on every start of the cluster (docker-compose.yml's
`rabbitmq-init`): passwords are set again (rotation is: change it in .env, start again),
and an account it made that is no longer listed is deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import requests

from urbansense.broker_accounts import MQTT_EXCHANGE, load_accounts, rabbit_permissions
from urbansense.config import ConfigError
from urbansense.paths import BROKER_DEPLOY_DIR, GATEWAYS_DIR

#: The tag on the users this module makes: how it knows which ones it may delete.
TAG = "urbansense"
ADMIN_USER_ENV = "URBANSENSE_RABBITMQ_ADMIN_USER"
ADMIN_PASSWORD_ENV = "URBANSENSE_RABBITMQ_ADMIN_PASSWORD"


class ProvisionError(RuntimeError):
    pass


@dataclass
class Provisioned:
    accounts: int
    deleted: list[str]


class ManagementApi:
    """The management plugin's HTTP API on the first node of `urls` that answers."""

    def __init__(self, urls: Sequence[str], admin: tuple[str, str], timeout_s: float = 10.0) -> None:
        self.urls = list(urls)
        self.session = requests.Session()
        self.session.auth = admin
        self.admin = admin[0]
        self.timeout_s = timeout_s
        self.url = ""

    def wait(self, timeout_s: float) -> None:
        """Until a node's API answers (a node starting takes seconds)."""
        deadline = time.monotonic() + timeout_s
        errors: list[str] = []
        while True:
            errors.clear()
            for url in self.urls:
                try:
                    reply = self.session.get(f"{url}/api/overview", timeout=self.timeout_s)
                except requests.RequestException as exc:
                    errors.append(f"{url}: {type(exc).__name__}")
                    continue
                if reply.status_code == 401:
                    raise ProvisionError(f"RabbitMQ {url} refused the administrator {self.admin!r}: check "
                                         f"{ADMIN_USER_ENV} and {ADMIN_PASSWORD_ENV}")
                if reply.ok:
                    self.url = url
                    return
                errors.append(f"{url}: HTTP {reply.status_code}")
            if time.monotonic() >= deadline:
                raise ProvisionError("no RabbitMQ management API answers (" + "; ".join(errors) + "); is the "
                                     "management plugin enabled (rabbitmq_management) and the node up?")
            time.sleep(1.0)

    def call(self, method: str, path: str, body: object = None) -> requests.Response:
        if not self.url:
            self.wait(0)
        reply = self.session.request(method, f"{self.url}{path}", json=body, timeout=self.timeout_s)
        if not reply.ok:
            raise ProvisionError(f"RabbitMQ {method} {path}: HTTP {reply.status_code} {reply.text.strip()[:300]}")
        return reply


def provision(api: ManagementApi, folder: Path = BROKER_DEPLOY_DIR, env: Mapping[str, str] | None = None,
              vhost: str = "/") -> Provisioned:
    """Every account of `folder` with its password from `env` and its permissions; the
    accounts this module made before and `folder` no longer lists are deleted."""
    env = os.environ if env is None else env
    accounts = load_accounts(folder)
    missing = [a.password_var for a in accounts if not env.get(a.password_var)]
    if missing:
        raise ConfigError([f"{folder / 'accounts'}: no password in the environment for {', '.join(missing)}\n"
                           "  fix: set them (e.g. in .env, see .env.example) and start again"])
    host = quote(vhost, safe="")
    for account in accounts:
        user = quote(account.name, safe="")
        perms = rabbit_permissions(account)
        api.call("PUT", f"/api/users/{user}", {"password": env[account.password_var], "tags": TAG})
        api.call("PUT", f"/api/permissions/{host}/{user}",
                 {"configure": perms.configure, "write": perms.write, "read": perms.read})
        api.call("PUT", f"/api/topic-permissions/{host}/{user}",
                 {"exchange": MQTT_EXCHANGE, "write": perms.topic_write, "read": perms.topic_read})
    listed = {a.name for a in accounts}
    deleted = []
    for user in api.call("GET", "/api/users").json():
        tags = user.get("tags") or []
        tags = tags if isinstance(tags, list) else str(tags).split(",")
        if TAG in tags and user["name"] not in listed:
            api.call("DELETE", f"/api/users/{quote(user['name'], safe='')}")
            deleted.append(user["name"])
    return Provisioned(len(accounts), deleted)


async def declare(amqp_urls: Sequence[str], districts: Sequence[str]) -> None:
    """The ingest queue with its dead-letter path, and each district's rules queue."""
    from application.cluster import declare_district_queues
    from ingest.amqp import declare_topology

    await declare_topology(list(amqp_urls))
    await declare_district_queues(amqp_urls, districts)


def register(broker: argparse._SubParsersAction) -> None:
    p = broker.add_parser("rabbitmq", help="make a RabbitMQ cluster ready: the accounts of deploy/mosquitto with "
                                           "the same rights, and the queues the services consume")
    p.add_argument("--management", required=True, metavar="URL[,URL...]",
                   help="the management API of the nodes (http://host:15672), tried in turn")
    p.add_argument("--amqp", metavar="URL[,URL...]",
                   help="the nodes' AMQP (amqp://host:5672/): declare the ingest and district queues")
    p.add_argument("--dir", type=Path, default=BROKER_DEPLOY_DIR,
                   help="folder holding acl and accounts (default: deploy/mosquitto)")
    p.add_argument("--district", dest="districts", action="append",
                   help="a district to declare a rules queue for (repeat; default: those of the gateway configs)")
    p.add_argument("--gateways", type=Path, default=GATEWAYS_DIR, help="gateway configs (default: the shipped ones)")
    p.add_argument("--wait", type=float, default=120.0, metavar="S",
                   help="wait this long for the management API to answer (default 120)")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    user, password = os.environ.get(ADMIN_USER_ENV, ""), os.environ.get(ADMIN_PASSWORD_ENV, "")
    if not user or not password:
        print(f"error: set {ADMIN_USER_ENV} and {ADMIN_PASSWORD_ENV} to a RabbitMQ administrator's credentials "
              "(docker-compose.yml passes RABBITMQ_ADMIN_USER and RABBITMQ_ADMIN_PASSWORD from .env)",
              file=sys.stderr)
        return 2
    api = ManagementApi(args.management.split(","), (user, password))
    try:
        api.wait(args.wait)
        done = provision(api, args.dir)
        print(f"RabbitMQ {api.url}: {done.accounts} accounts and their permissions set"
              + (f"; deleted {', '.join(done.deleted)} (no longer in {args.dir / 'accounts'})" if done.deleted
                 else ""))
        if args.amqp:
            from rules.inventory import load_inventory
            from urbansense.amqp import with_credentials

            districts = args.districts or sorted({g.district for g in load_inventory([args.gateways], None,
                                                                                     strict=False)})
            urls = [with_credentials(u, user, password) for u in args.amqp.split(",")]
            asyncio.run(declare(urls, districts))
            print(f"queues declared: ingest, and the rules queues of {', '.join(districts) or 'no district'}")
    except ProvisionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ConnectionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
