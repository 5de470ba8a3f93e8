"""Write one batch to InfluxDB until it is stored: gzip, capped exponential back-off
that honours Retry-After, 413 answered by splitting, 400 by finding the offending lines.

Worked example of a partial write: InfluxDB 1.x answers a 5,000-line body holding one
line with a field-type conflict with 400 ``partial write: field type conflict ...
dropped=1`` after storing the other 4,999. The writer writes each half again (the same
points land on the same series and times, so rewriting is harmless) and keeps halving
the half that is refused, until the single refused line is found (about 13 extra
requests for 5,000 lines); that line goes to the dead letter with InfluxDB's reason.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

import orjson

from ingest.batch import Delivery, WriteBatch
from ingest.metrics import IngestMetrics
from ingest.settings import IngestSettings
from urbansense.influx import InfluxClient, InfluxError

log = logging.getLogger("urbansense.ingest")

#: Answers that say "these lines are wrong", not "try again later": InfluxDB 1.x uses
#: 400 (partial write, unable to parse, field type conflict, beyond retention); 2.x may
#: use 422 for points outside the bucket's retention.
_LINE_REFUSALS = (400, 422)

RefusedLine = Callable[[Delivery, str, str], None]


class GaveUp(Exception):
    """The write was abandoned because the ingester is shutting down."""


class BatchWriter:
    def __init__(self, influx: InfluxClient, settings: IngestSettings, metrics: IngestMetrics,
                 on_refused: RefusedLine, give_up: threading.Event) -> None:
        self.influx = influx
        self.settings = settings
        self.metrics = metrics
        self.on_refused = on_refused
        self.give_up = give_up

    def write(self, batch: WriteBatch) -> bool:
        """True once every line is stored or dead-lettered; False if abandoned on shutdown
        (then nothing of this batch may be acknowledged)."""
        if not batch.lines:
            return True
        try:
            self._write_range(batch.lines, batch.chunks, batch.owner_of, 0, len(batch.lines))
        except GaveUp:
            return False
        return True

    def _write_range(self, entries: list[str], chunks: set[int], owner_of: Callable[[int], Delivery],
                     lo: int, hi: int) -> None:
        body = "\n".join(entries[lo:hi]).encode()
        delay = self.settings.retry_min_s
        while True:
            try:
                self.influx.write(body, compress=self.settings.gzip_level > 0,
                                  compresslevel=self.settings.gzip_level or 1)
                return
            except InfluxError as exc:
                if exc.status == 413 or exc.status in _LINE_REFUSALS:
                    if hi - lo == 1:
                        owner = owner_of(lo)
                        if lo in chunks:  # many lines of one message: find the refused ones
                            lines = entries[lo].split("\n")
                            self._write_range(lines, set(), _constant(owner), 0, len(lines))
                        else:
                            self.on_refused(owner, entries[lo], _influx_reason(exc))
                        return
                    mid = (lo + hi) // 2
                    if exc.status == 413:
                        log.info("InfluxDB refused %d entries as too large; writing them in halves",
                                 hi - lo)
                    self._write_range(entries, chunks, owner_of, lo, mid)
                    self._write_range(entries, chunks, owner_of, mid, hi)
                    return
                wait = self._retry_wait(exc, delay)
                delay = min(delay * 2, self.settings.retry_max_s)
            self.metrics.retry()
            if self.give_up.wait(wait):
                raise GaveUp

    def _retry_wait(self, exc: InfluxError, delay: float) -> float:
        # The server's own Retry-After (429/503) is what it asked for; honour it as given.
        wait = exc.retry_after if exc.status in (429, 503) and exc.retry_after else delay
        hint = {
            0: "is InfluxDB running and reachable?",
            401: "check URBANSENSE_INFLUX_TOKEN or URBANSENSE_INFLUX_USERNAME/_PASSWORD",
            403: "the credentials may not write to this database",
            404: "create the database with: urbansense ingest init",
        }.get(exc.status, "")
        log.warning("InfluxDB write failed, retrying in %.1f s: %s%s", wait, exc,
                    f" ({hint})" if hint else "")
        return wait


def _constant(delivery: Delivery) -> Callable[[int], Delivery]:
    return lambda _index: delivery


def _influx_reason(exc: InfluxError) -> str:
    body = exc.body.strip()
    with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
        body = str(orjson.loads(body).get("error", body))
    return f"InfluxDB refused the point ({exc.status}): {body[:500]}"
