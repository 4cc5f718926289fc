"""Retrieval metrics (MAP, P@k, MR1, MRR, Top1, Topk): hand-computed rankings, a naive float64 reference
(full sort per query + the CSI tutorial's metric functions), csi_runtime.topk's ranking, invariances
and bad input."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from csi_runtime import NonFiniteError, topk
from csi_training import metrics
from csi_training.metrics import evaluate

PER_QUERY_KEYS = ("AP", "P@10", "rank1", "RR")
SUMMARY_KEYS = ("MAP", "P@10", "MR1", "MRR", "Top1", "Top10")


# ---------------------------------------------------------------- the tutorial's metric functions


def F_mean_rank(relevance: np.ndarray) -> int:
    return int(relevance.nonzero()[0][0]) + 1


def F_precision_at_k(relevance: np.ndarray, k: int) -> float:
    return float(np.mean(relevance[:k] != 0))


def F_average_precision(relevance: np.ndarray) -> float:
    out = [F_precision_at_k(relevance, k + 1) for k in range(relevance.size) if relevance[k]]
    return float(np.mean(out))


# ---------------------------------------------------------------- naive reference


def exact_scores(x64: np.ndarray, q: int, cand: list[int] | np.ndarray, metric: str) -> np.ndarray:
    """Correctly rounded float64 scores, one independent sum per pair: equal rows score equally
    (a BLAS product does not promise that)."""
    if metric == "l2":
        return np.array([-math.fsum((x64[c] - x64[q]) ** 2) for c in cand])
    return np.array([math.fsum(x64[c] * x64[q]) for c in cand])


def reference(
    x: np.ndarray,
    works: list[Any],
    *,
    metric: str = "ip",
    k: int = 10,
    queries: np.ndarray | None = None,
    refs: np.ndarray | None = None,
    exclude_self: bool = True,
    ties: str = "pessimistic",
) -> dict[str, Any]:
    """Per query: float64 scores of every candidate, a full sort with the tie rule, the tutorial's
    functions on the relevance list. P@k is hits in the first k divided by k."""
    x64 = np.asarray(x, dtype=np.float32).astype(np.float64)
    if metric == "cosine":
        x64 = x64 / np.linalg.norm(x64, axis=1, keepdims=True)
    n = len(x64)
    queries = np.arange(n) if queries is None else queries
    refs = np.arange(n) if refs is None else refs
    per: dict[str, list[float]] = {key: [] for key in ("AP", f"P@{k}", "rank1", "RR")}
    n_relevant = []
    for q in queries:
        cand = [int(r) for r in refs if not (exclude_self and r == q)]
        score = exact_scores(x64, int(q), cand, metric)
        rel = [works[c] == works[q] for c in cand]
        if ties == "pessimistic":  # irrelevant before relevant among equal scores
            order = sorted(range(len(cand)), key=lambda t: (-score[t], rel[t], cand[t]))
        else:
            order = sorted(range(len(cand)), key=lambda t: (-score[t], cand[t]))
        relevance = np.array([rel[t] for t in order], dtype=int)
        n_relevant.append(int(relevance.sum()))
        if not relevance.any():
            for key in per:
                per[key].append(np.nan)
            continue
        per["AP"].append(F_average_precision(relevance))
        per[f"P@{k}"].append(relevance[:k].sum() / k)
        per["rank1"].append(F_mean_rank(relevance))
        per["RR"].append(1.0 / F_mean_rank(relevance))
    arrays = {key: np.array(values, dtype=np.float64) for key, values in per.items()}
    has = np.array(n_relevant) > 0
    if not has.any():
        return {"n_queries": 0}
    return {
        "MAP": np.mean(arrays["AP"][has]),
        f"P@{k}": np.mean(arrays[f"P@{k}"][has]),
        "MR1": np.mean(arrays["rank1"][has]),
        "MRR": np.mean(arrays["RR"][has]),
        "Top1": np.mean(arrays["rank1"][has] <= 1),
        f"Top{k}": np.mean(arrays["rank1"][has] <= k),
        "n_queries": int(has.sum()),
        "n_queries_without_relevant": int((~has).sum()),
        "per_query": {**arrays, "n_relevant": np.array(n_relevant)},
    }


def assert_same(got: dict[str, Any], ref: dict[str, Any], k: int = 10) -> None:
    for key in ("MAP", f"P@{k}", "MR1", "MRR", "Top1", f"Top{k}"):
        assert got[key] == pytest.approx(ref[key], rel=1e-12, abs=1e-12), key
    assert got["n_queries"] == ref["n_queries"]
    assert got["n_queries_without_relevant"] == ref["n_queries_without_relevant"]
    if "per_query" in got:
        for key in ("AP", f"P@{k}", "rank1", "RR"):
            np.testing.assert_allclose(got["per_query"][key], ref["per_query"][key], rtol=1e-12, err_msg=key)
        np.testing.assert_array_equal(got["per_query"]["n_relevant"], ref["per_query"]["n_relevant"])


# ---------------------------------------------------------------- random problems


def random_works(rng: np.random.Generator, n: int) -> list[int]:
    """Work ids with clique sizes 1 (no version: a distractor) up to ~8, in shuffled order."""
    works: list[int] = []
    while len(works) < n:
        size = int(rng.choice([1, 1, 2, 2, 3, 4, 5, 8]))
        works += [len(set(works))] * size
    return [int(w) for w in rng.permutation(works[:n])]


def grid_embeddings(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Small-integer / 4 entries: every float32 score is exact, so ties are exact and frequent;
    a few rows are copies of others (duplicates within and across works)."""
    x = rng.integers(-2, 3, (n, d)).astype(np.float32) / 4
    for _ in range(n // 8):
        x[rng.integers(n)] = x[rng.integers(n)]
    return x


def random_subset(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.sort(rng.choice(n, int(rng.integers(1, n + 1)), replace=False))


# ---------------------------------------------------------------- hand-computed cases


def test_hand_computed_l2() -> None:
    # 1-D points 0, 1, 2, 10; works a, a, b, b; squared distances, leave-one-out.
    # query 0 (a): 1 (d=1, rel), 2 (4), 3 (100)          -> relevant at 1: AP 1,   rank 1
    # query 1 (a): 0 (1, rel) and 2 (1) tie, 3 (81)      -> pessimistic: 2 first, 0 at 2: AP 1/2
    #                                                       index rule: 0 first (lower index): AP 1
    # query 2 (b): 1 (1), 0 (4), 3 (64, rel)            -> relevant at 3: AP 1/3, rank 3
    # query 3 (b): 2 (64, rel), 1 (81), 0 (100)          -> relevant at 1: AP 1
    x = np.array([[0.0], [1.0], [2.0], [10.0]])
    got = evaluate(x, ["a", "a", "b", "b"], metric="l2", return_per_query=True)
    np.testing.assert_allclose(got["per_query"]["AP"], [1, 1 / 2, 1 / 3, 1])
    np.testing.assert_allclose(got["per_query"]["rank1"], [1, 2, 3, 1])
    assert got["MAP"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1) / 4)
    assert got["MR1"] == pytest.approx(7 / 4)
    assert got["MRR"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1) / 4)
    assert got["P@10"] == pytest.approx(0.1)  # one hit among the first 10 for every query
    assert got["Top1"] == pytest.approx(0.5)
    assert got["Top10"] == 1.0
    assert (got["n_queries"], got["n_items"], got["n_refs"]) == (4, 4, 4)
    by_index = evaluate(x, ["a", "a", "b", "b"], metric="l2", ties="index", return_per_query=True)
    np.testing.assert_allclose(by_index["per_query"]["AP"], [1, 1, 1 / 3, 1])


def test_hand_computed_ip_with_several_relevant() -> None:
    # Scores of query 0 against items 1..6 (inner products with e0 = the first coordinate):
    #   item:  1    2    3    4    5    6
    #   score: 0.9  0.8  0.7  0.6  0.5  0.4     works: 0 = {0, 2, 5}, 1 = {1, 3}, 2 = {4}, 3 = {6}
    # ranking of query 0: 1, 2*, 3, 4, 5*, 6 -> relevant at 2 and 5:
    #   AP = (1/2 + 2/5) / 2 = 0.45, P@3 = 1/3, rank1 = 2, RR = 1/2
    x = np.zeros((7, 7))
    x[0, 0] = 1.0
    for item, score in zip(range(1, 7), (0.9, 0.8, 0.7, 0.6, 0.5, 0.4)):
        x[item, 0] = score
        x[item, item] = 0.1  # orthogonal extras: items barely score each other
    works = [0, 1, 0, 1, 2, 0, 3]
    got = evaluate(x, works, k_precision=3, queries=[0], return_per_query=True)
    assert got["MAP"] == pytest.approx(0.45)
    assert got["P@3"] == pytest.approx(1 / 3)
    assert got["MR1"] == 2 and got["MRR"] == 0.5 and got["Top1"] == 0 and got["Top3"] == 1
    assert got["n_queries"] == 1 and got["per_query"]["n_relevant"].tolist() == [2]


def test_query_without_relevant_is_excluded_and_counted() -> None:
    # work "solo" has one item: as a query it has nothing to find
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    got = evaluate(x, ["w", "w", "solo"], return_per_query=True)
    assert got["n_queries"] == 2 and got["n_queries_without_relevant"] == 1
    assert got["MAP"] == 1.0
    assert np.isnan(got["per_query"]["AP"][2]) and got["per_query"]["n_relevant"].tolist() == [1, 1, 0]


def test_collapsed_embeddings_score_at_chance_with_pessimistic_ties() -> None:
    # all embeddings equal: every relevant item ties with every irrelevant one and ranks after them
    works = [0, 0, 1, 1, 1, 2, 2, 2, 2]
    got = evaluate(np.ones((9, 4)), works, return_per_query=True)
    # query of work 0: 7 irrelevant then 1 relevant -> rank 8; work 1: 6 then 2 -> ranks 7, 8
    np.testing.assert_allclose(got["per_query"]["rank1"], [8, 8, 7, 7, 7, 6, 6, 6, 6])
    np.testing.assert_allclose(got["per_query"]["AP"][2], (1 / 7 + 2 / 8) / 2)


def test_covers80_style_query_set_against_reference_set(rng: np.random.Generator) -> None:
    # 80 works, one version in the query set (items 0-79), one in the reference set (80-159)
    n_works, dim = 80, 16
    base = rng.normal(size=(n_works, dim))
    x = np.concatenate([base, base + 0.01 * rng.normal(size=(n_works, dim))])
    works = [f"w{i}" for i in range(n_works)] * 2
    got = evaluate(
        x, works, metric="l2", queries=np.arange(80), refs=np.arange(80, 160), return_per_query=True
    )
    assert got["MAP"] == 1.0 and got["MR1"] == 1.0 and got["Top1"] == 1.0
    assert got["P@10"] == pytest.approx(0.1) and got["n_queries"] == 80 and got["n_refs"] == 80
    # a noisier copy on an exact grid (no float32 rounding): compare with the reference
    grid = grid_embeddings(rng, 2 * n_works, dim)
    grid[80:] = grid[:80] + rng.integers(-1, 2, (n_works, dim)) / 4
    q, r = np.arange(80), np.arange(80, 160)
    for metric in ("ip", "l2"):
        got = evaluate(grid, works, metric=metric, queries=q, refs=r, return_per_query=True)  # type: ignore[arg-type]
        assert_same(got, reference(grid, works, metric=metric, queries=q, refs=r))
        mask = np.zeros(160, dtype=bool)
        mask[:80] = True
        as_mask = evaluate(grid, works, metric=metric, queries=mask, refs=~mask)  # type: ignore[arg-type]
        assert as_mask["MAP"] == got["MAP"] and as_mask["MR1"] == got["MR1"]


# ---------------------------------------------------------------- against the naive reference


@pytest.mark.parametrize("n", [2, 3, 11, 60, 250])
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("ties", ["pessimistic", "index"])
def test_matches_reference_on_exact_grid_data(
    rng: np.random.Generator, n: int, metric: str, ties: str
) -> None:
    for trial in range(3):
        works = random_works(rng, n)
        if len(set(works)) == n:  # make sure at least one query has something to find
            works[-1] = works[0]
        x = grid_embeddings(rng, n, int(rng.integers(1, 9)))
        kwargs: dict[str, Any] = {"metric": metric, "ties": ties}
        if trial == 1:
            kwargs["exclude_self"] = False
        if trial == 2 and n > 3:
            kwargs["queries"] = rng.permutation(random_subset(rng, n))
            kwargs["refs"] = random_subset(rng, n)
        ref = reference(x, works, **kwargs)
        if ref["n_queries"] == 0:
            with pytest.raises(ValueError, match="no query has a relevant"):
                evaluate(x, works, **kwargs)
            continue
        got = evaluate(x, works, return_per_query=True, batch=int(rng.integers(1, n + 1)), **kwargs)
        assert_same(got, ref)
        assert got["n_items"] == n


@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
@pytest.mark.parametrize("n", [40, 300])
def test_matches_reference_on_gaussian_data(rng: np.random.Generator, metric: str, n: int) -> None:
    """Continuous scores: float32 rounding can only swap items whose float64 scores differ by less
    than ~1e-5; queries with such a near tie between a relevant and an irrelevant item are skipped.
    Duplicated rows tie exactly in both computations and are kept."""
    d = int(rng.integers(2, 33))
    works = random_works(rng, n)
    works[-1] = works[0]
    x = rng.normal(size=(n, d)).astype(np.float32) * rng.uniform(0.1, 10)
    for _ in range(n // 10):
        x[rng.integers(n)] = x[rng.integers(n)]
    got = evaluate(x, works, metric=metric, return_per_query=True)  # type: ignore[arg-type]
    ref = reference(x, works, metric=metric)
    x64 = x.astype(np.float64)
    if metric == "cosine":
        x64 /= np.linalg.norm(x64, axis=1, keepdims=True)
    compared = 0
    for q in range(n):
        if ref["per_query"]["n_relevant"][q] == 0:
            assert np.isnan(got["per_query"]["AP"][q])
            continue
        others = np.arange(n) != q
        score = exact_scores(x64, q, np.arange(n), metric)
        rel = (np.array(works) == works[q]) & others
        irr = (np.array(works) != works[q]) & others
        gaps = np.abs(score[rel][:, None] - score[irr][None, :])
        if np.any((gaps > 0) & (gaps < 1e-5 * (1 + np.abs(score).max()))):
            continue
        compared += 1
        for key in PER_QUERY_KEYS:
            assert got["per_query"][key][q] == pytest.approx(ref["per_query"][key][q], rel=1e-12), (q, key)
    assert compared >= 0.8 * ref["n_queries"]


@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
@pytest.mark.parametrize("ties", ["pessimistic", "index"])
def test_duplicated_gaussian_rows_tie_exactly(rng: np.random.Generator, metric: str, ties: str) -> None:
    """Items that are copies of a few random vectors, at all positions: each group of copies must
    tie exactly (float32 products alone can differ in the last bit between equal columns)."""
    # small batches of tens of items in 30-70 dimensions are where OpenBLAS's sgemm was seen to
    # round equal columns differently
    for n in (8, 20, 45, 90):
        pool = rng.normal(size=(5, int(rng.integers(30, 71)))).astype(np.float32)
        x = pool[rng.integers(0, len(pool), n)]
        works = random_works(rng, n)
        works[-1] = works[0]
        ref = reference(x, works, metric=metric, ties=ties)
        for batch in (1, 3, 7, 16):
            got = evaluate(x, works, metric=metric, ties=ties, return_per_query=True, batch=batch)  # type: ignore[arg-type]
            assert_same(got, ref)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_index_ties_reproduce_csi_runtime_topk_ranking(rng: np.random.Generator, metric: str) -> None:
    """ties="index" gives the positions of a csi_runtime.topk over all references, self removed."""
    n = 120
    works = random_works(rng, n)
    works[-1] = works[0]
    x = grid_embeddings(rng, n, 3)  # 5^3 distinct rows at most: many exact ties
    got = evaluate(x, works, metric=metric, ties="index", return_per_query=True)  # type: ignore[arg-type]
    _, order = topk(x, x, n, metric=metric, device="cpu")
    for q in range(n):
        ranked = order[q][order[q] != q]
        relevance = np.array([works[i] == works[q] for i in ranked], dtype=int)
        if not relevance.any():
            continue
        assert got["per_query"]["AP"][q] == pytest.approx(F_average_precision(relevance), rel=1e-12)
        assert got["per_query"]["rank1"][q] == F_mean_rank(relevance)


def test_large_work_and_small_memory_blocks(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A work with 150 items and a tiny block budget: chunked counting and the sorted relevant
    counts path give the same result as the reference."""
    n = 400
    works = [0] * 150 + random_works(rng, n - 150)
    works = [w if i < 150 else w + 1 for i, w in enumerate(works)]
    x = grid_embeddings(rng, n, 4)
    monkeypatch.setattr(metrics, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(metrics, "CACHE_BYTES", 4096)
    for ties in ("pessimistic", "index"):
        got = evaluate(x, works, metric="l2", ties=ties, return_per_query=True)  # type: ignore[arg-type]
        assert_same(got, reference(x, works, metric="l2", ties=ties))


def test_torch_scorer_matches_numpy_scorer(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The torch path (what device="cuda" runs) on the CPU, against the reference."""
    monkeypatch.setattr(
        metrics, "_make_scorer", lambda refs, metric, device: metrics._TorchScorer(refs, metric, "cpu")
    )
    n = 150
    works = random_works(rng, n)
    works[-1] = works[0]
    x = grid_embeddings(rng, n, 5)
    for metric in ("ip", "l2"):
        for ties in ("pessimistic", "index"):
            got = evaluate(x, works, metric=metric, ties=ties, return_per_query=True, batch=37)  # type: ignore[arg-type]
            assert_same(got, reference(x, works, metric=metric, ties=ties))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_reference(rng: np.random.Generator) -> None:
    n = 500
    works = random_works(rng, n)
    works[-1] = works[0]
    x = grid_embeddings(rng, n, 8)
    for metric in ("ip", "l2"):
        for ties in ("pessimistic", "index"):
            got = evaluate(x, works, metric=metric, ties=ties, device="cuda", return_per_query=True)  # type: ignore[arg-type]
            assert_same(got, reference(x, works, metric=metric, ties=ties))


# ---------------------------------------------------------------- invariances and input forms


def test_permuting_items_changes_nothing_with_pessimistic_ties(rng: np.random.Generator) -> None:
    n = 200
    works = random_works(rng, n)
    works[-1] = works[0]
    x = grid_embeddings(rng, n, 3)  # exact ties everywhere
    perm = rng.permutation(n)
    for metric in ("ip", "l2"):
        a = evaluate(x, works, metric=metric, return_per_query=True)  # type: ignore[arg-type]
        b = evaluate(x[perm], [works[i] for i in perm], metric=metric, return_per_query=True)  # type: ignore[arg-type]
        for key in SUMMARY_KEYS:
            assert a[key] == pytest.approx(b[key], rel=1e-12)
        for key in PER_QUERY_KEYS:
            np.testing.assert_allclose(a["per_query"][key][perm], b["per_query"][key], rtol=1e-12)


def test_without_ties_index_rule_is_permutation_invariant_and_equals_pessimistic(
    rng: np.random.Generator,
) -> None:
    # 1-D distinct non-zero integers under "ip": every query's scores are distinct and exact
    n = 150
    x = rng.choice(np.concatenate([np.arange(-400, 0), np.arange(1, 401)]), n, replace=False)[:, None]
    works = random_works(rng, n)
    works[-1] = works[0]
    perm = rng.permutation(n)
    a = evaluate(x, works, ties="index", return_per_query=True)
    b = evaluate(x[perm], [works[i] for i in perm], ties="index", return_per_query=True)
    c = evaluate(x, works, ties="pessimistic", return_per_query=True)
    for key in PER_QUERY_KEYS:
        np.testing.assert_array_equal(a["per_query"][key][perm], b["per_query"][key])
        np.testing.assert_array_equal(a["per_query"][key], c["per_query"][key])


def test_work_id_types(rng: np.random.Generator) -> None:
    n = 60
    works = random_works(rng, n)
    works[-1] = works[0]
    x = rng.normal(size=(n, 4))
    as_int = evaluate(x, works)
    for other in (
        [f"work-{w}" for w in works],
        np.array(works, dtype=np.int32) * 7 - 3,
        np.array([str(w) for w in works]),
        [(w, "tuple") for w in works],
    ):
        got = evaluate(x, other)  # type: ignore[arg-type]
        for key in SUMMARY_KEYS:
            assert got[key] == as_int[key]
    # 1 and "1" are different works
    mixed = evaluate(np.array([[1.0], [0.9], [0.0]]), [1, "1", 1], return_per_query=True)
    assert mixed["per_query"]["n_relevant"].tolist() == [1, 0, 1]


def test_accepts_torch_tensors_and_integer_arrays(rng: np.random.Generator) -> None:
    x = rng.integers(-3, 4, (30, 5))
    works = [i // 3 for i in range(30)]
    expected = evaluate(x.astype(np.float32), works)
    assert evaluate(x, works)["MAP"] == expected["MAP"]
    tensor = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    assert evaluate(tensor, works)["MAP"] == expected["MAP"]


def test_cosine_is_scale_invariant(rng: np.random.Generator) -> None:
    # rows with entries in {0, +-1/2} and exactly four non-zeros have norm exactly 1; scaling them by
    # powers of two keeps the normalised rows exact, so the cosine ranking must equal the ip one
    n = 80
    x = np.zeros((n, 8), dtype=np.float32)
    for row in x:
        row[rng.choice(8, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    works = random_works(rng, n)
    works[-1] = works[0]
    scaled = x * (2.0 ** rng.integers(-6, 7, n))[:, None]
    a = evaluate(x, works, metric="ip", return_per_query=True)
    b = evaluate(scaled, works, metric="cosine", return_per_query=True)
    for key in PER_QUERY_KEYS:
        np.testing.assert_array_equal(a["per_query"][key], b["per_query"][key])


# ---------------------------------------------------------------- bad input


def test_bad_input_raises_clear_errors() -> None:
    x = np.eye(4)
    works = [0, 0, 1, 1]
    with pytest.raises(ValueError, match="3 work ids for 4 embeddings"):
        evaluate(x, works[:3])
    with pytest.raises(ValueError, match="at least 2 items"):
        evaluate(np.ones((1, 3)), [0])
    with pytest.raises(ValueError, match="at least 2 items"):
        evaluate(np.ones((0, 3)), [])
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        evaluate(np.ones(4), works)
    with pytest.raises(TypeError, match="real"):
        evaluate(np.ones((4, 2), dtype=complex), works)
    with pytest.raises(ValueError, match="metric"):
        evaluate(x, works, metric="dot")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ties"):
        evaluate(x, works, ties="optimistic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k_precision"):
        evaluate(x, works, k_precision=0)
    with pytest.raises(ValueError, match="batch"):
        evaluate(x, works, batch=0)
    with pytest.raises(ValueError, match=r"queries indices must lie in \[0, 4\)"):
        evaluate(x, works, queries=[0, 4])
    with pytest.raises(ValueError, match="refs indices must lie"):
        evaluate(x, works, refs=[-1, 2])
    with pytest.raises(ValueError, match="repeat"):
        evaluate(x, works, queries=[1, 1])
    with pytest.raises(ValueError, match="mask has 3 entries"):
        evaluate(x, works, queries=[True, False, True])
    with pytest.raises(ValueError, match="selects no item"):
        evaluate(x, works, refs=np.zeros(4, dtype=bool))
    with pytest.raises(TypeError, match="mask or integer"):
        evaluate(x, works, queries=[0.0, 1.0])
    with pytest.raises(ValueError, match="no query has a relevant"):
        evaluate(x, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="no query has a relevant"):
        evaluate(x, works, queries=[0, 1], refs=[2, 3])
    with pytest.raises(ValueError, match="non-zero rows"):
        evaluate(np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]), [0, 0, 1], metric="cosine")
    with pytest.raises(TypeError, match="single string"):
        evaluate(x, "abcd")
    with pytest.raises(TypeError, match="hashable"):
        evaluate(x, [[0], [0], [1], [1]])
    with pytest.raises(ValueError, match="device"):
        evaluate(x, works, device="tpu")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_embeddings_raise(bad: float) -> None:
    x = np.eye(6)
    x[2, 1] = bad
    x[4, 0] = bad
    with pytest.raises(NonFiniteError, match=r"NaN or Inf in 2 of 6 rows \(first: \[2, 4\]\)"):
        evaluate(x, [0, 0, 1, 1, 2, 2])
    assert issubclass(NonFiniteError, ValueError)


def test_scores_that_would_overflow_float32_raise() -> None:
    x = np.eye(4) * 1e17
    with pytest.raises(NonFiniteError, match="too large"):
        evaluate(x, [0, 0, 1, 1], metric="l2")
