"""MQTT connection settings: the broker URL, credentials and TLS from the environment
(never from config files), the last will."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse


class MqttError(RuntimeError):
    pass


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

    @classmethod
    def from_url(cls, url: str, **overrides: object) -> MqttSettings:
        """mqtt://host:port or mqtts://host:port; credentials from the environment."""
        parsed = urlparse(url if "://" in url else f"mqtt://{url}")
        tls = parsed.scheme in ("mqtts", "ssl", "tls")
        settings = cls(host=parsed.hostname or "127.0.0.1", port=parsed.port or (8883 if tls else 1883), tls=tls)
        settings.apply_env()
        for key, value in overrides.items():
            if value is not None:
                setattr(settings, key, value)
        return settings

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
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True
