"""The spatial warning of a leak's plume (`kind: plume`): which air stations, and which
places, a leak at a chemical site will reach on the wind, and when.

Each round of the receptors' samples (air stations reporting their wind): every device
on which a `sources` rule fired within `within_s` is a source at its place in the
gateway configs, releasing `release_per_unit` g/s per unit of its reading at that breach
(at least `assume_at_least`). Each station lies x metres downwind of it and y across,
in the wind of the round's stations together (the mean wind vector, averaged over ten
minutes). The Gaussian plume (urbansense/dispersion.py) predicts the station's
concentration: the highest within `wind_spread_deg` either side of that direction (a
wind vane's few degrees, the wind's meander). The plume front, leaving with the
source's first alarm, reaches it after x / u seconds. A station predicted at `warn_at`
or more, reached within `horizon_s`, is warned (and held down to `clear_at`, default
half of it): the alert carries the ETA (forecast), the source and the places (`places`
file) the plume crosses on the way, each with its own ETA.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from rules.catalog import PlumeRule
from rules.devices import NEVER, Devices, Round
from rules.kinds import _BAND, _BREACH, _CLEAR, Buffers, Evaluator, Signals
from urbansense.dispersion import downwind, ground_level_ugm3, reach_m
from urbansense.zones import ZoneSet

#: Places are named where the plume reaches within this many of its standard deviations.
PLACE_SIGMAS = 2.0
#: The wind is averaged over about this long (s).
WIND_TAU_S = 600.0


def _district_wind(speed: np.ndarray, from_deg: np.ndarray) -> tuple[float, float] | None:
    """The wind of the round's stations together: the median speed and the direction of
    the mean wind vector (one station's vane a few degrees off moves nothing)."""
    ok = ~(np.isnan(speed) | np.isnan(from_deg))
    if not ok.any():
        return None
    u, d = speed[ok], np.radians(from_deg[ok])
    mean_dir = math.degrees(math.atan2(float(np.sum(u * np.sin(d))), float(np.sum(u * np.cos(d))))) % 360.0
    return float(np.median(u)), mean_dir


class PlumeEval(Evaluator):
    rule: PlumeRule
    STATE: ClassVar[dict[str, tuple[float, type]]] = {**Evaluator.STATE, "source_of": (-1, np.int64),
                                                      "episode": (NEVER, np.int64), "hot_until": (NEVER, np.int64)}
    source_of: np.ndarray
    #: per source device: its leak's first alarm, and its last (a gap of within_s ends the leak)
    episode: np.ndarray
    hot_until: np.ndarray

    def __init__(self, rule: PlumeRule, devices: Devices, buffers: Buffers, deps: list[Evaluator]) -> None:
        self.deps = deps
        super().__init__(rule, devices, buffers)
        self.metrics = (rule.wind_speed_metric, rule.wind_dir_metric)
        path = rule.places_path
        self.places = ZoneSet.load(path) if path is not None else None
        #: per receptor: the wind of its last warning, for the message
        self._wind: dict[int, tuple[float, float]] = {}
        #: (t, speed, from, east, north) of the smoothed wind
        self._wind_state: tuple[int, float, float, float, float] | None = None

    def _sources(self, t: int) -> list[tuple[int, float, int]]:
        """(device, release g/s, since) of every source firing now."""
        r = self.rule
        since = t - int(r.within_s * 1000)
        out: dict[int, tuple[float, int]] = {}
        for d in self.deps:
            n = min(len(d.last_breach), len(self.devices))
            hot = np.flatnonzero(d.last_breach[:n] >= since)
            for raw in hot:
                i = int(raw)
                if math.isnan(self.devices.lat[i]):
                    continue
                if self.episode[i] == NEVER or self.hot_until[i] < since:
                    self.episode[i] = int(d.last_breach[i])  # a new leak's first alarm here
                self.hot_until[i] = max(int(self.hot_until[i]), int(d.last_breach[i]))
                reading = float(d.breach_value[i]) if not math.isnan(d.breach_value[i]) else 0.0
                q = r.release_per_unit * max(reading, r.assume_at_least)
                if q > out.get(i, (0.0, 0))[0]:
                    out[i] = (q, int(self.episode[i]))
        return [(i, q, first) for i, (q, first) in out.items()]

    def evaluate(self, rnd: Round) -> Signals | None:
        r = self.rule
        t_now = int(rnd.t[-1])
        sources = self._sources(t_now)
        n = len(rnd.dev)
        sig = np.full(n, _CLEAR, np.int8)
        value = np.zeros(n)
        eta = np.full(n, np.nan)
        wind = self._smoothed(t_now, _district_wind(rnd.values[r.wind_speed_metric], rnd.values[r.wind_dir_metric]))
        clear_at = r.clear_at if r.clear_at is not None else r.warn_at / 2.0
        for j in range(n):
            dev = int(rnd.dev[j])
            at = (float(self.devices.lat[dev]), float(self.devices.lon[dev]))
            if wind is None or math.isnan(at[0]):
                sig[j] = _BAND
                continue
            u, wd = wind
            if not sources or u < r.min_wind_ms:
                continue
            best = (0.0, math.inf, -1)
            for src, q, first in sources:
                where = (float(self.devices.lat[src]), float(self.devices.lon[src]))
                # the wind's direction is known to a few degrees: the worst of the cone
                c, x = max((ground_level_ugm3(q, u, xx, yy, r.stability), xx) for xx, yy in
                           (downwind(where, at, wd + k * r.wind_spread_deg / 2.0) for k in (-2, -1, 0, 1, 2)))
                arrive_s = max(0.0, x / u - (int(rnd.t[j]) - first) / 1000.0)
                if c >= clear_at and arrive_s <= r.horizon_s and c > best[0]:
                    best = (c, arrive_s, src)
            if best[2] >= 0:
                sig[j] = _BREACH if best[0] >= r.warn_at else _BAND  # between clear_at and warn_at: held
                value[j], eta[j] = best[0], best[1]
                self.source_of[dev] = best[2]
                self._wind[dev] = (u, wd)
        s = Signals(rnd.dev, rnd.t, sig, np.full(n, self.severity, np.int8), value, np.full(n, r.warn_at))
        s.eta_s = eta
        return s

    def _smoothed(self, t: int, now: tuple[float, float] | None) -> tuple[float, float] | None:
        """The wind averaged over about WIND_TAU_S (an exponential average of the wind
        vector and speed), as dispersion models take a 10-minute mean wind."""
        if now is None:
            return None if self._wind_state is None else (self._wind_state[1], self._wind_state[2])
        u, wd = now
        e, n = u * math.sin(math.radians(wd)), u * math.cos(math.radians(wd))
        if self._wind_state is None or t - self._wind_state[0] > 4 * WIND_TAU_S * 1000:
            self._wind_state = (t, u, wd, e, n)
        else:
            t0, su, _swd, se, sn = self._wind_state
            a = 1.0 - math.exp(-max(0, t - t0) / (WIND_TAU_S * 1000.0))
            su, se, sn = su + a * (u - su), se + a * (e - se), sn + a * (n - sn)
            self._wind_state = (t, su, math.degrees(math.atan2(se, sn)) % 360.0, se, sn)
        return self._wind_state[1], self._wind_state[2]

    def describe(self, key: int) -> dict[str, object]:
        src = int(self.source_of[key]) if key < len(self.source_of) else -1
        if src < 0:
            return {"source": "none", "places": "none"}
        labels = self.devices.labels[src]
        name = self.devices.device[src]
        site = labels.get("site")
        u, wd = self._wind.get(key, (math.nan, math.nan))
        return {"source": f"{name} ({site})" if site else name, "wind_ms": u, "wind_from": wd,
                "places": self._places(src, u, wd)}

    def _places(self, src: int, u: float, wd: float) -> str:
        """The places the plume crosses, nearest first, with the minutes it takes."""
        if self.places is None or math.isnan(u) or u < self.rule.min_wind_ms:
            return "none listed"
        at_src = (float(self.devices.lat[src]), float(self.devices.lon[src]))
        hit: list[tuple[float, str]] = []
        for z in self.places.zones:
            c = z.area.centroid
            lat, lon = self.places.unproject(float(c.x), float(c.y))
            x, y = downwind(at_src, (lat, lon), wd)
            if x > 0 and abs(y) <= reach_m(x, PLACE_SIGMAS, self.rule.stability) and x / u <= self.rule.horizon_s:
                hit.append((x / u, z.name))
        return ", ".join(f"{name} (~{s / 60:.0f} min)" for s, name in sorted(hit)) or "none listed"
