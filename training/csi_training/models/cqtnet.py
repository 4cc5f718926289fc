"""A CQTNet-style convolutional backbone: CQT frames → L2-normalised embedding.

After Yu et al., "Learning a representation for cover song identification using convolutional
neural network" (ICASSP 2020): ten 2D convolutions over (frequency, time) whose tall first
kernels (12–13 bins, one octave) see whole pitch-class patterns, dilation 2 along time on every
other layer, time max-pooling between stages, then global pooling and a linear embedding. Our
variant adds batch-norm everywhere, a choice of global pooling (max, mean or GeM) and a configurable
width: ``small`` (1/4 of the channels, trains on 2 CPU cores) and ``full`` (the paper's channels).

Input features are normalised per clip inside the model (each clip divided by its maximum), so
that the exported graph, not the caller, owns that step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from csi_training.models.whitening import Whitening

if TYPE_CHECKING:
    from csi_training.models.mart import MartCQTNet

#: (out_channels, freq kernel, time dilation, max-pool time by 2 after this layer) per layer, full width
_FULL_LAYERS: tuple[tuple[int, int, int, bool], ...] = (
    (32, 12, 1, False),
    (64, 13, 2, True),
    (64, 13, 1, False),
    (64, 3, 2, True),
    (128, 3, 1, False),
    (128, 3, 2, True),
    (256, 3, 1, False),
    (256, 3, 2, True),
    (512, 3, 1, False),
    (512, 3, 2, False),
)
WIDTH_DIVISOR = {"full": 1, "small": 4}
#: minimum number of input bins the unpadded frequency convolutions need
MIN_BINS = 1 + sum(k - 1 for _, k, _, _ in _FULL_LAYERS)


class GeM(nn.Module):
    """Generalised mean pooling over all positions: (mean x^p)^(1/p), p learned (init 3)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] → [B, C]."""
        p = self.p.clamp(1.0, 8.0)
        return x.clamp(min=self.eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class TimeMaxPool2(nn.Module):
    """Max over pairs of time steps, an odd last step on its own: [B, C, H, T] → [B, C, H, ceil(T / 2)].

    The same values as ``nn.MaxPool2d((1, 2), ceil_mode=True)``, written as "repeat the last step, then
    floor pooling" so that torch.export can prove the output size for every T (its solver cannot
    prove the ceil-mode guards, which would pin the exported graph to one length).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(torch.cat([x, x[..., -1:]], dim=-1), (1, 2))


class CQTNet(nn.Module):
    """features [B, n_bins, T] (non-negative, e.g. log1p CQT) → unit-norm embeddings [B, embedding_dim]."""

    def __init__(
        self,
        n_bins: int = 84,
        embedding_dim: int = 256,
        width: str = "small",
        pooling: str = "gem",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if width not in WIDTH_DIVISOR:
            raise ValueError(f"width must be one of {sorted(WIDTH_DIVISOR)}, got {width!r}")
        if n_bins < MIN_BINS:
            raise ValueError(f"CQTNet needs at least {MIN_BINS} frequency bins, got {n_bins}")
        self.n_bins, self.embedding_dim = n_bins, embedding_dim
        layers: list[nn.Module] = []
        c_in = 1
        for c_full, k_freq, dilation, pool in _FULL_LAYERS:
            c_out = max(4, c_full // WIDTH_DIVISOR[width])
            layers += [
                nn.Conv2d(
                    c_in, c_out, (k_freq, 3), dilation=(1, dilation), padding=(0, dilation), bias=False
                ),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            if pool:
                layers.append(TimeMaxPool2())
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.channels = c_in
        # Shortest input (frames) for which every time pooling leaves ≥ 2 steps: torch.export treats
        # size-1 axes as special, so an exported graph accepts T ≥ min_frames only.
        self.min_frames = 2 ** sum(pool for *_, pool in _FULL_LAYERS) + 1
        if pooling == "gem":
            self.pool: nn.Module = GeM()
        elif pooling == "max":
            self.pool = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten())
        elif pooling == "avg":
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        else:
            raise ValueError(f"pooling must be gem, max or avg, got {pooling!r}")
        self.dropout = nn.Dropout(dropout)
        self.embed = nn.Linear(c_in, embedding_dim)
        #: set by build_backbone(whitening=True); fitted after training (csi whiten)
        self.whitening: Whitening | None = None

    def forward_unnormalized(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, n_bins, T] → pre-normalisation embeddings [B, embedding_dim]."""
        if features.dim() != 3 or features.shape[1] != self.n_bins:
            raise ValueError(f"expected features [B, {self.n_bins}, T], got {tuple(features.shape)}")
        peak = features.amax(dim=(1, 2), keepdim=True).clamp(min=1e-6)
        x = (features / peak).unsqueeze(1)
        x = self.features(x)
        return self.embed(self.dropout(self.pool(x)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        embeddings = F.normalize(self.forward_unnormalized(features), dim=-1)
        return embeddings if self.whitening is None else self.whitening(embeddings)


def build_backbone(
    name: str,
    n_bins: int,
    embedding_dim: int,
    width: str,
    pooling: str,
    dropout: float,
    encoder_width: str = "full",
    window_frames: int = 128,
    window_hop: int = 64,
    whitening: bool = False,
) -> CQTNet | MartCQTNet:
    """The backbone ``name`` for features [B, n_bins, T]: ``cqtnet``, or ``mart`` (an FCN-7 over
    log-mel windows of ``window_frames`` frames every ``window_hop``, in front of a CQTNet; n_bins
    is then the number of mel bands). whitening: end with an identity :class:`Whitening` layer (unit
    embeddings in and out) for a fitted whitening to be loaded into."""
    backbone: CQTNet | MartCQTNet
    if name == "cqtnet":
        backbone = CQTNet(
            n_bins=n_bins, embedding_dim=embedding_dim, width=width, pooling=pooling, dropout=dropout
        )
    elif name == "mart":
        from csi_training.models.fcn import FCN7
        from csi_training.models.mart import MartCQTNet

        backbone = MartCQTNet(
            FCN7(n_bins, encoder_width),
            window_frames,
            window_hop,
            embedding_dim=embedding_dim,
            width=width,
            pooling=pooling,
            dropout=dropout,
        )
    else:
        raise ValueError(f"unknown backbone {name!r} (available: cqtnet, mart)")
    if whitening:
        backbone.whitening = Whitening(embedding_dim)
    return backbone
