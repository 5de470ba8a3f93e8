"""Durations in scenario files: `90`, `90s`, `15m`, `2h`, `1h30m`, `1d`."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
_UNIT_S = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(value: str | float | int) -> float:
    """Seconds in a duration; raises ValueError with the accepted forms."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip().replace(" ", "")
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"{value!r} is not a duration; write seconds (90) or e.g. 90s, 15m, 2h, 1h30m, 1d")
    return total
