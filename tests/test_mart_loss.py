"""MART's hierarchical contrastive loss (csi_training.losses.hierarchical) against a naive float64
loop that follows eqs. 3-6 of the paper term by term, on fresh random embeddings of several sizes,
temperatures and hierarchies; plus its gradients, extreme temperatures and refusals.
Tolerance: 1e-5 relative (the loss runs in float32; measured <= 1.1e-6 over 40 draws).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from csi_training.frontends.hierarchical import Hierarchy
from csi_training.losses.hierarchical import hierarchical_contrastive_loss, pair_weights


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _naive_loss(z_hat: np.ndarray, z_tilde: np.ndarray, h: Hierarchy, tau: float, part_whole: bool) -> float:
    batch = z_hat.shape[0]
    whole_len = h.splits ** (h.levels - 1)
    total = 0.0
    for b in range(batch):
        l_pw = 0.0
        if part_whole:
            for i in range(h.levels - 1):  # the pair (S^i, S^{i+1})
                for w in range(h.offset(i), h.offset(i) + h.level_size(i)):  # wholes of level i
                    w_start, w_stop = h.span(w, whole_len)
                    for p in range(h.offset(i + 1), h.offset(i + 1) + h.level_size(i + 1)):
                        p_start, p_stop = h.span(p, whole_len)
                        if not (w_start <= p_start and p_stop <= w_stop):
                            continue  # U_i: the sub-clips cropped from this whole only
                        lam = (p_stop - p_start) / (w_stop - w_start)  # eq. 4
                        l_pw += lam * math.exp(_cos(z_hat[b, w], z_hat[b, p]) / tau)  # eq. 3
        l_neg = sum(math.exp(_cos(z_hat[b, 0], z_tilde[u]) / tau) for u in range(batch))  # eq. 6
        l_neg += sum(math.exp(_cos(z_hat[b, 0], z_hat[u, 0]) / tau) for u in range(batch) if u != b)
        positive = math.exp(_cos(z_hat[b, 0], z_tilde[b]) / tau)
        total += -math.log((l_pw + positive) / (l_pw + l_neg))  # eq. 5
    return total / batch


@pytest.mark.parametrize("trial", range(4))
def test_matches_naive_equations(rng: np.random.Generator, trial: int) -> None:
    h = Hierarchy(levels=int(rng.integers(1, 5)), splits=int(rng.integers(2, 4)))
    batch, dim = int(rng.integers(2, 9)), int(rng.integers(2, 40))
    tau = float(rng.uniform(0.1, 1.0))
    z_hat = rng.standard_normal((batch, h.n_parts, dim)) * rng.uniform(0.1, 10)
    z_tilde = rng.standard_normal((batch, dim))
    for part_whole in (True, False):
        loss, stats = hierarchical_contrastive_loss(
            torch.from_numpy(z_hat).float(), torch.from_numpy(z_tilde).float(), h, tau, part_whole=part_whole
        )
        expected = _naive_loss(z_hat, z_tilde, h, tau, part_whole)
        assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6), (part_whole, h)
        assert 0.0 <= stats["accuracy"] <= 1.0
    # only the whole clip (the "w/o PWT & HCL" model computes nothing else)
    whole_only, _ = hierarchical_contrastive_loss(
        torch.from_numpy(z_hat[:, :1]).float(), torch.from_numpy(z_tilde).float(), h, tau, part_whole=False
    )
    assert whole_only.item() == pytest.approx(_naive_loss(z_hat, z_tilde, h, tau, False), rel=1e-5)


def test_pair_weights_are_length_ratios() -> None:
    h = Hierarchy(levels=4, splits=2)
    w = pair_weights(h)
    assert w[0] == 0.0 and np.allclose(w[1:], 0.5)
    assert np.allclose(pair_weights(Hierarchy(levels=3, splits=3))[1:], 1 / 3)


def test_gradients_and_small_temperature(rng: np.random.Generator) -> None:
    h = Hierarchy(levels=3, splits=2)
    z_hat = torch.from_numpy(rng.standard_normal((4, h.n_parts, 16))).float().requires_grad_()
    z_tilde = torch.from_numpy(rng.standard_normal((4, 16))).float().requires_grad_()
    loss, _ = hierarchical_contrastive_loss(
        z_hat, z_tilde, h, temperature=0.005
    )  # exp(200): overflows naively
    loss.backward()
    assert torch.isfinite(loss)
    assert z_hat.grad is not None and torch.isfinite(z_hat.grad).all() and z_hat.grad.abs().sum() > 0
    assert z_tilde.grad is not None and torch.isfinite(z_tilde.grad).all()


def test_aligned_views_score_lower(rng: np.random.Generator) -> None:
    h = Hierarchy(levels=2, splits=2)
    base = torch.from_numpy(rng.standard_normal((6, 32))).float()
    z_hat = base[:, None].repeat(1, h.n_parts, 1) + 0.01 * torch.randn(6, h.n_parts, 32)
    aligned, stats = hierarchical_contrastive_loss(z_hat, base, h, 0.2)
    shuffled, _ = hierarchical_contrastive_loss(z_hat, base[torch.roll(torch.arange(6), 1)], h, 0.2)
    assert aligned.item() < shuffled.item()
    assert stats["accuracy"] == 1.0


def test_refusals() -> None:
    h = Hierarchy(levels=3, splits=2)
    with pytest.raises(ValueError, match="at least 2"):
        hierarchical_contrastive_loss(torch.randn(1, 7, 4), torch.randn(1, 4), h)
    with pytest.raises(ValueError, match="all 7 clips"):
        hierarchical_contrastive_loss(torch.randn(3, 1, 4), torch.randn(3, 4), h)
    with pytest.raises(ValueError, match="temperature"):
        hierarchical_contrastive_loss(torch.randn(3, 7, 4), torch.randn(3, 4), h, temperature=0.0)
    with pytest.raises(ValueError, match="expected"):
        hierarchical_contrastive_loss(torch.randn(3, 7, 4), torch.randn(2, 4), h)
