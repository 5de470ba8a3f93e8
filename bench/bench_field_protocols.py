"""HJ 212 stations or JT/T 808 terminals through one edge agent, with a broker outage.

On a private Mosquitto, one edge agent (its own process) listens on an hj212 or jt808
link; this process plays the devices with the simulators' own protocol clients
(simulators/field_protocols.py), each on its own TCP connection, reports spread evenly
over their interval, and subscribes to the gateway's telemetry with a persistent
session. Midway the broker is stopped for `--outage-s` seconds and started again.

It prints the agent's CPU per message (user + system time over the measured window,
divided by the messages the devices sent in it), the delay from a device's send to the
sample's arrival at a subscriber (p50/p99, outside the outage and the agent's
reconnection after it, and overall; the agent batches for up to `batch.max_interval_s`,
1 s), the agent's idle CPU with every device configured (its baseline) and the CPU per
message above it, and at the end every reading the agent
acknowledged to its device checked against what reached the subscriber: lost and
duplicated. Not part of `make test`.

    .venv/bin/python bench/bench_field_protocols.py --protocol hj212   # 1,000 minute + 100 real-time stations
    .venv/bin/python bench/bench_field_protocols.py --protocol jt808   # 5,000 terminals every 10 s
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from application.stack import Stack, free_port  # noqa: E402
from simulators.field_protocols import Hj212Station, Jt808Terminal  # noqa: E402
from urbansense import codec, registry  # noqa: E402
from urbansense.config import load_gateway  # noqa: E402
from urbansense.mqtt import MqttClient, MqttSettings  # noqa: E402

KEY_ENV = "BENCH_JT808_KEY"


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def devices(args: argparse.Namespace) -> list[tuple[dict[str, Any], float, str]]:
    """(device entry, report interval s, HJ 212 data kind) for every simulated device."""
    if args.protocol == "hj212":
        out = [({"id": f"aq-m{i:05d}", "profile": "air-quality-station", "ident": f"BENCHM{i:05d}"}, 60.0, "minute")
               for i in range(args.stations)]
        out += [({"id": f"aq-r{i:05d}", "profile": "air-quality-station", "ident": f"BENCHR{i:05d}"}, 30.0,
                 "realtime") for i in range(args.realtime)]
        return out
    return [({"id": f"vt-{i:05d}", "profile": "dg-tanker-terminal", "ident": f"1390{i:07d}"}, args.every, "")
            for i in range(args.terminals)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", choices=["hj212", "jt808"], required=True)
    ap.add_argument("--stations", type=int, default=1000, help="hj212: stations sending minute data every 60 s")
    ap.add_argument("--realtime", type=int, default=100, help="hj212: stations sending real-time data every 30 s")
    ap.add_argument("--terminals", type=int, default=5000, help="jt808: terminals")
    ap.add_argument("--every", type=float, default=10.0, help="jt808: report interval, s")
    ap.add_argument("--minutes", type=float, default=3.0, help="measured minutes (after the warm-up)")
    ap.add_argument("--warmup", type=float, default=30.0, help="seconds before measuring (connections, registration)")
    ap.add_argument("--outage-s", type=float, default=30.0, help="broker stopped this long midway (0: none)")
    ap.add_argument("--idle-s", type=float, default=10.0, help="seconds of the agent's idle baseline")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one socket per device, both ends
    tmp = Path(tempfile.mkdtemp(prefix="bench-fp-"))
    stack = Stack(tmp / "stack")
    stack.start("mosquitto")
    port = free_port()
    plan = devices(args)
    link: dict[str, Any] = {"name": "field", "transport": args.protocol, "host": "127.0.0.1", "port": port,
                            "devices": [d for d, _i, _k in plan]}
    if args.protocol == "jt808":
        link["auth_key_env"] = KEY_ENV
    cfg = {"gateway": "bench-fp", "district": "bench", "uplink": {"host": "127.0.0.1", "port": stack.mqtt_port},
           "batch": {"max_samples": 500, "max_interval_s": 1.0}, "links": [link],
           "profiles_dir": str(registry.families()["air"].profiles_dir)}
    gw_path = tmp / "bench-fp.yaml"
    gw_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    profiles = load_gateway(gw_path).profiles
    env = {**os.environ, KEY_ENV: "bench-key-" + os.urandom(8).hex()}
    os.environ[KEY_ENV] = env[KEY_ENV]
    log = open(tmp / "agent.log", "wb")  # noqa: SIM115
    agent = subprocess.Popen([sys.executable, "-m", "application.cli", "edge", "run", "--config", str(gw_path),
                              "--mqtt", stack.mqtt_url, "--wal", str(tmp / "edge.wal"), "--log-level", "WARNING"],
                             cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)

    received: dict[tuple[str, int], float] = {}
    duplicates = 0
    lock = threading.Lock()

    def on_batch(msg: Any) -> None:
        nonlocal duplicates
        now = time.time()
        batch = codec.decode_batch(bytes(msg.payload))
        with lock:
            for s in batch.samples:
                key = (s.dev, s.t)
                if key in received:
                    duplicates += 1
                else:
                    received[key] = now

    collector = MqttClient(MqttSettings.from_url(stack.mqtt_url), client_id="bench-fp-collector",
                           clean_start=False, session_expiry_s=3600)
    collector.subscribe("city/bench/bench-fp/telemetry", on_batch, qos=1)
    collector.connect()

    clients: list[tuple[str, Hj212Station | Jt808Terminal, float, str, float]] = []
    for i, (dev, interval, kind) in enumerate(plan):
        phase = interval * i / len(plan)
        if args.protocol == "hj212":
            client: Hj212Station | Jt808Terminal = Hj212Station(
                host="127.0.0.1", port=port, retry_s=1.0, mn=dev["ident"], pw="123456",
                profile=profiles["air-quality-station"])
        else:
            client = Jt808Terminal(host="127.0.0.1", port=port, retry_s=1.0, phone=dev["ident"],
                                   version=1 if i % 2 else None, profile=profiles["dg-tanker-terminal"])
        clients.append((dev["id"], client, interval, kind, phase))
    sent: dict[tuple[str, int], float] = {}
    # the agent's own cost with every device configured and none connected: its baseline
    time.sleep(3.0)
    idle0, idle_t0 = _cpu(agent.pid), time.time()
    time.sleep(args.idle_s)
    idle_share = (_cpu(agent.pid) - idle0) / (time.time() - idle_t0)
    start = time.time() + 2.0
    due = [(start + phase, j) for j, (_d, _c, _i, _k, phase) in enumerate(clients)]
    heapq.heapify(due)
    next_sweep = start
    measure_from = start + args.warmup
    measure_to = measure_from + args.minutes * 60
    outage_at = (measure_from + measure_to) / 2 if args.outage_s > 0 else float("inf")
    outage_window = (outage_at, outage_at + args.outage_s + 5.0)
    cpu0 = cpu1 = 0.0
    sent_in_window = 0
    broker_down = False
    try:
        while time.time() < measure_to:
            now = time.time()
            if cpu0 == 0.0 and now >= measure_from:
                cpu0 = _cpu(agent.pid)
            if not broker_down and now >= outage_at and now < outage_at + args.outage_s:
                stack.stop("mosquitto")
                broker_down = True
            if broker_down and now >= outage_at + args.outage_s:
                stack.start("mosquitto")
                broker_down = False
                outage_at = float("inf")
            while due and due[0][0] <= now:
                at, j = heapq.heappop(due)
                dev_id, client, interval, kind, _phase = clients[j]
                t_ms = int(at) * 1000
                heapq.heappush(due, (at + interval, j))
                values = ({"pm25_ugm3": 30 + j % 50, "pm10_ugm3": 55.5, "no2_ugm3": 20, "co_mgm3": 0.6}
                          if args.protocol == "hj212" else
                          {"lat": 31.2 + (j % 100) * 1e-3, "lon": 121.5, "speed_kmh": 40.0 + j % 30,
                           "heading_deg": 90, "gnss_fix": True, "emergency": False})
                if isinstance(client, Hj212Station):
                    client.report(t_ms, values, kind=kind)
                else:
                    client.report(t_ms, values)
                sent[(dev_id, t_ms)] = time.time()
                if measure_from <= now < measure_to:
                    sent_in_window += 1
            if now >= next_sweep:  # answers to read, and what a dropped connection holds to send again
                next_sweep = now + 2.0
                for _d, client, _i, _k, _p in clients:
                    client.flush()
            time.sleep(0.01)
        cpu1 = _cpu(agent.pid)
        deadline = time.time() + 120
        while any(c.unconfirmed for _d, c, _i, _k, _p in clients) and time.time() < deadline:
            for _d, c, _i, _k, _p in clients:
                c.flush()
                c.read_answers()
            time.sleep(0.05)
        acked = {(d, t) for d, c, _i, _k, _p in clients for t, _v in c.record}
        deadline = time.time() + 120
        while time.time() < deadline:
            with lock:
                if acked <= received.keys():
                    break
            time.sleep(0.5)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
        for _d, c, _i, _k, _p in clients:
            c.close()
        collector.close()
        stack.down()
        log.close()
    with lock:
        delays = [received[k] - sent[k] for k in sent if k in received]
        # the outage and the agent's reconnection: until the first reading sent after the
        # broker came back arrives
        back = outage_window[1] - 5.0
        after = [received[k] for k in sent if k in received and sent[k] >= back]
        recovered = min(after, default=back)
        quiet = [received[k] - sent[k] for k in sent if k in received and not
                 (outage_window[0] - 2 <= sent[k] <= recovered)]
        lost = len(acked - received.keys())
    measured_s = args.minutes * 60
    result = {
        "protocol": args.protocol, "devices": len(clients), "messages_per_s": round(sent_in_window / measured_s, 1),
        "measured_s": measured_s, "outage_s": args.outage_s,
        "agent_cpu_share_of_one_core": round((cpu1 - cpu0) / measured_s, 3),
        "agent_cpu_us_per_message": round(1e6 * (cpu1 - cpu0) / max(1, sent_in_window), 1),
        "agent_idle_share_of_one_core": round(idle_share, 4),
        "agent_cpu_us_per_message_above_idle": round(
            1e6 * ((cpu1 - cpu0) - idle_share * measured_s) / max(1, sent_in_window), 1),
        "uplink_back_after_outage_s": round(recovered - back, 1) if args.outage_s > 0 else None,
        "delay_p50_s_outside_outage": round(_pct(quiet, 0.5), 3),
        "delay_p99_s_outside_outage": round(_pct(quiet, 0.99), 3),
        "delay_p99_9_s_outside_outage": round(_pct(quiet, 0.999), 3),
        "delay_p99_s_overall": round(_pct(delays, 0.99), 3), "delay_max_s": round(max(delays, default=0.0), 3),
        "readings_acknowledged_to_devices": len(acked), "readings_received": len(received), "lost": lost,
        "duplicates_at_subscriber": duplicates,
        "readings_never_acknowledged": len(sent) - len(acked),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:36} {value}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
