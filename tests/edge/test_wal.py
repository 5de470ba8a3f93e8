"""The store-and-forward log: atomic commits, size cap with drop-oldest, kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.wal import WalError, WriteAheadLog


def test_commit_delete_and_reopen_keep_depth_and_meta(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path / "a.wal", max_bytes=1 << 20)
    ids = wal.commit([(False, b'{"n":1}'), (True, b'{"n":2}'), (False, b'{"n":3}')], meta={"seq": 41})
    assert ids == [1, 2, 3]
    wal.commit(deletes=[1, 99])  # 99 was never there: ignored, depth stays right
    assert wal.depth == 2 and wal.bytes == 14
    assert wal.read(0, None, 10, urgent=True) == [(2, b'{"n":2}')]
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
    assert rows[0][1] == b"U" * 100  # the urgent one survived
    assert rows[-1][1].startswith(b"0049")  # the newest survived
    assert rows[1][1].startswith(f"{50 - wal.depth + 1:04d}".encode())  # contiguous newest
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
    assert wal.depth == wal.max_id()
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
    """Acks come as runs of ids with holes (urgent samples sent in their own batch): the
    samples in the holes stay in the log."""
    wal = WriteAheadLog(tmp_path / "runs.wal", max_bytes=1 << 20)
    ids = wal.commit([(n % 5 == 0, b'{"n":%d}' % n) for n in range(30)])
    acked = [i for i in ids if i % 5 != 1] + [ids[3], ids[3]]  # holes, out of order, repeated
    wal.commit(deletes=reversed(acked))
    left = [i for i, _ in wal.read(0, None, 100)]
    assert left == [i for i in ids if i % 5 == 1]
    assert wal.depth == len(left) and wal.bytes == sum(len(b'{"n":%d}' % (i - 1)) for i in left)
    wal.close()


def test_reads_served_from_the_last_commit_match_the_log(tmp_path: Path) -> None:
    """`read` answers from memory for the rows of the last commit: in any interleaving of
    commits, deletes (acknowledgements), size-cap drops and reads, it returns what a model
    of the log holds, and what the log itself holds after reopening."""
    import random

    rng = random.Random(20)
    wal = WriteAheadLog(tmp_path / "m.wal", max_bytes=6000)
    model: dict[int, tuple[bool, bytes]] = {}
    for step in range(400):
        action = rng.random()
        if action < 0.4:
            batch = [(rng.random() < 0.1, f'{{"step":{step},"k":{k}}}'.encode()) for k in range(rng.randint(1, 30))]
            ids = wal.commit(batch)
            model.update(zip(ids, batch, strict=True))
            if wal.dropped:  # the size cap dropped the oldest: the model follows the log
                present = {i for i, _ in wal.read(0, None, 10**6)}
                model = {i: v for i, v in model.items() if i in present}
        elif action < 0.6 and model:
            low = rng.choice(sorted(model))
            gone = [i for i in sorted(model) if low <= i < low + rng.randint(1, 20)]
            wal.commit(deletes=gone)
            for i in gone:
                del model[i]
        else:
            top = max(model, default=0)
            after = rng.randint(max(0, top - 40), top + 1)
            upto = rng.choice([None, after + rng.randint(0, 40)])
            limit = rng.randint(1, 50)
            want = [(i, model[i][1]) for i in sorted(model) if i > after and (upto is None or i <= upto)][:limit]
            assert wal.read(after, upto, limit) == want, (step, after, upto, limit)
        assert wal.depth == len(model)
    wal.close()
    again = WriteAheadLog(tmp_path / "m.wal", max_bytes=6000)
    assert again.read(0, None, 10**6) == [(i, model[i][1]) for i in sorted(model)]


def test_a_commit_larger_than_the_cap_is_not_read_back_from_memory(tmp_path: Path) -> None:
    """The size cap drops rows of the very commit that overflows it: `read` must not serve
    them from the commit's rows in memory."""
    wal = WriteAheadLog(tmp_path / "c.wal", max_bytes=1024)
    ids = wal.commit([(False, b"%040d" % k) for k in range(40)])
    kept = wal.read(0, None, 100)
    assert wal.dropped > 0 and len(kept) == wal.depth == 40 - wal.dropped
    assert kept == [(i, b"%040d" % (i - ids[0])) for i in ids[wal.dropped:]]
    assert wal.read(ids[0] - 1, ids[-1], 100) == kept


def test_an_acknowledged_row_of_the_last_commit_is_not_read_back(tmp_path: Path) -> None:
    """Rows of the last commit deleted by a later acknowledgement are gone from `read`,
    although the commit's rows are kept in memory; a new commit's rows are served again."""
    wal = WriteAheadLog(tmp_path / "t.wal", max_bytes=1 << 20)
    ids = wal.commit([(False, b"a"), (False, b"b"), (False, b"c")])
    wal.commit(deletes=[ids[1]])
    assert wal.read(ids[0], None, 10) == [(ids[2], b"c")]
    more = wal.commit([(False, b"d")], deletes=[ids[0]])
    assert wal.read(ids[0] - 1, None, 10) == [(ids[2], b"c"), (more[0], b"d")]
    assert wal.read(more[0] - 1, more[0], 10) == [(more[0], b"d")]
