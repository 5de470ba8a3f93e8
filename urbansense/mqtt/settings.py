"""MQTT connection settings: the broker URL, credentials and TLS from the environment
(never from config files), the last will."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse


class MqttError(RuntimeError):
    pass


#: The MQTT versions the adapter speaks: 5 (the default) and 3.1.1 (a broker that has no
#: 5, as RabbitMQ's MQTT plugin before 3.13).
PROTOCOLS = ("5", "3.1.1")


@dataclass(slots=True)
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    ca_file: str | None = None
    keepalive_s: int = 30
    username: str | None = None
    password: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    protocol: str = "5"
    #: The other nodes of a broker cluster, tried in turn when the current one is lost.
    fallbacks: list[tuple[str, int]] = field(default_factory=list)

    @classmethod
    def from_url(cls, url: str, **overrides: object) -> MqttSettings:
        """mqtt://host:port or mqtts://host:port; a cluster as mqtt://h1:p1,h2:p2 (tried in
        turn); `?protocol=3.1.1` for a broker without MQTT 5; credentials from the environment."""
        text = url if "://" in url else f"mqtt://{url}"
        scheme, _, rest = text.partition("://")
        netloc, _, query = rest.partition("?")
        netloc = netloc.rstrip("/")
        tls = scheme in ("mqtts", "ssl", "tls")
        default_port = 8883 if tls else 1883
        nodes = []
        for part in netloc.split(",") if netloc else [""]:
            parsed = urlparse(f"{scheme}://{part}")
            try:
                port = parsed.port or default_port
            except ValueError:
                raise MqttError(f"broker URL {url}: bad port in {part!r}; fix: host:port, 1..65535") from None
            nodes.append((parsed.hostname or "127.0.0.1", port))
        protocol = "5"
        for item in filter(None, query.split("&")):
            key, _, value = item.partition("=")
            if key != "protocol" or value not in PROTOCOLS:
                raise MqttError(f"broker URL {url}: unknown option {item!r}; fix: ?protocol=5 or ?protocol=3.1.1")
            protocol = value
        settings = cls(host=nodes[0][0], port=nodes[0][1], tls=tls, protocol=protocol, fallbacks=nodes[1:])
        settings.apply_env()
        for name, override in overrides.items():
            if override is not None:
                setattr(settings, name, override)
        return settings

    @property
    def nodes(self) -> list[tuple[str, int]]:
        """Every broker node, the first one first."""
        return [(self.host, self.port), *self.fallbacks]

    def apply_env(self) -> MqttSettings:
        env = os.environ
        self.username = env.get("URBANSENSE_MQTT_USERNAME") or self.username
        self.password = env.get("URBANSENSE_MQTT_PASSWORD") or self.password
        password_file = env.get("URBANSENSE_MQTT_PASSWORD_FILE")
        if password_file:  # a file only the service can read (a systemd credential, a secret mount)
            try:
                self.password = Path(password_file).read_text().strip()
            except OSError as exc:
                raise MqttError(f"URBANSENSE_MQTT_PASSWORD_FILE={password_file}: cannot read the MQTT password "
                                f"({exc.strerror}); fix: create it (one line, chmod 600) or unset the variable"
                                ) from None
        self.ca_file = env.get("URBANSENSE_MQTT_CA_FILE") or self.ca_file
        self.cert_file = env.get("URBANSENSE_MQTT_CERT_FILE") or self.cert_file
        self.key_file = env.get("URBANSENSE_MQTT_KEY_FILE") or self.key_file
        if self.ca_file:
            self.tls = True
        return self

    @property
    def url(self) -> str:
        nodes = ",".join(f"{host}:{port}" for host, port in self.nodes)
        return f"{'mqtts' if self.tls else 'mqtt'}://{nodes}" + ("" if self.protocol == "5" else
                                                               f"?protocol={self.protocol}")


@dataclass(slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True
