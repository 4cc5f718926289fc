"""The DisCover recipe: KDM and GADM around any backbone, driven by the shared training loop.

:class:`DiscoverRecipe` owns every training-only part (the vCLUB networks, the discriminator, their
optimisers and the factor standardiser). The trainer calls :meth:`DiscoverRecipe.step` once per
training step with the batch's unit embeddings (still attached to the encoder's graph), features and
labels. One step is one round of the alternating schedule:

1. *KDM, variational phase* (``club_steps`` times): each q(factor | embedding) takes an Adam step on
   its negative log-likelihood with the embeddings detached — only q's weights move.
2. *GADM, discriminator phase* (``disc_steps`` times, the paper's L2): the keep-mask is built from the
   transition-cost gradient, and the discriminator takes an Adam step on binary cross-entropy with
   the masked (disentangled, label 1) and unmasked (entangled, label 0) embeddings, both detached —
   only the discriminator's weights move.
3. *Encoder phase* (the paper's L1): returns the encoder's extra loss
   ``sum_f w_mi(t) * max(vCLUB_f(h, z_f), mi_clamp) + w_adv(t) * BCE(D(h), 1)``, built with the
   auxiliary networks frozen (their weights get no gradient), which the trainer adds to the task loss
   (triplet + classification) and steps with its own optimiser — only the backbone (and head) move.

``w_mi(t)`` and ``w_adv(t)`` are 0 during their warm-up (the auxiliary network trains alone), then
ramp linearly to their configured weights over as many steps again. Under data parallelism every
rank builds identical auxiliary networks (seeded by ``config.seed``) and averages their gradients and
the factors' batch statistics across ranks, so they stay replicas like the backbone.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from csi_training.config import ConfigError, DiscoverConfig
from csi_training.discover.club import VariationalGaussian
from csi_training.discover.factors import cqt_f0_factor, cqt_timbre_factor, factor_dim
from csi_training.discover.gadm import (
    Discriminator,
    disentangle,
    random_keep_mask,
    top_ratio_keep_mask,
    transition_gradient,
)

logger = logging.getLogger(__name__)

__all__ = ["DiscoverRecipe", "FactorStandardiser", "ramp", "version_factors"]

#: momentum of the running factor statistics (per step)
STANDARDISER_MOMENTUM = 0.02


def ramp(step: int, warmup: int) -> float:
    """0 for the first ``warmup`` steps, then linear to 1 over ``warmup`` more steps (1 at once if 0)."""
    if warmup <= 0:
        return 1.0
    if step < warmup:
        return 0.0
    return min(1.0, (step - warmup + 1) / warmup)


def version_factors(
    features: torch.Tensor, names: tuple[str, ...], frontend_config: dict[str, Any], n_timbre_coeffs: int
) -> dict[str, torch.Tensor]:
    """The prior version-variant factors of CQT crops [B, F, T]: name → float32 [B, factor_dim]."""
    out = {}
    for name in names:
        if name == "f0":
            out[name] = cqt_f0_factor(
                features, int(frontend_config["bins_per_octave"]), float(frontend_config["fmin"])
            )
        elif name == "timbre":
            out[name] = cqt_timbre_factor(features, n_timbre_coeffs)
        else:
            raise ValueError(f"unknown factor {name!r}")
    return out


class FactorStandardiser(nn.Module):
    """Running per-dimension mean/variance of a factor (initialised from the first batch), applied as
    (z - mean) / std so that q sees unit-scale targets whatever the factor's units. Under data
    parallelism (``world_size`` > 1) each batch's statistics are averaged over the ranks first, so
    every rank keeps the same running statistics."""

    mean: torch.Tensor
    var: torch.Tensor
    count: torch.Tensor

    def __init__(self, dim: int, world_size: int = 1) -> None:
        super().__init__()
        self.world_size = world_size
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def forward(self, z: torch.Tensor, update: bool = True) -> torch.Tensor:
        if update:
            mean, var = z.mean(dim=0), z.var(dim=0, unbiased=False)
            if self.world_size > 1:
                moments = torch.stack([mean, var])
                dist.all_reduce(moments)
                mean, var = moments / self.world_size
            if int(self.count) == 0:
                self.mean.copy_(mean)
                self.var.copy_(var)
            else:
                self.mean.lerp_(mean, STANDARDISER_MOMENTUM)
                self.var.lerp_(var, STANDARDISER_MOMENTUM)
            self.count += 1
        return (z - self.mean) / self.var.clamp(min=1e-8).sqrt()


class DiscoverRecipe(nn.Module):
    """Training-only DisCover modules for embeddings of ``embedding_dim`` (see the module docstring)."""

    def __init__(
        self,
        config: DiscoverConfig,
        frontend_config: dict[str, Any],
        embedding_dim: int,
        seed: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        if config.kdm and frontend_config.get("kind") != "cqt":
            raise ConfigError(
                "discover.kdm computes its F0 and timbre factors from CQT features; the frontend is "
                f"{frontend_config.get('kind')!r} (use frontend.kind: cqt, or discover.kdm: false)"
            )
        self.config = config
        self.frontend_config = dict(frontend_config)
        self.world_size = world_size
        self.seed = seed
        with torch.random.fork_rng(devices=[]):  # the trainer's RNG stream stays what it was without us
            torch.manual_seed(seed + 0xD15C)
            self.club = nn.ModuleDict()
            self.standardise = nn.ModuleDict()
            if config.kdm:
                for name in config.factors:
                    dim = factor_dim(name, config.n_timbre_coeffs)
                    self.club[name] = VariationalGaussian(
                        embedding_dim, dim, config.club_hidden, config.logvar_min, config.logvar_max
                    )
                    self.standardise[name] = FactorStandardiser(dim, world_size)
            self.discriminator = Discriminator(embedding_dim, config.disc_hidden) if config.gadm else None
        self.club_optimizer = (
            torch.optim.Adam(self.club.parameters(), lr=config.club_lr) if config.kdm else None
        )
        self.disc_optimizer = (
            torch.optim.Adam(self.discriminator.parameters(), lr=config.disc_lr, betas=(0.5, 0.999))
            if self.discriminator is not None
            else None
        )

    # -- phases ----------------------------------------------------------------------------------

    def q(self, factor: str) -> VariationalGaussian:
        """The variational network q(factor | embedding)."""
        net = self.club[factor]
        assert isinstance(net, VariationalGaussian)
        return net

    def _standardised(self, factor: str, z: torch.Tensor) -> torch.Tensor:
        standardiser = self.standardise[factor]
        assert isinstance(standardiser, FactorStandardiser)
        return standardiser(z)

    def _sync(self, params: Any) -> None:
        if self.world_size > 1:
            for p in params:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world_size

    def _variational_phase(self, h: torch.Tensor, factors: dict[str, torch.Tensor]) -> float:
        assert self.club_optimizer is not None
        nll = 0.0
        for _ in range(self.config.club_steps):
            self.club_optimizer.zero_grad(set_to_none=True)
            loss = sum(-self.q(name).log_likelihood(h, z) for name, z in factors.items())
            assert isinstance(loss, torch.Tensor)
            loss.backward()
            self._sync(self.club.parameters())
            self.club_optimizer.step()
            nll = float(loss.detach()) / len(factors)
        self.club_optimizer.zero_grad(set_to_none=True)
        return nll

    def keep_mask(self, h: torch.Tensor, labels: torch.Tensor, step: int) -> torch.Tensor:
        """float [B, D]: 0 at the elements GADM treats as version-variant in each clip."""
        c = self.config
        if c.mask == "random":
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            return random_keep_mask((h.shape[0], h.shape[1]), c.mask_ratio, generator).to(h.device)
        return top_ratio_keep_mask(transition_gradient(h, labels, c.transition), c.mask_ratio)

    def _discriminator_phase(self, h: torch.Tensor, disentangled: torch.Tensor) -> tuple[float, float]:
        assert self.discriminator is not None and self.disc_optimizer is not None
        loss_value, accuracy = 0.0, 0.0
        for _ in range(self.config.disc_steps):
            self.disc_optimizer.zero_grad(set_to_none=True)
            real, fake = self.discriminator(disentangled), self.discriminator(h)
            loss = F.binary_cross_entropy_with_logits(
                real, torch.ones_like(real)
            ) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
            loss.backward()
            self._sync(self.discriminator.parameters())
            self.disc_optimizer.step()
            loss_value = float(loss.detach())
            accuracy = float(((real > 0).float().mean() + (fake <= 0).float().mean()) / 2)
        self.disc_optimizer.zero_grad(set_to_none=True)
        return loss_value, accuracy

    def step(
        self, embeddings: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One round of the alternating schedule; returns (the encoder's extra loss, statistics).

        embeddings: unit embeddings float32 [B, D] attached to the encoder's graph; features: the
        batch's CQT crops [B, F, T] as the backbone saw them; labels: work labels [B]; step: the
        global training step (for the warm-ups and the random-mask ablation's seed).
        """
        c = self.config
        h = embeddings.detach().float()
        extra = embeddings.new_zeros(())
        stats: dict[str, float] = {}
        factors: dict[str, torch.Tensor] = {}
        if c.kdm:
            raw = version_factors(features, tuple(self.club.keys()), self.frontend_config, c.n_timbre_coeffs)
            factors = {name: self._standardised(name, z.to(h.device)) for name, z in raw.items()}
            stats["q_nll"] = self._variational_phase(h, factors)
        if self.discriminator is not None:
            disentangled = disentangle(h, self.keep_mask(h, labels, step))
            stats["disc_loss"], stats["disc_accuracy"] = self._discriminator_phase(h, disentangled)

        # encoder phase: the auxiliary networks are frozen, gradients reach the encoder only
        aux = [p for p in self.parameters()]
        flags = [p.requires_grad for p in aux]
        for p in aux:
            p.requires_grad_(False)
        try:
            if c.kdm:
                w = c.mi_weight * ramp(step, c.mi_warmup_steps)
                for name, z in factors.items():
                    mi = self.q(name).mi_upper_bound(embeddings.float(), z)
                    stats[f"mi_{name}"] = float(mi.detach())
                    extra = extra + w * mi.clamp(min=c.mi_clamp)
            if self.discriminator is not None:
                logits = self.discriminator(embeddings.float())
                adv = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
                stats["adv_loss"] = float(adv.detach())
                extra = extra + c.adv_weight * ramp(step, c.adv_warmup_steps) * adv
        finally:
            for p, flag in zip(aux, flags, strict=True):
                p.requires_grad_(flag)
        return extra, stats

    # -- resume ------------------------------------------------------------------------------------

    def train_state(self) -> dict[str, Any]:
        """Weights, running statistics and optimiser states (for ``train_state.pt``, never the model)."""
        return {
            "modules": self.state_dict(),
            "club_optimizer": self.club_optimizer.state_dict() if self.club_optimizer else {},
            "disc_optimizer": self.disc_optimizer.state_dict() if self.disc_optimizer else {},
        }

    def load_train_state(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["modules"])
        if self.club_optimizer is not None:
            self.club_optimizer.load_state_dict(state["club_optimizer"])
        if self.disc_optimizer is not None:
            self.disc_optimizer.load_state_dict(state["disc_optimizer"])
