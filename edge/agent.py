"""The edge agent: one per gateway. Polls every device on its schedule, decodes the
readings through the device profile, and publishes telemetry batches at QoS 1."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from edge.decoding import decode_read
from edge.planner import ReadRequest, plan_reads
from urbansense import __version__, codec, topics
from urbansense.clock import now_ms
from urbansense.config import DeviceSpec, LinkSpec, LoadedGateway, Profile
from urbansense.mqtt import MqttClient, MqttSettings, Will
from urbansense.schema import FieldValue, GatewayStatus, Sample, TelemetryBatch

log = logging.getLogger("urbansense.edge")
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


@dataclass
class DeviceState:
    spec: DeviceSpec
    profile: Profile
    plan: list[ReadRequest]
    ok: bool = True
    last_error: str = ""
    polls: int = 0
    failures: int = 0


@dataclass
class Batcher:
    """Collects samples and hands out batches with an increasing per-gateway seq."""

    gateway: str
    district: str
    max_samples: int
    seq: int = 0
    pending: list[Sample] = field(default_factory=list)

    def add(self, sample: Sample) -> bool:
        self.pending.append(sample)
        return len(self.pending) >= self.max_samples

    def take(self) -> TelemetryBatch | None:
        if not self.pending:
            return None
        samples, self.pending = self.pending[: self.max_samples], self.pending[self.max_samples :]
        self.seq += 1
        return TelemetryBatch(gw=self.gateway, district=self.district, seq=self.seq, sent=now_ms(),
                              samples=samples)


class EdgeAgent:
    def __init__(self, gateway: LoadedGateway, mqtt: MqttSettings) -> None:
        self.gateway = gateway
        cfg = gateway.config
        self.cfg = cfg
        self.telemetry_topic = topics.telemetry(cfg.district, cfg.gateway)
        self.status_topic = topics.status(cfg.district, cfg.gateway)
        self.batcher = Batcher(cfg.gateway, cfg.district, cfg.batch.max_samples)
        self.devices: dict[str, DeviceState] = {}
        for _link, dev in cfg.devices():
            profile = gateway.profiles[dev.profile]
            self.devices[dev.id] = DeviceState(dev, profile, plan_reads(profile.fields))
        will = Will(self.status_topic, codec.encode_status(GatewayStatus(state="offline", t=now_ms())))
        self.mqtt = MqttClient(mqtt, client_id=f"edge-{cfg.district}-{cfg.gateway}", clean_start=False,
                               session_expiry_s=3600, will=will, on_connect=self._birth)
        self._stop = asyncio.Event()
        self._flush_now = asyncio.Event()

    # ------------------------------------------------------------------ status
    def _status(self, state: str = "online") -> GatewayStatus:
        return GatewayStatus(
            state=state, t=now_ms(), version=__version__,
            devices={d: ("ok" if s.ok else "fail") for d, s in self.devices.items()},
            stats={"reconnects": float(max(0, self.mqtt.stats.connects - 1))},
        )

    def _birth(self) -> None:
        self.mqtt.publish(self.status_topic, codec.encode_status(self._status()), qos=1, retain=True)

    # ------------------------------------------------------------------ run
    async def run(self, duration_s: float | None = None) -> None:
        self.mqtt.connect(wait=False)
        tasks = [asyncio.create_task(self._poll_link(link)) for link in self.cfg.links if link.devices]
        tasks.append(asyncio.create_task(self._flusher()))
        try:
            if duration_s is None:
                await self._stop.wait()
            else:
                await asyncio.wait_for(self._stop.wait(), duration_s)
        except TimeoutError:
            pass
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._publish_pending()
            self.mqtt.publish(self.status_topic, codec.encode_status(self._status("offline")), retain=True)
            await asyncio.sleep(0.2)
            self.mqtt.close()

    def stop(self) -> None:
        self._stop.set()

    async def _flusher(self) -> None:
        interval = self.cfg.batch.max_interval_s
        while True:
            try:
                await asyncio.wait_for(self._flush_now.wait(), interval)
            except TimeoutError:
                pass
            self._flush_now.clear()
            self._publish_pending()

    def _publish_pending(self) -> None:
        while (batch := self.batcher.take()) is not None:
            self.mqtt.publish(self.telemetry_topic, codec.encode_batch(batch), qos=1)

    def _emit(self, sample: Sample) -> None:
        if self.batcher.add(sample):
            self._flush_now.set()

    async def _poll_link(self, link: LinkSpec) -> None:
        """Poll every device on one link in turn; the link's one connection is the
        transaction queue. An error on a device never ends this task."""
        client = AsyncModbusTcpClient(link.host, port=link.port, timeout=link.timeout_s, retries=0,
                                      reconnect_delay=0.5, reconnect_delay_max=10)
        interval = self.cfg.poll_interval_s
        start = time.monotonic()
        cycle = 0
        try:
            while True:
                for dev in link.devices:
                    state = self.devices[dev.id]
                    self._emit(await self._poll_device(client, link, state))
                cycle += 1
                next_at = start + cycle * interval
                delay = next_at - time.monotonic()
                if delay < 0:  # overran: skip missed cycles rather than bunching polls
                    cycle += int(-delay // interval) + 1
                    delay = start + cycle * interval - time.monotonic()
                await asyncio.sleep(delay)
        finally:
            client.close()

    async def _poll_device(self, client: AsyncModbusTcpClient, link: LinkSpec, state: DeviceState) -> Sample:
        state.polls += 1
        fields: dict[str, FieldValue] = {}
        try:
            if not client.connected:
                await client.connect()
                if not client.connected:
                    raise ConnectionError(f"cannot connect to {link.host}:{link.port}")
            for req in state.plan:
                data = await self._read(client, req, state.spec.unit)
                fields.update(decode_read(req, state.profile, data))
        except (ModbusException, ConnectionError, OSError, TimeoutError) as exc:
            state.failures += 1
            state.ok = False
            state.last_error = _reason(exc)
            return Sample(dev=state.spec.id, m=state.profile.measurement, t=now_ms(), f={}, q="bad",
                          err=state.last_error)
        state.ok = True
        return Sample(dev=state.spec.id, m=state.profile.measurement, t=now_ms(), f=fields)

    @staticmethod
    async def _read(client: AsyncModbusTcpClient, req: ReadRequest, unit: int) -> list[int]:
        if req.table == "holding":
            rr = await client.read_holding_registers(req.address, count=req.count, device_id=unit)
        elif req.table == "input":
            rr = await client.read_input_registers(req.address, count=req.count, device_id=unit)
        elif req.table == "coil":
            rr = await client.read_coils(req.address, count=req.count, device_id=unit)
        else:
            rr = await client.read_discrete_inputs(req.address, count=req.count, device_id=unit)
        if rr.isError():
            raise ModbusException(f"exception code {getattr(rr, 'exception_code', '?')}")
        if req.table in ("coil", "discrete"):
            return [int(b) for b in rr.bits[: req.count]]
        return list(rr.registers)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if "No response" in text or isinstance(exc, TimeoutError):
        return "timeout"
    return text[:200]
