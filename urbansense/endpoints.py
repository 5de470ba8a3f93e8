"""Where the services are: the broker and InfluxDB URLs a component uses when the user
names none.

From the environment (URBANSENSE_MQTT_URL, URBANSENSE_INFLUX_URL), else the local stack
that `urbansense stack up` (application/stack.py) started and recorded in
``<run dir>/stack.json``, else the standard ports on loopback. This module only reads
that record; the stack runner writes it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from urbansense.paths import default_run_dir

SERVICES = ("mosquitto", "influxd")
#: Started on demand (`urbansense stack up --with alertmanager`, or a test that needs it).
OPTIONAL_SERVICES = ("alertmanager", "prometheus")
STATE_FILE = "stack.json"


@dataclass
class ServiceState:
    name: str
    pid: int
    port: int
    extra_port: int = 0  # influxd's RPC (backup/restore) port; Alertmanager's cluster port (unused: 0)
    tls: bool = False  # the broker's listener speaks TLS

    @property
    def url(self) -> str:
        if self.name == "mosquitto":
            return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"
        return f"http://127.0.0.1:{self.port}"


def pid_alive(pid: int, expect: str | None = None) -> bool:
    """The process exists, is not a zombie, and (with `expect`) its command line has it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.split(") ", 1)[1].startswith("Z"):
            return False  # zombie: exited, not yet reaped
        if expect:
            return expect in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, IndexError):
        return False
    return True


def recorded_services(run_dir: Path | None = None) -> dict[str, ServiceState]:
    """Every service recorded in the run folder's stack.json (alive or not)."""
    path = (run_dir or default_run_dir()) / STATE_FILE
    try:
        raw = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return {name: ServiceState(**entry) for name, entry in raw.items() if name in (*SERVICES, *OPTIONAL_SERVICES)}


def default_urls() -> tuple[str, str]:
    """(MQTT URL, InfluxDB URL): from the environment, else the local stack, else defaults."""
    mqtt = os.environ.get("URBANSENSE_MQTT_URL")
    influx = os.environ.get("URBANSENSE_INFLUX_URL")
    if not (mqtt and influx):
        running = {n: s for n, s in recorded_services().items() if s.pid > 0 and pid_alive(s.pid, n)}
        if not mqtt and "mosquitto" in running:
            mqtt = running["mosquitto"].url
        if not influx and "influxd" in running:
            influx = running["influxd"].url
    return mqtt or "mqtt://127.0.0.1:1883", influx or "http://127.0.0.1:8086"


def default_alertmanager_url() -> str | None:
    """Prometheus Alertmanager's URL: URBANSENSE_ALERTMANAGER_URL ("" or "off": none), else
    the local stack's if it runs one, else None (alerts go to MQTT and InfluxDB only)."""
    env = os.environ.get("URBANSENSE_ALERTMANAGER_URL")
    if env is not None:
        return None if env in ("", "off") else env
    state = recorded_services().get("alertmanager")
    return state.url if state is not None and state.pid > 0 and pid_alive(state.pid, "alertmanager") else None
