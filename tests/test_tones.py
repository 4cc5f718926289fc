"""Band-limited tones: spectra against the Fourier series, shapes against scipy's ideal waveforms."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

from csi_training.render.tones import (
    WAVEFORMS,
    ToneConfig,
    harmonic_amplitudes,
    render_tone,
    render_tones,
    sample_tone_factors,
)

SR = 16000


@pytest.mark.parametrize("waveform", WAVEFORMS)
@pytest.mark.parametrize("n", [1600, 4000])
def test_spectrum_holds_the_fourier_series_below_nyquist_only(
    rng: np.random.Generator, waveform: str, n: int
) -> None:
    """A whole number of periods in the window: the DFT has the series' amplitudes at the harmonics
    below Nyquist and nothing elsewhere (no aliasing)."""
    cycles = int(rng.integers(2, n // 12))
    f = cycles * SR / n  # up to ~1300 Hz: 6-60 harmonics below Nyquist
    amplitude, phase = rng.uniform(0.1, 1.0), rng.uniform(0, 2 * np.pi)
    x = render_tone(waveform, f, n, SR, amplitude, phase).astype(np.float64)
    spectrum = np.fft.rfft(x) * 2.0 / n
    k_max = int(np.ceil((SR / 2) / f)) - 1
    b = harmonic_amplitudes(waveform, k_max)
    expected = np.zeros(len(spectrum), dtype=np.complex128)
    k = np.arange(1, k_max + 1)
    # b sin(k(wt + phase)) = Im(b e^{ik phase} e^{ikwt}) → rfft coefficient -i b e^{ik phase}
    expected[k * cycles] = -1j * amplitude * b * np.exp(1j * k * phase)
    np.testing.assert_allclose(spectrum, expected, atol=2e-6)


@pytest.mark.parametrize(
    ("waveform", "ideal"),
    [
        ("square", lambda t: scipy.signal.square(t)),
        ("sawtooth", lambda t: scipy.signal.sawtooth(t + np.pi)),
        ("triangle", lambda t: scipy.signal.sawtooth(t + np.pi / 2, 0.5)),
        ("sine", np.sin),
    ],
)
def test_low_tones_approach_the_ideal_waveforms(rng: np.random.Generator, waveform: str, ideal) -> None:  # type: ignore[no-untyped-def]
    f = rng.uniform(30.0, 60.0)
    phase = rng.uniform(0, 2 * np.pi)
    x = render_tone(waveform, f, 8000, SR, 1.0, phase)
    reference = ideal(2 * np.pi * f * np.arange(8000) / SR + phase)
    assert np.corrcoef(x, reference)[0, 1] > 0.99
    assert np.median(np.abs(x - reference)) < 0.02  # away from the discontinuities' Gibbs ripples


def test_at_the_band_edge_only_partials_below_nyquist_remain() -> None:
    # a 3 kHz square keeps its fundamental only (9 kHz is above Nyquist): it equals a sine
    np.testing.assert_allclose(
        render_tone("square", 3000.0, 512, SR), render_tone("sine", 3000.0, 512, SR) * 4 / np.pi, atol=1e-6
    )


def test_batch_rendering_matches_single_tones(rng: np.random.Generator) -> None:
    config = ToneConfig(n_samples=int(rng.integers(64, 2048)))
    factors = sample_tone_factors(rng, 12, config)
    batch = render_tones(factors, config)
    assert batch.shape == (12, config.n_samples) and batch.dtype == np.float32
    for i in range(12):
        single = render_tone(
            WAVEFORMS[factors.waveform[i]],
            factors.frequency_hz[i],
            config.n_samples,
            SR,
            factors.amplitude[i],
            factors.phase[i],
        )
        np.testing.assert_array_equal(batch[i], single)
    assert np.all((factors.frequency_hz >= config.fmin_hz) & (factors.frequency_hz <= config.fmax_hz))
    level = 20 * np.log10(factors.amplitude)
    assert np.all((level >= config.min_level_db - 1e-9) & (level <= config.max_level_db + 1e-9))


def test_fixed_waveforms_are_kept(rng: np.random.Generator) -> None:
    kinds = rng.integers(0, 4, size=30)
    factors = sample_tone_factors(rng, 30, ToneConfig(), waveform=kinds)
    np.testing.assert_array_equal(factors.waveform, kinds)


def test_bad_arguments_are_refused(rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match="unknown waveform"):
        render_tone("noise", 440.0, 100, SR)
    with pytest.raises(ValueError, match="Nyquist"):
        render_tone("sine", 8000.0, 100, SR)
    with pytest.raises(ValueError, match="Nyquist"):
        render_tone("sine", float("nan"), 100, SR)
    with pytest.raises(ValueError, match="n_samples"):
        render_tone("sine", 440.0, 0, SR)
    with pytest.raises(ValueError, match="sample_rate / 6"):
        ToneConfig(fmax_hz=3000.0)
    with pytest.raises(ValueError, match="fmin_hz"):
        ToneConfig(fmin_hz=500.0, fmax_hz=400.0)
    with pytest.raises(ValueError, match="indices"):
        sample_tone_factors(rng, 3, ToneConfig(), waveform=np.array([0, 1, 4]))
