"""Exactness of csi_runtime.topk (CPU) against a float64 numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

import csi_runtime
from csi_runtime import _native, quantize_int8, topk
from csi_runtime.ranking import topk_cpu

from reference import assert_topk_exact

ISAS = list(_native.cpu.supported_isas())
STORAGES = ["float32", "float16", "int8"]
METRICS = ["ip", "l2"]


def make_refs(rng: np.random.Generator, n: int, d: int, storage: str) -> tuple[np.ndarray, np.ndarray | None]:
    x = rng.standard_normal((n, d)).astype(np.float32)
    if storage == "float16":
        return x.astype(np.float16), None
    if storage == "int8":
        return quantize_int8(x)
    return x, None


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("metric", METRICS)
def test_exact_across_shapes(rng: np.random.Generator, isa: str, storage: str, metric: str) -> None:
    # Q covers the streaming path (<= 8, padded to 1/2/4/8) and the GEMM path with partial tiles;
    # D covers SIMD tails; N covers partial blocks and panels.
    for nq, d, n, k in [
        (1, 64, 1, 1),
        (1, 64, 1000, 10),
        (2, 100, 3001, 7),
        (3, 17, 257, 257),
        (5, 1, 40, 5),
        (8, 256, 2049, 100),
        (9, 64, 1500, 1),
        (13, 33, 999, 50),
        (31, 128, 4097, 31),
        (40, 512, 700, 700),
        (100, 65, 5000, 200),
        (2, 2048, 300, 20),
        (20, 2048, 300, 20),
        (7, 1000, 257, 3),
    ]:
        q = rng.standard_normal((nq, d)).astype(np.float32)
        refs, scales = make_refs(rng, n, d, storage)
        s, i = topk_cpu(q, refs, scales, k, metric, threads=2, isa=isa)
        assert_topk_exact(s, i, q, refs, k, metric, scales)


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_thread_counts_and_slabs(rng: np.random.Generator, threads: int) -> None:
    # Large enough that references are split into several slabs whose candidates are merged.
    n, d = 60_000, 48
    refs = rng.standard_normal((n, d)).astype(np.float32)
    for nq, k in [(1, 1), (4, 64), (20, 10), (200, 5)]:
        q = rng.standard_normal((nq, d)).astype(np.float32)
        s, i = topk(q, refs, k, threads=threads)
        assert_topk_exact(s, i, q, refs, k, "ip")


@pytest.mark.parametrize("storage", STORAGES)
def test_large_k(rng: np.random.Generator, storage: str) -> None:
    n, d = 20_000, 64
    refs, scales = make_refs(rng, n, d, storage)
    for nq, k in [(1, 4096), (3, 4096), (12, 4096), (2, n)]:
        q = rng.standard_normal((nq, d)).astype(np.float32)
        s, i = topk(q, refs, k, scales=scales)
        assert_topk_exact(s, i, q, refs, k, "ip", scales)


def test_k_equals_n_returns_a_full_ranking(rng: np.random.Generator) -> None:
    for n in (1, 2, 31, 500):
        refs = rng.standard_normal((n, 16)).astype(np.float32)
        q = rng.standard_normal((3, 16)).astype(np.float32)
        s, i = topk(q, refs, n, metric="l2")
        assert sorted(i[0].tolist()) == list(range(n))
        assert_topk_exact(s, i, q, refs, n, "l2")


def test_query_chunking_under_a_small_scratch_budget(rng: np.random.Generator) -> None:
    # 64 KiB of candidate buffers forces one query (or one tile) per pass.
    refs = rng.standard_normal((3000, 32)).astype(np.float32)
    for nq in (5, 50):
        q = rng.standard_normal((nq, 32)).astype(np.float32)
        s, i = _native.cpu.topk(q, refs, None, 300, "ip", 2, "", 64 << 10)
        assert_topk_exact(s, i, q, refs, 300, "ip")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("nq", [1, 5, 20])
def test_ties_go_to_the_lower_index(isa: str, nq: int, rng: np.random.Generator) -> None:
    d = 40
    row = rng.standard_normal(d).astype(np.float32)
    refs = np.tile(row, (5000, 1))  # every score identical
    q = rng.standard_normal((nq, d)).astype(np.float32)
    for k in (1, 10, 1000, 5000):
        s, i = topk_cpu(q, refs, None, k, "ip", threads=2, isa=isa)
        np.testing.assert_array_equal(i, np.tile(np.arange(k), (nq, 1)))
        assert (s == s[:, :1]).all()


def test_duplicates_and_exact_matches(rng: np.random.Generator) -> None:
    d = 64
    refs = rng.standard_normal((2000, d)).astype(np.float32)
    refs[1500] = refs[10]
    refs[1999] = refs[10]
    s, i = topk(refs[10], refs, 3, metric="l2")
    assert i.tolist() == [10, 1500, 1999]
    assert s[0] == s[1] == s[2]
    assert s[0] <= 1e-3
    s, i = topk(refs[10], refs, 3, metric="ip")
    assert i.tolist() == [10, 1500, 1999]


def test_scores_with_few_distinct_values(rng: np.random.Generator) -> None:
    # Integer-valued vectors give many exactly tied scores at the k-th position.
    refs = rng.integers(-2, 3, size=(3000, 8)).astype(np.float32)
    q = rng.integers(-2, 3, size=(12, 8)).astype(np.float32)
    for k in (1, 17, 500):
        s, i = topk(q, refs, k)
        assert_topk_exact(s, i, q, refs, k, "ip")
        full = q.astype(np.float64) @ refs.T.astype(np.float64)
        order = np.lexsort((np.arange(refs.shape[0])[None, :].repeat(12, 0), -full), axis=1)[:, :k]
        np.testing.assert_array_equal(i, order)


@pytest.mark.parametrize("isa", ISAS)
def test_large_k_selection_with_skewed_and_tied_scores(rng: np.random.Generator, isa: str) -> None:
    # k >= 128 takes the sampled-threshold compaction; few distinct values and heavy-tailed
    # scores make samples miss, which must fall back to the exact path without overflowing.
    n, d = 30_000, 8
    cases = [
        rng.integers(-1, 2, size=(n, d)).astype(np.float32),  # ~20 distinct scores
        (rng.standard_normal((n, d)) ** 5).astype(np.float32),  # heavy tails
        np.repeat(rng.standard_normal((30, d)), n // 30, axis=0).astype(np.float32),  # 30 values, in runs
    ]
    for refs in cases:
        for nq in (1, 3, 11):
            q = rng.integers(-1, 2, size=(nq, d)).astype(np.float32)
            for k in (128, 200, 1000):
                s, i = topk_cpu(q, refs, None, k, "ip", threads=3, isa=isa)
                assert_topk_exact(s, i, q, refs, k, "ip")


def test_adversarial_orderings(rng: np.random.Generator) -> None:
    # Scores increasing with the index make every reference a candidate (many compactions);
    # decreasing ones make the first k final immediately.
    d = 16
    base = rng.standard_normal(d).astype(np.float32)
    ramp = np.linspace(0.1, 2.0, 20_000, dtype=np.float32)[:, None]
    for refs in (ramp * base, ramp[::-1] * base):
        refs = np.ascontiguousarray(refs)
        for nq in (1, 16):
            q = np.tile(base, (nq, 1))
            s, i = topk(q, refs, 777)
            assert_topk_exact(s, i, q, refs, 777, "ip")


def test_layouts_non_contiguous_fortran_and_1d(rng: np.random.Generator) -> None:
    d = 96
    big = rng.standard_normal((3000, 2 * d)).astype(np.float32)
    refs_strided = big[:, ::2]
    refs_fortran = np.asfortranarray(big[:, :d])
    q = rng.standard_normal((6, 2 * d)).astype(np.float64)[:, ::2]
    for refs in (refs_strided, refs_fortran):
        s, i = topk(q, refs, 20)
        assert_topk_exact(s, i, np.ascontiguousarray(q, np.float32), np.ascontiguousarray(refs), 20, "ip")
    s1, i1 = topk(q[2], refs_strided, 20)
    assert s1.shape == (20,) and i1.shape == (20,)
    s2, i2 = topk(q[2:3], refs_strided, 20)
    np.testing.assert_array_equal(i1, i2[0])
    np.testing.assert_array_equal(s1, s2[0])


def test_query_dtypes_are_converted(rng: np.random.Generator) -> None:
    refs = rng.standard_normal((500, 32)).astype(np.float32)
    q = rng.standard_normal((4, 32))
    ref = topk(q.astype(np.float32), refs, 5)
    for dt in (np.float16, np.float64):
        qq = q.astype(dt)
        s, i = topk(qq, refs, 5)
        assert_topk_exact(s, i, qq.astype(np.float32), refs, 5, "ip")
    s, i = topk(q.tolist(), refs, 5)
    np.testing.assert_array_equal(i, ref[1])


def test_zero_queries_return_empty(rng: np.random.Generator) -> None:
    refs = rng.standard_normal((50, 8)).astype(np.float32)
    s, i = topk(np.zeros((0, 8), np.float32), refs, 3)
    assert s.shape == (0, 3) and i.shape == (0, 3)


def test_isas_agree(rng: np.random.Generator) -> None:
    # Every kernel variant computes the same ranking (scores within float32 rounding).
    refs = rng.standard_normal((4000, 200)).astype(np.float16)
    q = rng.standard_normal((30, 200)).astype(np.float32)
    results = {isa: topk_cpu(q, refs, None, 25, "l2", 2, isa) for isa in ISAS}
    base_s, _ = results["generic"]
    for isa, (s, i) in results.items():
        np.testing.assert_allclose(s, base_s, rtol=1e-4, atol=1e-3, err_msg=isa)
        assert_topk_exact(s, i, q, refs, 25, "l2")


def test_public_api_surface() -> None:
    assert csi_runtime.CPU_MAX_K >= 4096
    assert callable(csi_runtime.topk)
