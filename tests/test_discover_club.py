"""vCLUB: its formulas against a naive float64 reference, and its estimates on Gaussians of known MI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from csi_training.discover.club import VariationalGaussian, estimate_mi


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_likelihood_and_bound_match_a_naive_reference(rng: np.random.Generator, seed: int) -> None:
    torch.manual_seed(seed)
    batch, dx, dy = int(rng.integers(2, 20)), int(rng.integers(1, 9)), int(rng.integers(1, 6))
    q = VariationalGaussian(dx, dy, hidden=16, logvar_min=-3.0, logvar_max=2.0)
    x = torch.from_numpy(rng.standard_normal((batch, dx)).astype(np.float32))
    y = torch.from_numpy(rng.standard_normal((batch, dy)).astype(np.float32))
    with torch.no_grad():
        mu, logvar = (t.double().numpy() for t in q(x))
        ll, bound = float(q.log_likelihood(x, y)), float(q.mi_upper_bound(x, y))
    assert (logvar >= -3.0).all() and (logvar <= 2.0).all()
    yd = y.double().numpy()
    sd = np.exp(0.5 * logvar)
    log_q = np.array(
        [[scipy.stats.norm.logpdf(yd[j], mu[i], sd[i]).sum() for j in range(batch)] for i in range(batch)]
    )  # log q(y_j | x_i)
    assert ll == pytest.approx(np.mean(np.diag(log_q)), rel=1e-5, abs=1e-5)
    assert bound == pytest.approx(np.mean(np.diag(log_q)) - log_q.mean(), rel=1e-4, abs=1e-4)


@pytest.mark.parametrize(("dim", "rho"), [(1, 0.8), (3, 0.5)])
def test_bound_on_correlated_gaussians(rng: np.random.Generator, seed: int, dim: int, rho: float) -> None:
    """y = rho x + sqrt(1 - rho^2) e: I(x; y) = -dim/2 log(1 - rho^2). With the exact conditional, CLUB
    equals dim * rho^2 / (1 - rho^2) >= I; the fitted estimate must be an upper bound close to it."""
    n = 4000
    x = rng.standard_normal((n, dim))
    y = rho * x + math.sqrt(1 - rho**2) * rng.standard_normal((n, dim))
    estimate = estimate_mi(
        torch.from_numpy(x), torch.from_numpy(y), steps=300, hidden=32, lr=1e-2, seed=seed % 2**31
    )
    true_mi = -0.5 * dim * math.log(1 - rho**2)
    club_exact = dim * rho**2 / (1 - rho**2)
    assert estimate >= true_mi * 0.95
    assert estimate == pytest.approx(club_exact, rel=0.2)


def test_bound_is_near_zero_for_independent_variables(rng: np.random.Generator, seed: int) -> None:
    n, dx, dy = 3000, 40, 4  # more dimensions than the estimator keeps: its projection runs too
    x = torch.from_numpy(rng.standard_normal((n, dx)))
    y = torch.from_numpy(rng.gamma(2.0, 1.0, (n, dy)))  # independent, and not even Gaussian
    assert abs(estimate_mi(x, y, steps=200, hidden=32, lr=1e-2, seed=seed % 2**31)) < 0.05


def test_estimate_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="paired"):
        estimate_mi(torch.zeros(10, 2), torch.zeros(9, 2))
    with pytest.raises(ValueError, match="too few"):
        estimate_mi(torch.zeros(3, 2), torch.zeros(3, 2))
    y = torch.zeros(20, 2)
    y[4, 1] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        estimate_mi(torch.zeros(20, 2), y)
    with pytest.raises(ValueError, match="logvar_min"):
        VariationalGaussian(2, 2, logvar_min=1.0, logvar_max=0.0)
    with pytest.raises(ValueError, match=">= 2 paired rows"):
        VariationalGaussian(2, 2).mi_upper_bound(torch.zeros(1, 2), torch.zeros(1, 2))
