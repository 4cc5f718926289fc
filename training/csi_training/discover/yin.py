"""YIN fundamental-frequency tracking (de Cheveigné & Kawahara 2002) and an F0 factor from audio.

The training batches of the DisCover recipe are CQT crops, whose F0 factor comes from
:mod:`.factors`; this module gives the same factor from a waveform, for sources that have the audio
(and to check the CQT-domain factor against a real pitch tracker).

YIN, per frame of ``frame_length`` samples (frames centred, the signal zero-padded at both ends):

1. difference function ``d(tau) = sum_{j=0}^{W-1-tau} (x_j - x_{j+tau})^2`` (W = frame length),
   computed with one FFT autocorrelation and two cumulative energy sums;
2. cumulative-mean-normalised difference ``d'(0) = 1``, ``d'(tau) = d(tau) * tau / sum_{k<=tau} d(k)``;
3. absolute threshold: the first lag in [sr / fmax, sr / fmin] where ``d'`` dips below
   ``threshold``, followed down to its local minimum; the global minimum in the range if none dips;
4. parabolic interpolation of ``d'`` around that lag; ``f0 = sr / lag``.

``d'`` at the chosen lag (the aperiodicity, 0 for a perfectly periodic frame) is returned with f0, so
that callers can mark frames unvoiced.
"""

from __future__ import annotations

import math

import numpy as np

from csi_training.discover.factors import F0_DIM

__all__ = ["audio_f0_factor", "yin"]

#: frames whose aperiodicity exceeds this, or whose RMS is below SILENCE_RMS, count as unvoiced
VOICED_APERIODICITY = 0.3
SILENCE_RMS = 1e-4
_A4_MIDI, _A4_HZ = 69.0, 440.0


def _check(
    waveform: np.ndarray, sample_rate: float, fmin: float, fmax: float, frame_length: int
) -> np.ndarray:
    x = np.asarray(waveform, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"waveform must be a non-empty 1-D array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("waveform holds NaN or Inf samples")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0 Hz, got {sample_rate}")
    if not 0 < fmin < fmax <= sample_rate / 2:
        raise ValueError(
            f"need 0 < fmin < fmax <= sample_rate / 2, got fmin={fmin}, fmax={fmax}, sr={sample_rate}"
        )
    if math.ceil(sample_rate / fmin) >= frame_length:
        raise ValueError(
            f"frame_length={frame_length} samples is too short for fmin={fmin} Hz "
            f"(needs > {math.ceil(sample_rate / fmin)})"
        )
    return x


def _frames(x: np.ndarray, frame_length: int, hop_length: int) -> np.ndarray:
    """Centred frames float64 [n_frames, frame_length] of the zero-padded signal."""
    padded = np.pad(x, frame_length // 2)
    n_frames = 1 + (padded.size - frame_length) // hop_length
    index = np.arange(frame_length)[None, :] + hop_length * np.arange(n_frames)[:, None]
    return padded[index]


def yin(
    waveform: np.ndarray,
    sample_rate: float,
    fmin: float = 65.0,
    fmax: float = 2093.0,
    frame_length: int = 2048,
    hop_length: int | None = None,
    threshold: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """waveform [n] at ``sample_rate`` Hz → (f0 in Hz [n_frames], aperiodicity [n_frames]), float64.

    Frame t is centred on sample ``t * hop_length`` (default hop: frame_length // 4). f0 lies in
    [fmin, fmax] up to the parabolic refinement; silent frames get the global-minimum lag like any
    other (use the aperiodicity or the frame energy to gate them).
    """
    x = _check(waveform, sample_rate, fmin, fmax, frame_length)
    hop = hop_length or frame_length // 4
    frames = _frames(x, frame_length, hop)
    w = frame_length
    min_lag = max(1, math.floor(sample_rate / fmax))
    max_lag = min(math.ceil(sample_rate / fmin), w - 1)
    lags = np.arange(max_lag + 1)

    n_fft = 1 << (2 * w - 1).bit_length()
    spectrum = np.fft.rfft(frames, n_fft, axis=1)
    acf = np.fft.irfft(spectrum * np.conj(spectrum), n_fft, axis=1)[:, : max_lag + 1]
    energy = np.concatenate([np.zeros((frames.shape[0], 1)), np.cumsum(frames**2, axis=1)], axis=1)
    head = energy[:, w - lags]  # sum_{j < W - tau} x_j^2
    tail = energy[:, w : w + 1] - energy[:, lags]  # sum_{j >= tau} x_j^2
    diff = np.maximum(head + tail - 2.0 * acf, 0.0)

    cmnd = np.ones_like(diff)
    running = np.cumsum(diff[:, 1:], axis=1)
    cmnd[:, 1:] = diff[:, 1:] * lags[1:] / np.maximum(running, np.finfo(np.float64).tiny)

    f0 = np.empty(frames.shape[0])
    aperiodicity = np.empty(frames.shape[0])
    for t, row in enumerate(cmnd):
        below = np.flatnonzero(row[min_lag : max_lag + 1] < threshold)
        if below.size:
            lag = min_lag + int(below[0])
            while lag < max_lag and row[lag + 1] < row[lag]:
                lag += 1
        else:
            lag = min_lag + int(np.argmin(row[min_lag : max_lag + 1]))
        shift = 0.0
        if 0 < lag < max_lag:
            a = row[lag + 1] + row[lag - 1] - 2.0 * row[lag]
            b = 0.5 * (row[lag + 1] - row[lag - 1])
            if abs(b) < abs(a):  # the parabola's vertex lies within one lag of this one
                shift = -b / a
        f0[t] = sample_rate / (lag + shift)
        aperiodicity[t] = row[lag]
    return f0, aperiodicity


def audio_f0_factor(
    waveform: np.ndarray,
    sample_rate: float,
    fmin: float = 65.0,
    fmax: float = 2093.0,
    reference_hz: float = 32.703,
    frame_length: int = 2048,
    hop_length: int | None = None,
) -> np.ndarray:
    """The f0 factor of :func:`csi_training.discover.factors.cqt_f0_factor` from audio, via YIN.

    float64 [F0_DIM]: contour mean, std and mean |delta| in octaves above ``reference_hz`` (C1, the
    CQT's fmin, so the two factors share units), voiced fraction, and the 12-class pitch-class profile
    weighted by frame RMS. Voiced frames: aperiodicity <= VOICED_APERIODICITY and RMS >= SILENCE_RMS.
    """
    f0, aperiodicity = yin(waveform, sample_rate, fmin, fmax, frame_length, hop_length)
    frames = _frames(np.asarray(waveform, np.float64), frame_length, hop_length or frame_length // 4)
    rms = np.sqrt((frames**2).mean(axis=1))
    voiced = (aperiodicity <= VOICED_APERIODICITY) & (rms >= SILENCE_RMS)
    out = np.zeros(F0_DIM)
    out[3] = voiced.mean()
    if not voiced.any():
        return out
    octaves = np.log2(f0 / reference_hz)
    out[0], out[1] = octaves[voiced].mean(), octaves[voiced].std()
    both = voiced[1:] & voiced[:-1]
    out[2] = np.abs(np.diff(octaves))[both].mean() if both.any() else 0.0
    pitch_class = np.round(_A4_MIDI + 12.0 * np.log2(f0[voiced] / _A4_HZ)).astype(np.int64) % 12
    profile = np.bincount(pitch_class, weights=rms[voiced], minlength=12)
    out[4:] = profile / max(profile.sum(), 1e-300)
    return out
