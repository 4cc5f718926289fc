"""GADM's gradient and mask against float64 references, and the alternating schedule of the recipe:
each phase moves its own parameters and nothing else."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from csi_training.config import ConfigError, DiscoverConfig, _default_frontend
from csi_training.discover.gadm import random_keep_mask, top_ratio_keep_mask, transition_gradient
from csi_training.discover.recipe import DiscoverRecipe, ramp


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def reference_gradient(h: np.ndarray, labels: np.ndarray, cost: str) -> np.ndarray:
    """Analytic gradient of sum over same-work pairs i < j of the cost, in float64."""
    g = np.zeros_like(h)
    for i in range(len(h)):
        for j in range(len(h)):
            if i == j or labels[i] != labels[j]:
                continue
            if cost == "sqeuclidean":
                g[i] += 2.0 * (h[i] - h[j])
            else:  # d(1 - u_i.u_j)/dh_i = -(I - u_i u_i^T) u_j / |h_i|
                ui, uj = h[i] / np.linalg.norm(h[i]), h[j] / np.linalg.norm(h[j])
                g[i] += -(uj - ui * (ui @ uj)) / np.linalg.norm(h[i])
    return g


@pytest.mark.parametrize("cost", ["sqeuclidean", "cosine"])
@pytest.mark.parametrize(("batch", "dim"), [(2, 3), (12, 16), (30, 64)])
def test_transition_gradient_matches_the_analytic_one(
    rng: np.random.Generator, cost: str, batch: int, dim: int
) -> None:
    h = rng.standard_normal((batch, dim))
    labels = rng.integers(0, max(1, batch // 3), batch)
    labels[0] = labels.max() + 1  # a clip with no other version in the batch: zero gradient
    got = transition_gradient(torch.from_numpy(h).float(), torch.from_numpy(labels), cost).double().numpy()
    np.testing.assert_allclose(got, reference_gradient(h, labels, cost), rtol=1e-4, atol=1e-4)
    assert not got[0].any()


@pytest.mark.parametrize(("dim", "ratio"), [(2, 0.3), (10, 0.3), (256, 0.1), (64, 0.9)])
def test_mask_zeroes_the_top_ratio_gradient_magnitudes(
    rng: np.random.Generator, dim: int, ratio: float
) -> None:
    scores = rng.standard_normal((7, dim))
    keep = top_ratio_keep_mask(torch.from_numpy(scores), ratio).numpy()
    n_mask = min(dim - 1, max(1, math.ceil(ratio * dim - 1e-9)))
    for row, k in zip(np.abs(scores), keep, strict=True):
        expected = np.ones(dim)
        expected[np.argsort(-row)[:n_mask]] = 0.0
        np.testing.assert_array_equal(k, expected)
    generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
    random_keep = random_keep_mask((5, dim), ratio, generator).numpy()
    assert ((random_keep == 0).sum(axis=1) == n_mask).all()
    with pytest.raises(ValueError, match="ratio"):
        top_ratio_keep_mask(torch.from_numpy(scores), 1.0)


def test_ramp() -> None:
    assert [ramp(s, 4) for s in range(10)] == [0, 0, 0, 0, 0.25, 0.5, 0.75, 1, 1, 1]
    assert ramp(0, 0) == 1.0


class TinyBackbone(nn.Module):
    """CQT crop [B, 84, T] → unit embedding [B, D]: time-averaged spectrum through a linear layer."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(84, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.linear(x.mean(dim=-1)), dim=-1)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}


def _changed(before: dict[str, torch.Tensor], module: nn.Module) -> set[str]:
    after = module.state_dict()
    return {k for k, v in before.items() if not torch.equal(v, after[k])}


@pytest.mark.parametrize("mask", ["gradient", "random"])
def test_each_phase_updates_only_its_own_parameters(rng: np.random.Generator, seed: int, mask: str) -> None:
    torch.manual_seed(seed)
    dim = 32
    config = DiscoverConfig(mi_warmup_steps=0, adv_warmup_steps=0, mask=mask, club_hidden=16, disc_hidden=16)
    recipe = DiscoverRecipe(config, _default_frontend(), dim, seed=seed % 1000)
    backbone = TinyBackbone(dim)
    optimizer = torch.optim.SGD(backbone.parameters(), lr=0.1)
    x = torch.from_numpy(rng.gamma(0.5, 1.0, (8, 84, 20)).astype(np.float32))
    labels = torch.arange(4).repeat_interleave(2)

    backbone_before, aux_before = _snapshot(backbone), _snapshot(recipe)
    emb = backbone(x)
    extra, stats = recipe.step(emb, x, labels, step=3)
    # variational and discriminator phases: every auxiliary weight moved, the backbone did not
    assert not _changed(backbone_before, backbone)
    trainable = {k for k, _ in recipe.named_parameters()}
    assert trainable and trainable <= _changed(aux_before, recipe)
    assert {"q_nll", "disc_loss", "disc_accuracy", "mi_f0", "mi_timbre", "adv_loss"} <= set(stats)
    assert all(p.requires_grad for p in recipe.parameters())  # unfrozen again after the encoder phase

    # encoder phase: gradients reach the backbone only, and its step moves the backbone only
    aux_mid = _snapshot(recipe)
    optimizer.zero_grad()
    extra.backward()
    assert all(p.grad is None for p in recipe.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.parameters())
    optimizer.step()
    assert not _changed(aux_mid, recipe)
    assert _changed(backbone_before, backbone) == set(backbone_before)


def test_warmup_leaves_the_encoder_untouched(rng: np.random.Generator) -> None:
    recipe = DiscoverRecipe(DiscoverConfig(mi_warmup_steps=5, adv_warmup_steps=5), _default_frontend(), 16)
    backbone = TinyBackbone(16)
    x = torch.from_numpy(rng.gamma(0.5, 1.0, (6, 84, 10)).astype(np.float32))
    extra, _ = recipe.step(backbone(x), x, torch.tensor([0, 0, 1, 1, 2, 2]), step=4)
    extra.backward()
    assert all(float(p.grad.abs().sum()) == 0.0 for p in backbone.parameters())


def test_kdm_needs_a_cqt_frontend() -> None:
    with pytest.raises(ConfigError, match="CQT"):
        DiscoverRecipe(DiscoverConfig(), {"kind": "logmel"}, 16)
    DiscoverRecipe(DiscoverConfig(kdm=False), {"kind": "logmel"}, 16)  # GADM alone works on any features
