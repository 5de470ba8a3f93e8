"""The one config loader: device profiles and gateway configs (YAML), as typed models.

Every error names the file, the key and the fix, e.g.::

    firmware-configs/gateways/pd-gw-01.yaml: links[0].devices[2].unit: must be 1..247, got 300
      fix: set it to the device's Modbus unit id (slave address)
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from urbansense import jt808, registry
from urbansense.identifiers import ID_PATTERN, METRIC_PATTERN
from urbansense.registers import RegisterType, register_count

M = TypeVar("M", bound=BaseModel)
Order = Literal["ABCD", "CDAB", "BADC", "DCBA"]
Table = Literal["holding", "input", "coil", "discrete"]
DataKind = Literal["realtime", "minute", "hourly", "daily"]


def _known_measurement(value: str) -> str:
    known = registry.measurements()
    if value not in known:
        raise ValueError(f"must be one of {', '.join(known)}")
    return value


#: A measurement: the name of a family of the domain registry; profiles and rule files
#: name theirs with this type.
MeasurementName = Annotated[str, AfterValidator(_known_measurement)]

#: What to do about a bad key, by key name; shown as "fix:" under the error.
FIX_HINTS: dict[str, str] = {
    "unit": "set it to the device's Modbus unit id (slave address), 1..247",
    "address": "use the register's 0-based protocol address from the device datasheet (0..65535)",
    "type": "one of int16 uint16 int32 uint32 int64 uint64 float32 float64 string bit bool",
    "order": "one of ABCD (standard), CDAB (word swapped), BADC (byte swapped), DCBA",
    "table": "one of holding, input, coil, discrete",
    "profile": "name a profile of a family (urbansense/families/*/profiles/) or of the gateway's "
               "profiles_dir, without its .yaml suffix",
    "gateway": "use lower-case letters, digits and '-' (e.g. pd-gw-01)",
    "district": "use lower-case letters, digits and '-' (e.g. pudong)",
    "id": "use lower-case letters, digits and '-' (e.g. wp-0001)",
    "name": "use lower-case letters, digits and '_' starting with a letter (e.g. pressure_mpa)",
    "measurement": "name a family: a folder of urbansense/families/ or of URBANSENSE_FAMILIES",
    "port": "a TCP port number 1..65535",
    "transport": "one of tcp, rtu, mqtt, hj212, jt808",
    "hj212": "an HJ 212-2017 pollutant code from the station's manual, e.g. a34004 (PM2.5)",
    "jt808": "one of the names in urbansense/jt808.py ITEMS, e.g. lat, speed_kmh, alarm.emergency, status.located",
    "ident": "the station's MN (HJ 212) or the terminal's phone number (JT/T 808), as configured in the device",
}


def _no_nul(path: str | None) -> str | None:
    """A file or folder path the OS can take (it refuses a NUL with a bare ValueError)."""
    if path is not None and "\x00" in path:
        raise ValueError("a path cannot contain a NUL character")
    return path


class ConfigError(ValueError):
    """One or more problems in a config file; str() lists each with its fix."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class FieldSpec(_Model):
    """One metric of a device: where it lives and how to turn raw data into a value."""

    name: str = Field(pattern=METRIC_PATTERN)
    # Modbus location (Modbus profiles)
    table: Table = "holding"
    address: int | None = Field(default=None, ge=0, le=65535)
    type: RegisterType = "uint16"
    order: Order | None = None
    length: int = Field(default=1, ge=1, le=64)
    bit: int | None = Field(default=None, ge=0, le=15)
    # MQTT location (MQTT profiles): key of the value in the device's JSON payload
    key: str | None = None
    #: The field's HJ 212-2017 pollutant code (a34004, w01009): the model can sit on an
    #: hj212 link. The value is the command's (Rtd in real-time data, Avg in minute, hourly
    #: and daily data) unless the code names it (a34004-Max). In the standard's units.
    hj212: str | None = Field(default=None, pattern=r"^[A-Za-z][A-Za-z0-9]{1,7}(-[A-Za-z]{2,12})?$")
    #: The field's item in a JT/T 808 location report (urbansense/jt808.py ITEMS): the
    #: model can sit on a jt808 link.
    jt808: str | None = None
    # Engineering value = raw * scale + offset
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None
    enum: dict[int, str] | None = None
    writable: bool = False
    min: float | None = None
    max: float | None = None
    #: Samples carrying this field go ahead of any store-and-forward backlog.
    urgent: bool = False
    #: Report by exception: send only when the value moved more than this ...
    deadband: float | None = Field(default=None, ge=0)
    #: ... or when this long has passed since the last report.
    max_silence_s: float | None = Field(default=None, gt=0)
    description: str | None = None
    #: Free-form hints for the simulators (nominal value, noise, ...).
    sim: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> FieldSpec:
        if self.jt808 is not None and self.jt808 not in jt808.ITEMS:
            close = difflib.get_close_matches(self.jt808, sorted(jt808.ITEMS), n=1)
            raise ValueError(f"jt808: {self.jt808!r} is not an item of a location report"
                             + (f"; did you mean {close[0]!r}?" if close else ""))
        if self.bit is not None and self.type not in ("bit", "bool"):
            raise ValueError(f"'bit' is only meaningful with type bit/bool, not {self.type}")
        if self.table in ("coil", "discrete") and self.type not in ("bit", "bool"):
            raise ValueError(f"table {self.table} holds single bits: set type: bit (got {self.type})")
        if self.writable and self.table not in ("holding", "coil"):
            raise ValueError(f"only holding registers and coils are writable, not {self.table}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self

    @property
    def registers(self) -> int:
        return register_count(self.type, self.length)

    def order_in(self, profile: Profile) -> str:
        return self.order or profile.order


class Profile(_Model):
    """A device model: measurement, protocol and field map. One file per model."""

    profile: str = Field(pattern=ID_PATTERN)
    version: int = Field(default=1, ge=1)
    measurement: MeasurementName
    protocol: Literal["modbus", "mqtt"] = "modbus"
    description: str = ""
    order: Order = "ABCD"
    #: MQTT profiles: topic the device publishes on; {device} is replaced by the device id.
    topic: str | None = None
    #: MQTT profiles: the payload key holding the device's own time (epoch ms). Its
    #: readings keep it (a vehicle terminal's backlog after a coverage gap, uploaded as a
    #: JSON array); without it the edge stamps the time of receipt.
    timestamp_key: str | None = None
    #: HJ 212 system type (ST) the model reports when it speaks HJ 212: 21 surface water,
    #: 22 air quality, 23 noise, 31 air pollution source, 32 water pollution source.
    hj212_st: str = Field(default="22", pattern=r"^\d{2}$")
    #: Methane LEL convention etc.; stated explicitly where it matters.
    conventions: dict[str, Any] = Field(default_factory=dict)
    fields: list[FieldSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        seen: set[str] = set()
        for f in self.fields:
            if f.name in seen:
                raise ValueError(f"field {f.name!r} is defined twice")
            seen.add(f.name)
            if self.protocol == "modbus" and f.address is None:
                raise ValueError(f"field {f.name!r} needs an 'address' in a modbus profile")
            if self.protocol == "mqtt" and f.key is None:
                f.key = f.name
        if self.timestamp_key is not None and self.protocol != "mqtt":
            raise ValueError("timestamp_key is for mqtt profiles (a Modbus reading is stamped at its poll)")
        if self.protocol == "mqtt" and not self.topic:
            raise ValueError("an mqtt profile needs 'topic' (e.g. sensors/{device}/data)")
        return self

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"profile {self.profile} has no field {name!r}")


class Location(_Model):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class DeviceSpec(_Model):
    id: str = Field(pattern=ID_PATTERN)
    profile: str = Field(pattern=ID_PATTERN)
    unit: int = Field(default=1, ge=0, le=247)
    poll_interval_s: float | None = Field(default=None, gt=0)
    timeout_s: float | None = Field(default=None, gt=0)
    pause_s: float | None = Field(default=None, ge=0)
    location: Location | None = None
    #: Grouping labels, e.g. circuit/cabinet for lamps, area for water points.
    labels: dict[str, str] = Field(default_factory=dict)
    #: On an hj212 link the station's MN; on a jt808 link the terminal's phone number.
    ident: str | None = Field(default=None, pattern=r"^[A-Za-z0-9]{1,24}$")


class SerialSpec(_Model):
    port: str
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: int = Field(default=1, ge=1, le=2)
    bytesize: int = Field(default=8, ge=7, le=8)


class ModbusTlsSpec(_Model):
    """Modbus/TCP Security (TLS, mutual authentication; devices listen on port 802). The
    key file stays on the gateway, readable by the agent only; none of it is in this repo."""

    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None
    #: The name in the device's certificate, when it is not the link's host.
    server_name: str | None = None

    _paths_ok = field_validator("ca_file", "cert_file", "key_file")(_no_nul)

    @model_validator(mode="after")
    def _pair(self) -> ModbusTlsSpec:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (the gateway's certificate and its key)")
        return self


class LinkSpec(_Model):
    """A physical link: a TCP endpoint, a serial port, a gateway-local MQTT broker, or a
    TCP server that stations (hj212) or vehicle terminals (jt808) connect to."""

    name: str = Field(pattern=ID_PATTERN)
    transport: Literal["tcp", "rtu", "mqtt", "hj212", "jt808"] = "tcp"
    host: str = "127.0.0.1"
    port: int = Field(default=502, ge=1, le=65535)
    serial: SerialSpec | None = None
    #: How Modbus frames travel: mbap (Modbus TCP), rtu or ascii (serial framings; on a tcp
    #: link, through a transparent serial device server). Default: mbap on tcp, rtu on serial.
    framing: Literal["mbap", "rtu", "ascii"] | None = None
    #: tcp links with mbap framing: Modbus/TCP Security.
    tls: ModbusTlsSpec | None = None
    timeout_s: float = Field(default=1.0, gt=0)
    pause_s: float = Field(default=0.0, ge=0)
    #: TCP only: send a device's reads back to back (distinct transaction ids) and wait for
    #: all answers, instead of one read at a time. Only for devices that accept it.
    pipeline: bool = False
    #: When the link's scheduler wakes, every device due within the next `coalesce_ms` is
    #: polled with it: with `pipeline: true` all their reads in one write; otherwise one
    #: after another in the same turn, without waking for each (a scan class).
    #: 0 (the default): each device at its own time.
    coalesce_ms: float = Field(default=0.0, ge=0, le=1000)
    #: Cap on the requests one coalesced exchange has in flight (gateways limit them).
    max_outstanding: int = Field(default=32, ge=1, le=1000)
    #: hj212 and jt808 links: the zone of the devices' clocks (the standards send local time).
    device_tz: str = "Asia/Shanghai"
    #: hj212: the environment variable holding the stations' password (PW); unset, any
    #: password is accepted (edge check warns).
    password_env: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]*$")
    #: hj212: which data commands become samples (the others are answered and counted).
    hj212_data: list[DataKind] = Field(default_factory=lambda: list[DataKind](["realtime", "minute"]),
                                       min_length=1)
    #: hj212: a station whose data time is further than this from the gateway's clock is
    #: sent its time (CN 1012), at most once per 10 minutes.
    max_clock_offset_s: float = Field(default=60.0, gt=0)
    #: jt808: the environment variable holding the key authentication codes are derived
    #: from; unset, a key is drawn at each start (terminals register again).
    auth_key_env: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]*$")
    #: hj212 and jt808: a connection silent this long is closed.
    idle_timeout_s: float = Field(default=600.0, gt=0)
    devices: list[DeviceSpec] = Field(default_factory=list)

    @field_validator("device_tz")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ValueError, ZoneInfoNotFoundError):
            raise ValueError(f"{value!r} is not a time zone (e.g. Asia/Shanghai)") from None
        return value

    @property
    def modbus_framing(self) -> str:
        return self.framing or ("rtu" if self.transport == "rtu" else "mbap")

    @property
    def on_tcp_port(self) -> bool:
        """The link's `port` is a TCP port on the device side: a Modbus TCP device's, or the
        one the agent listens on for HJ 212 stations and JT/T 808 terminals."""
        return self.transport in ("tcp", "hj212", "jt808")

    @property
    def pushed(self) -> bool:
        """Devices push to this link (mqtt, hj212, jt808) rather than being polled."""
        return self.transport in ("mqtt", "hj212", "jt808")

    @model_validator(mode="after")
    def _consistent(self) -> LinkSpec:
        if self.transport in ("hj212", "jt808"):
            if "port" not in self.model_fields_set:
                raise ValueError(f"link {self.name}: an {self.transport} link needs 'port', the TCP port its "
                                 "devices connect to")
            for dev in self.devices:
                if dev.ident is None:
                    raise ValueError(f"device {dev.id} on {self.transport} link {self.name} needs 'ident' "
                                     f"({'its MN' if self.transport == 'hj212' else 'its phone number'})")
                if self.transport == "jt808" and (not dev.ident.isdigit() or len(dev.ident) > 20):
                    raise ValueError(f"device {dev.id}: a JT/T 808 terminal's ident is its phone number "
                                     f"(up to 20 digits), got {dev.ident!r}")
            idents = [d.ident.lstrip("0") if self.transport == "jt808" and d.ident else d.ident
                      for d in self.devices]
            dup = sorted({i for i in idents if idents.count(i) > 1 and i})
            if dup:
                raise ValueError(f"link {self.name}: ident {dup[0]!r} is used by two devices")
        if self.framing is not None and self.transport not in ("tcp", "rtu"):
            raise ValueError(f"link {self.name}: framing is for Modbus links (tcp, rtu), not {self.transport}")
        if self.framing == "mbap" and self.transport == "rtu":
            raise ValueError(f"link {self.name}: a serial line carries rtu or ascii frames, not mbap")
        if self.tls is not None and (self.transport != "tcp" or self.modbus_framing != "mbap"):
            raise ValueError(f"link {self.name}: tls is Modbus/TCP Security: a tcp link with mbap framing")
        if self.pipeline and self.modbus_framing != "mbap":
            raise ValueError(f"link {self.name}: pipeline needs Modbus TCP transaction ids (mbap framing); "
                             f"{self.modbus_framing} frames go one at a time")
        if self.transport == "rtu" and self.serial is None:
            raise ValueError("an rtu link needs 'serial: {port: /dev/ttyUSB0, baudrate: 9600}'")
        if self.coalesce_ms > 0 and self.transport not in ("tcp", "rtu"):
            raise ValueError(f"link {self.name}: coalesce_ms is for Modbus links (tcp, rtu), not "
                             f"{self.transport}")
        return self


class UplinkSpec(_Model):
    """The broker the gateway publishes to. Credentials come from the environment
    (URBANSENSE_MQTT_USERNAME / URBANSENSE_MQTT_PASSWORD), never from this file."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    #: The other nodes of a broker cluster ("host:port"), tried in turn when the one in
    #: use is lost; what was not acknowledged is published again from the log.
    fallbacks: list[str] = Field(default_factory=list)
    #: "3.1.1" for a broker without MQTT 5 (RabbitMQ's MQTT plugin before 3.13).
    protocol: Literal["5", "3.1.1"] = "5"
    tls: bool = False
    ca_file: str | None = None
    keepalive_s: int = Field(default=30, ge=5)
    #: Batches in flight and no PUBACK for this long mean the node has stopped answering
    #: while the connection looks open (a node cut off by a network partition, a frozen
    #: broker, a dead cellular path): the agent drops the connection and moves to the next
    #: node, resending from the log, instead of waiting for the keepalive (up to 2 x
    #: keepalive_s). On a slow uplink, keep it above the time one batch takes to send.
    ack_timeout_s: float = Field(default=20.0, ge=1)
    #: MQTT 5 session expiry: the broker keeps the session this long across a drop.
    session_expiry_s: int = Field(default=3600, ge=0)
    #: Reconnect back-off: starts at the minimum, doubles, capped, with jitter.
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    #: After a reconnect (and the first connect of an agent that started with a backlog or
    #: found no broker at first), publishing waits this long. A broker
    #: restarted from its persistence file (Mosquitto 2.0) drops what is published to the
    #: ingesters' shared subscription until one of them has reconnected, and the broker
    #: acknowledges it all the same; the wait lets the ingesters (which retry every second)
    #: come back first. docs/reliability-chaos.md, "Broker restart and shared subscriptions".
    resume_delay_s: float = Field(default=2.0, ge=0, le=60)
    #: Default: edge-{district}-{gateway}; must be stable so the session survives restarts.
    client_id: str | None = None

    @field_validator("fallbacks")
    @classmethod
    def _host_ports(cls, nodes: list[str]) -> list[str]:
        for node in nodes:
            host, _, port = node.rpartition(":")
            if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"{node!r} is not host:port (a port 1..65535), e.g. broker-2:1883")
        return nodes

    def nodes(self) -> list[tuple[str, int]]:
        return [(self.host, self.port), *((n.rpartition(":")[0], int(n.rpartition(":")[2])) for n in self.fallbacks)]


class BatchSpec(_Model):
    max_samples: int = Field(default=500, ge=1, le=5000)
    max_interval_s: float = Field(default=1.0, gt=0)


class WalSpec(_Model):
    path: str | None = None
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    replay_rate_per_s: float = Field(default=2000, gt=0)
    #: New samples are committed to the log at least this often (group commit). Default:
    #: as often as batches leave (batch.max_interval_s), at most 1 s: a sample then never
    #: waits for the log longer than for its batch, and a gateway at 1 Hz polling does one
    #: SQLite transaction a second instead of ten.
    commit_interval_s: float | None = Field(default=None, gt=0, le=5)
    #: full: fsync every commit (survives power loss); normal: survives a killed process.
    sync: Literal["normal", "full"] = "normal"
    #: Telemetry batches awaiting PUBACK at once (flow control towards the broker).
    max_inflight_batches: int = Field(default=20, ge=1, le=1000)

    _path_ok = field_validator("path")(_no_nul)


class PollingSpec(_Model):
    """How the agent treats devices: read merging, fault back-off, status reporting."""

    #: Unused registers that may be read and discarded to merge two reads into one.
    max_gap: int = Field(default=10, ge=0, le=125)
    #: A failing device is retried after backoff_min_s, doubling up to backoff_max_s.
    backoff_min_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=60.0, gt=0)
    #: The retained status message (self-telemetry) is refreshed this often.
    status_interval_s: float = Field(default=30.0, gt=0)


class MetricsSpec(_Model):
    """Prometheus metrics endpoint; off unless a port is set."""

    port: int | None = Field(default=None, ge=1, le=65535)
    host: str = "127.0.0.1"


class RemoteConfigSpec(_Model):
    """Configurations pushed over MQTT to city/{district}/{gateway}/config: whether the
    agent takes them, and its trial of one (edge/remote_config.py). The running config's
    values judge a new one: a push cannot loosen its own trial."""

    accept: bool = True
    #: How long a new config runs on trial before it is kept or rolled back.
    trial_s: float = Field(default=120, ge=1, le=86_400)
    #: A trial fails when more than this share of the devices fail (and more than under
    #: the config before), or when no device delivers a reading at all.
    max_failing_fraction: float = Field(default=0.5, ge=0, le=1)


CommandOp = Literal["write", "probe", "log", "links"]


class CommandsSpec(_Model):
    """What the gateway answers on its command topic (edge/commands.py): `write` a field
    its profile marks writable, or a diagnosis: `probe` a device's registers, its `log`
    lines, its `links`' statistics."""

    allow: list[CommandOp] = Field(default_factory=lambda: list(get_args(CommandOp)))


class GatewayConfig(_Model):
    gateway: str = Field(pattern=ID_PATTERN)
    district: str = Field(pattern=ID_PATTERN)
    #: Free text naming this config's revision (shown in status with the file's hash).
    version: str | None = Field(default=None, min_length=1, max_length=64)
    poll_interval_s: float = Field(default=1.0, gt=0)
    uplink: UplinkSpec = Field(default_factory=UplinkSpec)
    batch: BatchSpec = Field(default_factory=BatchSpec)
    wal: WalSpec = Field(default_factory=WalSpec)
    polling: PollingSpec = Field(default_factory=PollingSpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    remote_config: RemoteConfigSpec = Field(default_factory=RemoteConfigSpec)
    commands: CommandsSpec = Field(default_factory=CommandsSpec)
    #: Site-specific profiles, relative to this file; looked up before the families'
    #: profiles (urbansense/families/*/profiles), which are always available.
    profiles_dir: str = "../profiles"
    links: list[LinkSpec] = Field(min_length=1)

    _profiles_dir_ok = field_validator("profiles_dir")(_no_nul)

    @field_validator("links")
    @classmethod
    def _unique(cls, links: list[LinkSpec]) -> list[LinkSpec]:
        names: set[str] = set()
        devices: set[str] = set()
        for link in links:
            if link.name in names:
                raise ValueError(f"link name {link.name!r} is used twice")
            names.add(link.name)
            for dev in link.devices:
                if dev.id in devices:
                    raise ValueError(f"device id {dev.id!r} is used twice")
                devices.add(dev.id)
        return links

    def devices(self) -> list[tuple[LinkSpec, DeviceSpec]]:
        return [(link, dev) for link in self.links for dev in link.devices]


class LoadedGateway(BaseModel):
    """A gateway config with the profiles its devices use, resolved."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    path: Path
    config: GatewayConfig
    profiles: dict[str, Profile]


# --------------------------------------------------------------------------- loading


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def read_yaml(path: Path, text: str | None = None) -> Any:
    """Parse a YAML file (or `text`, as if it were the file at `path`); a syntax error
    names file, line and column."""
    shown = _display(path)
    try:
        if text is None:
            text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{shown}: file not found; check the path"]) from None
    except OSError as exc:
        raise ConfigError([f"{shown}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError([f"{shown}:{line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x})\n"
                           "  fix: save the file as UTF-8"]) from None
    try:
        return yaml.safe_load(text)
    except RecursionError:
        raise ConfigError([f"{shown}: nested too deeply to be a config file\n"
                           "  fix: check the brackets and indentation"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            [f"{shown}{where}: YAML syntax error: {problem}\n  fix: check indentation and quoting there"]
        ) from None


def _loc_text(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _model_fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Names of the keys allowed at `loc` (for 'did you mean' on unknown keys)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        info = current.model_fields.get(str(part))
        if info is None:
            return []
        ann = info.annotation
        current = _inner_model(ann)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _inner_model(ann: Any) -> Any:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def format_validation_error(
    shown: str, model: type[BaseModel], exc: ValidationError, raw: Any = None
) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = _loc_text(loc) or "(top level)"
        key = next((str(p) for p in reversed(loc) if not isinstance(p, int)), "")
        etype = err["type"]
        if etype == "extra_forbidden":
            allowed = _model_fields_at(model, loc[:-1])
            close = difflib.get_close_matches(key, allowed, n=1)
            fix = f"did you mean {close[0]!r}?" if close else f"allowed keys here: {', '.join(allowed)}"
            problems.append(f"{shown}: {where}: unknown key {key!r}\n  fix: {fix}")
            continue
        msg = err["msg"]
        if etype == "missing":
            msg = "is required but missing"
        elif "input" in err and etype not in ("model_type",) and not isinstance(err["input"], dict | list):
            msg = f"{msg} (got {err['input']!r})"
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        line = f"{shown}: {where}: {msg}"
        hint = FIX_HINTS.get(key)
        if hint:
            line += f"\n  fix: {hint}"
        problems.append(line)
    return problems


def load_model(path: Path, model: type[M], text: str | None = None) -> M:
    shown = _display(path)
    raw = read_yaml(path, text)
    if not isinstance(raw, dict):
        raise ConfigError([f"{shown}: expected a mapping of keys at the top level, got {type(raw).__name__}"])
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(shown, model, exc, raw)) from None


def load_profile(path: Path) -> Profile:
    profile = load_model(path, Profile)
    shown = _display(path)
    if profile.profile != path.stem:
        raise ConfigError(
            [f"{shown}: profile: is {profile.profile!r} but the file is {path.name}\n"
             f"  fix: name the file {profile.profile}.yaml or set profile: {path.stem}"]
        )
    problems = _family_problems(profile, shown)
    if problems:
        raise ConfigError(problems)
    return profile


def _family_problems(profile: Profile, shown: str) -> list[str]:
    """A profile reports into its family: a field the family declares must be in its
    unit, and written only if the family allows it; the family's urgent flags carry over.
    A field the family does not declare passes (`edge check` warns about it)."""
    fam = registry.family(profile.measurement)
    fam_file = _display(fam.folder / registry.FAMILY_FILE)
    problems = []
    for i, f in enumerate(profile.fields):
        info = fam.fields.get(f.name)
        if info is None:
            continue
        if f.unit is None:
            f.unit = info.unit
        elif info.unit is not None and f.unit != info.unit:
            problems.append(f"{shown}: fields[{i}].unit: {f.unit!r}, but family {fam.family!r} measures "
                            f"{f.name} in {info.unit!r}\n  fix: convert with scale/offset and use {info.unit!r}")
        if f.writable and not info.writable:
            problems.append(f"{shown}: fields[{i}].writable: family {fam.family!r} does not allow writing "
                            f"{f.name}\n  fix: set writable: true for it in {fam_file}, or drop it here")
        f.urgent = f.urgent or info.urgent
    return problems


def undeclared_fields(profile: Profile) -> list[str]:
    """The profile's fields its family does not declare."""
    declared = registry.family(profile.measurement).fields
    return [f.name for f in profile.fields if f.name not in declared]


def load_profiles(directory: Path | None = None) -> dict[str, Profile]:
    """The profiles of one folder, or (None) every family's profiles from the registry."""
    paths = sorted(directory.glob("*.yaml")) if directory is not None else \
        [p for d in registry.profile_dirs() for p in sorted(d.glob("*.yaml"))]
    profiles: dict[str, Profile] = {}
    problems: list[str] = []
    for path in paths:
        try:
            profiles[path.stem] = load_profile(path)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return profiles


def profile_path(name: str, profiles_dir: Path | None) -> Path | None:
    """A gateway's own profiles folder first (site-specific devices), then the registry."""
    if profiles_dir is not None and (profiles_dir / f"{name}.yaml").is_file():
        return profiles_dir / f"{name}.yaml"
    return registry.find_profile(name)


def load_gateway(path: Path | str, text: str | None = None) -> LoadedGateway:
    """Load a gateway config and the profiles it names; all problems are reported together.
    With `text`, that config is loaded as if the file at `path` held it (a pushed config:
    its relative paths resolve as the file's do)."""
    path = Path(path)
    config = load_model(path, GatewayConfig, text)
    shown = _display(path)
    profiles_dir = (path.parent / config.profiles_dir).resolve()
    env_dir = os.environ.get("URBANSENSE_PROFILES_DIR")
    if env_dir:
        profiles_dir = Path(env_dir)
    problems: list[str] = []
    profiles: dict[str, Profile] = {}
    local = sorted(p.stem for p in profiles_dir.glob("*.yaml")) if profiles_dir.is_dir() else []
    available = sorted({*local, *registry.profile_names()})
    for li, link in enumerate(config.links):
        for di, dev in enumerate(link.devices):
            where = f"{shown}: links[{li}].devices[{di}].profile"
            if dev.profile in profiles:
                continue
            found = profile_path(dev.profile, profiles_dir)
            if found is None:
                close = difflib.get_close_matches(dev.profile, available, n=1)
                fix = f"did you mean {close[0]!r}?" if close else f"available: {', '.join(available) or '(none)'}"
                problems.append(f"{where}: no profile {dev.profile!r} in {_display(profiles_dir)} or the "
                                f"families (urbansense/families/*/profiles)\n  fix: {fix}")
                continue
            try:
                profiles[dev.profile] = load_profile(found)
            except ConfigError as exc:
                problems.extend(exc.problems)
                continue
            prof = profiles[dev.profile]
            if link.transport in ("hj212", "jt808"):
                if not any(getattr(f, link.transport) for f in prof.fields):
                    problems.append(f"{where}: profile {dev.profile!r} maps no field to {link.transport}\n  "
                                    f"fix: give its fields '{link.transport}:' "
                                    f"({'pollutant codes' if link.transport == 'hj212' else 'location items'}), "
                                    f"or put the device under another link")
            elif prof.protocol == "mqtt" and link.transport != "mqtt":
                problems.append(f"{where}: profile {dev.profile!r} is an MQTT device but link "
                                f"{link.name!r} is {link.transport}\n  fix: put it under a link with transport: mqtt")
            if prof.protocol == "modbus" and link.transport == "mqtt":
                problems.append(f"{where}: profile {dev.profile!r} is a Modbus device but link "
                                f"{link.name!r} is mqtt\n  fix: put it under a tcp or rtu link")
    if problems:
        raise ConfigError(problems)
    return LoadedGateway(path=path, config=config, profiles=profiles)
