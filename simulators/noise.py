"""Deterministic noise: a value is a pure function of (seed, device, field, event second).

Why not one `random.Random` per device: its sequence depends on how many values were
drawn, so a live run (which samples whenever the edge happens to poll) and an offline
run would differ. Hashing (key, second) with splitmix64 makes every reading a function
of event time alone: same seed, same scenario, same instant -> identical reading, at any
`--speed`.
"""

from __future__ import annotations

import math
import zlib

_MASK = (1 << 64) - 1
_TWO64 = float(1 << 64)


def _mix(z: int) -> int:
    """splitmix64 finaliser (Steele, Lea & Flood 2014): a good 64-bit integer hash."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def stream_key(seed: int, *parts: str) -> int:
    """A 64-bit key naming one noise stream, stable across processes and Python versions
    (unlike hash(), which is salted per process)."""
    h = zlib.crc32(("\x1f".join(parts)).encode())
    return _mix((seed & 0xFFFFFFFF) << 32 | h)


def uniform(key: int, n: int) -> float:
    """Uniform in [0, 1) for draw `n` of stream `key`."""
    return _mix(key ^ ((n * 0xD1B54A32D192ED03) & _MASK)) / _TWO64


def gauss(key: int, n: int) -> float:
    """Standard normal for draw `n` of stream `key` (Box-Muller on two uniforms)."""
    u1 = uniform(key, 2 * n) or 1e-12
    u2 = uniform(key, 2 * n + 1)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
