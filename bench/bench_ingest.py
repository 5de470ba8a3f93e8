"""Ingester benchmark: readings/s from MQTT publish to InfluxDB, against the raw InfluxDB
write ceiling measured in the same run on the same private stack.

1. hot path, in this process: µs per reading for the C accelerator's one pass
   (points.transcode_payload, where it is built and URBANSENSE_PURE_PYTHON is not set),
   the Python plain fast path (codec.decode_plain_batch, points.transcode_plain), the full
   path (decode+validate, line encoding), join+gzip;
2. ceiling: the same readings as pre-encoded, pre-gzipped 5,000-line bodies posted
   straight to /write by as many concurrent writers as the ingester uses;
3. end to end, live: the ingester (its own process, `urbansense ingest run`) while this
   process publishes every batch with QoS 1 as fast as the broker takes them (a lean
   publisher, RawPublisher: packets encoded before the clock starts);
4. end to end, backlog: the same readings queued in the broker for the ingester's
   session while it is stopped, then drained (the publisher's CPU out of the picture).

Each phase writes into a fresh database. Rates count until the last point is stored
(the ingester's own Prometheus counter, polled every 50 ms), and every phase checks the
stored count. CPU: /proc of the ingester, influxd and mosquitto over each phase.

    .venv/bin/python bench/bench_ingest.py                       # 600,000 readings
    .venv/bin/python bench/bench_ingest.py --readings 200000 --gateways 10
    .venv/bin/python bench/bench_ingest.py --instances 2          # two ingesters sharing it
    URBANSENSE_PURE_PYTHON=1 .venv/bin/python bench/bench_ingest.py  # without the C accelerator
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import orjson
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from application.stack import Stack, free_port  # noqa: E402
from ingest.points import ACCELERATOR, LineEncoder, TimeWindow, transcode_payload, transcode_plain  # noqa: E402
from urbansense import codec, topics  # noqa: E402
from urbansense.config import Profile, load_profiles  # noqa: E402
from urbansense.influx import InfluxClient  # noqa: E402

SAMPLES_PER_BATCH = 50


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _float_fields(seq: int, i: int) -> dict[str, object]:
    return {"pressure_mpa": 0.3 + (seq % 100) / 1000 + i / 1e5, "flow_m3h": 120.5 + i,
            "turbidity_ntu": 0.4 + (seq % 7) / 10}


def _profile_fields(profile: Profile) -> Callable[[int, int], dict[str, object]]:
    """Fields as the profile's devices report them, in the types their family declares
    (what the ingester stores): booleans, enumerated states as strings, integers, floats."""
    declared = codec.FIELD_TYPES[profile.measurement]

    def fields(seq: int, i: int) -> dict[str, object]:
        out: dict[str, object] = {}
        for k, spec in enumerate(profile.fields):
            n = seq + i + k
            kind = declared.get(spec.name, "float")
            if kind == "bool":
                out[spec.name] = n % 3 == 0
            elif spec.enum is not None:
                out[spec.name] = list(spec.enum.values())[n % len(spec.enum)]
            elif kind == "string":
                out[spec.name] = f"v{n % 10}"
            elif kind == "float":
                out[spec.name] = round((n % 1000) * spec.scale + spec.offset + 0.25, 9)
            else:
                out[spec.name] = n % 1000
        return out
    return fields


def make_messages(readings: int, gateways: int, t0: int, shape: str = "edges") -> list[tuple[str, bytes]]:
    """50-sample batches, gateways taking turns; (device, t) unique. Shape "floats": 3 float
    fields per water sample. Shape "edges": as the district's gateways send them, one
    shipped device profile per gateway in turn (water, gas, lighting, elevators, air), with
    the profile's fields: floats, integers, booleans and enumerated states."""
    kinds: list[tuple[str, str, Callable[[int, int], dict[str, object]]]]
    if shape == "floats":
        kinds = [("water", "wp", _float_fields)]
    else:
        kinds = [(p.measurement, name[:2], _profile_fields(p)) for name, p in sorted(load_profiles().items())]
    messages = []
    per_gateway_seq = [0] * gateways
    for n in range(readings // SAMPLES_PER_BATCH):
        g = n % gateways
        seq = per_gateway_seq[g]
        per_gateway_seq[g] += 1
        t = t0 + seq * 1000
        measurement, prefix, fields = kinds[g % len(kinds)]
        samples = [{"dev": f"{prefix}-{i:04d}", "m": measurement, "t": t, "f": fields(seq, i), "q": "good"}
                   for i in range(SAMPLES_PER_BATCH)]
        gw = f"gw-{g:03d}"
        messages.append((topics.telemetry("bench", gw), orjson.dumps(
            {"v": 1, "gw": gw, "district": "bench", "seq": seq, "sent": t, "samples": samples})))
    return messages


def hot_path(messages: list[tuple[str, bytes]]) -> dict[str, float]:
    """µs per reading, over up to 2,000 messages held in memory: the C accelerator's one
    pass (when in use), the Python plain fast path (over the batches it takes: floats and
    booleans only), the full path every batch can take, join+gzip; and the share of
    batches each fast path takes."""
    sample = messages[: min(len(messages), 2000)]
    readings = len(sample) * SAMPLES_PER_BATCH
    window = TimeWindow(retention_ms=0, future_ms=2**62)
    t = time.perf_counter()
    accelerated = [transcode_payload(p, window, 0, codec.MAX_PAYLOAD_BYTES) for _, p in sample]
    c_path = time.perf_counter() - t
    in_use = all(accelerated)
    assert in_use or not any(accelerated), "the benchmark's batches should all take the C path"
    t = time.perf_counter()
    plain = [codec.decode_plain_batch(p) for _, p in sample]
    fast_decode = time.perf_counter() - t
    taken = [b for b in plain if b is not None]
    t = time.perf_counter()
    chunks = [transcode_plain(b, window, 0) for b in taken]
    fast_encode = time.perf_counter() - t
    assert all(chunks), "a batch outside the time window"
    fast_readings = len(taken) * SAMPLES_PER_BATCH or 1
    encoder = LineEncoder(window)
    t = time.perf_counter()
    batches = [codec.decode_batch_lenient(p)[0] for _, p in sample]
    decode = time.perf_counter() - t
    t = time.perf_counter()
    entries = ["\n".join(encoder.encode(b, 0).all_lines()) for b in batches]
    encode = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(0, len(entries), 100):
        gzip.compress("\n".join(entries[i:i + 100]).encode(), compresslevel=1)
    pack = time.perf_counter() - t
    return {"c_path_us": c_path / readings * 1e6 if in_use else float("nan"),
            "fast_decode_us": fast_decode / len(sample) / SAMPLES_PER_BATCH * 1e6,
            "fast_encode_us": fast_encode / fast_readings * 1e6, "fast_share": len(taken) / len(sample),
            "decode_validate_us": decode / readings * 1e6, "encode_us": encode / readings * 1e6,
            "join_gzip_us": pack / readings * 1e6}


def ceiling(stack: Stack, messages: list[tuple[str, bytes]], database: str, writers: int) -> tuple[float, dict]:
    encoder = LineEncoder(TimeWindow(retention_ms=0, future_ms=2**62))
    lines: list[str] = []
    for _, payload in messages:
        encoder.batch_lines(codec.decode_batch_lenient(payload)[0], 0, lines)
    bodies = [gzip.compress("\n".join(lines[i:i + 5000]).encode(), compresslevel=1)
              for i in range(0, len(lines), 5000)]
    InfluxClient(stack.influx_url, database).create_database()
    todo = list(reversed(bodies))
    lock = threading.Lock()

    def post() -> None:
        session = requests.Session()
        while True:
            with lock:
                if not todo:
                    return
                body = todo.pop()
            r = session.post(f"{stack.influx_url}/write", params={"db": database, "precision": "ms"},
                             data=body, headers={"Content-Encoding": "gzip"}, timeout=60)
            assert r.status_code == 204, r.text

    cpu = _Cpu(stack)
    t = time.perf_counter()
    threads = [threading.Thread(target=post) for _ in range(writers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t
    _check_count(stack, database, len(lines))
    return len(lines) / elapsed, cpu.done(elapsed)


class _Cpu:
    def __init__(self, stack: Stack, extra: dict[str, int] | None = None) -> None:
        running = stack.services()
        self.pids = {"influxd": running["influxd"].pid, "mosquitto": running["mosquitto"].pid,
                     "bench (publisher)": os.getpid(), **(extra or {})}
        self.start = {name: _cpu_seconds(pid) for name, pid in self.pids.items()}

    def done(self, elapsed: float) -> dict[str, float]:
        """Cores used by each process over the phase."""
        return {name: (_cpu_seconds(pid) - self.start[name]) / elapsed for name, pid in self.pids.items()}


def _check_count(stack: Stack, database: str, expected: int) -> None:
    """Points stored, over every measurement: per device (every sample of a device has all
    its profile's fields), the largest count of any of its fields."""
    influx = InfluxClient(stack.influx_url, database, timeout_s=120)
    stored = 0
    for series in influx.query('SELECT count(*) FROM /.*/ GROUP BY "device"'):
        for row in series.rows():
            stored += max(int(v) for k, v in row.items() if k.startswith("count_") and v is not None)
    assert stored == expected, f"{database}: {stored} points stored, {expected} expected"


def _points_written(port: int) -> float:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return -1
    match = re.search(r"^urbansense_ingest_points_total\{[^}]*\} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0


def _start_ingester(stack: Stack, database: str, instance: str, port: int, log: Path,
                    writers: int) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "application.cli", "ingest", "run", "--mqtt", stack.mqtt_url,
             "--influx", stack.influx_url, "--database", database, "--instance", instance,
             "--share-group", "bench", "--prometheus-port", str(port), "--metrics-interval", "0",
             "--writers", str(writers), "--log-level", "WARNING"],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO)


def _wait(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (128 if n else 0))
        if not n:
            return bytes(out)


def _mqtt_packet(header: int, body: bytes) -> bytes:
    return bytes([header]) + _varint(len(body)) + body


def _mqtt_str(text: str) -> bytes:
    return struct.pack("!H", len(text.encode())) + text.encode()


class RawPublisher:
    """The gateways' side of the live phase: MQTT 5 QoS 1 PUBLISH packets encoded before the
    clock starts and written over one connection, as many in flight as the broker's Receive
    Maximum allows, each PUBACK checked. A lean load generator (paho in Python spends ~2.5 µs
    of CPU per reading publishing, CPU that real gateways spend on their own machines);
    the broker, the ingester and InfluxDB see ordinary QoS 1 publishes."""

    def __init__(self, stack: Stack, messages: list[tuple[str, bytes]]) -> None:
        self.url = urlparse(stack.mqtt_url)
        self.packets = [_mqtt_packet(0x32, _mqtt_str(topic) + struct.pack("!H", n % 65535 + 1) + b"\0" + payload)
                        for n, (topic, payload) in enumerate(messages)]

    def run(self) -> None:
        sock = socket.create_connection((self.url.hostname or "127.0.0.1", self.url.port or 1883))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connect = b"\0\x04MQTT\x05\x02" + struct.pack("!H", 60) + b"\0" + _mqtt_str("bench-publisher")
        sock.sendall(_mqtt_packet(0x10, connect))
        reader = _PacketReader(sock)
        kind, body = reader.next()
        assert kind == 0x20 and body[1] == 0, f"broker refused the publisher: {body!r}"
        window = min(1000, _receive_maximum(body[2:]))
        sent = acked = 0
        total = len(self.packets)
        while acked < total:
            if sent < total and sent - acked < window:
                end = min(total, acked + window)
                sock.sendall(b"".join(self.packets[sent:end]))
                sent = end
            kind, body = reader.next()
            if kind == 0x40:
                assert len(body) < 3 or body[2] < 0x80, f"broker refused a publish: reason {body[2]:#x}"
                acked += 1
        sock.sendall(b"\xe0\0")  # DISCONNECT
        sock.close()


class _PacketReader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf, self.pos = sock, b"", 0

    def _byte(self) -> int:
        return self._take(1)[0]

    def _take(self, n: int) -> bytes:
        while len(self.buf) - self.pos < n:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the broker closed the publisher's connection")
            self.buf, self.pos = self.buf[self.pos:] + data, 0
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def next(self) -> tuple[int, bytes]:
        kind = self._byte()
        length, shift = 0, 0
        while True:
            byte = self._byte()
            length |= (byte & 127) << shift
            shift += 7
            if not byte & 128:
                return kind & 0xF0, self._take(length)


def _receive_maximum(props: bytes) -> int:
    """CONNACK property 0x21 (Receive Maximum; 65,535 when absent)."""
    length, shift, i = 0, 0, 0
    while True:
        byte = props[i]
        i += 1
        length |= (byte & 127) << shift
        shift += 7
        if not byte & 128:
            break
    end = i + length
    sizes = {0x11: 4, 0x12: None, 0x13: 2, 0x15: None, 0x16: None, 0x17: 1, 0x19: 1, 0x1A: None,
             0x1C: None, 0x1F: None, 0x21: 2, 0x22: 2, 0x24: 1, 0x25: 1, 0x26: None, 0x27: 4,
             0x28: 1, 0x29: 1, 0x2A: 1}
    while i < end:
        prop = props[i]
        i += 1
        if prop == 0x21:
            return int(struct.unpack_from("!H", props, i)[0])
        size = sizes[prop]
        if size is None:  # a string or binary (0x26, a user property, is two)
            for _ in range(2 if prop == 0x26 else 1):
                i += 2 + struct.unpack_from("!H", props, i)[0]
        else:
            i += size
    return 65535


def end_to_end(stack: Stack, messages: list[tuple[str, bytes]], database: str, writers: int,
               backlog: bool, log: Path, instances: int) -> tuple[float, dict, float]:
    """Readings/s, cores per process (ingesters summed), ingester CPU ms per 1,000 readings."""
    total = len(messages) * SAMPLES_PER_BATCH
    ports = [free_port() for _ in range(instances)]
    names = [f"bench-{n}" for n in range(instances)]

    def start_all() -> list[subprocess.Popen[bytes]]:
        procs = [_start_ingester(stack, database, name, port, log, writers)
                 for name, port in zip(names, ports, strict=True)]
        # the clock starts when the processes are up (their metrics endpoints answer before
        # they connect to the broker), not while Python imports
        _wait(lambda: all(_points_written(port) >= 0 for port in ports), 30, "the ingesters' metrics")
        return procs

    def written() -> float:
        return sum(max(0.0, _points_written(port)) for port in ports)

    procs = start_all()
    try:
        time.sleep(1.0)  # subscribed
        if backlog:
            for proc in procs:  # the sessions (and their subscriptions) stay in the broker
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
            RawPublisher(stack, messages).run()
            procs = start_all()
        publisher = None
        if not backlog:  # the packets are encoded before the clock starts
            publisher = threading.Thread(target=RawPublisher(stack, messages).run)
        cpu = _Cpu(stack, {f"ingester{n}": proc.pid for n, proc in enumerate(procs)})
        t = time.perf_counter()
        if publisher is not None:
            publisher.start()
        _wait(lambda: written() >= total, 600, "every reading written")
        elapsed = time.perf_counter() - t
        per_process = cpu.done(elapsed)
        if publisher is not None:
            publisher.join()
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(60)
    _check_count(stack, database, total)
    ingester_cores = sum(v for k, v in per_process.items() if k.startswith("ingester"))
    usage = {k: v for k, v in per_process.items() if not k.startswith("ingester")}
    usage["ingester" if instances == 1 else f"{instances} ingesters"] = ingester_cores
    return total / elapsed, usage, ingester_cores * elapsed / (total / 1000) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=600_000)
    parser.add_argument("--gateways", type=int, default=20)
    parser.add_argument("--shape", choices=("edges", "floats"), default="edges",
                        help="edges: the shipped profiles' fields as edges send them (floats, integers, "
                             "booleans, states); floats: 3 float fields per sample (the earlier figures)")
    parser.add_argument("--writers", type=int, default=2, help="concurrent writes (ingester and ceiling)")
    parser.add_argument("--instances", type=int, default=1,
                        help="ingester processes sharing the stream (the acceptance figure is for 1)")
    args = parser.parse_args()

    t0 = int(time.time() * 1000) - 7 * 86_400_000  # inside the 30-day window, 1 s apart per seq
    messages = make_messages(args.readings, args.gateways, t0, args.shape)
    total = len(messages) * SAMPLES_PER_BATCH
    shape = "3 float fields" if args.shape == "floats" else "the profiles' fields (edges)"
    print(f"{total:,} readings in {len(messages):,} batches of {SAMPLES_PER_BATCH} samples x {shape}, "
          f"{args.gateways} gateways; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}")

    print(f"telemetry decoded by the {ACCELERATOR} (here and in the ingester)")
    hot = hot_path(messages)
    print(f"hot path per reading: C accelerator decode+validate+transcode {hot['c_path_us']:.2f} µs; "
          f"plain fast path ({hot['fast_share']:.0%} of the batches) decode+validate {hot['fast_decode_us']:.2f} µs, "
          f"transcode {hot['fast_encode_us']:.2f} µs; full path decode+validate "
          f"{hot['decode_validate_us']:.2f} µs, encode {hot['encode_us']:.2f} µs; "
          f"join+gzip(1) {hot['join_gzip_us']:.2f} µs")

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        stack = Stack(Path(tmp) / "stack")
        stack.up()
        try:
            # the ceiling before and after the end-to-end phases: the spread shows the noise
            rate_before, cpu_ceiling = ceiling(stack, messages, "ceiling_before", args.writers)
            print(f"raw InfluxDB write ceiling (before): {rate_before:,.0f} points/s "
                  f"(influxd {cpu_ceiling['influxd']:.2f} cores)")
            results = {}
            for name, backlog in (("live", False), ("backlog", True)):
                results[name] = end_to_end(stack, messages, f"e2e_{name}", args.writers, backlog,
                                           Path(tmp) / f"ingest-{name}.log", args.instances)
            rate_after, cpu_ceiling = ceiling(stack, messages, "ceiling_after", args.writers)
            print(f"raw InfluxDB write ceiling (after):  {rate_after:,.0f} points/s "
                  f"(influxd {cpu_ceiling['influxd']:.2f} cores)")
            rate_ceiling = (rate_before + rate_after) / 2
            for name, (rate, usage, cpu_per_k) in results.items():
                cores = ", ".join(f"{k} {v:.2f}" for k, v in usage.items())
                print(f"end to end ({name}): {rate:,.0f} readings/s = {rate / rate_ceiling:.2f} of the "
                      f"mean ceiling; ingester CPU {cpu_per_k:.1f} ms per 1,000 readings; cores: {cores}")
            print(f"load average at the end {os.getloadavg()[0]:.2f}")
        finally:
            stack.down()


if __name__ == "__main__":
    main()
