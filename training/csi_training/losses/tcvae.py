"""The beta-TCVAE decomposition of a VAE's KL term (Chen et al., "Isolating Sources of
Disentanglement in VAEs", NeurIPS 2018), estimated on a minibatch.

For a Gaussian encoder q(z|x) = N(mu(x), diag exp(logvar(x))), the standard normal prior p(z) and the
aggregate posterior q(z) = E_x q(z|x), the expected KL splits exactly into three terms::

    E_x KL(q(z|x) || p(z)) = I_q(x; z)                       index-code mutual information  (alpha)
                           + KL(q(z) || prod_d q(z_d))        total correlation              (beta)
                           + sum_d KL(q(z_d) || p(z_d))       dimension-wise KL              (gamma)

Each term is estimated from samples z_i ~ q(z|x_i) of a minibatch x_1..x_M as the batch mean of
log q(z_i|x_i) - log q(z_i), log q(z_i) - sum_d log q(z_id) and sum_d log q(z_id) - log p(z_i); the
three estimates add up to the batch mean of log q(z_i|x_i) - log p(z_i) exactly (a Monte-Carlo
estimate of the KL), whatever the estimate of q.

q(z_i) needs the whole data set; the minibatch-weighted-sampling estimate replaces it with a
weighted sum over the batch (the same weights for each marginal q(z_id))::

    q(z_i) ~ w_own q(z_i | x_i) + w_other sum_{j != i} q(z_i | x_j)

- a data set of ``dataset_size`` = N distinct items, batches drawn without replacement:
  w_own = 1 / N, w_other = (N - 1) / (N (M - 1)). Unbiased for q(z_i) (a sum over the N items of
  which the M - 1 others are a uniform sample), and exact when the batch is the whole data set.
- ``dataset_size=None``, data drawn i.i.d. from a distribution (synthetic data generated on the
  fly, or N much larger than M): w_own = 0, w_other = 1 / (M - 1); unbiased for q(z_i) too.

The log of an unbiased estimate of q is biased low by O(1 / M) (Jensen); the bias is the same for
log q(z) and each log q(z_d) to first order. Chen et al.'s reference code divides the plain sum
over all j by N * M instead; against ours that adds about log N to the mutual information and
(D - 1) log N to the total correlation and takes D log N from the dimension-wise KL (constants: the
gradients agree in the large-N limit), so its term values are not comparable across data sets.
Ours estimate the terms themselves. ``estimator="chen"`` gives that estimate (every j weighted
1 / (N M), the own sample included) for comparison with work built on their code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

LOG_2PI = math.log(2.0 * math.pi)

Estimator = Literal["weighted", "chen"]

__all__ = ["TCDecomposition", "gaussian_log_density", "log_aggregate_posterior", "tc_decomposition"]


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Element-wise log N(z; mu, exp(logvar)) (broadcasting), in nats."""
    return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar))


@dataclass(frozen=True)
class TCDecomposition:
    """Batch-mean estimates (nats, 0-d tensors carrying gradients): ``mutual_information``,
    ``total_correlation``, ``dimension_kl``; ``kl`` is the analytic mean KL(q(z|x) || N(0, I)),
    whose expectation the three estimates add up to."""

    mutual_information: torch.Tensor
    total_correlation: torch.Tensor
    dimension_kl: torch.Tensor
    kl: torch.Tensor

    def weighted(self, alpha: float, beta: float, gamma: float) -> torch.Tensor:
        """alpha * MI + beta * TC + gamma * dimension-wise KL (the beta-TCVAE penalty)."""
        return alpha * self.mutual_information + beta * self.total_correlation + gamma * self.dimension_kl


def _log_weights(
    batch: int, dataset_size: int | None, like: torch.Tensor, estimator: Estimator = "weighted"
) -> torch.Tensor:
    """log w [M, M]: row i weights q(z_i | x_j) in the estimate of q(z_i)."""
    if estimator == "chen":
        if dataset_size is None:
            raise ValueError("estimator='chen' needs a dataset_size (it divides by N * M)")
        return torch.full(
            (batch, batch), -math.log(float(dataset_size) * batch), dtype=like.dtype, device=like.device
        )
    if estimator != "weighted":
        raise ValueError(f"estimator must be 'weighted' or 'chen', got {estimator!r}")
    if dataset_size is None:
        own, other = -math.inf, -math.log(batch - 1)
    else:
        n = float(dataset_size)
        own = -math.log(n)
        other = math.log(n - 1.0) - math.log(n) - math.log(batch - 1) if n > 1 else -math.inf
    weights = torch.full((batch, batch), other, dtype=like.dtype, device=like.device)
    weights.fill_diagonal_(own)
    return weights


def _check(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, dataset_size: int | None) -> None:
    if z.dim() != 2 or z.shape != mu.shape or z.shape != logvar.shape:
        raise ValueError(
            f"z, mu and logvar must all be [batch, dims]; got {tuple(z.shape)}, {tuple(mu.shape)}, "
            f"{tuple(logvar.shape)}"
        )
    if z.shape[0] < 2 or z.shape[1] < 1:
        raise ValueError(f"the minibatch estimate needs >= 2 samples of >= 1 dims, got {tuple(z.shape)}")
    if dataset_size is not None and dataset_size < 1:
        raise ValueError(f"dataset_size must be >= 1 or None (data drawn i.i.d.), got {dataset_size}")


def log_aggregate_posterior(
    z: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    dataset_size: int | None,
    estimator: Estimator = "weighted",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minibatch-weighted estimates of log q(z_i) [M] and of the marginals log q(z_id) [M, D].

    z, mu, logvar: [M, D]; z[i] a sample of q(z | x_i) = N(mu[i], exp(logvar[i])). Cost O(M^2 D).
    """
    _check(z, mu, logvar, dataset_size)
    batch = z.shape[0]
    pairwise = gaussian_log_density(z[:, None, :], mu[None, :, :], logvar[None, :, :])  # [i, j, d]
    log_w = _log_weights(batch, dataset_size, z, estimator)
    log_qz = torch.logsumexp(pairwise.sum(dim=2) + log_w, dim=1)
    log_qz_marginals = torch.logsumexp(pairwise + log_w[:, :, None], dim=1)
    return log_qz, log_qz_marginals


def tc_decomposition(
    z: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    dataset_size: int | None = None,
    estimator: Estimator = "weighted",
) -> TCDecomposition:
    """The three KL terms of one latent (sub)space, estimated on a minibatch (see the module doc).

    z, mu, logvar: [M, D] (M >= 2); ``dataset_size``: N distinct training items, or None for data
    drawn i.i.d. from a distribution; ``estimator``: "weighted" (ours) or "chen" (see the module doc).
    """
    log_qz, log_qz_marginals = log_aggregate_posterior(z, mu, logvar, dataset_size, estimator)
    log_qz_given_x = gaussian_log_density(z, mu, logvar).sum(dim=1)
    log_pz = gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z)).sum(dim=1)
    log_prod_marginals = log_qz_marginals.sum(dim=1)
    kl = 0.5 * (mu**2 + torch.exp(logvar) - 1.0 - logvar).sum(dim=1)
    return TCDecomposition(
        mutual_information=(log_qz_given_x - log_qz).mean(),
        total_correlation=(log_qz - log_prod_marginals).mean(),
        dimension_kl=(log_prod_marginals - log_pz).mean(),
        kl=kl.mean(),
    )
