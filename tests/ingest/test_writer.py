"""The writer's answers to InfluxDB's refusals, against the real InfluxDB: a 400 partial
write (a field-type conflict) dead-letters only the offending line; 413 splits the batch;
429/503 with Retry-After is honoured. The 413/429/503 answers come from a small fault
proxy in front of the real database (InfluxDB 1.6.7 cannot be made to send them on cue)."""

from __future__ import annotations

import gzip
import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from application.stack import Stack
from ingest.batch import Delivery, WriteBatch
from ingest.metrics import IngestMetrics
from ingest.settings import IngestSettings
from ingest.writer import BatchWriter
from tests.ingest.harness import unique
from urbansense.influx import InfluxClient

pytestmark = pytest.mark.integration


class FaultProxy(http.server.ThreadingHTTPServer):
    """Forwards /write to the real InfluxDB, except: the first `busy` requests get
    `busy_status` with Retry-After, and bodies of more than `max_lines` lines get 413."""

    def __init__(self, target: str, busy: int = 0, busy_status: int = 429,
                 retry_after: str = "1", max_lines: int = 10**9) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.target = target
        self.busy = busy
        self.busy_status = busy_status
        self.retry_after = retry_after
        self.max_lines = max_lines
        self.requests: list[tuple[float, int, int]] = []  # (time, lines, status)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: FaultProxy

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        text = gzip.decompress(body) if self.headers.get("Content-Encoding") == "gzip" else body
        lines = text.count(b"\n") + 1
        proxy = self.server
        if proxy.busy > 0:
            proxy.busy -= 1
            self._answer(proxy.busy_status, b'{"error":"busy"}', {"Retry-After": proxy.retry_after}, lines)
            return
        if lines > proxy.max_lines:
            self._answer(413, b'{"error":"Request Entity Too Large"}', {}, lines)
            return
        resp = requests.post(proxy.target + self.path, data=body, headers={
            k: v for k, v in self.headers.items() if k.lower() in ("content-encoding", "content-type")})
        self._answer(resp.status_code, resp.content, {}, lines)

    def _answer(self, status: int, body: bytes, headers: dict[str, str], lines: int) -> None:
        self.server.requests.append((time.monotonic(), lines, status))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def proxy_factory(stack: Stack) -> Iterator[Any]:
    started: list[FaultProxy] = []

    def make(**kwargs: Any) -> FaultProxy:
        proxy = FaultProxy(stack.influx_url, **kwargs)
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.shutdown()
        proxy.server_close()


def _batch(lines: list[str], chunk_size: int = 1) -> WriteBatch:
    """One message per `chunk_size` lines (mid = its index + 1); chunks when > 1."""
    batch = WriteBatch()
    for i in range(0, len(lines), chunk_size):
        start = len(batch.lines)
        if chunk_size == 1:
            batch.add_line(lines[i])
        else:
            batch.add_chunk("\n".join(lines[i:i + chunk_size]), len(lines[i:i + chunk_size]))
        batch.add(Delivery(i // chunk_size + 1, 1, 1, f"city/d/gw/telemetry#{i}", b"{}"), start)
    return batch


def _writer(url: str, database: str, refused: list[tuple[Delivery, str, str]]) -> BatchWriter:
    settings = IngestSettings(retry_min_s=0.05, retry_max_s=0.2)
    return BatchWriter(InfluxClient(url, database), settings, IngestMetrics(unique("w")),
                       lambda d, line, why: refused.append((d, line, why)), threading.Event())


def _lines(n: int, t0: int) -> list[str]:
    return [f"water,device=d{i % 7},district=w,gateway=g pressure_mpa={i}.5 {t0 + i}" for i in range(n)]


def _count(influx: InfluxClient) -> int:
    rows = influx.rows("SELECT count(pressure_mpa) FROM water")
    return int(rows[0]["count"]) if rows else 0


def test_partial_write_dead_letters_only_the_conflicting_line(influx_db: InfluxClient) -> None:
    t0 = int(time.time() * 1000) - 60_000
    influx_db.write(f"water,device=x,district=w,gateway=g valve_open=1i {t0 - 1}")  # an integer field
    lines = _lines(300, t0)
    lines[137] = f"water,device=d1,district=w,gateway=g valve_open=0.5,pressure_mpa=1.5 {t0 + 137}"
    refused: list[tuple[Delivery, str, str]] = []
    assert _writer(influx_db.url, influx_db.database, refused).write(_batch(lines))
    assert [(d.mid, line) for d, line, _ in refused] == [(138, lines[137])]
    assert "field type conflict" in refused[0][2]
    assert _count(influx_db) == 299


def test_partial_write_inside_a_chunk_finds_the_line(influx_db: InfluxClient) -> None:
    t0 = int(time.time() * 1000) - 60_000
    influx_db.write(f"water,device=x,district=w,gateway=g valve_open=1i {t0 - 1}")
    lines = _lines(500, t0)
    lines[321] = f"water,device=d1,district=w,gateway=g valve_open=0.5,pressure_mpa=1.5 {t0 + 321}"
    refused: list[tuple[Delivery, str, str]] = []
    assert _writer(influx_db.url, influx_db.database, refused).write(_batch(lines, chunk_size=50))
    assert [(d.mid, line) for d, line, _ in refused] == [(7, lines[321])]  # message 7 holds 300-349
    assert _count(influx_db) == 499


def test_413_splits_the_batch(influx_db: InfluxClient, proxy_factory: Any) -> None:
    proxy = proxy_factory(max_lines=100)
    t0 = int(time.time() * 1000) - 60_000
    refused: list[tuple[Delivery, str, str]] = []
    assert _writer(proxy.url, influx_db.database, refused).write(_batch(_lines(1000, t0)))
    assert refused == []
    assert _count(influx_db) == 1000
    written = [lines for _, lines, status in proxy.requests if status == 204]
    assert sum(written) == 1000 and max(written) <= 100


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured(influx_db: InfluxClient, proxy_factory: Any, status: int) -> None:
    proxy = proxy_factory(busy=2, busy_status=status, retry_after="1")
    t0 = int(time.time() * 1000) - 60_000
    writer = _writer(proxy.url, influx_db.database, [])
    assert writer.write(_batch(_lines(50, t0)))
    assert _count(influx_db) == 50
    times = [t for t, _, _ in proxy.requests]
    assert [s for _, _, s in proxy.requests] == [status, status, 204]
    # Retry-After: 1 s, although the configured back-off is 0.05-0.2 s
    assert times[1] - times[0] >= 0.95 and times[2] - times[1] >= 0.95
    assert writer.metrics.counts.retries == 2


def test_unreachable_influx_is_retried_until_given_up(stack: Stack) -> None:
    give_up = threading.Event()
    settings = IngestSettings(retry_min_s=0.05, retry_max_s=0.1)
    writer = BatchWriter(InfluxClient("http://127.0.0.1:9", "x", timeout_s=0.5), settings,
                         IngestMetrics(unique("w")), lambda *a: None, give_up)
    threading.Timer(0.6, give_up.set).start()
    assert writer.write(_batch(_lines(3, 1))) is False  # abandoned: nothing may be acknowledged
    assert writer.metrics.counts.retries >= 2
