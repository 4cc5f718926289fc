"""FCN-7: the spectrogram projection encoder of MART (log-mel [F, T] → one D_e-dim vector per clip).

A fully convolutional network of seven blocks (3x3 conv, batch norm, ReLU, 2x2 max-pool), after the
7-layer short-chunk CNN of Won et al. (SMC 2020) that MART's paper calls FCN-7: channels 128, 128,
256, 256, 256, 256, 512 at full width, a batch norm on the input spectrogram (which also absorbs
its dB offset), global max-pooling over what is left of frequency and time, output D_e = 512.
Pooling is ceil-mode, so any input of at least 1 x 1 works (an axis of size 1 stays 1).
``width="small"`` divides the channels by 4, ``"tiny"`` by 8 (CPU smoke runs; D_e = 64).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FCN7", "FCN7_CHANNELS"]

#: output channels of the seven blocks at full width
FCN7_CHANNELS: tuple[int, ...] = (128, 128, 256, 256, 256, 256, 512)
WIDTH_DIVISOR = {"full": 1, "small": 4, "tiny": 8}


class FCN7(nn.Module):
    """log-mel float [B, n_mels, T] → [B, output_dim] (output_dim = last block's channels)."""

    def __init__(self, n_mels: int, width: str = "full") -> None:
        super().__init__()
        if width not in WIDTH_DIVISOR:
            raise ValueError(f"width must be one of {sorted(WIDTH_DIVISOR)}, got {width!r}")
        if n_mels < 1:
            raise ValueError(f"n_mels must be >= 1, got {n_mels}")
        self.n_mels = n_mels
        self.input_norm = nn.BatchNorm2d(1)
        blocks: list[nn.Module] = []
        c_in = 1
        for c_full in FCN7_CHANNELS:
            c_out = max(4, c_full // WIDTH_DIVISOR[width])
            blocks += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.output_dim = c_in

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        if spectrogram.dim() != 3 or spectrogram.shape[1] != self.n_mels:
            raise ValueError(f"expected log-mel [B, {self.n_mels}, T], got {tuple(spectrogram.shape)}")
        x = self.blocks(self.input_norm(spectrogram.unsqueeze(1)))
        return x.amax(dim=(2, 3))
