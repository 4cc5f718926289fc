"""GPU tests of the CUDA top-k (``csi_runtime.topk(..., device="cuda")``).

Skipped without a usable CUDA device. Every test draws fresh random inputs (the seed is
printed, so a failure can be replayed with ``CSI_TEST_SEED=<seed>``) and compares against a
float64 numpy reference and against the CPU kernel (tests/topk_reference.py explains what
"exact" means for floating-point scores).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import csi_runtime
from csi_runtime import NonFiniteError, _native

from topk_reference import Reference, assert_same_topk, check_topk

cuda = _native.cuda
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not _native.cuda_available(), reason="no usable CUDA device (or _cuda not built)"),
]

RTOL = 2e-6  # score error bound, relative to |q| |r| (ip) or (|q| + |r|)^2 (l2)


@pytest.fixture
def rng() -> np.random.Generator:
    seed = int(os.environ.get("CSI_TEST_SEED", np.random.SeedSequence().entropy % 2**63))
    print(f"CSI_TEST_SEED={seed}")
    return np.random.default_rng(seed)


def random_refs(rng: np.random.Generator, n: int, d: int, dtype: str, chunk: int = 1 << 18):
    """[n, d] references in `dtype` (int8 with scales), generated in chunks to bound memory."""
    out = np.empty((n, d), dtype=np.int8 if dtype == "int8" else dtype)
    scales = np.empty(n, np.float32) if dtype == "int8" else None
    for s in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - s), d), dtype=np.float32)
        if dtype == "int8":
            out[s : s + len(x)], scales[s : s + len(x)] = csi_runtime.quantize_int8(x)
        else:
            out[s : s + len(x)] = x
    return out, scales


def run_cuda(q, r, k, metric, scales=None, device="cuda"):
    return csi_runtime.topk(q, r, k, metric, device=device, scales=scales)


def check_against_cpu_and_float64(q, r, sc, k, metric, got, check_duplicates=False, reference=None):
    """got is an exact top-k (float64 reference) and agrees with the CPU kernel up to rounding."""
    if reference is None:
        reference = Reference(q, r, sc, metric, RTOL, check_duplicates)
    check_topk(got[0], got[1], q, r, sc, k, metric, rtol=RTOL, reference=reference)
    if k <= csi_runtime.CPU_MAX_K:
        cpu = csi_runtime.topk(q, r, k, metric, device="cpu", scales=sc)
        assert_same_topk(got, cpu, q, r, sc, metric, rtol=RTOL, reference=reference)


# ---- shapes x storage x metric x k -----------------------------------------------------------

Q_VALUES = [1, 3, 16, 17, 300]
D_VALUES = [64, 100, 256, 2048]


def k_values(n: int) -> list[int]:
    return sorted({k for k in (1, 10, n, 4096) if k <= min(n, cuda.MAX_K)})


@pytest.mark.parametrize("dtype", ["float16", "int8", "float32"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("n", [1, 100, 10_000])
@pytest.mark.parametrize("d", D_VALUES)
def test_small_catalogs_all_query_counts(rng, dtype: str, metric: str, n: int, d: int) -> None:
    r, sc = random_refs(rng, n, d, dtype)
    for nq in Q_VALUES:
        q = rng.standard_normal((nq, d), dtype=np.float32)
        ref = Reference(q, r, sc, metric, RTOL)
        for k in k_values(n):
            got = run_cuda(q, r, k, metric, sc)
            check_against_cpu_and_float64(q, r, sc, k, metric, got, reference=ref)


LARGE = [(1, 64), (3, 100), (16, 256), (17, 256), (300, 64), (300, 256)]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float16", "int8", "float32"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize(("nq", "d"), LARGE)
def test_large_catalog(rng, dtype: str, metric: str, nq: int, d: int) -> None:
    n = 1_000_003
    r, sc = random_refs(rng, n, d, dtype)
    q = rng.standard_normal((nq, d), dtype=np.float32)
    dev_r = cuda.DeviceArray.from_host(r)
    dev_s = cuda.DeviceArray.from_host(sc) if sc is not None else None
    ref = Reference(q, r, sc, metric, RTOL)
    for k in (1, 10, 4096):
        got = run_cuda(q, dev_r, k, metric, dev_s)
        check_against_cpu_and_float64(q, r, sc, k, metric, got, reference=ref)
    # Host references (streamed in slabs through the double-buffered upload) agree.
    host = run_cuda(q, r, 10, metric, sc)
    check_topk(host[0], host[1], q, r, sc, 10, metric, rtol=RTOL, reference=ref)
    assert_same_topk(host, run_cuda(q, dev_r, 10, metric, dev_s), q, r, sc, metric, reference=ref)


@pytest.mark.slow
@pytest.mark.parametrize("nq", [1, 17])
def test_large_catalog_d2048(rng, nq: int) -> None:
    n, d = 1_000_003, 2048
    r, _ = random_refs(rng, n, d, "float16")
    q = rng.standard_normal((nq, d), dtype=np.float32)
    dev_r = cuda.DeviceArray.from_host(r)
    for metric in ("ip", "l2"):
        ref = Reference(q, r, None, metric, RTOL)
        for k in (1, 10, 4096):
            got = run_cuda(q, dev_r, k, metric)
            check_against_cpu_and_float64(q, r, None, k, metric, got, reference=ref)


@pytest.mark.parametrize("dtype", ["float16", "int8", "float32"])
def test_k_up_to_max_k(rng, dtype: str) -> None:
    n, d = cuda.MAX_K + 3, 40
    r, sc = random_refs(rng, n, d, dtype)
    q = rng.standard_normal((5, d), dtype=np.float32)
    ref = Reference(q, r, sc, "ip", RTOL)
    for k in (4096, cuda.MAX_K):
        got = run_cuda(q, r, k, "ip", sc)
        check_against_cpu_and_float64(q, r, sc, k, "ip", got, reference=ref)


def test_k_above_max_k_is_a_clear_error(rng) -> None:
    n = cuda.MAX_K + 1
    r = rng.standard_normal((n, 8), dtype=np.float32).astype(np.float16)
    q = rng.standard_normal((2, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="CUDA limit"):
        run_cuda(q, r, n, "ip")
    _s, i = csi_runtime.topk(q, r, n, device="auto")  # auto falls back to the CPU
    assert i.shape == (2, n)


# ---- ties, adversarial order, internal paths ----------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "int8", "float32"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_duplicates_tie_to_lower_index(rng, dtype: str, metric: str) -> None:
    base = rng.standard_normal((11, 64), dtype=np.float32)
    x = base[rng.integers(0, 11, size=30_000)]
    r, sc = csi_runtime.quantize_int8(x) if dtype == "int8" else (x.astype(dtype), None)
    q = rng.standard_normal((20, 64), dtype=np.float32)
    ref = Reference(q, r, sc, metric, RTOL, check_duplicates=True)
    for k in (1, 5, 100, 4096):
        got = run_cuda(q, r, k, metric, sc)
        check_topk(got[0], got[1], q, r, sc, k, metric, rtol=RTOL, reference=ref)
        cpu = csi_runtime.topk(q, r, k, metric, device="cpu", scales=sc)
        np.testing.assert_array_equal(got[1], cpu[1])  # exact ties: the same indices


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("k", [1, 10, 1000])
def test_adversarial_order_takes_the_overflow_path(rng, metric: str, k: int) -> None:
    """References sorted by score ascending: every row beats the running threshold."""
    x = rng.standard_normal((300_000, 96), dtype=np.float32)
    q = rng.standard_normal((4, 96), dtype=np.float32)
    key = x @ q[0] if metric == "ip" else 2 * (x @ q[0]) - (x * x).sum(1)
    r = x[np.argsort(key, kind="stable")].astype(np.float16)
    s, i, stats = cuda._topk_with_stats(q, r, None, k, metric, 0)
    check_against_cpu_and_float64(q, r, None, k, metric, (s, i))
    assert stats["overflows"] > 0, stats
    s2, i2, stats2 = cuda._topk_with_stats(q, r, None, k, metric, 0, cap=max(8 * k, 256))
    assert stats2["overflows"] > 0, stats2
    check_against_cpu_and_float64(q, r, None, k, metric, (s2, i2))


@pytest.mark.parametrize("dtype", ["float16", "int8", "float32"])
def test_blocks_slabs_and_chunks(rng, dtype: str) -> None:
    """Small budgets force query blocks, small slabs the double-buffered host upload."""
    n, d = 50_001, 72
    r, sc = random_refs(rng, n, d, dtype)
    q = rng.standard_normal((70, d), dtype=np.float32)
    k = 33
    plan = cuda._plan(70, n, d, k, 1 << 30, cap=500)
    s, i, stats = cuda._topk_with_stats(
        q,
        r,
        sc,
        k,
        "l2",
        0,
        cap=500,
        slab_rows=4000,
        max_chunk=3000,
        budget_bytes=9 * plan["bytes_per_query"],
    )
    assert stats["blocks"] == 8
    assert stats["slabs"] == 8 * 13
    check_against_cpu_and_float64(q, r, sc, k, "l2", (s, i))
    # Same orchestration on the CPU (emulation): same answer up to rounding.
    e = cuda._emulate_topk(q, r, sc, k, "l2", cap=500, slab_rows=4000, max_chunk=3000)
    assert_same_topk((s, i), e[:2], q, r, sc, "l2", rtol=RTOL)


@pytest.mark.parametrize("dtype", ["float16", "int8", "float32"])
def test_odd_dimensions(rng, dtype: str) -> None:
    """D not a multiple of the 16-byte vector: the element-wise load path and zero padding."""
    for d in (1, 3, 7, 33, 100, 129):
        r, sc = random_refs(rng, 5000, d, dtype)
        q = rng.standard_normal((9, d), dtype=np.float32)
        for metric in ("ip", "l2"):
            got = run_cuda(q, r, 20, metric, sc)
            check_against_cpu_and_float64(q, r, sc, 20, metric, got)


def test_unaligned_device_pointers(rng) -> None:
    """A device array starting mid-vector (a slice of a larger tensor) takes the element-wise path."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    r = rng.standard_normal((5001, 64), dtype=np.float32).astype(np.float16)
    flat = torch.from_numpy(r).cuda().reshape(-1)
    q = rng.standard_normal((4, 64), dtype=np.float32)
    for offset in (64, 3):  # one row (16-byte aligned), then 6 bytes
        t = flat[offset : offset + 5000 * 64].reshape(5000, 64)
        host = r.reshape(-1)[offset : offset + 5000 * 64].reshape(5000, 64)
        got = run_cuda(q, t, 7, "ip")
        check_against_cpu_and_float64(q, host, None, 7, "ip", got)


# ---- device arrays ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "int8", "float32"])
def test_device_array_roundtrip_and_interface(rng, dtype: str) -> None:
    r, _sc = random_refs(rng, 1000, 24, dtype)
    a = cuda.DeviceArray.from_host(r)
    assert a.shape == (1000, 24)
    assert a.dtype == str(r.dtype)
    assert a.nbytes == r.nbytes
    assert a.device == 0
    iface = a.__cuda_array_interface__
    assert iface["version"] == 3
    assert iface["shape"] == (1000, 24)
    assert np.dtype(iface["typestr"]) == r.dtype
    assert iface["strides"] is None
    assert iface["data"][0] != 0
    np.testing.assert_array_equal(a.to_host(), r)
    with pytest.raises(ValueError, match="C-contiguous"):
        cuda.DeviceArray.from_host(np.asfortranarray(r))
    with pytest.raises(TypeError):
        cuda.DeviceArray.from_host(r.astype(np.float64))


@pytest.mark.parametrize("dtype", ["float16", "int8", "float32"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_device_and_host_inputs_agree(rng, dtype: str, metric: str) -> None:
    r, sc = random_refs(rng, 20_000, 128, dtype)
    q = rng.standard_normal((37, 128), dtype=np.float32)
    dq, dr = cuda.DeviceArray.from_host(q), cuda.DeviceArray.from_host(r)
    ds = cuda.DeviceArray.from_host(sc) if sc is not None else None
    ref = Reference(q, r, sc, metric, RTOL)
    host = run_cuda(q, r, 50, metric, sc)
    check_against_cpu_and_float64(q, r, sc, 50, metric, host, reference=ref)
    for qq, rr, ss in ((dq, dr, ds), (q, dr, ds), (dq, r, sc), (q, dr, sc)):
        got = run_cuda(qq, rr, 50, metric, ss)
        check_topk(got[0], got[1], q, r, sc, 50, metric, rtol=RTOL, reference=ref)
        assert_same_topk(got, host, q, r, sc, metric, reference=ref)


def test_torch_tensors_through_cuda_array_interface(rng) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    r = rng.standard_normal((300_000, 64), dtype=np.float32).astype(np.float16)
    q = rng.standard_normal((8, 64), dtype=np.float32)
    # Produced on torch's default stream, no explicit synchronisation: torch's interface (v2)
    # carries no stream, so the module synchronises the legacy default stream before reading.
    tr = torch.from_numpy(r).cuda(non_blocking=True) * 1.0
    tq = torch.from_numpy(q).cuda(non_blocking=True) * 1.0
    got = run_cuda(tq, tr, 25, "ip")
    check_against_cpu_and_float64(q, r, None, 25, "ip", got)
    # Produced on a side stream: the producer synchronises (v2 has no way to say which stream).
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        tr2 = torch.from_numpy(r).cuda(non_blocking=True).flip(0).contiguous()
    side.synchronize()
    got2 = run_cuda(q, tr2, 25, "ip")
    check_against_cpu_and_float64(q, r[::-1].copy(), None, 25, "ip", got2)


# ---- non-finite input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where", ["host_refs", "device_refs", "device_queries", "inf", "overflow", "device_scales"]
)
def test_nonfinite_is_detected(rng, where: str) -> None:
    r = rng.standard_normal((40_000, 32), dtype=np.float32)
    q = rng.standard_normal((3, 32), dtype=np.float32)
    sc = None
    metric = "ip"
    if where in ("host_refs", "device_refs"):
        r[31_234, 5] = np.nan
    elif where == "device_queries":
        q[2, 7] = np.nan
    elif where == "inf":
        r[10, 0] = np.inf
    elif where == "overflow":
        r[39_999] = 1e30
        metric = "l2"
    elif where == "device_scales":
        r, sc = csi_runtime.quantize_int8(r)
        sc[1234] = np.nan
    qq = cuda.DeviceArray.from_host(q) if where == "device_queries" else q
    rr = cuda.DeviceArray.from_host(r) if where.startswith("device") else r
    ss = cuda.DeviceArray.from_host(sc) if sc is not None else None
    with pytest.raises(NonFiniteError):
        run_cuda(qq, rr, 5, metric, ss)
    with pytest.raises(cuda.NonFiniteError):
        cuda.topk(qq, rr, ss, 5, metric, 0)
    # The device is still usable afterwards.
    clean = rng.standard_normal((1000, 32), dtype=np.float32)
    got = run_cuda(q[:2], clean, 5, "ip")
    check_against_cpu_and_float64(q[:2], clean, None, 5, "ip", got)


# ---- concurrency, memory, info -------------------------------------------------------------------


def test_concurrent_calls_from_eight_threads(rng) -> None:
    problems = []
    for t in range(8):
        dtype = ("float16", "int8", "float32")[t % 3]
        r, sc = random_refs(rng, 30_000 + 1000 * t, 64, dtype)
        q = rng.standard_normal((1 + 37 * t, 64), dtype=np.float32)
        rr = cuda.DeviceArray.from_host(r) if t % 2 else r
        ss = (cuda.DeviceArray.from_host(sc) if t % 2 else sc) if sc is not None else None
        problems.append((q, r, sc, rr, ss, 10 + 100 * t, ("ip", "l2")[t % 2]))
    expected = [run_cuda(q, rr, k, m, ss) for q, _, _, rr, ss, k, m in problems]
    barrier = threading.Barrier(8)

    def work(i: int):
        q, _, _, rr, ss, k, m = problems[i]
        barrier.wait()
        return [run_cuda(q, rr, k, m, ss) for _ in range(5)]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    for (q, r, sc, _, _, k, m), exp, got in zip(problems, expected, results, strict=True):
        check_against_cpu_and_float64(q, r, sc, k, m, exp)
        for s, i in got:
            np.testing.assert_array_equal(i, exp[1])
            np.testing.assert_array_equal(s, exp[0])


def test_out_of_memory_is_memory_error(rng) -> None:
    total = cuda.device_info(0)["total_memory"]
    with pytest.raises(MemoryError, match="bytes"):
        cuda.copy_bandwidth(2 * total, 1, 0)
    # A failed allocation leaves the device usable.
    r = rng.standard_normal((1000, 16), dtype=np.float32)
    q = rng.standard_normal((2, 16), dtype=np.float32)
    check_against_cpu_and_float64(q, r, None, 3, "ip", run_cuda(q, r, 3, "ip"))


def test_device_info_and_bandwidth() -> None:
    info = cuda.device_info(0)
    assert info["total_memory"] > 0
    assert info["multiprocessors"] > 0
    assert info["l2_cache_bytes"] > 0
    major, _minor = (int(x) for x in info["compute_capability"].split("."))
    assert major >= 8, "the module is built for sm_80 and newer"
    assert csi_runtime.build_info()["cuda"]["available"] is True
    bw = cuda.copy_bandwidth(1 << 28, 5, 0)
    assert 1e10 < bw < 2e13
