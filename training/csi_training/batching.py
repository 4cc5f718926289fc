"""Work-level splits and P×K clique batches.

Splits are by **work**: every version of a work lands in the same split, so no test work is ever
seen in training. Works are ranked by a seeded hash of their id, so the split depends on the seed
and the set of works, never on the order of the manifest.

A clique batch holds P works × K versions; triplet mining needs at least two versions per work
(positives) and two works (negatives) in each batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["CliqueBatchSampler", "WorkSplit", "collection_of", "collection_weights", "split_works"]


@dataclass(frozen=True)
class WorkSplit:
    train: frozenset[str]
    val: frozenset[str]
    test: frozenset[str]

    def of(self, work_id: str) -> str:
        return "train" if work_id in self.train else "val" if work_id in self.val else "test"


def _count(spec: float, n: int) -> int:
    """A fraction in [0, 1) of ``n`` works, or a whole number of works."""
    return int(spec) if spec >= 1 else round(spec * n)


def split_works(work_ids: Sequence[str], val: float, test: float, seed: int) -> WorkSplit:
    """Split distinct works into train / val / test by a seeded hash of each work id.

    ``val`` and ``test`` are fractions in [0, 1) or whole numbers of works. Raises ValueError when
    nothing would be left to train on.
    """
    works = sorted(set(work_ids))
    n_val, n_test = _count(val, len(works)), _count(test, len(works))
    if n_val + n_test >= len(works):
        raise ValueError(
            f"cannot hold out {n_val} validation + {n_test} test works from only {len(works)} works"
        )
    ranked = sorted(works, key=lambda w: hashlib.sha256(f"{seed}:{w}".encode()).digest())
    return WorkSplit(
        test=frozenset(ranked[:n_test]),
        val=frozenset(ranked[n_test : n_test + n_val]),
        train=frozenset(ranked[n_test + n_val :]),
    )


def collection_of(work_id: str) -> str:
    """The source collection of a work id: ``m21:bach/bwv11.6.mxl`` → ``bach``; ``(none)`` without a "/"."""
    name = work_id.split(":", 1)[-1]
    return name.split("/", 1)[0] if "/" in name else "(none)"


def collection_weights(labels: Mapping[str, int], power: float) -> dict[int, float] | None:
    """Sampling weight of each work label: n_c ** -power for a work of a collection of n_c works.

    ``labels``: work id → label. None when ``power`` is 0 (uniform over works, the default).
    """
    if power == 0:
        return None
    sizes: dict[str, int] = {}
    for work in labels:
        sizes[collection_of(work)] = sizes.get(collection_of(work), 0) + 1
    return {label: sizes[collection_of(work)] ** -power for work, label in labels.items()}


class CliqueBatchSampler:
    """Batches of ``works_per_batch`` works × ``versions_per_work`` item indices.

    ``items_by_work`` maps a work label to the indices of its items. Only works with at least two
    items take part. Each epoch visits the works in a fresh seeded order; under data parallelism
    (``world_size`` > 1) every rank takes a disjoint slice of each global batch, so the ranks see
    different works at every step. Works with fewer than K items repeat items (sampled so that every
    item appears before any repeats). Deterministic in (seed, epoch, rank).

    ``work_weights`` (work label → weight > 0) replaces the passes over the works: each global batch
    then draws its P × world_size distinct works with probabilities proportional to the weights.
    """

    def __init__(
        self,
        items_by_work: Mapping[int, Sequence[int]],
        works_per_batch: int,
        versions_per_work: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        steps_per_epoch: int | None = None,
        work_weights: Mapping[int, float] | None = None,
    ) -> None:
        self.works = sorted(w for w, items in items_by_work.items() if len(items) >= 2)
        self.items = {w: np.asarray(items_by_work[w], dtype=np.int64) for w in self.works}
        self.P, self.K = works_per_batch, versions_per_work
        if len(self.works) < self.P * world_size:
            raise ValueError(
                f"clique batches need {self.P * world_size} works with >= 2 versions "
                f"({self.P} per batch × {world_size} processes); the training split has {len(self.works)}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.seed, self.rank, self.world = seed, rank, world_size
        self.probabilities: np.ndarray | None = None
        if work_weights is not None:
            w = np.array([float(work_weights[work]) for work in self.works])
            if not np.all(np.isfinite(w) & (w > 0)):
                raise ValueError("work weights must be finite and > 0")
            self.probabilities = w / w.sum()
        self.steps = steps_per_epoch or len(self.works) // (self.P * world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def _pick_versions(self, work: int, rng: np.random.Generator) -> np.ndarray:
        items = self.items[work]
        if len(items) >= self.K:
            return rng.choice(items, size=self.K, replace=False)
        extra = rng.choice(items, size=self.K - len(items), replace=True)
        return np.concatenate([rng.permutation(items), extra])

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch, 0x5EED])
        global_p = self.P * self.world
        order = rng.permutation(self.works)
        for step in range(self.steps):
            if self.probabilities is not None:
                drawn = rng.choice(self.works, size=global_p, replace=False, p=self.probabilities)
                chosen = drawn[self.rank * self.P : (self.rank + 1) * self.P]
            else:
                start = (step * global_p) % len(order)
                if start + global_p > len(order):  # next pass over the works in a new order
                    order = rng.permutation(self.works)
                    start = 0
                chosen = order[start : start + global_p][self.rank * self.P : (self.rank + 1) * self.P]
            # versions drawn from a per-(step, rank) stream so ranks never share draws
            pick_rng = np.random.default_rng([self.seed, self.epoch, step, self.rank])
            yield [int(i) for w in chosen for i in self._pick_versions(int(w), pick_rng)]
