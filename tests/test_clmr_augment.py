"""CLMR waveform augmentations (csi_training.clmr_augment): each transform does what it says,
checked against numpy references and analytic responses on fresh random signals.

Tolerances (measured with a margin): filter gain on bin-periodic sines within 1e-4 of the analytic
Butterworth magnitude; pitch shift: the spectral peak of a shifted tone within 0.1% of f0 * 2^(s/12)
(1/60 of a semitone; measured < 4e-5 over 40 draws), its RMS within 3% of the input's (measured
0.1%; 22% before the vocoder's phase locking, on slowed-down tones).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csi_training.clmr_augment import (
    ClmrAugment,
    ClmrConfig,
    add_noise,
    apply_gain,
    butterworth_filter,
    butterworth_response,
    delay_mix,
    fft_resample,
    invert_polarity,
    pitch_shift,
)

SR = 16000


def _tone(freq: float, n: int, phase: float = 0.0) -> np.ndarray:
    return np.sin(2 * np.pi * freq * np.arange(n) / SR + phase)


def _peak_hz(x: np.ndarray) -> float:
    """Frequency of the spectral peak of x (Hann window, 16x zero padding, parabolic interpolation)."""
    w = np.hanning(len(x))
    spectrum = np.abs(np.fft.rfft(x * w, n=16 * len(x)))
    k = int(np.argmax(spectrum))
    a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-30)
    offset = 0.5 * (a - c) / (a - 2 * b + c)
    return (k + offset) * SR / (16 * len(x))


def test_polarity_and_gain(rng: np.random.Generator) -> None:
    x = torch.from_numpy(rng.standard_normal((3, int(rng.integers(10, 500)))).astype(np.float32))
    assert torch.equal(invert_polarity(x), -x)
    g = float(rng.uniform(-20, 6))
    np.testing.assert_allclose(apply_gain(x, g).numpy(), x.numpy() * 10 ** (g / 20), rtol=1e-6)


def test_noise_has_the_requested_snr(rng: np.random.Generator) -> None:
    x = torch.from_numpy(
        rng.standard_normal((4, int(rng.integers(1000, 5000)))) * rng.uniform(0.01, 2, (4, 1))
    )
    snr = float(rng.uniform(-5, 40))
    y = add_noise(x, snr, generator=torch.Generator().manual_seed(int(rng.integers(2**31))))
    noise = (y - x).numpy()
    realised = 10 * np.log10((x.numpy() ** 2).mean(axis=1) / (noise**2).mean(axis=1))
    np.testing.assert_allclose(realised, snr, atol=1e-6)
    silent = torch.zeros(1, 100, dtype=torch.float64)
    assert torch.equal(add_noise(silent, snr), silent)


@pytest.mark.parametrize("kind", ["low", "high"])
def test_filter_gain_matches_butterworth(rng: np.random.Generator, kind: str) -> None:
    n = 4096
    cutoff = float(rng.uniform(300, 3000))
    order = int(rng.integers(2, 7))
    # bin-periodic tones so that the zero-padded FFT filter acts exactly as |H(f)| (a pure tone in,
    # the same tone scaled out) away from the ends; compare over the middle half
    for k in rng.choice(np.arange(8, 1000), size=4, replace=False):
        f = k * SR / n
        x = torch.from_numpy(np.tile(_tone(f, n), 3))
        y = butterworth_filter(x, SR, cutoff, kind, order).numpy()
        middle = slice(n, 2 * n)
        gain = np.sqrt((y[middle] ** 2).mean() / (x.numpy()[middle] ** 2).mean())
        expected = float(butterworth_response(np.array([f]), cutoff, kind, order)[0])
        assert abs(gain - expected) < 1e-4 + 2e-3 * expected, (f, gain, expected)
    with pytest.raises(ValueError, match="cutoff"):
        butterworth_filter(x, SR, SR / 2, kind)


def test_delay_matches_numpy(rng: np.random.Generator) -> None:
    x = rng.standard_normal((2, int(rng.integers(50, 400))))
    d = int(rng.integers(0, x.shape[1] + 10))
    v = float(rng.uniform(0.1, 1.0))
    ref = x.copy()
    if d < x.shape[1]:
        ref[:, d:] += v * x[:, : x.shape[1] - d]
    np.testing.assert_allclose(delay_mix(torch.from_numpy(x), d, v).numpy(), ref, atol=1e-12)
    with pytest.raises(ValueError, match="delay"):
        delay_mix(torch.from_numpy(x), -1, v)


def test_fft_resample_keeps_a_band_limited_tone(rng: np.random.Generator) -> None:
    n_in = int(rng.integers(2000, 4000))
    n_out = int(rng.integers(1500, 6000))
    cycles = int(rng.integers(5, 50))  # periodic in the buffer: exact for FFT resampling
    x = np.sin(2 * np.pi * cycles * np.arange(n_in) / n_in)
    y = fft_resample(torch.from_numpy(x), n_out).numpy()
    np.testing.assert_allclose(y, np.sin(2 * np.pi * cycles * np.arange(n_out) / n_out), atol=1e-9)


def test_pitch_shift_moves_a_tone(rng: np.random.Generator) -> None:
    n = SR  # 1 s
    for semitones in rng.choice([s for s in range(-5, 6) if s != 0], size=4, replace=False):
        f0 = float(rng.uniform(200, 900))
        x = _tone(f0, n, float(rng.uniform(0, 6)))
        y = pitch_shift(torch.from_numpy(x).float(), float(semitones)).numpy()
        assert y.shape == x.shape and y.dtype == np.float32
        middle = y[n // 4 : 3 * n // 4]
        expected = f0 * 2 ** (semitones / 12)
        assert abs(_peak_hz(middle) / expected - 1) < 1e-3, (f0, semitones, _peak_hz(middle))
        rms_ratio = np.sqrt((middle**2).mean() / (x**2).mean())
        assert 0.97 < rms_ratio < 1.03
    assert torch.equal(pitch_shift(torch.ones(10), 0.0), torch.ones(10))


def test_augment_chain_probabilities(rng: np.random.Generator) -> None:
    x = torch.from_numpy(rng.standard_normal((3, 2000)).astype(np.float32))
    off = ClmrConfig(polarity_p=0, noise_p=0, gain_p=0, filter_p=0, delay_p=0, pitch_p=0)
    assert torch.equal(ClmrAugment(off, SR)(x, rng), x)
    only_polarity = ClmrConfig(polarity_p=1, noise_p=0, gain_p=0, filter_p=0, delay_p=0, pitch_p=0)
    assert torch.equal(ClmrAugment(only_polarity, SR)(x, rng), -x)
    everything = ClmrConfig(polarity_p=1, noise_p=1, gain_p=1, filter_p=1, delay_p=1, pitch_p=1)
    y = ClmrAugment(everything, SR)(x, rng)
    assert y.shape == x.shape and torch.isfinite(y).all() and not torch.allclose(y, -x)
    assert ClmrConfig.from_dict(ClmrConfig().to_dict()) == ClmrConfig()
    with pytest.raises(ValueError, match="probability"):
        ClmrConfig(noise_p=1.5)
    with pytest.raises(ValueError, match="unknown"):
        ClmrConfig.from_dict({"nois_p": 0.1})
    with pytest.raises(ValueError, match="Nyquist"):
        ClmrAugment(ClmrConfig(), 8000)
