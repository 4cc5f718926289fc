"""GADM's parts: which embedding elements are version-variant, the mask, and the discriminator.

The transition cost between versions of one work is the summed distance over every unordered pair
(i, j) of clips with the same work label in the batch. Its gradient with respect to an embedding h_i
says how much each element of h_i contributes to the distance between i and its own versions: the
elements with the largest gradient magnitude are the ones that change most from version to version
(version-variant). Masking them (setting them to zero, then re-normalising to the unit sphere) gives
the disentangled representation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Discriminator", "disentangle", "random_keep_mask", "top_ratio_keep_mask", "transition_gradient"]


def _same_work_pairs(labels: torch.Tensor) -> torch.Tensor:
    """labels [B] → float [B, B] with 1 at i < j where labels[i] == labels[j]."""
    same = labels[:, None] == labels[None, :]
    return torch.triu(same, diagonal=1).float()


def transition_gradient(
    embeddings: torch.Tensor, labels: torch.Tensor, cost: str = "sqeuclidean"
) -> torch.Tensor:
    """d(transition cost)/d(embeddings) float32 [B, D] for embeddings [B, D] and work labels [B].

    cost: ``"sqeuclidean"`` (||h_i - h_j||^2) or ``"cosine"`` (1 - cos(h_i, h_j)). The embeddings are
    treated as constants (no gradient reaches the encoder); a clip with no other version of its work in
    the batch gets a zero row.
    """
    if embeddings.dim() != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(
            f"need embeddings [B, D] and labels [B], got {tuple(embeddings.shape)}, {tuple(labels.shape)}"
        )
    with torch.enable_grad():
        h = embeddings.detach().float().requires_grad_(True)
        if cost == "sqeuclidean":
            distances = (h[:, None, :] - h[None, :, :]).pow(2).sum(dim=-1)
        elif cost == "cosine":
            unit = F.normalize(h, dim=-1)
            distances = 1.0 - unit @ unit.T
        else:
            raise ValueError(f"cost must be sqeuclidean or cosine, got {cost!r}")
        total = (distances * _same_work_pairs(labels)).sum()
        (grad,) = torch.autograd.grad(total, h)
    return grad


def top_ratio_keep_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """float [B, D] keep-mask: 0 at the ceil(ratio * D) elements of largest |scores| in each row, else 1."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be in (0, 1), got {ratio}")
    n_mask = _n_masked(scores.shape[-1], ratio)
    top = scores.abs().topk(n_mask, dim=-1).indices
    keep = torch.ones_like(scores, dtype=torch.float32)
    return keep.scatter_(-1, top, 0.0)


def random_keep_mask(shape: tuple[int, int], ratio: float, generator: torch.Generator) -> torch.Tensor:
    """float [B, D] keep-mask with ceil(ratio * D) zeros per row at random places (the ablation)."""
    scores = torch.rand(shape, generator=generator)
    return top_ratio_keep_mask(scores, ratio)


def _n_masked(dim: int, ratio: float) -> int:
    # the smallest count that reaches the ratio, at least one and never every element
    return min(dim - 1, max(1, math.ceil(round(ratio * dim, 6))))


def disentangle(embeddings: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Masked and re-normalised copy of unit embeddings [B, D] (a constant: no gradient flows back)."""
    return F.normalize(embeddings.detach().float() * keep.to(embeddings.device), dim=-1)


class Discriminator(nn.Module):
    """Representation [B, D] → logit [B] that it is a disentangled one (1) rather than entangled (0)."""

    def __init__(self, dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)
