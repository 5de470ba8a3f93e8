"""Per-gateway batch sequence tracking: `seq` gaps and repeats.

Worked example: a gateway sends seq 7, 8, 11, 9, 11. After 8, seq 11 is a gap of 2
(9 and 10 missing); 9 then arrives late (a repeat: it is not above the highest seen,
typically a store-and-forward replay); the second 11 is a repeat.

A gap is a batch this instance has not seen: with several instances sharing the stream
each sees only part of it, so gaps are meaningful per instance only with one instance
(or summed over all instances, minus the repeats of replays). A gateway whose seq falls
far below what was seen (it lost its state) starts over without counting.
"""

from __future__ import annotations

_RESTART_DROP = 100_000  # a fall larger than this is a gateway that started over
_MAX_GATEWAYS = 100_000


class SequenceTracker:
    def __init__(self) -> None:
        self._highest: dict[tuple[str, str], int] = {}

    def observe(self, district: str, gateway: str, seq: int) -> tuple[int, int]:
        """Record one batch; returns (gaps, repeats) it reveals."""
        key = (district, gateway)
        highest = self._highest.get(key)
        if highest is None or seq < highest - _RESTART_DROP:
            if highest is None and len(self._highest) >= _MAX_GATEWAYS:
                self._highest.clear()
            self._highest[key] = seq
            return 0, 0
        if seq > highest:
            self._highest[key] = seq
            return seq - highest - 1, 0
        return 0, 1
