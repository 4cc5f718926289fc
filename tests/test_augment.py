"""Training crops and feature augmentation against naive references."""

from __future__ import annotations

import numpy as np
import torch

from csi_training.augment import FeatureAugment, crop, pitch_roll
from csi_training.config import AugmentConfig


def test_crop_without_stretch_is_a_slice(rng: np.random.Generator) -> None:
    x = rng.random((12, 100)).astype(np.float16)
    out = crop(x, 40, rng)
    starts = [s for s in range(61) if np.array_equal(out, x[:, s : s + 40].astype(np.float32))]
    assert starts, "the crop must be a contiguous window of the input"
    assert np.array_equal(crop(x, 40, None), x[:, :40].astype(np.float32))


def test_short_tracks_are_tiled_not_padded(rng: np.random.Generator) -> None:
    x = rng.random((5, 7)).astype(np.float32) + 0.1
    out = crop(x, 20, None)
    assert out.shape == (5, 20)
    assert np.array_equal(out, np.tile(x, (1, 3))[:, :20])
    assert (out > 0).all()


def test_stretch_matches_linear_interpolation(rng: np.random.Generator) -> None:
    x = rng.random((3, 300)).astype(np.float32)
    for s in (0.75, 1.0, 1.3):
        out = crop(x, 50, None, stretch=s)
        n_src = round(50 * s)
        pos = np.clip((np.arange(50) + 0.5) * n_src / 50 - 0.5, 0, n_src - 1)
        ref = np.stack([np.interp(pos, np.arange(n_src), row[:n_src]) for row in x])
        np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def test_pitch_roll_shifts_with_zero_fill(rng: np.random.Generator) -> None:
    x = torch.from_numpy(rng.random((4, 20, 6)).astype(np.float32))
    shifts = torch.tensor([0, 3, -5, 19])
    out = pitch_roll(x, shifts)
    for b, k in enumerate(shifts.tolist()):
        ref = torch.zeros_like(x[b])
        if k >= 0:
            ref[k:] = x[b, : 20 - k]
        else:
            ref[:k] = x[b, -k:]
        assert torch.equal(out[b], ref)


def test_augment_probabilities_zero_is_identity(rng: np.random.Generator) -> None:
    x = torch.rand(6, 84, 40)
    off = FeatureAugment(AugmentConfig(pitch_roll_p=0, specaugment_p=0, stretch_p=0))
    assert torch.equal(off(x, rng), x)
    assert (off.stretch_factors(6, rng) == 1.0).all()


def test_specaugment_only_zeroes(rng: np.random.Generator) -> None:
    x = torch.rand(8, 84, 50) + 0.5
    aug = FeatureAugment(
        AugmentConfig(pitch_roll_p=0, specaugment_p=1.0, freq_mask_max=10, time_mask_max=0.2)
    )
    out = aug(x, rng)
    changed = out != x
    assert torch.all(out[changed] == 0)
    # masks are whole rows (frequency) or whole columns (time) of each item
    for b in range(8):
        zero = out[b] == 0
        rows, cols = zero.all(dim=1), zero.all(dim=0)
        assert torch.equal(zero, rows[:, None] | cols[None, :])
