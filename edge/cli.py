"""`urbansense edge run | check | probe | install-service | command | push-config | diagnose`"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import queue
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

    push = esub.add_parser(
        "push-config", help="push a gateway config to its running agent over MQTT: checked there as edge check "
                            "does, run on trial, kept or rolled back by the agent")
    push.add_argument("--config", required=True, help="the new gateway config YAML (its district and gateway "
                                                      "say where it goes); checked here first")
    push.add_argument("--mqtt", help="broker URL, with an account allowed to push configs (deploy/mosquitto: ops); "
                                     "default: env URBANSENSE_MQTT_URL, else the local stack")
    push.add_argument("--timeout", type=float, default=15.0,
                      help="seconds to wait for the gateway to take or refuse it (default 15)")
    push.add_argument("--follow", action="store_true",
                      help="also wait for the end of the trial: kept (exit 0) or rolled back (exit 1)")
    push.set_defaults(func=_push_config)

    diagnose = esub.add_parser(
        "diagnose", help="ask a running agent, through its command path, for a probe of a device's registers, its "
                         "recent log lines or its links' statistics")
    diagnose.add_argument("--district", required=True, help="the gateway's district")
    diagnose.add_argument("--gateway", required=True)
    what = diagnose.add_mutually_exclusive_group(required=True)
    what.add_argument("--probe", metavar="DEV", help="read a device's registers and show them decoded every way")
    what.add_argument("--log", type=int, nargs="?", const=50, metavar="N", help="the agent's last N log lines (50)")
    what.add_argument("--links", action="store_true", help="each link's devices, polls, failures and last errors")
    diagnose.add_argument("--table", choices=["holding", "input", "coil", "discrete"],
                          help="probe: table (default: the profile's first field's)")
    diagnose.add_argument("--address", type=int, help="probe: first address (default: the profile's first field)")
    diagnose.add_argument("--count", type=int, help="probe: how many (default: the profile's span, at most 32)")
    diagnose.add_argument("--mqtt", help="broker URL, with an account allowed to command gateways (deploy/mosquitto: "
                                         "ops); default: env URBANSENSE_MQTT_URL, else the local stack")
    diagnose.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the answer (default 15)")
    diagnose.set_defaults(func=_diagnose)


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
    import time
    import uuid
    from pathlib import Path

    from urbansense import codec, topics

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
    body = {"id": cmd_id, "dev": dev, "field": field, "value": value, "t": int(time.time() * 1000)}
    with _Request(args.mqtt, topics.command(district, gateway), topics.command_result(district, gateway),
                  body) as request:
        answer = request.answer(args.timeout, gateway, "the command stays undone")
    if answer is None:
        return 1
    if answer.get("ok"):
        print(f"done: {dev}.{field} = {answer.get('readback')!r} (read back)")
        return 0
    print(f"refused: {answer.get('reason', 'no reason given')}", file=sys.stderr)
    return 1


def _push_config(args: argparse.Namespace) -> int:
    """Exit 0 when the gateway took the config (and, with --follow, kept it), 1 when it
    refused it, rolled it back or did not answer, 2 when the config fails here."""
    import getpass
    import uuid

    from urbansense import topics

    report = _checked(args.config)
    if report.problems:
        print(f"{args.config}: {len(report.problems)} problem(s); not pushed", file=sys.stderr)
        return 2
    cfg = report.gateway.config
    text = Path(args.config).read_text(encoding="utf-8")
    body = {"id": f"cfg-{uuid.uuid4().hex[:10]}", "config": text, "by": getpass.getuser()}
    with _Request(args.mqtt, topics.config(cfg.district, cfg.gateway), topics.config_result(cfg.district, cfg.gateway),
                  body) as request:
        answer = request.answer(args.timeout, cfg.gateway, "the push is not applied")
        if answer is None:
            return 1
        if answer.get("state") == "trial":
            trial_s = float(answer.get("trial_s", 0))
            print(f"on trial: config {answer.get('hash')} runs on {cfg.gateway} for {trial_s:g} s, then is kept or "
                  "rolled back by the gateway")
            if not args.follow:
                return 0
            answer = request.answer(trial_s + args.timeout, cfg.gateway,
                                    "its status message's config_hash says which config runs")
            if answer is None:
                return 1
    if answer.get("state") == "kept":
        print(f"kept: config {answer.get('hash')} runs on {cfg.gateway} ({answer.get('health', '')})")
        return 0
    print(f"{answer.get('state', 'refused')}: {answer.get('reason', 'no reason given')}", file=sys.stderr)
    return 1


def _diagnose(args: argparse.Namespace) -> int:
    """Exit 0 with the gateway's answer printed, 1 when it refused or did not answer."""
    import getpass
    import uuid

    from urbansense import topics

    body: dict[str, Any] = {"id": f"d-{uuid.uuid4().hex[:10]}", "by": getpass.getuser()}
    if args.probe:
        body.update(op="probe", dev=args.probe, **{k: getattr(args, k) for k in ("table", "address", "count")
                                                   if getattr(args, k) is not None})
    elif args.log is not None:
        body.update(op="log", lines=args.log)
    else:
        body.update(op="links")
    with _Request(args.mqtt, topics.command(args.district, args.gateway),
                  topics.command_result(args.district, args.gateway), body) as request:
        answer = request.answer(args.timeout, args.gateway, "nothing was asked of it")
    if answer is None:
        return 1
    if not answer.get("ok"):
        print(f"refused: {answer.get('reason', 'no reason given')}", file=sys.stderr)
        return 1
    if answer["op"] == "probe":
        print(f"{answer['dev']}: unit {answer['unit']} on link {answer['link']}\n{answer['text']}")
    elif answer["op"] == "log":
        print("\n".join(answer["lines"]))
    else:
        for name, link in answer["links"].items():
            print(f"link {name} ({link['transport']} {link.get('endpoint', '')}".rstrip() +
                  (f", {link['requests']} requests)" if "requests" in link else ")"))
            for dev, d in link["devices"].items():
                state = {True: "ok", False: "FAIL", None: "not yet polled"}[d["ok"]]
                counts = (f"{d['polls']} polls, {d['failures']} failures" if "polls" in d
                          else f"{d['messages']} messages")
                print(f"  {dev:<20} {state:<15} {counts}{'  ' + d['error'] if d['error'] else ''}")
        stats = answer["stats"]
        print(f"uplink {'connected' if answer['uplink_connected'] else 'DOWN'}; log {stats['wal_depth']:.0f} "
              f"sample(s) waiting, {stats['wal_dropped']:.0f} dropped; up {stats['uptime_s']:.0f} s")
    return 0


class _Request:
    """One request published on a gateway's topic (a command, a pushed config), and the
    answers carrying its id on the topic the gateway answers on."""

    def __init__(self, url: str | None, topic: str, result_topic: str, body: dict[str, Any]) -> None:
        from urbansense.endpoints import default_urls
        from urbansense.mqtt import MqttClient, MqttSettings

        self.topic, self.result_topic, self.body = topic, result_topic, body
        self.answers: queue.Queue[dict[str, Any]] = queue.Queue()
        self.client = MqttClient(MqttSettings.from_url(url or default_urls()[0]),
                                 client_id=f"urbansense-request-{body['id']}")

    def _on_result(self, msg: Any) -> None:
        try:
            body = json.loads(bytes(msg.payload))
        except ValueError:
            return
        if isinstance(body, dict) and body.get("id") == self.body["id"]:
            self.answers.put(body)

    def __enter__(self) -> _Request:
        from urbansense import codec

        self.client.connect()
        self.client.subscribe(self.result_topic, self._on_result, qos=1)
        self.client.wait_subscribed(5.0)
        shown = {k: (f"<{len(v)} characters>" if isinstance(v, str) and len(v) > 200 else v)
                 for k, v in self.body.items()}
        print(f"sending to {self.topic}: {json.dumps(shown)}")
        self.client.publish_wait(self.topic, codec.dumps(self.body), qos=1)
        return self

    def answer(self, timeout_s: float, gateway: str, meanwhile: str) -> dict[str, Any] | None:
        """The next answer, or None after saying there was none (and what that means)."""
        try:
            return self.answers.get(timeout=max(0.0, timeout_s))
        except queue.Empty:
            print(f"no answer from gateway {gateway} in {timeout_s:g} s: is its edge agent running and connected? "
                  f"({meanwhile})", file=sys.stderr)
            return None

    def __exit__(self, *exc: object) -> None:
        self.client.close()


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
