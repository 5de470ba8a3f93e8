"""Expand a panel's InfluxQL the way Grafana does before it sends the query.

So the dashboards can be checked without a Grafana: `urbansense dashboards check
--influx URL` and the tests expand every target and run it against a real InfluxDB.

What Grafana does (InfluxDB data source, InfluxQL mode), and we copy:

- ``$timeFilter`` -> ``time >= 1764190000000ms and time <= 1764193600000ms``;
- ``$__interval`` / ``$interval`` -> the range divided by the panel's max data points,
  rounded to a "nice" interval (Grafana's table below) and never below the panel's min
  interval (``"interval"``) or the data source's ``timeInterval``; ``$__interval_ms`` the
  same in ms; ``$__range``, ``$__range_s``, ``$__range_ms`` the whole range;
- a template variable ``$district`` / ``${district}``: one value is regex-escaped, several
  become ``(a|b)``, and "All" with a custom all value (``.*``) is inserted as is.

Worked example: over 1 h with 1000 points, ``GROUP BY time($__interval)`` becomes
``GROUP BY time(5s)``, raised to ``time(10s)`` by the data source's 10 s minimum.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: Grafana's rangeutil roundInterval table: (upper bound of the raw interval in ms, result).
_NICE: tuple[tuple[int, int], ...] = (
    (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1_500, 1_000),
    (3_500, 2_000), (7_500, 5_000), (12_500, 10_000), (17_500, 15_000), (25_000, 20_000),
    (45_000, 30_000), (90_000, 60_000), (210_000, 120_000), (450_000, 300_000),
    (750_000, 600_000), (1_050_000, 900_000), (1_500_000, 1_200_000), (2_700_000, 1_800_000),
    (5_400_000, 3_600_000), (9_000_000, 7_200_000), (16_200_000, 10_800_000),
    (24_300_000, 21_600_000), (54_000_000, 43_200_000), (129_600_000, 86_400_000),
    (864_000_000, 604_800_000), (2_592_000_000 * 4, 2_592_000_000),
)
_YEAR_MS = 31_536_000_000
_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000,
             "y": _YEAR_MS}
_REGEX_SPECIAL = re.compile(r"([\\^$*+?.()|{}\[\]/])")
#: Custom all value of our variables (see panels.query_variable).
ALL_VALUE = ".*"
ALL = "$__all"


@dataclass(frozen=True, slots=True)
class TimeRange:
    start_ms: int
    end_ms: int

    @property
    def span_ms(self) -> int:
        return max(1, self.end_ms - self.start_ms)


def parse_duration_ms(text: str) -> int:
    """'10s' -> 10000, '30d' -> 2592000000 (Grafana's interval syntax; '>' prefix allowed)."""
    m = re.fullmatch(r">?\s*(\d+)\s*(ms|s|m|h|d|w|y)", text.strip())
    if not m:
        raise ValueError(f"not a duration: {text!r} (expected e.g. 10s, 5m, 1h, 30d)")
    return int(m.group(1)) * _UNITS_MS[m.group(2)]


def format_duration(ms: int) -> str:
    for unit in ("y", "w", "d", "h", "m", "s"):
        size = _UNITS_MS[unit]
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def round_interval(raw_ms: float) -> int:
    for bound, nice in _NICE:
        if raw_ms <= bound:
            return nice
    return _YEAR_MS


def interval_ms(time_range: TimeRange, *, max_data_points: int = 1000, min_interval: str | None = None,
                datasource_min: str = "10s") -> int:
    value = round_interval(time_range.span_ms / max(1, max_data_points))
    floor = parse_duration_ms(min_interval or datasource_min)
    return max(value, floor)


def _escape(value: str) -> str:
    return _REGEX_SPECIAL.sub(r"\\\1", value)


def format_variable(value: str | Sequence[str]) -> str:
    values = [value] if isinstance(value, str) else list(value)
    if values == [ALL] or values == [ALL_VALUE]:
        return ALL_VALUE
    escaped = [_escape(v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def expand(query: str, time_range: TimeRange, variables: Mapping[str, str | Sequence[str]] | None = None,
           *, max_data_points: int = 1000, min_interval: str | None = None,
           datasource_min: str = "10s") -> str:
    """The query as Grafana would send it to InfluxDB."""
    step = interval_ms(time_range, max_data_points=max_data_points, min_interval=min_interval,
                       datasource_min=datasource_min)
    macros = {
        "timeFilter": f"time >= {time_range.start_ms}ms and time <= {time_range.end_ms}ms",
        "__interval_ms": str(step),
        "__interval": format_duration(step),
        "interval": format_duration(step),
        "__range_ms": str(time_range.span_ms),
        "__range_s": str(time_range.span_ms // 1000),
        "__range": format_duration(time_range.span_ms),
    }
    names = {**{k: format_variable(v) for k, v in (variables or {}).items()}, **macros}

    def replace(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in names:
            raise KeyError(f"unknown variable ${name} in query: {query}")
        return names[name]

    # ${name} or $name (longest name wins because \w+ is greedy and names are whole words)
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, query)


def variables_in(query: str) -> set[str]:
    return {a or b for a, b in re.findall(r"\$\{(\w+)\}|\$(\w+)", query)}
