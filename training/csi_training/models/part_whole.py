"""The part-whole transformer of MART (Yao et al., WWW'24 companion, sec. 2.2): clip vectors of a
hierarchical cropping (csi_training.frontends.hierarchical) exchange information along the tree.

Tokens are the projected clips of all levels, [B, P, D_e] with P = (M^N - 1) / (M - 1), ordered as
in :class:`~csi_training.frontends.hierarchical.Hierarchy`. One interaction unit holds two
"Transformer(Q, K, V)" blocks (cross-attention with 3 heads, then a feed-forward net, pre-norm):

- up (eq. 1): each whole queries its own M parts,
  s^_m^n = s~_m^n + lambda^n Transformer(Q^n, K^{n+1}, V^{n+1});
- down (eq. 2): each part queries its own whole,
  s^^{n+1} = s~^{n+1} + lambda^{n+1} Transformer(Q^{n+1}, K^n, V^n).

Both run for every part-whole pair of every level in one batched masked attention over all P tokens
(a token may attend only to its own parts, resp. its own whole; the paper's "each pair in its own
head subspace"). A clip of an intermediate level is a whole in one pair and a part in another: it
receives both messages, computed from the same input (synchronous update), each weighted by its
level's lambda. A block whose query has no key (the finest level going up, the root going down)
contributes exactly zero. With every lambda = 0 the transformer is the identity.
Parts carry no position embedding: a whole's message is invariant to the order of its parts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from csi_training.frontends.hierarchical import Hierarchy

__all__ = ["InteractionUnit", "PartWholeTransformer", "TransformerBlock", "masked_attention"]


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention restricted by a boolean mask.

    q, k, v: [B, H, P, d]; mask: bool [P, P], mask[i, j] = query i may attend key j. Returns
    [B, H, P, d]; a query row without any allowed key gets zeros.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask, float("-inf"))
    has_key = mask.any(dim=-1)
    # rows without keys would softmax to NaN: give them a dummy finite row, zeroed below
    scores = torch.where(has_key[:, None], scores, torch.zeros_like(scores))
    weights = torch.softmax(scores, dim=-1) * has_key[:, None].to(scores.dtype)
    return torch.matmul(weights, v)


class TransformerBlock(nn.Module):
    """Transformer(Q, K, V) of eqs. 1-2, without the outer residual: tokens [B, P, D] and a mask
    [P, P] → a = MHA(LN(x) as queries, LN(x) as keys/values, mask); out = a + FFN(LN(a));
    rows whose query has no allowed key are exactly 0."""

    def __init__(
        self, dim: int, heads: int = 3, attn_dim: int | None = None, ffn_dim: int | None = None
    ) -> None:
        super().__init__()
        attn_dim = attn_dim if attn_dim is not None else heads * max(1, dim // heads)
        if attn_dim % heads:
            raise ValueError(f"attn_dim={attn_dim} must be a multiple of heads={heads}")
        self.heads, self.head_dim = heads, attn_dim // heads
        self.norm_query = nn.LayerNorm(dim)
        self.norm_key = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, attn_dim)
        self.key = nn.Linear(dim, attn_dim)
        self.value = nn.Linear(dim, attn_dim)
        self.out = nn.Linear(attn_dim, dim)
        self.norm_ffn = nn.LayerNorm(dim)
        hidden = ffn_dim if ffn_dim is not None else 2 * dim
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, p, _ = x.shape
        return x.reshape(b, p, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, p, _ = x.shape
        hq, hk = self.norm_query(x), self.norm_key(x)
        heads = masked_attention(
            self._split(self.query(hq)), self._split(self.key(hk)), self._split(self.value(hk)), mask
        )
        a = self.out(heads.transpose(1, 2).reshape(b, p, self.heads * self.head_dim))
        y = a + self.ffn(self.norm_ffn(a))
        return y * mask.any(dim=-1).to(y.dtype)[None, :, None]


class InteractionUnit(nn.Module):
    """One part-whole layer over the whole tree: x + lambda_level * (up(x) + down(x)), [B, P, D] → same."""

    up_mask: torch.Tensor
    down_mask: torch.Tensor
    token_weight: torch.Tensor

    def __init__(
        self,
        hierarchy: Hierarchy,
        dim: int,
        level_weights: Sequence[float],
        heads: int = 3,
        attn_dim: int | None = None,
        ffn_dim: int | None = None,
    ) -> None:
        super().__init__()
        if len(level_weights) != hierarchy.levels:
            raise ValueError(f"need one lambda per level ({hierarchy.levels}), got {len(level_weights)}")
        parent = torch.from_numpy(hierarchy.parent)
        tokens = torch.arange(hierarchy.n_parts)
        # up: whole i attends part j iff parent[j] == i; down: part i attends whole j iff parent[i] == j
        self.register_buffer("up_mask", parent[None, :] == tokens[:, None], persistent=False)
        self.register_buffer("down_mask", parent[:, None] == tokens[None, :], persistent=False)
        weights = torch.tensor(
            [float(level_weights[n]) for n in hierarchy.level.tolist()], dtype=torch.float64
        )
        self.register_buffer("token_weight", weights, persistent=False)
        self.up = TransformerBlock(dim, heads, attn_dim, ffn_dim)
        self.down = TransformerBlock(dim, heads, attn_dim, ffn_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        message = self.up(x, self.up_mask) + self.down(x, self.down_mask)
        return x + self.token_weight.to(x.dtype)[None, :, None] * message


class PartWholeTransformer(nn.Module):
    """``layers`` stacked interaction units (the paper: 3, with 3 heads): tokens [B, P, D] → [B, P, D].

    level_weights: lambda^n per level n (a hyperparameter in the paper, shared by the stacked layers).
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        dim: int,
        level_weights: Sequence[float] | float = 1.0,
        layers: int = 3,
        heads: int = 3,
        attn_dim: int | None = None,
        ffn_dim: int | None = None,
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        if isinstance(level_weights, int | float):
            level_weights = [float(level_weights)] * hierarchy.levels
        self.hierarchy = hierarchy
        self.level_weights = tuple(float(w) for w in level_weights)
        self.units = nn.ModuleList(
            InteractionUnit(hierarchy, dim, self.level_weights, heads, attn_dim, ffn_dim)
            for _ in range(layers)
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 3 or tokens.shape[1] != self.hierarchy.n_parts:
            raise ValueError(f"expected tokens [B, {self.hierarchy.n_parts}, D], got {tuple(tokens.shape)}")
        x = tokens
        for unit in self.units:
            x = unit(x)
        return x
