"""Exact top-k ranking of queries against a reference matrix.

``topk`` is the public entry point; it validates and normalises its arguments (explicit dtype
and contiguity contracts, as in FAISS's Python layer), then runs the fused distance + selection
kernel of ``csi_runtime._C`` (CPU) or ``csi_runtime._cuda`` (GPU).

Score conventions
-----------------
``metric="ip"``  inner product, largest first (cosine similarity for unit-norm embeddings).
``metric="l2"``  squared Euclidean distance, smallest first.

Ties are broken by the lower reference index, so results are deterministic.
"""

from __future__ import annotations

import logging
import operator
from typing import Any

import numpy as np
import numpy.typing as npt

from csi_runtime import _native
from csi_runtime.checks import check_finite_rows, first_nonfinite_row
from csi_runtime.errors import CudaUnavailableError, NonFiniteError
from csi_runtime.threads import default_threads

logger = logging.getLogger("csi_runtime")

METRICS = ("ip", "l2")
STORAGE_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.int8))
CPU_MAX_K: int = int(_native.cpu.CPU_MAX_K)
# With host-resident references, the GPU only pays for its transfers from this many queries up.
AUTO_CUDA_MIN_QUERIES = 32


def cuda_max_k() -> int:
    """Largest k the CUDA kernels accept (0 when the CUDA module is not built)."""
    return int(_native.cuda.MAX_K) if _native.cuda is not None else 0


def _is_device_array(obj: Any) -> bool:
    return hasattr(obj, "__cuda_array_interface__") and not isinstance(obj, np.ndarray)


def as_queries(queries: npt.ArrayLike, name: str = "queries") -> tuple[np.ndarray, bool]:
    """Validates queries; returns a C-contiguous float32 ``[Q, D]`` array and whether the input was 1-D.

    Any floating dtype is accepted (queries are small, so the float32 copy is cheap); NaN/Inf
    raise :class:`NonFiniteError` naming the first bad row.
    """
    arr = np.asarray(queries)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be floating point (got dtype {arr.dtype})")
    single = arr.ndim == 1
    if single:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 1-D [D] or 2-D [Q, D] (got shape {arr.shape})")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} have dimension 0")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    check_finite_rows(arr, name)
    return arr, single


def as_refs(refs: npt.ArrayLike, scales: npt.ArrayLike | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Validates a host reference matrix and its int8 scales (no silent change of storage type)."""
    arr = refs if isinstance(refs, np.ndarray) else np.asarray(refs)
    if arr.ndim != 2:
        raise ValueError(f"refs must be 2-D [N, D] (got shape {arr.shape})")
    if arr.dtype not in STORAGE_DTYPES:
        hint = " (convert with refs.astype(np.float32))" if arr.dtype.kind == "f" else ""
        raise TypeError(f"refs must be float32, float16 or int8 (got {arr.dtype}){hint}")
    if arr.shape[0] == 0:
        raise ValueError("refs is empty: nothing to rank against")
    if arr.shape[1] == 0:
        raise ValueError("refs have dimension 0")
    if not arr.flags.c_contiguous:
        logger.debug("topk: copying non-C-contiguous refs %s to C order", arr.shape)
        arr = np.ascontiguousarray(arr)
    if arr.dtype == np.int8:
        if scales is None:
            raise ValueError("int8 refs need their per-row scales (see csi_runtime.quantize_int8)")
        sc = np.asarray(scales)
        if sc.dtype.kind != "f" or sc.shape != (arr.shape[0],):
            raise ValueError(
                f"scales must be floating point of shape ({arr.shape[0]},) (got {sc.dtype} {sc.shape})"
            )
        sc = np.ascontiguousarray(sc, dtype=np.float32)
        if not np.isfinite(sc).all() or (sc < 0).any():
            raise NonFiniteError("scales must be finite and >= 0")
        return arr, sc
    if scales is not None:
        raise ValueError(f"scales are only used with int8 refs (refs are {arr.dtype})")
    return arr, None


def check_k(k: Any, n: int) -> int:
    """Returns k as an int after checking 1 <= k <= n."""
    if isinstance(k, bool):
        raise TypeError("k must be an integer (got bool)")
    try:
        k = operator.index(k)
    except TypeError:
        raise TypeError(f"k must be an integer (got {type(k).__name__})") from None
    if k < 1:
        raise ValueError(f"k must be >= 1 (got {k})")
    if k > n:
        raise ValueError(f"k = {k} exceeds the number of references ({n})")
    return int(k)


def parse_device(device: str) -> tuple[str, int]:
    if not isinstance(device, str):
        raise TypeError(f"device must be a string (got {type(device).__name__})")
    if device in ("auto", "cpu", "cuda"):
        return device, 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return "cuda", int(device[5:])
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N' (got {device!r})")


def check_threads(threads: int | None) -> int:
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer or None (got {threads!r})")
    return threads


def _diagnose_nonfinite(refs: np.ndarray, exc: Exception) -> NonFiniteError:
    bad = first_nonfinite_row(refs)
    if bad is not None:
        return NonFiniteError(f"refs row {bad} contains NaN or Inf")
    return NonFiniteError(f"scores overflow float32: the vectors' values are too large ({exc})")


def topk_cpu(
    queries: np.ndarray,
    refs: np.ndarray,
    scales: np.ndarray | None,
    k: int,
    metric: str,
    threads: int,
    isa: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """The CPU kernel on already validated arrays (see :func:`topk` for the contract)."""
    try:
        scores, index = _native.cpu.topk(queries, refs, scales, k, metric, threads, isa)
    except _native.cpu.NonFiniteError as exc:
        raise _diagnose_nonfinite(refs, exc) from None
    return scores, index


def require_cuda(device_id: int) -> Any:
    """The CUDA module, after checking that device ``device_id`` can be used."""
    cuda = _native.cuda
    if cuda is None:
        raise CudaUnavailableError("csi_runtime was built without CUDA (nvcc was not found at install time)")
    count = _native.cuda_device_count()
    if count == 0:
        reason = cuda.last_error()
        raise CudaUnavailableError(
            "no usable CUDA device (no GPU, or no NVIDIA driver)" + (f": {reason}" if reason else "")
        )
    if device_id >= count:
        raise CudaUnavailableError(f"cuda:{device_id} requested but only {count} CUDA device(s) present")
    return cuda


def topk_cuda(
    queries: Any, refs: Any, scales: Any, k: int, metric: str, device_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """The CUDA kernel; queries/refs/scales are validated numpy arrays or CUDA device arrays."""
    cuda = require_cuda(device_id)
    if k > cuda.MAX_K:
        raise ValueError(
            f"k = {k} exceeds the CUDA limit of {cuda.MAX_K}; use device='cpu' (k <= {CPU_MAX_K})"
        )
    try:
        scores, index = cuda.topk(queries, refs, scales, k, metric, device_id)
    except cuda.NonFiniteError as exc:
        if isinstance(refs, np.ndarray):
            raise _diagnose_nonfinite(refs, exc) from None
        raise NonFiniteError(
            f"a score is NaN or Inf: the device arrays hold NaN/Inf or overflow ({exc})"
        ) from None
    return scores, index


def topk(
    queries: npt.ArrayLike,
    refs: npt.ArrayLike,
    k: int,
    metric: str = "ip",
    device: str = "auto",
    *,
    scales: npt.ArrayLike | None = None,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of every query against ``refs``.

    Args:
        queries: ``[Q, D]`` (or ``[D]`` for one query), any floating dtype; converted to float32.
            A CUDA array (``__cuda_array_interface__``) is used in place with ``device="cuda"``.
        refs: ``[N, D]`` reference storage: float32, float16, or int8 with ``scales``. Not
            converted (no hidden copy of a large matrix); non-C-contiguous input is copied.
            A CUDA array stays on the GPU.
        k: results per query, ``1 <= k <= N`` (and at most ``CPU_MAX_K`` / ``cuda_max_k()``).
        metric: ``"ip"`` (inner product, largest first) or ``"l2"`` (squared distance,
            smallest first).
        device: ``"cpu"``, ``"cuda"``/``"cuda:N"``, or ``"auto"``: CUDA when a GPU is usable and
            k fits its limit and either the refs already live on the GPU or Q >= 32; else CPU.
        scales: float32 ``[N]`` per-row scales for int8 refs (``refs[i] * scales[i]``).
        threads: CPU threads (default: :func:`csi_runtime.threads.default_threads`).

    Returns:
        ``(scores float32 [Q, k], indices int64 [Q, k])``, best first, ties to the lower index;
        ``[k]`` each for a 1-D query.

    Raises:
        TypeError / ValueError for bad dtypes, shapes, k or metric; NonFiniteError for NaN/Inf
        input or float32 overflow; CudaUnavailableError when CUDA is requested but absent.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be 'ip' or 'l2' (got {metric!r})")
    kind, device_id = parse_device(device)
    n_threads = check_threads(threads)

    refs_on_device = _is_device_array(refs)
    if refs_on_device or _is_device_array(queries):
        if kind == "cpu":
            raise ValueError(
                "queries/refs live on the GPU; use device='cuda' or 'auto', or copy them to host"
            )
        return _topk_device_arrays(queries, refs, scales, k, metric, device_id)

    q, single = as_queries(queries)
    r, sc = as_refs(refs, scales)
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"dimension mismatch: queries have D={q.shape[1]}, refs have D={r.shape[1]}")
    k = check_k(k, r.shape[0])

    use_cuda = kind == "cuda"
    if kind == "auto":
        use_cuda = q.shape[0] >= AUTO_CUDA_MIN_QUERIES and k <= cuda_max_k() and _native.cuda_available()
    if use_cuda:
        scores, index = topk_cuda(q, r, sc, k, metric, device_id)
    else:
        if k > CPU_MAX_K:
            raise ValueError(f"k = {k} exceeds the CPU limit of {CPU_MAX_K}")
        scores, index = topk_cpu(q, r, sc, k, metric, n_threads)
    if single:
        return scores[0], index[0]
    return scores, index


def _device_shape(obj: Any, name: str) -> tuple[int, ...]:
    iface = obj.__cuda_array_interface__
    shape = tuple(int(s) for s in iface["shape"])
    strides = iface.get("strides")
    if strides is not None:
        itemsize = np.dtype(iface["typestr"]).itemsize
        expected, acc = [], itemsize
        for s in reversed(shape):
            expected.append(acc)
            acc *= s
        if tuple(strides) != tuple(reversed(expected)):
            raise ValueError(f"{name} on the GPU must be C-contiguous")
    return shape


def _topk_device_arrays(
    queries: Any, refs: Any, scales: Any, k: int, metric: str, device_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """CUDA path for inputs that already live on the GPU (validated from their array interface)."""
    single = False
    if _is_device_array(queries):
        qshape = _device_shape(queries, "queries")
        if np.dtype(queries.__cuda_array_interface__["typestr"]) != np.float32:
            raise TypeError("queries on the GPU must be float32")
        q = queries
    else:
        q, single = as_queries(queries)
        qshape = q.shape
    if len(qshape) != 2:
        raise ValueError(f"queries must be 2-D [Q, D] (got shape {qshape})")
    if _is_device_array(refs):
        rshape = _device_shape(refs, "refs")
        rdtype = np.dtype(refs.__cuda_array_interface__["typestr"])
        if len(rshape) != 2:
            raise ValueError(f"refs must be 2-D [N, D] (got shape {rshape})")
        if rdtype not in STORAGE_DTYPES:
            raise TypeError(f"refs must be float32, float16 or int8 (got {rdtype})")
        if rshape[0] == 0:
            raise ValueError("refs is empty: nothing to rank against")
        if (rdtype == np.int8) != (scales is not None):
            raise ValueError("scales are required for int8 refs and only for them")
        r = refs
    else:
        r, scales = as_refs(refs, scales)
        rshape = r.shape
    if qshape[1] != rshape[1]:
        raise ValueError(f"dimension mismatch: queries have D={qshape[1]}, refs have D={rshape[1]}")
    k = check_k(k, rshape[0])
    scores, index = topk_cuda(q, r, scales, k, metric, device_id)
    if single:
        return scores[0], index[0]
    return scores, index
