"""Helpers for the edge agent tests: test profiles and gateway configs in tmp_path,
simulated devices on real Modbus TCP (the simulators' pymodbus server), an agent run in a
thread or as a process, and an MQTT collector of telemetry batches."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest
import yaml
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer

from application.stack import free_port
from edge.agent import EdgeAgent
from edge.mqtt_input import MqttInputLink
from ingest.service import Ingester
from simulators.device import DeviceTables
from simulators.modbus_server import ModbusEndpoint, ThreadedModbusServer, UnitsContext
from tests.waiting import wait_for
from urbansense import codec
from urbansense.config import load_gateway, load_profile
from urbansense.mqtt import MqttClient, MqttSettings
from urbansense.schema import TelemetryBatch

REPO = Path(__file__).resolve().parents[2]

#: A Modbus meter whose register 0..1 is a counter the simulator bumps on every read
#: (its record of what it served); the other fields exercise types, orders and gaps.
METER_PROFILE: dict[str, Any] = {
    "profile": "test-meter", "measurement": "water", "protocol": "modbus", "order": "ABCD",
    "fields": [
        {"name": "poll_counter", "table": "holding", "address": 0, "type": "uint32"},
        {"name": "pressure_mpa", "table": "holding", "address": 2, "type": "float32", "order": "CDAB",
         "sim": {"initial": 0.32}},
        {"name": "temp_c", "table": "holding", "address": 4, "type": "int16", "scale": 0.1,
         "sim": {"initial": -3.5}},
        {"name": "state", "table": "holding", "address": 5, "type": "uint16",
         "enum": {0: "idle", 1: "running", 2: "fault"}, "sim": {"initial": "running"}},
        {"name": "alarm", "table": "holding", "address": 6, "type": "bit", "bit": 0, "urgent": True},
        {"name": "setpoint_pct", "table": "holding", "address": 12, "type": "uint16", "scale": 0.1,
         "writable": True, "min": 0, "max": 100, "sim": {"initial": 50}},
        {"name": "volume_m3", "table": "input", "address": 0, "type": "uint64", "order": "DCBA",
         "sim": {"initial": 123456789012}},
        {"name": "lamp_on", "table": "coil", "address": 3, "type": "bit", "writable": True},
    ],
}


def write_profile(directory: Path, profile: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{profile['profile']}.yaml"
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    return path


def write_gateway(tmp: Path, cfg: dict[str, Any], profiles: list[dict[str, Any]] | None = None) -> Path:
    pdir = tmp / "profiles"
    for prof in profiles or [METER_PROFILE]:
        write_profile(pdir, prof)
    gdir = tmp / "gateways"
    gdir.mkdir(parents=True, exist_ok=True)
    cfg = {"profiles_dir": "../profiles", **cfg}
    path = gdir / f"{cfg['gateway']}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@contextlib.contextmanager
def running_ingester(mqtt_url: str, influx_url: str, database: str) -> Iterator[Ingester]:
    """The real ingester in a thread, started once both its subscriptions are acknowledged
    (samples published before that have no session to go to)."""
    ingester = Ingester(MqttSettings.from_url(mqtt_url), influx_url, database=database, instance=unique("ingest"))
    thread = threading.Thread(target=ingester.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while ingester.mqtt.stats.extra.get("subacks", 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ingester.mqtt.stats.extra.get("subacks", 0) >= 2, "ingester did not subscribe"
        yield ingester
    finally:
        ingester.stop()
        thread.join(20)


def logged_counters(wal_file: Path) -> set[tuple[str, int]]:
    """(device, poll_counter) of the good samples a stopped agent's log still holds: kept
    for its next start, not lost (a row holds one commit's samples, joined by commas)."""
    db = sqlite3.connect(wal_file)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {(s["dev"], int(s["f"]["poll_counter"])) for (body,) in db.execute("SELECT body FROM samples")
                for s in orjson.loads(b"[" + body + b"]") if s["q"] == "good" and "poll_counter" in s["f"]}
    finally:
        db.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class CountingDevice(DeviceTables):
    """Bumps `poll_counter` on every read that covers it and records each value served."""

    def __init__(self, profile: Any, **kw: Any) -> None:
        super().__init__(profile, **kw)
        self.counter = 0
        self.served: list[tuple[int, float]] = []  # (counter value, wall time)
        self._count_lock = threading.Lock()

    def read(self, table: str, address: int, count: int) -> list[int] | None:
        if table == "holding" and address <= 0 < address + count and not self.silent:
            with self._count_lock:
                self.counter += 1
                self.set("poll_counter", self.counter)
                self.served.append((self.counter, time.time()))
        return super().read(table, address, count)


class ModbusSim:
    """Endpoints on free loopback ports, each with `units` devices of one profile."""

    def __init__(self, profile_path: Path, endpoints: int, units: int, *, strict_map: bool = False) -> None:
        self.profile = load_profile(profile_path)
        self.ports = [free_port() for _ in range(endpoints)]
        self.devices: dict[tuple[int, int], CountingDevice] = {}
        eps = []
        for port in self.ports:
            unit_map: dict[int, DeviceTables] = {}
            for unit in range(1, units + 1):
                dev = CountingDevice(self.profile, strict_map=strict_map)
                self.devices[(port, unit)] = dev
                unit_map[unit] = dev
            eps.append(ModbusEndpoint("127.0.0.1", port, unit_map))
        self.server = ThreadedModbusServer(eps)
        self.endpoints = eps

    def __enter__(self) -> ModbusSim:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def requests(self) -> int:
        return sum(ep.context.requests for ep in self.endpoints)


def tcp_links(sim: ModbusSim, prefix: str = "dev", **link_opts: Any) -> list[dict[str, Any]]:
    links = []
    for li, port in enumerate(sim.ports):
        units = sorted(u for (p, u) in sim.devices if p == port)
        links.append({
            "name": f"link-{li}", "transport": "tcp", "host": "127.0.0.1", "port": port,
            "timeout_s": 0.3, **link_opts,
            "devices": [{"id": f"{prefix}-{li}-{u}", "profile": "test-meter", "unit": u} for u in units],
        })
    return links


class AgentThread:
    """An EdgeAgent running in its own thread and event loop."""

    def __init__(self, gateway_path: Path, mqtt_url: str, wal_file: Path) -> None:
        self.agent = EdgeAgent(load_gateway(gateway_path), MqttSettings.from_url(mqtt_url), wal_file=wal_file)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.error: BaseException | None = None

    def _main(self) -> None:
        try:
            self.loop.run_until_complete(self.agent.run())
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def __enter__(self) -> AgentThread:
        self.thread.start()
        return self

    def wait_ready(self, timeout_s: float = 15.0) -> AgentThread:
        """Until the agent's uplink and every MQTT input link have their subscriptions
        acknowledged (commands and sensor messages published from now on arrive)."""
        clients = [self.agent.mqtt, *(link.client for link in self.agent.pushed_links.values()
                                      if isinstance(link, MqttInputLink))]
        deadline = time.monotonic() + timeout_s
        for client in clients:
            assert client.wait_subscribed(max(0.0, deadline - time.monotonic())), \
                f"edge agent: {client.settings.url} not subscribed within {timeout_s} s"
        return self

    def call(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.agent.stop)
        self.thread.join(15)
        assert not self.thread.is_alive(), "agent did not stop"
        if self.error:
            raise self.error

    def __exit__(self, *exc: object) -> None:
        if self.thread.is_alive():
            self.stop()


class Collector:
    """Subscribes to a topic filter and keeps every decoded telemetry batch / message.
    Closed at the end of the test that made it (`_close_collectors`), if the test did not."""

    open_now: ClassVar[list[Collector]] = []

    def __init__(self, mqtt_url: str, topic: str) -> None:
        Collector.open_now.append(self)
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.client = MqttClient(MqttSettings.from_url(mqtt_url), client_id=unique("collector"))
        self.client.subscribe(topic, lambda m: self.messages.put((m.topic, bytes(m.payload))), qos=1)
        self.client.connect()
        assert self.client.wait_subscribed(10.0), f"collector: {topic} not subscribed on {mqtt_url} within 10 s"
        self.batches: list[TelemetryBatch] = []
        self.raw: list[tuple[str, bytes]] = []

    def drain(self, seconds: float = 0.0) -> None:
        deadline = time.monotonic() + seconds
        while True:
            try:
                topic, payload = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return
            self.raw.append((topic, payload))
            if topic.endswith("/telemetry"):
                self.batches.append(codec.decode_batch(payload))

    def until(self, cond: Callable[[], object], timeout_s: float, what: str) -> None:
        """Collect until `cond()` holds (the samples a test expects have all arrived);
        fail naming `what` after `timeout_s`."""
        def collected() -> bool:
            self.drain(0.05)
            return bool(cond())
        wait_for(collected, timeout_s, what, interval_s=0.0)

    def samples(self, dev: str | None = None) -> list[Any]:
        return [s for b in self.batches for s in b.samples if dev is None or s.dev == dev]

    def close(self) -> None:
        self.client.close()
        if self in Collector.open_now:
            Collector.open_now.remove(self)


@pytest.fixture(autouse=True)
def _close_collectors() -> Iterator[None]:
    """A collector left open outlives its test; one whose broker was a private stack's
    then retries the connection for the rest of the session (found as a stray
    reconnect thread while later tests ran)."""
    yield
    for collector in list(Collector.open_now):
        collector.close()


@pytest.fixture
def meter_profile_dir(tmp_path: Path) -> Path:
    write_profile(tmp_path / "profiles", METER_PROFILE)
    return tmp_path / "profiles"


def agent_process(gateway_path: Path, mqtt_url: str, wal_file: Path, log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "application.cli", "edge", "run", "--config", str(gateway_path),
             "--mqtt", mqtt_url, "--wal", str(wal_file)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO, env=env)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    if shutil.which("socat") is None:
        pytest.fail("socat is not installed; run: sudo apt-get install -y socat (make test does it)")
    a, b = str(tmp_path / "ttyA"), str(tmp_path / "ttyB")
    proc = subprocess.Popen(["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while not (Path(a).exists() and Path(b).exists()):
        assert time.monotonic() < deadline, "socat did not create the pty pair"
        time.sleep(0.05)
    yield a, b
    proc.terminate()
    proc.wait(5)


class RtuSim:
    """pymodbus' serial server on one end of a pty pair (RTU, or ASCII with framer)."""

    def __init__(self, port: str, units: dict[int, DeviceTables], framer: FramerType = FramerType.RTU) -> None:
        self.context = UnitsContext(units)
        self.framer = framer
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = port
        self.server: ModbusSerialServer | None = None

    async def _start(self) -> None:  # pymodbus servers are built inside their loop
        self.server = ModbusSerialServer(self.context, framer=self.framer, port=self.port, baudrate=19200,
                                         ignore_missing_devices=True)
        await self.server.serve_forever(background=True)

    def __enter__(self) -> RtuSim:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
