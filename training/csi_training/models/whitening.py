"""Learned whitening of embeddings (Mikolajczyk & Matas 2007; Radenović et al. 2018, "learned
whitening"), fitted after training on labelled embeddings and applied as the encoder's last layer.

With x a unit embedding [D], the whitened embedding is normalize((x − mean) @ projection), where

- ``mean`` [D] is the mean of the fitting embeddings;
- ``projection`` [D, D] = P_s · R: P_s = (C_s + ε·λ_max(C_s)·I)^(-1/2) whitens the *intra-work*
  scatter C_s = mean over same-work pairs (i, j) of (x_i − x_j)(x_i − x_j)ᵀ, so directions in which
  versions of one work differ (key, timbre, mix, …) are shrunk and directions in which works differ
  are kept; R rotates onto the principal axes of the whitened embeddings, largest variance first.

The projection is linear, so it costs one [D, D] matrix product per embedding and exports to ONNX
as MatMul; cosine similarity on the whitened embeddings is what every search then ranks by.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Whitening", "WhiteningFit", "fit_learned_whitening", "intra_work_scatter"]


class Whitening(nn.Module):
    """unit embeddings [B, D] → unit embeddings [B, D]: normalize((x − mean) @ projection).

    Starts as the identity (mean 0, projection I); :meth:`set` loads a fitted whitening. Both are
    buffers, saved with the backbone's weights.
    """

    mean: torch.Tensor
    projection: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("projection", torch.eye(dim))

    def set(self, mean: np.ndarray, projection: np.ndarray) -> None:
        """Load ``mean`` [D] and ``projection`` [D, D] (any float dtype; stored as float32)."""
        d = self.mean.shape[0]
        if mean.shape != (d,) or projection.shape != (d, d):
            raise ValueError(
                f"whitening for {d}-d embeddings needs mean [{d}] and projection [{d}, {d}], "
                f"got {mean.shape} and {projection.shape}"
            )
        if not (np.isfinite(mean).all() and np.isfinite(projection).all()):
            raise ValueError("whitening mean/projection hold NaN or infinite values")
        self.mean.copy_(torch.from_numpy(np.asarray(mean, dtype=np.float32)))
        self.projection.copy_(torch.from_numpy(np.asarray(projection, dtype=np.float32)))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        centred = embeddings - self.mean.to(embeddings.dtype)
        return F.normalize(centred @ self.projection.to(embeddings.dtype), dim=-1)


@dataclass(frozen=True)
class WhiteningFit:
    """A fitted whitening: ``mean`` [D] and ``projection`` [D, D] (float64), and what it was fitted on."""

    mean: np.ndarray
    projection: np.ndarray
    regularization: float
    n_embeddings: int
    n_works: int
    n_pairs: int

    def apply(self, embeddings: np.ndarray) -> np.ndarray:
        """unit embeddings [N, D] → whitened unit embeddings [N, D] float64 (the module's formula)."""
        y = (np.asarray(embeddings, dtype=np.float64) - self.mean) @ self.projection
        return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)


def intra_work_scatter(embeddings: np.ndarray, work_ids: Sequence[str]) -> tuple[np.ndarray, int, int]:
    """(C_s [D, D] float64, number of same-work pairs, number of works with ≥ 2 embeddings).

    C_s = Σ over unordered same-work pairs (x_i − x_j)(x_i − x_j)ᵀ / n_pairs, computed per work as
    n·Σ x xᵀ − (Σ x)(Σ x)ᵀ (equal to the pair sum, without enumerating the pairs).
    """
    x = np.asarray(embeddings, dtype=np.float64)
    groups: dict[str, list[int]] = {}
    for i, work in enumerate(work_ids):
        groups.setdefault(work, []).append(i)
    scatter = np.zeros((x.shape[1], x.shape[1]))
    n_pairs = n_works = 0
    for members in groups.values():
        n = len(members)
        if n < 2:
            continue
        xs = x[members]
        total = xs.sum(axis=0)
        scatter += n * (xs.T @ xs) - np.outer(total, total)
        n_pairs += n * (n - 1) // 2
        n_works += 1
    if n_pairs == 0:
        raise ValueError("learned whitening needs at least one work with two or more embeddings")
    return scatter / n_pairs, n_pairs, n_works


def _inverse_sqrt(matrix: np.ndarray, regularization: float) -> np.ndarray:
    """(M + ε·λ_max·I)^(-1/2) of a symmetric positive semi-definite M [D, D]."""
    values, vectors = np.linalg.eigh(matrix)
    values = values + regularization * max(float(values[-1]), 0.0)
    if values[0] <= 0:
        raise ValueError(
            "the intra-work scatter is singular (fewer same-work pairs than dimensions, or duplicated "
            "embeddings); use a regularization > 0"
        )
    return (vectors * values**-0.5) @ vectors.T


def fit_learned_whitening(
    embeddings: np.ndarray, work_ids: Sequence[str], regularization: float = 1e-4
) -> WhiteningFit:
    """Fit the whitening of this module's docstring on ``embeddings`` [N, D] labelled by ``work_ids``.

    regularization: ε ≥ 0, added to the intra-work scatter's eigenvalues as a fraction of the
    largest one (directions in which versions never differ in the fitting data would otherwise be
    amplified without bound).
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(work_ids):
        raise ValueError(f"need embeddings [N, D] and N work ids, got {x.shape} and {len(work_ids)}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings hold NaN or infinite values")
    if not (np.isfinite(regularization) and regularization >= 0):
        raise ValueError(f"regularization must be a finite number ≥ 0, got {regularization}")
    if len(set(work_ids)) < 2:
        raise ValueError("learned whitening needs embeddings of at least two works")
    scatter, n_pairs, _ = intra_work_scatter(x, work_ids)
    mean = x.mean(axis=0)
    intra = _inverse_sqrt(scatter, regularization)
    whitened = (x - mean) @ intra
    _, vectors = np.linalg.eigh(whitened.T @ whitened / max(len(x) - 1, 1))  # ascending
    projection = intra @ vectors[:, ::-1]
    return WhiteningFit(
        mean=mean,
        projection=projection,
        regularization=float(regularization),
        n_embeddings=len(x),
        n_works=len(set(work_ids)),
        n_pairs=n_pairs,
    )
