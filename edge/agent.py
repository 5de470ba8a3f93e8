"""The edge agent: one per gateway. Polls every Modbus link and listens to every local
MQTT link, logs each sample, and forwards telemetry batches at QoS 1 (see
store_and_forward.py); answers commands, and reports on itself."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from pathlib import Path
from typing import Any

from edge import commands
from edge.hj212_input import Hj212Link
from edge.jt808_input import Jt808Link
from edge.link import ModbusLink
from edge.mqtt_input import MqttInputLink
from edge.pushed import PushedInput
from edge.service import Notifier
from edge.store_and_forward import StoreAndForward
from edge.telemetry import SelfTelemetry
from edge.wal import WriteAheadLog
from urbansense import __version__, codec, topics
from urbansense.clock import now_ms
from urbansense.config import LoadedGateway
from urbansense.mqtt import Message, MqttClient, MqttSettings, Will
from urbansense.paths import default_run_dir
from urbansense.schema import GatewayStatus

log = logging.getLogger("urbansense.edge")
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def uplink_settings(gateway: LoadedGateway) -> MqttSettings:
    """The config's uplink, with credentials and TLS files from the environment."""
    up = gateway.config.uplink
    return MqttSettings(host=up.host, port=up.port, tls=up.tls, ca_file=up.ca_file,
                        keepalive_s=up.keepalive_s).apply_env()


def wal_path(gateway: LoadedGateway) -> Path:
    cfg = gateway.config
    if cfg.wal.path:
        path = Path(cfg.wal.path)
        return path if path.is_absolute() else (gateway.path.parent / path).resolve()
    return default_run_dir() / "edge" / f"{cfg.district}-{cfg.gateway}.wal"


class EdgeAgent:
    def __init__(self, gateway: LoadedGateway, mqtt: MqttSettings | None = None, *,
                 wal_file: Path | None = None) -> None:
        self.gateway = gateway
        cfg = self.cfg = gateway.config
        self.telemetry = SelfTelemetry(cfg.gateway)
        self.status_topic = topics.status(cfg.district, cfg.gateway)
        self.cmd_topic = topics.command(cfg.district, cfg.gateway)
        self.result_topic = topics.command_result(cfg.district, cfg.gateway)
        self.wal = WriteAheadLog(wal_file or wal_path(gateway), max_bytes=cfg.wal.max_bytes, sync=cfg.wal.sync)
        up = cfg.uplink
        will = Will(self.status_topic, codec.encode_status(GatewayStatus(state="offline", t=now_ms(),
                                                                         version=__version__)))
        self.mqtt = MqttClient(
            mqtt or uplink_settings(gateway), client_id=up.client_id or f"edge-{cfg.district}-{cfg.gateway}",
            clean_start=False, session_expiry_s=up.session_expiry_s, will=will,
            on_publish_ack=lambda mid: self.forwarder.on_puback(mid),
            on_connect=self._on_connect, on_disconnect=lambda why: self.forwarder.on_disconnect(why),
            reconnect_min_s=up.reconnect_min_s, reconnect_max_s=up.reconnect_max_s,
        )
        self.forwarder = StoreAndForward(
            self.wal, self.mqtt, topics.telemetry(cfg.district, cfg.gateway), gateway=cfg.gateway,
            district=cfg.district, batch=cfg.batch, wal_spec=cfg.wal, telemetry=self.telemetry,
            resume_delay_s=cfg.uplink.resume_delay_s)
        self.links: dict[str, ModbusLink] = {}
        #: Links whose devices push: MQTT sensors, HJ 212 stations, JT/T 808 terminals.
        self.pushed_links: dict[str, PushedInput] = {}
        for link in cfg.links:
            if not link.devices:
                continue
            if link.transport == "mqtt":
                self.pushed_links[link.name] = MqttInputLink(link, gateway.profiles, gateway=cfg.gateway,
                                                             sink=self.forwarder.add, telemetry=self.telemetry)
            elif link.transport == "hj212":
                self.pushed_links[link.name] = Hj212Link(link, gateway.profiles, sink=self.forwarder.add,
                                                         telemetry=self.telemetry)
            elif link.transport == "jt808":
                self.pushed_links[link.name] = Jt808Link(link, gateway.profiles, sink=self.forwarder.add,
                                                         telemetry=self.telemetry)
            else:
                self.links[link.name] = ModbusLink(link, gateway.profiles, default_interval_s=cfg.poll_interval_s,
                                                   polling=cfg.polling, sink=self.forwarder.add,
                                                   telemetry=self.telemetry)
        self._stop = asyncio.Event()
        self._commands: set[asyncio.Future[dict[str, Any]]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = time.monotonic()

    # ------------------------------------------------------------------ status
    def device_states(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for link in self.links.values():
            out.update({d: "fail" if s.ok is False else "ok" for d, s in link.devices.items()})
        for mlink in self.pushed_links.values():
            out.update({d: "fail" if s.ok is False else "ok" for d, s in mlink.devices.items()})
        return out

    def stats(self) -> dict[str, float]:
        st = self.mqtt.stats
        out = {
            "wal_depth": float(self.wal.depth),
            "wal_bytes": float(self.wal.bytes),
            "wal_dropped": float(self.wal.dropped),
            "reconnects": float(max(0, st.connects - 1)),
            "inflight_batches": float(self.forwarder.inflight_batches),
            "published_batches": float(self.forwarder.published_batches),
            "replayed_samples": float(self.forwarder.replayed_samples),
            "seq": float(self.forwarder.seq),
            "uptime_s": round(time.monotonic() - self._started, 1),
        }
        out.update(self.telemetry.summary())
        return out

    def status(self, state: str = "online") -> GatewayStatus:
        return GatewayStatus(state=state, t=now_ms(), version=__version__, devices=self.device_states(),
                             stats=self.stats())

    def _publish_status(self, state: str = "online") -> None:
        self.mqtt.publish(self.status_topic, codec.encode_status(self.status(state)), qos=1, retain=True)

    def _on_connect(self) -> None:  # network thread
        self.forwarder.on_connect()
        if self._loop is not None:
            # the retained birth message; built on the loop, which owns the stats
            self._loop.call_soon_threadsafe(self._birth)
        else:
            self._publish_status()

    def _birth(self) -> None:
        if self.mqtt.connected:
            self._publish_status()
        self.forwarder.wake()

    def _read_gauges_on_scrape(self) -> None:
        """The log's and uplink's gauges are read when Prometheus scrapes (on the metrics
        server's thread; plain attribute reads), not set once a second by the loop."""
        t = self.telemetry
        t.wal_depth.set_function(lambda: self.wal.depth)
        t.wal_bytes.set_function(lambda: self.wal.bytes)
        t.wal_dropped.set_function(lambda: self.wal.dropped)
        t.reconnects.set_function(lambda: max(0, self.mqtt.stats.connects - 1))
        t.connected.set_function(lambda: 1 if self.mqtt.connected else 0)

    async def _status_loop(self) -> None:
        interval = self.cfg.polling.status_interval_s
        while True:
            await asyncio.sleep(interval)
            if self.mqtt.connected:
                self._publish_status()

    # ------------------------------------------------------------------ commands
    def _on_command(self, msg: Message) -> None:  # network thread
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._start_command, bytes(msg.payload))

    def _start_command(self, payload: bytes) -> None:
        task = asyncio.ensure_future(self.handle_command(payload))
        self._commands.add(task)  # keep a reference until done
        task.add_done_callback(self._commands.discard)

    async def handle_command(self, payload: bytes) -> dict[str, Any]:
        try:
            command = commands.parse_command(payload)
            prepared = commands.prepare(command, self.links, {d for m in self.pushed_links.values() for d in m.devices})
        except commands.CommandRefused as exc:
            result = commands.refusal(payload, str(exc))
        else:
            try:
                result = await commands.execute(prepared)
            except Exception as exc:  # a bug must still get an answer to the operator
                log.exception("command %s failed", command.id)
                result = commands.refusal(payload, f"internal error in the edge agent: {exc}")
            result["t"] = now_ms()
        outcome = "ok" if result["ok"] else "refused"
        self.telemetry.command(outcome)
        log.info("command %s%s: %s %s=%r -> %s%s", result.get("id", ""),
                 f" from {result['by']}" if result.get("by") else "", result.get("dev", "?"),
                 result.get("field", "?"), result.get("value"), outcome,
                 f" ({result['reason']})" if not result["ok"] else "")
        self.mqtt.publish(self.result_topic, codec.dumps(result), qos=1)
        return result

    # ------------------------------------------------------------------ run
    async def run(self, duration_s: float | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        # Everything built so far (configs, profiles, metric families) lives as long as the
        # agent: keep it out of the cyclic collector's full passes, which polling triggers often.
        gc.freeze()
        self._read_gauges_on_scrape()
        if self.cfg.metrics.port:
            self.telemetry.serve(self.cfg.metrics.host, self.cfg.metrics.port)
        self.mqtt.subscribe(self.cmd_topic, self._on_command, qos=1)
        self.mqtt.connect(wait=False)
        tasks = [asyncio.create_task(link.run(), name=f"link-{name}") for name, link in self.links.items()]
        tasks += [asyncio.create_task(m.run(), name=f"pushed-{name}") for name, m in self.pushed_links.items()]
        tasks.append(asyncio.create_task(self.forwarder.run(), name="store-and-forward"))
        tasks.append(asyncio.create_task(self._status_loop(), name="status"))
        notifier = Notifier()
        if notifier.watchdog_interval_s is not None:
            tasks.append(asyncio.create_task(self._feed_watchdog(notifier, notifier.watchdog_interval_s),
                                             name="watchdog"))
        notifier.ready(f"{len(self.device_states())} device(s); log {self.wal.path}")
        log.info("edge agent %s/%s: %d Modbus link(s), %d pushed link(s) (MQTT, HJ 212, JT/T 808), "
                 "%d device(s); log %s", self.cfg.district, self.cfg.gateway, len(self.links), len(self.pushed_links),
                 len(self.device_states()), self.wal.path)
        try:
            if duration_s is None:
                await self._stop.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(duration_s):
                        await self._stop.wait()
        finally:
            notifier.stopping()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._drain(2.0)
            if self.mqtt.connected:
                self._publish_status("offline")
                await asyncio.sleep(0.2)
            self.mqtt.close()
            self.wal.close()

    async def _feed_watchdog(self, notifier: Notifier, interval_s: float) -> None:
        """WATCHDOG=1 from the event loop itself: a loop that hangs (a blocking call, a
        deadlock) stops feeding it and the service manager restarts the agent."""
        while True:
            notifier.watchdog()
            await asyncio.sleep(interval_s)

    async def _drain(self, timeout_s: float) -> None:
        """On a clean stop, give queued samples a short chance to be acknowledged; what is
        not stays in the log for the next start."""
        self.forwarder.tick(flush_live=True)
        deadline = time.monotonic() + timeout_s
        while self.mqtt.connected and time.monotonic() < deadline and (
                self.forwarder.inflight_batches or self.forwarder.pending_samples):
            await asyncio.sleep(0.05)
            self.forwarder.tick(flush_live=True)
        self.forwarder.flush()
        self.forwarder.tick()

    def stop(self) -> None:
        self._stop.set()
