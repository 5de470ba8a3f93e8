"""The agent as a systemd service: the unit `edge install-service` writes passes
`systemd-analyze verify`; the agent tells the service manager it is ready, feeds the
watchdog from its event loop and says when it stops (sd_notify on a real datagram
socket); the MQTT password comes from a credential file."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from application.stack import Stack
from edge.service import Notifier
from tests.edge.conftest import METER_PROFILE, REPO, ModbusSim, tcp_links, unique, write_gateway, write_profile
from urbansense.mqtt import MqttError, MqttSettings


def _install(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "application.cli", "edge", "install-service", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=60, check=False)


def _gateway(tmp_path: Path, **extra: object) -> Path:
    return write_gateway(tmp_path, {"gateway": "gw-svc", "district": "test", "links": [
        {"name": "l", "transport": "tcp", "host": "127.0.0.1", "port": 1502,
         "devices": [{"id": "m-1", "profile": "test-meter", "unit": 1}]}], **extra})


def test_the_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (Debian package systemd; scripts/bootstrap.sh installs it)"
    password = tmp_path / "mqtt-password"
    password.write_text("s3cret\n")
    password.chmod(0o600)
    done = _install("--config", str(_gateway(tmp_path)), "--unit-dir", str(tmp_path / "units"),
                    "--password-file", str(password))
    assert done.returncode == 0, done.stderr
    unit = tmp_path / "units" / "urbansense-edge-test-gw-svc.service"
    verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, check=False)
    assert verify.returncode == 0 and not (verify.stdout + verify.stderr).strip(), verify.stdout + verify.stderr
    text = unit.read_text()
    for line in ("Type=notify", "Restart=on-failure", "WatchdogSec=30", "MemoryMax=256M", "CPUQuota=80%",
                 "StateDirectory=urbansense", "Environment=URBANSENSE_RUN_DIR=%S/urbansense", "DynamicUser=yes",
                 f"LoadCredential=mqtt-password:{password}", "Environment=URBANSENSE_MQTT_USERNAME=test/gw-svc",
                 "Environment=URBANSENSE_MQTT_PASSWORD_FILE=%d/mqtt-password", "NoNewPrivileges=yes"):
        assert line in text.splitlines(), line
    assert "s3cret" not in text  # the unit names the file, never the password
    # the command line runs this installation's agent on this config
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert exec_start.endswith(f"edge run --config {(tmp_path / 'gateways' / 'gw-svc.yaml').resolve()}")
    assert Path(exec_start.split("=", 1)[1].split()[0]).is_file()


def test_install_service_refuses_a_bad_config_and_a_unit_systemd_would_not_accept(tmp_path: Path) -> None:
    bad = write_gateway(tmp_path / "bad", {"gateway": "gw-bad", "district": "test", "links": [
        {"name": "l", "transport": "tcp", "host": "127.0.0.1", "port": 1502,
         "devices": [{"id": "m-1", "profile": "no-such-profile", "unit": 1}]}]})
    done = _install("--config", str(bad), "--unit-dir", str(tmp_path / "units"))
    assert done.returncode == 2 and "gw-bad.yaml" in done.stderr and "no-such-profile" in done.stderr
    assert not (tmp_path / "units").exists()
    # a value systemd would ignore is caught by its own verifier before anyone enables the unit
    done = _install("--config", str(_gateway(tmp_path)), "--unit-dir", str(tmp_path / "units"),
                    "--cpu-quota", "eighty")
    assert done.returncode == 1 and "Invalid CPU quota" in done.stderr and "does not accept" in done.stderr


def _notifications(sock: socket.socket, until: float) -> list[str]:
    got: list[str] = []
    sock.settimeout(0.2)
    while time.monotonic() < until:
        try:
            got += sock.recv(4096).decode().splitlines()
        except TimeoutError:
            continue
        if "STOPPING=1" in got:
            break
    return got


def test_the_agent_says_ready_feeds_the_watchdog_and_says_stopping(tmp_path: Path, stack: Stack) -> None:
    """What systemd's Type=notify and WatchdogSec= need, on a real datagram socket: READY=1
    once the links run, WATCHDOG=1 every half of WATCHDOG_USEC from the event loop, and
    STOPPING=1 on SIGTERM, before a clean exit."""
    write_profile(tmp_path / "profiles", METER_PROFILE)
    with ModbusSim(tmp_path / "profiles" / "test-meter.yaml", endpoints=1, units=2) as sim:
        config = write_gateway(tmp_path, {"gateway": unique("gw"), "district": "test", "links": tcp_links(sim)})
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        address = str(tmp_path / "notify.sock")
        listener.bind(address)
        env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000", "PYTHONUNBUFFERED": "1"}
        agent = subprocess.Popen([sys.executable, "-m", "application.cli", "edge", "run", "--config", str(config),
                                  "--mqtt", stack.mqtt_url, "--wal", str(tmp_path / "agent.wal")],
                                 cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            got: list[str] = []
            deadline = time.monotonic() + 30
            while got.count("WATCHDOG=1") < 5:  # five feeds: the loop keeps feeding it
                assert time.monotonic() < deadline and agent.poll() is None, got
                got += _notifications(listener, time.monotonic() + 0.5)
            assert got[0] == "READY=1", got  # the links run before the first feed
            assert any(line.startswith("STATUS=2 device(s)") for line in got), got
            agent.send_signal(signal.SIGTERM)
            got += _notifications(listener, time.monotonic() + 20)
            assert "STOPPING=1" in got, got
            assert agent.wait(20) == 0
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait(10)
            listener.close()


def test_the_notifier_reaches_an_abstract_socket_and_keeps_quiet_without_one() -> None:
    name = unique("urbansense-notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        listener.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "30000000"})
        assert notifier.watchdog_interval_s == 15.0
        notifier.ready("ok")
        assert listener.recv(4096) == b"READY=1\nSTATUS=ok"
    assert not Notifier({}).enabled
    assert Notifier({"WATCHDOG_USEC": "1000000"}).watchdog_interval_s is None  # no manager to feed
    Notifier({}).ready("nobody listens")  # by hand, no service manager: nothing happens
    # a watchdog meant for another process (WATCHDOG_PID) is not this one's to feed
    other = Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval_s is None


def test_the_mqtt_password_comes_from_a_credential_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("URBANSENSE_MQTT_PASSWORD_FILE", str(secret))
    assert MqttSettings.from_url("mqtt://127.0.0.1:1883").password == "s3cret"
    monkeypatch.setenv("URBANSENSE_MQTT_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(MqttError, match=r"URBANSENSE_MQTT_PASSWORD_FILE=.*missing: cannot read .*fix: create it"):
        MqttSettings.from_url("mqtt://127.0.0.1:1883")
