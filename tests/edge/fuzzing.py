"""Fuzzed byte streams for the connection sessions of the field protocols."""

from __future__ import annotations

import random
from collections.abc import Iterator


def fuzzed_stream(good: bytes, seed: int, rounds: int = 3000) -> Iterator[bytes]:
    """Chunks as a bad line or a broken device sends them: random bytes, the good message
    cut short, the good message with a few bytes changed, and now and then the good
    message whole."""
    rng = random.Random(seed)
    for _ in range(rounds):
        choice = rng.random()
        if choice < 0.3:
            yield bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        elif choice < 0.6:
            yield good[:rng.randrange(len(good))]
        elif choice < 0.9:
            mutated = bytearray(good)
            for _ in range(rng.randrange(1, 4)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            yield bytes(mutated)
        else:
            yield good
