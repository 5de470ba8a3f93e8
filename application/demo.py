"""`urbansense demo`: a live city district on real parts.

Starts the local stack, initialises the database, and runs a scenario (default
`pudong-incidents`, accelerated so that every incident plays in about 5 minutes): the
simulators, one edge agent per gateway, the ingester and the rules engine, each its own
process as in production. A live view shows what the duty officer would see; at the
end a summary checks every published reading against InfluxDB and scores each incident
against the simulator's ground truth.

The demo is an orchestrator, not a component: it starts the components as processes and
reads the scenario and ground truth through the simulators' and rules' public APIs.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests
from rich.console import Console
from rich.live import Live
from rich.table import Table

from application.cluster import RabbitCluster
from application.delivery import NOTIFY_TOPICS, DeliveryWatch, alertmanager_config
from application.demo_view import DemoState
from application.district import port_offset as _port_offset
from application.district import tune_gateway_configs, uplink_to_cluster
from application.district import wait_ports as _wait_ports
from application.processes import ProcessGroup
from application.stack import Stack, default_run_dir, free_port
from rules.routing import render_relay
from urbansense import codec, topics
from urbansense.clock import ScenarioClock
from urbansense.identifiers import MEASUREMENTS
from urbansense.influx import InfluxClient, InfluxError
from urbansense.mqtt import MqttClient, MqttSettings
from urbansense.schema import AlertEvent


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a live simulated district end to end on a private local stack")
    p.add_argument("--scenario", default="pudong-incidents", help="scenario name or YAML (default pudong-incidents)")
    p.add_argument("--speed", type=float, help="event-time speed-up (default: the scenario's own, ~5 min run)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--poll", type=float, default=0.1, metavar="S",
                   help="edge poll period in wall seconds (default 0.1)")
    p.add_argument("--keep", action="store_true", help="leave the stack running afterwards for exploration")
    p.add_argument("--headless", action="store_true", help="no live view")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--cluster", type=int, default=0, metavar="N",
                   help="cluster mode: the gateways publish to an N-node RabbitMQ cluster (quorum queues), the "
                        "ingester consumes its queue over AMQP, two rules instances share the districts "
                        "(default: the embedded Mosquitto alone)")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from simulators.scenario import load_scenario  # the orchestrator reads scenario metadata

    console = summary_console(stderr=args.json, quiet=args.headless)
    probe = load_scenario(args.scenario)
    # every port of the scenario moves by one offset: the simulator's Modbus TCP devices and
    # the ports edge agents listen on for HJ 212 stations and JT/T 808 terminals
    ports = sorted({link.port for g in probe.loaded for link in g.config.links if link.on_tcp_port})
    offset = _port_offset(ports) if ports else 0
    tcp_ports = sorted({link.port for g in probe.loaded for link in g.config.links if link.transport == "tcp"})
    scenario = load_scenario(args.scenario, port_offset=offset)

    # The demo's own stack, wiped at every start: no data or queued session of an earlier run
    # can leak into this one.
    stack = Stack(default_run_dir() / "demo")
    RabbitCluster(stack.run_dir).down()  # one an earlier `--keep --cluster` run left
    stack.down()
    shutil.rmtree(stack.run_dir, ignore_errors=True)
    try:
        summary = _run(args, console, stack, scenario, tcp_ports, offset)
    finally:
        if not args.keep:
            stack.down()
    untold = [i for i in summary["incidents"] if i["detected"] and not i["utility_notified"]]
    ok = summary["verified"] and not summary["missed"] and not summary["delivery"]["undelivered"] and not untold
    return 0 if ok else 1


def _run(args: argparse.Namespace, console: Console, stack: Stack, scenario: Any, tcp_ports: list[int],
         offset: int) -> dict[str, Any]:
    speed = float(args.speed or scenario.speed or 60.0)
    wall_s = scenario.duration_s / speed
    console.print(f"[bold]UrbanSense demo[/]: scenario [bold]{scenario.name}[/], "
                  f"{scenario.duration_s / 3600:.1f} h of city time at x{speed:g} = {wall_s / 60:.1f} min")
    stack.up()
    cluster = None
    if args.cluster:
        cluster = RabbitCluster(stack.run_dir, args.cluster)
        console.print(f"  starting a {args.cluster}-node RabbitMQ cluster ...")
        cluster.up()
        cluster.declare_partitions(sorted({g.config.district for g in scenario.loaded}))
    try:
        return _run_on(args, console, stack, cluster, scenario, tcp_ports, offset, speed, wall_s)
    finally:
        if cluster is not None and not args.keep:
            cluster.down()


def _run_on(args: argparse.Namespace, console: Console, stack: Stack, cluster: RabbitCluster | None, scenario: Any,
            tcp_ports: list[int], offset: int, speed: float, wall_s: float) -> dict[str, Any]:
    # Alertmanager routes the alerts (the shipped tree); its receivers post to the relay,
    # which publishes each receiver's notifications on city/notify/<receiver>.
    relay_port = free_port()
    duty_port = free_port(besides=(relay_port,))
    stack.alertmanager_config = alertmanager_config(f"http://127.0.0.1:{relay_port}")
    stack.start("alertmanager")
    for name, st in stack.services().items():
        console.print(f"  {name:12} {st.url}")
    # the city's broker: the cluster when there is one; the embedded Mosquitto stays the
    # field devices' (the air stations publish to it, the edges' MQTT links read it)
    city_mqtt = stack.mqtt_url
    if cluster is not None:
        city_mqtt = cluster.mqtt_url
        for node in cluster.nodes:
            console.print(f"  {'rabbitmq-' + str(node.index):12} mqtt://127.0.0.1:{node.mqtt_port} "
                          f"amqp://127.0.0.1:{node.amqp_port}")
    run_dir = stack.run_dir
    (run_dir / "relay.yaml").write_text(render_relay())  # every receiver's notifications on its topic
    (run_dir / "gateways").mkdir(parents=True)
    truth_path = run_dir / "truth.jsonl"
    init = subprocess.run([sys.executable, "-m", "application.cli", "ingest", "init", "--influx", stack.influx_url],
                          capture_output=True, text=True, timeout=60)
    if init.returncode != 0:
        raise RuntimeError(f"urbansense ingest init failed:\n{init.stderr or init.stdout}")

    # Event time: the scenario ends at the wall-clock end of the run (never ahead of it),
    # aligned to the scenario's local start time where it has one.
    startup_s = 5.0
    now = int(time.time() * 1000)
    end_wall = now + int((startup_s + wall_s) * 1000)
    start_ms = scenario.default_start_ms(end_wall)
    clock = ScenarioClock(start_ms, now + int(startup_s * 1000), speed)
    env = {**stack.env(), "URBANSENSE_CLOCK": clock.to_env(), **field_secrets()}
    if cluster is not None:
        env.update({"URBANSENSE_MQTT_URL": city_mqtt, "URBANSENSE_AMQP_URLS": ",".join(cluster.amqp_urls)})

    gw_paths = scenario.write_gateway_configs(run_dir / "gateways", mqtt_port=stack.mqtt_port, seed=args.seed)
    # the demo's poll period, in wall seconds; short link time-outs (see tune_gateway_configs)
    tune_gateway_configs(gw_paths, poll_s=max(args.poll, scenario.step_s / speed))
    if cluster is not None:
        uplink_to_cluster(gw_paths, [("127.0.0.1", n.mqtt_port) for n in cluster.nodes])

    state = DemoState(scenario.name, speed, start_ms, start_ms + int(scenario.duration_s * 1000))
    delivery = DeliveryWatch(stack.alertmanager_url)

    def on_alert(event: AlertEvent) -> None:
        if not state.closed:  # alerts of the shutdown (gateways going offline) are not counted
            delivery.on_alert(event)
        state.on_alert(event)

    watcher = MqttClient(MqttSettings.from_url(city_mqtt), client_id=f"demo-view-{time.time_ns()}")
    watcher.subscribe(topics.ALL_TELEMETRY, lambda m: state.on_batch(codec.decode_batch_lenient(bytes(m.payload))[0]))
    watcher.subscribe(topics.ALL_ALERTS, lambda m: on_alert(codec.decode_alert(bytes(m.payload))))
    watcher.subscribe(NOTIFY_TOPICS, lambda m: delivery.on_notification(bytes(m.payload)))
    watcher.connect()
    influx = InfluxClient(stack.influx_url)
    _write_past_record(console, scenario, args.seed, start_ms, influx)
    procs = ProcessGroup(run_dir / "logs", env)
    duty_url = f"http://127.0.0.1:{duty_port}/"
    duty: dict[str, int] | None = None
    interrupted = False
    try:
        procs.start("ingest", "ingest", "run")
        procs.start("relay", "rules", "relay", "--config", str(run_dir / "relay.yaml"),
                    "--listen", f"127.0.0.1:{relay_port}")
        procs.start("duty", "rules", "duty", "--listen", f"127.0.0.1:{duty_port}", "--db",
                    str(run_dir / "duty" / "episodes.sqlite"), "--gateways", str(run_dir / "gateways"))
        # in cluster mode two instances share the districts (URBANSENSE_AMQP_URLS)
        for i in range(1, 3 if cluster is not None else 2):
            procs.start("rules" if cluster is None else f"rules-{i}", "rules", "run", "--gateways",
                        str(run_dir / "gateways"), "--alertmanager", stack.alertmanager_url, "--instance", f"rules-{i}")
        _wait_ports([relay_port, duty_port], procs, sim_name="duty", what="relay and duty console")
        state.note(f"duty console: {duty_url}", "bold")
        procs.start("sim", "sim", "run", "--scenario", str(scenario.path), "--speed", str(speed), "--seed",
                    str(args.seed), "--truth", str(truth_path), "--port-offset", str(offset), "--mqtt", stack.mqtt_url,
                    "--tick", str(min(0.1, args.poll / 2)))
        _wait_ports([p + offset for p in tcp_ports], procs)
        # Edges start when the scenario clock does: polls before it would read the frozen
        # pre-start values, which the flat-line rules rightly call stuck.
        time.sleep(max(0.0, clock.wall_s_for(start_ms) - time.time()))
        for path in gw_paths:
            procs.start(f"edge-{path.stem}", "edge", "run", "--config", str(path))
        console.print(f"  {len(procs.procs)} processes started; logs in {procs.log_dir}")
        console.print(f"  duty console {duty_url}\n")
        interrupted = _live(console, args.headless, state, clock, influx, procs, delivery, duty_url)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        # Alerts raised by the shutdown itself (gateways going offline) are not scored.
        state.closed = True
        for name in [n for n in procs.procs if n.startswith("edge-")] + ["sim"]:
            procs.stop(name)
        ingested = _wait_ingested(influx, state, start_ms)
        _wait_delivered(delivery)
        duty = _duty_counts(duty_url)
        procs.stop_all()
        watcher.close()

    summary = _summary(args, scenario, state, influx, truth_path, start_ms, speed, ingested, interrupted, delivery)
    summary["duty"] = duty
    _print_summary(console, summary, stack, args.keep)
    if args.json:
        print(json.dumps(summary, indent=2))
    return summary


#: The secrets the shipped HJ 212 and JT/T 808 links name (password_env, auth_key_env),
#: with the length drawn for a run: a station password is 6 characters on most
#: dataloggers' keypads; the terminals' key is a long secret.
FIELD_SECRETS = {"URBANSENSE_HJ212_PASSWORD": 3, "URBANSENSE_JT808_AUTH_KEY": 24}


def field_secrets() -> dict[str, str]:
    """The user's values if set, else drawn for this run (the simulated devices get the same)."""
    return {name: os.environ.get(name) or secrets.token_hex(n) for name, n in FIELD_SECRETS.items()}


def _write_past_record(console: Console, scenario: Any, seed: int, start_ms: int, influx: InfluxClient) -> None:
    """The weeks of record some rules fit before they speak (a tide station's harmonics),
    written into InfluxDB as a city's database already holds them; the rules engine reads
    them back when it starts."""
    from application.backtest import past_record
    from ingest.points import batch_lines
    from rules.catalog import load_catalog
    from rules.engine import RulesEngine
    from rules.inventory import from_gateways

    needs = RulesEngine(load_catalog(), from_gateways(scenario.loaded_for(seed))).history_needs()
    lines: list[str] = []
    devices: set[str] = set()
    for batch in past_record(scenario, seed, start_ms, needs):
        lines.extend(batch_lines(batch))
        devices.update(s.dev for s in batch.samples)
        if len(lines) >= 5000:
            influx.write("\n".join(lines))
            lines.clear()
    if lines:
        influx.write("\n".join(lines))
    if devices:
        days = max(h for _m, _f, h in needs) / 86400
        console.print(f"  the past {days:.0f} days of {len(devices)} station(s) written to InfluxDB (their record "
                      "for the tide fit)")


def _live(console: Console, headless: bool, state: DemoState, clock: ScenarioClock, influx: InfluxClient,
          procs: ProcessGroup, delivery: DeliveryWatch, duty_url: str) -> bool:
    """Refresh the view until the scenario's event time is over; True if interrupted."""
    next_poll = 0.0
    with Live(state.render(), console=console, refresh_per_second=4, transient=False,
              auto_refresh=False) as live:
        while clock.now_ms() < state.end_ms:
            dead = procs.check()
            if dead:
                state.note(f"component exited: {', '.join(dead)}", "bold red")
                live.update(state.render(), refresh=True)
                raise RuntimeError(f"component exited: {', '.join(dead)}")
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + 2.0
                _poll_influx(influx, state)
                delivery.poll_alertmanager()
                state.delivery = f"{delivery.live_line()}   duty console: {_duty_line(duty_url)}"
            else:
                delivery.poll_alertmanager()  # inhibitions are seen only while they last
            if not headless:
                live.update(state.render(), refresh=True)
            time.sleep(0.25)
    return False


def _duty_counts(duty_url: str) -> dict[str, int] | None:
    """The duty book's open episodes, as its console shows them (None: it does not answer)."""
    try:
        episodes = requests.get(f"{duty_url}api/episodes", timeout=2).json()["episodes"]
    except (requests.RequestException, ValueError, KeyError):
        return None
    return {"open": len(episodes), "unacknowledged": sum(1 for e in episodes if e["state"] == "new"),
            "escalated": sum(1 for e in episodes if e["level"] > 0)}


def _duty_line(duty_url: str) -> str:
    counts = _duty_counts(duty_url)
    if counts is None:
        return "not answering"
    return (f"{counts['open']} open, {counts['unacknowledged']} unacknowledged, {counts['escalated']} escalated  "
            f"{duty_url}")


def _wait_delivered(delivery: DeliveryWatch, timeout_s: float = 30.0) -> None:
    """Wait until every firing alert of the run has reached a receiver (or Alertmanager
    holds it back), or the time-out: the last ones wait for their group."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        delivery.poll_alertmanager()
        if not delivery.outstanding():
            return
        time.sleep(0.5)


def _poll_influx(influx: InfluxClient, state: DemoState) -> None:
    try:
        total = 0
        for m in MEASUREMENTS:
            for row in influx.rows(f'SELECT count(*) FROM "{m}" WHERE time >= {state.start_ms}ms'):
                # a field with no point in the window counts null (InfluxDB 1.x), not 0
                counts = [v for k, v in row.items()
                          if k.startswith("count_") and k != "count_device_error" and v is not None]
                total += int(max(counts, default=0)) + int(row.get("count_device_error") or 0)
        state.on_ingested(total)
        for series in influx.query('SELECT last("aqi") AS aqi, last("primary") AS p FROM "aqi" '
                                   f"WHERE time >= {state.start_ms}ms GROUP BY device"):
            for row in series.rows():
                if row.get("aqi") is not None:
                    state.aqi[series.tags.get("device", "?")] = (float(row["aqi"]), str(row.get("p") or ""))
    except InfluxError as exc:
        state.note(f"InfluxDB: {exc}", "red")


def _stored_points(influx: InfluxClient, start_ms: int) -> set[tuple[str, int]]:
    stored: set[tuple[str, int]] = set()
    for m in MEASUREMENTS:
        for series in influx.query(f'SELECT * FROM "{m}" WHERE time >= {start_ms - 600_000}ms'):
            cols = series.columns
            t_i, d_i = cols.index("time"), cols.index("device")
            stored.update((row[d_i], int(row[t_i])) for row in series.values)
    return stored


def _wait_ingested(influx: InfluxClient, state: DemoState, start_ms: int, timeout_s: float = 60.0) -> int:
    """Wait until every reading seen on the wire is in InfluxDB (or the time-out)."""
    deadline = time.monotonic() + timeout_s
    stored: set[tuple[str, int]] = set()
    while time.monotonic() < deadline:
        with state.lock:
            seen = set(state.seen)
        try:
            stored = _stored_points(influx, start_ms)
        except InfluxError:
            stored = set()
        if seen <= stored:
            break
        time.sleep(1.0)
    return len(stored)


def _summary(args: argparse.Namespace, scenario: Any, state: DemoState, influx: InfluxClient, truth_path: Path,
             start_ms: int, speed: float, ingested: int, interrupted: bool,
             delivery: DeliveryWatch) -> dict[str, Any]:
    from application.backtest import health_rules, maintenance_rules, score
    from rules.catalog import load_catalog
    from rules.inventory import from_gateways

    with state.lock:
        seen = set(state.seen)
        events = list(state.events)
        published = state.readings
    stored = _stored_points(influx, start_ms)
    truth = [json.loads(line) for line in truth_path.read_text().splitlines()] if truth_path.exists() else []
    end_ms = max(state.event_now_ms, start_ms)
    catalog = load_catalog()
    result = score(scenario.name, truth, events, from_gateways(scenario.loaded_for(args.seed)), start_ms, end_ms,
                   health=health_rules(catalog), maintenance=maintenance_rules(catalog))
    incidents = []
    for s in result.incidents:
        rec = s.record
        played = rec["start"] <= end_ms
        incidents.append({
            "type": rec["type"], "device": rec.get("device") or ",".join(rec.get("devices", [])[:3]),
            "start": rec["start"], "played": played, "detected": s.detected,
            "first_alert_rule": s.first_alert.rule if s.first_alert else None,
            "first_alert_t": s.first_alert.t if s.first_alert else None,
            "hazard_crossed_at": rec.get("hazard_crossed_at"),
            "lead_time_s": s.lead_time_s,
            # the incident's alerts told to the utility that owns their domain
            "utility": _utility(s.alerts),
            "utility_notified": any(delivery.delivered_to(a.id, _utility([a]) or "") for a in s.alerts),
        })
    missed = [i for i in incidents if i["played"] and not i["detected"]]
    return {
        "scenario": scenario.name, "speed": speed, "seed": args.seed, "interrupted": interrupted,
        "start_ms": start_ms, "end_ms": end_ms,
        "readings_published": published,
        "readings_distinct": len(seen),
        "readings_in_influxdb": len(seen & stored),
        "missing_in_influxdb": len(seen - stored),
        "verified": bool(seen) and seen <= stored,
        "delivery": delivery.summary(),
        "alert_events": len(events),
        "incidents": incidents,
        "missed": [i["type"] for i in missed],
        "false_alarms": len(result.false_alarms),
        # commands the rules sent by themselves, as the gateways answered them
        "automatic_responses": [{"alert": e.id, "message": e.message, "ok": bool(e.response["ok"])}
                                for e in events if e.response is not None],
        "false_alarm_rules": sorted({e.rule for e in result.false_alarms}),
        "maintenance_tickets_unmatched": len(result.maintenance_unmatched),
        "truth_file": str(truth_path),
        "influx_url": influx.url,
    }


def _utility(alerts: list[AlertEvent]) -> str | None:
    """The receiver (a utility's account) of the first alert's domain, if it is a family's."""
    from urbansense import registry

    families = registry.families()
    for alert in alerts:
        if alert.domain in families:
            return families[alert.domain].utility
    return None


def _print_delivery(console: Console, d: dict[str, Any]) -> None:
    def seconds(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f} s" if v < 1 else f"{v:.1f} s"

    lost = (f"[red]{len(d['undelivered'])} not delivered: {', '.join(d['undelivered'][:5])}[/]"
            if d["undelivered"] else "[green]none lost[/]")
    console.print(f"[bold]Alert delivery[/] (Alertmanager, relay, city/notify/<receiver>): {d['notified_alerts']} of "
                  f"{d['firing_alerts']} firing alerts told to their receivers; {lost}")
    console.print(f"  from city/alerts to the receiver: p50 {seconds(d['latency_p50_s'])}, p99 "
                  f"{seconds(d['latency_p99_s'])} (demo grouping: wait {d['group_wait_s']} s, interval "
                  f"{d['group_interval_s']} s)")
    console.print(f"  {d['inhibited']} inhibited, {d['over_before_due']} over before their group was due")
    by_receiver = ", ".join(f"{r} {n}" for r, n in d["by_receiver"].items())
    console.print(f"  {d['notifications']} notifications: {by_receiver}")


def summary_console(*, stderr: bool = False, quiet: bool = False) -> Console:
    """The demo's console: the terminal's width, or 140 columns when the output is piped or
    logged (rich's default of 80 would cut rule names in the summary table)."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, quiet=quiet, width=None if stream.isatty() else 140)


def _print_summary(console: Console, summary: dict[str, Any], stack: Stack, keep: bool) -> None:
    console.print()
    verdict = "[green]all verified[/]" if summary["verified"] else \
        f"[red]{summary['missing_in_influxdb']} missing[/]"
    console.print(f"[bold]Readings[/]: {summary['readings_published']:,} published, "
                  f"{summary['readings_in_influxdb']:,} of {summary['readings_distinct']:,} distinct found in "
                  f"InfluxDB ({verdict})")
    table = Table(title="Incidents (ground truth vs first alert)")
    for col in ("incident", "device", "first alert", "lead time before hazard", "utility told"):
        table.add_column(col)
    for inc in summary["incidents"]:
        if not inc["played"]:
            first = "[dim]not played (run interrupted)[/]"
        elif inc["detected"]:
            first = f"[green]{inc['first_alert_rule']}[/]"
        else:
            first = "[red]MISSED[/]"
        lead = inc["lead_time_s"]
        lead_text = "-" if lead is None else (f"[green]{lead / 60:.1f} min early[/]" if lead > 0
                                              else f"[yellow]{-lead / 60:.1f} min after[/]")
        told = "-" if not inc["detected"] else (f"[green]{inc['utility']}[/]" if inc["utility_notified"]
                                                else f"[red]not {inc['utility']}[/]")
        table.add_row(inc["type"], str(inc["device"]), first, lead_text, told)
    console.print(table)
    _print_delivery(console, summary["delivery"])
    duty = summary.get("duty")
    if duty is not None:
        console.print(f"[bold]Duty book[/]: {duty['open']} open episodes, {duty['unacknowledged']} unacknowledged "
                      f"(nobody is on duty in the demo), {duty['escalated']} escalated up their chain")
    console.print(f"False alarms: {summary['false_alarms']}"
                  + (f" ({', '.join(summary['false_alarm_rules'])})" if summary["false_alarms"] else ""))
    for response in summary.get("automatic_responses", []):
        mark = "[green]done[/]" if response["ok"] else "[red]not done[/]"
        console.print(f"Automatic response ({mark}): {response['message']}")
    if summary.get("maintenance_tickets_unmatched"):
        console.print(f"Maintenance tickets on equipment that did not fail: {summary['maintenance_tickets_unmatched']}")
    console.print("\n[bold]Next steps[/]")
    if keep:  # the stack is still running: its InfluxDB is there to query
        query = "SELECT * FROM alerts WHERE state = 'firing' ORDER BY time DESC LIMIT 5"
        console.print(f'  curl -G {stack.influx_url}/query --data-urlencode db=city --data-urlencode "q={query}"')
    else:
        console.print("  urbansense demo --keep                                     # leave the stack running to "
                      "query it (this list then shows its InfluxDB URL)")
    console.print(f"  urbansense rules backtest --scenario {summary['scenario']:<16} # tune rules offline, with plots")
    console.print("  docker compose up                                          # the same with Grafana at :3000")
    if keep:
        console.print(f"  urbansense stack --run-dir {stack.run_dir} down   # stop the demo's stack when done")
