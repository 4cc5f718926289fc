"""Filter design for the frontends, in float64 numpy: windows, CQT kernels, the decimation lowpass,
DFT kernels, the mel filterbank and the constant-Q → chroma folding matrix.

Everything here is a pure function of the frontend parameters; the torch modules turn the arrays
into (non-persistent) buffers, so a checkpoint never carries them and an export always re-derives
them from the pinned config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Cosine-sum windows w(t) = sum_j a_j cos(2 pi j t / L) for |t| < L/2 (centred form).
# Sampled at integer offsets of an even length they equal the "periodic" (fftbins=True) windows
# of scipy/librosa.
WINDOW_COEFFS: dict[str, tuple[float, ...]] = {
    "hann": (0.5, 0.5),
    "hamming": (0.54, 0.46),
    "blackman": (0.42, 0.5, 0.08),
}
# Windows that vanish at their ends: sampled at any rate they describe the same continuous-time
# filter, which the multi-rate CQT relies on (hamming's 0.08 pedestal would not).
TAPERED_WINDOWS = ("hann", "blackman")
# Half width of the main lobe of each window's spectrum, in bins of 1/L.
WINDOW_MAINLOBE_HALF_WIDTH: dict[str, float] = {"hann": 2.0, "hamming": 2.0, "blackman": 3.0}

C1_HZ = 440.0 * 2.0 ** (-45 / 12)  # 32.703... Hz, MIDI note 24

# Decimation by 2 (multi-rate CQT): a Kaiser-windowed half-band sinc. An octave runs at a rate r only
# if the main lobe of its highest bin ends below DECIMATED_BAND_FRACTION * r; the lowpass is then flat
# to within 2e-6 over that band (< 0.15 of the input rate) and attenuates everything that aliases
# onto it (> 0.35 of the input rate) by more than 110 dB.
DECIMATED_BAND_FRACTION = 0.3
DECIMATION_HALF_TAPS = 24
DECIMATION_KAISER_BETA = 12.0
# Output samples computed per step of the strided decimation conv (see decimation_phase_kernel).
DECIMATION_BLOCK = 16


def window_enbw(window: str) -> float:
    """Equivalent noise bandwidth of a window, in bins (hann: 1.5)."""
    w = centred_window(window, 4096.0, np.arange(-2048, 2048))
    return float(len(w) * np.sum(w**2) / np.sum(w) ** 2)


def centred_window(window: str, length: float, offsets: np.ndarray) -> np.ndarray:
    """A cosine-sum window of (possibly fractional) length `length` samples, centred at offset 0,
    evaluated at integer `offsets`; zero where |offset| >= length / 2."""
    coeffs = WINDOW_COEFFS[window]
    t = np.asarray(offsets, dtype=np.float64)
    w = np.zeros_like(t)
    for j, a in enumerate(coeffs):
        w += a * np.cos(2.0 * np.pi * j * t / length)
    w[np.abs(t) >= length / 2.0] = 0.0
    return w


def periodic_window(window: str, length: int) -> np.ndarray:
    """The periodic ("fftbins") window of `length` samples as used for an STFT frame: index i holds
    the centred window at offset i - length/2 (equal to scipy.signal.get_window(window, length))."""
    if length == 1:
        return np.ones(1)
    coeffs = WINDOW_COEFFS[window]
    i = np.arange(length, dtype=np.float64)
    w = np.zeros(length)
    for j, a in enumerate(coeffs):
        w += (-1.0) ** j * a * np.cos(2.0 * np.pi * j * i / length)
    return w


# ----------------------------------------------------------------------------------------------
# Constant-Q transform
# ----------------------------------------------------------------------------------------------


def cqt_frequencies(fmin: float, n_bins: int, bins_per_octave: int) -> np.ndarray:
    """Centre frequencies in Hz, [n_bins]: fmin * 2^(k / bins_per_octave)."""
    return fmin * 2.0 ** (np.arange(n_bins) / bins_per_octave)


def cqt_relative_bandwidth(bins_per_octave: int, convention: str) -> float:
    """Bandwidth / centre frequency of every bin (alpha; Q = filter_scale / alpha).

    "librosa": (2^(2/b) - 1) / (2^(2/b) + 1), librosa >= 0.10 (half the distance between the
    neighbours on each side); "brown": 2^(1/b) - 1, Brown (1991), nnAudio and librosa < 0.10.
    """
    if convention == "librosa":
        r = 2.0 ** (2.0 / bins_per_octave)
        return (r - 1.0) / (r + 1.0)
    if convention == "brown":
        return 2.0 ** (1.0 / bins_per_octave) - 1.0
    raise ValueError(f"unknown CQT bandwidth convention {convention!r} (expected 'librosa' or 'brown')")


def cqt_filter_lengths(
    sample_rate: float, fmin: float, n_bins: int, bins_per_octave: int, filter_scale: float, bandwidth: str
) -> np.ndarray:
    """Filter length of each bin in samples at `sample_rate` (fractional), [n_bins]: Q * sr / f_k."""
    q = filter_scale / cqt_relative_bandwidth(bins_per_octave, bandwidth)
    return q * sample_rate / cqt_frequencies(fmin, n_bins, bins_per_octave)


def cqt_top_cutoff(
    fmin: float, n_bins: int, bins_per_octave: int, filter_scale: float, bandwidth: str, window: str
) -> float:
    """Highest frequency (Hz) the filterbank reaches: top centre + half its noise bandwidth (librosa's
    criterion; it must stay below Nyquist)."""
    q = filter_scale / cqt_relative_bandwidth(bins_per_octave, bandwidth)
    f_top = float(cqt_frequencies(fmin, n_bins, bins_per_octave)[-1])
    return f_top * (1.0 + 0.5 * window_enbw(window) / q)


def cqt_bin_kernel(frequency: float, length: float, rate: float, window: str, n_taps: int) -> np.ndarray:
    """Complex kernel of one CQT bin sampled at `rate` Hz, [n_taps] (n_taps even, >= length).

    Index i holds offset m = i - n_taps/2 from the frame centre:
    w(m) exp(-2 pi i f m / rate) / sum(w), with w the centred window of `length` samples. The
    response to a sinusoid of amplitude A at the bin's frequency has magnitude A/2, whatever the rate.
    """
    offsets = np.arange(n_taps) - n_taps // 2
    w = centred_window(window, length, offsets)
    return w * np.exp(-2j * np.pi * frequency * offsets / rate) / w.sum()


@dataclass(frozen=True)
class CQTGroup:
    """Bins [bin_start, bin_stop) analysed together at sample_rate / 2**decimation with one conv.

    kernel: complex [n_bins_in_group, n_taps], n_taps even; tap i is offset i - n_taps/2 (at the
    decimated rate) from the frame centre. Scaled by sqrt(full-rate filter length) (librosa's
    scale=True), so the magnitude is A/2 * sqrt(L_k) for a sinusoid of amplitude A on bin k.
    """

    bin_start: int
    bin_stop: int
    decimation: int
    kernel: np.ndarray

    @property
    def n_taps(self) -> int:
        return int(self.kernel.shape[1])


def cqt_groups(
    sample_rate: float,
    hop_length: int,
    fmin: float,
    n_bins: int,
    bins_per_octave: int,
    filter_scale: float,
    bandwidth: str,
    window: str,
) -> list[CQTGroup]:
    """The CQT filterbank as per-octave groups, highest octave first.

    Each octave runs at the lowest rate sample_rate / 2^d such that (a) the main lobe of its highest
    bin ends below DECIMATED_BAND_FRACTION of that rate (where the decimation lowpass is flat and its
    aliases are suppressed) and (b) 2^d divides hop_length (frames stay on the sample grid). Lower
    octaves thus use kernels of about the same number of taps as the top one instead of 2^d times more.
    """
    freqs = cqt_frequencies(fmin, n_bins, bins_per_octave)
    lengths = cqt_filter_lengths(sample_rate, fmin, n_bins, bins_per_octave, filter_scale, bandwidth)
    max_decimation = two_adic_valuation(hop_length)
    half_lobe = WINDOW_MAINLOBE_HALF_WIDTH[window]
    groups: list[CQTGroup] = []
    previous_decimation = 0
    for stop in range(n_bins, 0, -bins_per_octave):
        start = max(0, stop - bins_per_octave)
        # main-lobe edge of the group's highest bin: f + half_lobe / duration
        edge = freqs[stop - 1] + half_lobe * sample_rate / lengths[stop - 1]
        decimation = previous_decimation
        while decimation < max_decimation and edge <= DECIMATED_BAND_FRACTION * sample_rate / 2 ** (
            decimation + 1
        ):
            decimation += 1
        previous_decimation = decimation
        rate = sample_rate / 2**decimation
        scaled = lengths[start:stop] / 2**decimation
        n_taps = 2 * math.ceil(float(scaled.max()) / 2)
        kernel = np.stack(
            [
                cqt_bin_kernel(freqs[k], scaled[k - start], rate, window, n_taps) * math.sqrt(lengths[k])
                for k in range(start, stop)
            ]
        )
        groups.append(CQTGroup(bin_start=start, bin_stop=stop, decimation=decimation, kernel=kernel))
    return groups


def decimation_lowpass() -> np.ndarray:
    """Zero-phase half-band lowpass for decimation by 2, [2 * DECIMATION_HALF_TAPS + 1] (tap i is
    offset i - DECIMATION_HALF_TAPS), unit DC gain; the taps at even non-zero offsets are zero."""
    n = np.arange(-DECIMATION_HALF_TAPS, DECIMATION_HALF_TAPS + 1)
    h = 0.5 * np.sinc(0.5 * n) * np.kaiser(len(n), DECIMATION_KAISER_BETA)
    h /= h.sum()
    h[(n % 2 == 0) & (n != 0)] = 0.0
    return h


def decimation_phase_kernel(block: int) -> np.ndarray:
    """The decimator y[j] = sum_i h[i] x[2j + i] as one strided conv producing `block` outputs per step.

    Returns W [block, 1, 2 (block - 1) + 2 M + 1] (M = DECIMATION_HALF_TAPS): row r is h delayed by 2r,
    so conv1d(x, W, stride=2 * block, padding=M)[:, r, q] = y[block * q + r]. A strided conv with
    `block` output channels runs several times faster on CPU than a one-channel stride-2 conv, and
    the blocked output is flattened back by a transpose and a reshape that only merges dimensions.
    """
    h = decimation_lowpass()
    weight = np.zeros((block, 1, 2 * (block - 1) + len(h)))
    for r in range(block):
        weight[r, 0, 2 * r : 2 * r + len(h)] = h
    return weight


def two_adic_valuation(n: int) -> int:
    """How many times 2 divides n (n > 0)."""
    count = 0
    while n % 2 == 0:
        n //= 2
        count += 1
    return count


# ----------------------------------------------------------------------------------------------
# STFT and mel
# ----------------------------------------------------------------------------------------------


def dft_kernels(n_fft: int, win_length: int, window: str, bins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Windowed DFT rows for the requested frequency `bins`: (real, imag), each [len(bins), n_fft].

    The periodic window of win_length samples is centred in the n_fft frame (as librosa.stft does);
    frame sample n gets exp(-2 pi i k n / n_fft).
    """
    w = np.zeros(n_fft)
    left = (n_fft - win_length) // 2
    w[left : left + win_length] = periodic_window(window, win_length)
    n = np.arange(n_fft)
    phase = 2.0 * np.pi * np.outer(np.asarray(bins, dtype=np.float64), n) / n_fft
    return np.cos(phase) * w, -np.sin(phase) * w


def hz_to_mel(frequencies: np.ndarray | float, scale: str) -> np.ndarray:
    """Hz → mel. "htk": 2595 log10(1 + f/700). "slaney": linear (3 mel per 200 Hz) below 1 kHz,
    logarithmic above (27 mel per factor 6.4)."""
    f = np.asarray(frequencies, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    if scale != "slaney":
        raise ValueError(f"unknown mel scale {scale!r} (expected 'slaney' or 'htk')")
    linear = f / _SLANEY_HZ_PER_MEL
    log_part = (
        _SLANEY_BREAK_MEL + np.log(np.maximum(f, _SLANEY_BREAK_HZ) / _SLANEY_BREAK_HZ) / _SLANEY_LOG_STEP
    )
    return np.where(f >= _SLANEY_BREAK_HZ, log_part, linear)


def mel_to_hz(mels: np.ndarray | float, scale: str) -> np.ndarray:
    """Inverse of hz_to_mel."""
    m = np.asarray(mels, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    if scale != "slaney":
        raise ValueError(f"unknown mel scale {scale!r} (expected 'slaney' or 'htk')")
    linear = m * _SLANEY_HZ_PER_MEL
    log_part = _SLANEY_BREAK_HZ * np.exp(
        _SLANEY_LOG_STEP * (np.maximum(m, _SLANEY_BREAK_MEL) - _SLANEY_BREAK_MEL)
    )
    return np.where(m >= _SLANEY_BREAK_MEL, log_part, linear)


_SLANEY_HZ_PER_MEL = 200.0 / 3.0
_SLANEY_BREAK_HZ = 1000.0
_SLANEY_BREAK_MEL = _SLANEY_BREAK_HZ / _SLANEY_HZ_PER_MEL  # 15 mel
_SLANEY_LOG_STEP = math.log(6.4) / 27.0


def mel_frequencies(n: int, fmin: float, fmax: float, scale: str) -> np.ndarray:
    """n frequencies (Hz) equally spaced on the mel scale from fmin to fmax inclusive."""
    return mel_to_hz(np.linspace(hz_to_mel(fmin, scale), hz_to_mel(fmax, scale), n), scale)


def mel_filterbank(
    sample_rate: float, n_fft: int, n_mels: int, fmin: float, fmax: float, scale: str, norm: str | None
) -> np.ndarray:
    """Triangular mel filters over the rFFT bins, [n_mels, n_fft // 2 + 1].

    Filter i rises from edge i to a peak of 1 at edge i+1 and falls to 0 at edge i+2, the n_mels + 2
    edges being mel_frequencies(n_mels + 2, fmin, fmax). norm="slaney" divides each filter by half its
    width in Hz (equal area); None leaves peaks at 1.
    """
    fft_freqs = np.arange(n_fft // 2 + 1) * (sample_rate / n_fft)
    edges = mel_frequencies(n_mels + 2, fmin, fmax, scale)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (fft_freqs[None, :] - lower) / (centre - lower)
    falling = (upper - fft_freqs[None, :]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    if norm == "slaney":
        weights *= 2.0 / (upper - lower)
    elif norm is not None:
        raise ValueError(f"unknown mel norm {norm!r} (expected 'slaney' or None)")
    return weights


# ----------------------------------------------------------------------------------------------
# Chroma
# ----------------------------------------------------------------------------------------------


def cq_to_chroma_matrix(
    n_bins: int, bins_per_octave: int, n_chroma: int, fmin: float, base_c: bool = True
) -> np.ndarray:
    """0/1 matrix folding constant-Q bins into pitch classes, [n_chroma, n_bins].

    The bins_per_octave / n_chroma bins nearest a chroma centre (ties to the upper class) are summed
    into it; fmin is treated as a (possibly detuned) pitch-class centre, so its nearest class is the
    class of bin 0. Class 0 is C when base_c, else A.
    """
    if bins_per_octave % n_chroma:
        raise ValueError(f"bins_per_octave={bins_per_octave} is not a multiple of n_chroma={n_chroma}")
    per_class = bins_per_octave // n_chroma
    pitch_class_of_fmin = (12.0 * math.log2(fmin / 440.0) + 69.0) % 12.0
    if not base_c:
        pitch_class_of_fmin -= 9.0
    first_class = round(pitch_class_of_fmin * n_chroma / 12.0)
    k = np.arange(n_bins)
    classes = (first_class + (k + per_class // 2) // per_class) % n_chroma
    matrix = np.zeros((n_chroma, n_bins))
    matrix[classes, k] = 1.0
    return matrix
