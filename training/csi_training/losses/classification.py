"""Classification head over work labels: optional BNNeck, linear or cosine logits, label-smoothed CE.

ByteCover-style training (Du et al. 2021) puts a BatchNorm "neck" between the embedding and the
classifier (BNNeck, Luo et al. 2019): the triplet loss acts on the embedding before the neck, the
cross-entropy on the normalised features after it, and retrieval uses the neck's output. The
neck's BatchNorm has no learned shift (its bias is frozen at 0), as in BNNeck.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ClassificationHead(nn.Module):
    """Cross-entropy over ``n_classes`` work labels, with label smoothing.

    Args:
        dim: embedding size ``D``.
        n_classes: number of training works (labels are ``0 .. n_classes - 1``).
        label_smoothing: ``eps``; the target is ``(1 - eps) * one_hot + eps / n_classes``.
        bn_neck: put a BatchNorm1d (bias frozen at 0) before the classifier.
        cosine: logits ``scale * cos(feature, class weight)`` instead of a plain linear layer
            (normalised-softmax / CosFace without margin).
        scale: the cosine logits' scale ``s`` (ignored unless ``cosine``).

    ``forward(emb [B, D], labels int [B]) -> (loss, stats)`` with ``stats["accuracy"]`` the fraction
    of items whose arg-max logit is their label (a python float).
    """

    def __init__(
        self,
        dim: int,
        n_classes: int,
        label_smoothing: float = 0.1,
        bn_neck: bool = True,
        cosine: bool = False,
        scale: float = 30.0,
    ) -> None:
        super().__init__()
        if dim < 1 or n_classes < 2:
            raise ValueError(f"need dim >= 1 and n_classes >= 2, got dim={dim}, n_classes={n_classes}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if cosine and not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.dim = dim
        self.n_classes = n_classes
        self.label_smoothing = float(label_smoothing)
        self.cosine = cosine
        self.scale = float(scale)
        self.neck: nn.BatchNorm1d | None = None
        if bn_neck:
            self.neck = nn.BatchNorm1d(dim)
            self.neck.bias.requires_grad_(False)
        self.weight = nn.Parameter(torch.empty(n_classes, dim))
        if cosine:
            nn.init.normal_(self.weight, std=1.0 / math.sqrt(dim))
        else:
            # small weights: initial logits near 0, i.e. a near-uniform prediction (BNNeck's init)
            nn.init.normal_(self.weight, std=0.001)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, n_classes={self.n_classes}, label_smoothing={self.label_smoothing}, "
            f"cosine={self.cosine}, scale={self.scale}"
        )

    def features(self, emb: Tensor) -> Tensor:
        """The neck's output ``[B, D]`` (``emb`` itself without a neck): what retrieval should use."""
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise ValueError(f"emb must be [B, {self.dim}], got shape {tuple(emb.shape)}")
        return emb if self.neck is None else self.neck(emb)

    def logits(self, emb: Tensor) -> Tensor:
        """Class logits ``[B, n_classes]``."""
        feat = self.features(emb)
        if self.cosine:
            return self.scale * (F.normalize(feat, dim=1) @ F.normalize(self.weight, dim=1).T)
        return feat @ self.weight.T

    def forward(self, emb: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, float]]:
        if labels.ndim != 1 or labels.shape[0] != emb.shape[0]:
            raise ValueError(f"labels must be [B] with B = {emb.shape[0]}, got shape {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
        labels = labels.to(device=emb.device, dtype=torch.long)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.n_classes):
            raise ValueError(
                f"labels must lie in [0, {self.n_classes}), got [{int(labels.min())}, {int(labels.max())}]"
            )
        logits = self.logits(emb)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        with torch.no_grad():
            accuracy = (logits.argmax(dim=1) == labels).float().mean().item()
        return loss, {"accuracy": accuracy}
