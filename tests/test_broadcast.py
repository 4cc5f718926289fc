"""Broadcast degradations (csi_training.render.broadcast): pitch shift against librosa, the
compressor against a naive per-sample loop and its static curve, the MP3 round trip, degrade()."""

from __future__ import annotations

import math

import numpy as np
import pytest

from csi_training.render import broadcast, effects

SR = 16000
needs_ffmpeg = pytest.mark.skipif(effects.shutil.which("ffmpeg") is None, reason="ffmpeg not on PATH")


def _spectrum(y: np.ndarray, sr: int = SR) -> tuple[np.ndarray, np.ndarray]:
    mag = np.abs(np.fft.rfft(y.astype(np.float64) * np.hanning(len(y))))
    return np.fft.rfftfreq(len(y), 1 / sr), mag


def _peaks(y: np.ndarray, n: int, sr: int = SR) -> np.ndarray:
    """Frequencies (Hz, ascending) of the n strongest spectral peaks (local maxima)."""
    freqs, mag = _spectrum(y, sr)
    local = np.flatnonzero((mag[1:-1] > mag[:-2]) & (mag[1:-1] >= mag[2:])) + 1
    best = local[np.argsort(mag[local])[::-1][:n]]
    return np.sort(freqs[best])


def _chord(freqs: list[float], seconds: float, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (sum(np.sin(2 * np.pi * f * t) for f in freqs) * (0.6 / len(freqs))).astype(np.float32)


# --------------------------------------------------------------------------------- pitch shift


@pytest.mark.parametrize("n_notes", [1, 3])
def test_pitch_shift_moves_pitch_by_the_ratio_like_librosa(rng: np.random.Generator, n_notes: int) -> None:
    librosa = pytest.importorskip("librosa")
    seconds = float(rng.uniform(1.5, 2.5))
    semitones = float(rng.uniform(1.0, 2.0)) * rng.choice([-1, 1])
    # notes at least 3 semitones apart, between 150 Hz and 1.5 kHz
    base = float(rng.uniform(150, 300))
    notes = [base * 2 ** (k / 12) for k in sorted(rng.choice(np.arange(0, 28, 4), n_notes, replace=False))]
    x = _chord(notes, seconds)
    ours = broadcast.pitch_shift(x, SR, semitones)
    theirs = librosa.effects.pitch_shift(x, sr=SR, n_steps=semitones)
    assert ours.dtype == np.float32 and ours.shape == x.shape  # duration kept
    ratio = 2 ** (semitones / 12)
    resolution = 2.0 / seconds  # Hz: a few FFT bins
    expected = np.array(notes) * ratio
    np.testing.assert_allclose(_peaks(ours, n_notes), expected, atol=resolution)
    np.testing.assert_allclose(_peaks(ours, n_notes), _peaks(theirs, n_notes), atol=resolution)
    # same spectral shape as librosa's, and the energy is kept (away from the edges)
    mid = slice(len(x) // 4, 3 * len(x) // 4)
    _, a = _spectrum(ours[mid])
    _, b = _spectrum(theirs[mid])
    assert np.corrcoef(a, b)[0, 1] > 0.98
    assert np.std(ours[mid]) == pytest.approx(np.std(x[mid]), rel=0.1)


def test_pitch_shift_zero_and_edge_cases(rng: np.random.Generator) -> None:
    x = rng.standard_normal(SR).astype(np.float32) * 0.1
    np.testing.assert_array_equal(broadcast.pitch_shift(x, SR, 0.0), x)
    short = x[:100]  # shorter than one STFT frame
    assert broadcast.pitch_shift(short, SR, 1.0).shape == short.shape
    assert broadcast.pitch_shift(np.zeros(0, np.float32), SR, 1.0).shape == (0,)
    with pytest.raises(ValueError, match="NaN"):
        broadcast.pitch_shift(np.full(1000, np.nan, np.float32), SR, 1.0)
    with pytest.raises(ValueError, match="finite"):
        broadcast.pitch_shift(x, SR, math.inf)


@pytest.mark.parametrize("rate", [0.8, 1.25])
def test_time_stretch_keeps_pitch_and_scales_duration(rng: np.random.Generator, rate: float) -> None:
    librosa = pytest.importorskip("librosa")
    f0 = float(rng.uniform(200, 900))
    x = _chord([f0], float(rng.uniform(1.0, 2.0)))
    y = broadcast.time_stretch(x, rate, SR)
    assert len(y) == round(len(x) / rate) == len(librosa.effects.time_stretch(x, rate=rate))
    assert _peaks(y, 1)[0] == pytest.approx(f0, abs=2.0 * SR / len(y))
    with pytest.raises(ValueError, match="rate"):
        broadcast.time_stretch(x, 0.0, SR)


def test_speed_change_moves_tempo_and_pitch_together(rng: np.random.Generator) -> None:
    factor = float(rng.uniform(1.02, 1.05))
    x = _chord([440.0], 2.0)
    y = broadcast.speed_change(x, factor)
    assert len(y) == math.ceil(len(x) * 1000 / round(1000 * factor))  # the factor in thousandths
    assert len(y) == pytest.approx(len(x) / factor, rel=1e-3)
    assert _peaks(y, 1)[0] == pytest.approx(440.0 * factor, abs=1.5)


# --------------------------------------------------------------------------------- compressor


def _naive_compressor(
    x: np.ndarray,
    sr: int,
    threshold_db: float,
    ratio: float,
    attack_ms: float,
    release_ms: float,
    makeup_db: float,
    block: int = 1,
) -> np.ndarray:
    """Textbook feed-forward compressor (log-domain attack/release smoothing), per-sample loop in
    float64. block > 1: the level is the peak of each block of `block` samples, the smoothing steps
    once per block, and each sample's gain reduction is ramped linearly from the previous block's
    value to its own block's."""
    a_att = math.exp(-block / (attack_ms / 1000.0 * sr))
    a_rel = math.exp(-block / (release_ms / 1000.0 * sr))
    samples = x.astype(np.float64)
    out = np.zeros(len(x))
    state = previous = 0.0
    for n in range(len(samples)):
        if n % block == 0:
            peak = max(abs(v) for v in samples[n : n + block])
            level = 20.0 * math.log10(max(peak, 1e-10))
            wanted = (level - threshold_db) * (1.0 - 1.0 / ratio) if level > threshold_db else 0.0
            previous = state
            if wanted > state:
                state = a_att * state + (1.0 - a_att) * wanted
            else:
                state = a_rel * state + (1.0 - a_rel) * wanted
        fraction = (n % block + 1) / block
        reduction = previous + fraction * (state - previous)
        out[n] = samples[n] * 10.0 ** ((makeup_db - reduction) / 20.0)
    return out


def _bursty(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Noise with loud and quiet stretches (so the compressor attacks and releases)."""
    n = int(seconds * SR)
    env = np.repeat(10.0 ** (rng.uniform(-40, 0, int(seconds * 20) + 1) / 20.0), SR // 20)[:n]
    return (rng.standard_normal(n) * 0.3 * env).astype(np.float32)


def test_compressor_matches_a_naive_per_sample_loop(rng: np.random.Generator) -> None:
    for seconds in (0.0031, 0.05, float(rng.uniform(0.2, 0.5))):
        x = _bursty(rng, seconds)
        params = dict(
            threshold_db=float(rng.uniform(-30, -10)),
            ratio=float(rng.uniform(1.5, 10)),
            attack_ms=float(rng.uniform(0.5, 10)),
            release_ms=float(rng.uniform(20, 200)),
            makeup_db=float(rng.uniform(0, 6)),
        )
        for block in (1, 3, round(broadcast.COMPRESSION_CONTROL_PERIOD_S * SR)):
            want = _naive_compressor(x, SR, **params, block=block)  # type: ignore[arg-type]
            got = broadcast.compress(x, SR, control_samples=block, **params)  # type: ignore[arg-type]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(
            broadcast.compress(x, SR, **params),  # type: ignore[arg-type]
            broadcast.compress(x, SR, control_samples=8, **params),  # type: ignore[arg-type]
        )


def test_compressor_static_curve(rng: np.random.Generator) -> None:
    threshold, ratio = float(rng.uniform(-30, -15)), float(rng.uniform(2, 8))
    makeup = float(rng.uniform(0, 6))
    levels = np.linspace(-60, 0, 13)
    want = np.where(levels > threshold, threshold + (levels - threshold) / ratio - levels, 0.0)
    np.testing.assert_allclose(broadcast.compressor_gain_db(levels, threshold, ratio), want, atol=1e-12)
    t = np.arange(SR) / SR
    for level in (threshold - 10.0, threshold + 6.0, threshold + 20.0):
        # a steady square wave: its peak level is its level at every sample
        x = (10 ** (level / 20) * np.sign(np.sin(2 * np.pi * 100.0 * t + 0.1))).astype(np.float32)
        y = broadcast.compress(x, SR, threshold, ratio, attack_ms=2.0, release_ms=50.0, makeup_db=makeup)
        settled = 20 * np.log10(np.max(np.abs(y[SR // 2 :])))
        expected = (level if level <= threshold else threshold + (level - threshold) / ratio) + makeup
        assert settled == pytest.approx(expected, abs=0.05)


def test_compressor_rejects_bad_settings() -> None:
    x = np.ones(100, np.float32) * 0.1
    with pytest.raises(ValueError, match="ratio"):
        broadcast.compress(x, SR, -20, 0.5, 5, 50)
    with pytest.raises(ValueError, match="attack"):
        broadcast.compress(x, SR, -20, 4, 0, 50)
    with pytest.raises(ValueError, match="finite"):
        broadcast.compress(x, SR, math.nan, 4, 5, 50)


# --------------------------------------------------------------------------------- MP3


@needs_ffmpeg
def test_mp3_round_trip_is_real_and_aligned(rng: np.random.Generator) -> None:
    x = _chord([float(rng.uniform(200, 800)), float(rng.uniform(900, 1500))], 1.5)
    y = broadcast.mp3(x, SR)
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.corrcoef(x[SR // 10 : -SR // 10], y[SR // 10 : -SR // 10])[0, 1] > 0.95
    assert not np.allclose(x, y, atol=1e-4)  # lossy: not the input back


def test_mp3_without_ffmpeg_names_it(monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(effects.FFmpegError, match="ffmpeg"):
        broadcast.degrade(_chord([440.0], 0.5), "mp3", rng)


# --------------------------------------------------------------------------------- degrade


@pytest.mark.parametrize(
    "kind", [pytest.param(k, marks=needs_ffmpeg) if k == "mp3" else k for k in broadcast.DEGRADATIONS]
)
def test_degrade_each_kind(kind: str, seed: int) -> None:
    x = (_chord([220.0, 330.0, 440.0], 2.0) * np.linspace(0.2, 1.0, 2 * SR)).astype(np.float32)
    y = broadcast.degrade(x, kind, np.random.default_rng(seed))
    assert y.dtype == np.float32 and np.all(np.isfinite(y))
    assert effects.rms_db(y) == pytest.approx(broadcast.MUSIC_DBFS, abs=0.01)
    if kind == "speed":
        assert 0.955 * len(x) < len(y) < 1.045 * len(x) and abs(len(y) - len(x)) > 0.025 * len(x)
    else:
        assert len(y) == len(x)
    scaled = x * (10 ** (broadcast.MUSIC_DBFS / 20) / np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    if kind == "clean":
        np.testing.assert_allclose(y, scaled, rtol=1e-5, atol=1e-7)
    elif kind != "speed":
        assert np.max(np.abs(y - scaled)) > 1e-3
    # reproducible from the generator's state
    np.testing.assert_array_equal(y, broadcast.degrade(x, kind, np.random.default_rng(seed)))


def test_degrade_pitch_keeps_tempo_and_shifts_pitch(rng: np.random.Generator) -> None:
    x = _chord([300.0], 2.0)
    y = broadcast.degrade(x, "pitch", rng)
    shift = 12 * np.log2(_peaks(y, 1)[0] / 300.0)
    assert len(y) == len(x) and 0.9 <= abs(shift) <= 2.1


def test_degrade_bad_input(rng: np.random.Generator) -> None:
    x = _chord([440.0], 0.5)
    with pytest.raises(ValueError, match="unknown degradation 'vinyl'"):
        broadcast.degrade(x, "vinyl", rng)
    with pytest.raises(ValueError, match="silent"):
        broadcast.degrade(np.zeros(1000, np.float32), "noise", rng)
    with pytest.raises(ValueError, match="empty"):
        broadcast.degrade(np.zeros(0, np.float32), "clean", rng)
    with pytest.raises(ValueError, match="NaN"):
        broadcast.degrade(np.array([0.1, np.nan], np.float32), "eq", rng)
    with pytest.raises(ValueError, match="mono"):
        broadcast.degrade(np.zeros((10, 2), np.float32), "eq", rng)


def test_demo_cycles_through_the_shared_degradations(monkeypatch: pytest.MonkeyPatch) -> None:
    from csi_training import demo

    assert set(demo.DEGRADATIONS) <= set(broadcast.DEGRADATIONS)
    assert {"pitch", "compression", "mp3"} <= set(demo.DEGRADATIONS)
    monkeypatch.setenv("PATH", "")
    fallback = demo._degradation_cycle()
    assert "mp3" not in fallback and "codec_approx" in fallback and len(fallback) == len(demo.DEGRADATIONS)
