"""Bad input to topk gets a clear exception that names the problem, never a crash or garbage."""

from __future__ import annotations

import numpy as np
import pytest

from csi_runtime import CPU_MAX_K, CudaUnavailableError, NonFiniteError, _native, quantize_int8, topk


@pytest.fixture
def data(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return rng.standard_normal((4, 16)).astype(np.float32), rng.standard_normal((100, 16)).astype(np.float32)


def test_refs_dtype_is_an_explicit_contract(data: tuple[np.ndarray, np.ndarray]) -> None:
    q, r = data
    with pytest.raises(TypeError, match=r"float32, float16 or int8 \(got float64\).*astype"):
        topk(q, r.astype(np.float64), 3)
    for dt in (np.int32, np.uint8, np.complex64, bool):
        with pytest.raises(TypeError, match="refs must be"):
            topk(q, r.astype(dt), 3)
    with pytest.raises(TypeError, match="queries must be floating point"):
        topk(q.astype(np.int64), r, 3)
    with pytest.raises(TypeError, match="queries must be floating point"):
        topk(np.array([["a"] * 16]), r, 3)


def test_shapes(data: tuple[np.ndarray, np.ndarray]) -> None:
    q, r = data
    with pytest.raises(ValueError, match="dimension mismatch: queries have D=16, refs have D=15"):
        topk(q, r[:, :15], 3)
    with pytest.raises(ValueError, match="refs must be 2-D"):
        topk(q, r[0], 3)
    with pytest.raises(ValueError, match="queries must be 1-D"):
        topk(q[None], r, 3)
    with pytest.raises(ValueError, match="refs is empty"):
        topk(q, r[:0], 1)
    with pytest.raises(ValueError, match="dimension 0"):
        topk(np.zeros((1, 0), np.float32), r, 1)


@pytest.mark.parametrize("k", [0, -1, 101, 10**9])
def test_k_out_of_range(data: tuple[np.ndarray, np.ndarray], k: int) -> None:
    q, r = data
    with pytest.raises(ValueError, match=r"k must be >= 1|exceeds the number of references \(100\)"):
        topk(q, r, k)


def test_k_types(data: tuple[np.ndarray, np.ndarray]) -> None:
    q, r = data
    for bad in (2.0, "3", None, True):
        with pytest.raises(TypeError, match="k must be an integer"):
            topk(q, r, bad)  # type: ignore[arg-type]
    _s, i = topk(q, r, np.int64(3))
    assert i.shape == (4, 3)


def test_k_beyond_the_cpu_limit_is_refused_not_truncated(rng: np.random.Generator) -> None:
    refs = np.zeros((CPU_MAX_K + 1, 1), np.int8)
    scales = np.ones(CPU_MAX_K + 1, np.float32)
    with pytest.raises(ValueError, match="CPU limit"):
        topk(np.ones((1, 1), np.float32), refs, CPU_MAX_K + 1, scales=scales, device="cpu")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_queries_name_the_row(data: tuple[np.ndarray, np.ndarray], bad: float) -> None:
    q, r = data
    q = q.copy()
    q[2, 5] = bad
    with pytest.raises(NonFiniteError, match="queries row 2 contains NaN or Inf"):
        topk(q, r, 3)


@pytest.mark.parametrize("storage", ["float32", "float16"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("nq", [1, 20])
def test_non_finite_refs_name_the_row(
    data: tuple[np.ndarray, np.ndarray], storage: str, bad: float, nq: int
) -> None:
    q, r = data
    r = r.astype(storage)
    r[77, 3] = bad
    q = np.resize(q, (nq, 16))
    with pytest.raises(NonFiniteError, match="refs row 77 contains NaN or Inf"):
        topk(q, r, 3)


def test_float32_overflow_is_reported(rng: np.random.Generator) -> None:
    r = np.full((10, 4), 3e38, np.float32)
    q = np.full((1, 4), 3e38, np.float32)
    with pytest.raises(NonFiniteError, match="overflow"):
        topk(q, r, 2)


def test_int8_needs_valid_scales(rng: np.random.Generator) -> None:
    codes, scales = quantize_int8(rng.standard_normal((50, 8)))
    q = rng.standard_normal((2, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="int8 refs need their per-row scales"):
        topk(q, codes, 3)
    with pytest.raises(ValueError, match=r"shape \(50,\)"):
        topk(q, codes, 3, scales=scales[:-1])
    bad = scales.copy()
    bad[4] = np.nan
    with pytest.raises(NonFiniteError, match="scales"):
        topk(q, codes, 3, scales=bad)
    with pytest.raises(ValueError, match="only used with int8"):
        topk(q, codes.astype(np.float32), 3, scales=scales)


def test_metric_device_and_threads(data: tuple[np.ndarray, np.ndarray]) -> None:
    q, r = data
    with pytest.raises(ValueError, match="metric must be 'ip' or 'l2'"):
        topk(q, r, 3, metric="cosine")
    with pytest.raises(ValueError, match="device must be"):
        topk(q, r, 3, device="gpu")
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            topk(q, r, 3, threads=bad)  # type: ignore[arg-type]


@pytest.mark.skipif(_native.cuda_available(), reason="checks the behaviour without a usable GPU")
def test_cuda_requested_without_a_gpu(data: tuple[np.ndarray, np.ndarray]) -> None:
    q, r = data
    with pytest.raises(CudaUnavailableError, match="CUDA"):
        topk(q, r, 3, device="cuda")
    _s, i = topk(np.resize(q, (64, 16)), r, 3, device="auto")  # silently the CPU
    assert i.shape == (64, 3)


def test_native_layer_rechecks_its_contract(data: tuple[np.ndarray, np.ndarray]) -> None:
    # A direct call into the extension must never read out of bounds either.
    q, r = data
    cpu = _native.cpu
    with pytest.raises(TypeError):
        cpu.topk(q.astype(np.float64), r, None, 3, "ip")
    with pytest.raises(ValueError, match="C-contiguous"):
        cpu.topk(q, np.asfortranarray(r), None, 3, "ip")
    with pytest.raises(ValueError, match="k must be >= 1"):
        cpu.topk(q, r, None, 0, "ip")
    with pytest.raises(ValueError, match="exceeds the number of references"):
        cpu.topk(q, r, None, 101, "ip")
    with pytest.raises(ValueError, match="scales"):
        cpu.topk(q, r.astype(np.int8), None, 3, "ip")
    with pytest.raises(ValueError, match="unknown kernel variant"):
        cpu.topk(q, r, None, 3, "ip", 1, "sse9")
