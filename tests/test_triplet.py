"""Triplet mining and loss: hand-built distance matrices, a naive per-anchor reference on fresh random
matrices, selection frequencies, gradients and a small optimisation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats as sstats

from csi_training.losses import TripletLoss, mine_hard, mine_random, mine_semi_hard, pairwise_distances

torch.set_num_threads(1)

# --------------------------------------------------------------------------------------------------
# A hand-built batch: 3 works, items 0-1 (work 0), 2-3 (work 1), 4-6 (work 2). Distances are
# multiples of 1/8 so every comparison is exact. With MARGIN = 0.5:
#
# anchor 0: positive 1 at 1.0; negatives 2: 0.5 (hard), 3: 1.25 and 4: 1.375 (semi-hard),
#           5: 1.5 (= d_ap + margin: not semi-hard), 6: 1.0 (= d_ap: not semi-hard)
# anchor 1: positive 0 at 1.0; negatives 2: 2.0, 3: 2.25, 4: 3.0, 5: 2.0, 6: 4.0 (none semi-hard;
#           hardest = 2 (tie with 5, lower index wins), easiest = 6)
# anchor 2: positive 3 at 2.0; negatives 0: 0.5, 1: 2.0, 4: 1.0, 5: 0.25, 6: 0.75 (none semi-hard;
#           hardest = 5, easiest = 1)
# anchor 3: positive 2 at 2.0; negatives 0: 1.25, 1: 2.25 and 4: 2.125 (semi-hard), 5: 3.0, 6: 2.0
#           (hardest = 0, easiest = 5)
# work 2:   d(4,5) = 0.5, d(4,6) = 1.0, d(5,6) = 1.5
# --------------------------------------------------------------------------------------------------
MARGIN = 0.5
LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 2])
_UPPER = {
    (0, 1): 1.0, (0, 2): 0.5, (0, 3): 1.25, (0, 4): 1.375, (0, 5): 1.5, (0, 6): 1.0,
    (1, 2): 2.0, (1, 3): 2.25, (1, 4): 3.0, (1, 5): 2.0, (1, 6): 4.0,
    (2, 3): 2.0, (2, 4): 1.0, (2, 5): 0.25, (2, 6): 0.75,
    (3, 4): 2.125, (3, 5): 3.0, (3, 6): 2.0,
    (4, 5): 0.5, (4, 6): 1.0, (5, 6): 1.5,
}  # fmt: skip


def hand_matrix() -> torch.Tensor:
    dist = torch.zeros(7, 7, dtype=torch.float64)
    for (i, j), value in _UPPER.items():
        dist[i, j] = dist[j, i] = value
    return dist


def as_set(triplets: tuple[torch.Tensor, ...]) -> set[tuple[int, int, int]]:
    a, p, n = (t.tolist() for t in triplets)
    return set(zip(a, p, n))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- naive per-anchor reference


def naive_sets(dist: np.ndarray, labels: np.ndarray, a: int) -> tuple[list[int], list[int]]:
    n = len(labels)
    positives = [j for j in range(n) if j != a and labels[j] == labels[a]]
    negatives = [j for j in range(n) if labels[j] != labels[a]]
    return positives, negatives


def naive_hard(dist: np.ndarray, labels: np.ndarray) -> set[tuple[int, int, int]]:
    out = set()
    for a in range(len(labels)):
        positives, negatives = naive_sets(dist, labels, a)
        if positives and negatives:
            p = min(positives, key=lambda j: (-dist[a, j], j))
            n = min(negatives, key=lambda j: (dist[a, j], j))
            out.add((a, p, n))
    return out


def naive_band(dist: np.ndarray, labels: np.ndarray, a: int, p: int, margin: float) -> list[int]:
    _, negatives = naive_sets(dist, labels, a)
    return [j for j in negatives if dist[a, p] < dist[a, j] < dist[a, p] + margin]


def naive_fallback(dist: np.ndarray, labels: np.ndarray, a: int, fallback: str) -> int | None:
    _, negatives = naive_sets(dist, labels, a)
    if fallback == "easiest":
        return min(negatives, key=lambda j: (-dist[a, j], j))
    if fallback == "hardest":
        return min(negatives, key=lambda j: (dist[a, j], j))
    return None


def random_problem(
    rng: np.random.Generator, n_items: int, n_works: int, integer: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random (not necessarily metric) distance matrix and labels with singletons and big works.

    ``integer`` draws distances from a few small integers so that ties are frequent."""
    labels = rng.integers(0, n_works, n_items)
    if integer:
        dist = rng.integers(0, 6, (n_items, n_items)).astype(np.float64)
    else:
        dist = rng.random((n_items, n_items)) * 3.0
    dist = (dist + dist.T) / 2.0
    np.fill_diagonal(dist, 0.0)
    return torch.from_numpy(dist), torch.from_numpy(labels)


def usable_anchors(labels: np.ndarray) -> set[int]:
    out = set()
    for a in range(len(labels)):
        positives, negatives = naive_sets(np.zeros((1, 1)), labels, a)
        if positives and negatives:
            out.add(a)
    return out


# ---------------------------------------------------------------- pairwise distances


@pytest.mark.parametrize(
    ("metric", "normalize_by_dim"),
    [
        ("sqeuclidean", False),
        ("sqeuclidean", True),
        ("euclidean", False),
        ("euclidean", True),
        ("cosine", False),
    ],
)
@pytest.mark.parametrize("shape", [(1, 3), (2, 1), (9, 5), (40, 64)])
def test_pairwise_distances_match_float64_loop(
    rng: np.random.Generator, metric: str, normalize_by_dim: bool, shape: tuple[int, int]
) -> None:
    x = rng.normal(size=shape) * rng.uniform(0.1, 3.0)
    x[0] = x[-1]  # a duplicate row (off the diagonal when B > 1)
    n, d = shape
    ref = np.zeros((n, n))
    for i, j in itertools.product(range(n), range(n)):
        if metric == "cosine":
            cos = x[i] @ x[j] / (np.linalg.norm(x[i]) * np.linalg.norm(x[j]))
            ref[i, j] = 1.0 - cos
        else:
            sq = float(np.sum((x[i] - x[j]) ** 2)) / (d if normalize_by_dim else 1)
            ref[i, j] = sq if metric == "sqeuclidean" else math.sqrt(sq)
    np.fill_diagonal(ref, 0.0)
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 2e-3)):
        got = pairwise_distances(torch.tensor(x, dtype=dtype), metric, normalize_by_dim)  # type: ignore[arg-type]
        assert got.dtype == dtype and got.shape == (n, n)
        assert torch.all(torch.diagonal(got) == 0)
        assert torch.all(got >= 0)
        assert torch.equal(got, got.T)
        # euclidean of a duplicate pair: rounding error of ~eps * |x|^2 under the sqrt
        atol = tol * (1 + (x**2).sum(1).max()) if metric != "euclidean" else math.sqrt(tol) * 3
        np.testing.assert_allclose(got.numpy(), ref, atol=atol, rtol=tol)


@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean", "cosine"])
def test_pairwise_distances_gradcheck(rng: np.random.Generator, metric: str) -> None:
    x = torch.tensor(rng.normal(size=(5, 3)), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda e: pairwise_distances(e, metric), (x,))  # type: ignore[arg-type]


def test_euclidean_gradient_is_finite_at_zero_distance() -> None:
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, -1.0]], requires_grad=True)
    dist = pairwise_distances(x, "euclidean")
    assert dist[0, 1] == 0 and dist[0, 0] == 0
    dist.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # only the pairs with the third point pull on rows 0 and 1
    direction = (x[0] - x[2]) / torch.linalg.norm(x[0] - x[2])
    torch.testing.assert_close(x.grad[0], 2 * direction.detach())


def test_cosine_of_zero_row_is_finite() -> None:
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]], requires_grad=True)
    dist = pairwise_distances(x, "cosine")
    torch.testing.assert_close(dist, torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]))
    dist.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_pairwise_distances_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="metric"):
        pairwise_distances(torch.zeros(3, 2), "manhattan")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        pairwise_distances(torch.zeros(3))
    with pytest.raises(TypeError, match="floating"):
        pairwise_distances(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="cosine"):
        pairwise_distances(torch.zeros(3, 2), "cosine", normalize_by_dim=True)


# ---------------------------------------------------------------- hand-built matrix


def test_hard_mining_on_hand_matrix() -> None:
    got = mine_hard(hand_matrix(), LABELS)
    # anchors 4, 5, 6: farthest positives 6 (1.0 vs 0.5), 6 (1.5 vs 0.5), 5 (1.5 vs 1.0);
    # closest negative is item 2 for all three (1.0, 0.25, 0.75).
    expected = [(0, 1, 2), (1, 0, 2), (2, 3, 5), (3, 2, 0), (4, 6, 2), (5, 6, 2), (6, 5, 2)]
    assert [tuple(t) for t in torch.stack(got, 1).tolist()] == expected


def test_hard_loss_value_on_hand_matrix() -> None:
    # relu(d_ap - d_an + 0.5) per anchor: 1.0, 0 (1.0 - 2.0 + 0.5 < 0), 2.25, 1.25, 0.5, 1.75, 1.25
    loss, stats = TripletLoss(margin=MARGIN, mining="hard").from_distances(hand_matrix(), LABELS)
    assert loss.item() == pytest.approx(8.0 / 7.0)
    assert stats["n_triplets"] == 7
    assert stats["active_fraction"] == pytest.approx(6 / 7)
    # d_pos < d_neg only for anchor 1 (1.0 < 2.0); anchor 4 has d_pos == d_neg == 1.0
    assert stats["accuracy"] == pytest.approx(1 / 7)
    assert stats["d_pos"] == pytest.approx((1 + 1 + 2 + 2 + 1 + 1.5 + 1.5) / 7)
    assert stats["d_neg"] == pytest.approx((0.5 + 2 + 0.25 + 1.25 + 1 + 0.25 + 0.75) / 7)


def test_soft_loss_value_on_hand_matrix() -> None:
    loss, _ = TripletLoss(margin=0.0, mining="hard", soft=True).from_distances(hand_matrix(), LABELS)
    gaps = [1.0 - 0.5, 1.0 - 2.0, 2.0 - 0.25, 2.0 - 1.25, 1.0 - 1.0, 1.5 - 0.25, 1.5 - 0.75]
    assert loss.item() == pytest.approx(sum(math.log1p(math.exp(g)) for g in gaps) / 7)


@pytest.mark.parametrize(
    ("fallback", "expected_without_band"),
    [
        # anchors 1 and 2 have no semi-hard negative (see the table at the top)
        ("easiest", {1: 6, 2: 1}),
        ("hardest", {1: 2, 2: 5}),
        ("drop", {}),
    ],
)
def test_semi_hard_on_hand_matrix(fallback: str, expected_without_band: dict[int, int]) -> None:
    dist = hand_matrix()
    # works 0 and 1 have two items, so anchors 0-3 have one possible positive
    seen: dict[int, set[int]] = {0: set(), 1: set(), 2: set(), 3: set()}
    for seed in range(200):
        a, p, n = mine_semi_hard(dist, LABELS, MARGIN, gen(seed), fallback)  # type: ignore[arg-type]
        for anchor, positive, negative in zip(a.tolist(), p.tolist(), n.tolist()):
            assert LABELS[positive] == LABELS[anchor] and positive != anchor
            if anchor in seen:
                seen[anchor].add(negative)
        anchors = set(a.tolist())
        assert {0, 3} <= anchors
        assert ({1, 2} <= anchors) == (fallback != "drop")
    assert seen[0] == {3, 4}  # strictly inside (1.0, 1.5): not 5 (= 1.5), not 6 (= 1.0)
    assert seen[3] == {1, 4}  # inside (2.0, 2.5): not 6 (= 2.0)
    for anchor, negative in expected_without_band.items():
        assert seen[anchor] == {negative}
    if fallback == "drop":
        assert seen[1] == seen[2] == set()


def test_semi_hard_random_fallback_draws_any_negative() -> None:
    dist = hand_matrix()
    seen = set()
    for seed in range(300):
        a, _, n = mine_semi_hard(dist, LABELS, MARGIN, gen(seed), "random")
        seen |= {neg for anchor, neg in zip(a.tolist(), n.tolist()) if anchor == 2}
    assert seen == {0, 1, 4, 5, 6}


def test_semi_hard_all_positives_on_hand_matrix() -> None:
    a, p, n = mine_semi_hard(hand_matrix(), LABELS, MARGIN, gen(0), "drop", all_positives=True)
    pairs = {(x, y): z for x, y, z in zip(a.tolist(), p.tolist(), n.tolist())}
    # work 2: only (4, 6) has a semi-hard negative: item 0 at 1.375 in (1.0, 1.5)
    assert set(pairs) == {(0, 1), (3, 2), (4, 6)}
    assert pairs[(4, 6)] == 0
    a, p, _ = mine_semi_hard(hand_matrix(), LABELS, MARGIN, gen(0), "easiest", all_positives=True)
    expected_pairs = {(0, 1), (1, 0), (2, 3), (3, 2), (4, 5), (4, 6), (5, 4), (5, 6), (6, 4), (6, 5)}
    assert set(zip(a.tolist(), p.tolist())) == expected_pairs and len(a) == 10


def test_random_mining_on_hand_matrix() -> None:
    dist = hand_matrix()
    positives_of_4 = set()
    for seed in range(100):
        a, p, n = mine_random(dist, LABELS, gen(seed))
        assert a.tolist() == list(range(7))
        assert all(LABELS[x] == LABELS[y] and x != y for x, y in zip(a.tolist(), p.tolist()))
        assert all(LABELS[x] != LABELS[z] for x, z in zip(a.tolist(), n.tolist()))
        positives_of_4.add(int(p[4]))
    assert positives_of_4 == {5, 6}


# ---------------------------------------------------------------- edge cases


@pytest.mark.parametrize(
    ("labels", "anchors"),
    [
        ([0, 0], []),  # B = 2, one work: no negative
        ([0, 1], []),  # B = 2, two singletons: no positive
        ([3, 3, 3, 3], []),  # all one work
        ([0, 1, 2, 3], []),  # all singletons
        ([0, 0, 1], [0, 1]),  # item 2 is a singleton: not an anchor, but a negative
        ([5, 7, 5, 9, 7], [0, 1, 2, 4]),
    ],
)
def test_anchors_without_positive_or_negative_are_excluded(labels: list[int], anchors: list[int]) -> None:
    lab = torch.tensor(labels)
    n = len(labels)
    dist = pairwise_distances(torch.arange(n, dtype=torch.float64)[:, None] ** 1.5, "euclidean")
    for triplets in (
        mine_hard(dist, lab),
        mine_random(dist, lab, gen(1)),
        *(mine_semi_hard(dist, lab, 0.7, gen(2), fb) for fb in ("easiest", "hardest", "random")),  # type: ignore[arg-type]
    ):
        assert triplets[0].tolist() == anchors
        for a, p, q in zip(*(t.tolist() for t in triplets)):
            assert labels[a] == labels[p] and a != p and labels[a] != labels[q]
    if not anchors:
        emb = torch.randn(n, 4, requires_grad=True)
        for mining in ("random", "semi_hard", "hard"):
            loss, stats = TripletLoss(mining=mining)(emb, lab)  # type: ignore[arg-type]
            assert loss.item() == 0 and stats["n_triplets"] == 0 and math.isnan(stats["d_pos"])
            loss.backward()
            assert emb.grad is not None and torch.all(emb.grad == 0)


def test_hard_mining_ties_go_to_lower_index() -> None:
    dist = torch.ones(6, 6) - torch.eye(6)  # every off-diagonal distance equal
    labels = torch.tensor([1, 0, 1, 0, 1, 0])
    a, p, n = mine_hard(dist, labels)
    assert a.tolist() == [0, 1, 2, 3, 4, 5]
    assert p.tolist() == [2, 3, 0, 1, 0, 1]
    assert n.tolist() == [1, 0, 1, 0, 1, 0]


def test_mining_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="square"):
        mine_hard(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        mine_hard(torch.zeros(3, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        mine_random(torch.zeros(3, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="margin"):
        mine_semi_hard(torch.zeros(3, 3), torch.zeros(3, dtype=torch.long), 0.0)
    with pytest.raises(ValueError, match="fallback"):
        mine_semi_hard(torch.zeros(3, 3), torch.zeros(3, dtype=torch.long), 0.1, None, "nearest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mining"):
        TripletLoss(mining="semihard")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="margin"):
        TripletLoss(margin=0.0)
    with pytest.raises(ValueError, match="all_positives"):
        TripletLoss(mining="hard", all_positives=True)


# ---------------------------------------------------------------- property tests vs the naive loop


@pytest.mark.parametrize("n_items", [2, 3, 8, 17, 40])
@pytest.mark.parametrize("integer", [False, True])
def test_hard_matches_naive_loop(rng: np.random.Generator, n_items: int, integer: bool) -> None:
    for _ in range(5):
        dist, labels = random_problem(rng, n_items, int(rng.integers(1, n_items + 1)), integer)
        assert as_set(mine_hard(dist, labels)) == naive_hard(dist.numpy(), labels.numpy())
        assert len(mine_hard(dist, labels)[0]) == len(naive_hard(dist.numpy(), labels.numpy()))


@pytest.mark.parametrize("n_items", [2, 5, 16, 33])
@pytest.mark.parametrize("integer", [False, True])
@pytest.mark.parametrize("fallback", ["easiest", "hardest", "random", "drop"])
def test_semi_hard_all_positives_matches_naive_loop(
    rng: np.random.Generator, n_items: int, integer: bool, fallback: str
) -> None:
    margin = 1.0 if integer else float(rng.uniform(0.05, 1.5))
    for _ in range(3):
        dist, labels = random_problem(rng, n_items, int(rng.integers(1, n_items // 2 + 2)), integer)
        d, lab = dist.numpy(), labels.numpy()
        a, p, n = mine_semi_hard(dist, labels, margin, gen(int(rng.integers(1 << 31))), fallback, True)  # type: ignore[arg-type]
        expected_pairs = []
        for anchor in sorted(usable_anchors(lab)):
            for positive in naive_sets(d, lab, anchor)[0]:
                if fallback != "drop" or naive_band(d, lab, anchor, positive, margin):
                    expected_pairs.append((anchor, positive))
        assert sorted(zip(a.tolist(), p.tolist())) == expected_pairs
        for anchor, positive, negative in zip(a.tolist(), p.tolist(), n.tolist()):
            band = naive_band(d, lab, anchor, positive, margin)
            if band:
                assert negative in band
            elif fallback == "random":
                assert lab[negative] != lab[anchor]
            else:
                assert negative == naive_fallback(d, lab, anchor, fallback)


@pytest.mark.parametrize("n_items", [4, 12, 30])
@pytest.mark.parametrize("fallback", ["easiest", "hardest", "drop"])
def test_semi_hard_random_positive_matches_naive_loop(
    rng: np.random.Generator, n_items: int, fallback: str
) -> None:
    """Works of exactly two items fix the positive, so the whole selection is checkable."""
    labels = torch.from_numpy(rng.permutation(np.arange(n_items) // 2))
    dist, _ = random_problem(rng, n_items, 1, integer=bool(rng.integers(2)))
    d, lab = dist.numpy(), labels.numpy()
    margin = float(rng.uniform(0.3, 2.0))
    a, p, n = mine_semi_hard(dist, labels, margin, gen(int(rng.integers(1 << 31))), fallback)  # type: ignore[arg-type]
    expected = []
    for anchor in range(n_items):
        positive = naive_sets(d, lab, anchor)[0][0]
        band = naive_band(d, lab, anchor, positive, margin)
        if band or fallback != "drop":
            expected.append((anchor, positive))
    assert list(zip(a.tolist(), p.tolist())) == expected
    for anchor, positive, negative in zip(a.tolist(), p.tolist(), n.tolist()):
        band = naive_band(d, lab, anchor, positive, margin)
        assert negative in band if band else negative == naive_fallback(d, lab, anchor, fallback)


@pytest.mark.parametrize("n_items", [2, 7, 25])
def test_random_mining_is_always_valid(rng: np.random.Generator, n_items: int) -> None:
    for _ in range(10):
        dist, labels = random_problem(rng, n_items, int(rng.integers(1, n_items + 1)), False)
        lab = labels.numpy()
        for all_positives in (False, True):
            a, p, n = mine_random(dist, labels, gen(int(rng.integers(1 << 31))), all_positives)
            if all_positives:
                d = dist.numpy()
                expected = sorted((x, y) for x in usable_anchors(lab) for y in naive_sets(d, lab, x)[0])
                assert sorted(zip(a.tolist(), p.tolist())) == expected
            else:
                assert a.tolist() == sorted(usable_anchors(lab))
            assert np.all(lab[a.numpy()] == lab[p.numpy()]) and np.all(a.numpy() != p.numpy())
            assert np.all(lab[a.numpy()] != lab[n.numpy()])


# ---------------------------------------------------------------- selection frequencies


def chi2_uniform_pvalue(counts: list[int]) -> float:
    return float(sstats.chisquare(counts).pvalue)


def test_semi_hard_draws_each_valid_negative_uniformly(rng: np.random.Generator) -> None:
    """Anchor 0 with one positive at distance 1 and negatives at random distances: those in (1, 1 + m)
    must be drawn equally often, the others never."""
    n_neg = 12
    margin = 0.8
    d_an = rng.uniform(0.0, 2.5, n_neg)
    d_an[:3] = rng.uniform(1.05, 1.75, 3)  # at least three valid ones
    dist = torch.full((n_neg + 2, n_neg + 2), 5.0, dtype=torch.float64)
    dist.fill_diagonal_(0.0)
    dist[0, 1] = dist[1, 0] = 1.0
    dist[0, 2:] = dist[2:, 0] = torch.from_numpy(d_an)
    labels = torch.tensor([0, 0, *range(1, n_neg + 1)])
    valid = {2 + j for j in range(n_neg) if 1.0 < d_an[j] < 1.0 + margin}
    generator = gen(int(rng.integers(1 << 31)))
    draws = 3000
    counts = dict.fromkeys(valid, 0)
    for _ in range(draws):
        a, _, n = mine_semi_hard(dist, labels, margin, generator, "drop")
        chosen = n[a == 0]
        assert chosen.numel() == 1 and int(chosen) in valid
        counts[int(chosen)] += 1
    assert chi2_uniform_pvalue(list(counts.values())) > 1e-6


def test_random_positive_and_negative_are_uniform(rng: np.random.Generator) -> None:
    labels = torch.tensor([0, 1, 0, 2, 0, 1, 0, 3])  # anchor 0: positives 2, 4, 6; negatives 1, 3, 5, 7
    dist = torch.from_numpy(rng.random((8, 8)))
    generator = gen(int(rng.integers(1 << 31)))
    pos_counts = dict.fromkeys((2, 4, 6), 0)
    neg_counts = dict.fromkeys((1, 3, 5, 7), 0)
    semi_pos_counts = dict.fromkeys((2, 4, 6), 0)
    for _ in range(2000):
        _, p, n = mine_random(dist, labels, generator)
        pos_counts[int(p[0])] += 1
        neg_counts[int(n[0])] += 1
        a, p, _ = mine_semi_hard(dist, labels, 0.5, generator, "easiest")
        semi_pos_counts[int(p[a == 0])] += 1
    for counts in (pos_counts, neg_counts, semi_pos_counts):
        assert chi2_uniform_pvalue(list(counts.values())) > 1e-6


# ---------------------------------------------------------------- gradients and optimisation


@pytest.mark.parametrize("mining", ["random", "semi_hard", "hard"])
@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean", "cosine"])
@pytest.mark.parametrize("soft", [False, True])
def test_triplet_loss_gradcheck(rng: np.random.Generator, mining: str, metric: str, soft: bool) -> None:
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    emb = torch.tensor(rng.normal(size=(7, 4)), dtype=torch.float64, requires_grad=True)
    margin = 0.4 if metric == "cosine" else 2.0

    def loss_of(e: torch.Tensor) -> torch.Tensor:
        # a freshly seeded generator: the same triplets at every evaluation
        module = TripletLoss(margin, mining, metric, soft=soft, generator=gen(3))  # type: ignore[arg-type]
        return module(e, labels)[0]

    assert torch.autograd.gradcheck(loss_of, (emb,))


def triplet_accuracy(emb: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ALL valid triplets (a, p, n) with d(a, p) < d(a, n)."""
    dist = pairwise_distances(emb.detach(), "euclidean")
    same = labels[:, None] == labels[None, :]
    pos = same & ~torch.eye(len(labels), dtype=torch.bool)
    ok = (dist[:, :, None] < dist[:, None, :]) & pos[:, :, None] & ~same[:, None, :]
    return float(ok.sum() / (pos[:, :, None] & ~same[:, None, :]).sum())


@pytest.mark.parametrize(
    ("mining", "metric", "margin", "normalize_by_dim"),
    [
        ("random", "euclidean", 0.3, False),
        ("semi_hard", "euclidean", 0.3, False),
        ("hard", "euclidean", 0.3, False),
        ("hard", "sqeuclidean", 1.0, True),
        ("semi_hard", "cosine", 0.2, False),
    ],
)
def test_optimisation_separates_clusters(
    seed: int, mining: str, metric: str, margin: float, normalize_by_dim: bool
) -> None:
    torch.manual_seed(seed)
    labels = torch.arange(6).repeat_interleave(4)
    emb = torch.nn.Parameter(torch.randn(24, 8) * 0.5)
    module = TripletLoss(margin, mining, metric, normalize_by_dim, generator=gen(seed))  # type: ignore[arg-type]
    optimiser = torch.optim.SGD([emb], lr=0.05, momentum=0.9)
    first_loss = module(emb, labels)[0].item()
    first_accuracy = triplet_accuracy(emb, labels)
    for _ in range(300):
        optimiser.zero_grad()
        loss, _ = module(emb, labels)
        loss.backward()
        optimiser.step()
    last_loss, last_stats = module(emb, labels)
    assert last_loss.item() < 0.25 * first_loss
    assert last_stats["n_triplets"] >= 24 and last_stats["accuracy"] > 0.9
    assert triplet_accuracy(emb, labels) > max(0.98, first_accuracy)
