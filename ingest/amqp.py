"""Ingesting from a RabbitMQ cluster (cluster mode): the gateways publish over MQTT to any
node; RabbitMQ's MQTT plugin routes each message into `amq.topic` (topic `city/a/b/c`
becomes routing key `city.a.b.c`), whose bindings put telemetry and status into one
replicated quorum queue, `ingest`. A node answers a gateway's PUBLISH with PUBACK only
once the quorum queue has committed the message on a majority of nodes.

The ingesters consume `ingest` over AMQP 0-9-1 (aio-pika): each message is acknowledged
only after InfluxDB has stored its points (ingest/service.py), so the acknowledgement
holds end to end through the loss of any node; what was delivered and not acknowledged
when a connection or a node is lost is delivered again, and because points keep the
edge timestamps, a redelivery overwrites the same points. A message redelivered more
than DELIVERY_LIMIT times (one that crashes every ingester) goes to `ingest.dead` with
RabbitMQ's reason, instead of blocking the queue.

The topology is declared before any gateway publishes (RabbitMQ acknowledges, and drops,
a message that no binding routes): `declare_topology`, which the cluster runner calls.
"""

from __future__ import annotations

import aio_pika

from urbansense.amqp import connect_any

INGEST_QUEUE = "ingest"
DEAD_EXCHANGE = "urbansense.dead"
DEAD_QUEUE = "ingest.dead"
#: The ingester's own dead letters (ingest/deadletter.py), kept for the operators.
DEADLETTER_QUEUE = "ingest.deadletters"
#: Routing keys (MQTT topics with / as .) the ingest queue takes.
INGEST_BINDINGS = ("city.*.*.telemetry", "city.*.*.status")
DELIVERY_LIMIT = 20


async def declare_topology(urls: list[str], timeout_s: float = 30.0) -> None:
    """Queues, bindings and the dead-letter path, on the first node that answers
    (declarations are idempotent: a second run changes nothing)."""
    conn = await connect_any(urls, timeout_s)
    try:
        ch = await conn.channel()
        dead = await ch.declare_exchange(DEAD_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)
        dead_q = await ch.declare_queue(DEAD_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
        await dead_q.bind(dead)
        queue = await ch.declare_queue(INGEST_QUEUE, durable=True, arguments={
            "x-queue-type": "quorum", "x-dead-letter-exchange": DEAD_EXCHANGE,
            "x-delivery-limit": DELIVERY_LIMIT})
        topic = await ch.get_exchange("amq.topic")
        for key in INGEST_BINDINGS:
            await queue.bind(topic, key)
        letters = await ch.declare_queue(DEADLETTER_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
        await letters.bind(topic, "city.ingest.deadletter")
    finally:
        await conn.close()
