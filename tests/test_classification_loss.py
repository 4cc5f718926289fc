"""ClassificationHead: label-smoothed cross-entropy against hand-computed values, BNNeck, cosine logits,
and training on a toy problem."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from csi_training.losses import ClassificationHead

torch.set_num_threads(1)


def smoothed_ce_by_hand(logits: list[float], label: int, eps: float) -> float:
    """-sum_c q_c log softmax(z)_c with q = (1 - eps) one_hot + eps / C, written out in python floats."""
    n_classes = len(logits)
    top = max(logits)
    log_norm = top + math.log(sum(math.exp(z - top) for z in logits))
    loss = 0.0
    for c, z in enumerate(logits):
        target = (1.0 - eps) * (c == label) + eps / n_classes
        loss -= target * (z - log_norm)
    return loss


def test_label_smoothing_matches_hand_value() -> None:
    # logits = emb when the classifier weight is the identity and there is no neck.
    # Row 1: z = (1, 2, 0.5), label 1, eps = 0.1 -> q = (1/30, 28/30, 1/30);
    #   log-sum-exp = log(e + e^2 + e^0.5) = 2.464...; loss = sum_c q_c (lse - z_c).
    head = ClassificationHead(3, 3, label_smoothing=0.1, bn_neck=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(3))
    emb = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], dtype=torch.float64)
    head = head.double()
    loss, stats = head(emb, torch.tensor([1, 0]))
    lse = math.log(math.e + math.e**2 + math.e**0.5)
    row1 = (1 / 30) * (lse - 1.0) + (28 / 30) * (lse - 2.0) + (1 / 30) * (lse - 0.5)
    assert row1 == pytest.approx(smoothed_ce_by_hand([1.0, 2.0, 0.5], 1, 0.1))
    expected = (row1 + smoothed_ce_by_hand([0.0, -1.0, 3.0], 0, 0.1)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert stats["accuracy"] == 0.5  # row 1 right (argmax 1), row 2 wrong (argmax 2)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_label_smoothing_random_logits(rng: np.random.Generator, eps: float) -> None:
    n_classes = int(rng.integers(2, 9))
    z = rng.normal(size=(5, n_classes)) * 3
    labels = rng.integers(0, n_classes, 5)
    head = ClassificationHead(n_classes, n_classes, label_smoothing=eps, bn_neck=False).double()
    with torch.no_grad():
        head.weight.copy_(torch.eye(n_classes))
    loss, _ = head(torch.from_numpy(z), torch.from_numpy(labels))
    expected = np.mean([smoothed_ce_by_hand(list(row), int(y), eps) for row, y in zip(z, labels)])
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_cosine_logits_are_scaled_cosines(rng: np.random.Generator) -> None:
    head = ClassificationHead(4, 3, bn_neck=False, cosine=True, scale=16.0).double()
    emb = torch.from_numpy(rng.normal(size=(6, 4)))
    w = head.weight.detach().numpy()
    e = emb.numpy()
    expected = (
        16.0
        * (e / np.linalg.norm(e, axis=1, keepdims=True))
        @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    )
    np.testing.assert_allclose(head.logits(emb).detach().numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize(("n_classes", "margin", "eps"), [(2, 0.1, 0.0), (5, 0.2, 0.1), (9, 0.35, 0.1)])
def test_cosine_margin_loss_matches_naive_reference(
    rng: np.random.Generator, n_classes: int, margin: float, eps: float
) -> None:
    """CosFace: the target logit is s (cos - m); the others s cos; written out in python floats."""
    dim, scale = 6, 12.0
    head = ClassificationHead(
        dim, n_classes, label_smoothing=eps, bn_neck=False, cosine=True, scale=scale, margin=margin
    )
    head = head.double()
    emb = rng.normal(size=(7, dim))
    labels = rng.integers(0, n_classes, 7)
    loss, stats = head(torch.from_numpy(emb), torch.from_numpy(labels))
    w = head.weight.detach().numpy()
    expected, right = [], 0
    for e, y in zip(emb, labels):
        cos = [float(e @ wc / (np.linalg.norm(e) * np.linalg.norm(wc))) for wc in w]
        expected.append(
            smoothed_ce_by_hand([scale * (c - margin * (k == y)) for k, c in enumerate(cos)], int(y), eps)
        )
        right += int(np.argmax(cos) == y)  # accuracy is judged without the margin
    assert loss.item() == pytest.approx(float(np.mean(expected)), rel=1e-12)
    assert stats["accuracy"] == pytest.approx(right / len(labels))


def test_cosine_margin_raises_the_loss_of_a_separable_problem() -> None:
    """With a margin, items the plain cosine loss considers solved still cost until they clear m."""
    head = ClassificationHead(2, 2, label_smoothing=0.0, bn_neck=False, cosine=True, scale=10.0).double()
    with torch.no_grad():
        head.weight.copy_(torch.eye(2, dtype=torch.float64))
    emb = torch.tensor([[1.0, 0.9], [0.2, 1.0]], dtype=torch.float64)  # right, but close to the boundary
    labels = torch.tensor([0, 1])
    plain, _ = head(emb, labels)
    head.margin = 0.3
    margined, stats = head(emb, labels)
    assert margined.item() > plain.item() + 0.5
    assert stats["accuracy"] == 1.0


def test_imprint_sets_class_weights_to_mean_directions(rng: np.random.Generator) -> None:
    n_classes, dim = 7, 5
    head = ClassificationHead(dim, n_classes, bn_neck=False, cosine=True).double()
    before = head.weight.detach().clone()
    labels = rng.choice([0, 1, 2, 4, 5], size=40)  # classes 3 and 6 have no items
    emb = rng.normal(size=(40, dim)) * rng.uniform(0.1, 10.0, size=(40, 1))
    assert head.imprint(torch.from_numpy(emb), torch.from_numpy(labels)) == len(set(labels.tolist()))
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    for c in range(n_classes):
        if c in labels:
            mean = unit[labels == c].mean(0)
            np.testing.assert_allclose(
                head.weight[c].detach().numpy(), mean / np.linalg.norm(mean), rtol=1e-12
            )
        else:
            torch.testing.assert_close(head.weight[c], before[c], rtol=0, atol=0)


def test_imprinted_head_classifies_clusters_without_training(rng: np.random.Generator) -> None:
    centres = rng.normal(size=(6, 16)) * 3
    labels = np.repeat(np.arange(6), 10)
    emb = centres[labels] + rng.normal(size=(60, 16))
    head = ClassificationHead(16, 6, label_smoothing=0.0, bn_neck=False, cosine=True, scale=10.0)
    x, y = torch.from_numpy(emb).float(), torch.from_numpy(labels)
    random_loss, _ = head(x, y)
    head.imprint(x, y)
    loss, stats = head(x, y)
    assert stats["accuracy"] > 0.95 and loss.item() < random_loss.item()


def test_imprint_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="needs cosine"):
        ClassificationHead(4, 3).imprint(torch.zeros(2, 4), torch.tensor([0, 1]))
    head = ClassificationHead(4, 3, bn_neck=False, cosine=True)
    with pytest.raises(ValueError, match="NaN"):
        head.imprint(torch.full((2, 4), float("nan")), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        head.imprint(torch.ones(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"emb \[N, 4\]"):
        head.imprint(torch.ones(2, 5), torch.tensor([0, 1]))


def test_bn_neck_normalises_features_and_has_no_learned_shift(rng: np.random.Generator) -> None:
    head = ClassificationHead(5, 4)
    assert head.neck is not None and not head.neck.bias.requires_grad
    emb = torch.from_numpy(rng.normal(3.0, 2.0, size=(64, 5))).float()
    feat = head.features(emb)
    torch.testing.assert_close(feat.mean(0), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(feat.var(0, unbiased=False), torch.ones(5), atol=1e-3, rtol=0)
    loss, _ = head(emb, torch.from_numpy(rng.integers(0, 4, 64)))
    loss.backward()
    assert head.neck.bias.grad is None and head.neck.weight.grad is not None
    assert head.weight.grad is not None


@pytest.mark.parametrize(("bn_neck", "cosine"), [(True, False), (False, False), (True, True)])
def test_head_trains_on_toy_problem(seed: int, bn_neck: bool, cosine: bool) -> None:
    """Six Gaussian clusters in 16 dimensions: a few hundred Adam steps reach ~perfect accuracy."""
    torch.manual_seed(seed)
    n_classes, dim = 6, 16
    centres = torch.randn(n_classes, dim) * 2
    labels = torch.arange(n_classes).repeat(20)
    emb = centres[labels] + torch.randn(len(labels), dim)
    head = ClassificationHead(dim, n_classes, label_smoothing=0.1, bn_neck=bn_neck, cosine=cosine, scale=10.0)
    optimiser = torch.optim.Adam(head.parameters(), lr=0.05)
    first_loss, first_stats = head(emb, labels)
    for _ in range(200):
        optimiser.zero_grad()
        loss, _ = head(emb, labels)
        loss.backward()
        optimiser.step()
    head.eval()
    last_loss, last_stats = head(emb, labels)
    assert last_loss.item() < 0.5 * first_loss.item()
    assert last_stats["accuracy"] > max(0.95, first_stats["accuracy"])
    # label smoothing bounds the loss away from 0: at least the entropy of the smoothed target
    q_right, q_other = 0.9 + 0.1 / n_classes, 0.1 / n_classes
    floor = -q_right * math.log(q_right) - (n_classes - 1) * q_other * math.log(q_other)
    assert last_loss.item() >= floor - 1e-6


def test_head_rejects_bad_input() -> None:
    head = ClassificationHead(4, 3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        head(torch.zeros(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        head(torch.zeros(2, 4), torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        head(torch.zeros(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        head(torch.zeros(2, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="integer"):
        head(torch.zeros(2, 4), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="label_smoothing"):
        ClassificationHead(4, 3, label_smoothing=1.0)
    with pytest.raises(ValueError, match="n_classes"):
        ClassificationHead(4, 1)
    with pytest.raises(ValueError, match="needs cosine"):
        ClassificationHead(4, 3, margin=0.2)
    with pytest.raises(ValueError, match="margin"):
        ClassificationHead(4, 3, cosine=True, margin=1.0)
