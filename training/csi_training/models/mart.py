"""MART (Yao et al., WWW'24 companion): hierarchical log-mel → FCN-7 projection encoder → part-whole
transformer → projection head, for self-supervised pre-training; and the CSI model that puts the
pre-trained encoder in front of the CQTNet-style backbone for fine-tuning.

Pre-training forward (two CLMR-augmented views a, b of the same track, whole clips [B, L]):

    view a → HierarchicalLogMel [B, P, F, T] → FCN-7 [B, P, D_e] = s~ → part-whole transformer → s^
    view b → whole-clip log-mel [B, F, T]     → FCN-7 [B, D_e]   = s~_b^0
    projection head (Linear(D_e, 512) - ReLU - Linear(512, 256)) on s^ (all clips) and on s~_b^0

and the hierarchical contrastive loss (csi_training.losses.hierarchical) pulls s^_b^0 towards s~_b^0.
The paper does not say where the two views come from; here they are two random crops of the track,
independently augmented (CLMR's positives). Ablations: ``part_whole_transformer=False`` (w/o PWT:
s^ = s~) and ``hierarchical_loss=False`` (w/o HCL: no part-whole terms); without both, only the
whole clip is computed (a CLMR/COLA-style baseline with the same encoder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from csi_training.frontends.hierarchical import HierarchicalLogMel, HierarchyConfig
from csi_training.models.fcn import FCN7
from csi_training.models.part_whole import PartWholeTransformer
from csi_training.models.whitening import Whitening

__all__ = ["MartCQTNet", "MartConfig", "MartPretrainModel"]


@dataclass(frozen=True)
class MartConfig:
    """Everything that shapes a MART model (pinned in its checkpoint).

    level_weights: lambda^n of eqs. 1-2, one per level (a single number: the same for all).
    layers / heads / attn_dim / ffn_dim: the stacked part-whole transformers (paper: 3 and 3).
    projection_hidden / projection_dim: the head Linear(512) - ReLU - Linear(256).
    """

    hierarchy: HierarchyConfig = field(default_factory=HierarchyConfig)
    width: str = "full"
    level_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    layers: int = 3
    heads: int = 3
    attn_dim: int | None = None
    ffn_dim: int | None = None
    projection_hidden: int = 512
    projection_dim: int = 256
    temperature: float = 0.5
    part_whole_transformer: bool = True
    hierarchical_loss: bool = True

    def __post_init__(self) -> None:
        if len(self.level_weights) != self.hierarchy.levels:
            raise ValueError(
                f"level_weights needs one lambda per level ({self.hierarchy.levels}), "
                f"got {self.level_weights}"
            )
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    @property
    def levels_needed(self) -> int:
        """Levels the forward pass computes: all, unless neither the PWT nor the HCL uses them."""
        return self.hierarchy.levels if (self.part_whole_transformer or self.hierarchical_loss) else 1

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["hierarchy"] = self.hierarchy.to_dict()
        out["level_weights"] = list(self.level_weights)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MartConfig:
        values = dict(data)
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown MartConfig keys: {', '.join(unknown)}")
        hierarchy = HierarchyConfig.from_dict(dict(values.pop("hierarchy", {})))
        weights = values.pop("level_weights", None)
        if weights is None:
            weights = [1.0] * hierarchy.levels
        elif isinstance(weights, int | float):
            weights = [float(weights)] * hierarchy.levels
        return cls(hierarchy=hierarchy, level_weights=tuple(float(w) for w in weights), **values)


class MartPretrainModel(nn.Module):
    """The MART pre-training network (see the module docstring)."""

    def __init__(self, config: MartConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else MartConfig()
        c = self.config
        self.spectrogram = HierarchicalLogMel(c.hierarchy)
        self.encoder = FCN7(c.hierarchy.n_mels, c.width)
        dim = self.encoder.output_dim
        self.transformer: PartWholeTransformer | None = None
        if c.part_whole_transformer:
            self.transformer = PartWholeTransformer(
                c.hierarchy.hierarchy, dim, c.level_weights, c.layers, c.heads, c.attn_dim, c.ffn_dim
            )
        self.head = nn.Sequential(
            nn.Linear(dim, c.projection_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(c.projection_hidden, c.projection_dim),
        )

    def encode(self, spectrograms: torch.Tensor) -> torch.Tensor:
        """[B, P, F, T] log-mel → [B, P, D_e] (one encoder call for all clips)."""
        b, p, f, t = spectrograms.shape
        return self.encoder(spectrograms.reshape(b * p, f, t)).reshape(b, p, -1)

    def forward(self, view_a: torch.Tensor, view_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole clips [B, L] of two views → (z^ [B, P', projection_dim], z~_0 [B, projection_dim]),
        P' = n_parts, or 1 when neither the PWT nor the HCL needs the parts."""
        c = self.config
        specs_a = self.spectrogram(view_a, levels_only=c.levels_needed)
        specs_b = self.spectrogram(view_b, levels_only=1)
        tokens = self.encode(torch.cat([specs_a, specs_b], dim=1))
        s_tilde_a, s_tilde_b = tokens[:, :-1], tokens[:, -1]
        s_hat = self.transformer(s_tilde_a) if self.transformer is not None else s_tilde_a
        return self.head(s_hat), self.head(s_tilde_b)

    @torch.no_grad()
    def embed_whole(self, waveform: torch.Tensor) -> torch.Tensor:
        """Whole clips [B, L] → unit-norm encoder vectors s~^0 [B, D_e] (what fine-tuning starts from)."""
        specs = self.spectrogram(waveform, levels_only=1)
        return F.normalize(self.encode(specs)[:, 0], dim=-1)


class MartCQTNet(nn.Module):
    """The CSI model of MART's fine-tuning: the (pre-trained) FCN-7 in front of the CQTNet backbone.

    features: log-mel float [B, n_mels, T] at the finest level's hop (what
    csi_training.frontends.LogMel computes for a whole track) → windows of ``window_frames`` frames
    every ``window_hop`` frames (the finest parts of pre-training are ``window_frames`` long) →
    FCN-7 → a sequence [B, D_e, W] of clip vectors, which CQTNet treats as its "bins" x time →
    embeddings [B, embedding_dim]. A track shorter than one window is repeated to fill it.
    Has CQTNet's interface (forward_unnormalized, forward → unit norm, embedding_dim), so the
    trainer's TrainNet, losses and embed_features take it unchanged.
    """

    def __init__(
        self,
        encoder: FCN7,
        window_frames: int,
        window_hop: int,
        embedding_dim: int = 256,
        width: str = "small",
        pooling: str = "gem",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        from csi_training.models.cqtnet import CQTNet

        if window_frames < 1 or window_hop < 1:
            raise ValueError(f"window_frames and window_hop must be >= 1, got {window_frames}, {window_hop}")
        self.encoder = encoder
        self.window_frames, self.window_hop = window_frames, window_hop
        self.n_bins = encoder.n_mels
        self.cqtnet = CQTNet(
            n_bins=encoder.output_dim,
            embedding_dim=embedding_dim,
            width=width,
            pooling=pooling,
            dropout=dropout,
        )
        self.embedding_dim = embedding_dim
        #: set by build_backbone(whitening=True); fitted after training (csi whiten)
        self.whitening: Whitening | None = None
        # Shortest input (frames) an exported graph accepts: enough windows for CQTNet's min_frames.
        self.min_frames = window_frames + (self.cqtnet.min_frames - 1) * window_hop

    def clip_vectors(self, features: torch.Tensor) -> torch.Tensor:
        """[B, n_mels, T] → [B, D_e, W], W = 1 + (max(T, window_frames) - window_frames) // window_hop."""
        if features.dim() != 3 or features.shape[1] != self.n_bins:
            raise ValueError(f"expected log-mel [B, {self.n_bins}, T], got {tuple(features.shape)}")
        t = features.shape[2]
        if t < self.window_frames:
            reps = -(-self.window_frames // t)
            features = features.repeat(1, 1, reps)[:, :, : self.window_frames]
        # Tensor.unfold does not export with a symbolic T (torch.export adds a guard it cannot
        # prove); an index grid does (ONNX Range + Gather) and picks the same frames.
        n_windows = (features.shape[2] - self.window_frames) // self.window_hop + 1
        starts = torch.arange(n_windows, device=features.device) * self.window_hop
        offsets = torch.arange(self.window_frames, device=features.device)
        windows = features[:, :, starts[:, None] + offsets[None, :]]  # [B, F, W, frames]
        b, f, w, frames = windows.shape
        flat = windows.permute(0, 2, 1, 3).reshape(b * w, f, frames)
        return self.encoder(flat).reshape(b, w, -1).transpose(1, 2)

    def forward_unnormalized(self, features: torch.Tensor) -> torch.Tensor:
        return self.cqtnet.forward_unnormalized(self.clip_vectors(features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        embeddings = F.normalize(self.forward_unnormalized(features), dim=-1)
        return embeddings if self.whitening is None else self.whitening(embeddings)
