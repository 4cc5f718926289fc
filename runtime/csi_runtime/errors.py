"""Exceptions raised by csi_runtime. All derive from the built-in types callers already catch."""

from __future__ import annotations


class NonFiniteError(ValueError):
    """A query, reference or score is NaN or infinite (also raised for float32 overflow)."""


class IndexFileError(ValueError):
    """A reference-index file is truncated, corrupt, foreign or of an unsupported version."""


class IndexModelMismatchError(ValueError):
    """A reference index was built with another embedding model (or dimension) than the one in use."""


class CudaUnavailableError(RuntimeError):
    """``device="cuda"`` was requested but no usable CUDA device or CUDA module is present."""
