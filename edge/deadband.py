"""Report by exception: a field is sent when it moved more than its deadband since the
last report, or when its maximum silence has passed, whichever comes first.

Worked example: deadband 0.5, max_silence_s 60, values 10.0, 10.2, 10.6, 10.7 at 1 s
intervals report 10.0 (first), skip 10.2 (moved 0.2), report 10.6 (moved 0.6), skip 10.7
(moved 0.1 since 10.6), and report again at the latest 60 s after 10.6.
"""

from __future__ import annotations

from urbansense.config import FieldSpec
from urbansense.schema import FieldValue


class ReportByException:
    """Per-device filter; fields without a deadband pass every time."""

    def __init__(self, fields: list[FieldSpec]) -> None:
        self._rules = {f.name: (f.deadband, f.max_silence_s) for f in fields
                       if f.deadband is not None or f.max_silence_s is not None}
        self._last: dict[str, tuple[FieldValue, int]] = {}

    @property
    def rules(self) -> bool:
        """Any field reported by exception (else `filter` passes everything)."""
        return bool(self._rules)

    def filter(self, fields: dict[str, FieldValue], t_ms: int) -> dict[str, FieldValue]:
        if not self._rules:
            return fields
        out: dict[str, FieldValue] = {}
        for name, value in fields.items():
            rule = self._rules.get(name)
            if rule is None or self._due(name, value, t_ms, *rule):
                out[name] = value
                if rule is not None:
                    self._last[name] = (value, t_ms)
        return out

    def _due(self, name: str, value: FieldValue, t_ms: int, deadband: float | None,
             max_silence_s: float | None) -> bool:
        last = self._last.get(name)
        if last is None:
            return True
        last_value, last_t = last
        if max_silence_s is not None and t_ms - last_t >= max_silence_s * 1000:
            return True
        if isinstance(value, bool | str) or isinstance(last_value, bool | str):
            return value != last_value  # states report on every change
        return abs(float(value) - float(last_value)) > (deadband or 0.0)
