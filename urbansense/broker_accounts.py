"""The broker accounts and their rights, read once from deploy/mosquitto (`accounts`:
who, and the variable holding the password; `acl`: what each may read and write), and the
same rights expressed for a RabbitMQ cluster (cluster mode), so that both brokers enforce
one account list: a gateway publishes its own telemetry and status and reads its own
commands and configurations, a utility reads its own family's alerts, and so on.

RabbitMQ's MQTT plugin routes topic `city/a/b` as routing key `city.a.b` on `amq.topic`
(a `.` inside a level becomes `/`; a subscription's `+` and `#` become `*` and `#`). Its
*topic permissions* are regular expressions on that routing key, checked when a client
publishes (write) and when it subscribes, against the subscription's filter (read). So an
ACL filter becomes a regular expression matching every routing key and every narrower
filter it covers. A user with no topic permission on an exchange may use every topic, so
every account gets one, `^$` (nothing) where the ACL grants nothing.

The *resource permissions* (configure, write, read: queues and exchanges) let an MQTT
client declare, bind and consume only its own subscription queues,
`mqtt-subscription-<client id>qos0|1`: each account's client ids are fixed by
`client_id_pattern` (a gateway's agent connects as `edge-<district>-<gateway>`, a utility
as its account name, optionally followed by `-something`), so no account can consume
another's queue over AMQP. The services that consume the cluster's queues over AMQP get
those queues too (`AMQP_QUEUES`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from urbansense.config import ConfigError

#: The exchange RabbitMQ's MQTT plugin publishes into (mqtt.exchange).
MQTT_EXCHANGE = "amq.topic"
NOTHING = "^$"
#: The AMQP queues a service account consumes (read), declares (configure) and binds
#: (write), beyond its MQTT subscription queues: ingest/amqp.py and rules/partitions.py.
AMQP_QUEUES = {"ingest": r"ingest", "rules": r"rules\..+"}
#: Routing keys a service publishes and binds its queues to over AMQP (rules: the
#: districts' ticks).
AMQP_TOPICS = {"rules": r"rules\.tick\.[^.]+"}
#: The client ids of the service accounts (their processes' `urbansense-<instance>`).
SERVICE_CLIENT_IDS = {
    "ingest": r"urbansense-ingest(?:-.+)?",
    "rules": r"urbansense-rules(?:-.+)?",
    "duty": r"urbansense-duty(?:-.+)?",
    "relay": r"urbansense-relay(?:-.+)?",
    "ops": r"urbansense-(?:silence|request|ops)-.+",
}


@dataclass
class Account:
    name: str
    password_var: str
    #: MQTT topic filters this account may read and write (the ACL's lines for it,
    #: patterns expanded)
    read: list[str] = field(default_factory=list)
    write: list[str] = field(default_factory=list)

    @property
    def gateway(self) -> bool:
        """A gateway's account is named `<district>/<gateway>`."""
        return "/" in self.name


@dataclass(frozen=True)
class RabbitPermissions:
    """One account's permissions on a RabbitMQ virtual host: resource permissions
    (regular expressions on queue and exchange names) and topic permissions on the MQTT
    exchange (regular expressions on routing keys)."""

    user: str
    configure: str
    write: str
    read: str
    topic_write: str
    topic_read: str


def load_accounts(folder: Path) -> list[Account]:
    """The accounts of `folder`/accounts with their rights from `folder`/acl (Mosquitto's
    format: `user NAME`, then `topic read|write|readwrite FILTER`; `pattern ...` lines
    apply to every account, `%u` standing for its name)."""
    accounts: dict[str, Account] = {}
    listed = folder / "accounts"
    for number, line in _lines(listed):
        parts = line.split()
        if len(parts) < 2:
            raise ConfigError([f"{listed}:{number}: '{line}' names no password variable\n"
                               "  fix: one 'username ENV_VAR' per line"])
        accounts[parts[0]] = Account(parts[0], parts[1])
    patterns: list[tuple[str, str]] = []
    current: Account | None = None
    acl = folder / "acl"
    for number, line in _lines(acl):
        parts = line.split()
        keyword = parts[0]
        if keyword == "user" and len(parts) == 2:
            current = accounts.get(parts[1])
            if current is None:
                raise ConfigError([f"{acl}:{number}: user {parts[1]} is not in {listed}\n"
                                   f"  fix: add '{parts[1]} <PASSWORD_VARIABLE>' to {listed}, or remove its lines"])
        elif keyword in ("topic", "pattern") and len(parts) in (2, 3):
            access, topic = (parts[1], parts[2]) if len(parts) == 3 else ("readwrite", parts[1])
            if access not in ("read", "write", "readwrite"):
                raise ConfigError([f"{acl}:{number}: access '{access}' is not read, write or readwrite"])
            if keyword == "pattern":
                if "%" in topic.replace("%u", ""):
                    raise ConfigError([f"{acl}:{number}: '{topic}': only %u (the username) is understood "
                                       "here\n  fix: write the pattern with %u, or the topics per user"])
                patterns.append((access, topic))
            elif current is None:
                raise ConfigError([f"{acl}:{number}: a topic line before any 'user' line\n"
                                   "  fix: put it under the account it is for, or make it a 'pattern'"])
            else:
                _grant(current, access, topic)
        else:
            raise ConfigError([f"{acl}:{number}: cannot read '{line}'\n"
                               "  fix: 'user NAME', 'topic read|write|readwrite FILTER' or 'pattern ... FILTER'"])
    for account in accounts.values():
        for access, topic in patterns:
            _grant(account, access, topic.replace("%u", account.name))
    return list(accounts.values())


def _lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: {exc.strerror or exc}"]) from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]


def _grant(account: Account, access: str, topic: str) -> None:
    if access in ("read", "readwrite"):
        account.read.append(topic)
    if access in ("write", "readwrite"):
        account.write.append(topic)


def filter_regex(topic_filter: str) -> str | None:
    """A regular expression on RabbitMQ routing keys for an MQTT topic filter: it matches
    the routing key of every topic the filter covers and every narrower filter (`+` as
    `*`, `#` as `#`). None for a `$` topic (the broker's own: RabbitMQ has none)."""
    if topic_filter.startswith("$"):
        return None
    levels = topic_filter.split("/")
    out: list[str] = []
    for i, level in enumerate(levels):
        if level == "#":
            if i != len(levels) - 1:
                raise ConfigError([f"topic filter {topic_filter}: '#' must be its last level"])
            # the parent level too, as MQTT's '#' does
            return ("^" + r"\.".join(out) + r"(?:\..*)?$") if out else "^.*$"
        out.append(r"(?:[^.*#]+|\*)" if level == "+" else re.escape(level.replace(".", "/")))
    return "^" + r"\.".join(out) + "$"


def _either(patterns: list[str]) -> str:
    """One regular expression matching what any of `patterns` (each anchored) matches."""
    if not patterns:
        return NOTHING
    unique = list(dict.fromkeys(patterns))
    if len(unique) == 1:
        return unique[0]
    return "^(?:" + "|".join(p.removeprefix("^").removesuffix("$") for p in unique) + ")$"


def client_id_pattern(account: Account) -> str:
    """The client ids an account may connect with (a regular expression, unanchored)."""
    if account.gateway:
        district, _, gateway = account.name.partition("/")
        return re.escape(f"edge-{district}-{gateway}") + "(?:-.+)?"
    return SERVICE_CLIENT_IDS.get(account.name, re.escape(account.name) + "(?:-.+)?")


def rabbit_permissions(account: Account) -> RabbitPermissions:
    """The account's rights as RabbitMQ permissions (module docstring)."""
    own_queues = [f"^mqtt-subscription-{client_id_pattern(account)}qos[01]$"]
    if account.name in AMQP_QUEUES:
        own_queues.append(f"^{AMQP_QUEUES[account.name]}$")
    exchange = "^" + re.escape(MQTT_EXCHANGE) + "$"
    topics_write = [r for f in account.write if (r := filter_regex(f)) is not None]
    if account.name in AMQP_TOPICS:
        topics_write.append(f"^{AMQP_TOPICS[account.name]}$")
    topics_read = [r for f in account.read if (r := filter_regex(f)) is not None]
    if account.name in AMQP_TOPICS:
        topics_read.append(f"^{AMQP_TOPICS[account.name]}$")
    return RabbitPermissions(
        user=account.name,
        configure=_either(own_queues),
        write=_either([exchange, *own_queues]),
        read=_either([exchange, *own_queues]),
        topic_write=_either(topics_write),
        topic_read=_either(topics_read),
    )
