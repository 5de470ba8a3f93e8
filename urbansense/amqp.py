"""The one AMQP 0-9-1 adapter (cluster mode: RabbitMQ; aio-pika underneath), beside the
one MQTT adapter (urbansense/mqtt/).

RabbitMQ's MQTT plugin routes every MQTT publish into the `amq.topic` exchange, topic
`city/a/b/c` becoming routing key `city.a.b.c`; queues bound there are what the ingesters
(ingest/amqp.py) and the partitioned rules (rules/partitions.py) consume.

`AmqpConsumer` consumes one or more queues from the first node that answers and moves to
the next node when one is lost. It runs its own event loop in a thread; the caller
acknowledges each delivery when it is done with it (`ack`), or hands it back (`nack`),
from any thread. A consumer may leave one queue for a while and join it again at the back
of the line (`release`): with single-active-consumer queues, that passes the queue to the
next consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue

from urbansense.mqtt.settings import MqttSettings

log = logging.getLogger("urbansense.amqp")

#: errors that mean "this node, now": try the next one
AMQP_ERRORS = (TimeoutError, OSError, aio_pika.exceptions.AMQPError)
#: errors that mean "not this account": a wrong password, a permission it lacks
ACCESS_ERRORS = (aiormq.exceptions.ProbableAuthenticationError, aiormq.exceptions.ChannelAccessRefused)


async def connect(url: str, timeout_s: float = 10.0) -> AbstractConnection:
    """A connection to one node. One that fails half-way is closed here (aio-pika's
    `connect` leaves it to the garbage collector, which closes it from no event loop)."""
    conn = aio_pika.Connection(aio_pika.connection.make_url(credentialed(url)))
    try:
        await conn.connect(timeout=timeout_s)
    except BaseException:
        with contextlib.suppress(Exception):
            await conn.close()
        raise
    return conn


async def connect_any(urls: Sequence[str], timeout_s: float = 10.0) -> AbstractConnection:
    """The first node of `urls` that answers; ConnectionError naming each node's reason."""
    errors = []
    for url in urls:
        try:
            return await connect(url, timeout_s)
        except AMQP_ERRORS as exc:
            errors.append(f"{where(url)}: {exc or type(exc).__name__}")
    raise ConnectionError("no RabbitMQ node answers: " + "; ".join(errors))


def with_credentials(url: str, user: str, password: str) -> str:
    """`url` with `user` and `password` in it (quoted: a password may hold any character)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"))


def credentialed(url: str) -> str:
    """`url` as it is if it names a user; else with the service's broker account from the
    environment (URBANSENSE_MQTT_USERNAME, _PASSWORD or _PASSWORD_FILE): on a RabbitMQ
    cluster one account serves a service's MQTT and AMQP (urbansense/broker_accounts.py)."""
    if "@" in urlsplit(url).netloc:
        return url
    account = MqttSettings().apply_env()
    return with_credentials(url, account.username, account.password or "") if account.username else url


def account_of(url: str) -> str:
    """The account a connection to `url` logs in with (as `connect` fills it in)."""
    return unquote(urlsplit(credentialed(url)).username or "guest")


def where(url: str) -> str:
    """host:port of an amqp:// URL, without its credentials (for messages)."""
    return url.split("@")[-1].rstrip("/")


def topic_of(routing_key: str) -> str:
    """The MQTT topic back from RabbitMQ's routing key (city.a.b.c -> city/a/b/c)."""
    return routing_key.replace(".", "/")


@dataclass(slots=True)
class AmqpMessage:
    """What a consumer takes from a delivery (the fields the services read of an MQTT message)."""

    topic: str
    payload: bytes
    mid: int  # the AMQP delivery tag, on this connection
    qos: int = 1
    queue: str = ""
    #: delivered before to a consumer that did not acknowledge it (a lost connection, a nack)
    redelivered: bool = False


Declare = Callable[[AbstractChannel], Awaitable[None]]


class AmqpConsumer:
    """Consumes `queues` from the first node that answers, the next one when it is lost;
    `prefetch` unacknowledged messages per queue at most (the backpressure the MQTT path
    gets from Receive Maximum). `declare`, if given, runs on each new connection before
    consuming (idempotent declarations)."""

    def __init__(self, urls: Sequence[str], on_message: Callable[[AmqpMessage], None], *, queues: Sequence[str],
                 on_connect: Callable[[], None] | None = None, prefetch: int = 1000, reconnect_s: float = 0.5,
                 declare: Declare | None = None, name: str = "amqp") -> None:
        if not urls:
            raise ValueError("give at least one amqp:// URL")
        if not queues:
            raise ValueError("give at least one queue to consume")
        self.urls = list(urls)
        self.on_message = on_message
        self.on_connect = on_connect
        self.prefetch = prefetch
        self.queues = list(queues)
        self.reconnect_s = reconnect_s
        self.declare = declare
        self.name = name
        self.connects = 0
        self._connected = threading.Event()
        #: set once every queue has this connection's consumer (cleared when it is lost)
        self.consumers_ready = threading.Event()
        self._stopping = False
        self._paused = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._thread: threading.Thread | None = None
        self._node = 0
        self._lost: asyncio.Event | None = None
        self._queues: dict[str, AbstractQueue] = {}
        self._tags: dict[str, str] = {}  # queue -> consumer tag, while consuming it
        self._queue_of: dict[str, str] = {}  # consumer tag -> queue, this connection
        self._missing = ""  # the queue a node said it does not have
        #: acknowledgements and joins on their way (a task nobody holds may be collected before it runs)
        self._tasks: set[asyncio.Future[Any]] = set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def url(self) -> str:
        return ",".join(where(u) for u in self.urls)

    def start(self) -> None:
        # aiormq logs a lost connection with its traceback; _run says it in a line
        logging.getLogger("aiormq.connection").setLevel(logging.CRITICAL)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name=self.name, daemon=True)
        self._thread.start()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def pause(self) -> None:
        """Take no more messages (a stopping service); what is held may still be acknowledged."""
        self._paused = True

    def stop(self, timeout_s: float = 10.0) -> None:
        """Send the acknowledgements on their way, then close the connection (the
        consumer's loop does both as it ends)."""
        self._stopping = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            # after the acknowledgements already handed to the loop (its callbacks run in
            # order); a loop that ends by itself meanwhile (it saw _stopping) runs nothing
            # more, and needs nothing more
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                loop.call_soon_threadsafe(self._wake)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _wake(self) -> None:
        if self._lost is not None:
            self._lost.set()

    def ack(self, delivery_tag: int) -> None:
        """Acknowledge one delivery of the current connection (any thread)."""
        self._settle(delivery_tag, True)

    def nack(self, delivery_tag: int) -> None:
        """Hand one delivery back to its queue, for the queue's active consumer (any thread)."""
        self._settle(delivery_tag, False)

    def _settle(self, delivery_tag: int, ack: bool) -> None:
        loop, channel = self._loop, self._channel
        if loop is None or channel is None or not self.connected:
            return  # the broker delivers it again on the next connection
        loop.call_soon_threadsafe(self._send_settle, channel, delivery_tag, ack)

    def _send_settle(self, channel: aiormq.abc.AbstractChannel, delivery_tag: int, ack: bool) -> None:
        """On the consumer's loop. A channel closed meanwhile settles nothing: the queue
        delivers the message again."""
        if not channel.is_closed:
            self._spawn(channel.basic_ack(delivery_tag) if ack else
                        channel.basic_nack(delivery_tag, requeue=True))

    def _spawn(self, aw: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def publish(self, routing_key: str, body: bytes, exchange: str = "amq.topic") -> None:
        """Publish on the consumer's connection, fire and forget (any thread); nothing while
        it has no connection."""
        loop, channel = self._loop, self._channel
        if loop is None or channel is None or not self.connected:
            return
        loop.call_soon_threadsafe(self._send_publish, channel, exchange, routing_key, body)

    def _send_publish(self, channel: aiormq.abc.AbstractChannel, exchange: str, routing_key: str,
                      body: bytes) -> None:
        if not channel.is_closed:
            self._spawn(channel.basic_publish(body, exchange=exchange, routing_key=routing_key))

    def consuming(self, queue: str) -> bool:
        return queue in self._tags

    def release(self, queue: str, rejoin_after_s: float) -> None:
        """Stop consuming `queue` now and consume it again after `rejoin_after_s`, at the
        back of its consumers (any thread). Deliveries already received stay the caller's
        to settle."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(lambda: self._spawn(self._release(queue, rejoin_after_s)))

    async def _release(self, queue: str, rejoin_after_s: float) -> None:
        q, tag = self._queues.get(queue), self._tags.pop(queue, None)
        if q is None or tag is None:
            return
        generation = self.connects
        with contextlib.suppress(*AMQP_ERRORS):
            await q.cancel(tag)
        await asyncio.sleep(rejoin_after_s)
        if self.connects == generation and not self._stopping and queue not in self._tags:
            with contextlib.suppress(*AMQP_ERRORS):
                self._tags[queue] = tag = await q.consume(self._deliver, no_ack=False)
                self._queue_of[tag] = queue

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        failures: list[str] = []  # since the last connection, one per node tried
        while not self._stopping:
            url = self.urls[self._node % len(self.urls)]
            before = self.connects
            try:
                await self._consume(url)
            except AMQP_ERRORS as exc:
                why = str(exc) or type(exc).__name__
                if isinstance(exc, ACCESS_ERRORS):
                    if not failures:
                        log.warning("RabbitMQ %s refused account %r (%s): give it its password and permissions "
                                    "(urbansense broker rabbitmq; docs/OPERATIONS.md, cluster accounts); retrying",
                                    where(url), account_of(url), why)
                    failures.append(why)
                elif self.connects > before:
                    failures.clear()
                    if not self._stopping:
                        log.warning("RabbitMQ %s lost (%s); trying the next node", where(url), why)
                elif isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
                    if not failures:
                        log.warning("RabbitMQ %s has no queue %r: declare the cluster's topology before the "
                                    "services and gateways start (urbansense stack up --cluster does; "
                                    "ingest/amqp.py declare_topology); retrying", where(url), self._missing)
                    failures.append(why)
                else:
                    failures.append(f"{where(url)}: {why}")
                    if len(failures) == len(self.urls):  # a whole round, once per streak
                        log.warning("no RabbitMQ node answers (%s); retrying every %.1f s",
                                    "; ".join(failures), self.reconnect_s)
            finally:
                self._connected.clear()
                self._channel = None
                self._tags.clear()
                self._queue_of.clear()
                self._queues.clear()
            if not self._stopping:
                self._node += 1
                await asyncio.sleep(self.reconnect_s)

    async def _consume(self, url: str) -> None:
        conn = await connect(url, timeout_s=10)
        lost = self._lost = asyncio.Event()
        conn.close_callbacks.add(lambda *_: lost.set())
        try:
            channel = await conn.channel()
            channel.close_callbacks.add(lambda *_: lost.set())
            await channel.set_qos(prefetch_count=self.prefetch)
            if self.declare is not None:
                await self.declare(channel)
            self._queues = {}
            for name in self.queues:
                self._missing = name
                self._queues[name] = await channel.get_queue(name, ensure=True)
            self._channel = await channel.get_underlay_channel()
            self.connects += 1
            if self.on_connect is not None:
                self.on_connect()  # before the first delivery of this connection
            self._connected.set()
            for name, queue in self._queues.items():
                self._tags[name] = tag = await queue.consume(self._deliver, no_ack=False)
                self._queue_of[tag] = name
            self.consumers_ready.set()
            log.info("consuming %s from RabbitMQ %s", ", ".join(self.queues), where(url))
            if not self._stopping:  # stop() may have come before this connection's event existed
                await lost.wait()
        finally:
            self._connected.clear()
            self.consumers_ready.clear()
            if self._tasks:  # the acknowledgements on their way, before the connection closes
                await asyncio.wait(list(self._tasks), timeout=5)
            if not conn.is_closed:
                with contextlib.suppress(*AMQP_ERRORS):
                    await conn.close()
        if not self._stopping:
            raise ConnectionError("connection closed")

    async def _deliver(self, message: AbstractIncomingMessage) -> None:
        if self._paused or self._stopping:
            return  # not acknowledged: the queue delivers it again to a consumer that takes it
        tag = message.delivery_tag
        if tag is None:
            return
        queue = self._queue_of.get(message.consumer_tag or "", "")
        self.on_message(AmqpMessage(topic_of(message.routing_key or ""), message.body, tag, queue=queue,
                                    redelivered=bool(message.redelivered)))
