"""The store-and-forward log: atomic commits of rows of samples (chunks), size cap with
drop-oldest, kill -9, logs from before chunks."""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.store_and_forward import MAX_BATCH_BYTES
from edge.wal import CHUNK_BYTES, Row, WalError, WriteAheadLog


def test_commit_delete_and_reopen_keep_depth_and_meta(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path / "a.wal", max_bytes=1 << 20)
    # an urgent sample between two ordinary ones: three rows (a row is all urgent or not)
    ids = wal.commit([(False, b'{"n":1}'), (True, b'{"n":2}'), (False, b'{"n":3}')], meta={"seq": 41})
    assert ids == [1, 2, 3]
    wal.commit(deletes=[1, 99])  # 99 was never there: ignored, depth stays right
    assert wal.depth == 2 and wal.bytes == 14
    assert wal.read(0, None, 10, urgent=True) == [(2, 1, b'{"n":2}')]
    wal.close()
    again = WriteAheadLog(tmp_path / "a.wal", max_bytes=1 << 20)
    assert again.depth == 2 and again.get_meta("seq") == 41
    # ids never come back, even after the newest row is deleted
    again.commit(deletes=[3])
    assert again.commit([(False, b"x")]) == [4]
    again.close()


def test_size_cap_drops_oldest_ordinary_samples_first_and_counts(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path / "cap.wal", max_bytes=1024)
    wal.commit([(True, b"U" * 100)])
    for i in range(50):
        wal.commit([(False, f"{i:04d}".encode() * 25)])  # 100 bytes each
    assert wal.bytes <= 1024
    assert wal.dropped == 51 - wal.depth
    rows = wal.read(0, None, 100)
    assert rows[0][2] == b"U" * 100  # the urgent one survived
    assert rows[-1][2].startswith(b"0049")  # the newest survived
    assert rows[1][2].startswith(f"{50 - wal.depth + 1:04d}".encode())  # contiguous newest
    wal.close()
    assert WriteAheadLog(tmp_path / "cap.wal", max_bytes=1024).dropped == 51 - len(rows)


WRITER = r"""
import sys
import pytest

from edge.wal import WalError, WriteAheadLog
wal = WriteAheadLog(sys.argv[1], max_bytes=1 << 30)
n = 0
while True:
    ids = wal.commit([(n % 7 == 0, b'{"payload":"%d"}' % (n + i)) for i in range(20)],
                     deletes=[], meta={"seq": n})
    n += 20
    print(ids[-1], flush=True)
"""


def test_survives_kill_9_without_corruption(tmp_path: Path) -> None:
    path = tmp_path / "kill.wal"
    repo = Path(__file__).resolve().parents[2]
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, cwd=repo,
                                env={**os.environ, "PYTHONPATH": str(repo)})
        assert proc.stdout is not None
        # kill it mid-stream: only after its first commit (start-up is slow on a loaded machine)
        first = proc.stdout.readline()
        assert first, "the writer exited before committing anything"
        time.sleep(0.2 + 0.2 * round_)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        acked = [int(line) for line in (first + proc.stdout.read()).split()]
        assert acked, "the writer committed nothing"
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        ids = [r[0] for r in db.execute("SELECT id FROM samples ORDER BY id")]
        db.close()
        # every commit the writer saw succeed is there, with no hole
        assert ids[-1] >= acked[-1]
        assert ids == list(range(1, ids[-1] + 1))
    wal = WriteAheadLog(path, max_bytes=1 << 30)
    assert wal.depth == 20 * wal.max_id()  # one row per commit of 20 (all urgent or all not)
    wal.close()


def test_one_agent_per_log_and_a_damaged_log_says_what_to_do(tmp_path: Path) -> None:
    first = WriteAheadLog(tmp_path / "one.wal", max_bytes=1 << 20)
    with pytest.raises(WalError, match="another edge agent is using"):
        WriteAheadLog(tmp_path / "one.wal", max_bytes=1 << 20)
    first.close()
    WriteAheadLog(tmp_path / "one.wal", max_bytes=1 << 20).close()  # free again
    (tmp_path / "junk.wal").write_bytes(b"this is not a database" * 100)
    with pytest.raises(WalError, match="move it aside"):
        WriteAheadLog(tmp_path / "junk.wal", max_bytes=1 << 20)


def test_deleting_acknowledged_ids_removes_exactly_those(tmp_path: Path) -> None:
    """Acks come as runs of row ids with holes (urgent samples sent in their own batch):
    the rows in the holes stay in the log, and depth and bytes follow the samples."""
    wal = WriteAheadLog(tmp_path / "runs.wal", max_bytes=1 << 20)
    ids = wal.commit([(n % 5 == 0, b'{"n":%d}' % n) for n in range(30)], max_chunk=2)
    rows = wal.read(0, None, 100)
    assert [i for i, _, _ in rows] == ids and sum(n for _, n, _ in rows) == 30 == wal.depth
    acked = [i for i in ids if i % 3] + [ids[3], ids[3]]  # holes, out of order, repeated
    wal.commit(deletes=reversed(acked))
    left = wal.read(0, None, 100)
    assert [i for i, _, _ in left] == [i for i in ids if i % 3 == 0]
    assert wal.depth == sum(n for _, n, _ in left) and wal.bytes == sum(len(b) for _, _, b in left)
    wal.close()


def _reference_rows(samples: list[tuple[bool, bytes]], max_chunk: int) -> list[tuple[int, bytes]]:
    """What a commit's rows hold: runs of equal urgency cut every max_chunk samples."""
    rows = []
    for _urgent, run in itertools.groupby(samples, key=lambda s: s[0]):
        bodies = [body for _, body in run]
        rows += [(len(bodies[k:k + max_chunk]), b",".join(bodies[k:k + max_chunk]))
                 for k in range(0, len(bodies), max_chunk)]
    return rows


def _reference_read(model: dict[int, tuple[int, bytes]], after: int, upto: int | None, limit: int,
                    max_bytes: float) -> list[Row]:
    rows = [(i, *model[i]) for i in sorted(model) if i > after and (upto is None or i <= upto)]
    out: list[Row] = []
    for row in rows:
        if out and (sum(n for _, n, _ in out) + row[1] > limit
                    or sum(len(body) + 1 for _, _, body in [*out, row]) > max_bytes):  # each with its comma
            break
        out.append(row)
    return out


def test_reads_served_from_the_last_commit_match_the_log(tmp_path: Path) -> None:
    """`read` answers from memory for the rows of the last commit: in any interleaving of
    commits, deletes (acknowledgements), size-cap drops and reads, it returns what a model
    of the log holds, and what the log itself holds after reopening."""
    rng = random.Random(20)
    wal = WriteAheadLog(tmp_path / "m.wal", max_bytes=6000)
    model: dict[int, tuple[int, bytes]] = {}
    for step in range(400):
        action = rng.random()
        if action < 0.4:
            batch = [(rng.random() < 0.1, f'{{"step":{step},"k":{k}}}'.encode()) for k in range(rng.randint(1, 30))]
            ids = wal.commit(batch, max_chunk=7)
            model.update(zip(ids, _reference_rows(batch, 7), strict=True))
            if wal.dropped:  # the size cap dropped the oldest: the model follows the log
                present = {i for i, _, _ in wal.read(0, None, 10**6)}
                model = {i: v for i, v in model.items() if i in present}
        elif action < 0.6 and model:
            low = rng.choice(sorted(model))
            gone = [i for i in sorted(model) if low <= i < low + rng.randint(1, 6)]
            wal.commit(deletes=gone)
            for i in gone:
                del model[i]
        else:
            top = max(model, default=0)
            after = rng.randint(max(0, top - 12), top + 1)
            upto = rng.choice([None, after + rng.randint(0, 12)])
            limit = rng.randint(1, 50)
            max_bytes = rng.choice([math.inf, rng.randint(20, 600)])  # a batch's payload cap
            want = _reference_read(model, after, upto, limit, max_bytes)
            assert wal.read(after, upto, limit, max_bytes=max_bytes) == want, (step, after, upto, limit, max_bytes)
        assert wal.depth == sum(n for n, _ in model.values())
        assert wal.bytes == sum(len(body) for _, body in model.values())
    wal.close()
    again = WriteAheadLog(tmp_path / "m.wal", max_bytes=6000)
    assert again.read(0, None, 10**6) == [(i, *model[i]) for i in sorted(model)]
    assert again.depth == sum(n for n, _ in model.values())


def test_a_commit_larger_than_the_cap_is_not_read_back_from_memory(tmp_path: Path) -> None:
    """The size cap drops rows of the very commit that overflows it: `read` must not serve
    them from the commit's rows in memory."""
    wal = WriteAheadLog(tmp_path / "c.wal", max_bytes=1024)
    ids = wal.commit([(False, b"%040d" % k) for k in range(40)], max_chunk=5)  # 8 rows of 204 bytes
    kept = wal.read(0, None, 100)
    assert len(ids) == 8 and wal.dropped == 15 and wal.depth == 25 and wal.bytes == 5 * 204
    assert kept == [(i, 5, b",".join(b"%040d" % k for k in range(5 * j, 5 * j + 5)))
                    for j, i in enumerate(ids) if j >= 3]
    assert wal.read(ids[0] - 1, ids[-1], 100) == kept


def test_an_acknowledged_row_of_the_last_commit_is_not_read_back(tmp_path: Path) -> None:
    """Rows of the last commit deleted by a later acknowledgement are gone from `read`,
    although the commit's rows are kept in memory; a new commit's rows are served again."""
    wal = WriteAheadLog(tmp_path / "t.wal", max_bytes=1 << 20)
    ids = wal.commit([(False, b"a"), (False, b"b"), (False, b"c")], max_chunk=1)
    wal.commit(deletes=[ids[1]])
    assert wal.read(ids[0], None, 10) == [(ids[2], 1, b"c")]
    more = wal.commit([(False, b"d")], deletes=[ids[0]])
    assert wal.read(ids[0] - 1, None, 10) == [(ids[2], 1, b"c"), (more[0], 1, b"d")]
    assert wal.read(more[0] - 1, more[0], 10) == [(more[0], 1, b"d")]


def test_a_commit_becomes_rows_a_batch_can_carry(tmp_path: Path) -> None:
    """A commit's samples become rows of at most max_chunk samples and CHUNK_BYTES bytes,
    each all urgent or all not, whose bodies joined by commas are the samples in order (a
    batch's `samples` array); every row fits in one batch payload."""
    wal = WriteAheadLog(tmp_path / "k.wal", max_bytes=1 << 30)
    big = b'{"pad":"%s"}' % (b"x" * 1000)  # ~1 KB samples: CHUNK_BYTES cuts before max_chunk does
    samples = [(False, b'{"n":%d}' % n) for n in range(12)] + [(True, b'{"alarm":1}')] + [(False, big)] * 150
    ids = wal.commit(samples, max_chunk=5)
    rows = wal.read(0, None, 10**6)
    assert [i for i, _, _ in rows] == ids
    assert [n for _, n, _ in rows][:4] == [5, 5, 2, 1]  # cut by max_chunk, then by urgency
    assert all(len(body) <= CHUNK_BYTES < MAX_BATCH_BYTES for _, _, body in rows)
    assert all(n <= 5 for _, n, _ in rows) and sum(n for _, n, _ in rows) == len(samples) == wal.depth
    assert json.loads(b"[" + b",".join(body for _, _, body in rows) + b"]") == [json.loads(b) for _, b in samples]
    assert wal.read(0, None, 10**6, urgent=True) == [(ids[3], 1, b'{"alarm":1}')]
    # 200 such samples at max_chunk 500: cut by bytes only, into as few rows as fit
    more = wal.commit([(False, big)] * 200, max_chunk=500)
    cut = wal.read(ids[-1], None, 10**6)
    assert [i for i, _, _ in cut] == more and sum(n for _, n, _ in cut) == 200
    assert len(cut) == -(-200 * (len(big) + 1) // CHUNK_BYTES)
    assert all(len(body) <= CHUNK_BYTES for _, _, body in cut)
    wal.close()


def test_a_log_from_before_chunks_is_read_as_one_sample_per_row(tmp_path: Path) -> None:
    """An agent upgraded on a log written when each row was one sample: nothing in it is
    lost, its rows count one sample each, and new commits go on from its last id."""
    path = tmp_path / "old.wal"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE samples (id INTEGER PRIMARY KEY AUTOINCREMENT, urgent INTEGER NOT NULL, "
                     "body BLOB NOT NULL); CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);")
    db.executemany("INSERT INTO samples (urgent, body) VALUES (?, ?)", [(0, b'{"n":1}'), (1, b'{"n":2}')])
    db.execute("INSERT INTO meta VALUES ('seq', 7)")
    db.commit()
    db.close()
    wal = WriteAheadLog(path, max_bytes=1 << 20)
    assert wal.depth == 2 and wal.bytes == 14 and wal.get_meta("seq") == 7
    assert wal.read(0, None, 10) == [(1, 1, b'{"n":1}'), (2, 1, b'{"n":2}')]
    assert wal.commit([(False, b'{"n":3}'), (False, b'{"n":4}')]) == [3]
    wal.commit(deletes=[1, 2])
    assert wal.depth == 2 and wal.read(0, None, 10) == [(3, 2, b'{"n":3},{"n":4}')]
    wal.close()


def test_a_transaction_is_all_or_nothing_counters_included(tmp_path: Path) -> None:
    """Commits inside `transaction` land together; an error inside it rolls them all
    back, with the depth, the bytes and the rows served from memory as they were."""
    wal = WriteAheadLog(tmp_path / "x.wal", max_bytes=1 << 20)
    first = wal.commit([(False, b"a"), (False, b"b")])
    before = (wal.depth, wal.bytes, wal.read(0, None, 10))
    with pytest.raises(RuntimeError, match="after the commits"), wal.transaction():
        wal.commit([(False, b"c")], deletes=first)
        wal.commit(meta={"seq": 9})
        assert wal.depth == 1 and wal.read(first[-1], None, 10) == [(first[-1] + 1, 1, b"c")]
        raise RuntimeError("after the commits")
    assert (wal.depth, wal.bytes, wal.read(0, None, 10)) == before and wal.get_meta("seq") == 0
    with wal.transaction():
        again = wal.commit([(False, b"c")], deletes=first)
        wal.commit(meta={"seq": 9})
    assert again == [first[-1] + 1]  # the rolled-back id is handed out again
    wal.close()
    reopened = WriteAheadLog(tmp_path / "x.wal", max_bytes=1 << 20)
    assert reopened.read(0, None, 10) == [(again[0], 1, b"c")] and reopened.get_meta("seq") == 9
    assert reopened.depth == 1
    reopened.close()
