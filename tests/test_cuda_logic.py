"""CPU tests of the CUDA top-k's host-side logic (they need no GPU).

* ``tests/cpp/test_topk_plan.cpp`` (built here with the host C++ compiler) checks the key
  encoding, the chunk schedule, the plan and the orchestration against brute force with the
  emulation's own scores, hundreds of shapes, exactly.
* Through ``csi_runtime._cuda`` (when it is built): the same orchestration that the GPU runs
  (``csrc/cuda/topk_plan.h``), driven by a CPU backend that mirrors the kernels' contract and
  arithmetic (``topk_emulate.h``), compared with float64 numpy and with the CPU kernel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import csi_runtime
from csi_runtime import _native

from topk_reference import assert_same_topk, check_topk

ROOT = Path(__file__).resolve().parents[1]
cuda = _native.cuda
needs_module = pytest.mark.skipif(cuda is None, reason="csi_runtime._cuda is not built (no nvcc at install)")


def test_orchestration_cpp(tmp_path: Path) -> None:
    cxx = os.environ.get("CXX", "c++")
    # The package itself cannot be built without a C++ compiler, so its absence is a failure.
    assert shutil.which(cxx), f"no C++ compiler ({cxx}) to build the orchestration test"
    exe = tmp_path / "test_topk_plan"
    src = ROOT / "tests" / "cpp" / "test_topk_plan.cpp"
    build = subprocess.run(
        [
            cxx,
            "-std=c++17",
            "-O2",
            "-Wall",
            "-Wextra",
            f"-I{ROOT / 'csrc'}",
            str(src),
            "-o",
            str(exe),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "all passed" in run.stdout


def emulate(q, r, k, metric, scales=None, **hooks):
    return cuda._emulate_topk(q, r, scales, k, metric, **hooks)


def make_refs(rng: np.random.Generator, n: int, d: int, dtype: str):
    x = rng.standard_normal((n, d)).astype(np.float32)
    if dtype == "float32":
        return x, None
    if dtype == "float16":
        return x.astype(np.float16), None
    r, scales = csi_runtime.quantize_int8(x)
    return r, scales


# ---- numerics --------------------------------------------------------------------------------


@needs_module
@pytest.mark.parametrize("magnitude", [1.0, 1e-3, 1e4, 1e-30, 1e30, 3e38, 1e-40])
def test_query_split_is_fp16_and_exact_to_22_bits(magnitude: float) -> None:
    rng = np.random.default_rng(1)
    q = (rng.uniform(-1.0, 1.0, 300) * magnitude).astype(np.float32)
    q[5] = 0.0
    hi, lo, e = cuda._split_query(q)
    m = float(np.abs(q).max())
    if m >= 1e-30:
        assert 2.0**14 <= np.ldexp(m, e) < 2.0**15
    s = np.ldexp(q.astype(np.float64), e)
    # hi, lo are exactly what __float2half_rn gives (numpy's float16 rounds the same way).
    np.testing.assert_array_equal(hi, np.ldexp(q, e).astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(lo, (np.ldexp(q, e) - hi).astype(np.float16).astype(np.float32))
    if m >= 1e-30:
        # hi + lo carries the query to ~2^-22 of its largest element (subnormal lo aside).
        assert np.abs(s - (hi.astype(np.float64) + lo)).max() <= 2.0**-21 * np.ldexp(m, e) + 2.0**-24


@needs_module
def test_sort_key_order_matches_score_then_index() -> None:
    rng = np.random.default_rng(2)
    scores = np.concatenate(
        [
            rng.standard_normal(300).astype(np.float32),
            np.array([0.0, -0.0, 1e-45, -1e-45, 3e38, -3e38, np.inf, -np.inf], dtype=np.float32),
            np.repeat(np.float32(0.5), 5),
        ]
    )
    idx = rng.permutation(len(scores)).astype(np.uint32)
    keys = np.array(
        [cuda._encode_key(float(s), int(i)) for s, i in zip(scores, idx, strict=True)], dtype=np.uint64
    )
    order = np.argsort(keys, kind="stable")[::-1]  # keys are unique: descending order
    expect = np.lexsort((idx, -scores.astype(np.float64)))
    np.testing.assert_array_equal(order, expect)
    for key, s, i in zip(keys[:20], scores[:20], idx[:20], strict=True):
        ds, di = cuda._decode_key(int(key))
        assert di == i
        assert ds == s


def test_tensor_core_accumulation_model() -> None:
    """Why the kernels sum each 64-dim stage in a fresh fragment (topk_common.h, kStageDims).

    Tensor cores add a k-block's products to the accumulator and truncate the fp32 result
    (round toward zero). Modelling that in float64: chaining all of D = 2048 through one
    accumulator biases all-positive dot products by several 1e-6 of |q||r|; a fresh partial sum
    per 64-dim stage, added with round-to-nearest, stays well under 1e-6.
    """
    rng = np.random.default_rng(3)

    def rz32(x: np.ndarray) -> np.ndarray:
        f = x.astype(np.float32)
        up = np.abs(f.astype(np.float64)) > np.abs(x)
        f[up] = np.nextafter(f[up], np.float32(0))
        return f.astype(np.float64)

    d = 2048
    q = np.abs(rng.standard_normal((16, d)))
    r = np.abs(rng.standard_normal((64, d))).astype(np.float16).astype(np.float64)
    e = 15 - np.frexp(np.abs(q).max(axis=1, keepdims=True))[1]
    qs = np.ldexp(q, e).astype(np.float32)
    hi = qs.astype(np.float16).astype(np.float64)
    lo = (qs - hi).astype(np.float16).astype(np.float64)
    exact = q @ r.T
    norm = np.linalg.norm(q, axis=1)[:, None] * np.linalg.norm(r, axis=1)[None, :]
    chain = np.zeros_like(exact)
    staged = np.zeros_like(exact)
    for k0 in range(0, d, 64):
        part = np.zeros_like(exact)
        for kk in range(k0, k0 + 64, 16):
            for x in (lo, hi):
                p = x[:, kk : kk + 16] @ r[:, kk : kk + 16].T
                chain = rz32(chain + p)
                part = rz32(part + p)
        staged = (staged + part).astype(np.float32).astype(np.float64)
    err_chain = np.abs(np.ldexp(chain, -e) - exact) / norm
    err_staged = np.abs(np.ldexp(staged, -e) - exact) / norm
    assert err_chain.max() > 2e-6
    assert err_staged.max() < 1e-6


# ---- the emulated CUDA top-k against float64 and the CPU kernel --------------------------------

SHAPES = [(1, 1, 3), (3, 100, 64), (16, 1000, 100), (17, 2000, 16), (5, 3001, 256), (2, 500, 2048)]


@needs_module
@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize(("nq", "n", "d"), SHAPES)
def test_emulation_matches_float64_and_cpu(dtype: str, metric: str, nq: int, n: int, d: int) -> None:
    rng = np.random.default_rng([nq, n, d, len(dtype), len(metric)])
    q = rng.standard_normal((nq, d)).astype(np.float32)
    r, sc = make_refs(rng, n, d, dtype)
    for k in sorted({1, min(10, n), n, min(4096, n)}):
        s, i, stats = emulate(q, r, k, metric, sc)
        check_topk(s, i, q, r, sc, k, metric)
        cpu = csi_runtime.topk(q, r, k, metric, device="cpu", scales=sc)
        assert_same_topk((s, i), cpu, q, r, sc, metric)
        assert stats["rows_scored"] >= n


@needs_module
@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_emulation_duplicates_tie_to_lower_index(dtype: str, metric: str) -> None:
    rng = np.random.default_rng(4)
    base = rng.standard_normal((13, 32)).astype(np.float32)
    x = base[rng.integers(0, 13, size=2000)]
    if dtype == "int8":
        r, sc = csi_runtime.quantize_int8(x)
    else:
        r, sc = x.astype(dtype), None
    q = rng.standard_normal((4, 32)).astype(np.float32)
    for k in (1, 7, 150, 2000):
        for cap in (0, 40):  # default, and tiny (many chunks, overflow splits)
            s, i, _ = emulate(q, r, k, metric, sc, cap=cap)
            check_topk(s, i, q, r, sc, k, metric, check_duplicates=True)
            _cs, ci = csi_runtime.topk(q, r, k, metric, device="cpu", scales=sc)
            np.testing.assert_array_equal(i, ci)  # duplicates: exact ties, same answer


@needs_module
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("k", [1, 10, 300])
def test_emulation_adversarial_order_overflows_and_stays_exact(metric: str, k: int) -> None:
    """References sorted by score ascending: every row beats the running threshold."""
    rng = np.random.default_rng(5)
    q = rng.standard_normal((3, 24)).astype(np.float32)
    x = rng.standard_normal((30000, 24)).astype(np.float32)
    key = x @ q[0] if metric == "ip" else 2 * (x @ q[0]) - (x * x).sum(1)
    r = x[np.argsort(key, kind="stable")].astype(np.float16)
    s, i, stats = emulate(q, r, k, metric)
    check_topk(s, i, q, r, None, k, metric)
    assert stats["overflows"] > 0
    assert stats["rows_scored"] < 4 * r.shape[0]  # the schedule adapts: no blow-up
    s2, i2, stats2 = emulate(q, r, k, metric, cap=max(8 * k, 64))  # > 4k: the 2nd chunk overflows
    check_topk(s2, i2, q, r, None, k, metric)
    assert stats2["overflows"] > 0


@needs_module
def test_emulation_blocks_slabs_and_chunks() -> None:
    rng = np.random.default_rng(6)
    q = rng.standard_normal((37, 48)).astype(np.float32)
    r, sc = make_refs(rng, 5000, 48, "int8")
    k = 25
    full = emulate(q, r, k, "ip", sc)
    per_query = cuda._plan(37, 5000, 48, k, 1 << 30, cap=120)["bytes_per_query"]
    s, i, stats = emulate(
        q, r, k, "ip", sc, budget_bytes=5 * per_query, slab_rows=700, max_chunk=300, cap=120
    )
    assert stats["blocks"] == 8  # 37 queries, 5 per block
    assert stats["slabs"] == 8 * 8  # ceil(5000 / 700) slabs per block
    check_topk(s, i, q, r, sc, k, "ip")
    np.testing.assert_array_equal(i, full[1])
    np.testing.assert_array_equal(s, full[0])


@needs_module
def test_emulation_k_limits() -> None:
    rng = np.random.default_rng(7)
    q = rng.standard_normal((2, 8)).astype(np.float32)
    r = rng.standard_normal((cuda.MAX_K + 5, 8)).astype(np.float16)
    s, i, _ = emulate(q, r, cuda.MAX_K, "ip")
    check_topk(s, i, q, r, None, cuda.MAX_K, "ip")
    with pytest.raises(ValueError, match="CUDA limit"):
        emulate(q, r, cuda.MAX_K + 1, "ip")
    with pytest.raises(ValueError, match="exceeds the number of references"):
        emulate(q, r[:5], 6, "ip")


@needs_module
@pytest.mark.parametrize("where", ["refs_nan", "refs_inf", "query_nan", "overflow", "scale_nan"])
def test_emulation_nonfinite_raises(where: str) -> None:
    rng = np.random.default_rng(8)
    q = rng.standard_normal((3, 16)).astype(np.float32)
    r = rng.standard_normal((5000, 16)).astype(np.float32)
    sc = None
    if where == "refs_nan":
        r[4321, 3] = np.nan
    elif where == "refs_inf":
        r[17, 0] = np.inf
    elif where == "query_nan":
        q[1, 2] = np.nan
    elif where == "overflow":
        r[4000] = 1e30  # |r|^2 overflows float32 in l2
    elif where == "scale_nan":
        r, sc = csi_runtime.quantize_int8(r)
        sc[2500] = np.nan
    with pytest.raises(cuda.NonFiniteError):
        emulate(q, r, 5, "l2", sc)
    assert issubclass(cuda.NonFiniteError, ValueError)


@needs_module
def test_plan_respects_budget_and_int32_offsets() -> None:
    for k in (1, 10, 4096, cuda.MAX_K):
        for budget in (1 << 20, 1 << 30, 8 << 30):
            p = cuda._plan(10_000, 100_000_000, 256, k, budget)
            assert p["cap"] == max(4 * k, 8192)
            assert p["stride"] == k + p["cap"]
            assert p["q_block"] == 1 or p["q_block"] * p["bytes_per_query"] <= budget
            assert p["q_block"] * p["stride"] < 2**31
    with pytest.raises(ValueError, match="at most"):
        cuda._plan(1, 2**31, 8, 1, 1 << 30)
