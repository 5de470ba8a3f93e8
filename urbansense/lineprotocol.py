"""InfluxDB line protocol encoding with complete escaping (measurements, tag keys and
values, field keys, string fields), integers/floats/booleans kept as such, NaN refused.

Worked example::

    encode_point("water", {"district": "pu dong"}, {"pressure_mpa": 0.31, "n": 3}, 1764190000000)
    -> 'water,district=pu\\ dong pressure_mpa=0.31,n=3i 1764190000000'
"""

from __future__ import annotations

import math
from collections.abc import Mapping

_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n", "\r": r"\r", "\\": "\\\\"})
_KEY = str.maketrans({",": r"\,", " ": r"\ ", "=": r"\=", "\n": r"\n", "\r": r"\r", "\\": "\\\\"})
_STRING = str.maketrans({'"': r"\"", "\\": "\\\\", "\n": "\\n"})


class LineProtocolError(ValueError):
    pass


def escape_measurement(name: str) -> str:
    return name.translate(_MEASUREMENT)


def escape_key(key: str) -> str:
    """Tag keys, tag values and field keys."""
    return key.translate(_KEY)


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
        return '"' + value.translate(_STRING) + '"'
    raise LineProtocolError(f"unsupported field type {type(value).__name__}")


def encode_point(
    measurement: str,
    tags: Mapping[str, str],
    fields: Mapping[str, object],
    t: int,
) -> str:
    """One line. Tags with empty values are omitted (InfluxDB refuses them)."""
    if not fields:
        raise LineProtocolError("a point needs at least one field")
    head = escape_measurement(measurement)
    for key in sorted(tags):
        value = tags[key]
        if value != "":
            head += f",{escape_key(key)}={escape_key(value)}"
    body = ",".join(f"{escape_key(k)}={format_field(v)}" for k, v in fields.items())
    return f"{head} {body} {t}"
