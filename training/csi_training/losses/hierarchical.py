"""MART's hierarchical contrastive loss (Yao et al., WWW'24 companion, eqs. 3-6).

For clip b of a batch of B, with z^ the projected part-whole-transformer outputs of every clip of its
hierarchy (z^_b^0 the whole clip) and z~_b^0 the projected encoder output (no transformer) of a
second view of the same track, sim the cosine similarity and tau the temperature:

    L^pw_b  = sum over adjacent levels i, each whole w of level i, each part p of w:
              lambda_i exp(sim(z^_w, z^_p) / tau),   lambda_i = len(part) / len(whole)   (eqs. 3-4)
    L^neg_b = sum_u exp(sim(z^_b^0, z~_u^0) / tau) + sum_{u != b} exp(sim(z^_b^0, z^_u^0) / tau)  (eq. 6)
    L^hc_b  = -log (L^pw_b + exp(sim(z^_b^0, z~_b^0) / tau)) / (L^pw_b + L^neg_b)                (eq. 5)

The batch loss is the mean of L^hc_b. The part-whole terms act as extra positives in numerator and
denominator (a regulariser of the plain contrastive term, as the paper says). With
``part_whole=False`` (the "w/o HCL" ablation) L^pw = 0 and the loss is the usual in-batch contrastive
loss between the two views. Computed in log space (logsumexp), so any temperature is safe.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from csi_training.frontends.hierarchical import Hierarchy

__all__ = ["hierarchical_contrastive_loss", "pair_weights"]


def pair_weights(hierarchy: Hierarchy) -> np.ndarray:
    """float64 [n_parts]: lambda_i = len(part) / len(whole) for each token as the part of its
    parent (1 / M for equal splits); 0 for the root, which is no one's part."""
    unit = hierarchy.splits ** (hierarchy.levels - 1)  # a whole length every level divides
    out = np.zeros(hierarchy.n_parts)
    for j in range(1, hierarchy.n_parts):
        start, stop = hierarchy.span(j, unit)
        p_start, p_stop = hierarchy.span(int(hierarchy.parent[j]), unit)
        out[j] = (stop - start) / (p_stop - p_start)
    return out


def hierarchical_contrastive_loss(
    z_hat: torch.Tensor,
    z_tilde: torch.Tensor,
    hierarchy: Hierarchy,
    temperature: float = 0.5,
    part_whole: bool = True,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Mean over the batch of L^hc_b (eq. 5).

    z_hat: float [B, P, D], the transformer outputs of every clip of each hierarchy (P = n_parts, or
    1 when only the whole clip was computed, which requires part_whole=False); z_tilde: float
    [B, D], the second view's whole-clip encoder outputs. Vectors need not be normalised.
    Returns (loss, stats) with stats["accuracy"]: fraction of clips whose z~ partner is the most
    similar among all z~_u (a retrieval check that does not depend on tau).
    """
    if z_hat.dim() != 3 or z_tilde.dim() != 2 or z_hat.shape[0] != z_tilde.shape[0]:
        raise ValueError(
            f"expected z_hat [B, P, D] and z_tilde [B, D], got {tuple(z_hat.shape)}, {tuple(z_tilde.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    batch, parts, _ = z_hat.shape
    if part_whole and parts != hierarchy.n_parts:
        raise ValueError(f"part_whole needs all {hierarchy.n_parts} clips of the hierarchy, got {parts}")
    if batch < 2:
        raise ValueError("the contrastive loss needs at least 2 clips in the batch")
    u_hat = F.normalize(z_hat.float(), dim=-1)
    u_tilde = F.normalize(z_tilde.float(), dim=-1)
    whole = u_hat[:, 0]  # [B, D]
    cross = whole @ u_tilde.T / temperature  # [B, B]: sim(z^_b^0, z~_u^0)
    same = whole @ whole.T / temperature  # [B, B]: sim(z^_b^0, z^_u^0)
    eye = torch.eye(batch, dtype=torch.bool, device=z_hat.device)
    same = same.masked_fill(eye, float("-inf"))
    positive = cross.diagonal()[:, None]  # [B, 1]
    terms_den = [cross, same]
    terms_num = [positive]
    if part_whole:
        parent = torch.from_numpy(hierarchy.parent[1:]).to(z_hat.device)
        log_w = torch.from_numpy(np.log(pair_weights(hierarchy)[1:])).to(z_hat.device, torch.float32)
        pair_sim = (u_hat[:, parent] * u_hat[:, 1:]).sum(-1) / temperature  # [B, P - 1]
        log_pw = pair_sim + log_w[None, :]
        terms_num.append(log_pw)
        terms_den.append(log_pw)
    log_num = torch.logsumexp(torch.cat(terms_num, dim=1), dim=1)
    log_den = torch.logsumexp(torch.cat(terms_den, dim=1), dim=1)
    loss = (log_den - log_num).mean()
    with torch.no_grad():
        accuracy = float((cross.argmax(dim=1) == torch.arange(batch, device=z_hat.device)).float().mean())
        stats: dict[str, Any] = {"accuracy": accuracy, "positive_cos": float(positive.mean() * temperature)}
        if part_whole:
            stats["part_whole_cos"] = float(pair_sim.mean() * temperature)
    return loss, stats
