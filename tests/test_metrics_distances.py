"""evaluate_distances: metrics from a precomputed (possibly asymmetric) distance matrix."""

from __future__ import annotations

import numpy as np
import pytest

from csi_training.metrics import evaluate, evaluate_distances


def _naive(d: np.ndarray, works: np.ndarray, k: int = 10) -> dict[str, float]:
    """Full float64 argsort per row, pessimistic ties, the CSI tutorial's formulas."""
    aps, p10, r1 = [], [], []
    n = len(works)
    for q in range(n):
        others = np.array([j for j in range(n) if j != q])
        rel = works[others] == works[q]
        if not rel.any():
            continue
        # pessimistic ties: among equal distances, irrelevant items first
        order = np.lexsort((rel.astype(int), d[q, others]))
        relevance = rel[order]
        hits = np.flatnonzero(relevance)
        aps.append(np.mean([(i + 1) / (pos + 1) for i, pos in enumerate(hits)]))
        p10.append(relevance[:k].sum() / k)
        r1.append(hits[0] + 1)
    return {"MAP": float(np.mean(aps)), "P@10": float(np.mean(p10)), "MR1": float(np.mean(r1))}


@pytest.mark.parametrize("n", [2, 7, 40, 130])
def test_matches_naive_reference_on_asymmetric_matrices(n: int, rng: np.random.Generator) -> None:
    works = rng.integers(0, max(1, n // 3), size=n)
    works[:2] = works[0]  # at least one work with two items
    d = rng.random((n, n))
    d[rng.random((n, n)) < 0.1] = 0.5  # exact ties
    d[rng.random((n, n)) < 0.05] = np.inf  # never-matching pairs (a failed alignment)
    np.fill_diagonal(d, np.nan)  # the diagonal is ignored
    got = evaluate_distances(d, works)
    ref = _naive(np.nan_to_num(d, nan=0.0, posinf=np.inf), works)
    for key in ("MAP", "P@10", "MR1"):
        assert got[key] == pytest.approx(ref[key], abs=1e-12), key


def test_equals_evaluate_on_embeddings(rng: np.random.Generator) -> None:
    x = rng.standard_normal((80, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    works = rng.integers(0, 20, size=80)
    a = evaluate(x, works)
    b = evaluate_distances(-(x.astype(np.float64) @ x.T.astype(np.float64)), works)
    for key in ("MAP", "P@10", "MR1", "MRR", "Top1"):
        assert a[key] == pytest.approx(b[key], abs=1e-6), key


def test_hand_computed_case() -> None:
    # items: 0,1 work A; 2 work B; 3 work A. Row 0 ranks 2 (0.1), 3 (0.2), 1 (0.3): relevant at 2 and 3.
    d = np.array(
        [
            [0.0, 0.3, 0.1, 0.2],
            [0.1, 0.0, 0.5, 0.2],
            [0.9, 0.9, 0.0, 0.9],
            [0.3, 0.3, 0.1, 0.0],
        ]
    )
    out = evaluate_distances(d, ["A", "A", "B", "A"], return_per_query=True)
    ap = out["per_query"]["AP"]
    assert ap[0] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert ap[1] == pytest.approx(1.0)
    assert np.isnan(ap[2])  # B has no other item: left out of the means
    # row 3: 2 (0.1) first, then 0 and 1 tied at 0.3 (both relevant) → positions 2, 3
    assert ap[3] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert out["n_queries"] == 3 and out["n_queries_without_relevant"] == 1


def test_bad_matrices_are_refused() -> None:
    with pytest.raises(ValueError, match="square"):
        evaluate_distances(np.zeros((3, 4)), [0, 0, 1])
    d = np.zeros((3, 3))
    d[0, 1] = np.nan
    with pytest.raises(ValueError, match="NaN off the diagonal"):
        evaluate_distances(d, [0, 0, 1])
    with pytest.raises(ValueError, match="no query has a relevant"):
        evaluate_distances(np.ones((3, 3)), [0, 1, 2])
