"""Loads the compiled extension modules.

``_C`` (C++ CPU kernels) is required. ``_cuda`` is optional: it is absent when the package was
built without nvcc, and present but reporting zero devices on machines without a GPU or driver
(it links the CUDA runtime statically, so importing it never needs CUDA libraries).
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

logger = logging.getLogger("csi_runtime")

__all__ = ["cpu", "cuda", "cuda_available", "cuda_device_count"]

try:
    cpu: ModuleType = importlib.import_module("csi_runtime._C")
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        "csi_runtime's compiled module _C is missing or does not load "
        f"({exc}). Reinstall from the repository root with `pip install -e .`."
    ) from exc

cuda: ModuleType | None
try:
    cuda = importlib.import_module("csi_runtime._cuda")
except ImportError as exc:
    cuda = None
    logger.debug("csi_runtime._cuda not available: %s", exc)


def cuda_device_count() -> int:
    """Number of usable CUDA devices (0 without the CUDA module, a driver or a GPU)."""
    if cuda is None:
        return 0
    try:
        return int(cuda.device_count())
    except RuntimeError as exc:  # a driver problem is "no GPU", never a crash
        logger.debug("CUDA device query failed: %s", exc)
        return 0


def cuda_available() -> bool:
    """True when the CUDA module is built and at least one CUDA device can be used."""
    return cuda_device_count() > 0
