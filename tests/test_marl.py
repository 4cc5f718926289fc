"""MARL multi-view VAE: expert combination, shapes, objective; the disentanglement measures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from csi_training.disentanglement import (
    entropy,
    kmeans_codes,
    mutual_information,
    probe_accuracy,
    quantile_bins,
)
from csi_training.models.marl import MARLWeights, MultiViewVAE, combine_experts, marl_loss


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_product_of_experts_matches_the_gaussian_product(rng: np.random.Generator) -> None:
    """PoE of V Gaussians: the normalised product density, checked on a grid (float64)."""
    v, d = int(rng.integers(2, 4)), 3
    mu = rng.normal(size=(1, v, d))
    logvar = rng.uniform(-1.5, 1.0, size=(1, v, d))
    got_mu, got_logvar = combine_experts(torch.tensor(mu), torch.tensor(logvar), "poe")
    grid = np.linspace(-20, 20, 80001)  # wide: no truncated tail
    for j in range(d):
        log_prod = sum(-0.5 * (grid - mu[0, i, j]) ** 2 / np.exp(logvar[0, i, j]) for i in range(v))
        density = np.exp(log_prod - log_prod.max())
        density /= np.trapezoid(density, grid)
        mean = np.trapezoid(grid * density, grid)
        var = np.trapezoid((grid - mean) ** 2 * density, grid)
        assert got_mu[0, j].item() == pytest.approx(mean, abs=1e-6)
        assert math.exp(got_logvar[0, j].item()) == pytest.approx(var, rel=1e-5)


def test_mean_of_experts(rng: np.random.Generator) -> None:
    mu, logvar = rng.normal(size=(4, 2, 5)), rng.normal(size=(4, 2, 5))
    got_mu, got_logvar = combine_experts(torch.tensor(mu), torch.tensor(logvar), "mean")
    np.testing.assert_allclose(got_mu.numpy(), mu.mean(axis=1))
    np.testing.assert_allclose(np.exp(got_logvar.numpy()), np.exp(logvar).mean(axis=1))
    with pytest.raises(ValueError, match="combine"):
        combine_experts(torch.tensor(mu), torch.tensor(logvar), "sum")  # type: ignore[arg-type]


@pytest.mark.parametrize(("views", "combine"), [(2, "poe"), (3, "mean")])
def test_forward_shapes_and_view_symmetry(rng: np.random.Generator, views: int, combine: str) -> None:
    model = MultiViewVAE(16, 5, n_views=views, shared_dim=4, private_dim=3, hidden=(32,), combine=combine)  # type: ignore[arg-type]
    x = torch.tensor(rng.uniform(size=(6, views, 16, 5)), dtype=torch.float32)
    out = model(x, sample=False)
    assert out.shared_mu.shape == (6, 4) and out.z_private.shape == (6, views, 3)
    assert out.logits.shape == (6, views, 16, 5)
    # the shared posterior does not depend on the order of the views; private latents follow their view
    perm = torch.tensor(rng.permutation(views))
    swapped = model(x[:, perm], sample=False)
    torch.testing.assert_close(swapped.shared_mu, out.shared_mu, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(swapped.private_mu, out.private_mu[:, perm])
    shared, private = model.embed(x)
    torch.testing.assert_close(shared, out.shared_mu)
    torch.testing.assert_close(private, out.private_mu)
    with pytest.raises(ValueError, match="expected views"):
        model(x[:, :, :15])


def test_loss_terms_and_gradients(rng: np.random.Generator) -> None:
    torch.manual_seed(int(rng.integers(2**31)))
    model = MultiViewVAE(8, 3, shared_dim=2, private_dim=2, hidden=(16,))
    x = torch.tensor(rng.uniform(size=(32, 2, 8, 3)), dtype=torch.float32)
    out = model(x)
    recon_only, stats = marl_loss(out, x, MARLWeights(0.0, 0.0, 0.0), 1000, 10_000)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, x, reduction="sum") / 32
    assert recon_only.item() == pytest.approx(expected.item(), rel=1e-5)
    assert stats["recon"] == pytest.approx(expected.item(), rel=1e-5)
    full, stats = marl_loss(out, x, MARLWeights(1.0, 1.0, 1.0), 1000, 10_000)
    # with alpha = beta = gamma = 1 each subspace adds its Monte-Carlo KL: log q(z|x) - log p(z)
    penalty = sum(
        stats[f"{s}_mi"] + stats[f"{s}_tc"] + stats[f"{s}_dwkl"] for s in ("shared", "private1", "private2")
    )
    assert full.item() == pytest.approx(expected.item() + penalty, rel=1e-4)
    full.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    with pytest.raises(ValueError, match=">= 0"):
        MARLWeights(-1.0, 0.0, 0.0)


def test_training_lowers_the_loss_on_tone_pairs(rng: np.random.Generator) -> None:
    """A few dozen steps on real tone pairs: the objective falls (the pipeline is wired end to end)."""
    from csi_training.experiments.marl_case_study import TonePool
    from csi_training.render.tones import ToneConfig

    pool = TonePool.render(rng, 20, ToneConfig())
    assert pool.features.shape[1:] == (64, 9)
    assert pool.features.min() >= 0.0 and pool.features.max() == pytest.approx(1.0)
    pairs = pool.pairs(rng, 200)
    kinds = pool.factors.waveform
    assert np.all(kinds[pairs[:, 0]] == kinds[pairs[:, 1]]) and np.all(pairs[:, 0] != pairs[:, 1])
    assert pool.n_pairs == 4 * 20 * 19
    torch.manual_seed(int(rng.integers(2**31)))
    model = MultiViewVAE(64, 9, hidden=(64,))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    features = torch.from_numpy(pool.features)
    losses = []
    for _ in range(60):
        views = features[torch.from_numpy(pool.pairs(rng, 32))]
        loss, _ = marl_loss(model(views), views, MARLWeights(0.0, 0.0, 1.0), pool.n_views, pool.n_pairs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:5])


# -- disentanglement measures ----------------------------------------------------------------


def test_mutual_information_matches_the_exact_value(rng: np.random.Generator) -> None:
    """Codes drawn from a known joint distribution: the estimate converges to the exact MI."""
    joint = rng.dirichlet(np.ones(12)).reshape(3, 4) + 0.02
    joint /= joint.sum()
    pa, pb = joint.sum(1), joint.sum(0)
    exact = float((joint * np.log(joint / np.outer(pa, pb))).sum())
    cells = rng.choice(12, size=200_000, p=joint.ravel())
    a, b = cells // 4, cells % 4
    assert mutual_information(a, b) == pytest.approx(exact, abs=5e-3)
    assert mutual_information(a, a) == pytest.approx(entropy(a), abs=1e-9)
    exact_h = float(-(pa * np.log(pa)).sum())
    assert entropy(a) == pytest.approx(exact_h, abs=5e-3)


def test_independent_codes_score_near_zero(rng: np.random.Generator) -> None:
    """Miller-Madow removes most of the plug-in bias ((Ka - 1)(Kb - 1) / 2N = 0.074 nats here, with
    a sampling spread of about 0.009 nats)."""
    a, b = rng.integers(0, 4, size=1000), rng.integers(0, 50, size=1000)
    corrected = mutual_information(a, b)
    plugin = mutual_information(a, b, miller_madow=False)
    assert abs(corrected) < 0.045 < plugin


def test_quantile_bins_are_equal_frequency(rng: np.random.Generator) -> None:
    x = rng.standard_cauchy(size=4000)
    codes = quantile_bins(x, 20)
    assert np.bincount(codes).tolist() == [200] * 20
    assert np.all(np.diff(codes[np.argsort(x)]) >= 0)  # monotone in the value
    np.testing.assert_array_equal(quantile_bins(np.cbrt(x) - 7.0, 20), codes)  # invariant to monotone maps
    with pytest.raises(ValueError, match="NaN"):
        quantile_bins(np.array([1.0, np.nan]))


def test_kmeans_recovers_separated_clusters(rng: np.random.Generator) -> None:
    centres = rng.normal(0, 10, size=(5, 3))
    truth = rng.integers(0, 5, size=600)
    points = centres[truth] + rng.normal(0, 0.1, size=(600, 3))
    codes = kmeans_codes(points, 5, seed=int(rng.integers(1000)))
    # a perfect clustering up to relabelling: normalised MI 1
    assert mutual_information(truth, codes, miller_madow=False) == pytest.approx(
        entropy(truth, miller_madow=False), abs=1e-9
    )
    assert len(np.unique(kmeans_codes(np.ones((10, 2)), 4))) == 1  # fewer distinct rows than clusters


def test_probe_reads_a_class_from_informative_features_only(rng: np.random.Generator) -> None:
    labels = rng.integers(0, 4, size=800)
    informative = np.stack([np.cos(labels * np.pi / 2), np.sin(labels * np.pi / 2)], 1)
    informative = informative + rng.normal(0, 0.1, size=(800, 2))
    noise = rng.normal(size=(800, 2))
    assert probe_accuracy(informative, labels, seed=1, steps=200) > 0.95
    assert probe_accuracy(noise, labels, seed=1, steps=200) < 0.4
    with pytest.raises(ValueError, match="paired"):
        probe_accuracy(noise[:10], labels)
