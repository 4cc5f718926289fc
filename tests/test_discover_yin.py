"""YIN against the true pitch of synthetic tones and against librosa.yin; the audio F0 factor against
the CQT-domain one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csi_training.discover.factors import cqt_f0_factor
from csi_training.discover.yin import audio_f0_factor, yin

librosa = pytest.importorskip("librosa")

SR = 16000


def harmonic_tone(
    f0: float, seconds: float, rng: np.random.Generator, n_harmonics: int = 5, falling: bool = False
) -> np.ndarray:
    """A tone of random harmonic gains (``falling``: the fundamental the loudest, 1, 1/2, 1/4, ...)."""
    t = np.arange(int(seconds * SR)) / SR
    gains = 0.5 ** np.arange(n_harmonics) if falling else rng.uniform(0.2, 1.0, n_harmonics)
    phases = rng.uniform(0, 2 * np.pi, n_harmonics)
    tone = sum(g * np.sin(2 * np.pi * f0 * (h + 1) * t + p) for h, (g, p) in enumerate(zip(gains, phases)))
    return (0.3 * tone / np.abs(tone).max()).astype(np.float64)


@pytest.mark.parametrize("frame_length", [1024, 2048])
def test_yin_finds_the_pitch_of_tones_like_librosa(rng: np.random.Generator, frame_length: int) -> None:
    # up to 500 Hz: higher, a period of few samples falls between integer lags and YIN (librosa's
    # too) can jump an octave down, which is the algorithm's behaviour, not what is tested here
    for _ in range(3):
        f0 = float(np.exp(rng.uniform(np.log(70.0), np.log(500.0))))
        y = harmonic_tone(f0, 0.5, rng) + 0.002 * rng.standard_normal(SR // 2)
        ours, aperiodicity = yin(y, SR, fmin=60.0, fmax=1500.0, frame_length=frame_length)
        ref = librosa.yin(y, fmin=60.0, fmax=1500.0, sr=SR, frame_length=frame_length)
        assert ours.shape == ref.shape
        inner = slice(2, -2)  # frames that overlap the zero padding are not comparable
        cents = 1200 * np.abs(np.log2(ours[inner] / f0))
        assert np.median(cents) < 5 and (cents < 30).mean() > 0.95, (f0, cents)
        agree = 1200 * np.abs(np.log2(ours[inner] / ref[inner]))
        assert np.median(agree) < 5, (f0, agree)
        assert np.median(aperiodicity[inner]) < 0.1


def test_yin_difference_function_matches_a_naive_sum(rng: np.random.Generator) -> None:
    """With threshold 0 every frame takes the global minimum of d'; recompute d' naively and check
    that the chosen lag (before refinement) is its argmin and the aperiodicity its value."""
    y = rng.standard_normal(3000)
    w, hop, fmin, fmax = 512, 256, 80.0, 2000.0
    f0, aperiodicity = yin(y, SR, fmin, fmax, frame_length=w, hop_length=hop, threshold=0.0)
    padded = np.pad(y, w // 2)
    min_lag, max_lag = int(np.floor(SR / fmax)), int(np.ceil(SR / fmin))
    for t in range(len(f0)):
        frame = padded[t * hop : t * hop + w]
        d = np.array([np.sum((frame[: w - tau] - frame[tau:]) ** 2) for tau in range(max_lag + 1)])
        cmnd = np.ones_like(d)
        cmnd[1:] = d[1:] * np.arange(1, max_lag + 1) / np.cumsum(d[1:])
        lag = min_lag + int(np.argmin(cmnd[min_lag : max_lag + 1]))
        assert aperiodicity[t] == pytest.approx(cmnd[lag], rel=1e-7, abs=1e-9)
        assert abs(SR / f0[t] - lag) <= 1.0


def test_audio_and_cqt_f0_factors_agree_on_a_melody(rng: np.random.Generator) -> None:
    """When the fundamental is the loudest partial, the CQT's dominant bin is the pitch YIN finds (with
    a loud upper partial the CQT tracker follows that partial: its documented limitation)."""
    from csi_training.frontends import frontend_from_dict

    midi = rng.integers(48, 72, size=6)
    rest = np.zeros(int(0.2 * SR))  # detached notes: frames that mix two notes are not what is tested
    y = np.concatenate(
        [np.concatenate([harmonic_tone(440.0 * 2 ** ((m - 69) / 12), 0.6, rng, 3, True), rest]) for m in midi]
    )
    audio = audio_f0_factor(y, SR)
    frontend = frontend_from_dict(
        {"kind": "cqt", "sample_rate": SR, "hop_length": 640, "n_bins": 84, "pool": 5}
    )
    with torch.no_grad():
        feats = frontend(torch.from_numpy(y.astype(np.float32))[None])
    cqt = cqt_f0_factor(feats, 12, 32.703).numpy()[0]
    truth = (midi.mean() - 24) / 12  # octaves above C1 (MIDI 24)
    assert audio[0] == pytest.approx(truth, abs=0.5 / 12) and cqt[0] == pytest.approx(truth, abs=0.5 / 12)
    for profile in (audio[4:], cqt[4:]):
        assert profile[np.unique(midi % 12)].sum() >= 0.95
    assert 0.6 < audio[3] < 0.9 and 0.6 < cqt[3] < 0.9  # the rests are unvoiced


def test_bad_audio_is_refused() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        yin(np.zeros(0), SR)
    with pytest.raises(ValueError, match="NaN"):
        yin(np.array([0.0, np.nan] * 2000), SR)
    with pytest.raises(ValueError, match="fmax"):
        yin(np.zeros(4000), SR, fmin=100.0, fmax=9000.0)
    with pytest.raises(ValueError, match="too short"):
        yin(np.zeros(4000), SR, fmin=20.0, frame_length=512)
    silent = audio_f0_factor(np.zeros(SR), SR)
    assert not silent.any()
