"""MART networks: the FCN-7 projection encoder, the part-whole transformer (csi_training.models.
part_whole) and the pre-training model (csi_training.models.mart).

The transformer is checked against a naive float64 per-pair evaluation written from its weights
(one whole and its own parts at a time, head by head), for locality (a token's output changes exactly
when itself, its whole or one of its parts changes), for the symmetry of the tree (swapping two
sibling subtrees permutes the outputs), for batching (one attention call per direction and layer,
whatever the number of levels) and for lambda = 0 being the identity.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from csi_training.frontends.hierarchical import Hierarchy, HierarchyConfig
from csi_training.models import part_whole
from csi_training.models.fcn import FCN7
from csi_training.models.mart import MartConfig, MartPretrainModel
from csi_training.models.part_whole import InteractionUnit, PartWholeTransformer, TransformerBlock

TINY_HIERARCHY = HierarchyConfig(
    sample_rate=8000, levels=3, splits=2, frames=8, finest_hop=16, n_fft=128, n_mels=12
)


def _random_hierarchy(rng: np.random.Generator) -> Hierarchy:
    return Hierarchy(levels=int(rng.integers(2, 5)), splits=int(rng.integers(2, 4)))


def _layer_norm(x: np.ndarray, ln: torch.nn.LayerNorm) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(
        var + ln.eps
    ) * ln.weight.detach().double().numpy() + ln.bias.detach().double().numpy()


def _linear(x: np.ndarray, layer: torch.nn.Linear) -> np.ndarray:
    return x @ layer.weight.detach().double().numpy().T + layer.bias.detach().double().numpy()


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _naive_block(block: TransformerBlock, query: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Transformer(Q, K, V) for one query vector [D] over its own keys [K, D], float64, head by head."""
    hq = _layer_norm(query[None], block.norm_query)
    hk = _layer_norm(keys, block.norm_key)
    q, k, v = _linear(hq, block.query), _linear(hk, block.key), _linear(hk, block.value)
    d = block.head_dim
    heads = []
    for h in range(block.heads):
        qs, ks, vs = q[:, h * d : (h + 1) * d], k[:, h * d : (h + 1) * d], v[:, h * d : (h + 1) * d]
        scores = (qs @ ks.T)[0] / math.sqrt(d)
        w = np.exp(scores - scores.max())
        w /= w.sum()
        heads.append(w @ vs)
    a = _linear(np.concatenate(heads)[None], block.out)
    hidden = _gelu(_linear(_layer_norm(a, block.norm_ffn), block.ffn[0]))
    return (a + _linear(hidden, block.ffn[2]))[0]


def test_fcn7_shapes(rng: np.random.Generator) -> None:
    torch.manual_seed(int(rng.integers(2**31)))
    full = FCN7(n_mels=96)
    assert full.output_dim == 512
    assert full(torch.randn(2, 96, 64)).shape == (2, 512)
    small = FCN7(n_mels=int(rng.integers(1, 40)), width="small")
    assert small.output_dim == 128
    for frames in (1, int(rng.integers(2, 200))):
        assert small(torch.randn(3, small.n_mels, frames)).shape == (3, 128)
    with pytest.raises(ValueError, match="log-mel"):
        small(torch.randn(3, small.n_mels + 1, 10))
    with pytest.raises(ValueError, match="width"):
        FCN7(96, width="huge")


@pytest.mark.parametrize("trial", range(2))
def test_unit_matches_naive_per_pair_evaluation(rng: np.random.Generator, trial: int) -> None:
    torch.manual_seed(int(rng.integers(2**31)))
    h = _random_hierarchy(rng)
    dim = int(rng.integers(4, 20))
    heads = int(rng.integers(1, 4))
    weights = rng.uniform(0.2, 2.0, h.levels).tolist()
    unit = InteractionUnit(h, dim, weights, heads=heads, attn_dim=heads * int(rng.integers(2, 6))).double()
    for p in unit.parameters():  # LayerNorm starts at (1, 0): make it non-trivial too
        p.data.normal_(0.0, 0.5)
    batch = int(rng.integers(1, 3))
    x = rng.standard_normal((batch, h.n_parts, dim))
    out = unit(torch.from_numpy(x)).detach().numpy()
    children = {i: [j for j in range(h.n_parts) if h.parent[j] == i] for i in range(h.n_parts)}
    for b in range(batch):
        for i in range(h.n_parts):
            message = np.zeros(dim)
            if children[i]:  # eq. 1: the whole queries its own parts
                message += _naive_block(unit.up, x[b, i], x[b, children[i]])
            if h.parent[i] >= 0:  # eq. 2: the part queries its own whole
                message += _naive_block(unit.down, x[b, i], x[b, [int(h.parent[i])]])
            expected = x[b, i] + weights[int(h.level[i])] * message
            np.testing.assert_allclose(out[b, i], expected, rtol=1e-9, atol=1e-9)


def test_attention_is_restricted_to_own_parts_and_whole(rng: np.random.Generator) -> None:
    torch.manual_seed(int(rng.integers(2**31)))
    h = _random_hierarchy(rng)
    unit = InteractionUnit(h, 8, [1.0] * h.levels, heads=2, attn_dim=8).double()
    x = torch.from_numpy(rng.standard_normal((1, h.n_parts, 8)))
    base = unit(x)
    for k in rng.choice(h.n_parts, size=min(6, h.n_parts), replace=False):
        changed = x.clone()
        changed[0, k] += torch.from_numpy(rng.standard_normal(8))
        out = unit(changed)
        for i in range(h.n_parts):
            related = i == k or h.parent[i] == k or h.parent[k] == i
            differs = not torch.allclose(out[0, i], base[0, i], rtol=0, atol=1e-12)
            assert differs == related, (k, i)


def test_swapping_sibling_subtrees_permutes_the_outputs(rng: np.random.Generator) -> None:
    torch.manual_seed(int(rng.integers(2**31)))
    h = Hierarchy(levels=3, splits=int(rng.integers(2, 4)))
    pwt = PartWholeTransformer(
        h, 12, rng.uniform(0.3, 1.5, 3).tolist(), layers=3, heads=3, attn_dim=12
    ).double()
    x = torch.from_numpy(rng.standard_normal((2, h.n_parts, 12)))
    # swap level-1 parts 0 and 1 with their whole subtrees (a symmetry of the tree)
    perm = np.arange(h.n_parts)
    a, b = h.offset(1), h.offset(1) + 1
    perm[a], perm[b] = b, a
    m = h.splits
    first, second = h.offset(2), h.offset(2) + m
    perm[first : first + m], perm[second : second + m] = (
        np.arange(second, second + m),
        np.arange(first, first + m),
    )
    out = pwt(x)
    out_perm = pwt(x[:, perm])
    torch.testing.assert_close(out_perm, out[:, perm], rtol=1e-10, atol=1e-10)


def test_all_pairs_in_one_batched_call_per_direction(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, ...]] = []
    original = part_whole.masked_attention

    def counting(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(q.shape))
        return original(q, k, v, mask)

    monkeypatch.setattr(part_whole, "masked_attention", counting)
    layers = int(rng.integers(1, 4))
    for levels in (2, 4):
        calls.clear()
        h = Hierarchy(levels=levels, splits=2)
        pwt = PartWholeTransformer(h, 6, 1.0, layers=layers, heads=3, attn_dim=6)
        pwt(torch.randn(3, h.n_parts, 6))
        assert len(calls) == 2 * layers  # up and down, each over every pair of every level at once
        assert all(shape == (3, 3, h.n_parts, 2) for shape in calls)


def test_zero_lambda_is_the_plain_projection(rng: np.random.Generator) -> None:
    torch.manual_seed(int(rng.integers(2**31)))
    h = _random_hierarchy(rng)
    pwt = PartWholeTransformer(h, 9, 0.0, layers=3, heads=3)
    x = torch.randn(2, h.n_parts, 9)
    assert torch.equal(pwt(x), x)
    config = MartConfig(hierarchy=TINY_HIERARCHY, width="tiny", level_weights=(0.0, 0.0, 0.0), attn_dim=12)
    model = MartPretrainModel(config).eval()
    wave_a = torch.randn(2, TINY_HIERARCHY.whole_samples)
    wave_b = torch.randn(2, TINY_HIERARCHY.whole_samples)
    z_hat, _ = model(wave_a, wave_b)
    with torch.no_grad():
        plain = model.head(model.encode(model.spectrogram(wave_a)))
    torch.testing.assert_close(z_hat, plain, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("pwt", "hcl", "parts"), [(True, True, 7), (False, True, 7), (True, False, 7), (False, False, 1)]
)
def test_pretrain_model_shapes_and_ablations(pwt: bool, hcl: bool, parts: int) -> None:
    config = MartConfig(
        hierarchy=TINY_HIERARCHY,
        width="tiny",
        level_weights=(0.5, 0.5, 0.5),
        attn_dim=12,
        part_whole_transformer=pwt,
        hierarchical_loss=hcl,
        projection_hidden=16,
        projection_dim=8,
    )
    model = MartPretrainModel(config)
    assert (model.transformer is not None) == pwt
    z_hat, z_tilde = model(
        torch.randn(3, TINY_HIERARCHY.whole_samples), torch.randn(3, TINY_HIERARCHY.whole_samples)
    )
    assert z_hat.shape == (3, parts, 8) and z_tilde.shape == (3, 8)
    assert model.embed_whole(torch.randn(2, TINY_HIERARCHY.whole_samples)).shape == (
        2,
        model.encoder.output_dim,
    )
    assert MartConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="one lambda per level"):
        MartConfig(hierarchy=TINY_HIERARCHY, level_weights=(1.0,))
