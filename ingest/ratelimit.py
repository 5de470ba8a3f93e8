"""Per-gateway rate limit: one gateway flooding the broker (a firmware bug, a replay gone
wrong, a stolen credential) must not starve the others of the ingester's time and of
InfluxDB's writes.

A token bucket per gateway, in payload bytes (what costs decoding, line protocol and
InfluxDB writes, and known before any parsing): it refills at `rate` bytes/s up to
`rate * burst_s`. A message that finds too few tokens is refused before it is decoded and
goes to the dead letter with its reason and whole payload (nothing is lost silently; it
can be replayed once the gateway is fixed). Off (rate 0) by default.
"""

from __future__ import annotations

import time

#: Bound on remembered gateways (the ACL already limits who can publish; this keeps a
#: flood of distinct topics from growing memory). Forgetting only refills a bucket.
_MAX_GATEWAYS = 65536


class GatewayRateLimit:
    def __init__(self, rate_bytes_per_s: float, burst_s: float) -> None:
        self.rate = float(rate_bytes_per_s)
        self.capacity = self.rate * burst_s
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # -> (tokens, last refill)

    def allow(self, district: str, gateway: str, cost: int, now: float | None = None) -> bool:
        """Take `cost` bytes from the gateway's bucket; False (nothing taken) if too few."""
        now = time.monotonic() if now is None else now
        key = (district, gateway)
        tokens, last = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
        if key not in self._buckets and len(self._buckets) >= _MAX_GATEWAYS:
            self._buckets.clear()
        self._buckets[key] = (tokens, now)
        return allowed

    def reason(self, district: str, gateway: str) -> str:
        return (f"rate limit: gateway {district}/{gateway} sent more than {self.rate:.0f} bytes/s "
                f"(burst {self.capacity:.0f} bytes); refused before decoding, not stored. Fix the "
                "gateway, or raise gateway_rate_bytes_per_s, then replay from the dead letters")
