"""Recorded readings: CSV and InfluxDB line protocol, read back as (district, gateway,
Sample) rows for replay.

CSV: a header row with `time`, `measurement` (or `m`), `district`, `gateway`, `device`;
every other column is a field. Empty cells are skipped. `time` is epoch ms (or s/us/ns,
told apart by magnitude) or ISO 8601. Values: true/false -> bool, integers -> int, other
numbers -> float, anything else -> string.

Line protocol, as the ingester writes it (`urbansense/lineprotocol.py`):
    water,device=wp-0007,district=pudong,gateway=pd-gw-01 pressure_mpa=0.312,n=3i 1764190000000
Escapes (\\, \\space \\= \\") are honoured; `device_error` becomes a q="bad" sample;
the ingester's quality fields (`quality_uncertain`, `quality_reason`) are dropped.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from urbansense.clock import TimeFormatError, parse_time_ms
from urbansense.schema import FieldValue, Sample


class RecordingError(ValueError):
    pass


@dataclass(slots=True)
class Row:
    district: str
    gateway: str
    sample: Sample


def epoch_ms(value: str | int | float) -> int:
    """Epoch milliseconds from s, ms, us or ns (by magnitude) or an ISO 8601 string."""
    try:
        return parse_time_ms(value)
    except TimeFormatError as exc:
        raise RecordingError(str(exc)) from None


def _csv_value(text: str) -> FieldValue:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _make_row(district: str, gateway: str, device: str, measurement: str, t: int,
              fields: dict[str, FieldValue]) -> Row:
    err = fields.pop("device_error", None)
    fields.pop("quality_uncertain", None)
    fields.pop("quality_reason", None)
    if err is not None and not fields:
        return Row(district, gateway, Sample(dev=device, m=measurement, t=t, f={}, q="bad", err=str(err)))
    return Row(district, gateway, Sample(dev=device, m=measurement, t=t, f=fields))


def read_csv(path: Path) -> Iterator[Row]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        m_col = "measurement" if "measurement" in cols else "m"
        missing = [c for c in ("time", m_col, "district", "gateway", "device") if c not in cols]
        if missing:
            raise RecordingError(f"{path}: CSV header lacks {', '.join(missing)}; need time, measurement, "
                                 "district, gateway, device and one column per field")
        tag_cols = {"time", m_col, "district", "gateway", "device"}
        for line_no, rec in enumerate(reader, start=2):
            try:
                t = epoch_ms(rec["time"])
            except RecordingError as exc:
                raise RecordingError(f"{path}:{line_no}: {exc}") from None
            fields = {k: _csv_value(v) for k, v in rec.items() if k not in tag_cols and k and v not in ("", None)}
            if not fields:
                continue
            yield _make_row(rec["district"], rec["gateway"], rec["device"], rec[m_col], t, fields)


_UNESCAPE = re.compile(r"\\(.)")


def _split(text: str, sep: str) -> list[str]:
    """Split on `sep` outside quotes and not escaped."""
    parts, cur, quoted, i = [], [], False, 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i : i + 2])
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        if c == sep and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _unescape(text: str) -> str:
    return _UNESCAPE.sub(lambda m: {"n": "\n", "r": "\r"}.get(m.group(1), m.group(1)), text)


def _lp_value(text: str) -> FieldValue:
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        return _unescape(text[1:-1])
    if text in ("t", "T", "true", "True", "TRUE"):
        return True
    if text in ("f", "F", "false", "False", "FALSE"):
        return False
    if text.endswith(("i", "u")):
        return int(text[:-1])
    return float(text)


def parse_line(line: str) -> tuple[str, dict[str, str], dict[str, FieldValue], int | None]:
    parts = _split(line.strip(), " ")
    if len(parts) < 2:
        raise RecordingError("expected 'measurement,tags fields [time]'")
    head = _split(parts[0], ",")
    measurement = _unescape(head[0])
    tags = {}
    for kv in head[1:]:
        k, _, v = kv.partition("=")
        tags[_unescape(k)] = _unescape(v)
    fields = {}
    for kv in _split(parts[1], ","):
        k, sep, v = kv.partition("=")
        if not sep:
            raise RecordingError(f"field {kv!r} has no '='")
        fields[_unescape(k)] = _lp_value(v)
    t = int(parts[2]) if len(parts) > 2 and parts[2] else None
    return measurement, tags, fields, t


def read_line_protocol(path: Path) -> Iterator[Row]:
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip() or line.startswith("#"):
                continue
            try:
                measurement, tags, fields, t = parse_line(line)
            except (RecordingError, ValueError) as exc:
                raise RecordingError(f"{path}:{line_no}: not line protocol: {exc}") from None
            missing = [k for k in ("district", "gateway", "device") if k not in tags]
            if missing:
                raise RecordingError(f"{path}:{line_no}: tags lack {', '.join(missing)} (need district, "
                                     "gateway, device, as the ingester writes them)")
            if t is None:
                raise RecordingError(f"{path}:{line_no}: no timestamp; replay needs the recorded time")
            yield _make_row(tags["district"], tags["gateway"], tags["device"], measurement, epoch_ms(t), fields)


def read_recording(path: Path, fmt: str | None = None) -> list[Row]:
    """All rows of a recording, sorted by time. `fmt`: csv | lp (default: by suffix)."""
    if not path.is_file():
        raise RecordingError(f"{path}: no such file")
    fmt = fmt or ("csv" if path.suffix.lower() == ".csv" else "lp")
    rows = list(read_csv(path) if fmt == "csv" else read_line_protocol(path))
    rows.sort(key=lambda r: r.sample.t)
    return rows
