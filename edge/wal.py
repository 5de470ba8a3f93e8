"""The store-and-forward log: every sample is committed here before it is published,
and deleted only after the broker's PUBACK for the batch that carried it.

Storage is SQLite in WAL journal mode (see edge/README.md for why not our own segment
files): a commit is atomic, so a process killed with SIGKILL at any instant leaves the
log at its last commit, never torn. `sync: normal` survives a killed process (SQLite
only skips the fsync at commit, which matters for power loss); `sync: full` fsyncs every
commit and survives power loss too.

Ids come from AUTOINCREMENT, so they only grow, even across deletes and restarts: the
forwarder's cursors ("sent up to id N") stay valid. The gateway's `seq` and the drop
counter live in the same file, so they persist with the samples.
"""

from __future__ import annotations

import fcntl
import logging
import sqlite3
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("urbansense.edge")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    urgent INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_urgent ON samples (urgent, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class WalError(RuntimeError):
    pass


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
            ok = self._db.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            self._lock.close()
            raise WalError(f"store-and-forward log {self.path} is unusable: {exc}; move it aside "
                           "(its samples are then lost) and start again") from None
        if ok != "ok":
            self._db.close()
            self._lock.close()
            raise WalError(f"store-and-forward log {self.path} failed its integrity check: {ok}")
        #: The last commit's appended rows, (first id, bodies): what `read` serves from
        #: memory; dropped when any of them is deleted.
        self._tail: tuple[int, list[bytes]] | None = None
        depth, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM samples").fetchone()
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
    def commit(self, appends: Iterable[tuple[bool, bytes]] = (), deletes: Iterable[int] = (),
               meta: dict[str, int] | None = None) -> list[int]:
        """One atomic transaction: append samples, delete acknowledged ones, update meta.
        Returns the ids of the appended samples, in order."""
        ids: list[int] = []
        db = self._db
        rows = [(int(urgent), body) for urgent, body in appends]
        deletes = list(deletes)
        dropped = self.dropped
        db.execute("BEGIN IMMEDIATE")
        try:
            if rows:
                # One statement for the whole group. AUTOINCREMENT inside this write
                # transaction hands out consecutive ids after the sequence's last value.
                before = self.max_id()
                db.executemany("INSERT INTO samples (urgent, body) VALUES (?, ?)", rows)
                after = self.max_id()
                if after - before != len(rows):
                    raise WalError(f"log ids moved by {after - before} for {len(rows)} appended samples")
                ids = list(range(before + 1, after + 1))
                self.depth += len(rows)
                self.bytes += sum(len(body) for _, body in rows)
            # Acknowledged batches are mostly runs of consecutive ids: one range delete per
            # run (a statement SQLite keeps prepared) instead of an IN list per 500 ids.
            # Counted by SQLite, not row by row in Python (half the cost of a delete).
            for low, high in _runs(deletes):
                count, size = db.execute("SELECT COUNT(*), TOTAL(LENGTH(body)) FROM samples "
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
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        tail = self._tail
        if self.dropped != dropped:
            self._tail = None  # the size cap took rows, maybe some of these
        elif ids:
            self._tail = (ids[0], [body for _, body in rows])
        elif tail is not None and deletes and max(deletes) >= tail[0]:
            self._tail = None  # acknowledged: some of its rows are gone
        return ids

    def _drop_oldest(self) -> None:
        """Size cap: drop the oldest ordinary samples first, urgent ones only when nothing
        else is left; every drop is counted (persisted as meta 'dropped')."""
        dropped = 0
        for urgent in (0, 1):
            while self.bytes > self.max_bytes:
                rows = self._db.execute("SELECT id, LENGTH(body) FROM samples WHERE urgent = ? ORDER BY id "
                                        "LIMIT 500", (urgent,)).fetchall()
                if not rows:
                    break
                victims = []
                for row_id, size in rows:
                    victims.append(int(row_id))
                    self.bytes -= int(size)
                    if self.bytes <= self.max_bytes:
                        break
                marks = ",".join("?" * len(victims))
                self._db.execute(f"DELETE FROM samples WHERE id IN ({marks})", victims)
                self.depth -= len(victims)
                dropped += len(victims)
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
             urgent: bool | None = None) -> list[tuple[int, bytes]]:
        """Samples with after_id < id <= upto_id, oldest first. The rows of the last commit
        come from memory (live forwarding reads them right after committing them)."""
        tail = self._tail
        if tail is not None and urgent is None and tail[0] <= after_id + 1 <= tail[0] + len(tail[1]):
            first, bodies = tail
            last = first + len(bodies) - 1
            end = min(last, after_id + limit, last if upto_id is None else upto_id)
            return [(i, bodies[i - first]) for i in range(after_id + 1, end + 1)]
        sql = "SELECT id, body FROM samples WHERE id > ?"
        args: list[int] = [after_id]
        if upto_id is not None:
            sql += " AND id <= ?"
            args.append(upto_id)
        if urgent is not None:
            sql += " AND urgent = ?"
            args.append(int(urgent))
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        return [(int(i), bytes(b)) for i, b in self._db.execute(sql, args).fetchall()]

    def close(self) -> None:
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()
            self._lock.close()  # releases the flock
