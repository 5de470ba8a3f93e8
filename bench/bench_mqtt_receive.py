"""CPU per received PUBLISH in the MQTT adapter, paho's path against the lean one.

The bench's telemetry messages (50 samples x 3 fields, QoS 1, ~5 KB) are written to one
end of a socketpair and read by the client on the other, in one thread, with a handler
that reads what the ingester reads (topic, payload, mid, qos). No broker: this isolates
the receive path from everything else on a shared machine. Variants:

- paho: paho.Client as it comes (one recv() per header byte, then the rest);
- framed: our _BufferedClient framing packets out of 64 KiB reads, each PUBLISH still
  handled by paho (MQTTMessage, properties, callback locks, topic matcher);
- lean: _BufferedClient with on_inbound: the lean PUBLISH path the adapter uses.

    .venv/bin/python bench/bench_mqtt_receive.py
    .venv/bin/python bench/bench_mqtt_receive.py --messages 50000 --rounds 5
"""

from __future__ import annotations

import argparse
import select
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from urbansense.mqtt import _BufferedClient  # noqa: E402


def _packet(topic: str, payload: bytes, mid: int) -> bytes:
    body = struct.pack("!H", len(topic)) + topic.encode() + struct.pack("!H", mid) + b"\0" + payload
    length, n = b"", len(body)
    while True:
        byte, n = n & 0x7F, n >> 7
        length += bytes([byte | (0x80 if n else 0)])
        if not n:
            return b"\x32" + length + body


def _stream(messages: int) -> bytes:
    t = 1_764_190_000_000
    packets = []
    for n in range(messages):
        samples = [{"dev": f"wp-{i:04d}", "m": "water", "t": t + n,
                    "f": {"pressure_mpa": 0.3 + i / 1000, "flow_m3h": 120.5, "turbidity_ntu": 0.4}, "q": "good"}
                   for i in range(50)]
        payload = orjson.dumps({"v": 1, "gw": f"gw-{n % 20:02d}", "district": "bench", "seq": n,
                                "sent": t, "samples": samples})
        packets.append(_packet(f"city/bench/gw-{n % 20:02d}/telemetry", payload, n % 65535 + 1))
    return b"".join(packets)


def _run(variant: str, stream: bytes, messages: int) -> float:
    """CPU seconds of the reading thread for the whole stream."""
    broker, end = socket.socketpair()
    end.setblocking(False)
    cls = paho.Client if variant == "paho" else _BufferedClient
    client = cls(CallbackAPIVersion.VERSION2, client_id="bench", protocol=paho.MQTTv5, manual_ack=True)
    client._sock = end
    seen = [0, 0]

    def handler(msg: paho.MQTTMessage) -> None:
        seen[0] += 1
        seen[1] += len(msg.payload) + len(msg.topic) + msg.mid + msg.qos

    if variant == "lean":
        client.on_inbound = handler  # type: ignore[attr-defined]
    else:
        client.on_message = lambda c, u, msg: handler(msg)
    writer = threading.Thread(target=broker.sendall, args=(stream,), daemon=True)
    writer.start()
    cpu = time.thread_time()
    while seen[0] < messages:
        select.select([end], [], [], 1.0)
        client.loop_read()
    cpu = time.thread_time() - cpu
    writer.join()
    broker.close()
    end.close()
    return cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3, help="the best round of each variant counts")
    args = parser.parse_args()
    stream = _stream(args.messages)
    print(f"{args.messages:,} PUBLISH packets of {len(stream) // args.messages:,} bytes (50 readings each)")
    for variant in ("paho", "framed", "lean"):
        best = min(_run(variant, stream, args.messages) for _ in range(args.rounds))
        per_message = best / args.messages * 1e6
        print(f"{variant:>6}: {per_message:6.1f} µs CPU per message, {per_message / 50:.3f} µs per reading")


if __name__ == "__main__":
    main()
