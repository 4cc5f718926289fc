"""vCLUB: a variational upper bound on the mutual information I(x; y) (Cheng et al., ICML 2020).

CLUB bounds I(x; y) from above by ``E_p(x,y)[log p(y|x)] - E_p(x)E_p(y)[log p(y|x)]``; vCLUB replaces
the unknown conditional with a variational ``q(y|x)``, here a diagonal Gaussian whose mean and
log-variance are MLPs of x. q is fitted by maximum likelihood on (x, y) pairs; the bound is then
evaluated with the positive pairs (x_i, y_i) against all pairs (x_i, y_j) of the batch. While q is a
good fit, the estimate stays an upper bound, so minimising it over the encoder that produces x
drives I(x; y) down. The log-variance is squashed into [logvar_min, logvar_max] (a bounded q cannot
blow up the likelihood on a batch it fits perfectly).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["VariationalGaussian", "estimate_mi"]

_LOG_2PI = math.log(2.0 * math.pi)


class VariationalGaussian(nn.Module):
    """q(y | x) = N(mu(x), diag exp(logvar(x))) for x [B, x_dim], y [B, y_dim]."""

    def __init__(
        self, x_dim: int, y_dim: int, hidden: int = 256, logvar_min: float = -6.0, logvar_max: float = 4.0
    ) -> None:
        super().__init__()
        if not logvar_min < logvar_max:
            raise ValueError(f"logvar_min {logvar_min} must be < logvar_max {logvar_max}")
        self.mu = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, y_dim))
        self.logvar = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, y_dim))
        self.logvar_min, self.logvar_max = float(logvar_min), float(logvar_max)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, x_dim] → (mean [B, y_dim], log-variance [B, y_dim] in [logvar_min, logvar_max])."""
        span = self.logvar_max - self.logvar_min
        return self.mu(x), self.logvar_min + span * torch.sigmoid(self.logvar(x))

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of log q(y_i | x_i) in nats (scalar); the fitting objective of q."""
        mu, logvar = self(x)
        per_dim = -0.5 * ((y - mu) ** 2 * torch.exp(-logvar) + logvar + _LOG_2PI)
        return per_dim.sum(dim=-1).mean()

    def mi_upper_bound(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """vCLUB estimate of I(x; y) in nats (scalar): mean_i log q(y_i|x_i) - mean_ij log q(y_j|x_i).

        The log-variance and constant terms are equal in both means and cancel.
        """
        if x.shape[0] != y.shape[0] or x.shape[0] < 2:
            raise ValueError(f"need >= 2 paired rows, got x {tuple(x.shape)} and y {tuple(y.shape)}")
        mu, logvar = self(x)
        inv_var = torch.exp(-logvar)
        positive = -0.5 * ((y - mu) ** 2 * inv_var).sum(dim=-1)  # [B]
        # mean_j (y_j - mu_i)^2 = mean_j y_j^2 - 2 mu_i mean_j y_j + mu_i^2, per dimension
        y_mean, y_sq_mean = y.mean(dim=0), (y * y).mean(dim=0)
        spread = y_sq_mean - 2.0 * mu * y_mean + mu * mu
        negative = -0.5 * (spread * inv_var).sum(dim=-1)  # [B]
        return (positive - negative).mean()


def estimate_mi(
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int = 500,
    hidden: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    holdout: float = 0.5,
    max_x_dim: int = 16,
) -> float:
    """Held-out vCLUB estimate of I(x; y) in nats for paired samples x [N, dx], y [N, dy].

    For a measurement (not training) on a few hundred samples, where a q fitted freely would overfit
    and turn the bound into noise: the rows are split at random (``seed``) into a fitting and a held-out
    part; x is reduced to its top ``max_x_dim`` principal components and both x and y are standardised,
    all with the fitting part's statistics; a fresh q is fitted full-batch (Adam, up to ``steps``
    steps) on 80 % of the fitting part, keeping the weights with the best likelihood on the other 20 %
    (early stopping); the bound is evaluated on the held-out rows. Deterministic in inputs and seed.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"need paired x [N, dx] and y [N, dy], got {tuple(x.shape)} and {tuple(y.shape)}")
    n = x.shape[0]
    n_fit = round(n * (1.0 - holdout))
    n_train = round(n_fit * 0.8)
    if n_train < 2 or n_fit - n_train < 2 or n - n_fit < 2:
        raise ValueError(f"{n} samples are too few to fit, validate and hold out (need >= 2 in each part)")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("x or y holds NaN or Inf values")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    x, y = x.detach().double().cpu()[order], y.detach().double().cpu()[order]
    x = x - x[:n_fit].mean(dim=0)
    _, _, vt = torch.linalg.svd(x[:n_fit], full_matrices=False)
    x = x @ vt[:max_x_dim].T
    x = (x / x[:n_fit].std(dim=0).clamp(min=1e-9)).float()
    y = ((y - y[:n_fit].mean(dim=0)) / y[:n_fit].std(dim=0).clamp(min=1e-9)).float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        q = VariationalGaussian(x.shape[1], y.shape[1], hidden)
    optimizer = torch.optim.Adam(q.parameters(), lr=lr)
    best, best_state = -math.inf, {k: v.clone() for k, v in q.state_dict().items()}
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        (-q.log_likelihood(x[:n_train], y[:n_train])).backward()
        optimizer.step()
        with torch.no_grad():
            validation = float(q.log_likelihood(x[n_train:n_fit], y[n_train:n_fit]))
        if validation > best:
            best, best_state = validation, {k: v.clone() for k, v in q.state_dict().items()}
    q.load_state_dict(best_state)
    with torch.no_grad():
        return float(q.mi_upper_bound(x[n_fit:], y[n_fit:]))
