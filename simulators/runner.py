"""Live mode: every Modbus device of a scenario on real Modbus TCP, every air station on
MQTT, every device of an hj212 or jt808 link as an HJ 212 station or JT/T 808 terminal
connecting to its edge agent (simulators/field_protocols.py), all following the scenario
clock.

One process serves all devices: units on the same TCP port share one pymodbus server
(simulators/modbus_server.py). Each tick (default twice a wall-clock second) the runner
asks the world for every device's reading at the current event time and writes it into
the device's registers, or makes the device silent / answer exceptions; MQTT stations
publish their JSON once per poll interval of wall time or per scenario step of event
time, whichever comes first.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from simulators.device import DeviceTables
from simulators.field_protocols import Hj212Station, Jt808Terminal
from simulators.modbus_server import ModbusEndpoint, ThreadedModbusServer
from simulators.scenario import Scenario
from simulators.stations import backlog_payload, malformed_payload, station_payload, station_topic
from simulators.world import SimDevice, World
from urbansense.clock import ScenarioClock
from urbansense.config import ConfigError
from urbansense.mqtt import MqttClient, MqttSettings

log = logging.getLogger("urbansense.sim")


@dataclass
class RunStats:
    ticks: int = 0
    published: int = 0
    malformed: int = 0
    tick_seconds: float = 0.0
    started_wall: float = field(default_factory=time.monotonic)


class LiveSimulator:
    def __init__(self, scenario: Scenario, seed: int, start_ms: int, mqtt_url: str | None = None,
                 *, client_id: str | None = None, serve_stations: bool = True) -> None:
        self.scenario = scenario
        self.seed = seed
        self.start_ms = start_ms
        self.end_ms = start_ms + int(scenario.duration_s * 1000)
        self.world: World = scenario.build_world(seed, start_ms)
        self.tables: dict[str, DeviceTables] = {}
        self.modbus_devices: list[SimDevice] = []
        self.stations: list[SimDevice] = []
        #: Devices of hj212 and jt808 links, each with its protocol client.
        self.field_devices: list[tuple[SimDevice, Hj212Station | Jt808Terminal]] = []
        by_endpoint: dict[tuple[str, int], dict[int, DeviceTables]] = {}
        framings: dict[tuple[str, int], str] = {}
        problems: list[str] = []
        for dev in self.world.devices.values():
            if dev.link.transport in ("hj212", "jt808"):
                if serve_stations:
                    self.field_devices.append((dev, field_client(dev)))
                continue
            if dev.is_mqtt:
                if serve_stations:
                    self.stations.append(dev)
                continue
            if dev.link.transport != "tcp":
                log.warning("%s: link %s is %s; live mode serves Modbus TCP only, %s is not served",
                            dev.gateway, dev.link.name, dev.link.transport, dev.id)
                continue
            tables = DeviceTables(dev.profile)
            dev.ctx.commands = tables.commands  # operator writes reach the model
            units = by_endpoint.setdefault((dev.link.host, dev.link.port), {})
            framings[(dev.link.host, dev.link.port)] = dev.link.modbus_framing
            if dev.spec.unit in units:
                problems.append(f"{dev.gateway}: unit {dev.spec.unit} on {dev.link.host}:{dev.link.port} is "
                                f"used twice (device {dev.id})\n  fix: give each device on a port its own unit id")
            units[dev.spec.unit] = tables
            self.tables[dev.id] = tables
            self.modbus_devices.append(dev)
        if problems:
            raise ConfigError(problems)
        # a tcp link with rtu or ascii framing: the devices sit behind a serial device server
        self.endpoints = [ModbusEndpoint(host, port, units, framing=framings.get((host, port), "mbap"))
                          for (host, port), units in by_endpoint.items()]
        self.server = ThreadedModbusServer(self.endpoints)
        self.mqtt: MqttClient | None = None
        if self.stations:
            if mqtt_url is None:
                raise ConfigError([f"scenario {scenario.name} has {len(self.stations)} MQTT station(s) but no "
                                   "broker\n  fix: pass --mqtt mqtt://host:port or set URBANSENSE_MQTT_URL"])
            self.mqtt = MqttClient(MqttSettings.from_url(mqtt_url),
                                   client_id=client_id or f"sim-{scenario.name}-{time.time_ns() % 10**9}")
        self.poll_s = min((g.config.poll_interval_s for g in scenario.loaded), default=1.0)
        #: ... or every scenario step of event time, whichever comes first: a station sped
        #: up 240 times still reports every minute of its day, not every four.
        self.report_ms = int(scenario.step_s * 1000)
        self.stats = RunStats()
        self._next_publish = 0.0
        self._last_report = -(2**62)
        self._last_published = start_ms

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.step(self.start_ms)  # registers hold real values before the first poll
        # The world and the device tables live for the whole run: keep them out of the
        # cyclic collector's full passes (which a busy Modbus server triggers often).
        gc.freeze()
        try:
            self.server.start()
        except OSError as exc:
            self.server.stop()
            raise RuntimeError(
                f"cannot serve Modbus TCP: {exc.strerror or exc}; a port of this scenario is taken "
                f"({', '.join(str(e.port) for e in self.endpoints)}); use --port-offset N") from None
        if self.mqtt is not None:
            self.mqtt.connect()

    def stop(self) -> None:
        self.server.stop()
        for _dev, client in self.field_devices:
            client.close()
        if self.mqtt is not None:
            self.mqtt.close()

    @property
    def ports(self) -> list[int]:
        return [ep.port for ep in self.endpoints]

    # ------------------------------------------------------------------ stepping
    def step(self, t_ms: int) -> None:
        """Bring every Modbus device's registers to event time t."""
        t0 = time.perf_counter()
        for dev in self.modbus_devices:
            tables = self.tables[dev.id]
            reading = dev.reading(t_ms)
            tables.silent = reading.silent
            tables.exception_code = reading.exception_code
            if reading.values is not None:
                tables.update(reading.values)
        self.stats.ticks += 1
        self.stats.tick_seconds += time.perf_counter() - t0

    def publish_stations(self, t_ms: int) -> None:
        """Every pushing device's report for event time t (and what a device held through a
        coverage gap that ended since the last call)."""
        self.publish_field_devices(t_ms)
        if self.mqtt is not None:
            self.publish_mqtt_stations(t_ms)
        self._last_published = t_ms

    def publish_mqtt_stations(self, t_ms: int) -> None:
        assert self.mqtt is not None
        for dev in self.stations:
            held = dev.held(t_ms, t_ms - self._last_published)
            if held:
                self.mqtt.publish(station_topic(dev.profile, dev.id), backlog_payload(dev.profile, held), qos=1)
                self.stats.published += 1
            reading = dev.reading(t_ms)
            if reading.silent:
                continue
            if reading.malformed:
                payload = malformed_payload(dev.profile, dev.id, t_ms, dev.engineering(t_ms))
                self.stats.malformed += 1
            else:
                assert reading.values is not None
                payload = station_payload(dev.profile, t_ms, reading.values)
            self.mqtt.publish(station_topic(dev.profile, dev.id), payload, qos=1)
            self.stats.published += 1

    def publish_field_devices(self, t_ms: int) -> None:
        for dev, client in self.field_devices:
            held = dev.held(t_ms, t_ms - self._last_published)
            if held:
                if isinstance(client, Jt808Terminal):
                    client.backfill(held)
                else:  # a station sends what it held, packet by packet, each at its own time
                    for tt, values in held:
                        client.report(tt, values)
            reading = dev.reading(t_ms)
            if reading.silent:
                client.flush()
                continue
            if reading.malformed:
                client.garbage(t_ms) if isinstance(client, Hj212Station) else client.garbage()
                self.stats.malformed += 1
                continue
            assert reading.values is not None
            client.report(t_ms, reading.values)
            self.stats.published += 1

    def run(self, clock: ScenarioClock, *, stop: threading.Event | None = None, tick_s: float = 0.5,
            wall_duration_s: float | None = None,
            on_progress: Callable[[int], None] | None = None) -> None:
        """Step until the scenario's event time is over (or the wall duration, or stop)."""
        stop = stop or threading.Event()
        wall_start = time.monotonic()
        next_tick = wall_start
        while not stop.is_set():
            now_event = clock.now_ms()
            if now_event >= self.end_ms:
                break
            if wall_duration_s is not None and time.monotonic() - wall_start >= wall_duration_s:
                break
            t = max(self.start_ms, now_event)
            self.step(t)
            if time.monotonic() >= self._next_publish or t - self._last_report >= self.report_ms:
                self._next_publish = time.monotonic() + self.poll_s
                self._last_report = t
                self.publish_stations(t)
            if on_progress is not None:
                on_progress(t)
            next_tick += tick_s
            delay = next_tick - time.monotonic()
            if delay < 0:  # overran: do not bunch up ticks
                next_tick = time.monotonic()
                delay = 0
            stop.wait(delay)


#: The HJ 212 password a simulated station sends when its link names no password_env
#: (the factory default of many dataloggers).
DEFAULT_PASSWORD = "123456"


def field_client(dev: SimDevice) -> Hj212Station | Jt808Terminal:
    """The protocol client of a device on an hj212 or jt808 link. Terminals whose phone
    number is odd speak the 2019 header, the others the 2013 one."""
    link = dev.link
    ident = dev.spec.ident or dev.id
    if link.transport == "hj212":
        password = os.environ.get(link.password_env, DEFAULT_PASSWORD) if link.password_env else DEFAULT_PASSWORD
        return Hj212Station(host=link.host, port=link.port, mn=ident, pw=password, st=dev.profile.hj212_st,
                            profile=dev.profile)
    return Jt808Terminal(host=link.host, port=link.port, phone=ident, version=1 if int(ident) % 2 else None,
                         profile=dev.profile, plate=dev.spec.labels.get("plate", ""))
