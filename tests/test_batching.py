"""Work-level splits and P×K clique batches."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from csi_training.batching import CliqueBatchSampler, split_works


def test_split_is_by_work_disjoint_and_stable(rng: np.random.Generator) -> None:
    works = [f"w{i}" for i in range(200)]
    split = split_works(works, val=0.1, test=20, seed=3)
    assert len(split.val) == 20 and len(split.test) == 20 and len(split.train) == 160
    assert not (split.train & split.val) and not (split.train & split.test) and not (split.val & split.test)
    # the order of the manifest does not matter
    again = split_works(list(rng.permutation(works)) * 2, val=0.1, test=20, seed=3)
    assert again == split
    assert split_works(works, 0.1, 20, seed=4).test != split.test
    with pytest.raises(ValueError, match="cannot hold out"):
        split_works(works[:10], val=5, test=5, seed=0)


def test_clique_batches_have_p_works_times_k_versions(rng: np.random.Generator) -> None:
    sizes = rng.integers(1, 9, size=60)
    items_by_work, start = {}, 0
    for w, n in enumerate(sizes):
        items_by_work[w] = list(range(start, start + n))
        start += n
    work_of = {i: w for w, items in items_by_work.items() for i in items}
    sampler = CliqueBatchSampler(items_by_work, works_per_batch=8, versions_per_work=4, seed=1)
    eligible = {w for w, items in items_by_work.items() if len(items) >= 2}
    assert len(sampler) == len(eligible) // 8
    seen: Counter[int] = Counter()
    for batch in sampler:
        assert len(batch) == 32
        works = [work_of[i] for i in batch]
        counts = Counter(works)
        assert len(counts) == 8 and set(counts.values()) == {4}
        assert set(counts) <= eligible
        for w in counts:
            items = [i for i in batch if work_of[i] == w]
            # distinct versions whenever the work has enough of them
            assert len(set(items)) == min(4, len(items_by_work[w]))
        seen.update(counts.keys())
    # one epoch visits each eligible work at most once
    assert max(seen.values()) == 1
    # deterministic per (seed, epoch), different across epochs
    first = list(sampler)
    assert first == list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_ranks_get_disjoint_works() -> None:
    items_by_work = {w: [2 * w, 2 * w + 1] for w in range(40)}
    batches = [list(CliqueBatchSampler(items_by_work, 5, 2, seed=9, rank=r, world_size=2)) for r in range(2)]
    assert len(batches[0]) == len(batches[1]) == 4
    for b0, b1 in zip(*batches):
        assert not ({i // 2 for i in b0} & {i // 2 for i in b1})


def test_too_few_works_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="need 8 works with >= 2 versions"):
        CliqueBatchSampler(
            {0: [0, 1], 1: [2, 3], 2: [4]}, works_per_batch=4, versions_per_work=2, world_size=2
        )
