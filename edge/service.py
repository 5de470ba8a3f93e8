"""Running the agent as a systemd service: the unit file (`urbansense edge install-service`)
and the agent's side of the service manager's protocol (sd_notify: ready, watchdog,
stopping), written here on a datagram socket (the protocol is one line per message; no
libsystemd binding needed, so the Python-only install on a small ARM gateway has it too).
"""

from __future__ import annotations

import logging
import os
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("urbansense.edge")

#: The systemd credential the unit loads (LoadCredential=) and the variable telling the
#: agent where it is (urbansense.mqtt.MqttSettings reads URBANSENSE_MQTT_PASSWORD_FILE).
PASSWORD_CREDENTIAL = "mqtt-password"


class Notifier:
    """Messages to the service manager on $NOTIFY_SOCKET (set by systemd for Type=notify);
    without it (run by hand) every call does nothing."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # An abstract socket is written "@name" and addressed with a leading NUL byte.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        #: How often to feed the watchdog (half of WatchdogSec=), None when it is off, meant
        #: for another process (WATCHDOG_PID), or there is no manager to tell.
        self.watchdog_interval_s: float | None = None
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if self.address and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval_s = int(usec) / 2e6
        self._failed = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *lines: str) -> None:
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            if not self._failed:  # once: a manager that went away is not worth a line a second
                log.warning("cannot notify the service manager on %s: %s", self.address.lstrip("\0"), exc)
            self._failed = True

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping: draining the uplink, closing the log")


@dataclass(frozen=True)
class UnitSpec:
    """What the unit file says; defaults fit a small gateway."""

    config: Path
    exec_start: list[str]
    name: str = "urbansense-edge"
    watchdog_s: int = 30
    memory_max: str = "256M"
    cpu_quota: str = "80%"
    password_file: Path | None = None
    #: The broker account (the gateway's own: {district}/{gateway}).
    username: str | None = None


def unit_file(spec: UnitSpec) -> str:
    """The systemd unit of one gateway's agent: started after the network, restarted when
    it fails or stops feeding the watchdog (a watchdog timeout counts as a failure), its
    log (the store-and-forward WAL) in the state directory, bounded in memory and CPU, as
    a user of its own with no way to gain privileges; the MQTT password as a systemd
    credential, read from a file only root can read."""
    command = " ".join(shlex.quote(part) for part in [*spec.exec_start, "edge", "run", "--config",
                                                      str(spec.config.resolve())])
    credential = ""
    if spec.username is not None:
        credential += f"Environment=URBANSENSE_MQTT_USERNAME={spec.username}\n"
    if spec.password_file is not None:
        credential += (f"LoadCredential={PASSWORD_CREDENTIAL}:{spec.password_file}\n"
                       f"Environment=URBANSENSE_MQTT_PASSWORD_FILE=%d/{PASSWORD_CREDENTIAL}\n")
    return f"""# Written by `urbansense edge install-service`; see docs/OPERATIONS.md (edge gateways).
[Unit]
Description=UrbanSense edge agent ({spec.config.name})
After=network-online.target
Wants=network-online.target
# a gateway in a cabinet nobody visits never gives up restarting its agent (5 s apart)
StartLimitIntervalSec=0

[Service]
Type=notify
NotifyAccess=main
ExecStart={command}
Restart=on-failure
RestartSec=5
WatchdogSec={spec.watchdog_s}
TimeoutStopSec=20
# the store-and-forward log and the agent's state: /var/lib/urbansense (kept across restarts and upgrades)
StateDirectory=urbansense
StateDirectoryMode=0750
Environment=URBANSENSE_RUN_DIR=%S/urbansense
Environment=PYTHONUNBUFFERED=1
{credential}DynamicUser=yes
# serial ports (Modbus RTU) belong to this group
SupplementaryGroups=dialout
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
MemoryMax={spec.memory_max}
CPUQuota={spec.cpu_quota}

[Install]
WantedBy=multi-user.target
"""
