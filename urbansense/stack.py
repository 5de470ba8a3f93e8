"""Local stack runner: private Mosquitto and InfluxDB on free loopback ports.

`urbansense stack up | down | status | env` and the pytest fixtures both use this. State
(ports, pids) lives in `<run dir>/stack.json`, so `status` and `down` work from another
shell; entries whose process is gone are cleaned up. The run dir is
`$URBANSENSE_RUN_DIR`, or `.run/` at the top of the checkout (git-ignored).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("mosquitto", "influxd")


class StackError(RuntimeError):
    pass


def default_run_dir() -> Path:
    env = os.environ.get("URBANSENSE_RUN_DIR")
    return Path(env) if env else REPO_ROOT / ".run"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def find_binary(name: str) -> str:
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if not found:
        package = {"influxd": "influxdb"}.get(name, name)
        raise StackError(
            f"{name} is not installed; install it with: sudo apt-get install -y {package} "
            "(make demo / make test do this for you when run as root)"
        )
    return found


def pid_alive(pid: int, expect: str | None = None) -> bool:
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


@dataclass
class ServiceState:
    name: str
    pid: int
    port: int
    extra_port: int = 0  # influxd's RPC (backup/restore) port

    @property
    def url(self) -> str:
        if self.name == "mosquitto":
            return f"mqtt://127.0.0.1:{self.port}"
        return f"http://127.0.0.1:{self.port}"


MOSQUITTO_CONF = """\
# Written by urbansense stack; private broker for this run folder.
listener {port} 127.0.0.1
allow_anonymous true
user {user}
persistence true
persistence_location {data}/
autosave_interval 10
# Never drop QoS 1 messages silently: the default max_queued_messages 1000 does.
max_queued_messages 0
max_queued_bytes 0
max_inflight_messages 1000
# Nagle adds ~40 ms per hop on small messages.
set_tcp_nodelay true
persistent_client_expiration 2d
log_dest file {log}
log_type error
log_type warning
log_type notice
connection_messages false
"""

INFLUXD_CONF = """\
# Written by urbansense stack; private InfluxDB 1.x for this run folder.
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{data}/meta"

[data]
  dir = "{data}/data"
  wal-dir = "{data}/wal"
  query-log-enabled = false
  cache-max-memory-size = 1073741824
  max-series-per-database = 0
  max-values-per-tag = 0

[coordinator]
  write-timeout = "10s"

[retention]
  enabled = true

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{port}"
  auth-enabled = {auth}
  log-enabled = false
  max-body-size = 0

[continuous_queries]
  enabled = true
  log-enabled = false
  run-interval = "1s"

[logging]
  level = "warn"
"""


class Stack:
    def __init__(self, run_dir: Path | None = None) -> None:
        self.run_dir = (run_dir or default_run_dir()).resolve()
        self.state_file = self.run_dir / "stack.json"

    # ------------------------------------------------------------------ state
    def _load(self) -> dict[str, ServiceState]:
        try:
            raw = json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return {name: ServiceState(**entry) for name, entry in raw.items() if name in SERVICES}

    def _save(self, states: dict[str, ServiceState]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({n: asdict(s) for n, s in states.items()}, indent=2))
        tmp.replace(self.state_file)

    def services(self) -> dict[str, ServiceState]:
        """Recorded services whose process is alive; stale entries are removed."""
        states = self._load()
        alive = {n: s for n, s in states.items() if s.pid > 0 and pid_alive(s.pid, n)}
        stale = [s for n, s in states.items() if s.pid > 0 and n not in alive]
        if stale:
            for s in stale:
                s.pid = 0  # stale pid cleared; the port is kept for a restart
            self._save(states)
        return alive

    def status(self) -> dict[str, ServiceState | None]:
        alive = self.services()
        return {name: alive.get(name) for name in SERVICES}

    @property
    def mqtt_url(self) -> str:
        return self._require("mosquitto").url

    @property
    def influx_url(self) -> str:
        return self._require("influxd").url

    @property
    def mqtt_port(self) -> int:
        return self._require("mosquitto").port

    def _require(self, name: str) -> ServiceState:
        state = self.services().get(name)
        if state is None:
            raise StackError(f"{name} is not running in {self.run_dir}; start it with: urbansense stack up")
        return state

    # ------------------------------------------------------------------ up / down
    def up(self, timeout_s: float = 30.0) -> dict[str, ServiceState]:
        for name in SERVICES:
            self.start(name, timeout_s=timeout_s)
        return self.services()

    def start(self, name: str, timeout_s: float = 30.0) -> ServiceState:
        """Start one service (again on its recorded port, if it ran before)."""
        states = self._load()
        current = states.get(name)
        if current and current.pid > 0 and pid_alive(current.pid, name):
            return current
        port = current.port if current else free_port()
        extra = current.extra_port if current else (free_port() if name == "influxd" else 0)
        svc_dir = self.run_dir / name
        (svc_dir / "data").mkdir(parents=True, exist_ok=True)
        log_path = svc_dir / f"{name}.log"
        if name == "mosquitto":
            conf = svc_dir / "mosquitto.conf"
            conf.write_text(MOSQUITTO_CONF.format(port=port, user=getpass.getuser(),
                                                  data=svc_dir / "data", log=log_path))
            argv = [find_binary("mosquitto"), "-c", str(conf)]
        else:
            conf = svc_dir / "influxdb.conf"
            auth = "true" if os.environ.get("URBANSENSE_INFLUX_AUTH") == "1" else "false"
            conf.write_text(INFLUXD_CONF.format(port=port, rpc_port=extra, data=svc_dir / "data", auth=auth))
            argv = [find_binary("influxd"), "-config", str(conf)]
        with open(svc_dir / "stdout.log", "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=svc_dir)
        state = ServiceState(name=name, pid=proc.pid, port=port, extra_port=extra)
        try:
            self._wait_ready(state, proc, timeout_s, svc_dir)
        except StackError:
            _terminate(proc.pid)
            raise
        states = self._load()
        states[name] = state
        self._save(states)
        return state

    def _wait_ready(self, state: ServiceState, proc: subprocess.Popen[bytes], timeout_s: float,
                    svc_dir: Path) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = _tail(svc_dir / "stdout.log") or _tail(svc_dir / f"{state.name}.log")
                raise StackError(f"{state.name} exited at start (code {proc.returncode}):\n{tail}")
            if _ready(state):
                return
            time.sleep(0.1)
        raise StackError(f"{state.name} did not answer on port {state.port} within {timeout_s:.0f} s; "
                         f"see {svc_dir}")

    def stop(self, name: str, *, kill: bool = False) -> None:
        states = self._load()
        state = states.get(name)
        if state is None:
            return
        if state.pid > 0 and pid_alive(state.pid, name):
            _terminate(state.pid, sig=signal.SIGKILL if kill else signal.SIGTERM)
        state.pid = 0
        self._save(states)
        # the entry (and its port) stays, so that start() brings it back on the same port

    def down(self) -> list[str]:
        stopped = []
        for name, state in self._load().items():
            if state.pid > 0 and pid_alive(state.pid, name):
                _terminate(state.pid)
                stopped.append(name)
        if self.state_file.exists():
            self.state_file.unlink()
        return stopped

    def env(self) -> dict[str, str]:
        return {"URBANSENSE_MQTT_URL": self.mqtt_url, "URBANSENSE_INFLUX_URL": self.influx_url,
                "URBANSENSE_RUN_DIR": str(self.run_dir)}


def _ready(state: ServiceState) -> bool:
    if state.name == "influxd":
        try:
            return requests.get(f"{state.url}/ping", timeout=1).status_code == 204
        except requests.RequestException:
            return False
    return mqtt_answers("127.0.0.1", state.port)


def mqtt_answers(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True when an MQTT broker accepts a CONNECT (MQTT 3.1.1, clean session) and sends CONNACK 0."""
    connect = bytes([0x10, 14, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 10, 0, 2]) + b"us"
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.sendall(connect)
            ack = s.recv(4)
            s.sendall(bytes([0xE0, 0]))
            return len(ack) == 4 and ack[0] == 0x20 and ack[3] == 0
    except OSError:
        return False


def _terminate(pid: int, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 10.0) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def default_urls() -> tuple[str, str]:
    """(MQTT URL, InfluxDB URL): from the environment, else the local stack, else defaults."""
    mqtt = os.environ.get("URBANSENSE_MQTT_URL")
    influx = os.environ.get("URBANSENSE_INFLUX_URL")
    if not (mqtt and influx):
        running = Stack().services()
        if not mqtt and "mosquitto" in running:
            mqtt = running["mosquitto"].url
        if not influx and "influxd" in running:
            influx = running["influxd"].url
    return mqtt or "mqtt://127.0.0.1:1883", influx or "http://127.0.0.1:8086"
