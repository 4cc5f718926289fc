"""ReferenceIndex under concurrent use: many searching threads while one thread writes.

The guarantee (see csi_runtime/index.py): every search sees the index as it was before or after
each add/remove, never half of one, and never garbage from buffers being written.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from csi_runtime import ReferenceIndex

D = 32
BATCH = 4  # vectors per add() call; all belong to one work


def test_readers_see_consistent_snapshots_while_a_writer_adds_and_removes(
    rng: np.random.Generator, tmp_path: Path
) -> None:
    index = ReferenceIndex(D, dtype="float32")
    truth: dict[str, np.ndarray] = {}  # work -> its vectors, written before add()
    completed: list[str] = []  # works whose add() returned, in order
    removed_done: set[str] = set()  # works whose remove() returned
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        wrng = np.random.default_rng(int(rng.integers(1 << 31)))
        try:
            for i in range(400):
                w = f"w{i}"
                x = wrng.standard_normal((BATCH, D)).astype(np.float32)
                x /= np.linalg.norm(x, axis=1, keepdims=True)
                truth[w] = x
                index.add(x, w, [{"work": w, "version": j} for j in range(BATCH)])
                completed.append(w)
                if i % 7 == 6:
                    victim = completed[i - 5]
                    index.remove(victim)
                    removed_done.add(victim)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            stop.set()

    def reader(seed: int) -> None:
        rrng = np.random.default_rng(seed)
        try:
            while not stop.is_set() or rrng.random() < 0.5:
                if not completed:
                    continue
                done_before = list(completed)
                gone_before = set(removed_done)
                target = done_before[int(rrng.integers(len(done_before)))]
                v = int(rrng.integers(BATCH))
                hits = index.search(truth[target][v], 5)[0]
                seen = {h.work_id for h in hits}
                assert not (seen & gone_before), f"removed works {seen & gone_before} returned"
                for h in hits:
                    # No torn rows: each score equals the exact best score of that work's vectors.
                    exact = float((truth[h.work_id] @ truth[target][v]).max())
                    assert abs(h.score - exact) < 1e-4, (h, exact)
                    assert h.metadata["work"] == h.work_id
                    assert len(hits) == len(seen)
                if target not in gone_before:
                    assert hits[0].work_id == target and hits[0].metadata["version"] == v
        except BaseException as exc:
            errors.append(exc)

    def saver() -> None:
        try:
            n = 0
            while not stop.is_set():
                p = tmp_path / f"snap{n % 2}.csi"
                index.save(p)
                snap = ReferenceIndex.load(p)
                # A saved snapshot holds whole works only.
                assert len(snap) == BATCH * snap.num_works
                n += 1
                time.sleep(0.01)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=saver)]
    threads += [threading.Thread(target=reader, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]
    assert len(index) == BATCH * index.num_works
    assert index.num_works == 400 - len(removed_done)
