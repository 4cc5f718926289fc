"""Prior version-variant factors of a training clip, computed from its CQT features (KDM's priors).

DisCover's KDM needs, per clip, a fixed-size description of the factors that differ between versions
of one work: the fundamental frequency (key, register) and the timbre. Training batches here are CQT
crops (the feature cache holds no audio), so both factors are computed in the CQT domain:

- **f0** (16 values): the CQT is a pitch tracker of its own: the loudest bin of each frame is the
  dominant pitch (``argmax`` over frequency), in semitones above ``fmin``. Frames whose peak is below
  ``VOICED_FRACTION`` of the clip's peak count as unvoiced (rests, silence, SpecAugment masks). Over
  the voiced frames: mean and standard deviation of the contour (octaves), mean absolute frame-to-
  frame change (octaves), the voiced fraction, and the pitch-class profile of the contour (12 pitch
  classes, weighted by frame peak, summing to 1; C = index 0).
- **timbre** (2 × n_coeffs values): a cepstrum of the CQT: the orthonormal DCT-II along frequency
  of each frame's (log1p-compressed, clip-peak-normalised) spectrum is the spectral envelope's
  cepstrum; coefficients 1..n_coeffs (c0, the level, is dropped), mean then standard deviation over
  the voiced frames — MFCC statistics with the CQT's log-frequency axis in place of the mel axis.

Clips are normalised by their peak first, as the backbone does, so neither factor carries the level.
"""

from __future__ import annotations

import math

import torch

__all__ = ["F0_DIM", "VOICED_FRACTION", "cqt_f0_factor", "cqt_timbre_factor", "dct_matrix", "factor_dim"]

#: a frame is voiced when its loudest bin reaches this fraction of the clip's loudest bin
VOICED_FRACTION = 0.25
#: contour mean, contour std, mean |delta|, voiced fraction, 12-class pitch profile
F0_DIM = 16
_A4_MIDI, _A4_HZ = 69.0, 440.0


def factor_dim(name: str, n_timbre_coeffs: int) -> int:
    """Length of the factor vector ``name`` ("f0" or "timbre")."""
    if name == "f0":
        return F0_DIM
    if name == "timbre":
        return 2 * n_timbre_coeffs
    raise ValueError(f"unknown factor {name!r} (f0 or timbre)")


def _normalised(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features / clip peak [B, F, T] float32, voiced-frame weights [B, T] in {0, 1})."""
    if features.dim() != 3:
        raise ValueError(f"expected features [B, F, T], got {tuple(features.shape)}")
    if features.shape[1] < 2 or features.shape[2] < 1:
        raise ValueError(f"need at least 2 bins and 1 frame, got {tuple(features.shape)}")
    x = features.float()
    if not torch.isfinite(x).all():
        raise ValueError("features hold NaN or Inf values")
    x = x.clamp(min=0.0)
    x = x / x.amax(dim=(1, 2), keepdim=True).clamp(min=1e-6)
    peak = x.amax(dim=1)
    voiced = (peak >= VOICED_FRACTION).float()
    return x, voiced


def _masked_mean_std(values: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """values [B, K, T], weights [B, T] → weighted mean and (population) std over T, each [B, K]."""
    n = weights.sum(dim=-1, keepdim=True).clamp(min=1.0)
    mean = (values * weights[:, None]).sum(dim=-1) / n
    var = ((values - mean[..., None]) ** 2 * weights[:, None]).sum(dim=-1) / n
    return mean, var.clamp(min=0.0).sqrt()


@torch.no_grad()
def cqt_f0_factor(features: torch.Tensor, bins_per_octave: int, fmin_hz: float) -> torch.Tensor:
    """features [B, n_bins, T] (non-negative CQT, e.g. log1p) → f0 factor float32 [B, F0_DIM].

    A clip without voiced frames gets zeros.
    """
    if bins_per_octave < 1 or fmin_hz <= 0:
        raise ValueError(f"bins_per_octave must be >= 1 and fmin_hz > 0, got {bins_per_octave}, {fmin_hz}")
    x, voiced = _normalised(features)
    semitones = x.argmax(dim=1).float() * (12.0 / bins_per_octave)  # [B, T] above fmin
    octaves = semitones / 12.0
    mean, std = _masked_mean_std(octaves[:, None], voiced)
    both = voiced[:, 1:] * voiced[:, :-1]
    delta = (octaves[:, 1:] - octaves[:, :-1]).abs()
    mean_delta = (delta * both).sum(dim=-1) / both.sum(dim=-1).clamp(min=1.0)
    voiced_fraction = voiced.mean(dim=-1)
    midi_fmin = _A4_MIDI + 12.0 * math.log2(fmin_hz / _A4_HZ)
    pitch_class = torch.remainder(torch.round(midi_fmin + semitones), 12).long()  # [B, T]
    weight = x.amax(dim=1) * voiced
    profile = torch.zeros(x.shape[0], 12, device=x.device, dtype=torch.float32)
    profile.scatter_add_(1, pitch_class, weight)
    profile = profile / profile.sum(dim=-1, keepdim=True).clamp(min=1e-12)
    return torch.cat([mean, std, mean_delta[:, None], voiced_fraction[:, None], profile], dim=1)


def dct_matrix(n: int, n_coeffs: int, device: torch.device | None = None) -> torch.Tensor:
    """Rows 0..n_coeffs-1 of the orthonormal DCT-II matrix, float32 [n_coeffs, n]."""
    if not 1 <= n_coeffs <= n:
        raise ValueError(f"need 1 <= n_coeffs <= n, got n_coeffs={n_coeffs}, n={n}")
    k = torch.arange(n_coeffs, dtype=torch.float64, device=device)[:, None]
    f = torch.arange(n, dtype=torch.float64, device=device)[None, :]
    m = torch.cos(math.pi * k * (2 * f + 1) / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m.float()


@torch.no_grad()
def cqt_timbre_factor(features: torch.Tensor, n_coeffs: int = 12) -> torch.Tensor:
    """features [B, n_bins, T] → timbre factor float32 [B, 2 * n_coeffs]: mean then std over voiced
    frames of cepstral coefficients 1..n_coeffs. A clip without voiced frames gets zeros."""
    x, voiced = _normalised(features)
    if n_coeffs + 1 > x.shape[1]:
        raise ValueError(f"n_coeffs={n_coeffs} needs more than {n_coeffs} frequency bins, got {x.shape[1]}")
    dct = dct_matrix(x.shape[1], n_coeffs + 1, x.device)[1:]
    ceps = torch.einsum("kf,bft->bkt", dct, x)
    mean, std = _masked_mean_std(ceps, voiced)
    return torch.cat([mean, std], dim=1)
