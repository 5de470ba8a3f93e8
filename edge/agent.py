"""The edge agent: one per gateway. Polls every Modbus link and listens to every local
MQTT link, logs each sample, and forwards telemetry batches at QoS 1 (see
store_and_forward.py); answers commands, and reports on itself."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge import commands, diagnostics
from edge.hj212_input import Hj212Link
from edge.jt808_input import Jt808Link
from edge.link import ModbusLink
from edge.mqtt_input import MqttInputLink
from edge.pushed import PushedInput
from edge.remote_config import (
    ConfigPush,
    ConfigRefused,
    ConfigStore,
    Health,
    config_hash,
    parse_push,
    result,
    validate,
    verdict,
)
from edge.service import Notifier
from edge.store_and_forward import StoreAndForward
from edge.telemetry import SelfTelemetry
from edge.wal import WriteAheadLog
from urbansense import __version__, codec, topics
from urbansense.clock import now_ms
from urbansense.config import ConfigError, LoadedGateway, load_gateway
from urbansense.mqtt import Message, MqttClient, MqttSettings, Will
from urbansense.paths import default_run_dir
from urbansense.schema import GatewayStatus

log = logging.getLogger("urbansense.edge")
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def uplink_settings(gateway: LoadedGateway) -> MqttSettings:
    """The config's uplink, with credentials and TLS files from the environment."""
    up = gateway.config.uplink
    return MqttSettings(host=up.host, port=up.port, tls=up.tls, ca_file=up.ca_file, keepalive_s=up.keepalive_s,
                        protocol=up.protocol, fallbacks=up.nodes()[1:]).apply_env()


def wal_path(gateway: LoadedGateway) -> Path:
    cfg = gateway.config
    if cfg.wal.path:
        path = Path(cfg.wal.path)
        return path if path.is_absolute() else (gateway.path.parent / path).resolve()
    return default_run_dir() / "edge" / f"{cfg.district}-{cfg.gateway}.wal"


@dataclass
class _Trial:
    """A pushed config on trial, and what to go back to."""

    push: ConfigPush
    previous: LoadedGateway
    previous_text: str
    before: Health
    version: str | None = None
    task: asyncio.Task[None] | None = None


class EdgeAgent:
    def __init__(self, gateway: LoadedGateway, mqtt: MqttSettings | None = None, *,
                 wal_file: Path | None = None) -> None:
        wal_file = wal_file or wal_path(gateway)
        #: The config file as it is on the gateway, and the config that runs: the same, or a
        #: pushed one kept in the store beside the log (edge/remote_config.py).
        self.base_text = gateway.path.read_text(encoding="utf-8")
        self.store = ConfigStore(wal_file.with_name(wal_file.name + ".config"))
        self.config_text, note = self.store.startup(self.base_text)
        if note:
            log.warning("%s", note)
        if self.config_text != self.base_text:
            try:
                gateway = load_gateway(gateway.path, self.config_text)
            except ConfigError as exc:
                log.error("the kept pushed config no longer loads; running %s:\n  %s", gateway.path,
                          "\n  ".join(exc.problems))
                self.store.clear()
                self.config_text = self.base_text
        self.gateway = gateway
        cfg = self.cfg = gateway.config
        self.telemetry = SelfTelemetry(cfg.gateway)
        self.status_topic = topics.status(cfg.district, cfg.gateway)
        self.cmd_topic = topics.command(cfg.district, cfg.gateway)
        self.result_topic = topics.command_result(cfg.district, cfg.gateway)
        self.config_topic = topics.config(cfg.district, cfg.gateway)
        self.config_result_topic = topics.config_result(cfg.district, cfg.gateway)
        self.wal = WriteAheadLog(wal_file, max_bytes=cfg.wal.max_bytes, sync=cfg.wal.sync)
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
            resume_delay_s=cfg.uplink.resume_delay_s, ack_timeout_s=cfg.uplink.ack_timeout_s)
        self.links: dict[str, ModbusLink] = {}
        #: Links whose devices push: MQTT sensors, HJ 212 stations, JT/T 808 terminals.
        self.pushed_links: dict[str, PushedInput] = {}
        self._build_links(gateway)
        self._poll_tasks: dict[ModbusLink, asyncio.Task[None]] = {}
        self._link_tasks: list[asyncio.Task[None]] = []
        self._trial: _Trial | None = None
        #: The agent's recent log lines, for a remote `log` (edge/diagnostics.py).
        self.log_ring = diagnostics.LogRing()
        self._stop = asyncio.Event()
        self._commands: set[asyncio.Future[dict[str, Any]]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = time.monotonic()

    def _build_links(self, gateway: LoadedGateway) -> None:
        cfg = gateway.config
        self.links, self.pushed_links = {}, {}
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

    def _start_links(self) -> None:
        self._poll_tasks = {link: asyncio.create_task(link.run(), name=f"link-{name}")
                            for name, link in self.links.items()}
        self._link_tasks = [*self._poll_tasks.values(), *(asyncio.create_task(m.run(), name=f"pushed-{name}")
                                                          for name, m in self.pushed_links.items())]

    async def _stop_links(self, grace_s: float = 10.0) -> None:
        """Polling links finish the poll under way (its reading is kept), then everything is
        cancelled; pushed links hold no half-taken reading."""
        for link, task in self._poll_tasks.items():
            link.stop(task)
        if self._poll_tasks:
            await asyncio.wait(self._poll_tasks.values(), timeout=grace_s)
        for t in self._link_tasks:
            t.cancel()
        await asyncio.gather(*self._link_tasks, return_exceptions=True)
        self._poll_tasks, self._link_tasks = {}, []

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

    def health(self) -> Health:
        """Polled devices always count (one not answered yet as failing); pushing devices
        once they have reported."""
        verdicts = [s.ok for link in self.links.values() for s in link.devices.values()]
        verdicts += [s.ok for m in self.pushed_links.values() for s in m.devices.values() if s.ok is not None]
        ok = sum(1 for v in verdicts if v is True)
        return Health(judged=len(verdicts), failing=len(verdicts) - ok, ok=ok)

    def status(self, state: str = "online") -> GatewayStatus:
        return GatewayStatus(state=state, t=now_ms(), version=__version__, devices=self.device_states(),
                             stats=self.stats(), config_hash=config_hash(self.config_text),
                             config_version=self.cfg.version)

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
        while True:
            await asyncio.sleep(self.cfg.polling.status_interval_s)
            if self.mqtt.connected:
                self._publish_status()

    # ------------------------------------------------------------------ commands
    def _on_command(self, msg: Message) -> None:  # network thread
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._start_command, bytes(msg.payload))

    def _start_command(self, payload: bytes,
                       handler: Callable[[bytes], Awaitable[dict[str, Any]]] | None = None) -> None:
        task = asyncio.ensure_future((handler or self.handle_command)(payload))
        self._commands.add(task)  # keep a reference until done
        task.add_done_callback(self._commands.discard)

    async def handle_command(self, payload: bytes) -> dict[str, Any]:
        """A write or a diagnosis (edge/commands.py), answered on .../cmd/result; every one is
        logged with who sent it and counted by outcome (the audit trail)."""
        try:
            command = commands.parse_command(payload, self.cfg.commands.allow)
            if isinstance(command, commands.Diagnosis):
                result = await self._diagnose(command)
            else:
                prepared = commands.prepare(command, self.links,
                                            {d for m in self.pushed_links.values() for d in m.devices})
                result = await commands.execute(prepared)
        except commands.CommandRefused as exc:
            result = commands.refusal(payload, str(exc))
        except Exception as exc:  # a bug must still get an answer to the operator
            log.exception("command failed")
            result = commands.refusal(payload, f"internal error in the edge agent: {exc}")
        result["t"] = now_ms()
        outcome = "ok" if result["ok"] else "refused"
        self.telemetry.command(outcome)
        what = (f"{result.get('dev', '?')} {result.get('field', '?')}={result.get('value')!r}"
                if result.get("op", "write") == "write" else f"{result['op']} {result.get('dev', '')}".rstrip())
        log.info("command %s%s: %s -> %s%s", result.get("id", ""),
                 f" from {result['by']}" if result.get("by") else "", what, outcome,
                 f" ({result['reason']})" if not result["ok"] else "")
        self.mqtt.publish(self.result_topic, codec.dumps(result), qos=1)
        return result

    async def _diagnose(self, req: commands.Diagnosis) -> dict[str, Any]:
        head: dict[str, Any] = {"v": 1, "id": req.id, "op": req.op}
        if req.by:
            head["by"] = req.by
        if req.op == "probe":
            return {**head, **await diagnostics.probe(req, self.links)}
        if req.op == "log":
            return {**head, **diagnostics.log_lines(req, self.log_ring)}
        return {**head, **diagnostics.link_stats(self)}

    # ------------------------------------------------------------------ pushed configs
    def _on_config(self, msg: Message) -> None:  # network thread
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._start_command, bytes(msg.payload), self.apply_config)

    def _answer_config(self, answer: dict[str, Any]) -> None:
        answer["t"] = now_ms()
        log.log(logging.WARNING if not answer["ok"] else logging.INFO, "config push %s: %s%s", answer["id"],
                answer["state"], f" ({answer['reason']})" if answer.get("reason") else "")
        self.mqtt.publish(self.config_result_topic, codec.dumps(answer), qos=1)

    async def apply_config(self, payload: bytes) -> dict[str, Any]:
        """Check a pushed config; refuse it with the reasons, or swap the links over to it and
        start its trial. The log, the uplink and every buffered reading stay."""
        push: ConfigPush | None = None
        try:
            push = parse_push(payload)
            log.info("config push %s%s: %d bytes, hash %s", push.id, f" from {push.by}" if push.by else "",
                     len(push.text), config_hash(push.text))
            if not self.cfg.remote_config.accept:
                raise ConfigRefused("this gateway's config sets remote_config.accept: false")
            if self._trial is not None:
                raise ConfigRefused(f"push {self._trial.push.id!r} is still on trial; wait for its result")
            new = validate(push, self.gateway)
            try:
                self.store.begin_trial(push, self.config_text, self.base_text)
            except OSError as exc:
                raise ConfigRefused(f"cannot keep the config in {self.store.folder}: {exc.strerror or exc}; "
                                    "fix: free space or permissions there (the service's state directory)") from None
        except ConfigRefused as exc:
            answer = result(push.id if push else "", "refused", ok=False, text=push.text if push else "",
                            version=None, reason=str(exc))
            self._answer_config(answer)
            return answer
        trial = self._trial = _Trial(push, self.gateway, self.config_text, self.health(), new.config.version)
        await self._swap(new, push.text)
        spec = trial.previous.config.remote_config  # the running config judges the new one
        trial.task = asyncio.create_task(self._judge(trial, spec.trial_s), name="config-trial")
        answer = result(push.id, "trial", ok=True, text=push.text, version=new.config.version, trial_s=spec.trial_s)
        self._answer_config(answer)
        return answer

    async def _swap(self, gateway: LoadedGateway, text: str) -> None:
        await self._stop_links()
        self.gateway, self.cfg, self.config_text = gateway, gateway.config, text
        self._build_links(gateway)
        self._start_links()
        if self.mqtt.connected:
            self._publish_status()

    async def _judge(self, trial: _Trial, trial_s: float) -> None:
        await asyncio.sleep(trial_s)
        spec = trial.previous.config.remote_config
        after = self.health()
        why = verdict(spec, trial.before, after, trial_s)
        pushed = trial.push
        if why is None:
            self._keep_safely(self.store.keep)
            self._trial = None
            self._answer_config(result(pushed.id, "kept", ok=True, text=pushed.text, version=self.cfg.version,
                                       health=str(after)))
            return
        self._keep_safely(lambda: self.store.roll_back(trial.previous_text))
        await self._swap(trial.previous, trial.previous_text)
        self._trial = None
        self._answer_config(result(pushed.id, "rolled_back", ok=False, text=pushed.text, version=trial.version,
                                   reason=why, running=config_hash(trial.previous_text)))

    def _keep_safely(self, write: Callable[[], None]) -> None:
        """A store write that fails (a full disk) must not stop the trial's verdict: the
        agent goes on; only what the next start runs may differ."""
        try:
            write()
        except OSError as exc:
            log.error("cannot update the kept config in %s: %s; the next start may run another config",
                      self.store.folder, exc)

    # ------------------------------------------------------------------ run
    async def run(self, duration_s: float | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        # Everything built so far (configs, profiles, metric families) lives as long as the
        # agent: keep it out of the cyclic collector's full passes, which polling triggers often.
        gc.freeze()
        self._read_gauges_on_scrape()
        logging.getLogger("urbansense").addHandler(self.log_ring)
        if self.cfg.metrics.port:
            self.telemetry.serve(self.cfg.metrics.host, self.cfg.metrics.port)
        self.mqtt.subscribe(self.cmd_topic, self._on_command, qos=1)
        self.mqtt.subscribe(self.config_topic, self._on_config, qos=1)
        self.mqtt.connect(wait=False)
        self._start_links()
        tasks = [asyncio.create_task(self.forwarder.run(), name="store-and-forward")]
        tasks.append(asyncio.create_task(self._status_loop(), name="status"))
        notifier = Notifier()
        if notifier.watchdog_interval_s is not None:
            tasks.append(asyncio.create_task(self._feed_watchdog(notifier, notifier.watchdog_interval_s),
                                             name="watchdog"))
        notifier.ready(f"{len(self.device_states())} device(s); log {self.wal.path}")
        log.info("edge agent %s/%s: %d Modbus link(s), %d pushed link(s) (MQTT, HJ 212, JT/T 808), "
                 "%d device(s); config %s%s; log %s", self.cfg.district, self.cfg.gateway, len(self.links),
                 len(self.pushed_links), len(self.device_states()), config_hash(self.config_text),
                 f" ({self.cfg.version})" if self.cfg.version else "", self.wal.path)
        try:
            if duration_s is None:
                await self._stop.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(duration_s):
                        await self._stop.wait()
        finally:
            notifier.stopping()
            if self._trial is not None and self._trial.task is not None:
                self._trial.task.cancel()  # the store says "trial": the next start rolls back
            await self._stop_links()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._drain(2.0)
            if self.mqtt.connected:
                self._publish_status("offline")
                await asyncio.sleep(0.2)
            self.mqtt.close()
            self.wal.close()
            logging.getLogger("urbansense").removeHandler(self.log_ring)

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
