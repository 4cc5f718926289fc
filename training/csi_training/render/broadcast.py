"""Broadcast degradations of music: what a radio or TV chain does to a recording before a monitor hears it.

One place for the degradations ``csi demo`` puts in its stream and the robustness evaluation
(``csi_training.experiments.robustness``) measures:

- ``clean``: nothing but the level;
- ``speed``: played 3-4 % fast or slow (resampling: tempo and pitch change together, as a
  broadcaster's speed-up to fit a slot does);
- ``pitch``: pitch shifted by 1-2 semitones up or down, tempo kept (:func:`pitch_shift`: our
  phase-vocoder time stretch followed by resampling);
- ``eq``: a spectral tilt of ±6 dB/octave, half the time with a 3-5 kHz low-pass;
- ``compression``: broadcast dynamic-range compression (:func:`compress`: a feed-forward
  compressor with threshold, ratio, attack/release and make-up gain);
- ``noise``: white or pink noise at 5-15 dB SNR;
- ``mp3``: a real MP3 round trip at 64 kbit/s through ffmpeg (LAME);
- ``codec_approx``: the cheap 64 kbit/s codec stand-in of the online renderer (no subprocess);
- ``voice_over``: a voice talking over the music (speech-shaped babble 0-6 dB under it).

Waveforms are float32 [n] mono at ``sample_rate`` Hz (16 kHz by default); levels in dBFS (RMS).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
from scipy import signal

from csi_training.render import effects

__all__ = [
    "CHAIN_LENGTH",
    "CHAIN_ORDER",
    "COMPRESSION_CONTROL_PERIOD_S",
    "DEGRADATIONS",
    "MUSIC_DBFS",
    "SAMPLE_RATE",
    "compress",
    "compressor_gain_db",
    "degrade",
    "degrade_chain",
    "mp3",
    "pitch_shift",
    "random_chain",
    "resample_ratio",
    "speed_change",
    "time_stretch",
]

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # Hz, the default model's rate
MUSIC_DBFS = -20.0  # RMS level every degraded item is returned at
#: degradations a broadcast chain (:func:`random_chain`) draws from, in the order a broadcast applies them
CHAIN_ORDER = ("speed", "pitch", "eq", "compression", "voice_over", "noise", "mp3")
CHAIN_LENGTH = (1, 3)  # degradations in a chain (uniform, inclusive)

#: the broadcast degradations :func:`degrade` knows
DEGRADATIONS = (
    "clean",
    "speed",
    "pitch",
    "eq",
    "compression",
    "noise",
    "mp3",
    "codec_approx",
    "voice_over",
)

SPEED_FACTOR = (1.03, 1.04)  # playback speed-up (or its inverse, slow-down), uniform
PITCH_SEMITONES = (1.0, 2.0)  # pitch shift magnitude, semitones, uniform, either direction
EQ_TILT_DB_PER_OCTAVE = 6.0  # tilt around 1 kHz, uniform in ±this
EQ_LOWPASS_HZ = (3000.0, 5000.0)  # cut-off of the low-pass applied half the time
NOISE_SNR_DB = (5.0, 15.0)
VOICE_UNDER_DB = (0.0, 6.0)  # how far the voice sits below the music (power ratio, dB)
MP3_KBPS = 64  # kbit/s
# broadcast compression: threshold relative to the item's RMS level (dB), ratio, attack and
# release times (ms)
COMPRESSION_THRESHOLD_DB = (-6.0, 0.0)
COMPRESSION_RATIO = (3.0, 8.0)
COMPRESSION_ATTACK_MS = (2.0, 10.0)
COMPRESSION_RELEASE_MS = (50.0, 250.0)
#: the compressor's gain is computed once per this many seconds (then interpolated per sample)
COMPRESSION_CONTROL_PERIOD_S = 0.0005
_LEVEL_FLOOR = 1e-10  # linear amplitude standing for silence in the compressor's level detector

PV_FRAME_S = 0.064  # phase-vocoder STFT frame, seconds (rounded up to a power of two of samples)
PV_OVERLAP = 4  # frames per frame length (hop = frame / PV_OVERLAP)
RESAMPLE_MAX_DENOMINATOR = 1000  # rational approximation of resampling ratios (relative error < 1e-6)


def _check(x: np.ndarray, sample_rate: int) -> np.ndarray:
    x = effects._check(x, sample_rate)
    if len(x) == 0:
        raise ValueError("cannot degrade an empty waveform")
    return x


# ---------------------------------------------------------------------------------------------
# Resampling, speed and pitch


def resample_ratio(x: np.ndarray, ratio: float) -> np.ndarray:
    """x (float [n]) resampled to about round(n · ratio) samples (polyphase, ratio as a fraction
    of denominator ≤ RESAMPLE_MAX_DENOMINATOR): played at the original rate it lasts ratio times
    as long, and every frequency is divided by ratio."""
    if not ratio > 0 or not math.isfinite(ratio):
        raise ValueError(f"resampling ratio must be a positive number, got {ratio}")
    frac = Fraction(ratio).limit_denominator(RESAMPLE_MAX_DENOMINATOR)
    if frac.numerator == 0:
        raise ValueError(f"resampling ratio {ratio} is too small")
    if frac == 1:
        return np.asarray(x, dtype=np.float32)
    return signal.resample_poly(x, frac.numerator, frac.denominator).astype(np.float32)


def speed_change(x: np.ndarray, factor: float) -> np.ndarray:
    """x played ``factor`` times as fast (> 1: faster and higher; tempo and pitch change together):
    float32 [ceil(n · 1000 / round(1000 · factor))] (the factor is taken in thousandths)."""
    if not factor > 0:
        raise ValueError(f"speed factor must be > 0, got {factor}")
    # the demo's historical rounding: a ratio in thousandths
    return signal.resample_poly(x, 1000, round(1000 * factor)).astype(np.float32)


def _pv_sizes(sample_rate: int) -> tuple[int, int]:
    n_fft = 1 << max(5, math.ceil(math.log2(PV_FRAME_S * sample_rate)))
    return n_fft, n_fft // PV_OVERLAP


def _stft(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Hann-windowed STFT of x padded by n_fft // 2 zeros each side: complex128 [n_fft // 2 + 1, T]."""
    padded = np.pad(x.astype(np.float64), n_fft // 2)
    n_frames = 1 + max(0, (len(padded) - n_fft) // hop)
    padded = np.pad(padded, (0, max(0, (n_frames - 1) * hop + n_fft - len(padded))))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:n_frames]
    return np.fft.rfft(frames * signal.get_window("hann", n_fft), axis=1).T


def _istft(spec: np.ndarray, n_fft: int, hop: int, length: int) -> np.ndarray:
    """Weighted overlap-add inverse of `_stft` (window-squared normalisation), trimmed to length."""
    window = signal.get_window("hann", n_fft)
    frames = np.fft.irfft(spec.T, n=n_fft, axis=1) * window
    n_frames = frames.shape[0]
    total = (n_frames - 1) * hop + n_fft
    out = np.zeros(total)
    norm = np.zeros(total)
    for k in range(PV_OVERLAP):  # overlap-add in PV_OVERLAP passes of non-overlapping frames
        sel = frames[k::PV_OVERLAP]
        if len(sel) == 0:
            continue
        block = sel.reshape(-1)
        start = k * hop
        stop = min(total, start + len(block))
        out[start:stop] += block[: stop - start]
        norm[start:stop] += np.tile(window**2, len(sel))[: stop - start]
    out = out / np.maximum(norm, 1e-8)
    y = out[n_fft // 2 : n_fft // 2 + length]
    return np.pad(y, (0, length - len(y)))


def time_stretch(x: np.ndarray, rate: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """x played ``rate`` times as fast with its pitch kept (phase vocoder): float32 [round(n / rate)].

    The STFT (Hann, PV_FRAME_S frames, PV_OVERLAP-fold overlap) is read at fractional frame steps
    of ``rate``; magnitudes are interpolated between neighbouring frames and each bin's phase
    advances by its measured instantaneous frequency (the expected advance plus the wrapped
    deviation between the two frames), so sinusoids keep their frequency.
    """
    x = effects._check(x, sample_rate)
    if not rate > 0 or not math.isfinite(rate):
        raise ValueError(f"time-stretch rate must be a positive number, got {rate}")
    length = round(len(x) / rate)
    if len(x) == 0 or length == 0:
        return np.zeros(length, np.float32)
    n_fft, hop = _pv_sizes(sample_rate)
    spec = _stft(x, n_fft, hop)
    n_bins, n_frames = spec.shape
    steps = np.arange(0.0, n_frames, rate)
    # magnitudes and phases of the input frames, and two silent frames past the end
    magnitude = np.concatenate([np.abs(spec), np.zeros((n_bins, 2))], axis=1)
    angle = np.concatenate([np.angle(spec), np.zeros((n_bins, 2))], axis=1)
    k = steps.astype(np.int64)
    alpha = steps - k
    mag = (1.0 - alpha) * magnitude[:, k] + alpha * magnitude[:, k + 1]
    advance = 2.0 * np.pi * hop * np.arange(n_bins) / n_fft  # expected phase advance per hop
    # each input frame's measured advance over the next: expected + wrapped deviation
    deviation = angle[:, 1:] - angle[:, :-1] - advance[:, None]
    deviation -= 2.0 * np.pi * np.round(deviation / (2.0 * np.pi))
    increments = (advance[:, None] + deviation)[:, k[:-1]]
    phase = np.empty_like(mag)
    phase[:, 0] = angle[:, 0]
    np.cumsum(increments, axis=1, out=phase[:, 1:])
    phase[:, 1:] += angle[:, :1]
    return _istft(mag * np.exp(1j * phase), n_fft, hop, length).astype(np.float32)


def pitch_shift(x: np.ndarray, sample_rate: int, semitones: float) -> np.ndarray:
    """x shifted by ``semitones`` (fractional allowed, > 0 up) with its tempo and length kept:
    float32 [n]. A phase-vocoder time stretch by 2^(semitones/12) then a resampling back to the
    original duration (every frequency × 2^(semitones/12))."""
    x = effects._check(x, sample_rate)
    if not math.isfinite(semitones):
        raise ValueError(f"semitones must be finite, got {semitones}")
    if semitones == 0 or len(x) == 0:
        return x.copy()
    factor = 2.0 ** (semitones / 12.0)
    y = resample_ratio(time_stretch(x, 1.0 / factor, sample_rate), 1.0 / factor)
    if len(y) >= len(x):
        return y[: len(x)]
    return np.pad(y, (0, len(x) - len(y)))


# ---------------------------------------------------------------------------------------------
# Dynamic range compression


def compressor_gain_db(level_db: np.ndarray, threshold_db: float, ratio: float) -> np.ndarray:
    """The compressor's static curve (hard knee): gain in dB (≤ 0) for input levels in dBFS.

    Below the threshold the gain is 0; above, the output level is threshold + (level -
    threshold) / ratio, i.e. the gain is -(level - threshold)·(1 - 1/ratio).
    """
    over = np.maximum(np.asarray(level_db, dtype=np.float64) - threshold_db, 0.0)
    return -over * (1.0 - 1.0 / ratio)


def compress(
    x: np.ndarray,
    sample_rate: int,
    threshold_db: float,
    ratio: float,
    attack_ms: float,
    release_ms: float,
    makeup_db: float = 0.0,
    control_samples: int | None = None,
) -> np.ndarray:
    """Feed-forward dynamic-range compression of x (float [n]) → float32 [n].

    Level detector: the peak |x| in dBFS (per control period). Gain computer:
    :func:`compressor_gain_db`. The gain reduction r = -gain (dB, ≥ 0) is smoothed by a one-pole
    filter in the log domain that follows rising reduction with the attack time constant and
    falling reduction with the release time constant (r ← α·r + (1 - α)·target, α =
    exp(-period / time constant)). Output: x · 10^((makeup_db - r) / 20).

    control_samples: the gain is computed every this many samples (the block's peak level) and
    linearly interpolated in between (default: COMPRESSION_CONTROL_PERIOD_S); 1 is the exact
    per-sample compressor (slow: a Python loop over samples).
    """
    x = effects._check(x, sample_rate)
    if not ratio >= 1 or not math.isfinite(ratio):
        raise ValueError(f"ratio must be >= 1, got {ratio}")
    if not attack_ms > 0 or not release_ms > 0:
        raise ValueError(f"attack and release times must be > 0 ms, got {attack_ms}, {release_ms}")
    if not (math.isfinite(threshold_db) and math.isfinite(makeup_db)):
        raise ValueError(f"threshold and make-up gain must be finite, got {threshold_db}, {makeup_db}")
    block = control_samples
    if block is None:
        block = max(1, round(COMPRESSION_CONTROL_PERIOD_S * sample_rate))
    if block < 1:
        raise ValueError(f"control_samples must be >= 1, got {control_samples}")
    n = len(x)
    if n == 0:
        return x
    n_blocks = -(-n // block)
    peaks = np.abs(np.pad(x, (0, n_blocks * block - n))).reshape(n_blocks, block).max(axis=1)
    level_db = 20.0 * np.log10(np.maximum(peaks.astype(np.float64), _LEVEL_FLOOR))
    target = (-compressor_gain_db(level_db, threshold_db, ratio)).tolist()
    a_att = math.exp(-block / (attack_ms * 1e-3 * sample_rate))
    a_rel = math.exp(-block / (release_ms * 1e-3 * sample_rate))
    reduction = [0.0] * n_blocks
    r = 0.0
    for b, t in enumerate(target):  # the smoothing switches filters on its own state: a loop
        r = a_att * r + (1.0 - a_att) * t if t > r else a_rel * r + (1.0 - a_rel) * t
        reduction[b] = r
    red = np.asarray(reduction)
    if block > 1:
        # the reduction reached at the end of each block, ramped linearly across the block
        ends = np.arange(1, n_blocks + 1) * block - 1
        red = np.interp(np.arange(n), np.concatenate([[-1], ends]), np.concatenate([[0.0], red]))
    else:
        red = red[:n]
    return (x * 10.0 ** ((makeup_db - red) / 20.0)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Codec


def mp3(x: np.ndarray, sample_rate: int, kbps: int = MP3_KBPS) -> np.ndarray:
    """An MP3 round trip at ``kbps`` through ffmpeg (LAME), aligned and of x's length: float32 [n].

    Raises effects.FFmpegError (naming ffmpeg) when ffmpeg is not on PATH or fails.
    """
    x = _check(x, sample_rate)
    return effects.mp3_roundtrip(effects.limit_peak(x), sample_rate, kbps)


# ---------------------------------------------------------------------------------------------
# The degradations


def _normalize(x: np.ndarray, dbfs: float) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return x if rms == 0 else (x * (10.0 ** (dbfs / 20.0) / rms)).astype(np.float32)


def degrade(
    x: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    sample_rate: int = SAMPLE_RATE,
    level_dbfs: float = MUSIC_DBFS,
) -> np.ndarray:
    """A broadcast degradation of music x (float32 [n] at sample_rate Hz), returned at level_dbfs
    RMS: float32 [n] (``speed``: [≈ n / factor]). kind: one of DEGRADATIONS (see the module
    docstring); its random settings are drawn from rng.

    Raises ValueError for an unknown kind or empty, silent or non-finite audio; effects.FFmpegError
    for ``mp3`` without ffmpeg.
    """
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {kind!r}; expected one of {', '.join(DEGRADATIONS)}")
    x = _check(x, sample_rate)
    if not np.any(x):
        raise ValueError("cannot degrade silent audio")
    if kind == "clean":
        y = x
    elif kind == "noise":
        y = effects.add_noise(
            x, float(rng.uniform(*NOISE_SNR_DB)), str(rng.choice(["white", "pink"])), sample_rate, rng
        )
    elif kind == "eq":
        lowpass = float(rng.uniform(*EQ_LOWPASS_HZ)) if rng.random() < 0.5 else 0.0
        fir = effects.eq_fir(
            sample_rate, float(rng.uniform(-EQ_TILT_DB_PER_OCTAVE, EQ_TILT_DB_PER_OCTAVE)), lowpass
        )
        y = signal.fftconvolve(x, fir, mode="same").astype(np.float32)
    elif kind == "codec_approx":
        y = effects.codec_approx(x, sample_rate, MP3_KBPS)
    elif kind == "mp3":
        y = mp3(x, sample_rate, MP3_KBPS)
    elif kind == "speed":
        factor = float(rng.uniform(*SPEED_FACTOR)) * (1 if rng.random() < 0.5 else -1)
        y = speed_change(x, factor if factor > 0 else 1.0 / -factor)
    elif kind == "pitch":
        semitones = float(rng.uniform(*PITCH_SEMITONES)) * (1 if rng.random() < 0.5 else -1)
        y = pitch_shift(x, sample_rate, semitones)
    elif kind == "compression":
        level = effects.rms_db(x)
        y = compress(
            x,
            sample_rate,
            threshold_db=level + float(rng.uniform(*COMPRESSION_THRESHOLD_DB)),
            ratio=float(rng.uniform(*COMPRESSION_RATIO)),
            attack_ms=float(rng.uniform(*COMPRESSION_ATTACK_MS)),
            release_ms=float(rng.uniform(*COMPRESSION_RELEASE_MS)),
        )
    else:  # voice_over
        talk = effects.make_noise("babble", len(x), sample_rate, rng)
        power = float(np.mean(np.square(x, dtype=np.float64)))
        y = (x + talk * np.sqrt(power / 10.0 ** (float(rng.uniform(*VOICE_UNDER_DB)) / 10.0))).astype(
            np.float32
        )
    return _normalize(y, level_dbfs)


def random_chain(rng: np.random.Generator) -> tuple[str, ...]:
    """A random broadcast chain: CHAIN_LENGTH distinct degradations of CHAIN_ORDER, in that order."""
    n = int(rng.integers(CHAIN_LENGTH[0], CHAIN_LENGTH[1] + 1))
    return tuple(CHAIN_ORDER[i] for i in sorted(rng.choice(len(CHAIN_ORDER), n, replace=False)))


def degrade_chain(
    x: np.ndarray,
    chain: Sequence[str],
    rng: np.random.Generator,
    sample_rate: int = SAMPLE_RATE,
    level_dbfs: float = MUSIC_DBFS,
) -> np.ndarray:
    """x under each degradation of ``chain`` in turn (:func:`degrade`, settings drawn from rng)."""
    for kind in chain:
        x = degrade(x, kind, rng, sample_rate, level_dbfs)
    return x
