"""Work-level splits and P×K clique batches."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from csi_training.batching import CliqueBatchSampler, collection_of, collection_weights, split_works


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


def test_collection_weights_balance_collections() -> None:
    labels = {f"m21:bach/b{i}": i for i in range(10)}
    labels.update({f"m21:essen/e{i}": 10 + i for i in range(40)})
    labels["plain"] = 50
    assert collection_weights(labels, 0.0) is None
    w = collection_weights(labels, 1.0)
    assert w is not None
    by_collection: dict[str, float] = {}
    for work, label in labels.items():
        by_collection[collection_of(work)] = by_collection.get(collection_of(work), 0.0) + w[label]
    assert by_collection == pytest.approx({"bach": 1.0, "essen": 1.0, "(none)": 1.0})
    half = collection_weights(labels, 0.5)
    assert half is not None and half[0] == pytest.approx(10**-0.5) and half[10] == pytest.approx(40**-0.5)


@pytest.mark.parametrize(("world", "p"), [(1, 4), (2, 3)])
def test_weighted_batches_follow_the_weights(world: int, p: int) -> None:
    """Distinct works per global batch, drawn as often as sequential weighted sampling without
    replacement predicts (computed exactly by enumeration for a small case)."""
    import itertools

    rng = np.random.default_rng()
    n_works = 6
    items = {w: list(range(3 * w, 3 * w + 3)) for w in range(n_works)}
    weights = {w: float(rng.uniform(0.2, 3.0)) for w in range(n_works)}
    steps = 4000
    counts = np.zeros(n_works)
    samplers = [
        CliqueBatchSampler(
            items, p, 2, seed=3, rank=r, world_size=world, steps_per_epoch=steps, work_weights=weights
        )
        for r in range(world)
    ]
    for batches in zip(*samplers, strict=True):
        works = [i // 3 for batch in batches for i in batch[::2]]
        assert len(set(works)) == p * world  # distinct works across the ranks of a step
        for batch in batches:
            assert all(batch[2 * j] // 3 == batch[2 * j + 1] // 3 for j in range(p))  # K of one work
        counts[works] += 1
    # exact inclusion probabilities of successive draws without replacement, proportional to weight
    w = np.array([weights[i] for i in range(n_works)])
    inclusion = np.zeros(n_works)
    for seq in itertools.permutations(range(n_works), p * world):
        prob, left = 1.0, w.sum()
        for i in seq:
            prob *= w[i] / left
            left -= w[i]
        inclusion[list(seq)] += prob
    expected = inclusion * steps
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected) + 1), (counts, expected)


def test_weighted_sampler_refuses_bad_weights() -> None:
    items = {w: [2 * w, 2 * w + 1] for w in range(4)}
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="work weights"):
            CliqueBatchSampler(items, 2, 2, work_weights={0: 1.0, 1: 1.0, 2: 1.0, 3: bad})


def test_trainer_logs_the_collection_shares(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from csi_training.config import config_from_dict
    from csi_training.training_data import _work_weights

    labels = {f"m21:bach/b{i}": i for i in range(5)}
    labels.update({f"m21:essen/e{i}": 5 + i for i in range(15)})
    off = config_from_dict({"data": {"manifest": "m.csv"}})
    assert _work_weights(off, labels) is None
    on = config_from_dict({"data": {"manifest": "m.csv", "balance_collections": 1.0}})
    with caplog.at_level(logging.INFO, logger="csi_training.trainer"):
        weights = _work_weights(on, labels)
    assert weights is not None and weights[0] == pytest.approx(3 * weights[5])
    assert "share of draws: bach 50%, essen 50%" in caplog.text
