"""Measures of how latent codes carry generative factors: discrete mutual information and MLP probes.

Mutual information (nats) between a discrete factor f (class labels, or a continuous factor cut into
bins) and a latent code c is estimated from N paired samples by counting::

    I(f; c) = H(f) + H(c) - H(f, c),   H = -sum_k p_k log p_k + (m - 1) / (2 N)

with p_k the observed frequencies over the m occupied cells and the Miller-Madow term (m - 1) / (2N)
taking off most of the plug-in estimate's downward bias (first order in 1 / N), so that independent
variables score about 0 instead of the plug-in's (K_f - 1)(K_c - 1) / (2N). The latent is
discretised:

- one latent dimension: ``quantile_bins`` (equal-frequency bins, ``n_bins`` = 20 by default:
  invariant to any monotone rescaling of the dimension and robust to outliers);
- a latent subspace (several dimensions at once): ``kmeans_codes``, the index of the nearest of
  ``n_clusters`` k-means centroids fitted on the standardised codes (a vector quantisation; a
  histogram over D dimensions would have 20^D cells).

Normalised MI divides by H(f): the fraction of the factor's entropy the code carries, in [0, 1] up to
estimation error. Both estimates are biased low by the discretisation (information finer than a bin
is lost), in the same way for every latent compared.

Probes: :func:`probe_accuracy` trains a one-hidden-layer MLP classifier (torch, full batch, Adam) on
a random part of the samples and reports its accuracy on the rest.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "entropy",
    "kmeans_codes",
    "mutual_information",
    "probe_accuracy",
    "quantile_bins",
]


def _as_codes(codes: np.ndarray, name: str) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 1 or codes.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of discrete codes, got shape {codes.shape}")
    if codes.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integer codes, got dtype {codes.dtype}")
    return codes.astype(np.int64)


def entropy(codes: np.ndarray, miller_madow: bool = True) -> float:
    """Entropy (nats) of the distribution of the integer codes [N]."""
    codes = _as_codes(codes, "codes")
    counts = np.unique(codes, return_counts=True)[1].astype(np.float64)
    p = counts / counts.sum()
    h = float(-(p * np.log(p)).sum())
    if miller_madow:
        h += (len(counts) - 1) / (2.0 * codes.size)
    return h


def mutual_information(a: np.ndarray, b: np.ndarray, miller_madow: bool = True) -> float:
    """I(a; b) in nats from paired integer codes a [N], b [N] (see the module doc)."""
    a, b = _as_codes(a, "a"), _as_codes(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must pair up, got {a.shape} and {b.shape}")
    joint = np.unique(np.stack([a, b], axis=1), axis=0, return_inverse=True)[1].ravel()
    return entropy(a, miller_madow) + entropy(b, miller_madow) - entropy(joint, miller_madow)


def quantile_bins(values: np.ndarray, n_bins: int = 20) -> np.ndarray:
    """Equal-frequency bin index (int64 [N], in [0, n_bins)) of each finite value [N]."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"values must be a non-empty 1-D array, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("values contain NaN or Inf")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    edges = np.quantile(values, np.linspace(0.0, 1.0, n_bins + 1)[1:-1])
    return np.searchsorted(edges, values, side="right").astype(np.int64)


def kmeans_codes(
    points: np.ndarray, n_clusters: int = 32, seed: int = 0, iterations: int = 50, restarts: int = 4
) -> np.ndarray:
    """Nearest-centroid index (int64 [N]) of each row of points [N, D] after k-means (k-means++
    seeding, Lloyd iterations) on the per-dimension standardised points. Constant dimensions are
    left at 0; n_clusters is capped at the number of distinct rows. The best of ``restarts`` seeded
    runs (least within-cluster sum of squares) is kept: one k-means++ seeding can put two centres in
    one cluster and never recover."""
    x = np.asarray(points, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"points must be [N, D] with N, D >= 1, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("points contain NaN or Inf")
    if n_clusters < 1 or restarts < 1:
        raise ValueError(f"n_clusters and restarts must be >= 1, got {n_clusters} and {restarts}")
    std = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    k = min(n_clusters, len(np.unique(x, axis=0)))
    rng = np.random.default_rng(seed)
    best, best_inertia = np.zeros(len(x), dtype=np.int64), np.inf
    for _ in range(restarts):
        labels, inertia = _lloyd(x, k, rng, iterations)
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best


def _lloyd(x: np.ndarray, k: int, rng: np.random.Generator, iterations: int) -> tuple[np.ndarray, float]:
    """One k-means run from a k-means++ seeding: (labels int64 [N], within-cluster sum of squares)."""
    centroids = np.empty((k, x.shape[1]))
    centroids[0] = x[rng.integers(len(x))]
    nearest = ((x - centroids[0]) ** 2).sum(axis=1)
    for c in range(1, k):
        centroids[c] = x[rng.choice(len(x), p=nearest / nearest.sum())]
        nearest = np.minimum(nearest, ((x - centroids[c]) ** 2).sum(axis=1))
    labels = np.zeros(len(x), dtype=np.int64)
    for iteration in range(iterations):
        d2 = (x**2).sum(1)[:, None] - 2.0 * x @ centroids.T + (centroids**2).sum(1)[None, :]
        new = d2.argmin(axis=1)
        if iteration > 0 and np.array_equal(new, labels):
            break
        labels = new
        for c in range(k):
            members = x[labels == c]
            if len(members):
                centroids[c] = members.mean(axis=0)
    inertia = float(((x - centroids[labels]) ** 2).sum())
    return labels, inertia


def probe_accuracy(
    features: np.ndarray,
    labels: np.ndarray,
    seed: int = 0,
    train_fraction: float = 0.7,
    hidden: int = 64,
    steps: int = 400,
    lr: float = 1e-2,
) -> float:
    """Held-out accuracy of an MLP probe (standardised features [N, D] → hidden ReLU → classes).

    A seeded random ``train_fraction`` of the samples trains it (full batch, Adam, weight decay
    1e-4, ``steps`` steps); the accuracy is measured on the others.
    """
    import torch

    x = np.asarray(features, dtype=np.float64)
    y = _as_codes(labels, "labels")
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"features must be [N, D] paired with labels [N], got {x.shape} and {y.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or Inf")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_train = round(train_fraction * len(y))
    if n_train < 1 or n_train >= len(y):
        raise ValueError(f"{len(y)} samples are too few to split into a training and a test part")
    train, test = order[:n_train], order[n_train:]
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    x = (x - mean) / np.where(std > 0, std, 1.0)
    classes, y = np.unique(y, return_inverse=True)
    torch.manual_seed(seed)
    probe = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, len(classes))
    )
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=1e-4)
    xt = torch.tensor(x, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.int64)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(probe(xt[train]), yt[train])
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = probe(xt[test]).argmax(dim=1)
    return float((predicted == yt[test]).float().mean())
