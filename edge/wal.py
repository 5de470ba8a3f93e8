"""The store-and-forward log: every sample is committed here before it is published,
and deleted only after the broker's PUBACK for the batch that carried it.

Storage is SQLite in WAL journal mode (see edge/README.md for why not our own segment
files): a commit is atomic, so a process killed with SIGKILL at any instant leaves the
log at its last commit, never torn. `sync: normal` survives a killed process (SQLite
only skips the fsync at commit, which matters for power loss); `sync: full` fsyncs every
commit and survives power loss too.

A row holds a run of samples committed together (a chunk): at most `max_chunk` samples,
all urgent or all not, their JSON bodies joined by commas (a batch payload's `samples`
array is the rows' bodies joined by commas again). One row per commit instead of one
per sample makes the log's SQLite work per sample about a sixth; a chunk is
acknowledged, replayed and (by the size cap) dropped whole. A log written when a row
held one sample is read as it is (`n` is 1 for those rows).

Ids come from AUTOINCREMENT, so they only grow, even across deletes and restarts: the
forwarder's cursors ("sent up to id N") stay valid. The gateway's `seq` and the drop
counter live in the same file, so they persist with the samples.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

log = logging.getLogger("urbansense.edge")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    urgent INTEGER NOT NULL,
    body BLOB NOT NULL,
    n INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS samples_urgent ON samples (urgent, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


#: A chunk's body stays below this (unless one sample alone is larger), so that any
#: chunk fits in one batch payload (store_and_forward.MAX_BATCH_BYTES is three times it).
CHUNK_BYTES = 64 * 1024

#: A log row as `read` returns it: (id, samples in it, body).
Row = tuple[int, int, bytes]


class WalError(RuntimeError):
    pass


def _chunks(appends: Sequence[tuple[bool, bytes]], max_chunk: int) -> list[tuple[bool, int, bytes]]:
    """Samples in commit order as rows: runs of equal urgency, at most max_chunk samples
    and CHUNK_BYTES bytes each (urgency, samples, body joined by commas)."""
    out: list[tuple[bool, int, bytes]] = []
    i, total = 0, len(appends)
    while i < total:
        urgent = appends[i][0]
        end = min(total, i + max_chunk)
        j, size = i + 1, len(appends[i][1])
        while j < end and appends[j][0] == urgent:
            size += len(appends[j][1]) + 1
            if size > CHUNK_BYTES:
                break
            j += 1
        out.append((urgent, j - i, b",".join([body for _, body in appends[i:j]])))
        i = j
    return out


def _within(rows: list[Row], limit: int, max_bytes: float) -> list[Row]:
    """The oldest rows holding at most `limit` samples in all, whose bodies, each with
    its comma, take at most `max_bytes` (at least one row)."""
    total = size = 0
    for k, (_, n, body) in enumerate(rows):
        total += n
        size += len(body) + 1
        if k and (total > limit or size > max_bytes):
            return rows[:k]
    return rows


def _runs(ids: Iterable[int]) -> list[tuple[int, int]]:
    """Consecutive ids as (first, last) ranges: [7, 3, 4, 5, 9] -> [(3, 5), (7, 7), (9, 9)]."""
    runs: list[tuple[int, int]] = []
    for i in sorted(set(ids)):
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


class WriteAheadLog:
    def __init__(self, path: Path | str, *, max_bytes: int, sync: str = "normal") -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Two agents on one log would both replay it and fight over seq: refuse the second.
        self._lock = open(self.path.with_name(self.path.name + ".lock"), "a+")  # noqa: SIM115
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise WalError(f"another edge agent is using the store-and-forward log {self.path}; stop it "
                           "first, or give this one its own log (wal.path / --wal)") from None
        try:
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(samples)")}
            if "n" not in columns:  # a log from before chunks: each of its rows is one sample
                self._db.execute("ALTER TABLE samples ADD COLUMN n INTEGER NOT NULL DEFAULT 1")
            ok = self._db.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            self._lock.close()
            raise WalError(f"store-and-forward log {self.path} is unusable: {exc}; move it aside "
                           "(its samples are then lost) and start again") from None
        if ok != "ok":
            self._db.close()
            self._lock.close()
            raise WalError(f"store-and-forward log {self.path} failed its integrity check: {ok}")
        #: The last commit's appended rows: what `read` serves from memory; dropped when
        #: any of them is deleted.
        self._tail: list[Row] | None = None
        self._in_transaction = False
        depth, size = self._db.execute("SELECT COALESCE(SUM(n), 0), COALESCE(SUM(LENGTH(body)), 0) "
                                       "FROM samples").fetchone()
        self.depth = int(depth)
        self.bytes = int(size)
        self.dropped = self.get_meta("dropped")
        if self.depth:
            log.info("store-and-forward log %s holds %d sample(s) from before; they will be replayed",
                     self.path, self.depth)

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str, default: int = 0) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else default

    # ------------------------------------------------------------------ writes
    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """The commits made inside as one SQLite transaction (one write to the file instead
        of several): nothing of it is in the log until it ends, and an error anywhere in it
        rolls all of it back, the counters and the rows served from memory included."""
        if self._in_transaction:
            yield
            return
        snapshot = (self.depth, self.bytes, self.dropped, self._tail)
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        self._in_transaction = True
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self.depth, self.bytes, self.dropped, self._tail = snapshot
            raise
        finally:
            self._in_transaction = False

    def commit(self, appends: Sequence[tuple[bool, bytes]] = (), deletes: Iterable[int] = (),
               meta: dict[str, int] | None = None, *, max_chunk: int = 500) -> list[int]:
        """One atomic transaction (or part of the open `transaction`): append samples (as
        rows of at most max_chunk, see `_chunks`), delete acknowledged rows, update meta.
        Returns the ids of the appended rows, in order."""
        ids: list[int] = []
        db = self._db
        rows = _chunks(appends, max_chunk) if appends else []
        deletes = list(deletes)
        dropped = self.dropped
        with self.transaction():
            if rows:
                # One statement for the whole group. AUTOINCREMENT inside this write
                # transaction hands out consecutive ids after the sequence's last value.
                before = self.max_id()
                db.executemany("INSERT INTO samples (urgent, n, body) VALUES (?, ?, ?)", rows)
                after = self.max_id()
                if after - before != len(rows):
                    raise WalError(f"log ids moved by {after - before} for {len(rows)} appended rows")
                ids = list(range(before + 1, after + 1))
                self.depth += len(appends)
                self.bytes += sum(len(body) for _, _, body in rows)
            # Acknowledged batches are mostly runs of consecutive ids: one range delete per
            # run (a statement SQLite keeps prepared) instead of an IN list per 500 ids.
            # Counted by SQLite, not row by row in Python.
            for low, high in _runs(deletes):
                count, size = db.execute("SELECT TOTAL(n), TOTAL(LENGTH(body)) FROM samples "
                                         "WHERE id BETWEEN ? AND ?", (low, high)).fetchone()
                if count:
                    db.execute("DELETE FROM samples WHERE id BETWEEN ? AND ?", (low, high))
                    self.depth -= int(count)
                    self.bytes -= int(size)
            if self.bytes > self.max_bytes:
                self._drop_oldest()
            for key, value in (meta or {}).items():
                db.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                           "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))
            tail = self._tail
            if self.dropped != dropped:
                self._tail = None  # the size cap took rows, maybe some of these
            elif ids:
                self._tail = [(i, n, body) for i, (_, n, body) in zip(ids, rows, strict=True)]
            elif tail is not None and deletes and max(deletes) >= tail[0][0]:
                self._tail = None  # acknowledged: some of its rows are gone
        return ids

    def _drop_oldest(self) -> None:
        """Size cap: drop the oldest ordinary rows first, urgent ones only when nothing
        else is left; every dropped sample is counted (persisted as meta 'dropped')."""
        dropped = 0
        for urgent in (0, 1):
            while self.bytes > self.max_bytes:
                rows = self._db.execute("SELECT id, n, LENGTH(body) FROM samples WHERE urgent = ? ORDER BY id "
                                        "LIMIT 500", (urgent,)).fetchall()
                if not rows:
                    break
                victims = []
                for row_id, n, size in rows:
                    victims.append(int(row_id))
                    self.bytes -= int(size)
                    self.depth -= int(n)
                    dropped += int(n)
                    if self.bytes <= self.max_bytes:
                        break
                marks = ",".join("?" * len(victims))
                self._db.execute(f"DELETE FROM samples WHERE id IN ({marks})", victims)
        if dropped:
            self.dropped += dropped
            self._db.execute("INSERT INTO meta (key, value) VALUES ('dropped', ?) "
                             "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (self.dropped,))
            log.warning("store-and-forward log over its cap of %d bytes: dropped the %d oldest sample(s) "
                        "(%d dropped in all)", self.max_bytes, dropped, self.dropped)

    # ------------------------------------------------------------------ reads
    def max_id(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'samples'").fetchone()
        return int(row[0]) if row else 0

    def read(self, after_id: int, upto_id: int | None, limit: int, *,
             urgent: bool | None = None, max_bytes: float = math.inf) -> list[Row]:
        """Rows with after_id < id <= upto_id, oldest first, holding at most `limit`
        samples and `max_bytes` of bodies (each with its comma) in all, at least one row. The
        rows of the last commit come from memory (live forwarding reads them right after
        committing them)."""
        tail = self._tail
        if tail is not None and urgent is None and tail[0][0] <= after_id + 1 <= tail[-1][0] + 1:
            last = tail[-1][0] if upto_id is None else min(upto_id, tail[-1][0])
            return _within(tail[after_id + 1 - tail[0][0] : last + 1 - tail[0][0]], limit, max_bytes)
        sql = "SELECT id, n, body FROM samples WHERE id > ?"
        args: list[int] = [after_id]
        if upto_id is not None:
            sql += " AND id <= ?"
            args.append(upto_id)
        if urgent is not None:
            sql += " AND urgent = ?"
            args.append(int(urgent))
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)  # every row holds at least one sample
        rows = [(int(i), int(n), bytes(b)) for i, n, b in self._db.execute(sql, args).fetchall()]
        return _within(rows, limit, max_bytes)

    def close(self) -> None:
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()
            self._lock.close()  # releases the flock
