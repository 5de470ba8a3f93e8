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

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage

log = logging.getLogger("urbansense.ingest")

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
    conn = await _connect_any(urls, timeout_s)
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


async def _connect_any(urls: list[str], timeout_s: float) -> aio_pika.abc.AbstractConnection:
    errors = []
    for url in urls:
        try:
            return await aio_pika.connect(url, timeout=timeout_s)
        except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
            errors.append(f"{_where(url)}: {exc or type(exc).__name__}")
    raise ConnectionError("no RabbitMQ node answers: " + "; ".join(errors))


def _where(url: str) -> str:
    return url.split("@")[-1].rstrip("/")


@dataclass(slots=True)
class AmqpMessage:
    """What the ingester takes from a delivery (the fields it reads of an MQTT message)."""

    topic: str
    payload: bytes
    mid: int  # the AMQP delivery tag, on this connection
    qos: int = 1


class AmqpSource:
    """Consumes the ingest queue from the first node that answers, the next one when it
    is lost; `prefetch` unacknowledged messages at most (the backpressure the MQTT path
    gets from Receive Maximum). Runs its own event loop in a thread; `ack()` may be
    called from any thread."""

    def __init__(self, urls: list[str], on_message: Callable[[AmqpMessage], None], *,
                 on_connect: Callable[[], None] | None = None, prefetch: int = 1000,
                 queue: str = INGEST_QUEUE, reconnect_s: float = 0.5) -> None:
        if not urls:
            raise ValueError("give at least one amqp:// URL")
        self.urls = urls
        self.on_message = on_message
        self.on_connect = on_connect
        self.prefetch = prefetch
        self.queue = queue
        self.reconnect_s = reconnect_s
        self.connects = 0
        self._connected = threading.Event()
        self._stopping = False
        self._paused = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._thread: threading.Thread | None = None
        self._node = 0
        self._lost: asyncio.Event | None = None
        #: acknowledgements on their way (a task nobody holds may be collected before it runs)
        self._acks: set[asyncio.Future[Any]] = set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def url(self) -> str:
        return ",".join(_where(u) for u in self.urls)

    def start(self) -> None:
        # aiormq logs a lost connection with its traceback; _run says it in a line
        logging.getLogger("aiormq.connection").setLevel(logging.CRITICAL)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="ingest-amqp", daemon=True)
        self._thread.start()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def pause(self) -> None:
        """Take no more messages (a stopping ingester); what is held may still be acknowledged."""
        self._paused = True

    def stop(self, timeout_s: float = 10.0) -> None:
        """Send the acknowledgements on their way, then close the connection."""
        self._stopping = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                asyncio.run_coroutine_threadsafe(self._finish(), loop).result(timeout_s)
        if self._thread is not None:
            self._thread.join(timeout_s)

    async def _finish(self) -> None:
        if self._acks:
            await asyncio.wait(list(self._acks), timeout=5)
        if self._lost is not None:
            self._lost.set()

    def ack(self, delivery_tag: int) -> None:
        """Acknowledge one delivery of the current connection (any thread)."""
        loop, channel = self._loop, self._channel
        if loop is None or channel is None or not self.connected:
            return  # the broker delivers it again on the next connection
        loop.call_soon_threadsafe(self._ack, channel, delivery_tag)

    def _ack(self, channel: aiormq.abc.AbstractChannel, delivery_tag: int) -> None:
        """On the source's loop. A channel closed meanwhile acknowledges nothing: the queue
        delivers the message again, and its points overwrite themselves."""
        if not channel.is_closed:
            self._acks.add(task := asyncio.ensure_future(channel.basic_ack(delivery_tag)))
            task.add_done_callback(self._acks.discard)

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        failures: list[str] = []  # since the last connection, one per node tried
        while not self._stopping:
            url = self.urls[self._node % len(self.urls)]
            before = self.connects
            try:
                await self._consume(url)
            except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
                why = str(exc) or type(exc).__name__
                if self.connects > before:
                    failures.clear()
                    if not self._stopping:
                        log.warning("RabbitMQ %s lost (%s); trying the next node", _where(url), why)
                elif isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
                    if not failures:
                        log.warning("RabbitMQ %s has no queue %r: declare the cluster's topology before the "
                                    "ingesters and gateways start (urbansense stack up --cluster does; "
                                    "ingest/amqp.py declare_topology); retrying", _where(url), self.queue)
                    failures.append(why)
                else:
                    failures.append(f"{_where(url)}: {why}")
                    if len(failures) == len(self.urls):  # a whole round, once per streak
                        log.warning("no RabbitMQ node answers (%s); retrying every %.1f s",
                                    "; ".join(failures), self.reconnect_s)
            finally:
                self._connected.clear()
                self._channel = None
            if not self._stopping:
                self._node += 1
                await asyncio.sleep(self.reconnect_s)

    async def _consume(self, url: str) -> None:
        conn = await aio_pika.connect(url, timeout=10)
        lost = self._lost = asyncio.Event()
        conn.close_callbacks.add(lambda *_: lost.set())
        try:
            channel = await conn.channel()
            channel.close_callbacks.add(lambda *_: lost.set())
            await channel.set_qos(prefetch_count=self.prefetch)
            queue = await channel.get_queue(self.queue, ensure=True)
            self._channel = await channel.get_underlay_channel()
            self.connects += 1
            if self.on_connect is not None:
                self.on_connect()  # before the first delivery of this connection
            self._connected.set()
            log.info("ingesting from RabbitMQ %s, queue %s", _where(url), self.queue)
            await queue.consume(self._deliver, no_ack=False)
            await lost.wait()
        finally:
            self._connected.clear()
            if not conn.is_closed:
                await conn.close()
        if not self._stopping:
            raise ConnectionError("connection closed")

    async def _deliver(self, message: AbstractIncomingMessage) -> None:
        if self._paused or self._stopping:
            return  # not acknowledged: the queue delivers it again to a consumer that takes it
        tag = message.delivery_tag
        if tag is None:
            return
        self.on_message(AmqpMessage(_topic(message.routing_key or ""), message.body, tag))


def _topic(routing_key: str) -> str:
    """The MQTT topic back from RabbitMQ's routing key (city.a.b.c -> city/a/b/c)."""
    return routing_key.replace(".", "/")
