"""Telemetry samples -> InfluxDB line protocol (one point per sample), with the
timestamp sanity check.

Worked example: the batch from pd-gw-01 in pudong carrying
``{"dev": "wp-0007", "m": "water", "t": 1764190000000, "f": {"pressure_mpa": 0.312}}``
becomes the line
``water,device=wp-0007,district=pudong,gateway=pd-gw-01 pressure_mpa=0.312 1764190000000``.
A ``q:"bad"`` sample becomes ``device_error="timeout"``; a ``q:"uncertain"`` one gains
``quality_uncertain=true`` and, when it says why, ``quality_reason="unreadable: flow_m3h"``.
These names, the tags and ``time`` are reserved (identifiers.RESERVED_FIELDS): the codec
refuses a sample that uses one, and so does the encoder here, for batches built in code.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import msgspec
import orjson

from urbansense import codec
from urbansense.codec import PlainBatch
from urbansense.identifiers import MEASUREMENTS, RESERVED_FIELDS
from urbansense.lineprotocol import encode_fields, encode_point, escape_key, series_key
from urbansense.schema import GatewayStatus, TelemetryBatch

# The series prefix ("water,device=..,district=..,gateway=..") is the same for every
# reading of a device; caching it saves most of the encoding time. Bounded: a city has
# far fewer devices than this, and clearing only costs re-escaping.
_SERIES_CACHE_MAX = 200_000

# Field keys that line protocol takes as they are (no character to escape).
_PLAIN_KEYS_MAX = 65536
_plain_keys: set[str] = set()


def _plain_key(key: str) -> bool:
    if escape_key(key) != key or any(c in key for c in '"{}[]:'):
        return False
    if len(_plain_keys) >= _PLAIN_KEYS_MAX:
        _plain_keys.clear()
    _plain_keys.add(key)
    return True


@dataclass(slots=True)
class TimeWindow:
    """Accepted sample times: not more than `future_ms` ahead of the ingester's clock
    (a gateway with a wrong clock), not older than the retention policy (InfluxDB would
    drop the point: "points beyond retention policy")."""

    future_ms: int = 5 * 60 * 1000
    retention_ms: int = 30 * 24 * 3600 * 1000  # 0 = infinite retention

    def problem(self, t: int, now_ms: int) -> str | None:
        if t > now_ms + self.future_ms:
            return (f"t={t} is {(t - now_ms) / 1000:.0f} s in the future (limit "
                    f"{self.future_ms / 1000:.0f} s); check the gateway's clock (NTP)")
        if self.retention_ms and t < now_ms - self.retention_ms:
            return (f"t={t} is {(now_ms - t) / 86_400_000:.1f} days old, older than the "
                    f"retention policy ({self.retention_ms / 86_400_000:.0f} days)")
        return None


@dataclass(slots=True)
class EncodedBatch:
    """The points of one telemetry batch: `lines` one by one, and `chunk`, many lines
    joined by newlines (plain numeric samples, encoded in one go; no string fields, so
    splitting it on newlines gives its lines back)."""

    lines: list[str]
    chunk: str
    chunk_points: int
    problems: list[str]

    @property
    def points(self) -> int:
        return len(self.lines) + self.chunk_points

    def all_lines(self) -> list[str]:
        return self.lines + (self.chunk.split("\n") if self.chunk else [])


class LineEncoder:
    def __init__(self, window: TimeWindow | None = None) -> None:
        self.window = window or TimeWindow()
        self._series: dict[tuple[str, str, str, str], str] = {}
        self._chunkable: set[str] = set()

    def _series_prefix(self, key: tuple[str, str, str, str]) -> str:
        m, district, gateway, device = key
        prefix = series_key(m, {"district": district, "gateway": gateway, "device": device})
        if len(self._series) >= _SERIES_CACHE_MAX:
            self._series.clear()
            self._chunkable.clear()
        self._series[key] = prefix
        if not any(c in prefix for c in '"\\[]{}:'):
            self._chunkable.add(prefix)
        return prefix

    def encode(self, batch: TelemetryBatch, now_ms: int, doubt: str | None = None) -> EncodedBatch:
        """The batch's points, and the reasons for refused samples (the sample index and
        why), which go to the dead letter. With `doubt` (a gateway whose clock is off), its
        readings are stored uncertain, with `doubt` in their reason."""
        problems: list[str] = []
        lines: list[str] = []
        rows: list[tuple[str, object, int]] = []
        district, gateway = batch.district, batch.gw
        series, chunkable = self._series, self._chunkable
        earliest = now_ms - self.window.retention_ms if self.window.retention_ms else 0
        latest = now_ms + self.window.future_ms
        for index, s in enumerate(batch.samples):
            t = s.t
            if not earliest <= t <= latest:
                why = self.window.problem(t, now_ms)
                if why:
                    problems.append(f"sample {s.dev} ({index}): {why}")
                    continue
            f = s.f
            if not RESERVED_FIELDS.isdisjoint(f):
                names = ", ".join(sorted(RESERVED_FIELDS.intersection(f)))
                problems.append(f"sample {s.dev} ({index}): field name(s) {names} are reserved: the ingester "
                                "writes them itself (the point's tags and time, the sample's quality); "
                                "rename the metric")
                continue
            key = (s.m, district, gateway, s.dev)
            prefix = series.get(key) or self._series_prefix(key)
            if s.q == "bad":
                lines.append(f"{prefix} {encode_fields({'device_error': s.err or 'unknown'})} {t}")
                continue
            if s.q != "good" or doubt:
                f = {**f, "quality_uncertain": True}
                reason = "; ".join(r for r in (s.err if s.q != "good" else None, doubt) if r)
                if reason:
                    f["quality_reason"] = reason[:codec.MAX_STRING_FIELD]
            if prefix in chunkable and _plain_numeric(f):
                rows.append((prefix, f, t))
            else:
                lines.append(f"{prefix} {encode_fields(f)} {t}")
        return EncodedBatch(lines, _chunk(rows) if rows else "", len(rows), problems)

    def batch_lines(self, batch: TelemetryBatch, now_ms: int, out: list[str]) -> list[str]:
        """Append one line per sample to `out`; return the reasons for refused samples."""
        encoded = self.encode(batch, now_ms)
        out.extend(encoded.all_lines())
        return encoded.problems


def _plain_numeric(fields: Mapping[str, object]) -> bool:
    """Values all finite floats or booleans, keys that need no escaping."""
    if not fields:
        return False
    for key, value in fields.items():
        kind = type(value)
        if not ((kind is float and value - value == 0.0) or kind is bool):  # type: ignore[operator]
            return False
        if key not in _plain_keys and not _plain_key(key):
            return False
    return True


_CHUNK_CHARS = bytes.maketrans(b":", b"=")


def _chunk(rows: list[tuple[str, object, int]]) -> str:
    """Plain numeric samples to line protocol in one orjson call, a translate and three
    replaces::

        [["water,device=d0,district=x,gateway=g",{"p":0.3,"on":true},1764190000000],[...]]
        -> [[water,device=d0,district=x,gateway=g,{p=0.3,on=true},1764190000000],[...]]
        -> water,device=d0,district=x,gateway=g p=0.3,on=true 1764190000000\n...

    Safe because the series prefixes and keys hold none of the JSON punctuation touched
    here (checked when they are cached), and floats and booleans are spelled in JSON as in
    line protocol (shortest round-trip floats, true/false)."""
    text = orjson.dumps(rows).translate(_CHUNK_CHARS, b'"')[2:-2]
    return text.replace(b",{", b" ").replace(b"},", b" ").replace(b"],[", b"\n").decode()


_plain_encoder = msgspec.json.Encoder()
_T = attrgetter("t")
_PLAIN_CHARS = bytes.maketrans(b":", b"=")


def transcode_plain(batch: PlainBatch, window: TimeWindow, now_ms: int) -> EncodedBatch | None:
    """A plain batch (codec.decode_plain_batch) straight to line protocol: one msgspec
    encode, four replaces and a translate for the whole batch, no per-sample Python::

        [{"m":"water","dev":"d0","f":{"p":0.3,"on":true},"t":1764190000000},{"m":...
        -> water,device=d0,district=x,gateway=g p=0.3,on=true 1764190000000\n...

    The same text as LineEncoder.encode gives (floats may be spelled differently, e.g.
    1e16 for 1e+16: the same number). Safe because the names are identifiers and metric
    names (no character of JSON's punctuation or line protocol's escapes), the values
    floats and booleans, and the samples' fields are encoded in the order m, dev, f, t.
    None when a sample is outside the time window (LineEncoder says why)."""
    samples = batch.samples
    if not samples:
        return EncodedBatch([], "", 0, [])
    times = list(map(_T, samples))
    if min(times) < (now_ms - window.retention_ms if window.retention_ms else 0) or \
            max(times) > now_ms + window.future_ms:
        return None
    tags = f",district={batch.district},gateway={batch.gw} ".encode()
    # same-length replacements (padded with NULs, dropped by the translate) are done in
    # place by bytes.replace, at a third of the cost of the others
    text = (_plain_encoder.encode(samples)[7:-2]  # '[{"m":"' ... '}]'
            .replace(b'","dev":"', b",device=\0").replace(b'},"t":', b" \0\0\0\0\0")
            .replace(b'},{"m":"', b"\n\0\0\0\0\0\0\0").replace(b'","f":{"', tags)
            .translate(_PLAIN_CHARS, b'"\0'))
    return EncodedBatch([], text.decode(), len(samples), [])


# ------------------------------------------------------------ the optional C accelerator
#: Set to 1 to run the pure-Python path even where the C accelerator is built (to test and
#: benchmark the fallback).
PURE_PYTHON_ENV = "URBANSENSE_PURE_PYTHON"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _load_accelerator() -> tuple[ModuleType | None, str]:
    """ingest._fastline (built by setup.py when a C compiler exists), or None and why not."""
    if os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0"):
        return None, f"pure Python ({PURE_PYTHON_ENV} is set)"
    try:
        from ingest import _fastline
    except ImportError:
        return None, "pure Python (the C accelerator ingest._fastline is not built; `pip install -e .` builds it)"
    source = Path(__file__).with_name("_fastline.c")
    if source.exists() and hashlib.sha256(source.read_bytes()).hexdigest() != _fastline.SOURCE_SHA256:
        return None, ("pure Python (ingest._fastline was built from another version of _fastline.c; "
                      "`pip install -e .` rebuilds it)")
    if (_fastline.MAX_FIELDS, _fastline.MAX_STRING_FIELD) != (codec.MAX_FIELDS, codec.MAX_STRING_FIELD):
        return None, (f"pure Python (ingest._fastline's limits, {_fastline.MAX_FIELDS} fields and "
                      f"{_fastline.MAX_STRING_FIELD}-character strings, differ from the codec's "
                      f"{codec.MAX_FIELDS} and {codec.MAX_STRING_FIELD}; change both)")
    configure_accelerator(_fastline)
    return _fastline, "C accelerator (ingest._fastline)"


def configure_accelerator(module: ModuleType, measurements: tuple[str, ...] = MEASUREMENTS) -> None:
    """Hand the C accelerator what it checks: the reserved names, the measurements, their
    declared field types (and which take no other field) and the batch bound, from the
    contract (the domain registry), not from the C source."""
    module.configure(tuple(sorted(RESERVED_FIELDS)), measurements, codec.MAX_SAMPLES,
                     tuple(tuple(codec.FIELD_TYPES.get(m, {}).items()) for m in measurements),
                     tuple(m in codec.STRICT_MEASUREMENTS for m in measurements))


_fastline, ACCELERATOR = _load_accelerator()


def accelerator_in_use() -> bool:
    """Whether transcode_payload runs the C accelerator (else it always returns None)."""
    return _fastline is not None


class PlainEnvelope(NamedTuple):
    """What the ingester needs of a batch's envelope once its points are encoded."""

    gw: str
    district: str
    seq: int
    sent: int


def transcode_payload(payload: bytes, window: TimeWindow, now_ms: int,
                      max_bytes: int) -> tuple[PlainEnvelope, EncodedBatch] | None:
    """The C accelerator's one pass over the raw payload: the same points as the full
    path (codec.decode_batch_lenient + LineEncoder) gives, and as codec.decode_plain_batch
    + transcode_plain give for batches of floats and booleans (floats copied as written,
    e.g. 1E+16 for 1e16: the same number for InfluxDB; integers as 3i, states as strings).
    None when the accelerator is not in use, or for anything but the ordinary batch (see
    ingest/_fastline.c): then take the Python paths, which give the same points or the
    exact refusals."""
    if _fastline is None:
        return None
    earliest = max(now_ms - window.retention_ms, _INT64_MIN) if window.retention_ms else 0
    got = _fastline.transcode(payload, max_bytes, earliest, min(now_ms + window.future_ms, _INT64_MAX))
    if got is None:
        return None
    gw, district, seq, chunk, points, sent = got
    return PlainEnvelope(gw, district, seq, sent), EncodedBatch([], chunk, points, [])


def batch_lines(batch: TelemetryBatch) -> list[str]:
    """Lines for every sample of a batch, without the time check (tools and tests)."""
    return LineEncoder(TimeWindow(future_ms=2**62, retention_ms=0)).encode(batch, 0).all_lines()


def status_line(district: str, gateway: str, status: GatewayStatus, clock_offset_s: float | None = None) -> str:
    """The status as a `gateway_status` point. `online`, `devices_ok`, `devices_fail`, the
    agent's version, its config's hash and version, and the gateway clock's offset as the
    ingester measures it (`clock_offset_s`) are written here; the codec refuses stats under
    those names (RESERVED_STATUS_FIELDS), and these values win over any that reach this in code."""
    fields: dict[str, object] = {
        "online": status.state == "online",
        "devices_ok": sum(1 for v in status.devices.values() if v == "ok"),
        "devices_fail": sum(1 for v in status.devices.values() if v == "fail"),
    }
    for key, text in (("agent_version", status.version), ("config_hash", status.config_hash),
                      ("config_version", status.config_version)):
        if text is not None:
            fields[key] = text
    if clock_offset_s is not None:
        fields["clock_offset_s"] = round(clock_offset_s, 3)
    for key, value in status.stats.items():
        fields.setdefault(key, float(value))
    return encode_point("gateway_status", {"district": district, "gateway": gateway}, fields, status.t)
