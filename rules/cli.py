"""`urbansense rules run|check|silence ...` (backtest and sweep: application/scoring_cli.py)"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from rules.flapping import FLAP_CHANGES, FLAP_CLEAR_S, FLAP_WINDOW_S

if TYPE_CHECKING:
    from rules.catalog import Rule
    from urbansense.mqtt import MqttClient


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("rules", help="rules engine: early warnings, backtest, silences")
    rsub = p.add_subparsers(dest="rules_cmd", required=True)

    run = rsub.add_parser("run", help="run the rules engine on live MQTT telemetry")
    run.add_argument("--rules", type=Path, help="rule file or folder (default: every family's rules and rules/catalog)")
    run.add_argument("--mqtt", help="broker URL (default: the local stack / URBANSENSE_MQTT_URL)")
    run.add_argument("--influx", help="InfluxDB URL (default: the local stack / URBANSENSE_INFLUX_URL)")
    run.add_argument("--database", default="city")
    run.add_argument("--district", action="append", dest="districts", metavar="NAME",
                     help="only this district (repeat); several instances split the city")
    run.add_argument("--gateways", type=Path, action="append", metavar="PATH",
                     help="gateway config file or folder for the expected inventory "
                          "(default: firmware-configs/gateways)")
    run.add_argument("--lookback", type=float, default=900.0, metavar="S",
                     help="warm start: seconds of stored telemetry to replay (0: none)")
    run.add_argument("--flap-changes", type=int, default=FLAP_CHANGES, metavar="N",
                     help="an alert changing state N times within the flap window is flapping (default %(default)s)")
    run.add_argument("--flap-window", type=float, default=FLAP_WINDOW_S, metavar="S",
                     help="flap window (default %(default)g s)")
    run.add_argument("--flap-clear", type=float, default=FLAP_CLEAR_S, metavar="S",
                     help="a flapping episode ends after S seconds without a change (default %(default)g)")
    run.add_argument("--instance", default="rules-1", help="instance name (MQTT client id, self-metrics; in cluster "
                                                           "mode unique per instance)")
    run.add_argument("--amqp", metavar="URL[,URL...]",
                     help="cluster mode: take telemetry and status from each district's queue on these RabbitMQ "
                          "nodes (amqp:// URLs, tried in turn; default env URBANSENSE_AMQP_URLS), one active "
                          "instance per district, the others standing by (docs/OPERATIONS.md)")
    run.add_argument("--duration", type=float, help="stop after this many seconds")
    run.add_argument("--metrics-port", type=int, default=0, metavar="PORT",
                     help="serve Prometheus metrics on this port (default: off; deploy/prometheus scrapes 9109)")
    run.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port (default 127.0.0.1)")
    run.add_argument("--alertmanager", metavar="URL",
                     help="also send alerts to Prometheus Alertmanager at URL (its v2 API; default: env "
                          "URBANSENSE_ALERTMANAGER_URL, else the local stack's if it runs one, else none)")
    run.set_defaults(func=_run)

    routing = rsub.add_parser("routing", help="write deploy/alertmanager/alertmanager.yml (Alertmanager's routing "
                                              "of the alerts) and relay.yaml (the relay's MQTT targets) from the "
                                              "domain registry")
    routing.add_argument("--check", action="store_true", help="only say whether the files are current (exit 1 if not)")
    routing.set_defaults(func=_routing)

    relay = rsub.add_parser("relay", help="Alertmanager's webhook receiver: forward each receiver's notifications "
                                          "to its WeCom, DingTalk and Feishu robots, each alert state once")
    relay.add_argument("--config", type=Path, required=True,
                       help="the receivers' targets (deploy/alertmanager/relay.example.yaml shows the keys)")
    relay.add_argument("--listen", default="127.0.0.1:9095", metavar="HOST:PORT",
                       help="where Alertmanager posts (default 127.0.0.1:9095; webhook URL http://HOST:PORT/hook/<receiver>)")
    relay.add_argument("--mqtt", help="broker for `mqtt` targets (default: the local stack / URBANSENSE_MQTT_URL); "
                                      "the account writes city/notify/#")
    relay.set_defaults(func=_relay)

    duty = rsub.add_parser("duty", help="the duty book: alert episodes officers acknowledge, assign and resolve; "
                                        "unacknowledged critical ones escalate; a JSON API for the console")
    duty.add_argument("--listen", default="127.0.0.1:9096", metavar="HOST:PORT",
                      help="the API (default 127.0.0.1:9096)")
    duty.add_argument("--db", type=Path, help="the episodes' SQLite file (default <run dir>/duty/episodes.sqlite)")
    duty.add_argument("--escalation", type=Path, help="escalation chains (default rules/escalation.yaml)")
    duty.add_argument("--mqtt", help="broker URL (default: the local stack / URBANSENSE_MQTT_URL)")
    duty.add_argument("--influx", help="InfluxDB URL for alert_episodes (default: the local stack / "
                                       "URBANSENSE_INFLUX_URL)")
    duty.add_argument("--database", default="city")
    duty.add_argument("--gateways", type=Path, action="append", metavar="PATH",
                      help="gateway configs: where the devices are, for the console's map "
                           "(default: firmware-configs/gateways)")
    duty.add_argument("--grafana-url", help="Grafana's base URL: each alert links to its family's dashboard")
    duty.add_argument("--officers", type=Path, metavar="FILE",
                      help="the duty officers who may sign in, 'name PASSWORD_VARIABLE' per line (default: env "
                           "URBANSENSE_DUTY_OFFICERS); without, anyone reaching the console acts in a typed name")
    duty.set_defaults(func=_duty)

    check = rsub.add_parser("check", help="validate rule files")
    check.add_argument("--rules", type=Path)
    check.set_defaults(func=_check)

    sil = rsub.add_parser("silence", help="silence alerts: add, list, expire")
    ssub = sil.add_subparsers(dest="silence_cmd", required=True)
    add = ssub.add_parser("add", help="add a silence (retained on the broker, seen by every engine)")
    add.add_argument("--match", action="append", required=True, metavar="LABEL=GLOB",
                     help="rule, domain, district, device or severity; repeat, all must match")
    add.add_argument("--for", dest="for_", default="2h", help="how long, e.g. 2h, 30m (default 2h)")
    add.add_argument("--comment", default="")
    add.add_argument("--by", default="")
    add.add_argument("--id", help="silence id (default: generated)")
    add.add_argument("--mqtt")
    add.set_defaults(func=_silence_add)
    lst = ssub.add_parser("list", help="list silences")
    lst.add_argument("--mqtt")
    lst.set_defaults(func=_silence_list)
    exp = ssub.add_parser("expire", help="remove a silence")
    exp.add_argument("id")
    exp.add_argument("--mqtt")
    exp.set_defaults(func=_silence_expire)


def _load(path: Path | None) -> list[Rule]:
    from rules.catalog import load_catalog

    return load_catalog(path)


def _urls(args: argparse.Namespace) -> tuple[str, str]:
    from urbansense.endpoints import default_urls

    mqtt_url, influx_url = default_urls()
    return getattr(args, "mqtt", None) or mqtt_url, getattr(args, "influx", None) or influx_url


def _run(args: argparse.Namespace) -> int:
    from rules.inventory import GATEWAYS_DIR
    from rules.service import RulesService, ServiceConfig
    from urbansense.endpoints import default_alertmanager_url
    from urbansense.mqtt import MqttSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s rules %(levelname)s %(message)s")
    mqtt_url, influx_url = _urls(args)
    cfg = ServiceConfig(rules_path=args.rules, mqtt=MqttSettings.from_url(mqtt_url),
                        influx_url=influx_url, database=args.database, instance=args.instance,
                        districts=set(args.districts) if args.districts else None,
                        gateways=args.gateways or [GATEWAYS_DIR], lookback_s=args.lookback,
                        flap_changes=args.flap_changes, flap_window_s=args.flap_window, flap_clear_s=args.flap_clear,
                        alertmanager_url=args.alertmanager or default_alertmanager_url(),
                        prometheus_port=args.metrics_port, prometheus_host=args.metrics_host,
                        amqp_urls=amqp.split(",") if (amqp := args.amqp or os.environ.get("URBANSENSE_AMQP_URLS"))
                        else None)
    if args.flap_changes < 2 or args.flap_clear < args.flap_window:
        print(f"error: --flap-changes must be at least 2 (got {args.flap_changes}) and --flap-clear at least "
              f"--flap-window ({args.flap_clear:g} < {args.flap_window:g} s)", file=sys.stderr)
        return 2
    svc = RulesService(cfg)
    signal.signal(signal.SIGTERM, lambda *_: svc.stop())
    signal.signal(signal.SIGINT, lambda *_: svc.stop())
    svc.run(args.duration)
    return 0


def _routing(args: argparse.Namespace) -> int:
    from rules.routing import render, render_relay
    from urbansense.paths import ALERTMANAGER_CONF, shown

    files = [(ALERTMANAGER_CONF, render()), (ALERTMANAGER_CONF.with_name("relay.yaml"), render_relay())]
    stale = [path for path, text in files if not path.exists() or path.read_text(encoding="utf-8") != text]
    if args.check:
        for path in stale:
            print(f"{shown(path)} is not current; run: urbansense rules routing", file=sys.stderr)
        if not stale:
            print(", ".join(shown(path) for path, _ in files) + ": current")
        return 1 if stale else 0
    for path, text in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {shown(path)}")
    return 0


def _relay(args: argparse.Namespace) -> int:
    from rules.relay import Relay, load_targets, serve
    from urbansense.config import ConfigError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s relay %(levelname)s %(message)s")
    host, _, port = args.listen.rpartition(":")
    try:
        targets = load_targets(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    client = None
    if any(t.kind == "mqtt" for ts in targets.values() for t in ts):
        from urbansense.mqtt import MqttClient, MqttSettings

        client = MqttClient(MqttSettings.from_url(_urls(args)[0]), client_id="urbansense-relay")
        client.connect(wait=False)
    server = serve(Relay(targets, publish=client.publish_wait if client else None), host or "127.0.0.1", int(port))
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"relay on http://{args.listen}/hook/<receiver> for {', '.join(sorted(targets))}")
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    if client is not None:
        client.close()
    return 0


def _duty(args: argparse.Namespace) -> int:
    from rules.duty import DutyBook, load_escalation
    from rules.duty_service import ConsoleSite, DutyService, serve
    from rules.inventory import GATEWAYS_DIR, load_inventory
    from rules.officers import load_officers
    from urbansense import clock
    from urbansense.config import ConfigError
    from urbansense.influx import InfluxClient
    from urbansense.mqtt import MqttSettings
    from urbansense.paths import default_run_dir

    logging.basicConfig(level=logging.INFO, format="%(asctime)s duty %(levelname)s %(message)s")
    officers_file = args.officers or (Path(p) if (p := os.environ.get("URBANSENSE_DUTY_OFFICERS")) else None)
    try:
        escalation = load_escalation(args.escalation or Path(__file__).with_name("escalation.yaml"))
        officers = load_officers(officers_file) if officers_file is not None else None
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    mqtt_url, influx_url = _urls(args)
    book = DutyBook(args.db or default_run_dir() / "duty" / "episodes.sqlite", escalation, clock.now_ms)
    service = DutyService(book, MqttSettings.from_url(mqtt_url), influx=InfluxClient(influx_url, args.database))
    host, _, port = args.listen.rpartition(":")
    located = {(d.district, d.device): (d.lat, d.lon) for d in load_inventory(args.gateways or [GATEWAYS_DIR],
                                                                              strict=False)
               if d.lat is not None and d.lon is not None}
    server = serve(book, host or "127.0.0.1", int(port), ConsoleSite(located, args.grafana_url), officers)
    if officers is None:
        logging.getLogger("urbansense.rules.duty").warning(
            "no --officers: anyone who reaches http://%s/ acts in the name they type; list the duty officers "
            "(docs/OPERATIONS.md, section 8)", args.listen)
    threading.Thread(target=server.serve_forever, name="duty-api", daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: service.stop())
    signal.signal(signal.SIGINT, lambda *_: service.stop())
    print(f"duty console on http://{args.listen}/ ({len(book.open_episodes())} open alert episode(s)"
          + (f"; {len(officers.names)} officer(s) may sign in)" if officers is not None else ")"))
    service.run()
    server.shutdown()
    book.close()
    return 0


def _check(args: argparse.Namespace) -> int:
    rules = _load(args.rules)
    kinds: dict[str, int] = {}
    for r in rules:
        kinds[r.kind] = kinds.get(r.kind, 0) + 1
    print(f"ok: {len(rules)} rule(s): " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    return 0


def _client(args: argparse.Namespace, tag: str) -> MqttClient:
    from urbansense.mqtt import MqttClient, MqttSettings

    mqtt_url, _ = _urls(args)
    client = MqttClient(MqttSettings.from_url(mqtt_url), client_id=f"urbansense-silence-{tag}-{uuid.uuid4().hex[:6]}")
    client.connect()
    return client


def _silence_add(args: argparse.Namespace) -> int:
    from rules.silences import SILENCE_TOPIC_PREFIX, Silence, SilenceError, parse_duration_s, parse_matchers

    try:
        matchers = parse_matchers(args.match)
        starts = int(time.time() * 1000)
        silence = Silence(id=args.id or f"s-{uuid.uuid4().hex[:10]}", matchers=matchers, starts=starts,
                          ends=starts + int(parse_duration_s(args.for_) * 1000), comment=args.comment, by=args.by)
    except SilenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    client = _client(args, "add")
    try:
        client.publish_wait(SILENCE_TOPIC_PREFIX + silence.id, silence.to_wire(), qos=1, retain=True)
    finally:
        client.close()
    until = dt.datetime.fromtimestamp(silence.ends / 1000, dt.UTC).isoformat(timespec="seconds")
    print(f"silence {silence.id}: {' '.join(f'{k}={v}' for k, v in matchers.items())} until {until}")
    return 0


def _silence_list(args: argparse.Namespace) -> int:
    from rules.silences import ALL_SILENCES, SilenceSet

    found = SilenceSet()
    client = _client(args, "list")
    client.subscribe(ALL_SILENCES, lambda m: found.handle_message(m.topic, bytes(m.payload)), qos=1)
    time.sleep(1.0)  # retained messages arrive right after subscribing
    client.close()
    now = int(time.time() * 1000)
    for s in sorted(found._by_id.values(), key=lambda s: s.ends):
        state = "active" if s.starts <= now < s.ends else ("expired" if now >= s.ends else "pending")
        until = dt.datetime.fromtimestamp(s.ends / 1000, dt.UTC).isoformat(timespec="seconds")
        print(f"{s.id}  {state:8} until {until}  {' '.join(f'{k}={v}' for k, v in s.matchers.items())}"
              f"  {s.comment}")
    if not len(found):
        print("no silences")
    return 0


def _silence_expire(args: argparse.Namespace) -> int:
    from rules.silences import SILENCE_TOPIC_PREFIX

    client = _client(args, "expire")
    try:
        client.publish_wait(SILENCE_TOPIC_PREFIX + args.id, b"", qos=1, retain=True)
    finally:
        client.close()
    print(f"silence {args.id} removed")
    return 0
