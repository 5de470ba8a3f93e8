"""Remote diagnostics, asked for on the command topic (edge/commands.py) and answered on
.../cmd/result like a write, logged and counted like one:

- `probe`: a device's registers as they are, decoded in every type and order (what
  `urbansense edge probe` prints), read through the device's own link (the same
  transaction queue as polling). Only devices of this gateway's config.
- `log`: the agent's last log lines (kept in memory, LOG_RING lines).
- `links`: each link's devices with their state and last error, polls, failures and
  requests, and the uplink's and the log's numbers.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from edge.commands import MAX_PROBE_COUNT, CommandRefused, Diagnosis
from edge.link import DeviceState, ModbusLink, error_reason
from edge.modbus_pdu import ModbusExceptionResponse, ModbusLinkError, ModbusProtocolError, ModbusTimeout
from edge.probe import render

if TYPE_CHECKING:
    from edge.agent import EdgeAgent

#: Log lines kept for a remote `log`.
LOG_RING = 500
#: Longest log line kept, in characters.
LOG_LINE_MAX = 500


class LogRing(logging.Handler):
    """The agent's recent log lines, formatted as its console shows them."""

    def __init__(self, size: int = LOG_RING) -> None:
        super().__init__(logging.INFO)
        self.lines: deque[str] = deque(maxlen=size)
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record)[:LOG_LINE_MAX])
        except Exception:  # a log line that cannot be formatted must not break the agent
            self.handleError(record)


def _probe_window(state: DeviceState, req: Diagnosis) -> tuple[str, int, int]:
    """The table, address and count to read: as asked, else the span of the profile's
    fields in the first field's table (at most MAX_PROBE_COUNT)."""
    fields = [f for f in state.profile.fields if f.address is not None]
    table = req.table or (fields[0].table if fields else "holding")
    in_table = [f for f in fields if f.table == table]
    address = req.address if req.address is not None else min((f.address or 0 for f in in_table), default=0)
    if req.count is not None:
        return table, address, req.count
    end = max(((f.address or 0) + f.registers for f in in_table), default=address + 1)
    return table, address, max(1, min(MAX_PROBE_COUNT, end - address))


async def probe(req: Diagnosis, links: dict[str, ModbusLink]) -> dict[str, Any]:
    link = next((lk for lk in links.values() if req.dev in lk.devices), None)
    if link is None:
        raise CommandRefused(f"no polled device {req.dev!r} on this gateway (a probe reads a Modbus device of "
                             "its config)")
    state = link.devices[str(req.dev)]
    table, address, count = _probe_window(state, req)
    out: dict[str, Any] = {"dev": req.dev, "table": table, "address": address, "count": count,
                           "unit": state.spec.unit, "link": link.link.name}
    try:
        words = await link.read_raw(state, table, address, count)
    except (ModbusTimeout, ModbusLinkError, ModbusExceptionResponse, ModbusProtocolError, OSError) as exc:
        out.update(ok=False, reason=f"read failed: {error_reason(exc)[1]}")
        return out
    out.update(ok=True, words=words, text=render(address, words, table))
    return out


def log_lines(req: Diagnosis, ring: LogRing) -> dict[str, Any]:
    lines = list(ring.lines)[-req.lines:]
    return {"ok": True, "lines": lines}


def link_stats(agent: EdgeAgent) -> dict[str, Any]:
    t = agent.telemetry
    links: dict[str, Any] = {}
    for name, link in agent.links.items():
        spec = link.link
        where = f"{spec.host}:{spec.port}" if spec.transport == "tcp" else (spec.serial.port if spec.serial else "")
        links[name] = {
            "transport": spec.transport, "endpoint": where, "requests": t.requests_by_link.get(name, 0),
            "devices": {dev: {"ok": s.ok, "polls": s.polls, "failures": s.failures, "error": s.last_error}
                        for dev, s in link.devices.items()},
        }
    for name, pushed in agent.pushed_links.items():
        links[name] = {"transport": "pushed", "devices": {
            dev: {"ok": s.ok, "messages": s.messages, "error": s.last_error} for dev, s in pushed.devices.items()}}
    return {"ok": True, "links": links, "stats": agent.stats(), "uplink_connected": agent.mqtt.connected}
