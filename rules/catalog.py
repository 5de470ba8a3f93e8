"""Rule files: YAML, one per domain, validated on load. By default the catalogue is every
family's ``rules.yaml`` (urbansense/registry.py) plus the system rules of rules/catalog/.

Every problem names the file, the rule and the key, e.g.
``urbansense/families/gas/rules.yaml: rule 'gas.methane_rising' (rules[2]): horizon_s: must be > 0``.
The rule kinds and their keys are documented in rules/README.md.
"""

from __future__ import annotations

import zoneinfo
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rules.aqi import TABLES_DIR, AqiTable, AqiTableError
from rules.surface_water import SurfaceWaterTable, SurfaceWaterTableError
from urbansense import registry
from urbansense.config import ConfigError, MeasurementName, _display, format_validation_error, read_yaml
from urbansense.identifiers import DOMAINS, METRIC_PATTERN
from urbansense.zones import ZoneError, ZoneSet

#: The rules that belong to no family: gateways and the pipeline's health.
CATALOG_DIR = Path(__file__).resolve().parent / "catalog"
RULE_ID = r"^[a-z][a-z0-9_]*\.[a-z0-9_]+$"
Measurement = MeasurementName
Severity = Literal["info", "warning", "critical"]
Op = Literal["above", "below"]


class Recommend(BaseModel):
    """A command an alert of the rule recommends, for an operator to confirm: write
    `value` to the alerting device's `field` (a field its profile marks writable) through
    the command path, e.g. `urbansense edge command --alert ALERT.json`."""

    model_config = ConfigDict(extra="forbid")
    field: str = Field(pattern=METRIC_PATTERN)
    value: bool | int | float


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=RULE_ID)
    description: str = ""
    severity: Severity = "warning"
    #: Seconds the condition must hold before the alert fires.
    for_s: float = Field(default=0, ge=0)
    #: False for helper conditions that only feed a composite rule.
    publish: bool = True
    message: str = ""
    #: Evaluate only while the sun is up/down at the device (needs its location).
    when_sun: Literal["up", "down"] | None = None
    #: Sun elevation (degrees) that counts as "up"; e.g. 3 keeps dusk and dawn out.
    sun_elevation_deg: float = Field(default=0.0, ge=-18, le=30)
    #: What an alert of it says: `hazard` (the hazard or its early warning), `maintenance`
    #: (equipment degrading: "inspect within N days", a ticket rather than a page) or
    #: `health` (a sensor or device is unwell: stuck, drifting, spiking, silent, faulted).
    #: Default: health for stuck-sensor (flatline), silence (deadman) and gateway (offline,
    #: clock) rules,
    #: else hazard. The backtest scores incidents on hazard and maintenance alerts (a
    #: precursor's ticket is the earliest warning) and counts health alerts apart.
    category: Literal["hazard", "maintenance", "health"] | None = None
    #: Early-warning kinds (forecast, rate, anomaly, drift) hold their alerts on a device
    #: while a health rule on the same metric suspects its sensor, and for this long after
    #: (s; default 900): a stuck sensor letting go, a spike, a drifting transmitter raise a
    #: health alert, not an early warning. A plain threshold (a standard's set point) is
    #: held only if it sets this itself (a water-quality limit against a drifting
    #: electrode), never by default. 0: never held.
    health_hold_s: float | None = Field(default=None, ge=0)
    #: A health rule that reads another field about these metrics' sensors (an analyser's
    #: standard check about its ammonia readings): early warnings and limits on them wait
    #: while it fires, as for a health rule on the metric itself.
    sensor_of: list[str] = Field(default_factory=list)
    #: Judge only devices whose gateway-config labels include all of these (a stuck-level
    #: check for tidal stations, `waterbody: river`, and not for lakes, whose level stands).
    labels: dict[str, str] = Field(default_factory=dict)
    #: The alert names the devices whose gateway-config label `affects_label` is the
    #: alerting device (the streets that drain to a pump station, the low points behind a
    #: river station: `{affected}` in the message).
    affects_label: str | None = Field(default=None, pattern=METRIC_PATTERN)
    #: The command its alerts recommend (they carry it for an operator to confirm).
    recommend: Recommend | None = None
    #: The command the rules service sends by itself when an alert of it fires (a
    #: tunnel's fans on when gas rises), read back by the gateway; the outcome is added
    #: to the alert's history. Only a value the family lists in the field's `unattended`.
    respond: Recommend | None = None

    @property
    def hold_ms(self) -> int:
        """How long after a health suspicion this rule's breaches wait (0: never)."""
        if self.health_hold_s is not None:
            return int(self.health_hold_s * 1000)
        return 900_000 if getattr(self, "kind", "") in ("forecast", "rate", "anomaly", "drift", "tide_forecast") else 0

    @property
    def domain(self) -> str:
        return str(getattr(self, "measurement", None) or "system")

    @property
    def purpose(self) -> str:
        if self.category is not None:
            return self.category
        return "health" if getattr(self, "kind", "") in ("flatline", "deadman", "gateway_offline",
                                                         "gateway_clock") else "hazard"


class _MetricRule(_Rule):
    measurement: Measurement
    metric: str = Field(pattern=METRIC_PATTERN)


class _Offset(BaseModel):
    #: A device label holding each device's own reference (a river station's warning
    #: level): the rule's levels (threshold, clear, critical_threshold; limit, arm) are
    #: then offsets from it, and a device without the label is not judged.
    offset_from: str | None = Field(default=None, pattern=METRIC_PATTERN)
    #: A device label holding each device's own reference (a toxic-gas detector's
    #: occupational exposure limit for its gas, in ppm): the rule's levels are then
    #: multiples of it (threshold 1.0: 100 % of the limit), and a device without the label
    #: is not judged. Not with offset_from.
    multiple_of: str | None = Field(default=None, pattern=METRIC_PATTERN)

    @model_validator(mode="after")
    def _one_reference(self) -> _Offset:
        if self.offset_from is not None and self.multiple_of is not None:
            raise ValueError("give offset_from or multiple_of, not both")
        return self

    @property
    def reference_label(self) -> str | None:
        """The label holding each device's own reference, whichever way the levels use it."""
        return self.offset_from or self.multiple_of


class _Hysteresis(_MetricRule):
    op: Op = "above"
    threshold: float
    #: Level at which a firing alert resolves; default: the threshold itself.
    clear: float | None = None
    #: A second threshold on the same side at which the same alert escalates to critical.
    critical_threshold: float | None = None

    @model_validator(mode="after")
    def _sides(self) -> _Hysteresis:
        if self.clear is not None:
            if self.op == "below" and self.clear < self.threshold:
                raise ValueError(f"clear ({self.clear}) must be >= threshold ({self.threshold}) for op below")
            if self.op == "above" and self.clear > self.threshold:
                raise ValueError(f"clear ({self.clear}) must be <= threshold ({self.threshold}) for op above")
        c = self.critical_threshold
        wrong_side = c is not None and (c < self.threshold if self.op == "above" else c > self.threshold)
        if wrong_side:
            raise ValueError(f"critical_threshold ({c}) must be beyond threshold ({self.threshold}) for op {self.op}")
        return self


class ThresholdRule(_Hysteresis, _Offset):
    """value above/below threshold (booleans read as 0/1: `op: above, threshold: 0.5`)."""

    kind: Literal["threshold"] = "threshold"
    #: Judge the value's size, whatever its sign (a check's error of -12 % fails as +12 %).
    absolute: bool = False


class _Windowed(_MetricRule):
    #: Look-back window; kept as `buckets` time buckets of window_s/buckets seconds each.
    window_s: float = Field(gt=0)
    buckets: int = Field(default=30, ge=4, le=240)
    #: Fewest filled buckets before the rule says anything.
    min_points: int = Field(default=6, ge=2)

    @model_validator(mode="after")
    def _points(self) -> _Windowed:
        if self.min_points > self.buckets:
            raise ValueError(f"min_points ({self.min_points}) cannot exceed buckets ({self.buckets})")
        return self


class RateRule(_Windowed, _Hysteresis):
    """Least-squares slope over the window, in metric units per minute."""

    kind: Literal["rate"] = "rate"


class ForecastRule(_Windowed, _Offset):
    """Robust linear trend (Theil-Sen) over the window; warns when `limit` will be
    crossed within `horizon_s` and reports the expected crossing time (like PromQL
    predict_linear, without its trust in every point)."""

    kind: Literal["forecast"] = "forecast"
    op: Op = "above"
    #: The hazard limit (e.g. 25 %LEL).
    limit: float
    horizon_s: float = Field(gt=0)
    #: Only warn once the level is beyond `arm` (keeps baseline noise quiet).
    arm: float | None = None
    #: Least slope (units per minute, toward the limit) that counts as a trend.
    min_slope_per_min: float = Field(default=0.0, ge=0)
    #: The slope must also stand out of the signal's own noise: at least this many
    #: standard errors (the residuals' root mean square about the line, over the spread
    #: of the times). 0 turns the check off. With it, `min_slope_per_min`
    #: need only keep out slow real movements (the daily demand cycle), not noise.
    min_slope_z: float = Field(default=4.0, ge=0)
    #: The trend must also hold in each half of the window, each at least this share of
    #: the whole window's slope: a step (one jump, a stuck sensor letting go) moves one
    #: half, a trend both. 0 turns the check off.
    sustained: float = Field(default=0.25, ge=0, le=1)
    #: Follow the signal's turn: the crossing time from a parabola through the window
    #: where that is later than the straight line's, so a tide slowing towards its high
    #: water is not extrapolated past it (a rise that turns back never reaches the
    #: limit); a rise speeding up keeps the line's time.
    curvature: bool = False


class TideForecastRule(_MetricRule, _Offset):
    """The compound-flood warning of a tide (or tidal river) station: the astronomical tide
    predicted from a harmonic fit of the station's own record (rules/tides.py), plus the
    surge it reads now (observed minus predicted, smoothed over `surge_tau_s`), plus the
    rise the rain at the nearest gauge brings (`rain_from`, an accumulation rule, times
    `rain_m_per_mm`), against `limit`: breach when that sum crosses it within
    `horizon_s`, with the time of the crossing and the high water it expects."""

    kind: Literal["tide_forecast"] = "tide_forecast"
    #: `level`: the expected high water against `limit` (above); `surge`: the surge the
    #: station reads now (observed minus its predicted tide) against `limit`, whatever
    #: the tide (a typhoon's surge on a neap tide, short of the warning level).
    watch: Literal["level", "surge"] = "level"
    limit: float = 0.0
    #: A warning resolves once the expected high water is this far below the limit.
    clear_margin: float = Field(default=0.1, ge=0)
    constituents: list[str] = Field(default_factory=lambda: ["M2", "S2", "K1", "O1"], min_length=1)
    #: The record kept for the fit, and the least before a first fit (M2 from S2 needs
    #: 14.77 days).
    history_s: float = Field(default=16 * 86400, gt=0)
    min_history_s: float = Field(default=15 * 86400, gt=0)
    refit_every_s: float = Field(default=6 * 3600, gt=0)
    surge_tau_s: float = Field(default=1800, gt=0)
    #: Carry the surge's trend (its rise per hour, smoothed over an hour) this far ahead:
    #: a typhoon's surge still building when the tide turns up. 0: the surge persists.
    surge_trend_s: float = Field(default=0.0, ge=0)
    #: ... once the surge is at least this (m): the tide's own wobbles around a fit are
    #: no surge to extrapolate.
    surge_trend_min_m: float = Field(default=0.2, ge=0)
    horizon_s: float = Field(default=4 * 3600, gt=0)
    rain_from: str | None = None
    rain_m_per_mm: float = Field(default=0.0, ge=0)
    #: Latitude for the fit where a station has no location.
    lat: float = 31.2

    @model_validator(mode="after")
    def _history(self) -> TideForecastRule:
        if self.multiple_of is not None:
            raise ValueError("multiple_of: a tide's levels are offsets (offset_from), not multiples")
        if self.min_history_s > self.history_s:
            raise ValueError(f"min_history_s ({self.min_history_s}) cannot exceed history_s ({self.history_s})")
        return self


class AccumulationRule(_MetricRule):
    """What a counter gained over the trailing window (a rain gauge's bucket counter: the
    rain in the last 3 h) against threshold/clear/critical_threshold. A counter that goes
    back (a reset, a wrap) adds nothing for that step; a gap in the samples loses
    nothing, the first sample after it carries the rain of the gap."""

    kind: Literal["accumulation"] = "accumulation"
    window_s: float = Field(gt=0)
    buckets: int = Field(default=60, ge=4, le=240)
    threshold: float = Field(gt=0)
    clear: float | None = None
    critical_threshold: float | None = None

    @model_validator(mode="after")
    def _levels(self) -> AccumulationRule:
        if self.clear is not None and self.clear > self.threshold:
            raise ValueError(f"clear ({self.clear}) must be <= threshold ({self.threshold})")
        if self.critical_threshold is not None and self.critical_threshold < self.threshold:
            raise ValueError(f"critical_threshold ({self.critical_threshold}) must be >= threshold ({self.threshold})")
        return self


class AnomalyRule(_Windowed):
    """Modified z-score M = 0.6745 (x - median) / MAD over the window (Iglewicz & Hoaglin)."""

    kind: Literal["anomaly"] = "anomaly"
    threshold: float = Field(default=3.5, gt=0)
    direction: Literal["both", "up", "down"] = "both"
    #: Smallest MAD used, in metric units: a very steady signal must not make noise "anomalous".
    mad_floor: float = Field(gt=0)


class FlatlineRule(_MetricRule):
    """QARTOD flat-line: the value repeats within `tolerance` for suspect_s (warning),
    then fail_s (severity)."""

    kind: Literal["flatline"] = "flatline"
    tolerance: float = Field(default=1e-9, ge=0)
    suspect_s: float = Field(gt=0)
    fail_s: float = Field(gt=0)

    @model_validator(mode="after")
    def _order(self) -> FlatlineRule:
        if self.fail_s < self.suspect_s:
            raise ValueError(f"fail_s ({self.fail_s}) must be >= suspect_s ({self.suspect_s})")
        return self


class DriftRule(_MetricRule):
    """A device against its own baseline, learnt online over its first learn_s (mean and
    sigma): `test: cusum`, a two-sided CUSUM on z = (x - mean)/sigma (slack k, alarm at h,
    capped at 2h so one huge excursion is forgotten soon after it ends);
    `test: level`, z itself beyond h (clear below h/2), for values that hold between
    updates (an elevator's statistics over its last trips), where a CUSUM would add up
    the same z again on every sample."""

    kind: Literal["drift"] = "drift"
    learn_s: float = Field(gt=0)
    test: Literal["cusum", "level"] = "cusum"
    k: float = Field(default=0.5, gt=0)
    h: float = Field(default=5.0, gt=0)
    #: Smallest sigma used, in the units of the drifting value (a noiseless baseline must
    #: not make every change a drift).
    sigma_floor: float = Field(gt=0)
    #: `district_median`: watch the value divided by the median of the same metric over the
    #: district's other devices at the same instant. Water points share the diurnal demand
    #: shape, so a meter's share of it is flat and a leak shows as a creeping share.
    relative_to: Literal["none", "district_median"] = "none"
    #: Which drift alerts: `up` (a leak raises a flow), `down`, or `both` sides.
    direction: Literal["both", "up", "down"] = "both"
    #: `metric` is a counter (a meter's totaliser): watch its rate per hour over this
    #: trailing window instead (a drifting or stuck flow transmitter cannot move it; a
    #: counter of whole units needs a long window to resolve a rate). A device is compared
    #: (and learns) only while its samples span nearly the whole window.
    counter_rate_s: float | None = Field(default=None, gt=0)


class CounterCheckRule(_Windowed):
    """A rate reading against the rate its own counter shows over the window (a flow
    transmitter against its meter's totaliser): the mean of `metric` against the
    counter's increase per `per_s` (3600: the metric is per hour). Breach when they
    differ by more than `tolerance` of the counter's rate and `floor` units: the reading
    has drifted, stuck or spiked, the counter has not. A health rule."""

    kind: Literal["counter_check"] = "counter_check"
    counter: str = Field(pattern=METRIC_PATTERN)
    per_s: float = Field(default=3600.0, gt=0)
    tolerance: float = Field(default=0.05, gt=0)
    floor: float = Field(ge=0)
    category: Literal["hazard", "maintenance", "health"] | None = "health"


class DeadmanRule(_Rule):
    """No good sample from a device for timeout_s of its gateway's event time; devices in
    the gateway inventory that never reported count from the gateway's first message.
    `scope: group`: at least `min_fraction` of a group's devices (`group_by` a label such
    as `circuit`) silent at once, while their gateway still reports: a circuit whose lamp
    controllers lost power with their cable, not one dead controller."""

    kind: Literal["deadman"] = "deadman"
    measurement: Measurement | None = None
    timeout_s: float = Field(gt=0)
    scope: Literal["device", "group"] = "device"
    group_by: str = "district"
    min_fraction: float = Field(default=1.0, gt=0, le=1)
    min_group_size: int = Field(default=2, ge=1)

    @model_validator(mode="after")
    def _grouped(self) -> DeadmanRule:
        if self.scope == "group" and self.measurement is None:
            raise ValueError("a group deadman needs a measurement (whose devices form the groups)")
        return self


class GatewayOfflineRule(_Rule):
    """Gateway status `offline` (the broker's last will) for for_s."""

    kind: Literal["gateway_offline"] = "gateway_offline"


class GatewayClockRule(_Rule):
    """A gateway's clock off from the rules service's by more than `max_offset_s`, for for_s.
    Measured on each telemetry batch as it arrives (its `sent` against this clock; see
    urbansense/clock_offset.py); the ingester stores that gateway's readings uncertain."""

    kind: Literal["gateway_clock"] = "gateway_clock"
    max_offset_s: float = Field(default=30.0, gt=0)


class CompositeRule(_Rule):
    """All of the named conditions breached within `within_s` on one device, or on at
    least `min_fraction` of the devices of a group (`scope: group`, `group_by` a label
    from the gateway inventory such as `circuit`, or `district`)."""

    kind: Literal["composite"] = "composite"
    measurement: Measurement
    all_of: list[str] = Field(min_length=1)
    within_s: float = Field(default=0, ge=0)
    scope: Literal["device", "group"] = "device"
    group_by: str = "district"
    min_fraction: float = Field(default=1.0, gt=0, le=1)
    #: Smallest group that can alert (a one-lamp "circuit" is the lamp-out rule's job).
    min_group_size: int = Field(default=1, ge=1)
    #: A member silent this long (its last sample, against the group's newest) is left out
    #: of the group's size: a dead controller must not blind the rule to its neighbours.
    member_silent_s: float = Field(default=300.0, gt=0)
    #: Conditions on each device's nearest neighbour that the named rule judges (by the
    #: locations in the gateway configs; any measurement): `nearby` must have been breached
    #: there within `nearby_within_s`, `not_nearby` must not (a dose rate raised with no
    #: rain at the nearest gauge). A device without a location or a neighbour: `nearby`
    #: fails, `not_nearby` holds. Device scope only.
    nearby: list[str] = Field(default_factory=list)
    not_nearby: list[str] = Field(default_factory=list)
    nearby_within_s: float = Field(default=600.0, gt=0)

    @model_validator(mode="after")
    def _near_scope(self) -> CompositeRule:
        if (self.nearby or self.not_nearby) and self.scope != "device":
            raise ValueError("nearby/not_nearby need scope: device")
        return self

    @property
    def parts(self) -> list[str]:
        return [*self.all_of, *self.nearby, *self.not_nearby]


class GeofenceRule(_Rule):
    """Moving devices against zones of a GeoJSON file (urbansense/zones.py): inside a zone
    (a banned area; with `speed_above` / `speed_below`, speeding in a zone or stopping in
    it) or outside every zone that applies (a route corridor). A zone applies to a device
    when its `classes` include the device's `class` label, it is in force at the local
    time (`hours`), and, with `match`, its property of that name equals the device's
    label of that name (a corridor's `route`). A sample without a satellite fix
    (`fix_metric` false) or a position tells nothing."""

    kind: Literal["geofence"] = "geofence"
    measurement: Measurement
    #: The GeoJSON file, relative to the rule file's folder (a family's zones/).
    zones: str
    when: Literal["inside", "outside"] = "inside"
    match: str | None = Field(default=None, pattern=METRIC_PATTERN)
    #: Breach only above this speed (km/h), or above the zone's `speed_limit_kmh`
    #: (`limit`, the lowest of the zones the device is in) plus `tolerance_pct` ...
    speed_above: float | Literal["limit"] | None = None
    tolerance_pct: float = Field(default=0.0, ge=0)
    #: ... or only below this speed (stopped: a long stop with `for_s`).
    speed_below: float | None = Field(default=None, gt=0)
    #: Only while one of these rules has fired within `alerts_within_s` on a device whose
    #: label `zone_label` equals the zone's property of that name (a tanker in a utility
    #: tunnel's zone while that tunnel's gas rises): one alert naming both.
    while_alerts: list[str] = Field(default_factory=list)
    zone_label: str | None = Field(default=None, pattern=METRIC_PATTERN)
    alerts_within_s: float = Field(default=900.0, gt=0)
    class_label: str = Field(default="class", pattern=METRIC_PATTERN)
    lat_metric: str = Field(default="lat", pattern=METRIC_PATTERN)
    lon_metric: str = Field(default="lon", pattern=METRIC_PATTERN)
    speed_metric: str = Field(default="speed_kmh", pattern=METRIC_PATTERN)
    fix_metric: str | None = Field(default="gnss_fix", pattern=METRIC_PATTERN)
    #: The zones' `hours` are this time zone's.
    timezone: str = "Asia/Shanghai"
    #: The rule file's folder (set by the loader: where `zones` is found).
    folder: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _coherent(self) -> GeofenceRule:
        if self.speed_above is not None and self.speed_below is not None:
            raise ValueError("give speed_above or speed_below, not both")
        if self.when == "outside" and (self.speed_above is not None or self.speed_below is not None
                                       or self.while_alerts):
            raise ValueError("when: outside (a corridor) takes no speed_above, speed_below or while_alerts")
        if bool(self.while_alerts) != (self.zone_label is not None):
            raise ValueError("while_alerts and zone_label go together (the zone property naming the other devices)")
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone: {self.timezone!r} is not a known time zone (e.g. Asia/Shanghai)") from None
        return self

    @property
    def zone_path(self) -> Path:
        return (self.folder or Path.cwd()) / self.zones

    @property
    def parts(self) -> list[str]:
        return list(self.while_alerts)


class PlumeRule(_Rule):
    """A leak's plume on the wind toward the devices of `measurement` (air stations):
    while a `sources` rule fires on a device (a leak at a chemical site, its place the
    source), each station's own wind (`wind_speed_metric`, `wind_dir_metric`) carries a
    release of `release_per_unit` g/s per unit of the source's reading (at least
    `assume_at_least`: a leak worth an alarm is taken to reach it) as a Gaussian plume
    (urbansense/dispersion.py, Briggs `stability`); a station whose predicted
    concentration reaches `warn_at` and whom the plume front reaches within `horizon_s`
    is warned, with the time (`{eta_min}`), the source (`{source}`) and the places of
    `places` (a GeoJSON file beside the rule file) the plume crosses, with theirs
    (`{places}`)."""

    kind: Literal["plume"] = "plume"
    measurement: Measurement
    sources: list[str] = Field(min_length=1)
    within_s: float = Field(default=900.0, gt=0)
    release_per_unit: float = Field(gt=0)
    assume_at_least: float = Field(default=0.0, ge=0)
    warn_at: float = Field(gt=0)
    #: A warned station stays warned while its prediction is above this (default: half
    #: of warn_at), so a wind veering a degree does not flap it.
    clear_at: float | None = Field(default=None, gt=0)
    horizon_s: float = Field(default=3600.0, gt=0)
    stability: Literal["A", "B", "C", "D", "E", "F"] = "D"
    wind_speed_metric: str = Field(default="wind_speed_ms", pattern=METRIC_PATTERN)
    wind_dir_metric: str = Field(default="wind_dir_deg", pattern=METRIC_PATTERN)
    #: The wind direction's uncertainty (degrees either side): the prediction is the
    #: highest over that cone.
    wind_spread_deg: float = Field(default=6.0, ge=0, le=45)
    #: Below this wind (m/s) a plume has no direction: nothing is predicted.
    min_wind_ms: float = Field(default=0.5, gt=0)
    places: str | None = None
    #: The rule file's folder (set by the loader: where `places` is found).
    folder: Path | None = Field(default=None, exclude=True)

    @property
    def parts(self) -> list[str]:
        return list(self.sources)

    @property
    def places_path(self) -> Path | None:
        return None if self.places is None else (self.folder or Path.cwd()) / self.places


class DrivingTimeRule(_Hysteresis):
    """Continuous driving (hours) since the last rest: moving above `moving_above`
    (km/h, the rule's metric) counts; a stop of at least `rest_s` resets it. Levels in
    hours (threshold 3.75 warns a quarter of an hour before the 4 h limit)."""

    kind: Literal["driving_time"] = "driving_time"
    moving_above: float = Field(default=5.0, ge=0)
    rest_s: float = Field(default=1200.0, gt=0)


def _table_path(name: str) -> Path:
    """A standard's table in rules/tables/, or the error naming those there are."""
    path = TABLES_DIR / name
    if not path.is_file():
        have = ", ".join(sorted(p.name for p in TABLES_DIR.glob("*.yaml")))
        raise ValueError(f"table {name!r} not found in rules/tables/ (have: {have})")
    return path


class AqiRule(_Rule):
    """HJ 633-2012 AQI from rolling means; writes `aqi` points and alerts above threshold."""

    kind: Literal["aqi"] = "aqi"
    measurement: Measurement
    table: str = "aqi-hj633-2012.yaml"
    #: pollutant/period rows that make up the AQI, e.g. pm25/24h, o3/8h.
    inputs: list[str] = Field(default_factory=lambda: ["pm25/24h", "pm10/24h", "so2/1h", "no2/1h",
                                                        "co/1h", "o3/1h", "o3/8h"])
    #: Feed these pollutants' 24 h rows with the 1 h mean (the real-time hourly release).
    hourly_pm: bool = True
    threshold: float = 150
    critical_threshold: float | None = 200
    clear: float | None = None
    #: How often (event time) each station's AQI is worked out, written to `aqi` and checked.
    write_every_s: float = Field(default=60, gt=0)

    @model_validator(mode="after")
    def _inputs(self) -> AqiRule:
        table = AqiTable.load(_table_path(self.table))
        for item in self.inputs:
            pollutant, sep, period = item.partition("/")
            if not sep:
                raise ValueError(f"inputs: {item!r} should be pollutant/period, e.g. pm25/24h")
            try:
                table.row(pollutant, period)
            except AqiTableError as exc:
                raise ValueError(f"inputs: {exc}") from None
        return self


class WaterClassRule(_Rule):
    """Surface-water class I-V (GB 3838-2002) per station from rolling means of its
    parameters; writes `water_class` points and alerts while a station is worse than its
    target class (critical when worse than class V)."""

    kind: Literal["water_class"] = "water_class"
    measurement: Measurement
    table: str = "surface-water-gb3838-2002.yaml"
    #: The parameters that make up the class (each reads its metric from the table).
    parameters: list[str] = Field(default_factory=lambda: ["do", "codmn", "nh3n", "tp", "ph"])
    #: Rolling mean window for each parameter.
    window_s: float = Field(default=3600, gt=0)
    #: Alert while the class is worse than this (1-5 for I-V) ...
    target: int = Field(default=3, ge=1, le=5)
    #: ... or than the station's own target, from this label (I-V or 1-5).
    target_label: str | None = Field(default=None, pattern=METRIC_PATTERN)
    #: The label naming the water body: `lake` selects the lake rows (total phosphorus).
    waterbody_label: str = "waterbody"
    #: How often (event time) each station's class is worked out, written and checked.
    write_every_s: float = Field(default=300, gt=0)

    @model_validator(mode="after")
    def _known(self) -> WaterClassRule:
        table = SurfaceWaterTable.load(_table_path(self.table))
        for name in self.parameters:
            try:
                table.parameter(name)
            except SurfaceWaterTableError as exc:
                raise ValueError(f"parameters: {exc}") from None
        return self


RULE_KINDS: dict[str, type[_Rule]] = {
    "threshold": ThresholdRule, "rate": RateRule, "forecast": ForecastRule, "anomaly": AnomalyRule,
    "flatline": FlatlineRule, "drift": DriftRule, "deadman": DeadmanRule,
    "gateway_offline": GatewayOfflineRule, "gateway_clock": GatewayClockRule, "composite": CompositeRule,
    "aqi": AqiRule,
    "counter_check": CounterCheckRule, "water_class": WaterClassRule, "accumulation": AccumulationRule,
    "tide_forecast": TideForecastRule, "geofence": GeofenceRule, "driving_time": DrivingTimeRule,
    "plume": PlumeRule,
}
Rule = (ThresholdRule | RateRule | ForecastRule | AnomalyRule | FlatlineRule | DriftRule
        | DeadmanRule | GatewayOfflineRule | GatewayClockRule | CompositeRule | AqiRule | CounterCheckRule
        | WaterClassRule
        | AccumulationRule | TideForecastRule | GeofenceRule | DrivingTimeRule | PlumeRule)


def _load_file(f: Path, problems: list[str]) -> list[Rule]:
    shown = _display(f)
    raw = read_yaml(f)
    if not isinstance(raw, dict):
        problems.append(f"{shown}: a rule file is a mapping with domain, version and rules")
        return []
    for key in raw:
        if key not in ("domain", "version", "rules", "description"):
            problems.append(f"{shown}: unknown top-level key {key!r}\n  fix: use domain, version, rules")
    domain = raw.get("domain")
    if domain not in DOMAINS:
        problems.append(f"{shown}: domain: must be one of {', '.join(DOMAINS)}, got {domain!r}")
    items = raw.get("rules") or []
    if not isinstance(items, list):
        problems.append(f"{shown}: rules: must be a list of rules")
        return []
    out: list[Rule] = []
    for i, item in enumerate(items):
        rid = item.get("id", "?") if isinstance(item, dict) else "?"
        where = f"{shown}: rule {rid!r} (rules[{i}])"
        if not isinstance(item, dict):
            problems.append(f"{where}: must be a mapping")
            continue
        kind = item.get("kind", "threshold")
        model = RULE_KINDS.get(kind)
        if model is None:
            problems.append(f"{where}: kind: unknown kind {kind!r}\n  fix: use one of {', '.join(RULE_KINDS)}")
            continue
        try:
            rule: Any = model.model_validate(item)
        except ValidationError as exc:
            problems.extend(format_validation_error(where, model, exc, item))
            continue
        if isinstance(rule, GeofenceRule | PlumeRule):
            rule.folder = f.parent
            path = rule.zone_path if isinstance(rule, GeofenceRule) else rule.places_path
            try:
                if path is not None:
                    ZoneSet.load(path)
            except ZoneError as exc:
                key = "zones" if isinstance(rule, GeofenceRule) else "places"
                problems.extend(f"{where}: {key}: {p}" for p in exc.problems)
                continue
        if domain in DOMAINS and rule.domain != domain and domain != "system":
            problems.append(f"{where}: measurement {rule.domain!r} does not belong in a {domain!r} file")
        out.append(rule)
    return out


def rule_files(path: Path | None = None) -> list[Path]:
    """The files of a catalogue: a folder's *.yaml, one file, or (None) the default
    catalogue: every family's rules.yaml and the system rules."""
    if path is None:
        return [*registry.rule_files(), *sorted(CATALOG_DIR.glob("*.yaml"))]
    return sorted(path.glob("*.yaml")) if path.is_dir() else [path]


def load_catalog(path: Path | None = None) -> list[Rule]:
    """All rules of a catalogue (see rule_files); raises ConfigError with every problem."""
    files = rule_files(path)
    if not files:
        raise ConfigError([f"{_display(path or CATALOG_DIR)}: no rule files (*.yaml) here"])
    rules: list[Rule] = []
    problems: list[str] = []
    where: dict[str, str] = {}
    for f in files:
        for rule in _load_file(f, problems):
            if rule.id in where:
                problems.append(f"{_display(f)}: rule {rule.id!r}: already defined in {where[rule.id]}\n"
                                "  fix: rename one")
                continue
            where[rule.id] = _display(f)
            rules.append(rule)
    by_id = {r.id: r for r in rules}
    for r in rules:
        if isinstance(r, CompositeRule):
            for dep in r.all_of:
                d = by_id.get(dep)
                if d is None:
                    problems.append(f"{where[r.id]}: rule {r.id!r}: all_of: no rule {dep!r}")
                elif (getattr(d, "measurement", None) != r.measurement
                      or isinstance(d, CompositeRule | AqiRule | WaterClassRule)):
                    problems.append(f"{where[r.id]}: rule {r.id!r}: all_of: {dep!r} must be a "
                                    f"{r.measurement} device rule (not composite, aqi or water_class)")
            for key, deps in (("nearby", r.nearby), ("not_nearby", r.not_nearby)):
                for dep in deps:
                    d = by_id.get(dep)
                    if d is None:
                        problems.append(f"{where[r.id]}: rule {r.id!r}: {key}: no rule {dep!r}")
                    elif getattr(d, "measurement", None) is None or isinstance(d, CompositeRule | AqiRule
                                                                               | WaterClassRule | DeadmanRule):
                        problems.append(f"{where[r.id]}: rule {r.id!r}: {key}: {dep!r} must be a device rule "
                                        "(not composite, deadman, aqi or water_class)")
        if isinstance(r, PlumeRule):
            problems.extend(_device_rule_problems(
                f"{where[r.id]}: rule {r.id!r}: sources", r.sources, by_id, (GeofenceRule, PlumeRule),
                "(a leak's alarm or early warning at a located detector)"))
        if isinstance(r, GeofenceRule):
            problems.extend(_device_rule_problems(
                f"{where[r.id]}: rule {r.id!r}: while_alerts", r.while_alerts, by_id, (GeofenceRule,),
                "(not composite, deadman, aqi, water_class or geofence)"))
        if isinstance(r, TideForecastRule) and r.rain_from is not None:
            d = by_id.get(r.rain_from)
            if not isinstance(d, AccumulationRule):
                problems.append(f"{where[r.id]}: rule {r.id!r}: rain_from: {r.rain_from!r} must be an accumulation "
                                "rule (the rain at the nearest gauge)")
        if r.respond is not None:
            problems.extend(f"{where[r.id]}: rule {r.id!r}: respond: {p}" for p in _unattended_problems(r))
    if problems:
        raise ConfigError(problems)
    return rules


def _device_rule_problems(where: str, deps: list[str], by_id: dict[str, Rule], also_not: tuple[type, ...],
                          what: str) -> list[str]:
    """The named rules that are not device rules another rule may read the breaches of
    (unknown, or composite, aqi, water_class, deadman, or one of `also_not`)."""
    excluded = (CompositeRule, AqiRule, WaterClassRule, DeadmanRule, *also_not)
    return [f"{where}: {dep!r} must name a device rule {what}" for dep in deps
            if (d := by_id.get(dep)) is None or getattr(d, "measurement", None) is None or isinstance(d, excluded)]


def _unattended_problems(rule: Rule) -> list[str]:
    """Why the family of a rule's `respond` command does not let a rule send it alone."""
    from urbansense import registry

    assert rule.respond is not None
    cmd = rule.respond
    measurement = getattr(rule, "measurement", None)
    fam = registry.families().get(measurement) if measurement else None
    if fam is None:
        return [f"the rule reads no family's devices (measurement {measurement!r})\n"
                "  fix: respond only from a rule on one family's devices"]
    info = fam.fields.get(cmd.field)
    if info is None or not info.writable:
        return [f"{cmd.field!r} is not a writable field of family {fam.family!r}\n"
                "  fix: name a field its family.yaml marks writable"]
    if not any(type(v) is type(cmd.value) and v == cmd.value for v in info.unattended):
        allowed = ", ".join(repr(v) for v in info.unattended) or "none"
        return [f"family {fam.family!r} does not let a rule write {cmd.field} = {cmd.value!r} without a person "
                f"(unattended values: {allowed})\n"
                "  fix: use recommend: (an operator confirms it), or list the value under the field's "
                "unattended: in the family.yaml"]
    return []
