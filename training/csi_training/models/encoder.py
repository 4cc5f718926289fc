"""The full encoder: waveform → frontend features → backbone → unit-norm embedding.

Training usually runs the backbone on cached features; export and evaluation from audio run the
whole :class:`Encoder`, built from the same config so the frontend parameters are pinned.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from csi_training.config import ModelConfig
from csi_training.frontends import Frontend
from csi_training.models.cqtnet import CQTNet, build_backbone
from csi_training.models.mart import MartCQTNet

__all__ = ["Encoder", "build_encoder"]


class Encoder(nn.Module):
    """waveform float32 [B, n_samples] at ``sample_rate`` → embeddings [B, D] (unit L2 norm)."""

    def __init__(self, frontend: Frontend, backbone: CQTNet | MartCQTNet) -> None:
        super().__init__()
        self.frontend = frontend
        self.backbone = backbone

    @property
    def sample_rate(self) -> int:
        return int(self.frontend.sample_rate)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.frontend(waveform))


def build_encoder(frontend_config: dict[str, Any], model: ModelConfig) -> Encoder:
    """Frontend from its config dict (validated there) and a backbone sized to its output."""
    from csi_training.frontends import LogMel, frontend_from_dict

    frontend = frontend_from_dict(dict(frontend_config))
    if model.name == "mart" and not isinstance(frontend, LogMel):
        raise ValueError(
            f"model.name 'mart' needs a logmel frontend (its FCN-7 reads log-mel windows), "
            f"got frontend.kind {frontend_config.get('kind')!r}"
        )
    backbone = build_backbone(
        model.name,
        n_bins=int(frontend.n_features),
        embedding_dim=model.embedding_dim,
        width=model.width,
        pooling=model.pooling,
        dropout=model.dropout,
        encoder_width=model.encoder_width,
        window_frames=model.window_frames,
        window_hop=model.window_hop,
        whitening=model.whitening,
    )
    return Encoder(frontend, backbone)
