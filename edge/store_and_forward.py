"""Store-and-forward: samples -> log -> telemetry batches at QoS 1 -> PUBACK -> delete.

Three streams share the uplink, in this order of precedence:

1. urgent samples (an elevator fault, a gas alarm) still in the log from before the
   connection came up: sent at once, ahead of everything;
2. live samples (taken while connected): a batch when `max_samples` are waiting or
   `max_interval_s` has passed, at once when one of them is urgent;
3. the backlog (everything in the log when the connection came up): replayed oldest
   first, paced at `replay_rate_per_s`, using at most half the in-flight window so that
   live data keeps flowing beside it.

The cursors are ids in the log ("sent up to N"). On every (re)connect they restart from
the oldest sample still in the log, since anything still there was never acknowledged;
that resends what was in flight when the link dropped (at-least-once on the wire; the
unchanged edge timestamp makes it exactly-once in InfluxDB).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from edge.telemetry import SelfTelemetry
from edge.wal import Row, WriteAheadLog
from urbansense import codec
from urbansense.clock import now_ms
from urbansense.config import BatchSpec, WalSpec
from urbansense.mqtt import MqttClient, MqttError
from urbansense.schema import Sample

log = logging.getLogger("urbansense.edge")

#: Batches stay well below the payload limit the broker and ingesters accept (a row
#: alone always fits: wal.CHUNK_BYTES).
MAX_BATCH_BYTES = codec.MAX_PAYLOAD_BYTES * 3 // 4

#: A batch ready to publish: (log rows it carries, samples in them, payload, is it
#: backlog replay).
Outgoing = tuple[list[int], int, bytes, bool]


#: How often the loop ticks while it replays a backlog or waits to go online.
BUSY_TICK_S = 0.1


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class StoreAndForward:
    def __init__(self, wal: WriteAheadLog, mqtt: MqttClient, topic: str, *, gateway: str, district: str,
                 batch: BatchSpec, wal_spec: WalSpec, telemetry: SelfTelemetry,
                 resume_delay_s: float = 0.0, ack_timeout_s: float = 20.0) -> None:
        self.wal = wal
        self.mqtt = mqtt
        self.topic = topic
        self.max_samples = batch.max_samples
        self.max_interval_s = batch.max_interval_s
        self.commit_interval_s = wal_spec.commit_interval_s or min(batch.max_interval_s, 1.0)
        self.replay_rate = wal_spec.replay_rate_per_s
        self.window = wal_spec.max_inflight_batches
        self.telemetry = telemetry
        self.seq = wal.get_meta("seq")
        self._prefix = (b'{"v":1,"gw":' + codec.dumps(gateway) + b',"district":' + codec.dumps(district)
                        + b',"seq":')
        self._pending: list[tuple[bool, bytes]] = []
        self._deletes: list[int] = []  # acknowledged, not yet deleted from the log
        self._acks: collections.deque[int] = collections.deque()  # filled by the network thread
        # mid -> (row ids, samples, is_backlog, when sent); oldest first
        self._inflight: dict[int, tuple[list[int], int, bool, float]] = {}
        self._backlog_inflight = 0
        self._online = False
        # Each new connection bumps the epoch (network thread); the loop resets its cursors
        # when it sees a new one, however many drops happened between two ticks.
        self._epoch = 0
        self._seen_epoch = 0
        # after a reconnect, publishing waits resume_delay_s (UplinkSpec.resume_delay_s)
        self.resume_delay_s = resume_delay_s
        # a batch unacknowledged this long drops the connection (UplinkSpec.ack_timeout_s)
        self.ack_timeout_s = ack_timeout_s
        self.ack_timeouts = 0
        self._last_ack_at = 0.0
        # an agent restarted on a log with samples in it (killed during an outage, say)
        # may be meeting a broker that restarted too: its first connection waits as well
        self._started_with_backlog = wal.depth > 0
        self._connected_at = 0.0
        self._urgent_waiting = False
        #: What the loop waits on between ticks (`wake` completes it early).
        self._waiter: asyncio.Future[None] | None = None
        # cursors
        self._live_pos = wal.max_id()
        self._committed_max = self._live_pos
        self._live_samples = 0  # samples in the rows after _live_pos
        self._backlog_pos = 0
        self._backlog_upto = 0
        self._urgent_pos = 0
        self._tokens = 0.0
        self._last_refill = time.monotonic()
        self._next_live_flush = time.monotonic() + self.max_interval_s
        self.published_batches = 0
        self.replayed_samples = 0
        self.acked_samples = 0

    # ------------------------------------------------------------------ inputs
    def add(self, sample: Sample) -> None:
        """Queue a sample for the next group commit (at most commit_interval_s away)."""
        self._pending.append((sample.urgent, codec.dumps(sample.to_wire())))
        if sample.urgent:
            self.wake()

    def on_puback(self, mid: int) -> None:  # network thread
        self._acks.append(mid)

    def on_connect(self) -> None:  # network thread
        self._connected_at = time.monotonic()
        self._epoch += 1

    def on_disconnect(self, reason: str) -> None:  # network thread
        """Nothing to do here: the next tick (within commit_interval_s) sees the client
        disconnected and goes offline; asyncio objects must not be touched from this thread."""

    @property
    def inflight_batches(self) -> int:
        return len(self._inflight)

    @property
    def pending_samples(self) -> int:
        """Samples not yet handed to the broker on this connection (live ones)."""
        return len(self._pending) + self._live_samples

    def wake(self) -> None:
        """Tick now rather than at the end of the commit interval (loop thread only)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------------ loop
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # One future and one timer per tick: what asyncio.timeout around an Event costs
            # twice over, ten times a second on every gateway.
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(self._tick_wait(), _release, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            try:
                self.tick()
            except Exception:  # never let one bad tick end forwarding; the log keeps the data
                log.exception("store-and-forward tick failed; retrying")
                await asyncio.sleep(1.0)

    def _tick_wait(self) -> float:
        """Live forwarding ticks once per commit interval (urgent samples and a new
        connection wake it at once); replaying a backlog, or waiting to go online (the
        resume delay, a lost connection), at least every BUSY_TICK_S."""
        if self._online and self._backlog_pos >= self._backlog_upto and not self._inflight_full():
            return self.commit_interval_s
        return min(self.commit_interval_s, BUSY_TICK_S)

    def _inflight_full(self) -> bool:
        return len(self._inflight) >= self.window

    def tick(self, *, flush_live: bool = False) -> None:
        epoch, connected = self._epoch, self.mqtt.connected
        if self._acks:
            self._last_ack_at = time.monotonic()
        while self._acks:
            entry = self._inflight.pop(self._acks.popleft(), None)
            if entry is not None:
                self._deletes.extend(entry[0])
                self.acked_samples += entry[1]
                self._backlog_inflight -= entry[2]
        self._check_acks_coming()
        pending, self._pending = self._pending, []
        deletes, self._deletes = self._deletes, []
        seq = self.seq
        try:
            # One transaction a tick: the new samples, the acknowledged ones gone, and the
            # seq of the batches about to leave (durable before any of them leaves).
            with self.wal.transaction():
                batches = self._log_and_batch(pending, deletes, epoch, connected, flush_live)
        except Exception:
            # e.g. disk full: nothing of this tick is in the log. Keep the samples and the
            # acknowledgements for the next try, and send again from the oldest sample
            # in the log, as after a reconnect: the cursors may have moved past rows that
            # were rolled back (their ids are handed out again).
            self._pending = pending + self._pending
            self._deletes = deletes + self._deletes
            self.seq = seq  # the batches numbered in it never leave: no gap on the wire
            self._committed_max = self.wal.max_id()
            if self._online:
                self._seen_epoch = -1  # forces _go_online on the next tick
                self._go_offline("the log could not be written")
            raise
        if batches:
            for ids, count, payload, is_backlog in batches:
                try:
                    mid = self.mqtt.publish(self.topic, payload, qos=1)
                except MqttError as exc:
                    # The cursors already moved past these samples: start over from the
                    # oldest unacknowledged one, as after a reconnect (duplicates are harmless).
                    log.warning("publish failed (%s); resending from the oldest logged sample", exc)
                    self._seen_epoch = -1  # forces _go_online on the next tick
                    self._go_offline("a publish failed")
                    return
                self._inflight[mid] = (ids, count, is_backlog, time.monotonic())
                self.published_batches += 1
                if is_backlog:
                    self._backlog_inflight += 1

    def _check_acks_coming(self) -> None:
        """A node that stopped answering while the connection looks open: batches are in
        flight and no PUBACK came for ack_timeout_s (since the oldest was sent, or since the
        last PUBACK: a slow link that acknowledges one batch at a time is not a dead one).
        Drop the connection; the next one (to the next node of a cluster) sends again from
        the log."""
        if not self._online or not self._inflight:
            return
        waited = time.monotonic() - max(next(iter(self._inflight.values()))[3], self._last_ack_at)
        if waited >= self.ack_timeout_s:
            self.ack_timeouts += 1
            self._inflight.clear()  # a second drop waits for the next connection's batches
            self.mqtt.drop(f"no PUBACK for {waited:.1f} s (uplink.ack_timeout_s {self.ack_timeout_s:g})")

    def _log_and_batch(self, pending: list[tuple[bool, bytes]], deletes: list[int], epoch: int,
                       connected: bool, flush_live: bool) -> list[Outgoing]:
        """A tick's log work (inside the tick's transaction) and the batches it sends."""
        if pending or deletes:
            ids = self.wal.commit(pending, deletes, max_chunk=self.max_samples)
            if ids:
                self._committed_max = ids[-1]
                self._live_samples += len(pending)
                if any(u for u, _ in pending):
                    self._urgent_waiting = True
        if self._online and (not connected or epoch != self._seen_epoch):
            self._go_offline()
        if not self._online and connected and epoch != self._seen_epoch and self._resumable(epoch):
            self._seen_epoch = epoch
            self._go_online()
        if not self._online:
            return []
        if flush_live:
            self._urgent_waiting = True
        batches = self._urgent_batches() + self._live_batches() + self._backlog_batches()
        if batches:
            self.wal.commit(meta={"seq": self.seq})
        return batches

    def flush(self) -> None:
        """Commit whatever is queued (on shutdown)."""
        pending, self._pending = self._pending, []
        if pending:
            self.wal.commit(pending, max_chunk=self.max_samples)

    # ------------------------------------------------------------------ state
    def _resumable(self, epoch: int) -> bool:
        """A reconnection publishes after resume_delay_s; so does the first connection when
        the agent started with a backlog or found no broker at first (both: the broker
        may have restarted, and an ingester may not be back yet). Otherwise at once."""
        first_clean = (epoch <= 1 and not self._started_with_backlog
                       and self.mqtt.stats.connect_failures == 0)
        return first_clean or time.monotonic() - self._connected_at >= self.resume_delay_s

    def _go_offline(self, why: str = "uplink lost") -> None:
        if self._online:
            log.warning("%s; samples stay in the log (%d waiting)", why, self.wal.depth)
        self._online = False
        self._inflight.clear()
        self._backlog_inflight = 0

    def _go_online(self) -> None:
        self._online = True
        self._inflight.clear()
        self._backlog_inflight = 0
        self._backlog_upto = self._committed_max = max(self._committed_max, self.wal.max_id())
        self._backlog_pos = 0
        self._urgent_pos = 0
        self._live_pos = self._backlog_upto
        self._live_samples = 0
        self._tokens = 0.0
        self._last_refill = time.monotonic()
        self._urgent_waiting = False
        if self.wal.depth:
            log.info("uplink up; replaying %d logged sample(s) at up to %.0f/s", self.wal.depth,
                     self.replay_rate)

    # ------------------------------------------------------------------ batches
    def _batch(self, rows: list[Row], is_backlog: bool) -> Outgoing:
        self.seq += 1
        payload = (self._prefix + str(self.seq).encode() + b',"sent":' + str(now_ms()).encode()
                   + b',"samples":[' + b",".join([body for _, _, body in rows]) + b"]}")
        return [i for i, _, _ in rows], sum(n for _, n, _ in rows), payload, is_backlog

    def _room(self) -> int:
        return self.window - len(self._inflight)

    def _urgent_batches(self) -> list[Outgoing]:
        out: list[Outgoing] = []
        while self._urgent_pos < self._backlog_upto and self._room() - len(out) > 0:
            rows = self.wal.read(self._urgent_pos, self._backlog_upto, self.max_samples, urgent=True,
                                 max_bytes=MAX_BATCH_BYTES)
            if not rows:
                self._urgent_pos = self._backlog_upto
                break
            self._urgent_pos = rows[-1][0]
            out.append(self._batch(rows, False))
        return out

    def _live_batches(self) -> list[Outgoing]:
        if self._committed_max <= self._live_pos:
            self._next_live_flush = time.monotonic() + self.max_interval_s
            return []
        now = time.monotonic()
        due = self._urgent_waiting or self._live_samples >= self.max_samples or now >= self._next_live_flush
        if not due:
            return []
        out: list[Outgoing] = []
        while self._room() - len(out) > 0:
            rows = self.wal.read(self._live_pos, self._committed_max, self.max_samples, max_bytes=MAX_BATCH_BYTES)
            if not rows:
                self._live_pos = self._committed_max
                self._live_samples = 0
                break
            self._live_pos = rows[-1][0]
            out.append(self._batch(rows, False))
            self._live_samples = max(0, self._live_samples - out[-1][1])
            if self._live_pos >= self._committed_max:
                self._live_samples = 0
                break
        self._urgent_waiting = False
        self._next_live_flush = now + self.max_interval_s
        return out

    def _backlog_batches(self) -> list[Outgoing]:
        if self._backlog_pos >= self._backlog_upto:
            return []
        now = time.monotonic()
        self._tokens = min(self._tokens + (now - self._last_refill) * self.replay_rate,
                           max(float(self.max_samples), self.replay_rate))
        self._last_refill = now
        out: list[Outgoing] = []
        share = max(1, self.window // 2)
        while self._tokens >= 1 and self._backlog_inflight + len(out) < share and self._room() - len(out) > 0:
            limit = int(min(self._tokens, self.max_samples))
            rows = self.wal.read(self._backlog_pos, self._backlog_upto, limit, urgent=False,
                                 max_bytes=MAX_BATCH_BYTES)
            if not rows:
                self._backlog_pos = self._backlog_upto
                log.info("backlog replay done")
                break
            self._backlog_pos = rows[-1][0]
            out.append(self._batch(rows, True))
            self._tokens -= out[-1][1]
            self.replayed_samples += out[-1][1]
        return out
