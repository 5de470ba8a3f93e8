"""A gateway's clock offset, measured where its batches arrive.

Gateways stamp readings with their own clocks. Each telemetry batch carries `sent`, the
gateway's clock when it published the batch; the receiver (the ingester, the rules
service) compares it with its own clock on arrival:

    sent - received = offset - transit delay

The largest value over the last `window_s` is the offset seen through the smallest delay
(the minimum-delay filter NTP uses): a batch held in the broker while its reader was away
only looks further behind, and is outweighed by any prompt one. Under a scenario clock
(URBANSENSE_CLOCK at speed S) both sides stamp event time, so the difference is divided
by S to give wall-clock seconds.

Worked example: a gateway 300 s behind sends at its 10:00:00.000; the batch arrives at
10:05:00.040 by the ingester's clock: -300.040 s. The next, 1 s later by both clocks,
arrives after 15 ms: -300.015 s, the estimate from then on.
"""

from __future__ import annotations

from collections import deque

from urbansense import clock


class ClockOffsets:
    """Per (district, gateway): a sliding-window maximum of `sent - received` (O(1) per
    batch: the window keeps only values that can still become the maximum)."""

    def __init__(self, window_s: float = 60.0, speed: float | None = None) -> None:
        self.speed = speed if speed is not None else clock.current().speed
        self.window_ms = window_s * 1000.0 * self.speed  # in the stamps' (event) time
        self._windows: dict[tuple[str, str], deque[tuple[int, int]]] = {}

    def observe(self, district: str, gateway: str, sent_ms: int, received_ms: int) -> float:
        """Take one batch; the gateway's offset now, in seconds (positive: its clock is ahead)."""
        key = (district, gateway)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = deque()
        value = sent_ms - received_ms
        while window and window[-1][1] <= value:
            window.pop()
        window.append((received_ms, value))
        cut = received_ms - self.window_ms
        while window[0][0] < cut:
            window.popleft()
        return window[0][1] / 1000.0 / self.speed

    def offset_s(self, district: str, gateway: str) -> float | None:
        window = self._windows.get((district, gateway))
        return window[0][1] / 1000.0 / self.speed if window else None

    def offsets(self) -> dict[tuple[str, str], float]:
        return {key: w[0][1] / 1000.0 / self.speed for key, w in self._windows.items() if w}
