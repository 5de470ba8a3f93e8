"""`urbansense edge run | check | probe | install-service | command`"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge.check import CheckReport


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    p = sub.add_parser("edge", help="edge agent: poll devices, forward telemetry")
    esub = p.add_subparsers(dest="edge_cmd", required=True)
    run = esub.add_parser("run", help="run the agent for one gateway config")
    run.add_argument("--config", required=True, help="gateway config YAML (firmware-configs/gateways/...)")
    run.add_argument("--mqtt", help="uplink broker URL (default: env URBANSENSE_MQTT_URL, else the "
                                    "config's uplink)")
    run.add_argument("--wal", help="store-and-forward log file (default: the config's wal.path, else "
                                   "<run dir>/edge/<district>-<gateway>.wal)")
    run.add_argument("--duration", type=float, help="stop after this many seconds")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.set_defaults(func=_run)

    check = esub.add_parser("check", help="validate a gateway config and its profiles")
    check.add_argument("--config", required=True)
    check.set_defaults(func=_check)

    probe = esub.add_parser("probe", help="read raw registers and print them decoded in every type and "
                                          "byte/word order; or decode a captured HJ 212 or JT/T 808 packet")
    probe.add_argument("--decode", metavar="PACKET",
                       help="decode a captured HJ 212 packet (##..., as text) or JT/T 808 frame (7E...7E, as hex) "
                            "and print every field; '-' reads stdin, @FILE reads a file")
    probe.add_argument("--host", help="Modbus TCP host")
    probe.add_argument("--port", type=int, default=502, help="Modbus TCP port (default 502)")
    probe.add_argument("--serial", metavar="DEVICE", help="serial port for Modbus RTU instead of TCP")
    probe.add_argument("--baudrate", type=int, default=9600)
    probe.add_argument("--parity", default="N", choices=["N", "E", "O"])
    probe.add_argument("--unit", type=int, default=1, help="unit id (slave address)")
    probe.add_argument("--address", type=int, help="0-based protocol address (reading registers)")
    probe.add_argument("--count", type=int, default=4, help="registers to read (1..125)")
    probe.add_argument("--table", default="holding", choices=["holding", "input", "coil", "discrete"])
    probe.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer")
    probe.set_defaults(func=_probe)

    service = esub.add_parser(
        "install-service", help="write the systemd unit that runs the agent for a gateway config (restart on "
                                "failure, watchdog, memory and CPU limits, the log in /var/lib/urbansense)")
    service.add_argument("--config", required=True, help="gateway config YAML (checked first, as edge check does)")
    service.add_argument("--unit-dir", default="/etc/systemd/system", help="where to write the unit "
                                                                            "(default /etc/systemd/system)")
    service.add_argument("--name", help="unit name (default urbansense-edge-<district>-<gateway>)")
    service.add_argument("--password-file", help="file holding the MQTT password (one line, chmod 600, owned by "
                                                 "root), passed to the agent as a systemd credential")
    service.add_argument("--watchdog-s", type=int, default=30,
                         help="restart the agent when it has not fed the watchdog for this long (default 30)")
    service.add_argument("--memory-max", default="256M", help="MemoryMax= (default 256M)")
    service.add_argument("--cpu-quota", default="80%", help="CPUQuota= (default 80%%)")
    service.add_argument("--print", action="store_true", help="print the unit instead of writing it")
    service.set_defaults(func=_install_service)

    command = esub.add_parser(
        "command", help="write one field of one device through its gateway's command path (a pump to start), "
                        "or confirm the command an alert recommends; waits for the read-back")
    command.add_argument("--alert", metavar="FILE", help="an alert event (JSON, as published on city/alerts/...; "
                                                         "'-' reads stdin) whose recommended command to send")
    command.add_argument("--district", help="the gateway's district")
    command.add_argument("--gateway", help="the gateway the device hangs off")
    command.add_argument("--dev", help="device id")
    command.add_argument("--field", help="a field its profile marks writable")
    command.add_argument("--value", help="number, true or false")
    command.add_argument("--mqtt", help="broker URL, with an account allowed to write commands (deploy/mosquitto: "
                                        "ops); default: env URBANSENSE_MQTT_URL, else the local stack")
    command.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the result (default 15)")
    command.set_defaults(func=_command)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edge.agent import EdgeAgent, uplink_settings
    from urbansense.config import load_gateway
    from urbansense.mqtt import MqttSettings

    logging.basicConfig(level=args.log_level, format="%(asctime)s edge %(levelname)s %(message)s")
    gateway = load_gateway(args.config)
    url = args.mqtt or os.environ.get("URBANSENSE_MQTT_URL")
    settings = MqttSettings.from_url(url, keepalive_s=gateway.config.uplink.keepalive_s) if url \
        else uplink_settings(gateway)
    agent = EdgeAgent(gateway, settings, wal_file=Path(args.wal) if args.wal else None)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop)
        await agent.run(args.duration)

    asyncio.run(main())
    return 0


def _install_service(args: argparse.Namespace) -> int:
    import shutil
    import subprocess

    from edge.service import UnitSpec, unit_file

    report = _checked(args.config)
    if report.problems:
        print(f"{args.config}: {len(report.problems)} problem(s); no unit written", file=sys.stderr)
        return 2
    cfg = report.gateway.config
    if cfg.wal.path:
        print(f"warning: {args.config} sets wal.path ({cfg.wal.path}); the service can write only below "
              "/var/lib/urbansense (ProtectSystem=strict); fix: remove wal.path, the log then goes there",
              file=sys.stderr)
    name = args.name or f"urbansense-edge-{cfg.district}-{cfg.gateway}"
    script = Path(sys.executable).parent / "urbansense"
    exec_start = [str(script)] if script.exists() else [sys.executable, "-m", "application.cli"]
    password = Path(args.password_file).resolve() if args.password_file else None
    if password is not None and password.exists() and password.stat().st_mode & 0o077:
        print(f"warning: {password} can be read by others (mode {password.stat().st_mode & 0o777:o}); "
              f"fix: chmod 600 {password}", file=sys.stderr)
    text = unit_file(UnitSpec(config=Path(args.config), exec_start=exec_start, name=name,
                              watchdog_s=args.watchdog_s, memory_max=args.memory_max, cpu_quota=args.cpu_quota,
                              password_file=password,
                              username=f"{cfg.district}/{cfg.gateway}" if password is not None else None))
    if args.print:
        print(text, end="")
        return 0
    path = Path(args.unit_dir) / f"{name}.service"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        print(f"error: cannot write {path}: {exc.strerror}; fix: run as root, or pass --unit-dir", file=sys.stderr)
        return 1
    analyze = shutil.which("systemd-analyze")
    if analyze:
        verify = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, check=False)
        complaints = (verify.stdout + verify.stderr).splitlines()
        for line in complaints:
            print(f"systemd-analyze: {line}", file=sys.stderr)
        if verify.returncode or complaints:
            print(f"error: systemd-analyze verify does not accept {path}; fix what it says above", file=sys.stderr)
            return 1
    print(f"wrote {path}\nnext: systemctl daemon-reload && systemctl enable --now {name}"
          f"\n      journalctl -u {name} -f   (the agent's log)")
    return 0


def _checked(config: str) -> CheckReport:
    """`edge check`'s findings on a config, problems and warnings printed."""
    from edge.check import check

    report = check(config)
    for line in report.problems:
        print(f"error: {line}", file=sys.stderr)
    for line in report.warnings:
        print(f"warning: {line}", file=sys.stderr)
    return report


def _check(args: argparse.Namespace) -> int:
    report = _checked(args.config)
    if report.problems:
        print(f"{args.config}: {len(report.problems)} problem(s)", file=sys.stderr)
        return 2
    print(f"{args.config}: ok")
    for line in report.summary:
        print(f"  {line}")
    return 0


def _probe(args: argparse.Namespace) -> int:
    from edge.modbus_pdu import ModbusExceptionResponse, ModbusLinkError, ModbusProtocolError, ModbusTimeout
    from edge.modbus_transport import ModbusMaster, RtuMaster, TcpMaster
    from edge.probe import decode_capture, read_raw, render

    if args.decode is not None:
        capture = args.decode
        try:
            if capture == "-":
                capture = sys.stdin.read()
            elif capture.startswith("@"):
                capture = Path(capture[1:]).read_text(errors="replace")
            text, ok = decode_capture(capture)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(text)
        return 0 if ok else 1
    if args.address is None:
        print("error: give --address N (reading registers) or --decode PACKET", file=sys.stderr)
        return 2
    limit = 2000 if args.table in ("coil", "discrete") else 125
    if not 1 <= args.count <= limit:
        print(f"error: --count must be 1..{limit} for {args.table}", file=sys.stderr)
        return 2
    master: ModbusMaster
    if args.serial:
        master = RtuMaster(args.serial, baudrate=args.baudrate, parity=args.parity)
        where = f"{args.serial} at {args.baudrate} baud"
    elif args.host:
        master = TcpMaster(args.host, args.port, connect_timeout_s=args.timeout)
        where = f"{args.host}:{args.port}"
    else:
        print("error: give --host H [--port P] for Modbus TCP or --serial /dev/ttyX for RTU", file=sys.stderr)
        return 2
    try:
        words = asyncio.run(read_raw(master, args.unit, args.table, args.address, args.count, args.timeout))
    except ModbusTimeout:
        print(f"error: unit {args.unit} at {where} did not answer within {args.timeout:g} s; check the unit id, "
              "wiring/baud rate, or raise --timeout", file=sys.stderr)
        return 1
    except ModbusExceptionResponse as exc:
        hint = " (the range includes an unmapped register; try a smaller --count)" if exc.code == 2 else ""
        print(f"error: unit {args.unit} at {where} answered {exc}{hint}", file=sys.stderr)
        return 1
    except (ModbusLinkError, ModbusProtocolError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"unit {args.unit} at {where}")
    print(render(args.address, words, args.table))
    return 0


def _command(args: argparse.Namespace) -> int:
    """Send a command and wait for the gateway's answer: exit 0 when the device read
    back what was written, 1 when it was refused or not answered, 2 for bad arguments."""
    import json
    import threading
    import time
    import uuid
    from pathlib import Path

    from urbansense import codec, topics
    from urbansense.endpoints import default_urls
    from urbansense.mqtt import MqttClient, MqttSettings

    if args.alert:
        try:
            text = sys.stdin.read() if args.alert == "-" else Path(args.alert).read_text(encoding="utf-8")
            alert = codec.decode_alert(text)
        except (OSError, codec.PayloadError) as exc:
            print(f"error: {args.alert}: {exc}", file=sys.stderr)
            return 2
        if alert.command is None:
            print(f"error: alert {alert.id} recommends no command (its rule has no `recommend:`)", file=sys.stderr)
            return 2
        target = topics.parse_gateway_topic(str(alert.command["topic"]))
        district, gateway = target.district, target.gateway
        dev, field, value = str(alert.command["dev"]), str(alert.command["field"]), alert.command["value"]
        print(f"alert {alert.id}: {alert.message}")
    else:
        missing = [k for k in ("district", "gateway", "dev", "field", "value") if getattr(args, k) is None]
        if missing:
            print("error: give --alert FILE, or all of --district --gateway --dev --field --value "
                  f"(missing: {', '.join('--' + m for m in missing)})", file=sys.stderr)
            return 2
        district, gateway, dev, field = args.district, args.gateway, args.dev, args.field
        value = _command_value(args.value)
    cmd_id = f"c-{uuid.uuid4().hex[:10]}"
    answer: dict[str, object] = {}
    got = threading.Event()

    def on_result(msg: object) -> None:
        try:
            body = json.loads(bytes(msg.payload))  # type: ignore[attr-defined]
        except ValueError:
            return
        if isinstance(body, dict) and body.get("id") == cmd_id:
            answer.update(body)
            got.set()

    url = args.mqtt or default_urls()[0]
    client = MqttClient(MqttSettings.from_url(url), client_id=f"urbansense-command-{cmd_id}")
    try:
        client.connect()
        client.subscribe(topics.command_result(district, gateway), on_result, qos=1)
        client.wait_subscribed(5.0)
        body = {"id": cmd_id, "dev": dev, "field": field, "value": value, "t": int(time.time() * 1000)}
        print(f"sending to {topics.command(district, gateway)}: {json.dumps(body)}")
        client.publish_wait(topics.command(district, gateway), codec.dumps(body), qos=1)
        if not got.wait(args.timeout):
            print(f"no answer from gateway {gateway} in {args.timeout:g} s: is its edge agent running and "
                  "connected? (the command stays undone)", file=sys.stderr)
            return 1
    finally:
        client.close()
    if answer.get("ok"):
        print(f"done: {dev}.{field} = {answer.get('readback')!r} (read back)")
        return 0
    print(f"refused: {answer.get('reason', 'no reason given')}", file=sys.stderr)
    return 1


def _command_value(text: str) -> bool | int | float | str:
    """--value as the command carries it: true/false, a number, else the text itself (the
    gateway answers with the reason if the field takes no such value)."""
    raw = text.strip().lower()
    if raw in ("true", "false"):
        return raw == "true"
    try:
        number = float(raw)
    except ValueError:
        return text
    if not math.isfinite(number):
        return text
    return int(number) if number.is_integer() and "." not in raw and "e" not in raw else number
