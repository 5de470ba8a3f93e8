"""Fuzzed byte streams for the connection sessions of the field protocols."""

from __future__ import annotations

import gc
import logging
import random
import tracemalloc
from collections.abc import Callable, Iterator


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


def retained_growth(feed: Callable[[bytes], object], chunks: Iterator[bytes], *, warmup: int = 1000,
                    measured: int = 2000) -> int:
    """Bytes still allocated after `measured` more chunks than after a warm-up of
    `warmup` (tracemalloc): what a session would keep for ever from a stream of garbage.
    Log records are held back meanwhile (pytest keeps them in memory)."""
    quiet = logging.getLogger("urbansense.edge")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    tracemalloc.start()
    try:
        for _ in range(warmup):
            feed(next(chunks))
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(measured):
            feed(next(chunks))
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        quiet.setLevel(level)
