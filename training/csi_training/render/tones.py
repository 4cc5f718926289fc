"""Band-limited synthetic tones (sine, square, sawtooth, triangle) for controlled disentanglement studies.

Each waveform is its Fourier sine series cut at Nyquist, so no partial aliases at any frequency::

    x(t) = amplitude * sum_{k: k f < sr / 2} b_k sin(k (2 pi f t + phase))

with the coefficients of the ideal unit-peak waveforms (``harmonic_amplitudes``):

- sine: b_1 = 1;
- square (+-1): b_k = 4 / (pi k), odd k;
- sawtooth (rising from -1 to 1 each period): b_k = 2 (-1)^(k+1) / (pi k);
- triangle (peak 1): b_k = 8 (-1)^((k-1)/2) / (pi k)^2, odd k.

Above ``sample_rate / 6`` a square or triangle keeps only its fundamental and sounds exactly like a
sine (its 3rd harmonic would pass Nyquist); :class:`ToneConfig` limits frequencies so that the
waveform type stays identifiable from the spectrum. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WAVEFORMS: tuple[str, ...] = ("sine", "square", "sawtooth", "triangle")


def harmonic_amplitudes(waveform: str, n_harmonics: int) -> np.ndarray:
    """Sine-series coefficients b_1..b_n (float64 [n_harmonics]) of the unit-peak ideal waveform."""
    if waveform not in WAVEFORMS:
        raise ValueError(f"unknown waveform {waveform!r} (available: {', '.join(WAVEFORMS)})")
    if n_harmonics < 1:
        raise ValueError(f"n_harmonics must be >= 1, got {n_harmonics}")
    k = np.arange(1, n_harmonics + 1, dtype=np.float64)
    odd = (k % 2) == 1
    if waveform == "sine":
        return (k == 1).astype(np.float64)
    if waveform == "square":
        return np.where(odd, 4.0 / (np.pi * k), 0.0)
    if waveform == "sawtooth":
        return 2.0 * np.where(odd, 1.0, -1.0) / (np.pi * k)
    sign = np.where(((k - 1) // 2) % 2 == 0, 1.0, -1.0)
    return np.where(odd, 8.0 * sign / (np.pi * k) ** 2, 0.0)


def render_tone(
    waveform: str,
    frequency_hz: float,
    n_samples: int,
    sample_rate: int,
    amplitude: float = 1.0,
    phase: float = 0.0,
) -> np.ndarray:
    """One band-limited tone: float32 [n_samples] at ``sample_rate`` Hz, peak about ``amplitude``.

    ``phase`` (radians) is the fundamental's phase at sample 0; every harmonic k starts at k * phase,
    so the waveform's shape, not only its position, is kept.
    """
    if sample_rate <= 0 or n_samples < 1:
        raise ValueError(f"need sample_rate > 0 and n_samples >= 1, got {sample_rate}, {n_samples}")
    if not (np.isfinite(frequency_hz) and 0.0 < frequency_hz < sample_rate / 2):
        raise ValueError(f"frequency {frequency_hz} Hz must lie in (0, Nyquist = {sample_rate / 2} Hz)")
    if not (np.isfinite(amplitude) and np.isfinite(phase)):
        raise ValueError(f"amplitude and phase must be finite, got {amplitude}, {phase}")
    n_harmonics = max(1, int(np.ceil((sample_rate / 2) / frequency_hz)) - 1)  # largest k with k f < sr / 2
    b = harmonic_amplitudes(waveform, n_harmonics)
    used = np.flatnonzero(b)
    theta = 2.0 * np.pi * frequency_hz * np.arange(n_samples, dtype=np.float64) / sample_rate + phase
    k = (used + 1).astype(np.float64)
    x = b[used] @ np.sin(np.outer(k, theta))
    return (amplitude * x).astype(np.float32)


@dataclass(frozen=True)
class ToneConfig:
    """How tones are drawn: frequency log-uniform in [fmin_hz, fmax_hz], level uniform in
    [min_level_db, max_level_db] dB re full scale, phase uniform in [0, 2 pi)."""

    sample_rate: int = 16000
    n_samples: int = 3072
    fmin_hz: float = 110.0
    fmax_hz: float = 1760.0
    min_level_db: float = -24.0
    max_level_db: float = -3.0

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.n_samples < 1:
            raise ValueError("sample_rate must be > 0 and n_samples >= 1")
        if not 0.0 < self.fmin_hz < self.fmax_hz:
            raise ValueError(f"need 0 < fmin_hz < fmax_hz, got {self.fmin_hz}, {self.fmax_hz}")
        if self.fmax_hz >= self.sample_rate / 6:
            raise ValueError(
                f"fmax_hz={self.fmax_hz} must stay below sample_rate / 6 = {self.sample_rate / 6:.0f} Hz: "
                "above it square and triangle waves lose their 3rd harmonic and equal a sine"
            )
        if not self.min_level_db <= self.max_level_db <= 0.0:
            raise ValueError("need min_level_db <= max_level_db <= 0 dB")


@dataclass(frozen=True)
class ToneFactors:
    """Generative factors of n tones: waveform index into WAVEFORMS (int64 [n]), frequency (Hz,
    float64 [n]), amplitude (linear peak, float64 [n]) and phase (radians, float64 [n])."""

    waveform: np.ndarray
    frequency_hz: np.ndarray
    amplitude: np.ndarray
    phase: np.ndarray

    def __len__(self) -> int:
        return int(self.waveform.shape[0])


def sample_tone_factors(
    rng: np.random.Generator, n: int, config: ToneConfig, waveform: np.ndarray | None = None
) -> ToneFactors:
    """Draw the factors of ``n`` tones; ``waveform`` (int [n]) fixes their types, else uniform."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if waveform is None:
        kinds = rng.integers(0, len(WAVEFORMS), size=n)
    else:
        kinds = np.asarray(waveform, dtype=np.int64)
        if kinds.shape != (n,) or (n and (kinds.min() < 0 or kinds.max() >= len(WAVEFORMS))):
            raise ValueError(f"waveform must be {n} indices in [0, {len(WAVEFORMS)})")
    log_f = rng.uniform(np.log(config.fmin_hz), np.log(config.fmax_hz), size=n)
    level_db = rng.uniform(config.min_level_db, config.max_level_db, size=n)
    return ToneFactors(
        waveform=kinds.astype(np.int64),
        frequency_hz=np.exp(log_f),
        amplitude=10.0 ** (level_db / 20.0),
        phase=rng.uniform(0.0, 2.0 * np.pi, size=n),
    )


def render_tones(factors: ToneFactors, config: ToneConfig) -> np.ndarray:
    """Waveforms of the tones: float32 [n, config.n_samples] at config.sample_rate."""
    out = np.empty((len(factors), config.n_samples), dtype=np.float32)
    for i in range(len(factors)):
        out[i] = render_tone(
            WAVEFORMS[int(factors.waveform[i])],
            float(factors.frequency_hz[i]),
            config.n_samples,
            config.sample_rate,
            float(factors.amplitude[i]),
            float(factors.phase[i]),
        )
    return out
