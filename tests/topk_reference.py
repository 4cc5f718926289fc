"""Float64 reference and result checks for top-k tests (CPU kernel, CUDA kernel, CUDA emulation).

"Exact" here means: the returned index set equals the float64 ranking up to ties and up to
float32 rounding at the k-th score. Concretely, for every query:

* indices are unique and in range; scores are best first, equal scores by ascending index;
* each returned score is within ``tol`` of the float64 score of its index;
* no reference that is missing beats the k-th returned score by more than the rounding
  tolerances (completeness), and each returned one is at least as good as the float64 k-th
  best minus them (soundness);
* exact duplicates tie-break by the lower index (checked when ``check_duplicates``).

``tol`` scales with the vectors: ``rtol * |q| * |r|`` for inner products and
``rtol * (|q| + |r|)^2`` for squared distances.
"""

from __future__ import annotations

import numpy as np

_CHUNK_ROWS = 1 << 16


def dequantize(refs: np.ndarray, scales: np.ndarray | None) -> np.ndarray:
    """The reference rows as float64 (``codes[i] * scales[i]`` for int8)."""
    r = np.asarray(refs).astype(np.float64)
    if scales is not None:
        r *= np.asarray(scales, dtype=np.float64)[:, None]
    return r


def reference_scores(
    queries: np.ndarray, refs: np.ndarray, scales: np.ndarray | None, metric: str
) -> np.ndarray:
    """Float64 ``[Q, N]`` inner products (ip) or squared distances (l2), in row chunks."""
    q = np.asarray(queries, dtype=np.float64)
    out = np.empty((q.shape[0], refs.shape[0]), dtype=np.float64)
    qq = (q * q).sum(1)[:, None]
    for s in range(0, refs.shape[0], _CHUNK_ROWS):
        r = dequantize(refs[s : s + _CHUNK_ROWS], None if scales is None else scales[s : s + _CHUNK_ROWS])
        dots = q @ r.T
        if metric == "ip":
            out[:, s : s + len(r)] = dots
        else:
            out[:, s : s + len(r)] = np.maximum(qq - 2.0 * dots + (r * r).sum(1)[None, :], 0.0)
    return out


def tolerances(
    queries: np.ndarray, refs: np.ndarray, scales: np.ndarray | None, metric: str, rtol: float
) -> np.ndarray:
    """``[Q, N]`` score tolerances (see the module doc)."""
    qn = np.linalg.norm(np.asarray(queries, dtype=np.float64), axis=1)[:, None]
    rn = np.empty(refs.shape[0])
    for s in range(0, refs.shape[0], _CHUNK_ROWS):
        r = dequantize(refs[s : s + _CHUNK_ROWS], None if scales is None else scales[s : s + _CHUNK_ROWS])
        rn[s : s + len(r)] = np.linalg.norm(r, axis=1)
    scale = qn * rn[None, :] if metric == "ip" else (qn + rn[None, :]) ** 2
    return rtol * scale + 1e-30


class Reference:
    """Float64 scores and tolerances of one problem, computed once for several checks."""

    def __init__(
        self, queries, refs, scales, metric: str, rtol: float = 2e-6, check_duplicates: bool = False
    ):
        self.metric = metric
        self.scores = reference_scores(queries, refs, scales, metric)
        self.tol = tolerances(queries, refs, scales, metric, rtol)
        self.groups = None
        if check_duplicates:
            _, groups = np.unique(dequantize(refs, scales), axis=0, return_inverse=True)
            self.groups = groups.reshape(-1)


def check_topk(
    scores: np.ndarray,
    index: np.ndarray,
    queries: np.ndarray,
    refs: np.ndarray,
    scales: np.ndarray | None,
    k: int,
    metric: str,
    rtol: float = 2e-6,
    check_duplicates: bool = False,
    reference: Reference | None = None,
) -> None:
    """Asserts that (scores, index) is an exact top-k of queries against refs (see module doc)."""
    q_count, n = queries.shape[0], refs.shape[0]
    assert scores.shape == (q_count, k), scores.shape
    assert index.shape == (q_count, k), index.shape
    assert scores.dtype == np.float32
    assert index.dtype == np.int64
    assert np.isfinite(scores).all()
    if reference is None:
        reference = Reference(queries, refs, scales, metric, rtol, check_duplicates)
    ref, tol, groups = reference.scores, reference.tol, reference.groups
    sign = 1.0 if metric == "ip" else -1.0
    for q in range(q_count):
        idx, s = index[q], scores[q].astype(np.float64)
        assert ((idx >= 0) & (idx < n)).all(), f"query {q}: index out of range"
        assert len(np.unique(idx)) == k, f"query {q}: duplicate indices"
        a, b = sign * s[:-1], sign * s[1:]
        if metric == "ip":
            assert ((a > b) | ((a == b) & (idx[:-1] < idx[1:]))).all(), (
                f"query {q}: not sorted best first / by index"
            )
        else:
            # l2 ranks by s = 2<q,r> - |r|^2 (ties by index) and reports |q|^2 - s rounded to
            # float32, so two different s can print as the same distance in either index order.
            assert (a >= b).all(), f"query {q}: not sorted best first"
        err = np.abs(s - ref[q, idx])
        worst = int(np.argmax(err - tol[q, idx]))
        assert (err <= tol[q, idx]).all(), (
            f"query {q}: score of index {idx[worst]} is {s[worst]!r}, float64 says {ref[q, idx[worst]]!r} "
            f"(tolerance {tol[q, idx[worst]]:.3g})"
        )
        # Completeness: nothing missing beats the k-th returned score beyond rounding.
        signed = sign * ref[q]
        kth = sign * s[-1]
        missing = np.ones(n, dtype=bool)
        missing[idx] = False
        excess = signed[missing] - kth - tol[q, missing] - tol[q, idx[-1]]
        if excess.size:
            j = int(np.argmax(excess))
            assert excess[j] <= 0, (
                f"query {q}: index {np.flatnonzero(missing)[j]} (score {ref[q, missing][j]!r}) is missing "
                f"but beats the k-th returned score {s[-1]!r}"
            )
        # Soundness: every returned row is at least as good as the float64 k-th best.
        best_k = -np.partition(-signed, k - 1)[k - 1]
        assert (signed[idx] >= best_k - tol[q, idx] - tol[q].max()).all(), (
            f"query {q}: a returned row is too weak"
        )
        if groups is not None:
            chosen = set(idx.tolist())
            for j in idx:
                lower = np.flatnonzero(groups[:j] == groups[j])
                assert chosen.issuperset(lower.tolist()), (
                    f"query {q}: index {j} returned but its duplicate(s) {lower.tolist()} "
                    "with lower index are not"
                )


def assert_same_topk(
    a: tuple[np.ndarray, np.ndarray],
    b: tuple[np.ndarray, np.ndarray],
    queries: np.ndarray,
    refs: np.ndarray,
    scales: np.ndarray | None,
    metric: str,
    rtol: float = 2e-6,
    reference: Reference | None = None,
) -> None:
    """Two top-k results agree: same indices except where float64 scores are within rounding of the k-th."""
    (sa, ia), (sb, ib) = a, b
    assert ia.shape == ib.shape
    if reference is None:
        reference = Reference(queries, refs, scales, metric, rtol)
    ref, tol = reference.scores, reference.tol
    sign = 1.0 if metric == "ip" else -1.0
    for q in range(ia.shape[0]):
        diff = np.setxor1d(ia[q], ib[q])
        if diff.size:
            kth = min(sign * ref[q, ia[q][-1]], sign * ref[q, ib[q][-1]])
            near = np.abs(sign * ref[q, diff] - kth) <= 4 * (tol[q, diff] + tol[q].max())
            assert near.all(), (
                f"query {q}: results differ beyond rounding at the k-th score: {diff[~near][:10]}"
            )
        common, pa, pb = np.intersect1d(ia[q], ib[q], return_indices=True)
        assert np.all(np.abs(sa[q][pa].astype(np.float64) - sb[q][pb]) <= 2 * tol[q, common]), (
            f"query {q}: scores differ"
        )
