"""Triplet loss with online mining (random, semi-hard, batch-hard) over one batch of embeddings.

Every item of the batch is an anchor. Mining looks at the batch's distance matrix and the items'
work labels and returns the index tensors ``(anchor, positive, negative)`` of the triplets it
selected; the loss is the mean over those triplets of ``relu(d(a, p) - d(a, n) + margin)``.

Definitions (FaceNet, Schroff et al. 2015; batch-hard, Hermans et al. 2017):

- positive of ``a``: another item with the same label (never ``a`` itself);
- negative of ``a``: an item with a different label;
- semi-hard negative for ``(a, p)``: ``d(a, p) < d(a, n) < d(a, p) + margin`` (strict);
- hard: the farthest positive and the closest negative of each anchor.

An anchor without a positive (a work with a single item in the batch) or without a negative (the
whole batch is one work) yields no triplet; it is never given a fake one. Selection never carries
gradient: the loss gathers the selected entries of the (differentiable) distance matrix.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

Metric = Literal["sqeuclidean", "euclidean", "cosine"]
Mining = Literal["random", "semi_hard", "hard"]
Fallback = Literal["easiest", "hardest", "random", "drop"]

METRICS: tuple[str, ...] = ("sqeuclidean", "euclidean", "cosine")
MININGS: tuple[str, ...] = ("random", "semi_hard", "hard")
FALLBACKS: tuple[str, ...] = ("easiest", "hardest", "random", "drop")

Triplets = tuple[Tensor, Tensor, Tensor]


def pairwise_distances(emb: Tensor, metric: Metric = "sqeuclidean", normalize_by_dim: bool = False) -> Tensor:
    """All pairwise distances between the rows of ``emb``.

    Args:
        emb: float ``[B, D]`` embeddings.
        metric: ``"sqeuclidean"`` (``|x - y|^2``), ``"euclidean"`` (``|x - y|``) or ``"cosine"``
            (``1 - cos(x, y)``, in ``[0, 2]``; a zero row counts as orthogonal to everything).
        normalize_by_dim: divide squared distances by ``D`` (MOVE's convention), so euclidean
            becomes the root-mean-square difference per dimension. Not defined for cosine.

    Returns:
        ``[B, B]`` symmetric, ``>= 0``, exactly 0 on the diagonal. Differentiable everywhere: the
        euclidean distance of two identical rows has gradient 0, not NaN.
    """
    if emb.ndim != 2:
        raise ValueError(f"emb must be [B, D], got shape {tuple(emb.shape)}")
    if not emb.is_floating_point():
        raise TypeError(f"emb must be a floating tensor, got {emb.dtype}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    n_items, dim = emb.shape
    off_diagonal = ~torch.eye(n_items, dtype=torch.bool, device=emb.device)

    if metric == "cosine":
        if normalize_by_dim:
            raise ValueError("normalize_by_dim applies to (squared) euclidean distances, not cosine")
        unit = F.normalize(emb, dim=1, eps=1e-12)
        gram = unit @ unit.T
        dist = (1.0 - 0.5 * (gram + gram.T)).clamp(min=0.0, max=2.0)  # matmul is not exactly symmetric
        return torch.where(off_diagonal, dist, torch.zeros_like(dist))

    # |x|^2 + |y|^2 - 2 x.y: one matmul, O(B^2) memory; rounding can make it slightly negative.
    sq_norm = (emb * emb).sum(dim=1)
    gram = emb @ emb.T
    sq = (sq_norm[:, None] + sq_norm[None, :] - (gram + gram.T)).clamp(min=0.0)
    sq = torch.where(off_diagonal, sq, torch.zeros_like(sq))
    if normalize_by_dim:
        sq = sq / dim
    if metric == "sqeuclidean":
        return sq
    # sqrt has an infinite derivative at 0: take the root only where sq > 0.
    positive = sq > 0
    root = torch.sqrt(torch.where(positive, sq, torch.ones_like(sq)))
    return torch.where(positive, root, torch.zeros_like(sq))


def _check_inputs(dist: Tensor, labels: Tensor) -> None:
    if dist.ndim != 2 or dist.shape[0] != dist.shape[1]:
        raise ValueError(f"dist must be a square [B, B] matrix, got shape {tuple(dist.shape)}")
    if labels.ndim != 1 or labels.shape[0] != dist.shape[0]:
        raise ValueError(f"labels must be [B] with B = {dist.shape[0]}, got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")


def _masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """``(positive [B, B], negative [B, B])`` boolean masks: same label but not self; other label."""
    same = labels[:, None] == labels[None, :]
    not_self = ~torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    return same & not_self, ~same


def _sample_uniform(mask: Tensor, generator: torch.Generator | None) -> Tensor:
    """One column per row of ``mask [R, B]``, uniformly among that row's True entries.

    The argmax of i.i.d. uniform draws over the allowed entries is a uniform choice among them.
    Rows without a True entry get an arbitrary index; callers only use rows that have one.
    """
    draws = torch.rand(mask.shape, generator=generator, device=mask.device)
    return draws.masked_fill(~mask, -1.0).argmax(dim=1)


def _empty_triplets(device: torch.device) -> Triplets:
    empty = torch.empty(0, dtype=torch.long, device=device)
    return empty, empty.clone(), empty.clone()


def mine_random(
    dist: Tensor, labels: Tensor, generator: torch.Generator | None = None, all_positives: bool = False
) -> Triplets:
    """Per anchor, a uniformly random positive and a uniformly random negative.

    Args:
        dist: ``[B, B]`` distances (only its shape and device are used).
        labels: integer ``[B]`` work labels.
        generator: torch RNG (on ``dist``'s device); None uses the global one.
        all_positives: one triplet per (anchor, positive) pair instead of one random positive.

    Returns:
        ``(anchor, positive, negative)`` int64 ``[T]`` each; anchors without a positive or a
        negative are left out.
    """
    _check_inputs(dist, labels)
    positive, negative = _masks(labels.to(dist.device))
    usable = positive.any(dim=1) & negative.any(dim=1)
    anchor, pos = _select_positives(positive, usable, generator, all_positives)
    if anchor.numel() == 0:
        return _empty_triplets(dist.device)
    neg = _sample_uniform(negative[anchor], generator)
    return anchor, pos, neg


def _select_positives(
    positive: Tensor, usable: Tensor, generator: torch.Generator | None, all_positives: bool
) -> tuple[Tensor, Tensor]:
    if all_positives:
        anchor, pos = torch.nonzero(positive & usable[:, None], as_tuple=True)
        return anchor, pos
    anchor = torch.nonzero(usable).squeeze(1)
    if anchor.numel() == 0:
        return anchor, anchor.clone()
    return anchor, _sample_uniform(positive[anchor], generator)


def mine_semi_hard(
    dist: Tensor,
    labels: Tensor,
    margin: float,
    generator: torch.Generator | None = None,
    fallback: Fallback = "easiest",
    all_positives: bool = False,
) -> Triplets:
    """Per anchor a random positive ``p``, then a negative drawn uniformly among the semi-hard ones.

    Semi-hard (FaceNet): ``d(a, p) < d(a, n) < d(a, p) + margin``, both inequalities strict.
    When an (anchor, positive) pair has no semi-hard negative, ``fallback`` decides:

    - ``"easiest"``: the farthest negative (lowest index on ties). If every negative is closer
      than the positive this is the least hard one (as TensorFlow-Addons' semi-hard loss does);
      otherwise it lies beyond the margin and the triplet contributes 0.
    - ``"hardest"``: the closest negative (lowest index on ties), i.e. batch-hard's negative.
    - ``"random"``: a uniformly random negative.
    - ``"drop"``: no triplet for that pair.

    Args:
        dist: ``[B, B]`` distances (detached internally).
        labels: integer ``[B]`` work labels.
        margin: the triplet margin, ``> 0``.
        generator: torch RNG (on ``dist``'s device); None uses the global one.
        fallback: see above.
        all_positives: one triplet per (anchor, positive) pair instead of one random positive.

    Returns:
        ``(anchor, positive, negative)`` int64 ``[T]`` each.
    """
    _check_inputs(dist, labels)
    if not margin > 0:
        raise ValueError(f"semi-hard mining needs margin > 0, got {margin}")
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    dist = dist.detach()
    positive, negative = _masks(labels.to(dist.device))
    usable = positive.any(dim=1) & negative.any(dim=1)
    anchor, pos = _select_positives(positive, usable, generator, all_positives)
    if anchor.numel() == 0:
        return _empty_triplets(dist.device)

    rows = dist[anchor]  # [T, B]
    row_negative = negative[anchor]
    d_ap = dist[anchor, pos][:, None]
    band = row_negative & (rows > d_ap) & (rows < d_ap + margin)
    has_semi_hard = band.any(dim=1)
    neg = _sample_uniform(band, generator)

    if fallback == "drop":
        return anchor[has_semi_hard], pos[has_semi_hard], neg[has_semi_hard]
    if fallback == "easiest":
        substitute = rows.masked_fill(~row_negative, -torch.inf).argmax(dim=1)
    elif fallback == "hardest":
        substitute = rows.masked_fill(~row_negative, torch.inf).argmin(dim=1)
    else:
        substitute = _sample_uniform(row_negative, generator)
    return anchor, pos, torch.where(has_semi_hard, neg, substitute)


def mine_hard(dist: Tensor, labels: Tensor) -> Triplets:
    """Batch-hard: per anchor the farthest positive and the closest negative.

    Ties go to the lowest index. Anchors without a positive or a negative are left out.

    Args:
        dist: ``[B, B]`` distances (detached internally).
        labels: integer ``[B]`` work labels.

    Returns:
        ``(anchor, positive, negative)`` int64 ``[T]`` each.
    """
    _check_inputs(dist, labels)
    dist = dist.detach()
    positive, negative = _masks(labels.to(dist.device))
    anchor = torch.nonzero(positive.any(dim=1) & negative.any(dim=1)).squeeze(1)
    if anchor.numel() == 0:
        return _empty_triplets(dist.device)
    rows = dist[anchor]
    # argmax/argmin return the first extreme entry, i.e. the lowest index on ties.
    pos = rows.masked_fill(~positive[anchor], -torch.inf).argmax(dim=1)
    neg = rows.masked_fill(~negative[anchor], torch.inf).argmin(dim=1)
    return anchor, pos, neg


class TripletLoss(nn.Module):
    """Triplet margin loss over the triplets an online miner picks inside each batch.

    Args:
        margin: hinge margin (in the units of ``metric``). 0.3 suits euclidean/cosine distances
            of unit-norm embeddings; MOVE uses 1.0 with ``metric="sqeuclidean"`` and
            ``normalize_by_dim=True``.
        mining: ``"random"``, ``"semi_hard"`` or ``"hard"`` (batch-hard).
        metric: distance, see :func:`pairwise_distances`.
        normalize_by_dim: divide squared distances by the embedding size (MOVE).
        soft: replace the hinge by ``softplus(d(a, p) - d(a, n) + margin)`` (the soft-margin
            variant of Hermans et al. uses it with ``margin=0``).
        fallback: semi-hard only, see :func:`mine_semi_hard`.
        all_positives: random/semi-hard only: every (anchor, positive) pair forms a triplet.
        generator: RNG for the random choices; None uses torch's global RNG.

    ``forward(emb [B, D], labels int [B]) -> (loss, stats)``: ``loss`` is the mean over the selected
    triplets (a zero that still depends on ``emb`` when there is none); ``stats`` holds python
    numbers: ``n_triplets``, ``active_fraction`` (triplets with ``d(a, p) - d(a, n) + margin > 0``),
    ``accuracy`` (triplets with ``d(a, p) < d(a, n)``), ``d_pos`` and ``d_neg`` (means; NaN when
    there is no triplet). Reading the stats synchronises with the device once per call.
    ``from_distances(dist [B, B], labels)`` does the same from a precomputed distance matrix.
    """

    def __init__(
        self,
        margin: float = 0.3,
        mining: Mining = "hard",
        metric: Metric = "euclidean",
        normalize_by_dim: bool = False,
        soft: bool = False,
        fallback: Fallback = "easiest",
        all_positives: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if mining not in MININGS:
            raise ValueError(f"mining must be one of {MININGS}, got {mining!r}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
        if margin < 0 or (margin == 0 and not soft):
            raise ValueError(f"margin must be > 0 (or >= 0 with soft=True), got {margin}")
        if mining == "semi_hard" and margin == 0:
            raise ValueError("semi-hard mining needs margin > 0")
        if mining == "hard" and all_positives:
            raise ValueError("all_positives applies to random and semi-hard mining, not batch-hard")
        if metric == "cosine" and normalize_by_dim:
            raise ValueError("normalize_by_dim applies to (squared) euclidean distances, not cosine")
        self.margin = float(margin)
        self.mining: Mining = mining
        self.metric: Metric = metric
        self.normalize_by_dim = normalize_by_dim
        self.soft = soft
        self.fallback: Fallback = fallback
        self.all_positives = all_positives
        self.generator = generator
        self._warned_empty = False

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, mining={self.mining!r}, metric={self.metric!r}, "
            f"normalize_by_dim={self.normalize_by_dim}, soft={self.soft}"
        )

    def mine(self, dist: Tensor, labels: Tensor) -> Triplets:
        """The ``(anchor, positive, negative)`` indices this loss's miner picks from ``dist``."""
        if self.mining == "random":
            return mine_random(dist, labels, self.generator, self.all_positives)
        if self.mining == "semi_hard":
            return mine_semi_hard(
                dist, labels, self.margin, self.generator, self.fallback, self.all_positives
            )
        return mine_hard(dist, labels)

    def forward(self, emb: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, float]]:
        dist = pairwise_distances(emb, self.metric, self.normalize_by_dim)
        return self.from_distances(dist, labels.to(emb.device))

    def from_distances(self, dist: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The loss and stats from a precomputed ``[B, B]`` distance matrix (what forward does next)."""
        anchor, pos, neg = self.mine(dist, labels)
        if anchor.numel() == 0:
            if not self._warned_empty:
                logger.warning(
                    "batch of %d items with %d distinct labels has no valid triplet "
                    "(every work needs >= 2 items and the batch >= 2 works); loss is 0",
                    labels.shape[0],
                    int(torch.unique(labels).numel()),
                )
                self._warned_empty = True
            nan = float("nan")
            stats = {"n_triplets": 0, "active_fraction": nan, "accuracy": nan, "d_pos": nan, "d_neg": nan}
            return dist.sum() * 0.0, stats
        d_pos = dist[anchor, pos]
        d_neg = dist[anchor, neg]
        violation = d_pos - d_neg + self.margin
        per_triplet = F.softplus(violation) if self.soft else F.relu(violation)
        loss = per_triplet.mean()
        with torch.no_grad():
            summary = torch.stack(
                [
                    (violation > 0).float().mean(),
                    (d_pos < d_neg).float().mean(),
                    d_pos.mean(),
                    d_neg.mean(),
                ]
            ).tolist()
        stats = {
            "n_triplets": int(anchor.numel()),
            "active_fraction": summary[0],
            "accuracy": summary[1],
            "d_pos": summary[2],
            "d_neg": summary[3],
        }
        return loss, stats
