"""What every frontend shares: the waveform check, the log compression and the module interface."""

from __future__ import annotations

import abc
import math
from typing import Any

import numpy as np
import torch
from torch import nn

# Floor on |X|^2 before a square root: keeps the gradient of the magnitude finite on silence.
POWER_FLOOR = 1e-20


def check_waveform(waveform: Any, min_samples: int = 1, name: str = "waveform") -> None:
    """Raise ValueError unless `waveform` is a real floating tensor or array [n] or [B, n] with
    at least `min_samples` samples, all finite.

    The frontends' forward() never checks its input (that would break export and cost a sync on
    GPU); call this (or `frontend.check(x)`) where audio enters the pipeline.
    """
    if isinstance(waveform, torch.Tensor):
        is_float = waveform.is_floating_point()
        shape = tuple(waveform.shape)
    else:
        if not isinstance(waveform, np.ndarray):
            raise ValueError(f"{name} must be a torch tensor or numpy array, got {type(waveform).__name__}")
        is_float = waveform.dtype.kind == "f"
        shape = waveform.shape
        if is_float:
            waveform = torch.from_numpy(np.ascontiguousarray(waveform))
    if not is_float:
        raise ValueError(f"{name} must hold floating-point samples, got {getattr(waveform, 'dtype', '?')}")
    if len(shape) not in (1, 2):
        raise ValueError(f"{name} must be [n_samples] or [batch, n_samples], got shape {shape}")
    n = shape[-1]
    if n == 0 or (len(shape) == 2 and shape[0] == 0):
        raise ValueError(f"{name} is empty (shape {shape})")
    if n < min_samples:
        raise ValueError(f"{name} has {n} samples; this frontend needs at least {min_samples}")
    finite = torch.isfinite(waveform)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        kinds = []
        if bool(torch.isnan(waveform).any()):
            kinds.append("NaN")
        if bool(torch.isinf(waveform).any()):
            kinds.append("Inf")
        raise ValueError(f"{name} contains {bad} non-finite samples ({'/'.join(kinds)})")


def compress(
    spectrum: torch.Tensor, log: str, log_scale: float, amin: float, top_db: float | None, power: float
) -> torch.Tensor:
    """Log compression of a non-negative spectrum [B, F, T] (|X|^power).

    "none": unchanged. "log1p": log(1 + log_scale * S). "db": (20 / power) log10(max(S, amin)),
    the level in dB of the magnitude whatever the power; with top_db, values are clipped to
    (per-example maximum - top_db), which makes every frame depend on the whole input.
    """
    if log == "none":
        return spectrum
    if log == "log1p":
        return torch.log1p(spectrum * log_scale)
    if log == "db":
        db = torch.log(torch.clamp(spectrum, min=amin)) * (20.0 / power / math.log(10.0))
        if top_db is not None:
            peak = torch.amax(db, dim=(-2, -1), keepdim=True)
            db = torch.maximum(db, peak - top_db)
        return db
    raise ValueError(f"unknown log mode {log!r}")


def as_batch(waveform: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, bool]:
    """[n] or [B, n] → ([B, 1, n] in `dtype`, whether the input was unbatched)."""
    unbatched = waveform.dim() == 1
    x = waveform.unsqueeze(0) if unbatched else waveform
    return x.to(dtype).unsqueeze(1), unbatched


class Frontend(nn.Module, abc.ABC):
    """Interface of the frontends: waveform [B, n] or [n] → features [B, n_features, T] or [n_features, T].

    Attributes: config (frozen dataclass, part of the model config), sample_rate (Hz),
    n_features, frame_rate (frames per second of the output), min_samples (shortest valid input).
    """

    config: Any  # the frozen config dataclass (CQTConfig, MelConfig, ChromaConfig): to_dict() pins it
    n_features: int
    frame_rate: float
    sample_rate: int
    min_samples: int

    @abc.abstractmethod
    def frames(self, n_samples: int) -> int:
        """Exact number of output frames for an input of n_samples samples."""

    def check(self, waveform: Any) -> None:
        """check_waveform with this frontend's minimum length."""
        check_waveform(waveform, min_samples=self.min_samples)
