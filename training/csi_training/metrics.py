"""Retrieval metrics for version identification: MAP, P@k, MR1, MRR and Top-1 / Top-k hit rates.

Protocol (the CSI tutorial's definitions). Each query ranks the reference items (by default: every
item ranks all OTHER items, leave-one-out) from best to worst score; an item is relevant when it
has the query's work id. With ``pos_1 < pos_2 < ... < pos_m`` the 1-based positions of the
query's ``m`` relevant items in that full ranking:

- ``AP  = mean_r r / pos_r`` (the mean of precision@pos_r over the relevant positions), ``MAP`` its mean;
- ``P@k = #{r: pos_r <= k} / k`` (divided by ``k`` even when fewer than ``k`` items are relevant);
- ``MR1 = mean pos_1`` (lower is better), ``MRR = mean 1 / pos_1``;
- ``Top1`` / ``Topk``: fraction of queries whose first relevant item is within the first 1 / k.

Queries without any relevant reference are left out of the means and counted separately.

Ties. Rankings are by float32 score. Exactly equal scores are broken by ``ties``:

- ``"pessimistic"`` (default): an irrelevant item tied with a relevant one ranks before it. The
  result does not depend on the order of the items, and a collapsed model (all embeddings equal)
  gets the chance-level score it deserves instead of a score set by how the dataset is sorted.
- ``"index"``: the lower item index ranks first, the rule of :func:`csi_runtime.topk`, so the
  positions are those of a ``topk`` over all references with the query itself removed.

Method (exact, no top-k cut-off). AP needs the positions of all relevant items however deep they
lie, so a top-k list is not enough. For a block of queries the scores against every reference are
computed with one float32 matrix product (BLAS on CPU, torch on CUDA) and, for each relevant item
``j`` of a query, the number of references scoring at least ``s_j`` is counted; those counts give
the positions directly (see :func:`_positions`). Cost: ``O(Q * N * D)`` for the products plus
``O(Q * N * m)`` comparisons (``m``: relevant items per query), in memory-bounded blocks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from csi_runtime import NonFiniteError

logger = logging.getLogger(__name__)

Metric = Literal["ip", "l2", "cosine"]
Ties = Literal["pessimistic", "index"]

METRICS: tuple[str, ...] = ("ip", "l2", "cosine")
TIES: tuple[str, ...] = ("pessimistic", "index")

# Memory for one block of float32 scores, and separately for one comparison temporary (bytes).
BLOCK_BYTES = 64 * 2**20
# Scores re-read once per relevant item are taken in sub-blocks of this size (about an L2 cache).
CACHE_BYTES = 2**20
# Largest |score| allowed: keeps float32 scores and their sums far from overflow.
MAX_SCORE = 1e30


def evaluate(
    embeddings: npt.ArrayLike,
    work_ids: Sequence[Any] | npt.NDArray[Any],
    *,
    metric: Metric = "ip",
    k_precision: int = 10,
    queries: npt.ArrayLike | None = None,
    refs: npt.ArrayLike | None = None,
    exclude_self: bool = True,
    ties: Ties = "pessimistic",
    batch: int | None = None,
    device: str = "cpu",
    return_per_query: bool = False,
) -> dict[str, Any]:
    """Retrieval metrics of ``embeddings`` under the work labels ``work_ids``.

    Args:
        embeddings: ``[N, D]`` real array (numpy, or anything ``np.asarray`` takes; a torch
            tensor is detached and copied to host), scored in float32.
        work_ids: ``N`` hashable work ids (str, int, ...); equal ids mean versions of one work.
        metric: ``"ip"`` inner product (cosine for the unit-norm embeddings csi models output),
            ``"l2"`` squared euclidean distance (smaller is better), or ``"cosine"`` (rows are
            L2-normalised first; a zero row is an error).
        k_precision: the ``k`` of ``P@k`` and ``Topk``.
        queries: which items query, as a boolean mask ``[N]`` or item indices (no repeats);
            None: every item. Per-query outputs follow this order.
        refs: which items are ranked, same forms; None: every item. The query itself is never a
            candidate when ``exclude_self`` (the leave-one-out protocol).
        exclude_self: leave each query out of its own ranking when it is also a reference.
        ties: ``"pessimistic"`` or ``"index"``, see the module docstring.
        batch: queries per block (default: as many as fit in about 64 MiB of scores).
        device: ``"cpu"`` (numpy/BLAS) or a CUDA device (``"cuda"``, ``"cuda:1"``; needs torch
            with CUDA).
        return_per_query: also return ``per_query``: a dict of ``[Q]`` arrays over all queries
            (``index``, ``n_relevant``, ``AP``, ``P@k``, ``rank1``, ``RR``; NaN for queries
            without a relevant reference).

    Returns:
        ``{"MAP", "P@<k>", "MR1", "MRR", "Top1", "Top<k>"}`` as floats, plus ``n_queries``
        (queries in the means), ``n_queries_without_relevant``, ``n_items`` (N) and ``n_refs``.

    Raises:
        ValueError: bad shapes, lengths, indices, options, N < 2, or no query with a relevant
            reference; :class:`csi_runtime.NonFiniteError` (a ValueError) for NaN/Inf rows or
            scores that would overflow float32.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    if isinstance(k_precision, bool) or not isinstance(k_precision, int | np.integer) or k_precision < 1:
        raise ValueError(f"k_precision must be a positive integer, got {k_precision!r}")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch must be a positive integer or None, got {batch!r}")
    k = int(k_precision)

    x = _as_embeddings(embeddings, metric)
    n_items = x.shape[0]
    codes = _encode_work_ids(work_ids, n_items)
    query_items = _select(queries, n_items, "queries")
    ref_items = np.sort(_select(refs, n_items, "refs"))

    started = time.perf_counter()
    scorer = _make_scorer(x[ref_items], metric, device)
    per_query, n_relevant = _rank_queries(
        x, codes, query_items, ref_items, scorer, exclude_self, ties, batch, k
    )
    logger.debug(
        "ranked %d queries against %d references (%s, %s ties) in %.2f s",
        len(query_items),
        len(ref_items),
        metric,
        ties,
        time.perf_counter() - started,
    )
    return _summary(per_query, n_relevant, query_items, n_items, len(ref_items), k, return_per_query)


def _summary(
    per_query: dict[str, np.ndarray],
    n_relevant: np.ndarray,
    query_items: np.ndarray,
    n_items: int,
    n_refs: int,
    k: int,
    return_per_query: bool,
) -> dict[str, Any]:
    """Means of the per-query metrics over the queries that have a relevant reference."""
    has_relevant = n_relevant > 0
    n_evaluated = int(has_relevant.sum())
    if n_evaluated == 0:
        raise ValueError(
            "no query has a relevant reference (same work id, other item): every work has a single "
            "item among the references, or the query and reference sets share no work"
        )
    result: dict[str, Any] = {
        "MAP": float(np.mean(per_query["AP"][has_relevant])),
        f"P@{k}": float(np.mean(per_query[f"P@{k}"][has_relevant])),
        "MR1": float(np.mean(per_query["rank1"][has_relevant])),
        "MRR": float(np.mean(per_query["RR"][has_relevant])),
        "Top1": float(np.mean(per_query["rank1"][has_relevant] <= 1)),
        f"Top{k}": float(np.mean(per_query["rank1"][has_relevant] <= k)),
        "n_queries": n_evaluated,
        "n_queries_without_relevant": int(len(query_items) - n_evaluated),
        "n_items": n_items,
        "n_refs": n_refs,
    }
    if return_per_query:
        result["per_query"] = {"index": query_items, "n_relevant": n_relevant, **per_query}
    return result


def evaluate_distances(
    distances: npt.ArrayLike,
    work_ids: Sequence[Any] | npt.NDArray[Any],
    *,
    k_precision: int = 10,
    ties: Ties = "pessimistic",
    return_per_query: bool = False,
) -> dict[str, Any]:
    """The metrics of :func:`evaluate` from a precomputed distance matrix (smaller is better).

    ``distances`` ``[N, N]``: row ``i`` ranks every other item for query ``i`` (leave-one-out; the
    diagonal is ignored), so asymmetric measures such as Qmax are used as they are meant to be.
    ``+inf`` is allowed (never matched); NaN is an error. For baselines that are not embeddings.
    """
    d = np.asarray(distances, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"distances must be a square [N, N] matrix, got shape {d.shape}")
    n_items = d.shape[0]
    if n_items < 2:
        raise ValueError(f"need at least 2 items, got {n_items}")
    off_diagonal = ~np.eye(n_items, dtype=bool)
    if np.isnan(d[off_diagonal]).any():
        raise ValueError("distances hold NaN off the diagonal (pairs not computed?)")
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    finite = d[np.isfinite(d)]
    # +inf ("never matches") becomes a finite worst value so it stays ranked above the excluded
    # query itself (-inf inside the ranking code); scores stay float64, so near ties are not merged
    worst = 2.0 * float(np.abs(finite).max(initial=0.0)) + 1.0
    scores = -np.where(np.isfinite(d), d, worst)
    if np.isneginf(d[off_diagonal]).any():
        raise ValueError("distances hold -inf")
    codes = _encode_work_ids(work_ids, n_items)
    items = np.arange(n_items)
    per_query, n_relevant = _rank_queries(
        items.astype(np.float64)[:, None],
        codes,
        items,
        items,
        _MatrixScorer(scores),
        True,
        ties,
        None,
        int(k_precision),
    )
    return _summary(per_query, n_relevant, items, n_items, n_items, int(k_precision), return_per_query)


# ---------------------------------------------------------------------------------- input checks


def _as_embeddings(embeddings: npt.ArrayLike, metric: str) -> np.ndarray:
    """float32 C-contiguous ``[N, D]``, finite, L2-normalised for cosine, safe from overflow."""
    if hasattr(embeddings, "detach"):  # a torch tensor, possibly on a GPU or requiring grad
        embeddings = embeddings.detach().cpu().numpy()
    x = np.asarray(embeddings)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise TypeError(f"embeddings must be real numbers, got dtype {x.dtype}")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 items to rank, got N = {x.shape[0]}")
    if x.shape[1] < 1:
        raise ValueError("embeddings have D = 0 dimensions")
    x64 = x.astype(np.float64, copy=False)
    finite = np.isfinite(x64).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise NonFiniteError(
            f"embeddings hold NaN or Inf in {len(bad)} of {len(x)} rows (first: {bad[:5].tolist()})"
        )
    sq_norms = np.einsum("ij,ij->i", x64, x64)
    if metric == "cosine":
        zero = np.flatnonzero(sq_norms == 0)
        if len(zero):
            raise ValueError(f"metric='cosine' needs non-zero rows; rows {zero[:5].tolist()} are zero")
        x64 = x64 / np.sqrt(sq_norms)[:, None]
        sq_norms = np.ones_like(sq_norms)
    # |q.r| <= |q| |r|; an l2 score 2 q.r - |r|^2 is at most 3 max|x|^2 in magnitude.
    if 3.0 * float(sq_norms.max()) > MAX_SCORE:
        raise NonFiniteError(
            f"embeddings are too large for float32 scoring (largest squared norm {sq_norms.max():.3g}); "
            "normalise them"
        )
    # + 0.0 turns -0.0 into +0.0: equal rows then have equal bytes (see _unique_rows)
    return np.ascontiguousarray(x64, dtype=np.float32) + np.float32(0.0)


def _encode_work_ids(work_ids: Sequence[Any] | npt.NDArray[Any], n_items: int) -> np.ndarray:
    """int64 ``[N]`` codes, equal exactly where the work ids are equal."""
    if isinstance(work_ids, str | bytes):
        raise TypeError("work_ids must be a sequence of ids, not a single string")
    if len(work_ids) != n_items:
        raise ValueError(f"got {len(work_ids)} work ids for {n_items} embeddings")
    if isinstance(work_ids, np.ndarray) and work_ids.ndim == 1 and work_ids.dtype.kind in "iub":
        return np.unique(work_ids, return_inverse=True)[1].astype(np.int64)
    table: dict[Any, int] = {}
    try:
        return np.fromiter((table.setdefault(w, len(table)) for w in work_ids), np.int64, n_items)
    except TypeError as exc:
        raise TypeError(f"work ids must be hashable (str, int, ...): {exc}") from None


def _select(spec: npt.ArrayLike | None, n_items: int, name: str) -> np.ndarray:
    """int64 item indices from None (all), a boolean mask ``[N]`` or an index array."""
    if spec is None:
        return np.arange(n_items, dtype=np.int64)
    arr = np.asarray(spec)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D mask or index array, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        if len(arr) != n_items:
            raise ValueError(f"{name} mask has {len(arr)} entries for {n_items} items")
        out = np.flatnonzero(arr)
    elif len(arr) == 0 or np.issubdtype(arr.dtype, np.integer):
        out = arr.astype(np.int64)
        if len(out) and (out.min() < 0 or out.max() >= n_items):
            raise ValueError(f"{name} indices must lie in [0, {n_items}), got [{out.min()}, {out.max()}]")
        if len(np.unique(out)) != len(out):
            raise ValueError(f"{name} indices repeat an item")
    else:
        raise TypeError(f"{name} must be a boolean mask or integer indices, got dtype {arr.dtype}")
    if len(out) == 0:
        raise ValueError(f"{name} selects no item")
    return out


# ---------------------------------------------------------------------------------- scoring


class _Scorer(Protocol):
    """Scores one block of queries against the references and counts, per relevant item, the
    references scoring at least as well (``>=``) and strictly better (``>``)."""

    n_refs: int

    def block(
        self, queries: np.ndarray, self_cols: np.ndarray, rel_cols: np.ndarray, strict: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, Callable[[int], np.ndarray]]:
        """``queries`` float32 ``[b, D]``; ``self_cols`` int64 ``[b]`` (-1: none) is scored -inf;
        ``rel_cols`` int64 ``[b, m]`` (-1: padding). Returns ``(thresholds float32 [b, m] (+inf
        at padding), at_least int64 [b, m], better int64 [b, m] or None unless strict,
        row(i) -> float32 [R] scores of query i)``."""
        ...


def _unique_rows(refs: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(distinct rows [U, D], inverse [R] or None when all rows differ)``.

    BLAS does not promise equal results for equal columns of a product (the summation order can
    depend on a column's position), so equal references are scored once and the score copied:
    identical embeddings then tie exactly, as the tie rules require.
    """
    rows = refs.view(np.dtype((np.void, refs.dtype.itemsize * refs.shape[1]))).ravel()
    _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    if len(first) == len(refs):
        return refs, None
    return refs[first], inverse.astype(np.int64).ravel()


class _NumpyScorer:
    """CPU: one BLAS sgemm per block, numpy comparisons."""

    def __init__(self, refs: np.ndarray, metric: str) -> None:
        self.n_refs = refs.shape[0]
        self.refs, self.inverse = _unique_rows(refs)
        self.ref_sq = np.einsum("ij,ij->i", self.refs, self.refs) if metric == "l2" else None

    def scores(self, queries: np.ndarray, self_cols: np.ndarray) -> np.ndarray:
        s = queries @ self.refs.T
        if self.ref_sq is not None:  # -|q - r|^2 + |q|^2: same order as the distance, larger is better
            s *= 2.0
            s -= self.ref_sq
        if self.inverse is not None:
            s = s[:, self.inverse]
        has_self = self_cols >= 0
        s[np.flatnonzero(has_self), self_cols[has_self]] = -np.inf
        return s

    def block(
        self, queries: np.ndarray, self_cols: np.ndarray, rel_cols: np.ndarray, strict: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, Callable[[int], np.ndarray]]:
        s = self.scores(queries, self_cols)
        thresholds = np.take_along_axis(s, np.maximum(rel_cols, 0), axis=1)
        thresholds[rel_cols < 0] = np.inf
        at_least = _count_numpy(s, thresholds, np.greater_equal)
        better = _count_numpy(s, thresholds, np.greater) if strict else None
        return thresholds, at_least, better, lambda i: s[i]


class _MatrixScorer(_NumpyScorer):
    """Precomputed scores ``[N, N]`` (e.g. minus a baseline's distances): "query embeddings" are the
    item indices (a ``[b, 1]`` column), so the rest of the ranking code is shared unchanged."""

    def __init__(self, scores: np.ndarray) -> None:
        self.n_refs = scores.shape[1]
        self.matrix = scores

    def scores(self, queries: np.ndarray, self_cols: np.ndarray) -> np.ndarray:
        s = self.matrix[queries[:, 0].astype(np.int64)].copy()
        has_self = self_cols >= 0
        s[np.flatnonzero(has_self), self_cols[has_self]] = -np.inf
        return s


def _count_numpy(s: np.ndarray, thresholds: np.ndarray, op: np.ufunc) -> np.ndarray:
    """``out[i, j] = #{c: op(s[i, c], thresholds[i, j])}`` (``+inf`` thresholds count 0).

    Rows are taken in sub-blocks of about ``CACHE_BYTES`` so that every threshold re-reads them
    from cache; flags are counted as packed bits (faster than a boolean sum)."""
    b, n = s.shape
    m = thresholds.shape[1]
    out = np.zeros((b, m), dtype=np.int64)
    rows = max(1, CACHE_BYTES // (4 * n))
    flags = np.empty((min(rows, b), n), dtype=np.bool_)
    for start in range(0, b, rows):
        sub = s[start : start + rows]
        sub_flags = flags[: len(sub)]
        for j in range(m):
            t = thresholds[start : start + rows, j : j + 1]
            if np.isposinf(t).all():  # padding only
                continue
            op(sub, t, out=sub_flags)
            out[start : start + rows, j] = _count_true(sub_flags)
    return out


def _count_true(flags: np.ndarray) -> np.ndarray:
    """True entries per row of a boolean ``[b, n]`` array."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(np.packbits(flags, axis=1)).sum(axis=1, dtype=np.int64)
    return np.count_nonzero(flags, axis=1)


class _TorchScorer:
    """A torch device (CUDA): the same computation as :class:`_NumpyScorer` with torch ops."""

    def __init__(self, refs: np.ndarray, metric: str, device: str) -> None:
        import torch  # only this path needs torch

        self.torch = torch
        self.device = torch.device(device)
        self.n_refs = refs.shape[0]
        unique, inverse = _unique_rows(refs)
        self.refs = torch.from_numpy(unique).to(self.device)
        self.inverse = None if inverse is None else torch.from_numpy(inverse).to(self.device)
        self.ref_sq = (self.refs * self.refs).sum(dim=1) if metric == "l2" else None

    def block(
        self, queries: np.ndarray, self_cols: np.ndarray, rel_cols: np.ndarray, strict: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, Callable[[int], np.ndarray]]:
        torch = self.torch
        q = torch.from_numpy(queries).to(self.device)
        # TF32 / bf16 matmuls (a global torch setting) would change the ranking: force IEEE fp32.
        previous = torch.get_float32_matmul_precision()
        try:
            torch.set_float32_matmul_precision("highest")
            s = q @ self.refs.T
        finally:
            torch.set_float32_matmul_precision(previous)
        if self.ref_sq is not None:
            s = 2.0 * s - self.ref_sq
        if self.inverse is not None:
            s = s[:, self.inverse]
        rows = np.flatnonzero(self_cols >= 0)
        if len(rows):
            s[
                torch.from_numpy(rows).to(self.device), torch.from_numpy(self_cols[rows]).to(self.device)
            ] = -torch.inf
        cols = torch.from_numpy(np.maximum(rel_cols, 0)).to(self.device)
        thresholds = torch.gather(s, 1, cols)
        thresholds[torch.from_numpy(rel_cols < 0).to(self.device)] = torch.inf
        at_least = self._count(s, thresholds, torch.ge)
        better = self._count(s, thresholds, torch.gt) if strict else None
        return (
            thresholds.cpu().numpy(),
            at_least,
            better,
            lambda i: s[i].cpu().numpy(),
        )

    def _count(self, s: Any, thresholds: Any, op: Callable[[Any, Any], Any]) -> np.ndarray:
        b, n = s.shape
        m = thresholds.shape[1]
        step = max(1, BLOCK_BYTES // max(1, b * n))
        parts = [
            op(s[:, None, :], thresholds[:, j : j + step, None]).sum(dim=2, dtype=self.torch.int64)
            for j in range(0, m, step)
        ]
        return self.torch.cat(parts, dim=1).cpu().numpy()


def _make_scorer(refs: np.ndarray, metric: str, device: str) -> _Scorer:
    if device == "cpu":
        return _NumpyScorer(refs, metric)
    if not isinstance(device, str) or not device.startswith("cuda"):
        raise ValueError(f"device must be 'cpu' or a CUDA device such as 'cuda' or 'cuda:0', got {device!r}")
    try:
        import torch
    except ImportError:
        raise ValueError(f"device={device!r} needs torch, which is not installed") from None
    if not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but torch sees no CUDA device")
    return _TorchScorer(refs, metric, device)


# ---------------------------------------------------------------------------------- ranking


def _rank_queries(
    x: np.ndarray,
    codes: np.ndarray,
    query_items: np.ndarray,
    ref_items: np.ndarray,
    scorer: _Scorer,
    exclude_self: bool,
    ties: str,
    batch: int | None,
    k: int,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-query metrics (float64 ``[Q]`` arrays, NaN without a relevant reference) and
    ``n_relevant`` (int64 ``[Q]``)."""
    n_refs = len(ref_items)
    ref_codes = codes[ref_items]
    ref_col = np.full(len(codes), -1, dtype=np.int64)
    ref_col[ref_items] = np.arange(n_refs)

    # references grouped by work: the columns of work w are by_work[lo:hi], ascending
    by_work = np.argsort(ref_codes, kind="stable")
    sorted_codes = ref_codes[by_work]
    q_codes = codes[query_items]
    lo = np.searchsorted(sorted_codes, q_codes, side="left")
    hi = np.searchsorted(sorted_codes, q_codes, side="right")
    self_cols = ref_col[query_items] if exclude_self else np.full(len(query_items), -1, dtype=np.int64)
    n_relevant = (hi - lo - (self_cols >= 0)).astype(np.int64)

    per_query = {name: np.full(len(query_items), np.nan) for name in ("AP", f"P@{k}", "rank1", "RR")}
    # blocks of queries with similar numbers of relevant items: little padding
    order = np.argsort(n_relevant, kind="stable")
    order = order[n_relevant[order] > 0]
    block_size = batch or max(1, BLOCK_BYTES // (4 * n_refs))
    for start in range(0, len(order), block_size):
        rows = order[start : start + block_size]
        rel_cols = _relevant_columns(by_work, lo[rows], hi[rows], self_cols[rows])
        thresholds, at_least, better, row_scores = scorer.block(
            x[query_items[rows]], self_cols[rows], rel_cols, ties == "index"
        )
        positions = _positions(thresholds, rel_cols, at_least, better, row_scores, ref_codes, q_codes[rows])
        for name, values in _metrics_from_positions(positions, k).items():
            per_query[name][rows] = values
    return per_query, n_relevant


def _relevant_columns(
    by_work: np.ndarray, lo: np.ndarray, hi: np.ndarray, self_cols: np.ndarray
) -> np.ndarray:
    """int64 ``[b, m]``: each query's relevant reference columns (its work, minus itself), then -1."""
    width = int((hi - lo).max())
    offsets = np.arange(width)
    inside = offsets[None, :] < (hi - lo)[:, None]
    cols = np.where(inside, by_work[np.minimum(lo[:, None] + offsets, len(by_work) - 1)], -1)
    keep = inside & (cols != self_cols[:, None])
    packed = np.argsort(~keep, axis=1, kind="stable")  # kept columns first, in order
    cols = np.take_along_axis(np.where(keep, cols, -1), packed, axis=1)
    m = int(keep.sum(axis=1).max())
    return cols[:, :m]


def _positions(
    thresholds: np.ndarray,
    rel_cols: np.ndarray,
    at_least: np.ndarray,
    better: np.ndarray | None,
    row_scores: Callable[[int], np.ndarray],
    ref_codes: np.ndarray,
    q_codes: np.ndarray,
) -> np.ndarray:
    """Sorted 1-based positions float64 ``[b, m]`` of the relevant items (NaN at padding).

    Order the relevant items of a query by (score descending, column ascending) and call the r-th
    (0-based) ``j``. Exactly ``r`` relevant items precede it, so ``pos_r = 1 + r + c_j`` with
    ``c_j`` the irrelevant items ranked before ``j``: those scoring ``>= s_j`` (pessimistic ties),
    or ``> s_j`` plus the tied ones at a lower column (index ties). ``c_j`` never decreases along
    that order, so sorting the ``c`` values lines them up with ``r``.
    """
    valid = rel_cols >= 0
    rel_at_least, rel_better = _relevant_counts(thresholds, valid)
    if better is None:
        irrelevant_before = at_least - rel_at_least
    else:
        irrelevant_before = better - rel_better
        irrelevant_ties = (at_least - better) - (rel_at_least - rel_better)
        tie_rows, tie_cols = np.nonzero((irrelevant_ties > 0) & valid)
        for i in np.unique(tie_rows):
            scores = row_scores(int(i))
            for j in tie_cols[tie_rows == i]:
                tied = np.flatnonzero(scores[: rel_cols[i, j]] == thresholds[i, j])
                irrelevant_before[i, j] += np.count_nonzero(ref_codes[tied] != q_codes[i])
    width = rel_cols.shape[1]
    before = np.where(valid, irrelevant_before, np.iinfo(np.int64).max)  # padding sorts last
    before.sort(axis=1)
    slot = np.arange(width)[None, :]
    return np.where(slot < valid.sum(axis=1)[:, None], 1.0 + slot + before, np.nan)


def _relevant_counts(thresholds: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per relevant item ``j``: how many relevant items (itself included) score ``>= s_j`` and ``> s_j``."""
    b, m = thresholds.shape
    if b * m * m <= BLOCK_BYTES:
        other = thresholds[:, None, :]
        mine = thresholds[:, :, None]
        valid_other = valid[:, None, :]
        return (
            np.count_nonzero((other >= mine) & valid_other, axis=2),
            np.count_nonzero((other > mine) & valid_other, axis=2),
        )
    at_least = np.zeros((b, m), dtype=np.int64)
    better = np.zeros((b, m), dtype=np.int64)
    for i in range(b):  # large works: sort instead of m x m comparisons
        t = thresholds[i, valid[i]]
        ordered = np.sort(t)
        at_least[i, valid[i]] = len(t) - np.searchsorted(ordered, t, side="left")
        better[i, valid[i]] = len(t) - np.searchsorted(ordered, t, side="right")
    return at_least, better


def _metrics_from_positions(positions: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """AP, P@k, rank of the first relevant item and its reciprocal, from sorted positions
    ``[b, m]`` (NaN-padded; every row has at least one position)."""
    rank = np.arange(1, positions.shape[1] + 1)[None, :]
    n_relevant = np.count_nonzero(~np.isnan(positions), axis=1)
    return {
        "AP": np.nansum(rank / positions, axis=1) / n_relevant,
        f"P@{k}": np.count_nonzero(positions <= k, axis=1) / k,
        "rank1": positions[:, 0],
        "RR": 1.0 / positions[:, 0],
    }
