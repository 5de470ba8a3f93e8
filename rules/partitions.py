"""Rules partitioned by district (cluster mode; docs/OPERATIONS.md, "Beyond one machine").

Each district has its own quorum queue on the RabbitMQ cluster, `rules.<district>`, bound
to the district's telemetry and gateway status, with *single active consumer*: every
rules instance consumes every district's queue, and RabbitMQ delivers each queue to one
of them at a time, the others standing by. When the active instance dies, its
connection goes and RabbitMQ hands the queue to the next consumer at once; the instance
that receives a district's first message builds that district's rule state from the
InfluxDB look-back, as any instance does on a restart (rules/warmstart.py).

Spreading the districts: each instance says it is alive on `city/rules/members/<name>/alive`
every second, naming the districts it holds. A district belongs to the live instance
that ranks first for it by rendezvous hashing (`owner`), so adding an instance moves
about 1/N of the districts to it and removing one moves only its own. An instance holding
a district that another live instance owns gives it up (stops consuming the queue and
joins again at the back of the line) once it has heard the owner after taking the
district; an owner that died meanwhile is never waited for. A district no live instance
holds (no traffic since its holder left) is sent a tick (`rules.tick.<district>`), so its
active consumer takes it and its silence rules run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from aio_pika.abc import AbstractChannel

from urbansense import topics
from urbansense.schema import TelemetryBatch

QUEUE_PREFIX = "rules."
TICK_PREFIX = "rules.tick."
MEMBERS_TOPIC = f"{topics.ROOT}/rules/members/+/alive"
#: A redelivery beyond this many times (a message crashing every instance) is dropped.
DELIVERY_LIMIT = 20
#: A district's queue keeps at most this many messages while no instance consumes it; the
#: oldest go first (the rules catch up from InfluxDB's look-back anyway).
MAX_LENGTH = 200_000


def partition_queue(district: str) -> str:
    return QUEUE_PREFIX + district


def member_topic(instance: str) -> str:
    return f"{topics.ROOT}/rules/members/{instance}/alive"


def district_of_queue(queue: str) -> str:
    return queue.removeprefix(QUEUE_PREFIX)


async def declare_partitions(channel: AbstractChannel, districts: Iterable[str]) -> None:
    """Each district's queue and its bindings (idempotent): the district's telemetry and
    gateway status from the MQTT plugin, and its tick."""
    exchange = await channel.get_exchange("amq.topic")
    for district in sorted(districts):
        queue = await channel.declare_queue(partition_queue(district), durable=True, arguments={
            "x-queue-type": "quorum", "x-single-active-consumer": True, "x-delivery-limit": DELIVERY_LIMIT,
            "x-max-length": MAX_LENGTH, "x-overflow": "drop-head"})
        for key in (f"{topics.ROOT}.{district}.*.telemetry", f"{topics.ROOT}.{district}.*.status",
                    TICK_PREFIX + district):
            await queue.bind(exchange, key)


def owner(district: str, members: Iterable[str]) -> str:
    """The member that ranks first for the district (rendezvous hashing)."""
    return max(members, key=lambda m: hashlib.sha256(f"{m}\0{district}".encode()).digest())


@dataclass
class Membership:
    """Who is alive (heard within `expire_s`) and what each holds, as told on the members topic."""

    me: str
    expire_s: float = 3.5
    heard: dict[str, tuple[float, frozenset[str]]] = field(default_factory=dict)

    def hear(self, payload: bytes, now: float | None = None) -> None:
        try:
            body = json.loads(payload)
            name, holds = str(body["instance"]), frozenset(str(d) for d in body.get("holds", []))
        except (ValueError, KeyError, TypeError):
            return  # not a member's message
        if name != self.me:
            self.heard[name] = (time.monotonic() if now is None else now, holds)

    def live(self, now: float) -> dict[str, float]:
        """Live members (this one included, as heard now) and when each was last heard."""
        alive = {name: at for name, (at, _h) in self.heard.items() if now - at < self.expire_s}
        alive[self.me] = now
        return alive

    def holders(self, now: float) -> dict[str, set[str]]:
        """Each district the other live members say they hold, and who says so."""
        out: dict[str, set[str]] = {}
        for name, (at, holds) in self.heard.items():
            if now - at < self.expire_s:
                for district in holds:
                    out.setdefault(district, set()).add(name)
        return out

    @staticmethod
    def message(instance: str, holds: Iterable[str]) -> bytes:
        return json.dumps({"instance": instance, "holds": sorted(holds), "t": int(time.time() * 1000)}).encode()


def to_give_up(held: dict[str, float], membership: Membership, now: float) -> list[str]:
    """The districts held here (with when each was taken) that a live owner, heard after
    the district was taken, should have."""
    live = membership.live(now)
    out = []
    for district, taken_at in held.items():
        first = owner(district, live)
        if first != membership.me and live[first] > taken_at:
            out.append(district)
    return out


def unseen_samples(batch: TelemetryBatch, last_seen: dict[str, int]) -> TelemetryBatch:
    """A redelivered batch without the samples the look-back already gave (the device's
    newest stored time, `last_seen`): each reading is evaluated once."""
    keep = [s for s in batch.samples if s.t > last_seen.get(s.dev, -1)]
    if len(keep) == len(batch.samples):
        return batch
    return dataclasses.replace(batch, samples=keep)
