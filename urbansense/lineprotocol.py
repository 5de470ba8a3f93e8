"""InfluxDB line protocol encoding with complete escaping (measurements, tag keys and
values, field keys, string fields), integers/floats/booleans kept as such, NaN refused.

Worked example::

    encode_point("water", {"district": "pu dong"}, {"pressure_mpa": 0.31, "n": 3}, 1764190000000)
    -> 'water,district=pu\\ dong pressure_mpa=0.31,n=3i 1764190000000'

Escaping rules (checked against a real InfluxDB 1.6.7):

- measurement: ``,`` and space;
- tag keys, tag values, field keys: ``,`` ``=`` and space. A backslash is *not* escaped
  there: InfluxDB stores it as it is (``a\\b`` stays ``a\\b``; doubling it would store
  two). A backslash right before ``,`` ``=`` space, or at the end, cannot be carried
  exactly (InfluxDB reads it as an escape), so such a name is refused;
- string field values: ``"`` and ``\\`` only. A newline inside the quotes is stored as
  a newline; escaping it as ``\\n`` would store a backslash and an ``n`` instead.
- A newline or carriage return cannot appear in a measurement, tag or field key at all
  (it ends the line). They are written as the two characters ``\\n`` / ``\\r`` so the line
  stays one line; the wire contract's identifier rules keep them out in practice.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n", "\r": r"\r"})
_KEY = str.maketrans({",": r"\,", " ": r"\ ", "=": r"\=", "\n": r"\n", "\r": r"\r"})
# InfluxDB skips tabs and NUL bytes at the start of a line and of a field key.
_TRIMMED = "\t\x00"
_AMBIGUOUS_BACKSLASH = re.compile(r"\\(?:[,= ]|$)")
_STRING = str.maketrans({'"': r"\"", "\\": "\\\\"})

# Field keys repeat endlessly (pressure_mpa, ...): their escaped form, with the "=", is
# cached, bounded so that arbitrary keys cannot grow memory.
_KEY_CACHE_MAX = 65536
_key_prefixes: dict[str, str] = {}


class LineProtocolError(ValueError):
    pass


def _no_trailing_backslash(name: str) -> str:
    if "\\" in name and _AMBIGUOUS_BACKSLASH.search(name):
        raise LineProtocolError(
            f"{name!r} has a backslash before ',', '=', a space or at its end, which line protocol "
            "cannot carry exactly in a measurement, tag or field key")
    return name


def escape_measurement(name: str) -> str:
    # A line that starts with '#' is a comment: InfluxDB would drop the point silently
    # (found by tests/security/test_lineprotocol_property.py).
    if not name or name[0] == "#" or name[0] in _TRIMMED:
        raise LineProtocolError(f"measurement {name!r} cannot be stored exactly: it must not be empty or "
                                "start with '#', a tab or a NUL")
    return _no_trailing_backslash(name).translate(_MEASUREMENT)


def _check_key(key: str, what: str) -> str:
    """Tag and field keys InfluxDB refuses or changes: empty, `time` (refused with a
    partial write), a leading tab or NUL (trimmed from field keys)."""
    if not key or key == "time" or key[0] in _TRIMMED:
        raise LineProtocolError(f"{what} {key!r} cannot be stored exactly: it must not be empty, "
                                "'time', or start with a tab or a NUL")
    return key


def escape_key(key: str) -> str:
    """Tag keys, tag values and field keys."""
    return _no_trailing_backslash(key).translate(_KEY)


def escape_string(value: str) -> str:
    """A string field value, quotes included."""
    return '"' + value.translate(_STRING) + '"'


def format_field(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise LineProtocolError(f"{value} cannot be stored (InfluxDB has no NaN/infinity)")
        return repr(value)
    if isinstance(value, str):
        return escape_string(value)
    raise LineProtocolError(f"unsupported field type {type(value).__name__}")


def _key_prefix(key: str) -> str:
    """'pressure_mpa' -> 'pressure_mpa=' (escaped), cached."""
    prefix = escape_key(_check_key(key, "field key")) + "="
    if len(_key_prefixes) >= _KEY_CACHE_MAX:
        _key_prefixes.clear()
    _key_prefixes[key] = prefix
    return prefix


def encode_fields(fields: Mapping[str, object]) -> str:
    """The field set of a line, e.g. ``pressure_mpa=0.31,n=3i,ok=true,s="x"``.

    The hot path of the ingester: plain floats (the common case) skip the generic
    dispatch of :func:`format_field`.
    """
    if not fields:
        raise LineProtocolError("a point needs at least one field")
    parts = []
    prefixes = _key_prefixes
    for key, value in fields.items():
        prefix = prefixes.get(key) or _key_prefix(key)
        if type(value) is float and value - value == 0.0:  # finite float
            parts.append(prefix + repr(value))
        else:
            parts.append(prefix + format_field(value))
    return ",".join(parts)


def series_key(measurement: str, tags: Mapping[str, str]) -> str:
    """Measurement and tag set, tags sorted by key (InfluxDB's preferred order); tags
    with empty values are omitted (InfluxDB refuses them)."""
    head = escape_measurement(measurement)
    for key in sorted(tags):
        value = tags[key]
        if value != "":
            head += f",{escape_key(_check_key(key, 'tag key'))}={escape_key(value)}"
    return head


def encode_point(
    measurement: str,
    tags: Mapping[str, str],
    fields: Mapping[str, object],
    t: int,
) -> str:
    """One line. Tags with empty values are omitted (InfluxDB refuses them)."""
    return f"{series_key(measurement, tags)} {encode_fields(fields)} {t}"
