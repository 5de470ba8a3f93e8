"""The one codec: JSON encode (orjson) and decode (msgspec) of the wire contract, with validation.

Every refusal raises :class:`PayloadError` whose message names the exact place in the
payload and what is wrong with it, e.g.
``samples[3].f.pressure_mpa: NaN is not allowed (report the sample with q="bad")``.

Decoding a batch is strict about the envelope (a batch whose envelope is wrong is
refused whole) but lenient per sample: :func:`decode_batch_lenient` returns the good
samples and the reasons for each bad one, so one bad sample never takes its good
neighbours down with it.

Bounds, the same on every decode path (the ingester's C accelerator and plain path
hand anything beyond them to the full path, which refuses with these reasons): the
payload's size (`max_bytes`), JSON nesting (MAX_DEPTH, anywhere, unknown keys included),
samples per batch (MAX_SAMPLES), fields per sample (MAX_FIELDS), a string value or
`err` (MAX_STRING_FIELD characters), integers (64-bit signed; JSON integers of any size
are read exactly, never rounded to a float), and the reserved field names
(identifiers.RESERVED_FIELDS).
"""

from __future__ import annotations

import math
from operator import attrgetter
from typing import Annotated, Any, Literal

import msgspec
import orjson

from urbansense import registry, topics
from urbansense.identifiers import (
    ALERT_STATES,
    DOMAINS,
    MEASUREMENTS,
    QUALITIES,
    RESERVED_FIELDS,
    RESERVED_STATUS_FIELDS,
    SEVERITIES,
    identifier_problem,
    metric_problem,
)
from urbansense.schema import (
    AlertEvent,
    FieldValue,
    Forecast,
    GatewayStatus,
    Sample,
    TelemetryBatch,
)

CONTRACT_VERSION = 1
#: Default largest payload accepted anywhere (broker, ingester); configurable per component.
MAX_PAYLOAD_BYTES = 256 * 1024
#: A string field value or an `err` text, in characters.
MAX_STRING_FIELD = 1024
#: JSON nesting anywhere in a payload (a telemetry batch needs 4: batch, samples, sample, f).
MAX_DEPTH = 16
#: Samples in one batch (an edge sends at most config.BatchSettings.max_samples).
MAX_SAMPLES = 5000
#: Fields in one sample, or stats in one gateway status.
MAX_FIELDS = 64
#: Sensors an alert event names as contributing (a spatial rule's group can be large).
MAX_CONTRIBUTORS = 64
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class PayloadError(ValueError):
    """A payload that breaks the wire contract; the message says where and why."""


def _problem(path: str, msg: str) -> PayloadError:
    return PayloadError(f"{path}: {msg}" if path else msg)


def _loads(payload: bytes | str, what: str, max_bytes: int) -> Any:
    if len(payload) > max_bytes:
        raise PayloadError(
            f"{what} is {len(payload)} bytes, larger than the limit of {max_bytes} bytes; "
            "send smaller batches"
        )
    too_deep = False
    try:
        # msgspec, not orjson: orjson rounds integers beyond 64 bits to floats, which would
        # then pass as floats; msgspec reads them exactly and the range checks refuse them
        value = msgspec.json.decode(payload)
    except msgspec.DecodeError as exc:
        raise PayloadError(f"{what} is not valid UTF-8 JSON: {exc}") from None
    except RecursionError:  # nested far deeper than MAX_DEPTH
        too_deep = True
    if too_deep or _deeper_than(value, MAX_DEPTH):
        raise PayloadError(f"{what} is nested deeper than {MAX_DEPTH} levels of arrays and objects; "
                           "send flat data (a batch needs 4)")
    return value


def _deeper_than(value: Any, levels: int) -> bool:
    """Whether `value` nests more than `levels` arrays and objects inside each other."""
    kind = type(value)
    if kind is dict:
        children = value.values()
    elif kind is list:
        children = value
    else:
        return False
    if levels <= 0:
        return True
    return any((type(child) is dict or type(child) is list) and _deeper_than(child, levels - 1)
               for child in children)


def _require(obj: dict[str, Any], key: str, path: str) -> Any:
    if key not in obj:
        raise _problem(f"{path}{key}" if not path else f"{path}.{key}", "is missing")
    return obj[key]


def _int(value: Any, path: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _problem(path, f"must be an integer, got {_describe(value)}")
    if minimum is not None and value < minimum:
        raise _problem(path, f"must be >= {minimum}, got {value}")
    if not INT64_MIN <= value <= INT64_MAX:
        raise _problem(path, f"integer {value} does not fit in 64 bits")
    return value


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _problem(path, f"must be a string, got {_describe(value)}")
    return value


def _label(value: Any, path: str, limit: int = 100) -> str:
    """A short free text (a version, a hash)."""
    text = _str(value, path)
    if not 0 < len(text) <= limit:
        raise _problem(path, f"must be 1..{limit} characters, got {len(text)}")
    return text


def _ident(value: Any, path: str) -> str:
    why = identifier_problem(value)
    if why:
        raise _problem(path, why)
    return str(value)


def _one_of(value: Any, allowed: tuple[str, ...], path: str) -> str:
    if value not in allowed:
        raise _problem(path, f"must be one of {', '.join(allowed)}; got {value!r}")
    return str(value)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"


def check_field_value(value: Any, path: str) -> FieldValue:
    """Validate one field value: finite float, int64, bool or short string."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise _problem(path, f"integer {value} does not fit in 64 bits")
        return value
    if isinstance(value, float):
        if math.isnan(value):
            raise _problem(path, 'NaN is not allowed (report the sample with q="bad")')
        if math.isinf(value):
            raise _problem(path, 'infinity is not allowed (report the sample with q="bad")')
        return value
    if isinstance(value, str):
        if len(value) > MAX_STRING_FIELD:
            raise _problem(path, f"string of {len(value)} characters exceeds {MAX_STRING_FIELD}")
        return value
    raise _problem(path, f"must be a number, boolean or string, got {_describe(value)}")


# Hot-path caches (the ingester validates ~10^5 samples/s): names already known to be
# valid skip the regular expressions. Bounded so that a flood of distinct names cannot
# grow memory; clearing only costs a few re-checks.
_KNOWN_CACHE_MAX = 65536
_known_identifiers: set[str] = set()
_known_metrics: set[str] = set()
_MEASUREMENT_SET = frozenset(MEASUREMENTS)

#: The fields each family declares and their types (float, int, bool, string), from the
#: domain registry. A declared field must arrive in its type: an integer into a float
#: field and a whole float into an integer field are converted (exactly, up to 2^53),
#: anything else is refused with the field and the type it wants, so InfluxDB never sees
#: two types for one field. Undeclared fields are stored as sent, or refused in a family
#: that says so (docs/ARCHITECTURE.md, "Field types").
FIELD_TYPES: dict[str, dict[str, str]] = {
    name: {key: info.type for key, info in fam.fields.items()} for name, fam in registry.families().items()}
_PY_TYPES: dict[str, type] = {"float": float, "int": int, "bool": bool, "string": str}
_TYPE_WORDS = {"float": "a number", "int": "an integer", "bool": "true or false", "string": "a string"}
_EXACT_INT_IN_FLOAT = 2**53
_EXACT: dict[str, dict[str, type]] = {
    m: {k: _PY_TYPES[t] for k, t in fields.items()} for m, fields in FIELD_TYPES.items()}


#: Families that refuse fields they do not declare (family.yaml `undeclared_fields: refuse`).
STRICT_MEASUREMENTS: frozenset[str] = frozenset(
    name for name, fam in registry.families().items() if fam.undeclared_fields == "refuse")


def _declared_types_hold(m: str, fields: dict[str, Any]) -> bool:
    """Every declared field of the sample has exactly its Python type, and a strict family
    gets no other field (the fast paths' check: anything else takes check_sample, which
    converts or refuses)."""
    declared = _EXACT.get(m)
    if declared:
        strict = m in STRICT_MEASUREMENTS
        for key, value in fields.items():
            want = declared.get(key)
            if want is None:
                if strict:
                    return False
            elif type(value) is not want:
                return False
    return True


def to_declared(m: str, key: str, value: FieldValue) -> FieldValue:
    """`value` in the type family `m` declares for `key`, where that loses nothing: an
    integer into a float field (up to 2^53), a whole float into an integer field;
    anything else unchanged (the ingester then refuses what does not fit). Edge agents
    apply it when they decode, so their batches arrive typed."""
    want = FIELD_TYPES.get(m, {}).get(key)
    if want == "float" and type(value) is int and -_EXACT_INT_IN_FLOAT <= value <= _EXACT_INT_IN_FLOAT:
        return float(value)
    if want == "int" and isinstance(value, float) and value.is_integer() and abs(value) <= _EXACT_INT_IN_FLOAT:
        return int(value)
    return value


def _as_declared(m: str, key: str, value: FieldValue, path: str) -> FieldValue:
    want = FIELD_TYPES.get(m, {}).get(key)
    if want is None:
        if m in STRICT_MEASUREMENTS:
            raise _problem(path, f"{key} is not a field of family {m}, which takes only the fields it declares; "
                                 f"declare it in the family's family.yaml or leave it out")
        return value
    value = to_declared(m, key, value)
    if type(value) is _PY_TYPES[want]:
        return value
    raise _problem(path, f"{m} field {key} is {_TYPE_WORDS[want]} ({want}, the family's declared type), "
                         f"got {_describe(value)}; send it as {want} or fix the device profile's decoding")


def _known_identifier(value: str) -> bool:
    if value in _known_identifiers:
        return True
    if identifier_problem(value) is not None:
        return False
    if len(_known_identifiers) >= _KNOWN_CACHE_MAX:
        _known_identifiers.clear()
    _known_identifiers.add(value)
    return True


def _known_metric(value: str) -> bool:
    if value in _known_metrics:
        return True
    if metric_problem(value) is not None:
        return False
    if len(_known_metrics) >= _KNOWN_CACHE_MAX:
        _known_metrics.clear()
    _known_metrics.add(value)
    return True


_plain_fields: set[str] = set()  # metric names known not to be reserved


def _plain_field(key: str) -> bool:
    """A valid metric name that is not reserved (the full path refuses those, with a reason)."""
    if key in RESERVED_FIELDS or not _known_metric(key):
        return False
    if len(_plain_fields) >= _KNOWN_CACHE_MAX:
        _plain_fields.clear()
    _plain_fields.add(key)
    return True


def _fast_sample(raw: dict[str, Any]) -> Sample | None:
    """The common case (a good or uncertain sample with plain numeric fields) accepted
    with type checks only; returns None for anything else, which then takes the full
    path in check_sample (same result, and the exact refusal messages)."""
    dev = raw.get("dev")
    m = raw.get("m")
    t = raw.get("t")
    f = raw.get("f")
    q = raw.get("q", "good")
    err = raw.get("err")
    urgent = raw.get("urgent", False)
    if not (
        type(dev) is str and type(m) is str and type(t) is int and 1 <= t <= INT64_MAX
        and type(f) is dict and f and len(f) <= MAX_FIELDS and (q == "good" or q == "uncertain")
        and type(q) is str
        and (err is None or (q == "uncertain" and type(err) is str and len(err) <= MAX_STRING_FIELD))
        and (urgent is False or urgent is True)
        and m in _MEASUREMENT_SET and (dev in _known_identifiers or _known_identifier(dev))
    ):
        return None
    for key, value in f.items():
        kind = type(value)
        if kind is float:
            if value - value != 0.0:  # NaN or infinity
                return None
        elif kind is int:
            if not INT64_MIN <= value <= INT64_MAX:
                return None
        elif kind is not bool:
            return None
        if key not in _plain_fields and not _plain_field(key):  # a metric name, not reserved
            return None
    if not _declared_types_hold(m, f):
        return None
    return Sample(dev, m, t, f, q, err, urgent)


def check_sample(raw: Any, path: str = "sample") -> Sample:
    if type(raw) is dict:
        fast = _fast_sample(raw)
        if fast is not None:
            return fast
    if not isinstance(raw, dict):
        raise _problem(path, f"must be an object, got {_describe(raw)}")
    dev = _ident(_require(raw, "dev", path), f"{path}.dev")
    m = _one_of(_require(raw, "m", path), MEASUREMENTS, f"{path}.m")
    t = _int(_require(raw, "t", path), f"{path}.t", minimum=1)
    q = _one_of(raw.get("q", "good"), QUALITIES, f"{path}.q")
    fields_raw = _require(raw, "f", path)
    if not isinstance(fields_raw, dict):
        raise _problem(f"{path}.f", f"must be an object, got {_describe(fields_raw)}")
    if len(fields_raw) > MAX_FIELDS:
        raise _problem(f"{path}.f", f"{len(fields_raw)} fields, more than the limit of {MAX_FIELDS}; "
                                    "split the device's fields over two samples")
    reserved = RESERVED_FIELDS.intersection(fields_raw)
    if reserved:
        raise _problem(f"{path}.f", f"field name(s) {', '.join(sorted(reserved))} are reserved: the ingester "
                                    "writes them itself (the point's tags and time, the sample's quality); "
                                    "rename the metric")
    fields: dict[str, FieldValue] = {}
    for key, value in fields_raw.items():
        why = metric_problem(key)
        if why:
            raise _problem(f"{path}.f", why)
        fields[key] = _as_declared(m, key, check_field_value(value, f"{path}.f.{key}"), f"{path}.f.{key}")
    err = raw.get("err")
    if err is not None:
        err = _str(err, f"{path}.err")
        check_field_value(err, f"{path}.err")  # the string field's length bound, and its message
        if q == "good" and err:
            raise _problem(f"{path}.err", 'only a sample with q="bad" or q="uncertain" says why; '
                                          'send q="uncertain" to keep the reason, or leave "err" out')
    if q == "bad":
        if fields:
            raise _problem(f"{path}.f", 'a sample with q="bad" carries no fields')
        if not err:
            raise _problem(f"{path}.err", 'a sample with q="bad" must say why in "err"')
    elif not fields:
        raise _problem(f"{path}.f", f'a sample with q="{q}" needs at least one field')
    urgent = raw.get("urgent", False)
    if not isinstance(urgent, bool):
        raise _problem(f"{path}.urgent", f"must be true or false, got {_describe(urgent)}")
    return Sample(dev=dev, m=m, t=t, f=fields, q=q, err=err, urgent=urgent)


def _check_envelope(raw: Any) -> tuple[str, str, int, int, list[Any]]:
    if not isinstance(raw, dict):
        raise PayloadError(f"telemetry batch must be a JSON object, got {_describe(raw)}")
    v = _require(raw, "v", "")
    if v != CONTRACT_VERSION:
        raise _problem("v", f"unsupported contract version {v!r}; this build speaks v1")
    gw = _ident(_require(raw, "gw", ""), "gw")
    district = _ident(_require(raw, "district", ""), "district")
    seq = _int(_require(raw, "seq", ""), "seq", minimum=0)
    sent = _int(_require(raw, "sent", ""), "sent", minimum=1)
    samples = _require(raw, "samples", "")
    if not isinstance(samples, list):
        raise _problem("samples", f"must be a list, got {_describe(samples)}")
    if len(samples) > MAX_SAMPLES:
        raise _problem("samples", f"{len(samples)} samples, more than the limit of {MAX_SAMPLES}; "
                                  "send smaller batches")
    return gw, district, seq, sent, samples


def decode_batch(payload: bytes | str, *, max_bytes: int = MAX_PAYLOAD_BYTES) -> TelemetryBatch:
    """Decode a telemetry batch; any problem anywhere raises PayloadError."""
    gw, district, seq, sent, raw_samples = _check_envelope(
        _loads(payload, "telemetry batch", max_bytes)
    )
    samples = [check_sample(s, f"samples[{i}]") for i, s in enumerate(raw_samples)]
    return TelemetryBatch(gw=gw, district=district, seq=seq, sent=sent, samples=samples)


def decode_batch_lenient(
    payload: bytes | str, *, max_bytes: int = MAX_PAYLOAD_BYTES
) -> tuple[TelemetryBatch, list[str]]:
    """Decode a batch keeping every good sample; returns (batch, reasons for bad samples).

    Raises PayloadError only when the envelope itself is broken.
    """
    gw, district, seq, sent, raw_samples = _check_envelope(
        _loads(payload, "telemetry batch", max_bytes)
    )
    samples: list[Sample] = []
    problems: list[str] = []
    for i, raw in enumerate(raw_samples):
        fast = _fast_sample(raw) if type(raw) is dict else None
        if fast is not None:
            samples.append(fast)
            continue
        try:
            samples.append(check_sample(raw, f"samples[{i}]"))
        except PayloadError as exc:
            problems.append(str(exc))
    return TelemetryBatch(gw=gw, district=district, seq=seq, sent=sent, samples=samples), problems


# ---------------------------------------------------------------- the plain fast path
# The ordinary batch (every sample good, fields all finite floats or booleans, names
# already known to be valid) decoded by msgspec straight into typed structs, checked in
# bulk (whole-batch set operations, no per-sample Python code). Anything else returns
# None and takes decode_batch_lenient, so refusals and their messages stay as they are.


#: An integer no integer satisfies: in a field, a JSON integer is refused (the full path
#: writes it as an InfluxDB integer), where a plain `float` would take it as a float.
_NoInteger = Annotated[int, msgspec.Meta(ge=1, le=0)]


class PlainSample(msgspec.Struct, omit_defaults=True, gc=False, forbid_unknown_fields=True):
    """A good sample. The field order is the one ingest.points' transcoder re-encodes:
    measurement, device, fields, time (q, err and urgent left out at their defaults).
    gc=False: it holds no containers that could make a cycle (fewer garbage collections)."""

    m: str  # one of identifiers.MEASUREMENTS, checked in bulk by decode_plain_batch
    dev: str
    f: Annotated[dict[str, float | bool | _NoInteger], msgspec.Meta(min_length=1, max_length=MAX_FIELDS)]
    t: Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)]
    q: Literal["good"] = "good"
    err: None = None
    urgent: bool = False


class PlainBatch(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    """Unknown keys send the batch to the full path (which ignores them, within MAX_DEPTH):
    skipping them here would take nesting the full path refuses."""

    v: Literal[1]
    gw: str
    district: str
    seq: Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
    sent: Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)]
    samples: Annotated[list[PlainSample], msgspec.Meta(max_length=MAX_SAMPLES)]


_plain_decoder = msgspec.json.Decoder(PlainBatch)
_M, _DEV, _F, _URGENT = attrgetter("m"), attrgetter("dev"), attrgetter("f"), attrgetter("urgent")


def _all_known(values: set[str], known: set[str], check: Any) -> bool:
    return values <= known or all(value in known or check(value) for value in values)


def decode_plain_batch(payload: bytes, *, max_bytes: int = MAX_PAYLOAD_BYTES) -> PlainBatch | None:
    """The batch when it is plain (see above): valid envelope, every sample good with an
    identifier `dev`, at least one field, finite float or boolean values under valid metric
    names other than time/device/district/gateway, `t` >= 1, and no `urgent` sample.
    None for anything else (including any error): decode it with decode_batch_lenient,
    which gives the same samples or the reasons. Time windows are the caller's."""
    if len(payload) > max_bytes:
        return None
    try:
        batch = _plain_decoder.decode(payload)
    except (msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError
        return None
    if not (_known_identifier(batch.gw) and _known_identifier(batch.district)):
        return None
    samples = batch.samples
    if samples and (any(map(_URGENT, samples)) or not _MEASUREMENT_SET.issuperset(map(_M, samples))
                    or not _all_known(set(map(_DEV, samples)), _known_identifiers, _known_identifier)
                    or not _all_known(set().union(*map(_F, samples)), _plain_fields, _plain_field)
                    or not all(_declared_types_hold(s.m, s.f) for s in samples)):
        return None
    # msgspec refuses numbers out of float range (1e999) and JSON has no NaN: all finite
    return batch


def encode_batch(batch: TelemetryBatch) -> bytes:
    """Validate and encode a batch (refuses what decode would refuse, e.g. NaN)."""
    _ident(batch.gw, "gw")
    _ident(batch.district, "district")
    for i, sample in enumerate(batch.samples):
        check_sample(sample.to_wire(), f"samples[{i}]")
    return orjson.dumps(batch.to_wire())


def decode_status(payload: bytes | str) -> GatewayStatus:
    raw = _loads(payload, "gateway status", MAX_PAYLOAD_BYTES)
    if not isinstance(raw, dict):
        raise PayloadError(f"gateway status must be a JSON object, got {_describe(raw)}")
    if raw.get("v") != CONTRACT_VERSION:
        raise _problem("v", f"unsupported contract version {raw.get('v')!r}; this build speaks v1")
    state = _one_of(_require(raw, "state", ""), ("online", "offline"), "state")
    t = _int(_require(raw, "t", ""), "t", minimum=1)
    version, config_hash, config_version = (
        None if raw.get(key) is None else _label(raw[key], key) for key in ("version", "config_hash", "config_version"))
    devices_raw = raw.get("devices", {})
    if not isinstance(devices_raw, dict):
        raise _problem("devices", f"must be an object, got {_describe(devices_raw)}")
    devices: dict[str, str] = {}
    for dev, dev_state in devices_raw.items():
        _ident(dev, f"devices.{dev}")
        devices[dev] = _one_of(dev_state, ("ok", "fail"), f"devices.{dev}")
    stats_raw = raw.get("stats", {})
    if not isinstance(stats_raw, dict):
        raise _problem("stats", f"must be an object, got {_describe(stats_raw)}")
    if len(stats_raw) > MAX_FIELDS:
        raise _problem("stats", f"{len(stats_raw)} stats, more than the limit of {MAX_FIELDS}")
    reserved = RESERVED_STATUS_FIELDS.intersection(stats_raw)
    if reserved:
        raise _problem("stats", f"{', '.join(sorted(reserved))} are computed by the ingester from the status "
                                "(state, devices); rename the stat")
    stats: dict[str, float] = {}
    for key, value in stats_raw.items():
        why = metric_problem(key)
        if why:
            raise _problem("stats", why)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _problem(f"stats.{key}", f"must be a number, got {_describe(value)}")
        stats[key] = check_field_value(value, f"stats.{key}")  # type: ignore[assignment]
    return GatewayStatus(state=state, t=t, version=version, devices=devices, stats=stats, config_hash=config_hash,
                         config_version=config_version)


def encode_status(status: GatewayStatus) -> bytes:
    payload = orjson.dumps(status.to_wire())
    decode_status(payload)  # refuse what a receiver would refuse
    return payload


def _opt_number(raw: dict[str, Any], key: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _problem(key, f"must be a number or null, got {_describe(value)}")
    check_field_value(float(value), key)
    return float(value)


def decode_alert(payload: bytes | str) -> AlertEvent:
    raw = _loads(payload, "alert event", MAX_PAYLOAD_BYTES)
    if not isinstance(raw, dict):
        raise PayloadError(f"alert event must be a JSON object, got {_describe(raw)}")
    if raw.get("v") != CONTRACT_VERSION:
        raise _problem("v", f"unsupported contract version {raw.get('v')!r}; this build speaks v1")
    device = raw.get("device")
    if device is not None:
        device = _ident(device, "device")
    metric = raw.get("metric")
    if metric is not None:
        why = metric_problem(metric)
        if why:
            raise _problem("metric", why)
    forecast = None
    fc = raw.get("forecast")
    if fc is not None:
        if not isinstance(fc, dict):
            raise _problem("forecast", f"must be an object or null, got {_describe(fc)}")
        forecast = Forecast(
            crosses_at=_int(_require(fc, "crosses_at", "forecast"), "forecast.crosses_at"),
            eta_s=float(_opt_number(fc, "eta_s") or 0.0),
        )
    command = raw.get("command")
    if command is not None:
        if not isinstance(command, dict) or not all(k in command for k in ("topic", "dev", "field", "value")):
            raise _problem("command", 'must be {"topic", "dev", "field", "value"} or absent')
        try:
            topics.parse_gateway_topic(_str(command["topic"], "command.topic"))
        except topics.TopicError as exc:
            raise _problem("command.topic", str(exc)) from None
        _ident(command["dev"], "command.dev")
        why = metric_problem(command["field"])
        if why:
            raise _problem("command.field", why)
        if not isinstance(command["value"], bool | int | float):
            raise _problem("command.value", f"must be a number or true/false, got {_describe(command['value'])}")
        if not isinstance(command.get("auto", False), bool):
            raise _problem("command.auto", f"must be true/false or absent, got {_describe(command['auto'])}")
    response = raw.get("response")
    if response is not None and (not isinstance(response, dict) or not isinstance(response.get("ok"), bool)):
        raise _problem("response", 'must be {"id", "ok": true/false, ...} or absent')
    contributors = raw.get("contributors")
    if contributors is not None:
        if not isinstance(contributors, list) or len(contributors) > MAX_CONTRIBUTORS:
            raise _problem("contributors", f"must be a list of at most {MAX_CONTRIBUTORS} device ids or absent, "
                                           f"got {_describe(contributors)}")
        contributors = [_ident(c, f"contributors[{i}]") for i, c in enumerate(contributors)]
    return AlertEvent(
        id=_str(_require(raw, "id", ""), "id"),
        rule=_str(_require(raw, "rule", ""), "rule"),
        domain=_one_of(_require(raw, "domain", ""), DOMAINS, "domain"),
        severity=_one_of(_require(raw, "severity", ""), SEVERITIES, "severity"),
        state=_one_of(_require(raw, "state", ""), ALERT_STATES, "state"),
        district=_ident(_require(raw, "district", ""), "district"),
        device=device,
        metric=metric,
        value=_opt_number(raw, "value"),
        threshold=_opt_number(raw, "threshold"),
        started=_int(_require(raw, "started", ""), "started", minimum=1),
        t=_int(_require(raw, "t", ""), "t", minimum=1),
        message=_str(_require(raw, "message", ""), "message"),
        forecast=forecast,
        command=command,
        response=response,
        contributors=contributors,
    )


def encode_alert(event: AlertEvent) -> bytes:
    payload = orjson.dumps(event.to_wire())
    decode_alert(payload)
    return payload


def dumps(obj: Any) -> bytes:
    """Plain JSON encoding for payloads outside the versioned contract (commands, dead letters)."""
    return orjson.dumps(obj)


def loads(payload: bytes | str, what: str = "payload") -> Any:
    return _loads(payload, what, MAX_PAYLOAD_BYTES)
