"""The beta-TCVAE decomposition against a naive float64 reference on small Gaussian mixtures."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from csi_training.losses.tcvae import log_aggregate_posterior, tc_decomposition


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # small tensors: threads only contend on a loaded machine


def _log_normal(z: np.ndarray, mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    return -0.5 * (np.log(2 * np.pi) + logvar + (z - mu) ** 2 / np.exp(logvar))


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    m = a.max(axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.exp(a - m).sum(axis=axis))


def _mixture_log_density(
    z: np.ndarray, mu: np.ndarray, logvar: np.ndarray, log_pi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact log q(z) [S] and log q(z_d) [S, D] of the mixture sum_n pi_n N(mu_n, exp(logvar_n)),
    one component at a time (float64)."""
    per_component = np.stack([_log_normal(z, mu[n], logvar[n]) for n in range(len(mu))], axis=1)
    joint = _logsumexp(per_component.sum(axis=2) + log_pi[None, :], axis=1)
    marginals = _logsumexp(per_component + log_pi[None, :, None], axis=1)
    return joint, marginals


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64)


def _random_posteriors(rng: np.random.Generator, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.normal(0.0, 1.5, size=(n, d)), rng.uniform(-2.5, 0.5, size=(n, d))


@pytest.mark.parametrize(("n", "d"), [(2, 1), (3, 4), (17, 3), (40, 8)])
def test_whole_dataset_batch_is_exact(rng: np.random.Generator, n: int, d: int) -> None:
    """With the whole data set of N items as the batch, the weighted estimate is q(z) itself."""
    mu, logvar = _random_posteriors(rng, n, d)
    z = mu + np.exp(0.5 * logvar) * rng.normal(size=(n, d))
    log_qz, log_marg = log_aggregate_posterior(_t(z), _t(mu), _t(logvar), dataset_size=n)
    ref_qz, ref_marg = _mixture_log_density(z, mu, logvar, np.full(n, -np.log(n)))
    np.testing.assert_allclose(log_qz.numpy(), ref_qz, rtol=0, atol=1e-10)
    np.testing.assert_allclose(log_marg.numpy(), ref_marg, rtol=0, atol=1e-10)


@pytest.mark.parametrize(("n", "m"), [(5, 2), (8, 4), (9, 8)])
def test_unbiased_over_all_batches_without_replacement(rng: np.random.Generator, n: int, m: int) -> None:
    """Averaged over every batch holding item 0 (the others drawn without replacement), the estimate
    of q(z_0) equals the exact mixture density: the weights make it unbiased."""
    d = 3
    mu, logvar = _random_posteriors(rng, n, d)
    z0 = mu[0] + np.exp(0.5 * logvar[0]) * rng.normal(size=d)
    estimates, marginal_estimates = [], []
    for others in itertools.combinations(range(1, n), m - 1):
        idx = [0, *others]
        z = np.repeat(z0[None], m, axis=0)  # only row 0's estimate is used
        log_qz, log_marg = log_aggregate_posterior(_t(z), _t(mu[idx]), _t(logvar[idx]), dataset_size=n)
        estimates.append(np.exp(log_qz[0].item()))
        marginal_estimates.append(np.exp(log_marg[0].numpy()))
    ref_qz, ref_marg = _mixture_log_density(z0[None], mu, logvar, np.full(n, -np.log(n)))
    np.testing.assert_allclose(np.mean(estimates), np.exp(ref_qz[0]), rtol=1e-10)
    np.testing.assert_allclose(np.mean(marginal_estimates, axis=0), np.exp(ref_marg[0]), rtol=1e-10)


def _sample_mixture(
    rng: np.random.Generator, mu: np.ndarray, logvar: np.ndarray, pi: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    comp = rng.choice(len(pi), size=size, p=pi)
    z = mu[comp] + np.exp(0.5 * logvar[comp]) * rng.normal(size=(size, mu.shape[1]))
    return z, mu[comp], logvar[comp]


@pytest.mark.parametrize(("k", "d"), [(2, 2), (3, 3)])
def test_iid_minibatch_terms_match_monte_carlo_reference(rng: np.random.Generator, k: int, d: int) -> None:
    """Data drawn i.i.d. from a K-component distribution (dataset_size=None): the three terms of a
    large minibatch match a float64 Monte-Carlo reference with the exact aggregate posterior."""
    mu, logvar = _random_posteriors(rng, k, d)
    mu *= 1.5  # components overlap partly: no term is trivially 0 or log K
    pi = rng.dirichlet(np.full(k, 4.0))
    log_pi = np.log(pi)
    # naive reference: 50k samples, exact log q(z) and log q(z_d) of the mixture
    z, m, lv = _sample_mixture(rng, mu, logvar, pi, 50_000)
    log_qz, log_marg = _mixture_log_density(z, mu, logvar, log_pi)
    log_q_given_x = _log_normal(z, m, lv).sum(axis=1)
    log_p = _log_normal(z, np.zeros_like(z), np.zeros_like(z)).sum(axis=1)
    ref = {
        "mi": log_q_given_x - log_qz,
        "tc": log_qz - log_marg.sum(axis=1),
        "dwkl": log_marg.sum(axis=1) - log_p,
    }
    z, m, lv = _sample_mixture(rng, mu, logvar, pi, 2000)
    est = tc_decomposition(_t(z), _t(m), _t(lv), dataset_size=None)
    got = {"mi": est.mutual_information, "tc": est.total_correlation, "dwkl": est.dimension_kl}
    for name, samples in ref.items():
        # the minibatch mean has sampling error ~ std / sqrt(2000) and a log-of-mean bias O(1 / M)
        tolerance = 5.0 * samples.std() / np.sqrt(2000) + 0.02
        assert abs(got[name].item() - samples.mean()) < tolerance, (name, got[name].item(), samples.mean())


@pytest.mark.parametrize("dataset_size", [None, 7, 100_000])
def test_terms_add_up_to_the_kl(rng: np.random.Generator, dataset_size: int | None) -> None:
    """alpha = beta = gamma = 1: the terms add up to the batch mean of log q(z|x) - log p(z) exactly
    and, for a large batch, to the analytic mean KL within Monte-Carlo error."""
    n, d = 1500, 5
    mu, logvar = _random_posteriors(rng, n, d)
    z = mu + np.exp(0.5 * logvar) * rng.normal(size=(n, d))
    est = tc_decomposition(_t(z), _t(mu), _t(logvar), dataset_size=dataset_size)
    log_ratio = _log_normal(z, mu, logvar).sum(1) - _log_normal(z, np.zeros_like(z), np.zeros_like(z)).sum(1)
    total = est.weighted(1.0, 1.0, 1.0).item()
    assert total == pytest.approx(log_ratio.mean(), abs=1e-9)
    analytic = 0.5 * (mu**2 + np.exp(logvar) - 1.0 - logvar).sum(1)
    assert est.kl.item() == pytest.approx(analytic.mean(), rel=1e-12)
    assert abs(total - analytic.mean()) < 5.0 * log_ratio.std() / np.sqrt(n)


@pytest.mark.parametrize(("m", "n"), [(2, 3), (64, 10_000)])
def test_chen_estimator_matches_its_formula(rng: np.random.Generator, m: int, n: int) -> None:
    """estimator="chen": log q(z_i) = logsumexp_j log q(z_i|x_j) - log(N M), own sample included;
    its terms still add up to the Monte-Carlo KL."""
    d = 4
    mu, logvar = _random_posteriors(rng, m, d)
    z = mu + np.exp(0.5 * logvar) * rng.normal(size=(m, d))
    pairwise = _log_normal(z[:, None, :], mu[None], logvar[None])
    log_qz, log_marg = log_aggregate_posterior(_t(z), _t(mu), _t(logvar), n, estimator="chen")
    np.testing.assert_allclose(log_qz.numpy(), _logsumexp(pairwise.sum(2), 1) - np.log(n * m), atol=1e-10)
    np.testing.assert_allclose(log_marg.numpy(), _logsumexp(pairwise, 1) - np.log(n * m), atol=1e-10)
    chen = tc_decomposition(_t(z), _t(mu), _t(logvar), n, estimator="chen")
    ours = tc_decomposition(_t(z), _t(mu), _t(logvar), n)
    assert chen.weighted(1, 1, 1).item() == pytest.approx(ours.weighted(1, 1, 1).item(), abs=1e-9)
    with pytest.raises(ValueError, match="needs a dataset_size"):
        tc_decomposition(_t(z), _t(mu), _t(logvar), None, estimator="chen")
    with pytest.raises(ValueError, match="estimator"):
        tc_decomposition(_t(z), _t(mu), _t(logvar), n, estimator="mss")  # type: ignore[arg-type]


def test_one_dimension_has_no_total_correlation(rng: np.random.Generator) -> None:
    mu, logvar = _random_posteriors(rng, 50, 1)
    z = mu + np.exp(0.5 * logvar) * rng.normal(size=mu.shape)
    est = tc_decomposition(_t(z), _t(mu), _t(logvar), dataset_size=500)
    assert est.total_correlation.item() == pytest.approx(0.0, abs=1e-12)


def test_single_item_dataset_has_no_mutual_information(rng: np.random.Generator) -> None:
    """N = 1: q(z) = q(z|x), so the index-code MI is exactly 0."""
    mu, logvar = _random_posteriors(rng, 1, 3)
    mu, logvar = np.repeat(mu, 6, axis=0), np.repeat(logvar, 6, axis=0)
    z = mu + np.exp(0.5 * logvar) * rng.normal(size=mu.shape)
    est = tc_decomposition(_t(z), _t(mu), _t(logvar), dataset_size=1)
    assert est.mutual_information.item() == pytest.approx(0.0, abs=1e-12)


def test_float32_gradients_finite_at_extreme_variances(rng: np.random.Generator) -> None:
    mu = torch.tensor(rng.normal(0, 3, size=(128, 8)), dtype=torch.float32, requires_grad=True)
    logvar = torch.full((128, 8), -12.0, requires_grad=True)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(128, 8)
    est = tc_decomposition(z, mu, logvar, dataset_size=None)
    est.weighted(0.5, 2.0, 1.0).backward()
    assert mu.grad is not None and logvar.grad is not None
    assert torch.isfinite(mu.grad).all() and torch.isfinite(logvar.grad).all()


def test_bad_inputs_are_refused() -> None:
    z = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=">= 2 samples"):
        tc_decomposition(z[:1], z[:1], z[:1])
    with pytest.raises(ValueError, match=r"\[batch, dims\]"):
        tc_decomposition(z, z[:, :2], z)
    with pytest.raises(ValueError, match="dataset_size"):
        tc_decomposition(z, z, z, dataset_size=0)
