"""Symmetric per-vector int8 quantisation for reference storage.

Each row is stored as ``codes[i] * scales[i]`` with ``codes`` in [-127, 127] and
``scales[i] = max|x_i| / 127``. Scores are exact for the dequantised vectors; the recall cost
against float32 is measured in tests/test_ranking_storage.py and documented in the README.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from csi_runtime.checks import check_finite_rows

INT8_MAX_CODE = 127


def quantize_int8(vectors: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Quantises float vectors ``[N, D]`` to ``(codes int8 [N, D], scales float32 [N])``.

    Raises ``NonFiniteError`` (a ``ValueError``) for NaN/Inf input: a NaN would silently
    become a code.
    """
    x = np.asarray(vectors)
    if x.ndim != 2:
        raise ValueError(f"vectors must be 2-D [N, D] (got shape {x.shape})")
    if x.dtype.kind != "f":
        raise TypeError(f"vectors must be floating point (got {x.dtype})")
    x = x.astype(np.float32, copy=False)
    check_finite_rows(x, "vectors")
    peak = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(x.shape[0], np.float32)
    scales = (peak / INT8_MAX_CODE).astype(np.float32)
    safe = np.where(scales > 0, scales, 1.0).astype(np.float32)
    codes = np.clip(np.rint(x / safe[:, None]), -INT8_MAX_CODE, INT8_MAX_CODE).astype(np.int8)
    return codes, scales


def dequantize_int8(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Inverse of :func:`quantize_int8`: float32 ``[N, D]``."""
    return codes.astype(np.float32) * scales.astype(np.float32)[:, None]
