"""Shanghai local time and sun times: when street lamps switch on (dusk) and off (dawn).

Shanghai is UTC+8 all year (no daylight saving), so local time is a fixed offset.
Sun times come from astral (civil twilight, sun 6 degrees below the horizon) and are
cached per local date.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache

from astral import Observer
from astral.sun import dawn, dusk

#: People's Square, Shanghai.
SHANGHAI = Observer(latitude=31.2304, longitude=121.4737)
UTC_OFFSET_MS = 8 * 3600 * 1000
DAY_MS = 86_400_000
TZ = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")
#: Burning-hours counters count darkness from this local date on.
_COUNTER_EPOCH_DAY = (dt.date(2024, 1, 1) - dt.date(1970, 1, 1)).days


def local_hour(t_ms: int) -> float:
    """Hour of the day in Shanghai (0.0 .. 24.0)."""
    return ((t_ms + UTC_OFFSET_MS) % DAY_MS) / 3_600_000.0


def local_day(t_ms: int) -> int:
    """Days since 1970-01-01 in Shanghai local time."""
    return (t_ms + UTC_OFFSET_MS) // DAY_MS


@lru_cache(maxsize=4096)
def dawn_dusk_ms(day: int) -> tuple[int, int]:
    """Epoch ms of civil dawn and civil dusk on local day `day`."""
    date = dt.date(1970, 1, 1) + dt.timedelta(days=day)
    d0 = dawn(SHANGHAI, date=date, tzinfo=TZ)
    d1 = dusk(SHANGHAI, date=date, tzinfo=TZ)
    return int(d0.timestamp() * 1000), int(d1.timestamp() * 1000)


def is_dark(t_ms: int) -> bool:
    """True between civil dusk and the next civil dawn: lamps on."""
    d0, d1 = dawn_dusk_ms(local_day(t_ms))
    return t_ms < d0 or t_ms >= d1


#: _cumulative[i] = hours of darkness from the counter epoch to local midnight of epoch day + i.
_cumulative: list[float] = [0.0]


def _dark_hours_before_day(day: int) -> float:
    """Hours of darkness from the counter epoch to the local midnight that starts `day`."""
    i = day - _COUNTER_EPOCH_DAY
    if i <= 0:
        return 0.0
    while len(_cumulative) <= i:  # extended once per new day, then O(1)
        d = _COUNTER_EPOCH_DAY + len(_cumulative) - 1
        d0, d1 = dawn_dusk_ms(d)
        midnight = d * DAY_MS - UTC_OFFSET_MS
        _cumulative.append(_cumulative[-1] + ((d0 - midnight) + (midnight + DAY_MS - d1)) / 3_600_000.0)
    return _cumulative[i]


def dark_hours_until(t_ms: int) -> float:
    """Hours of darkness since the counter epoch (2024-01-01 local) up to `t_ms`."""
    day = local_day(t_ms)
    total = _dark_hours_before_day(day)
    d0, d1 = dawn_dusk_ms(day)
    midnight = day * DAY_MS - UTC_OFFSET_MS
    total += (min(t_ms, d0) - midnight) / 3_600_000.0
    if t_ms > d1:
        total += (t_ms - d1) / 3_600_000.0
    return total
