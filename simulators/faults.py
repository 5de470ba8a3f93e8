"""Sensor and link faults: what they do to a device's reading.

Sensor faults change values (the device still answers):
    stuck   the metric keeps the value it had when the fault began
    drift   the metric drifts by `rate_per_h` engineering units per hour
    spikes  with `probability` per event second, the metric jumps by +/- `magnitude`
Link faults change whether and how the device answers:
    dropout           with `probability` per event second the device does not answer
    dead_device       the device does not answer at all
    modbus_exception  the device answers every request with exception `code` (default 4,
                      SLAVE DEVICE FAILURE)
    malformed_payload an MQTT station publishes broken JSON (`probability` per message)
    coverage_gap      an MQTT terminal out of coverage (a vehicle in a cutting): silent,
                      then it uploads what it held as one JSON array, each report with
                      its own time (offline: the held samples come with the first poll
                      after the gap)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from simulators import noise

SENSOR_FAULTS = ("stuck", "drift", "spikes")
LINK_FAULTS = ("dropout", "dead_device", "modbus_exception", "malformed_payload", "coverage_gap")
FAULT_TYPES = SENSOR_FAULTS + LINK_FAULTS
FAULT_DEFAULTS: dict[str, dict[str, float]] = {
    "stuck": {},
    "drift": {"rate_per_h": 0.05},
    "spikes": {"probability": 0.05, "magnitude": 1.0},
    "dropout": {"probability": 0.3},
    "dead_device": {},
    "modbus_exception": {"code": 4},
    "malformed_payload": {"probability": 1.0},
    "coverage_gap": {},
}
#: What the edge agent reports for a device that does not answer or answers an exception
#: (edge/link.py `error_reason`, edge/modbus_pdu.py), so that offline batches match live
#: ones. The simulators do not import the edge (components meet only on the wire), so the
#: wording is mirrored here; tests/simulators check it against the edge.
ERR_TIMEOUT = "timeout"
EXCEPTION_NAMES = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value", 4: "device failure",
    5: "acknowledge", 6: "device busy", 10: "gateway path unavailable", 11: "gateway target failed to respond",
}


def exception_error(code: int) -> str:
    return f"exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})"


@dataclass(frozen=True)
class ActiveFault:
    type: str
    start_ms: int
    end_ms: int
    metric: str | None = None
    params: Mapping[str, float] = field(default_factory=dict)
    key: int = 0  # noise stream for probabilistic faults
    epoch_ms: int = 0  # draws count event seconds from here (the scenario's start)

    def active(self, t_ms: int) -> bool:
        return self.start_ms <= t_ms < self.end_ms

    def p(self, name: str) -> float:
        return float(self.params[name])

    def draw(self, t_ms: int, salt: int = 0) -> float:
        """Uniform in [0, 1), one per event second."""
        return noise.uniform(self.key ^ salt, (t_ms - self.epoch_ms) // 1000)

    def hits(self, t_ms: int) -> bool:
        """For probabilistic faults: does it strike in this event second?"""
        return self.draw(t_ms) < self.p("probability")
