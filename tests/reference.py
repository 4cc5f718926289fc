"""Independent float64 reference for top-k results, and the comparison the tests use."""

from __future__ import annotations

import numpy as np

F32_EPS = float(np.finfo(np.float32).eps)


def dense_refs(refs: np.ndarray, scales: np.ndarray | None = None) -> np.ndarray:
    """The reference vectors as float64 values exactly as stored (int8 dequantised)."""
    r = refs.astype(np.float64)
    if scales is not None:
        r = r * scales.astype(np.float64)[:, None]
    return r


def scores_f64(queries: np.ndarray, refs64: np.ndarray, metric: str) -> np.ndarray:
    """[Q, N] float64 scores where larger is better (negated squared distance for l2)."""
    q = queries.astype(np.float64)
    if metric == "ip":
        return q @ refs64.T
    d = (q * q).sum(1)[:, None] + (refs64 * refs64).sum(1)[None, :] - 2.0 * (q @ refs64.T)
    return -np.maximum(d, 0.0)


def tolerance(queries: np.ndarray, refs64: np.ndarray, metric: str, factor: float = 64.0) -> np.ndarray:
    """Per-query absolute tolerance for float32 arithmetic over D terms, shape [Q, 1]."""
    q = queries.astype(np.float64)
    d = queries.shape[1]
    qn = np.sqrt((q * q).sum(1))
    rn = np.sqrt((refs64 * refs64).sum(1)).max()
    scale = qn * rn if metric == "ip" else (qn + rn) ** 2
    return (factor * F32_EPS * np.sqrt(d) * scale + 1e-30)[:, None]


def assert_topk_exact(
    scores: np.ndarray,
    index: np.ndarray,
    queries: np.ndarray,
    refs: np.ndarray,
    k: int,
    metric: str,
    scales: np.ndarray | None = None,
) -> None:
    """Checks a top-k result against float64 brute force.

    Exact up to ties: every reference whose float64 score beats the k-th by more than the
    float32 tolerance must be present, nothing worse than the k-th by more than it may be, the
    returned scores must equal the float64 ones within tolerance, come best first, and equal
    returned scores must be in increasing index order.
    """
    q = np.atleast_2d(queries)
    scores, index = np.atleast_2d(scores), np.atleast_2d(index)
    refs64 = dense_refs(refs, scales)
    full = scores_f64(q, refs64, metric)
    tol = tolerance(q, refs64, metric)
    assert scores.shape == index.shape == (q.shape[0], k), (scores.shape, index.shape)
    assert scores.dtype == np.float32 and index.dtype == np.int64
    kth = -np.sort(-full, axis=1)[:, k - 1 : k]
    for i in range(q.shape[0]):
        got = index[i]
        assert len(set(got.tolist())) == k, f"query {i}: duplicate indices {got}"
        assert (got >= 0).all() and (got < refs.shape[0]).all(), f"query {i}: index out of range"
        must = np.flatnonzero(full[i] > kth[i] + tol[i])
        allowed = full[i] >= kth[i] - tol[i]
        missing = np.setdiff1d(must, got)
        assert missing.size == 0, f"query {i}: missing clearly-better refs {missing[:10]}"
        assert allowed[got].all(), f"query {i}: returned refs {got[~allowed[got]][:10]} are clearly worse"
        expect = full[i, got] if metric == "ip" else -full[i, got]
        np.testing.assert_allclose(
            scores[i], expect, rtol=0, atol=float(tol[i, 0]), err_msg=f"query {i} scores"
        )
        s = scores[i]
        if metric == "ip":
            assert (np.diff(s) <= 0).all(), f"query {i}: scores not descending"
        else:
            assert (np.diff(s) >= 0).all(), f"query {i}: distances not ascending"
        equal = np.diff(s) == 0
        assert (np.diff(got)[equal] > 0).all(), f"query {i}: equal scores not in increasing index order"
