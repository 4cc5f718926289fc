"""Input checks shared by topk, ReferenceIndex and the quantiser."""

from __future__ import annotations

import numpy as np

from csi_runtime.errors import NonFiniteError

_CHUNK_ROWS = 1 << 20  # bounds the temporary boolean array on huge matrices


def first_nonfinite_row(x: np.ndarray) -> int | None:
    """Index of the first row of a 2-D array holding NaN/Inf (None for integer arrays)."""
    if x.dtype.kind != "f":
        return None
    for start in range(0, x.shape[0], _CHUNK_ROWS):
        ok = np.isfinite(x[start : start + _CHUNK_ROWS]).all(axis=1)
        if not ok.all():
            return start + int(np.flatnonzero(~ok)[0])
    return None


def check_finite_rows(x: np.ndarray, name: str) -> None:
    """Raises NonFiniteError naming the first row of ``x`` that holds NaN or Inf."""
    bad = first_nonfinite_row(x)
    if bad is not None:
        raise NonFiniteError(f"{name} row {bad} contains NaN or Inf")
