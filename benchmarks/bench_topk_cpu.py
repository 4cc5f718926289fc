"""CPU top-k: csi (float32/float16/int8 storage) vs faiss-cpu IndexFlat vs numpy, same run.

Grid (issue #2): N in {1e5, 1e6}, D in {256, 512}, Q in {1, 32, 1024}, k in {10, 100, 1000},
inner product and L2. Every library gets the same threads. numpy is matmul + argpartition on
64-query chunks (a full Q x N score matrix would need 4 GB at N = 1e6). Ratios are reported
in the results table (benchmarks/results/cpu_topk.md) and in each benchmark's extra_info,
with the Q = 1 scan rate against the read rate of the same reference array measured just
before (`_C.read_rate`: a plain parallel read of its pages) and the Q >= 32 compute rate
against this machine's measured numpy SGEMM rate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from csi_runtime import _native, default_threads, quantize_int8
from csi_runtime.ranking import topk_cpu

from conftest import SMOKE, record

faiss = pytest.importorskip("faiss")

GRID_N = [20_000] if SMOKE else [100_000, 1_000_000]
GRID_D = [64] if SMOKE else [256, 512]
GRID_Q = [1, 32] if SMOKE else [1, 32, 1024]
GRID_K = [10] if SMOKE else [10, 100, 1000]
# (library, metric) pairs: our three storages for inner product; float32 and faiss for both.
CASES = [
    ("csi-f32", "ip"),
    ("csi-f16", "ip"),
    ("csi-i8", "ip"),
    ("faiss", "ip"),
    ("numpy", "ip"),
    ("csi-f32", "l2"),
    ("faiss", "l2"),
]


@pytest.fixture(
    scope="module", params=[(n, d) for n in GRID_N for d in GRID_D], ids=lambda p: f"N{p[0]}-D{p[1]}"
)
def dataset(request: pytest.FixtureRequest) -> dict[str, Any]:
    n, d = request.param
    rng = np.random.default_rng(n + d)
    refs = rng.standard_normal((n, d), dtype=np.float32)
    refs /= np.linalg.norm(refs, axis=1, keepdims=True)
    codes, scales = quantize_int8(refs)
    threads = default_threads()
    faiss.omp_set_num_threads(threads)
    flat = {"ip": faiss.IndexFlatIP(d), "l2": faiss.IndexFlatL2(d)}
    for index in flat.values():
        index.add(refs)
    queries = rng.standard_normal((max(GRID_Q), d), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return {
        "n": n,
        "d": d,
        "threads": threads,
        "csi-f32": (refs, None),
        "csi-f16": (refs.astype(np.float16), None),
        "csi-i8": (codes, scales),
        "faiss": flat,
        "queries": queries,
    }


def numpy_topk(q: np.ndarray, refs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores, index = [], []
    for start in range(0, q.shape[0], 64):
        s = q[start : start + 64] @ refs.T
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        ps = np.take_along_axis(s, part, 1)
        order = np.argsort(-ps, axis=1, kind="stable")
        scores.append(np.take_along_axis(ps, order, 1))
        index.append(np.take_along_axis(part, order, 1))
    return np.concatenate(scores), np.concatenate(index)


def runner(lib: str, data: dict[str, Any], q: np.ndarray, k: int, metric: str) -> Callable[[], Any]:
    if lib == "faiss":
        index = data["faiss"][metric]
        return lambda: index.search(q, k)
    if lib == "numpy":
        refs = data["csi-f32"][0]
        return lambda: numpy_topk(q, refs, k)
    refs, scales = data[lib]
    threads = data["threads"]
    return lambda: topk_cpu(q, refs, scales, k, metric, threads)


# The library varies fastest, so the libraries of one cell run back to back: a burst of load
# from elsewhere on the machine then hits a whole comparison rather than one side of it.
@pytest.mark.parametrize(("lib", "metric"), CASES, ids=[f"{lib}-{m}" for lib, m in CASES])
@pytest.mark.parametrize("k", GRID_K)
@pytest.mark.parametrize("nq", GRID_Q)
def test_topk_cpu(  # type: ignore[no-untyped-def]
    benchmark, dataset: dict[str, Any], machine: dict[str, Any], lib: str, metric: str, nq: int, k: int
):
    n, d = dataset["n"], dataset["d"]
    q = dataset["queries"][:nq]
    fn = runner(lib, dataset, q, k, metric)
    refs = dataset[lib][0] if lib.startswith("csi") else dataset["csi-f32"][0]
    flops = 2.0 * nq * n * d
    estimate = max(refs.nbytes / 15e9, flops / 120e9)  # csi's time at typical rates, seconds
    warmup = 0 if estimate > 1.0 else 1
    if SMOKE or estimate > 1.0:
        rounds = 1
    else:
        # Peers can be far slower than the estimate (faiss 6x at Q = 32): time one call, which is
        # the warm-up, and size the rounds from it, so that a 3 s peer cell costs 2 calls, not 4.
        t0 = time.perf_counter()
        fn()
        took = time.perf_counter() - t0
        warmup, rounds = 0, (7 if took < 0.05 else (3 if took < 1.0 else 1))
    benchmark.group = f"N={n:.0e} D={d} Q={nq} k={k} {metric}"
    # The ceiling of a one-query scan: how fast these very pages can be read, measured around it.
    ceiling = _native.cpu.read_rate(refs, dataset["threads"], 3) if nq == 1 and not SMOKE else 0.0
    result = benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=warmup)
    if lib == "csi-f32" and not SMOKE:
        # Sanity: same neighbours as faiss (ties aside) - correctness is tested in tests/.
        _, ref_idx = dataset["faiss"][metric].search(q[:1], k)
        overlap = len(set(result[1][0].tolist()) & set(ref_idx[0].tolist())) / k
        assert overlap > 0.99, overlap
    if benchmark.disabled:
        return
    if nq == 1:
        ceiling = max(ceiling, _native.cpu.read_rate(refs, dataset["threads"], 3))
    seconds = benchmark.stats.stats.min  # best of the rounds: the least disturbed measurement
    info = {"ms": round(seconds * 1e3, 2)}
    if nq == 1:
        info["GB/s"] = round(refs.nbytes / seconds / 1e9, 1)
        info["read rate of refs GB/s"] = round(ceiling / 1e9, 1)
        info["% of read bandwidth"] = round(100 * refs.nbytes / seconds / ceiling, 1)
    else:
        info["GFLOP/s"] = round(flops / seconds / 1e9, 1)
        info["% of SGEMM"] = round(100 * flops / seconds / machine["sgemm_flops"], 1)
    benchmark.extra_info.update(info)
    values: dict[str, Any] = {f"{lib} ms": info["ms"]}
    if lib.startswith("csi"):
        key = "% bw" if nq == 1 else "% SGEMM"
        values[f"{lib} {key}"] = info["% of read bandwidth" if nq == 1 else "% of SGEMM"]
    record("cpu_topk", {"N": n, "D": d, "Q": nq, "k": k, "metric": metric}, values)
