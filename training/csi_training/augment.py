"""Training crops and feature-domain augmentation for CQT-like features [n_bins, T].

- crop with time stretch: a random window of round(T·s) frames resampled to T frames (tempo ×1/s),
  short tracks tiled (a repeated section is a plausible version), never zero-padded;
- pitch roll: shift along frequency by ±k bins with zero fill (a key change on a CQT; the vacated
  bins are silent rather than wrapped around, which would fold bass into treble);
- SpecAugment: frequency and time masks set to zero.
"""

from __future__ import annotations

import numpy as np
import torch

from csi_training.config import AugmentConfig

__all__ = ["FeatureAugment", "crop", "pitch_roll"]


def crop(
    features: np.ndarray, frames: int, rng: np.random.Generator | None, stretch: float = 1.0
) -> np.ndarray:
    """A window of ``frames`` frames from ``features`` [F, T] (float16/32) → float32 [F, frames].

    ``stretch`` s > 1 takes round(frames·s) source frames and compresses them (faster tempo).
    ``rng=None`` takes the window from the start (evaluation).
    """
    n_src = max(1, round(frames * stretch))
    total = features.shape[1]
    if total < n_src:
        reps = -(-n_src // total)
        features = np.tile(features, (1, reps))
        total = features.shape[1]
    start = 0 if rng is None else int(rng.integers(0, total - n_src + 1))
    window = np.asarray(features[:, start : start + n_src], dtype=np.float32)
    if n_src == frames:
        return window
    # linear interpolation along time at frame centres
    pos = (np.arange(frames) + 0.5) * (n_src / frames) - 0.5
    pos = np.clip(pos, 0, n_src - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_src - 1)
    w = (pos - lo).astype(np.float32)
    return window[:, lo] * (1 - w) + window[:, hi] * w


def pitch_roll(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Shift each item of x [B, F, T] by shifts[b] bins along F (positive = up), zero fill."""
    B, F, _ = x.shape
    src = torch.arange(F, device=x.device).unsqueeze(0) - shifts.view(B, 1).to(x.device)  # [B, F]
    valid = (src >= 0) & (src < F)
    gathered = torch.gather(x, 1, src.clamp(0, F - 1).unsqueeze(-1).expand_as(x))
    return gathered * valid.unsqueeze(-1).to(x.dtype)


class FeatureAugment:
    """Batch augmentation of training crops x [B, F, T] (after :func:`crop`)."""

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config

    def stretch_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        c = self.config
        s = np.exp(rng.uniform(np.log(c.stretch_min), np.log(c.stretch_max), size=n))
        return np.where(rng.random(n) < c.stretch_p, s, 1.0)

    def __call__(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        c = self.config
        B, F, T = x.shape
        if c.pitch_roll_p > 0 and c.pitch_roll_max > 0:
            shifts = rng.integers(-c.pitch_roll_max, c.pitch_roll_max + 1, size=B)
            shifts = np.where(rng.random(B) < c.pitch_roll_p, shifts, 0)
            if shifts.any():
                x = pitch_roll(x, torch.from_numpy(shifts))
        if c.specaugment_p > 0:
            mask = torch.ones(B, F, T, dtype=x.dtype)
            for b in np.flatnonzero(rng.random(B) < c.specaugment_p):
                for _ in range(c.freq_masks):
                    width = int(rng.integers(0, c.freq_mask_max + 1))
                    f0 = int(rng.integers(0, max(1, F - width)))
                    mask[b, f0 : f0 + width, :] = 0
                for _ in range(c.time_masks):
                    width = int(rng.integers(0, int(c.time_mask_max * T) + 1))
                    t0 = int(rng.integers(0, max(1, T - width)))
                    mask[b, :, t0 : t0 + width] = 0
            x = x * mask.to(x.device)
        return x
