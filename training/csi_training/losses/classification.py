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
            (normalised softmax).
        scale: the cosine logits' scale ``s`` (ignored unless ``cosine``).
        margin: additive cosine margin ``m`` (CosFace, Wang et al. 2018): in the loss the target
            logit is ``s * (cos - m)``, so an item must be closer to its class than to any other by
            ``m`` in cosine before the loss lets go of it. Needs ``cosine``.

    ``forward(emb [B, D], labels int [B]) -> (loss, stats)`` with ``stats["accuracy"]`` the fraction
    of items whose arg-max logit (without margin) is their label (a python float).
    """

    def __init__(
        self,
        dim: int,
        n_classes: int,
        label_smoothing: float = 0.1,
        bn_neck: bool = True,
        cosine: bool = False,
        scale: float = 30.0,
        margin: float = 0.0,
    ) -> None:
        super().__init__()
        if dim < 1 or n_classes < 2:
            raise ValueError(f"need dim >= 1 and n_classes >= 2, got dim={dim}, n_classes={n_classes}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if cosine and not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"margin must be in [0, 1), got {margin}")
        if margin > 0 and not cosine:
            raise ValueError("a margin needs cosine logits (cosine=True)")
        self.dim = dim
        self.n_classes = n_classes
        self.label_smoothing = float(label_smoothing)
        self.cosine = cosine
        self.scale = float(scale)
        self.margin = float(margin)
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

    @torch.no_grad()
    def imprint(self, emb: Tensor, labels: Tensor) -> int:
        """Set each class weight to the mean direction of its items' embeddings (weight imprinting,
        Qi et al. 2018), so that a fresh head agrees with a trained backbone from the first step
        instead of pulling it towards random class directions; returns the number of classes set.

        ``emb`` [N, D] (any norm: each row is normalised first), ``labels`` int [N]. Classes with no
        item keep their weights. Cosine heads only: a linear head's weights live on the neck's scale.
        """
        if not self.cosine:
            raise ValueError("imprinting needs cosine logits (cosine=True)")
        if emb.ndim != 2 or emb.shape[1] != self.dim or labels.shape != (emb.shape[0],):
            raise ValueError(
                f"need emb [N, {self.dim}] and labels [N], got {tuple(emb.shape)} and {tuple(labels.shape)}"
            )
        if not bool(torch.isfinite(emb).all()):
            raise ValueError("emb holds NaN or Inf")
        labels = labels.to(device=emb.device, dtype=torch.long)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.n_classes):
            raise ValueError(f"labels must lie in [0, {self.n_classes})")
        unit = F.normalize(emb.double(), dim=1)
        sums = torch.zeros(self.n_classes, self.dim, dtype=torch.float64, device=emb.device)
        sums.index_add_(0, labels, unit)
        present = sums.norm(dim=1) > 0  # classes with items (whose directions do not cancel out)
        self.weight[present] = F.normalize(sums[present], dim=1).to(self.weight)
        return int(present.sum())

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, n_classes={self.n_classes}, label_smoothing={self.label_smoothing}, "
            f"cosine={self.cosine}, scale={self.scale}, margin={self.margin}"
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
        margined = logits
        if self.margin > 0:
            margined = logits - (self.scale * self.margin) * F.one_hot(labels, self.n_classes).to(
                logits.dtype
            )
        loss = F.cross_entropy(margined, labels, label_smoothing=self.label_smoothing)
        with torch.no_grad():
            accuracy = (logits.argmax(dim=1) == labels).float().mean().item()
        return loss, {"accuracy": accuracy}
