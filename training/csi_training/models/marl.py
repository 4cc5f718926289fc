"""MARL: a multi-view VAE with one shared and one private Gaussian latent per view.

After "Self-Supervised Multi-View Learning for Disentangled Music Audio Representations" (NYU MARL,
ISMIR 2024 late-breaking demo). The input is V views of one item (two tones of one waveform type at
different frequencies; two versions of one work), each a normalised log-mel patch [n_mels, frames]
with values in [0, 1]. One encoder (weights shared by the views) maps every view to a shared-space
expert N(mu_s^v, var_s^v) and a private posterior N(mu_p^v, var_p^v). The shared posterior of the
item combines the views' experts:

- ``combine="poe"`` (default): the product of the V Gaussian experts, precision-weighted
  (1 / var = sum_v 1 / var_v, mu = var * sum_v mu_v / var_v), as in product-of-experts multi-view
  VAEs (Wu & Goodman 2018). A view that is unsure (large variance) counts less, and the shared
  posterior narrows only where the views agree on a value.
- ``combine="mean"``: mean of the experts' means and of their variances; every view counts equally.

No prior expert is included in the product: the KL terms below already pull the posterior to N(0, I).
One decoder (shared by the views) maps [z_s, z_p^v] to the logits of view v; the reconstruction
term is the binary cross-entropy of the [0, 1] input against sigmoid(logits), summed over the
patch (the Bernoulli likelihood commonly used for [0, 1] images; its normaliser is constant).

The objective (:func:`marl_loss`) per item: reconstruction of every view plus, for the shared
latent and for each view's private latent separately, alpha * index-code MI + beta * total
correlation + gamma * dimension-wise KL (csi_training.losses.tcvae, estimated on the minibatch).
Encoder and decoder are MLPs over the flattened patch: the case study's tones are stationary and
short, and a small MLP trains on one CPU core in a minute.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from csi_training.losses.tcvae import Estimator, TCDecomposition, tc_decomposition

__all__ = [
    "MARLOutput",
    "MARLWeights",
    "MultiViewVAE",
    "combine_experts",
    "fit_multiview_vae",
    "marl_loss",
]

Combine = Literal["poe", "mean"]
# Encoder log-variances are clamped to this range (variance 6e-6 .. 3e3): keeps exp() finite early
# in training, far outside the range a trained model uses.
LOGVAR_MIN, LOGVAR_MAX = -12.0, 8.0


def combine_experts(
    mu: torch.Tensor, logvar: torch.Tensor, how: Combine
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian experts [B, V, D] (means, log-variances) → one posterior ([B, D], [B, D])."""
    if how == "poe":
        precision = torch.exp(-logvar)
        total = precision.sum(dim=1)
        return (mu * precision).sum(dim=1) / total, -torch.log(total)
    if how == "mean":
        return mu.mean(dim=1), torch.log(torch.exp(logvar).mean(dim=1))
    raise ValueError(f"combine must be 'poe' or 'mean', got {how!r}")


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


@dataclass
class MARLOutput:
    """One forward pass over B items of V views (D_s shared, D_p private dims).

    shared_mu / shared_logvar / z_shared: [B, D_s], the combined shared posterior and its sample;
    expert_mu / expert_logvar: [B, V, D_s], each view's shared-space expert;
    private_mu / private_logvar / z_private: [B, V, D_p]; logits: [B, V, n_features, n_frames].
    """

    shared_mu: torch.Tensor
    shared_logvar: torch.Tensor
    z_shared: torch.Tensor
    expert_mu: torch.Tensor
    expert_logvar: torch.Tensor
    private_mu: torch.Tensor
    private_logvar: torch.Tensor
    z_private: torch.Tensor
    logits: torch.Tensor


class MultiViewVAE(nn.Module):
    """views float [B, V, n_features, n_frames] in [0, 1] → :class:`MARLOutput`.

    hidden: widths of the encoder's hidden layers (the decoder mirrors them).
    """

    def __init__(
        self,
        n_features: int,
        n_frames: int,
        n_views: int = 2,
        shared_dim: int = 8,
        private_dim: int = 8,
        hidden: tuple[int, ...] = (256, 128),
        combine: Combine = "poe",
    ) -> None:
        super().__init__()
        if min(n_features, n_frames, shared_dim, private_dim) < 1 or n_views < 2:
            raise ValueError(
                "need n_features, n_frames, shared_dim, private_dim >= 1 and n_views >= 2, got "
                f"{n_features}, {n_frames}, {shared_dim}, {private_dim}, {n_views}"
            )
        if combine not in ("poe", "mean"):
            raise ValueError(f"combine must be 'poe' or 'mean', got {combine!r}")
        self.n_features, self.n_frames, self.n_views = n_features, n_frames, n_views
        self.shared_dim, self.private_dim, self.combine = shared_dim, private_dim, combine
        n_in = n_features * n_frames
        self.encoder = _mlp([n_in, *hidden, 2 * (shared_dim + private_dim)])
        self.decoder = _mlp([shared_dim + private_dim, *reversed(hidden), n_in])

    def _check(self, views: torch.Tensor) -> None:
        expected = (self.n_views, self.n_features, self.n_frames)
        if views.dim() != 4 or tuple(views.shape[1:]) != expected:
            raise ValueError(f"expected views [B, {', '.join(map(str, expected))}], got {tuple(views.shape)}")

    def encode(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """views [B, V, F, T] → (expert_mu [B, V, D_s], expert_logvar, private_mu [B, V, D_p],
        private_logvar)."""
        self._check(views)
        b, v = views.shape[:2]
        out = self.encoder(views.reshape(b * v, -1)).reshape(b, v, -1)
        ds, dp = self.shared_dim, self.private_dim
        mu_s, logvar_s, mu_p, logvar_p = torch.split(out, [ds, ds, dp, dp], dim=-1)
        return (
            mu_s,
            logvar_s.clamp(LOGVAR_MIN, LOGVAR_MAX),
            mu_p,
            logvar_p.clamp(LOGVAR_MIN, LOGVAR_MAX),
        )

    def decode(self, z_shared: torch.Tensor, z_private: torch.Tensor) -> torch.Tensor:
        """z_shared [B, D_s], z_private [B, V, D_p] → logits [B, V, F, T]."""
        b, v = z_private.shape[:2]
        z = torch.cat([z_shared[:, None, :].expand(b, v, -1), z_private], dim=-1)
        return self.decoder(z).reshape(b, v, self.n_features, self.n_frames)

    def forward(self, views: torch.Tensor, sample: bool = True) -> MARLOutput:
        """sample=False decodes the posterior means (evaluation); True draws z (training)."""
        expert_mu, expert_logvar, private_mu, private_logvar = self.encode(views)
        shared_mu, shared_logvar = combine_experts(expert_mu, expert_logvar, self.combine)
        if sample:
            z_shared = shared_mu + torch.exp(0.5 * shared_logvar) * torch.randn_like(shared_mu)
            z_private = private_mu + torch.exp(0.5 * private_logvar) * torch.randn_like(private_mu)
        else:
            z_shared, z_private = shared_mu, private_mu
        return MARLOutput(
            shared_mu=shared_mu,
            shared_logvar=shared_logvar,
            z_shared=z_shared,
            expert_mu=expert_mu,
            expert_logvar=expert_logvar,
            private_mu=private_mu,
            private_logvar=private_logvar,
            z_private=z_private,
            logits=self.decode(z_shared, z_private),
        )

    @torch.no_grad()
    def embed(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior means: (shared [B, D_s], private [B, V, D_p])."""
        expert_mu, expert_logvar, private_mu, _ = self.encode(views)
        return combine_experts(expert_mu, expert_logvar, self.combine)[0], private_mu


@dataclass(frozen=True)
class MARLWeights:
    """Weights of the decomposed KL terms, applied to every latent subspace."""

    alpha: float = 1.0  # index-code mutual information
    beta: float = 1.0  # total correlation
    gamma: float = 1.0  # dimension-wise KL

    def __post_init__(self) -> None:
        if min(self.alpha, self.beta, self.gamma) < 0:
            raise ValueError(f"alpha, beta and gamma must be >= 0, got {self}")


def marl_loss(
    output: MARLOutput,
    views: torch.Tensor,
    weights: MARLWeights,
    private_items: int | None = None,
    shared_items: int | None = None,
    estimator: Estimator = "weighted",
) -> tuple[torch.Tensor, dict[str, float]]:
    """The MARL objective (to minimise), mean over the B items: reconstruction (BCE summed over
    each view's patch, summed over views) + sum over the subspaces (shared, private of view 1..V)
    of alpha MI + beta TC + gamma dimension-wise KL. Returns (loss, float statistics per term).

    private_items / shared_items: the number N of distinct single views / of distinct view tuples
    the batches are drawn from (the ``dataset_size`` of csi_training.losses.tcvae), None for data
    drawn i.i.d. from a distribution. With a finite N the estimate of log q(z) stays above
    log q(z|x) - log N; with None it has no floor, and a loss that weights the terms unequally (e.g.
    gamma alone) can drive it down by shrinking the posteriors instead of shaping q(z): pass the real
    data-set sizes when training on a finite set. ``estimator``: see csi_training.losses.tcvae."""
    recon = nn.functional.binary_cross_entropy_with_logits(output.logits, views, reduction="none")
    recon = recon.sum(dim=(1, 2, 3)).mean()
    terms: dict[str, TCDecomposition] = {
        "shared": tc_decomposition(
            output.z_shared, output.shared_mu, output.shared_logvar, shared_items, estimator
        )
    }
    for v in range(output.z_private.shape[1]):
        terms[f"private{v + 1}"] = tc_decomposition(
            output.z_private[:, v],
            output.private_mu[:, v],
            output.private_logvar[:, v],
            private_items,
            estimator,
        )
    penalty = sum((t.weighted(weights.alpha, weights.beta, weights.gamma) for t in terms.values()), recon * 0)
    loss = recon + penalty
    stats = {"loss": float(loss.detach()), "recon": float(recon.detach())}
    for name, t in terms.items():
        stats[f"{name}_mi"] = float(t.mutual_information.detach())
        stats[f"{name}_tc"] = float(t.total_correlation.detach())
        stats[f"{name}_dwkl"] = float(t.dimension_kl.detach())
        stats[f"{name}_kl"] = float(t.kl.detach())
    return loss, stats


def fit_multiview_vae(
    model: MultiViewVAE,
    next_views: Callable[[], torch.Tensor],
    weights: MARLWeights,
    steps: int,
    lr: float,
    private_items: int | None = None,
    shared_items: int | None = None,
    estimator: Estimator = "weighted",
) -> dict[str, float]:
    """Train ``model`` for ``steps`` Adam steps (gradient norm clipped at 10) on the batches
    ``next_views()`` returns (views float [B, V, F, T] in [0, 1]); returns the mean statistics of
    :func:`marl_loss` over the last 10 % of the steps. A non-finite loss stops with the step's
    statistics."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    tail: list[dict[str, float]] = []
    for step in range(steps):
        views = next_views()
        loss, stats = marl_loss(model(views), views, weights, private_items, shared_items, estimator)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {step}: {stats}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        if step >= steps - max(1, steps // 10):
            tail.append(stats)
    return {k: sum(s[k] for s in tail) / len(tail) for k in tail[0]}
