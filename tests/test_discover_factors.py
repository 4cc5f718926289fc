"""KDM's prior factors from CQT crops, against a float64 numpy reference written frame by frame."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import torch

from csi_training.discover.factors import (
    F0_DIM,
    VOICED_FRACTION,
    cqt_f0_factor,
    cqt_timbre_factor,
    dct_matrix,
)


def reference_factors(
    clip: np.ndarray, bins_per_octave: int, fmin_hz: float, n_coeffs: int
) -> tuple[np.ndarray, np.ndarray]:
    """(f0 factor, timbre factor) of one clip [F, T], float64, one frame at a time."""
    x = np.maximum(clip.astype(np.float64), 0.0)
    x = x / max(x.max(), 1e-6)
    n_frames = x.shape[1]
    midi_fmin = 69 + 12 * math.log2(fmin_hz / 440.0)
    contour, voiced_frames, profile, ceps = [], [], np.zeros(12), []
    voiced = np.zeros(n_frames, bool)
    for t in range(n_frames):
        frame = x[:, t]
        if frame.max() < VOICED_FRACTION:
            contour.append(0.0)
            continue
        voiced[t] = True
        semitone = np.argmax(frame) * 12.0 / bins_per_octave
        contour.append(semitone / 12.0)
        voiced_frames.append(t)
        profile[int(np.round(midi_fmin + semitone)) % 12] += frame.max()
        ceps.append(scipy.fft.dct(frame, type=2, norm="ortho")[1 : n_coeffs + 1])
    f0 = np.zeros(F0_DIM)
    timbre = np.zeros(2 * n_coeffs)
    if voiced_frames:
        c = np.array([contour[t] for t in voiced_frames])
        deltas = [
            abs(contour[t + 1] - contour[t]) for t in range(n_frames - 1) if voiced[t] and voiced[t + 1]
        ]
        f0[0], f0[1] = c.mean(), c.std()
        f0[2] = np.mean(deltas) if deltas else 0.0
        f0[4:] = profile / profile.sum()
        cc = np.array(ceps)
        timbre[:n_coeffs], timbre[n_coeffs:] = cc.mean(axis=0), cc.std(axis=0)
    f0[3] = voiced.mean()
    return f0, timbre


def random_crops(rng: np.random.Generator, batch: int, n_bins: int, frames: int) -> np.ndarray:
    """Sparse non-negative 'CQT' crops: some frames silent, a few masked to zero, one silent clip."""
    x = rng.gamma(0.5, 1.0, size=(batch, n_bins, frames)) * (rng.random((batch, 1, frames)) < 0.8)
    x[:, :, rng.integers(0, frames)] = 0.0
    if batch > 2:
        x[-1] = 0.0
    return x.astype(np.float32)


@pytest.mark.parametrize(
    ("batch", "n_bins", "frames", "bpo"), [(1, 84, 1, 12), (5, 84, 37, 12), (4, 108, 64, 36)]
)
def test_factors_match_the_reference(
    rng: np.random.Generator, batch: int, n_bins: int, frames: int, bpo: int
) -> None:
    crops = random_crops(rng, batch, n_bins, frames)
    fmin = float(rng.uniform(30.0, 60.0))
    n_coeffs = int(rng.integers(4, 16))
    f0 = cqt_f0_factor(torch.from_numpy(crops), bpo, fmin).numpy()
    timbre = cqt_timbre_factor(torch.from_numpy(crops), n_coeffs).numpy()
    assert f0.shape == (batch, F0_DIM) and timbre.shape == (batch, 2 * n_coeffs)
    for i in range(batch):
        ref_f0, ref_timbre = reference_factors(crops[i], bpo, fmin, n_coeffs)
        np.testing.assert_allclose(f0[i], ref_f0, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(timbre[i], ref_timbre, rtol=1e-4, atol=1e-5)
    if batch > 2:  # the silent clip
        assert not f0[-1].any() and not timbre[-1].any()


def test_f0_factor_tracks_a_tone_and_its_transposition(rng: np.random.Generator) -> None:
    """A tone at bin b (plus weaker harmonics): contour at b semitones; transposed by k bins, the
    contour moves by k/12 octaves and the pitch-class profile rotates by k; the level changes nothing."""
    n_bins, frames = 84, 50
    b, k = int(rng.integers(5, 40)), int(rng.integers(1, 12))

    def tone(root: int, level: float) -> torch.Tensor:
        x = np.zeros((1, n_bins, frames), np.float32)
        for harmonic, gain in ((0, 1.0), (12, 0.5), (19, 0.3)):
            x[0, root + harmonic] = gain * level
        x[0, :, :5] = 0.0  # a rest
        return torch.from_numpy(x)

    base = cqt_f0_factor(tone(b, 1.0), 12, 32.703).numpy()[0]
    moved = cqt_f0_factor(tone(b + k, float(rng.uniform(0.1, 10.0))), 12, 32.703).numpy()[0]
    assert base[0] == pytest.approx(b / 12, abs=1e-6) and base[1] == pytest.approx(0.0, abs=1e-6)
    assert base[2] == pytest.approx(0.0, abs=1e-6) and base[3] == pytest.approx(45 / 50)
    assert np.argmax(base[4:]) == (24 + b) % 12 and base[4:].max() == pytest.approx(1.0)  # C1 is MIDI 24
    assert moved[0] - base[0] == pytest.approx(k / 12, abs=1e-6)
    np.testing.assert_allclose(moved[4:], np.roll(base[4:], k), atol=1e-6)


def test_dct_matrix_is_scipys_orthonormal_dct(rng: np.random.Generator) -> None:
    n = int(rng.integers(2, 100))
    m = int(rng.integers(1, n + 1))
    v = rng.standard_normal(n)
    ours = dct_matrix(n, m).double().numpy() @ v
    np.testing.assert_allclose(ours, scipy.fft.dct(v, type=2, norm="ortho")[:m], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="n_coeffs"):
        dct_matrix(4, 5)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[B, F, T\]"):
        cqt_f0_factor(torch.zeros(84, 10), 12, 32.7)
    bad = torch.ones(2, 84, 10)
    bad[1, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        cqt_timbre_factor(bad)
    with pytest.raises(ValueError, match="bins_per_octave"):
        cqt_f0_factor(torch.ones(1, 84, 3), 0, 32.7)
    with pytest.raises(ValueError, match="n_coeffs"):
        cqt_timbre_factor(torch.ones(1, 8, 3), 12)
