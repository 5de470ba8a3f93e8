"""Commands on city/{district}/{gateway}/cmd: write one field of one device,

    {"id": "c-17", "dev": "lamp-0003", "field": "dim_level_pct", "value": 40}

or, with an `op`, ask the gateway for a diagnosis (edge/diagnostics.py):

    {"id": "d-3", "op": "probe", "dev": "wp-0007", "table": "holding", "address": 0, "count": 8}
    {"id": "d-4", "op": "log", "lines": 100}
    {"id": "d-5", "op": "links"}

The gateway config's `commands.allow` lists the ops it answers (all four by default).

An optional `by` says who sent it (the rules service's automatic responses carry
"rule tunnel.gas_high"); it is logged and echoed in the result, for the audit trail.

Only a field its profile marks `writable`, only within its `min`/`max`. The value is
written through the device's link (the same transaction queue as polling), read back,
and the outcome is answered on .../cmd/result:

    {"v": 1, "id": "c-17", "dev": "lamp-0003", "field": "dim_level_pct", "value": 40,
     "ok": true, "readback": 40, "t": 1764190000123}

Anything else is refused with `"ok": false` and a `reason` saying what to change. A
command may carry its send time `t` (epoch ms); one older than MAX_AGE_S (e.g. held in
the broker session through an outage) is refused rather than acted on late.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args

from edge.decoding import WriteRefused, encode_write
from edge.link import DeviceState, ModbusLink, error_reason
from edge.modbus_pdu import ModbusExceptionResponse, ModbusLinkError, ModbusProtocolError, ModbusTimeout
from urbansense import codec
from urbansense.clock import now_ms
from urbansense.config import CommandOp, FieldSpec
from urbansense.schema import FieldValue

log = logging.getLogger("urbansense.edge.commands")

#: A command that carries its send time `t` (epoch ms) is refused when older than this.
MAX_AGE_S = 60


class CommandRefused(ValueError):
    pass


@dataclass
class Command:
    id: str
    dev: str
    field: str
    value: FieldValue
    by: str = ""


#: What a command may ask for: `write` a field, or a diagnosis (edge/diagnostics.py).
OPS: tuple[str, ...] = get_args(CommandOp)
#: Registers a remote probe may read at once (its text shows every type and order of each).
MAX_PROBE_COUNT = 32
#: Log lines a remote `log` may ask for.
MAX_LOG_LINES = 500


@dataclass
class Diagnosis:
    id: str
    op: str  # probe | log | links
    by: str = ""
    dev: str | None = None
    table: str | None = None
    address: int | None = None
    count: int | None = None
    lines: int = 50


def _small_int(raw: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CommandRefused(f"{key} must be a whole number {low}..{high}, got {value!r}")
    return value


def _diagnosis(raw: dict[str, Any], op: str) -> Diagnosis:
    ident, by = str(raw.get("id", "")), str(raw.get("by", ""))[:100]
    if op == "probe":
        if not isinstance(raw.get("dev"), str):
            raise CommandRefused('a probe names its device: {"op": "probe", "dev": "...", '
                                 '"table": "holding", "address": 0, "count": 8} (table, address, count optional)')
        table = raw.get("table")
        if table is not None and table not in ("holding", "input", "coil", "discrete"):
            raise CommandRefused(f"table must be holding, input, coil or discrete, got {table!r}")
        return Diagnosis(ident, op, by, dev=raw["dev"], table=table, address=_small_int(raw, "address", 0, 65535),
                         count=_small_int(raw, "count", 1, MAX_PROBE_COUNT))
    if op == "log":
        return Diagnosis(ident, op, by, lines=_small_int(raw, "lines", 1, MAX_LOG_LINES) or 50)
    return Diagnosis(ident, op, by)


@dataclass
class PreparedWrite:
    command: Command
    link: ModbusLink
    state: DeviceState
    spec: FieldSpec
    words: list[int]


def parse_command(payload: bytes, allow: Sequence[str] = OPS) -> Command | Diagnosis:
    try:
        raw = codec.loads(payload, "command")
    except codec.PayloadError as exc:
        raise CommandRefused(str(exc)) from None
    if not isinstance(raw, dict):
        raise CommandRefused('a command is a JSON object {"id", "dev", "field", "value"}')
    op = raw.get("op", "write")
    if op not in OPS:
        raise CommandRefused(f"op must be one of {', '.join(OPS)}, got {op!r}")
    if op not in allow:
        raise CommandRefused(f"this gateway does not answer op {op!r} (its config's commands.allow: "
                             f"{', '.join(allow) or 'nothing'})")
    if op != "write":
        _check_age(raw)
        return _diagnosis(raw, op)
    missing = [k for k in ("dev", "field", "value") if k not in raw]
    if missing:
        raise CommandRefused(f"command lacks {', '.join(missing)}; send "
                             '{"id": "...", "dev": "...", "field": "...", "value": ...}')
    _check_age(raw)
    value = raw["value"]
    if not isinstance(value, bool | int | float | str) or (isinstance(value, float) and not math.isfinite(value)):
        raise CommandRefused(f"value must be a finite number, true/false or a string, got {value!r}")
    return Command(str(raw.get("id", "")), str(raw["dev"]), str(raw["field"]), value, str(raw.get("by", ""))[:100])


def _check_age(raw: dict[str, Any]) -> None:
    sent = raw.get("t")
    if isinstance(sent, int) and not isinstance(sent, bool) and now_ms() - sent > MAX_AGE_S * 1000:
        # a command queued in the broker session during an outage must not act late
        raise CommandRefused(f"command is {(now_ms() - sent) / 1000:.0f} s old (limit {MAX_AGE_S} s); "
                             "send it again if it still applies")


def prepare(command: Command, links: dict[str, ModbusLink], pushed_devices: set[str]) -> PreparedWrite:
    """Check a command against the device's profile; raise CommandRefused with the reason."""
    if command.dev in pushed_devices:
        raise CommandRefused(f"device {command.dev} pushes its readings (MQTT, HJ 212 or JT/T 808); "
                             "it takes no commands")
    link = next((lk for lk in links.values() if command.dev in lk.devices), None)
    if link is None:
        raise CommandRefused(f"no device {command.dev!r} on this gateway")
    state = link.devices[command.dev]
    try:
        spec = state.profile.field(command.field)
    except KeyError:
        names = ", ".join(f.name for f in state.profile.fields if f.writable) or "none"
        raise CommandRefused(f"profile {state.profile.profile} has no field {command.field!r}; "
                             f"writable fields: {names}") from None
    if not spec.writable:
        raise CommandRefused(f"{command.field} of {command.dev} is read-only (profile "
                             f"{state.profile.profile} does not mark it writable)")
    value = command.value
    if isinstance(value, int | float) and not isinstance(value, bool):
        if spec.min is not None and value < spec.min:
            raise CommandRefused(f"{value} is below the minimum {spec.min:g} of {command.field}")
        if spec.max is not None and value > spec.max:
            raise CommandRefused(f"{value} is above the maximum {spec.max:g} of {command.field}")
    try:
        words = encode_write(spec, state.profile, value)
    except WriteRefused as exc:
        raise CommandRefused(str(exc)) from None
    return PreparedWrite(command, link, state, spec, words)


def _matches(spec: FieldSpec, wanted: FieldValue, got: FieldValue) -> bool:
    if isinstance(wanted, bool) or isinstance(got, bool | str) or isinstance(wanted, str):
        return bool(wanted) == bool(got) if spec.type in ("bit", "bool") else wanted == got
    # A scaled register holds the value to within half a step.
    return abs(float(wanted) - float(got)) <= abs(spec.scale) / 2 + 1e-9


async def execute(prepared: PreparedWrite) -> dict[str, Any]:
    cmd = prepared.command
    result: dict[str, Any] = {"v": 1, "id": cmd.id, "dev": cmd.dev, "field": cmd.field, "value": cmd.value}
    if cmd.by:
        result["by"] = cmd.by
    try:
        readback = await prepared.link.write_and_verify(prepared.state, prepared.spec, prepared.words)
    except (ModbusTimeout, ModbusLinkError, ModbusExceptionResponse, ModbusProtocolError, OSError) as exc:
        result.update(ok=False, reason=f"write failed: {error_reason(exc)[1]}")
        return result
    result["readback"] = readback
    if _matches(prepared.spec, cmd.value, readback):
        result["ok"] = True
    else:
        result.update(ok=False, reason=f"read back {readback!r} after writing {cmd.value!r}; "
                                       "the device did not take the value")
    return result


def refusal(payload: bytes, reason: str) -> dict[str, Any]:
    """A result for a command that was refused before any write."""
    try:
        raw = codec.loads(payload, "command")
    except codec.PayloadError:
        raw = {}
    raw = raw if isinstance(raw, dict) else {}
    out: dict[str, Any] = {"v": 1, "id": str(raw.get("id", "")), "ok": False, "reason": reason, "t": now_ms()}
    for key in ("op", "dev", "field", "value", "by"):
        if key in raw and isinstance(raw[key], bool | int | float | str):
            out[key] = raw[key]
    return out
