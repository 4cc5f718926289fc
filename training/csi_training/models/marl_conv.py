"""MARL around the CQTNet trunk: a convolutional, length-agnostic multi-view VAE for ``recipe: marl``.

The MLP of :class:`csi_training.models.marl.MultiViewVAE` sees one fixed patch; here each view goes
through the CQTNet trunk (per-clip peak normalisation, ten 2D convolutions, global pooling), so a
recording of any length has a posterior. Three linear heads read the pooled trunk features:

- the shared expert mean mu_s is the CQTNet's own ``embed`` layer, so ``backbone`` alone (a plain
  :class:`~csi_training.models.cqtnet.CQTNet` with ``embedding_dim`` = the shared size) computes
  normalize(mu_s): the embedding checkpoints hold and ``csi_export`` exports, unchanged;
- the shared expert log-variance, and the private mean and log-variance (training only).

The decoder (training only) maps [z_s, z_p^v] to the logits of the peak-normalised crop of view v
(values in [0, 1], what the trunk sees), at the fixed crop size of the training batches: a linear
projection onto a coarse [C, F / 8, T / 8] grid, three stages of nearest-neighbour upsampling by 2
with a 3×3 convolution, then a 3×3 convolution to one channel, cropped to [F, T].
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

import torch
from torch import nn

from csi_training.models.cqtnet import CQTNet
from csi_training.models.marl import LOGVAR_MAX, LOGVAR_MIN, Combine, MARLOutput, combine_experts

__all__ = ["ConvMultiViewVAE", "SpectrogramDecoder", "peak_normalise"]

#: upsampling stages of the decoder (each doubles both axes): the coarse grid is 1/8 of the crop
DECODER_STAGES = 3


def peak_normalise(features: torch.Tensor) -> torch.Tensor:
    """features [..., F, T] (non-negative) → each clip divided by its maximum (as CQTNet does), in [0, 1]."""
    return features / features.amax(dim=(-2, -1), keepdim=True).clamp(min=1e-6)


class SpectrogramDecoder(nn.Module):
    """latents [N, latent_dim] → logits [N, n_features, n_frames] (a fixed crop size)."""

    def __init__(self, latent_dim: int, n_features: int, n_frames: int, channels: int = 32) -> None:
        super().__init__()
        if min(latent_dim, n_features, n_frames) < 1 or channels < 4:
            raise ValueError(
                f"need latent_dim, n_features, n_frames >= 1 and channels >= 4, got "
                f"{latent_dim}, {n_features}, {n_frames}, {channels}"
            )
        scale = 2**DECODER_STAGES
        self.n_features, self.n_frames, self.channels = n_features, n_frames, channels
        self.grid = (math.ceil(n_features / scale), math.ceil(n_frames / scale))
        self.project = nn.Linear(latent_dim, channels * self.grid[0] * self.grid[1])
        layers: list[nn.Module] = []
        c_in = channels
        for stage in range(DECODER_STAGES):
            c_out = max(4, channels // 2 ** (stage + 1))
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.SiLU(),
            ]
            c_in = c_out
        self.stages = nn.Sequential(*layers)
        self.out = nn.Conv2d(c_in, 1, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z).view(z.shape[0], self.channels, *self.grid)
        logits = self.out(self.stages(x))[:, 0]
        return logits[:, : self.n_features, : self.n_frames]


class ConvMultiViewVAE(nn.Module):
    """Multi-view VAE over CQT crops whose encoder is ``backbone``'s trunk (see the module doc).

    views float [B, V, n_bins, n_frames] (non-negative features, e.g. log1p CQT) → dict of tensors
    (the fields of :class:`~csi_training.models.marl.MARLOutput`, plus ``target``: the views peak-
    normalised to [0, 1], the reconstruction target). A dict, so that DDP sees the output tensors.
    The shared size is ``backbone.embedding_dim``.
    """

    def __init__(
        self,
        backbone: CQTNet,
        n_frames: int,
        private_dim: int = 32,
        decoder_channels: int = 32,
        combine: Combine = "poe",
    ) -> None:
        super().__init__()
        if combine not in ("poe", "mean"):
            raise ValueError(f"combine must be 'poe' or 'mean', got {combine!r}")
        if private_dim < 1:
            raise ValueError(f"private_dim must be >= 1, got {private_dim}")
        self.backbone = backbone
        self.shared_dim, self.private_dim, self.combine = backbone.embedding_dim, private_dim, combine
        self.n_features, self.n_frames = backbone.n_bins, n_frames
        self.shared_logvar = nn.Linear(backbone.channels, self.shared_dim)
        self.private = nn.Linear(backbone.channels, 2 * private_dim)
        self.decoder = SpectrogramDecoder(
            self.shared_dim + private_dim, backbone.n_bins, n_frames, decoder_channels
        )

    def encode(
        self, views: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """views [B, V, F, T] (any T) → (expert_mu [B, V, D_s], expert_logvar, private_mu [B, V, D_p],
        private_logvar, peak-normalised views [B, V, F, T])."""
        if views.dim() != 4 or views.shape[1] < 2 or views.shape[2] != self.n_features:
            raise ValueError(f"expected views [B, V >= 2, {self.n_features}, T], got {tuple(views.shape)}")
        b, v = views.shape[:2]
        target = peak_normalise(views)
        trunk = self.backbone
        pooled = trunk.dropout(trunk.pool(trunk.features(target.flatten(0, 1).unsqueeze(1))))
        mu_s = trunk.embed(pooled).view(b, v, -1)
        logvar_s = self.shared_logvar(pooled).clamp(LOGVAR_MIN, LOGVAR_MAX).view(b, v, -1)
        mu_p, logvar_p = self.private(pooled).view(b, v, -1).chunk(2, dim=-1)
        return mu_s, logvar_s, mu_p, logvar_p.clamp(LOGVAR_MIN, LOGVAR_MAX), target

    def decode(self, z_shared: torch.Tensor, z_private: torch.Tensor) -> torch.Tensor:
        """z_shared [B, D_s], z_private [B, V, D_p] → logits [B, V, F, n_frames]."""
        b, v = z_private.shape[:2]
        z = torch.cat([z_shared[:, None, :].expand(b, v, -1), z_private], dim=-1)
        return self.decoder(z.flatten(0, 1)).view(b, v, self.n_features, self.n_frames)

    def forward(self, views: torch.Tensor, sample: bool = True) -> dict[str, torch.Tensor]:
        """views [B, V, F, n_frames]; sample=False decodes the posterior means instead of samples."""
        if views.dim() == 4 and views.shape[-1] != self.n_frames:
            raise ValueError(
                f"the decoder reconstructs {self.n_frames}-frame crops, got {tuple(views.shape)}"
            )
        expert_mu, expert_logvar, private_mu, private_logvar, target = self.encode(views)
        shared_mu, shared_logvar = combine_experts(expert_mu, expert_logvar, self.combine)
        if sample:
            z_shared = shared_mu + torch.exp(0.5 * shared_logvar) * torch.randn_like(shared_mu)
            z_private = private_mu + torch.exp(0.5 * private_logvar) * torch.randn_like(private_mu)
        else:
            z_shared, z_private = shared_mu, private_mu
        return {
            "shared_mu": shared_mu,
            "shared_logvar": shared_logvar,
            "z_shared": z_shared,
            "expert_mu": expert_mu,
            "expert_logvar": expert_logvar,
            "private_mu": private_mu,
            "private_logvar": private_logvar,
            "z_private": z_private,
            "logits": self.decode(z_shared, z_private),
            "target": target,
        }

    @staticmethod
    def output(result: dict[str, torch.Tensor]) -> tuple[MARLOutput, torch.Tensor]:
        """A :meth:`forward` result → (MARLOutput, target), both float32 (the loss runs in float32)."""
        out = MARLOutput(**{f.name: result[f.name].float() for f in fields(MARLOutput)})
        return out, result["target"].float()

    def auxiliary_state(self) -> dict[str, Any]:
        """Weights and buffers of the training-only parts (heads, decoder): the backbone is saved apart."""
        return {k: v.detach().cpu() for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def load_auxiliary_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`auxiliary_state`; missing or unexpected entries are refused with their names."""
        expected = {k for k in self.state_dict() if not k.startswith("backbone.")}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(f"MARL auxiliary state does not fit: missing {missing}, unexpected {unexpected}")
        self.load_state_dict(state, strict=False)
