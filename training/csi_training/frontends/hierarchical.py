"""Hierarchical audio cropping (MART, Yao et al., WWW'24 companion, sec. 2.1) with hop adaptation.

A whole clip S^0 of ``whole_samples`` samples is split into ``splits`` (M) equal parts, each part
again into M, down to ``levels`` (N) levels: level n holds M^n parts of whole_samples / M^n samples,
and every part of level n+1 lies inside exactly one part (its whole) of level n. Each part becomes a
log-mel spectrogram of the same size [n_mels, frames]: the STFT window (n_fft) is the same at every
level and the hop grows with the part, hop_n = finest_hop * M^(N-1-n), so a part of level n has
exactly ``frames`` hops.

Framing (chosen so that a part's spectrogram depends on its own samples only and covers all of
them): frame t of a part of length L = frames * hop is centred at (t + 1/2) * hop; the part is
zero-padded by (n_fft - hop) / 2 on each side (never with its neighbours' samples) and framed
without centring. Frames then span [hop/2 - n_fft/2, L - hop/2 + n_fft/2), which contains the whole
part when hop <= n_fft; but the periodic Hann window is 0 on its first sample, so with hop = n_fft
the sample at every frame boundary would have weight 0 in every frame. The config therefore
requires hop < n_fft at every level: then each sample lies strictly inside some window.

Parts are ordered level by level, left to right: index 0 is the whole clip, 1..M are level 1, and
so on (``Hierarchy`` holds the tables). Training-side only (torch.stft, not exported): at inference
the fine-tuned model runs csi_training.frontends.LogMel at the finest hop.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from csi_training.frontends.base import compress
from csi_training.frontends.config import MelConfig
from csi_training.frontends.kernels import mel_filterbank, periodic_window

__all__ = ["HierarchicalLogMel", "Hierarchy", "HierarchyConfig", "stft_logmel"]


@dataclass(frozen=True)
class Hierarchy:
    """The part-whole tree of N levels with M parts per whole (no audio parameters).

    Token j (0 <= j < n_parts) is part ``index_in_level[j]`` of level ``level[j]``; ``parent[j]`` is
    the token of its whole (-1 for the root). Level n occupies tokens [offset(n), offset(n) + M^n).
    """

    levels: int
    splits: int

    def __post_init__(self) -> None:
        if isinstance(self.levels, bool) or not isinstance(self.levels, int) or self.levels < 1:
            raise ValueError(f"levels must be an integer >= 1, got {self.levels!r}")
        if isinstance(self.splits, bool) or not isinstance(self.splits, int) or self.splits < 2:
            raise ValueError(f"splits must be an integer >= 2, got {self.splits!r}")

    def level_size(self, n: int) -> int:
        """Parts at level n: M^n."""
        return int(self.splits**n)

    def offset(self, n: int) -> int:
        """Token index of the first part of level n: (M^n - 1) / (M - 1)."""
        return (self.splits**n - 1) // (self.splits - 1)

    @property
    def n_parts(self) -> int:
        """All tokens of the tree: (M^N - 1) / (M - 1) (15 for M = 2, N = 4)."""
        return self.offset(self.levels)

    @cached_property
    def level(self) -> np.ndarray:
        """int64 [n_parts]: level of each token."""
        return np.concatenate([np.full(self.level_size(n), n) for n in range(self.levels)]).astype(np.int64)

    @cached_property
    def index_in_level(self) -> np.ndarray:
        """int64 [n_parts]: position of each token within its level (left to right)."""
        return np.concatenate([np.arange(self.level_size(n)) for n in range(self.levels)]).astype(np.int64)

    @cached_property
    def parent(self) -> np.ndarray:
        """int64 [n_parts]: token of each token's whole, -1 for the root."""
        out = np.full(self.n_parts, -1, dtype=np.int64)
        for n in range(1, self.levels):
            idx = np.arange(self.level_size(n))
            out[self.offset(n) + idx] = self.offset(n - 1) + idx // self.splits
        return out

    def span(self, j: int, whole_samples: int) -> tuple[int, int]:
        """[start, stop) sample range of token j in a whole clip of whole_samples samples."""
        n, i = int(self.level[j]), int(self.index_in_level[j])
        length = whole_samples // self.level_size(n)
        return i * length, (i + 1) * length


@dataclass(frozen=True)
class HierarchyConfig:
    """Hierarchical cropping and the per-level log-mel (defaults: M = 2, N = 4 as in the paper).

    sample_rate (Hz); levels N; splits M; frames per spectrogram; finest_hop (samples, even) at
    level N-1, the hop of level n being finest_hop * M^(N-1-n); n_fft (samples, same window at every
    level, >= the coarsest hop); n_mels mel bands (slaney scale and norm) between fmin and fmax (Hz,
    None: Nyquist); log compression "db" (10 log10 of power, floor amin) or "log1p".
    With the defaults a whole clip is 128 * 128 * 8 = 131072 samples (8.19 s at 16 kHz), the finest
    parts 1.02 s (hop 8 ms), the whole-clip hop 1024 (64 ms), and every spectrogram [96, 128].
    """

    sample_rate: int = 16000
    levels: int = 4
    splits: int = 2
    frames: int = 128
    finest_hop: int = 128
    n_fft: int = 2048
    n_mels: int = 96
    fmin: float = 0.0
    fmax: float | None = None
    log: str = "db"
    amin: float = 1e-10

    def __post_init__(self) -> None:
        Hierarchy(self.levels, self.splits)  # validates levels / splits
        for name in ("sample_rate", "frames", "finest_hop", "n_fft", "n_mels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.finest_hop % 2:
            raise ValueError(
                f"finest_hop must be even (parts are padded by (n_fft - hop) / 2), got {self.finest_hop}"
            )
        if self.n_fft % 2:
            raise ValueError(f"n_fft must be even, got {self.n_fft}")
        if self.coarsest_hop >= self.n_fft:
            raise ValueError(
                f"the whole-clip hop {self.coarsest_hop} (finest_hop {self.finest_hop} x {self.splits}^"
                f"{self.levels - 1}) must be below n_fft={self.n_fft}, or some samples get no weight in "
                "any analysis window; raise n_fft or lower finest_hop / levels"
            )
        if self.log not in ("db", "log1p"):
            raise ValueError(f"log must be 'db' or 'log1p', got {self.log!r}")
        # the mel filterbank checks (no empty band, fmax <= Nyquist) live in MelConfig
        self.mel_config(0)

    @property
    def hierarchy(self) -> Hierarchy:
        return Hierarchy(self.levels, self.splits)

    @property
    def coarsest_hop(self) -> int:
        return self.hop(0)

    def hop(self, n: int) -> int:
        """STFT hop (samples) of level n."""
        return self.finest_hop * self.splits ** (self.levels - 1 - n)

    @property
    def whole_samples(self) -> int:
        """Length of a whole clip S^0 in samples."""
        return self.frames * self.coarsest_hop

    @property
    def whole_seconds(self) -> float:
        return self.whole_samples / self.sample_rate

    def part_samples(self, n: int) -> int:
        """Length of one part of level n in samples."""
        return self.whole_samples // self.splits**n

    def mel_config(self, n: int) -> MelConfig:
        """The csi_training.frontends.LogMel settings that give level n's spectrogram of one part
        when run (center=False) on the part zero-padded by (n_fft - hop_n) / 2 on both sides."""
        return MelConfig(
            sample_rate=self.sample_rate,
            n_fft=self.n_fft,
            hop_length=self.hop(n),
            center=False,
            n_mels=self.n_mels,
            fmin=self.fmin,
            fmax=self.fmax,
            log=self.log,
            amin=self.amin,
        )

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HierarchyConfig:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown HierarchyConfig keys: {', '.join(unknown)}")
        return cls(**data)


class HierarchicalLogMel(nn.Module):
    """waveform float [B, whole_samples] → log-mel of every part [B, n_parts, n_mels, frames].

    ``levels_only=k`` in forward() computes the first k levels only ([B, offset(k), n_mels, frames]),
    e.g. k = 1 for the whole clip alone.
    """

    window: torch.Tensor
    mel_basis: torch.Tensor

    def __init__(self, config: HierarchyConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else HierarchyConfig()
        c = self.config
        self.hierarchy = c.hierarchy
        fmax = c.sample_rate / 2 if c.fmax is None else c.fmax
        basis = mel_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.fmin, fmax, "slaney", "slaney")
        self.register_buffer(
            "window", torch.tensor(periodic_window("hann", c.n_fft), dtype=torch.float32), persistent=False
        )
        self.register_buffer("mel_basis", torch.tensor(basis, dtype=torch.float32), persistent=False)

    def level(self, waveform: torch.Tensor, n: int) -> torch.Tensor:
        """Level n: [B, whole_samples] → [B, M^n, n_mels, frames]."""
        c = self.config
        batch = waveform.shape[0]
        count, hop = c.splits**n, c.hop(n)
        parts = waveform.reshape(batch * count, c.part_samples(n))
        pad = (c.n_fft - hop) // 2
        parts = F.pad(parts, (pad, pad))
        spec = torch.stft(
            parts, c.n_fft, hop_length=hop, window=self.window, center=False, return_complex=True
        )
        power = spec.real**2 + spec.imag**2  # [B * M^n, n_fft / 2 + 1, frames]
        mel = torch.matmul(self.mel_basis, power)
        out = compress(mel, c.log, 1.0, c.amin, None, power=2.0)
        return out.reshape(batch, count, c.n_mels, c.frames)

    def forward(self, waveform: torch.Tensor, levels_only: int | None = None) -> torch.Tensor:
        c = self.config
        if waveform.dim() != 2 or waveform.shape[1] != c.whole_samples:
            raise ValueError(
                f"expected waveform [B, {c.whole_samples}] ({c.whole_seconds:.3f} s at {c.sample_rate} Hz), "
                f"got {tuple(waveform.shape)}"
            )
        k = c.levels if levels_only is None else levels_only
        if not 1 <= k <= c.levels:
            raise ValueError(f"levels_only must be in [1, {c.levels}], got {levels_only}")
        x = waveform.float()
        return torch.cat([self.level(x, n) for n in range(k)], dim=1)


def stft_logmel(waveform: torch.Tensor, config: MelConfig) -> torch.Tensor:
    """What csi_training.frontends.LogMel(config) computes, through torch.stft (FFT) instead of the
    dense-DFT convolution: [B, n] → [B, n_mels, frames]. For feature extraction in training code,
    where the FFT is many times cheaper at large n_fft; the exported model keeps LogMel. Supports
    pool = 1, power 2, hann window, win_length = n_fft (refused otherwise).
    """
    c = config
    if c.pool != 1 or c.power != 2.0 or c.window != "hann" or c.win_length not in (None, c.n_fft):
        raise ValueError("stft_logmel supports pool=1, power=2, a hann window of n_fft samples only")
    fmax = c.sample_rate / 2 if c.fmax is None else c.fmax
    basis = mel_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.fmin, fmax, c.mel_scale, c.norm)
    window = torch.tensor(periodic_window("hann", c.n_fft), dtype=torch.float32, device=waveform.device)
    x = waveform.float()
    if c.center:
        x = F.pad(x.unsqueeze(1), (c.n_fft // 2, c.n_fft // 2), mode=c.pad_mode).squeeze(1)
    spec = torch.stft(x, c.n_fft, hop_length=c.hop_length, window=window, center=False, return_complex=True)
    power = spec.real**2 + spec.imag**2
    mel = torch.matmul(torch.tensor(basis, dtype=torch.float32, device=waveform.device), power)
    return compress(mel, c.log, c.log_scale, c.amin, c.top_db, power=2.0)
