"""Waveform augmentations of CLMR (Spijkervet & Burgoyne, ISMIR 2021), as used by MART pre-training.

Each transform is a pure torch function on float waveforms [B, n] (or [n]) with its parameters given
explicitly, so that a test can check it does what it says; :class:`ClmrAugment` draws the parameters
per clip from a numpy Generator and applies each transform with its probability, in CLMR's order:
polarity inversion, noise, gain, high/low-pass filter, delay, pitch shift.

- polarity: y = -x.
- noise: white Gaussian noise scaled so that 10 log10(mean x^2 / mean noise^2) equals snr_db exactly
  (a silent clip is left unchanged: its SNR is undefined).
- gain: y = x * 10^(gain_db / 20).
- filter: zero-phase Butterworth magnitude |H(f)| = 1 / sqrt(1 + (f / fc)^(2 order)) (low-pass) or
  1 / sqrt(1 + (fc / f)^(2 order)) (high-pass), applied in the frequency domain of the zero-padded
  clip (linear, not circular, up to the filter's decay).
- delay: y[t] = x[t] + volume * x[t - d] (x = 0 before the clip starts).
- pitch shift by s semitones (factor a = 2^(s/12)): a phase-vocoder time stretch to a * n samples
  (pitch kept), then band-limited (FFT) resampling back to n samples, which multiplies every
  frequency by a and keeps the length.

Defaults follow CLMR's probabilities (0.8, 0.01, 0.3, 0.8, 0.3, 0.6) and ranges, with levels in dB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ClmrAugment",
    "ClmrConfig",
    "add_noise",
    "apply_gain",
    "butterworth_filter",
    "butterworth_response",
    "delay_mix",
    "fft_resample",
    "invert_polarity",
    "pitch_shift",
    "time_stretch",
]

PHASE_VOCODER_N_FFT = 1024
PHASE_VOCODER_HOP = 256
PHASE_LOCK_BINS = 2  # half width of a Hann main lobe, in bins


def _batched(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if x.dim() == 1:
        return x.unsqueeze(0), True
    if x.dim() != 2:
        raise ValueError(f"waveform must be [n] or [B, n], got shape {tuple(x.shape)}")
    return x, False


def invert_polarity(x: torch.Tensor) -> torch.Tensor:
    """y = -x."""
    return -x


def apply_gain(x: torch.Tensor, gain_db: float) -> torch.Tensor:
    """y = x * 10^(gain_db / 20)."""
    return x * (10.0 ** (gain_db / 20.0))


def add_noise(x: torch.Tensor, snr_db: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add white Gaussian noise at exactly `snr_db` (per row, from the row's mean power). Rows of
    zero power are returned unchanged."""
    xb, unbatched = _batched(x)
    noise = torch.randn(xb.shape, generator=generator, dtype=xb.dtype, device=xb.device)
    signal_power = xb.pow(2).mean(dim=1, keepdim=True)
    noise_power = noise.pow(2).mean(dim=1, keepdim=True).clamp(min=1e-30)
    scale = torch.sqrt(signal_power / noise_power * 10.0 ** (-snr_db / 10.0))
    y = xb + noise * scale
    return y[0] if unbatched else y


def butterworth_response(frequencies: np.ndarray, cutoff_hz: float, kind: str, order: int) -> np.ndarray:
    """|H(f)| of the zero-phase Butterworth filter at `frequencies` (Hz), float64."""
    f = np.abs(np.asarray(frequencies, dtype=np.float64))
    if kind == "low":
        return 1.0 / np.sqrt(1.0 + (f / cutoff_hz) ** (2 * order))
    if kind == "high":
        with np.errstate(divide="ignore"):
            ratio = np.where(f > 0, cutoff_hz / np.maximum(f, 1e-300), np.inf)
        return 1.0 / np.sqrt(1.0 + ratio ** (2 * order))
    raise ValueError(f"filter kind must be 'low' or 'high', got {kind!r}")


def butterworth_filter(
    x: torch.Tensor, sample_rate: int, cutoff_hz: float, kind: str, order: int = 4
) -> torch.Tensor:
    """Zero-phase Butterworth low/high-pass of each row (frequency-domain, zero-padded to 2n)."""
    if not 0 < cutoff_hz < sample_rate / 2:
        raise ValueError(f"cutoff {cutoff_hz} Hz must be in (0, {sample_rate / 2}) Hz")
    xb, unbatched = _batched(x)
    n = xb.shape[1]
    n_fft = 2 * n
    spectrum = torch.fft.rfft(xb.double(), n=n_fft)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    gain = torch.from_numpy(butterworth_response(freqs, cutoff_hz, kind, order)).to(xb.device)
    y = torch.fft.irfft(spectrum * gain, n=n_fft)[:, :n].to(xb.dtype)
    return y[0] if unbatched else y


def delay_mix(x: torch.Tensor, delay_samples: int, volume: float) -> torch.Tensor:
    """y[t] = x[t] + volume * x[t - delay_samples] (zero before the start)."""
    if delay_samples < 0:
        raise ValueError(f"delay must be >= 0 samples, got {delay_samples}")
    xb, unbatched = _batched(x)
    delayed = torch.zeros_like(xb)
    if delay_samples < xb.shape[1]:
        delayed[:, delay_samples:] = xb[:, : xb.shape[1] - delay_samples]
    y = xb + volume * delayed
    return y[0] if unbatched else y


def fft_resample(x: torch.Tensor, n_out: int) -> torch.Tensor:
    """Band-limited resampling of each row to n_out samples (periodic sinc interpolation via the
    FFT: the spectrum is truncated or zero-extended, amplitudes preserved)."""
    xb, unbatched = _batched(x)
    n_in = xb.shape[1]
    spectrum = torch.fft.rfft(xb.double())
    bins_out = n_out // 2 + 1
    keep = min(spectrum.shape[1], bins_out)
    out = torch.zeros(xb.shape[0], bins_out, dtype=spectrum.dtype, device=xb.device)
    out[:, :keep] = spectrum[:, :keep]
    y = (torch.fft.irfft(out, n=n_out) * (n_out / n_in)).to(xb.dtype)
    return y[0] if unbatched else y


def time_stretch(
    x: torch.Tensor, n_out: int, n_fft: int = PHASE_VOCODER_N_FFT, hop: int = PHASE_VOCODER_HOP
) -> torch.Tensor:
    """Phase-vocoder time stretch of each row to n_out samples, pitch unchanged."""
    xb, unbatched = _batched(x)
    n_in = xb.shape[1]
    window = torch.hann_window(n_fft, dtype=torch.float64, device=xb.device)
    spec = torch.stft(xb.double(), n_fft, hop, window=window, center=True, return_complex=True)
    n_frames = spec.shape[-1]
    rate = n_in / n_out  # input frames advanced per output frame
    steps = torch.arange(0.0, n_frames - 1, rate, dtype=torch.float64, device=xb.device)
    # one extra zero frame so that every step has a right neighbour
    spec = torch.cat([spec, torch.zeros_like(spec[..., :1])], dim=-1)
    left = steps.floor().long()
    frac = (steps - left)[None, None, :]
    a, b = spec[..., left], spec[..., left + 1]
    magnitude = (1.0 - frac) * a.abs() + frac * b.abs()
    expected = torch.linspace(0.0, math.pi * hop, spec.shape[-2], dtype=torch.float64, device=xb.device)
    delta = b.angle() - a.angle() - expected[None, :, None]
    delta = delta - 2.0 * math.pi * torch.round(delta / (2.0 * math.pi))
    advance = delta + expected[None, :, None]
    phase = torch.cumsum(torch.cat([spec[..., :1].angle(), advance[..., :-1]], dim=-1), dim=-1)
    # Identity phase locking (Laroche & Dolson 1999): every bin keeps, relative to the strongest bin
    # within PHASE_LOCK_BINS of it, the phase offset it has in the analysed frame. Without it the
    # offsets drift wherever one analysis pair is used for several output frames (slowing down),
    # and a stationary tone comes out with a fraction of its energy.
    strength = F.pad(a.abs(), (0, 0, PHASE_LOCK_BINS, PHASE_LOCK_BINS), value=-1.0)
    windows = strength.unfold(1, 2 * PHASE_LOCK_BINS + 1, 1)  # [B, F, S, 2w + 1]
    bins = torch.arange(a.shape[1], device=xb.device)[None, :, None]
    peak = bins + windows.argmax(dim=-1) - PHASE_LOCK_BINS
    analysed = a.angle()
    phase = phase.gather(1, peak) + analysed - analysed.gather(1, peak)
    stretched = torch.polar(magnitude, phase)
    y = torch.istft(stretched, n_fft, hop, window=window, center=True, length=n_out).to(xb.dtype)
    return y[0] if unbatched else y


def pitch_shift(x: torch.Tensor, semitones: float) -> torch.Tensor:
    """Shift every frequency by 2^(semitones / 12), length unchanged (stretch, then resample)."""
    if semitones == 0:
        return x.clone()
    xb, unbatched = _batched(x)
    n = xb.shape[1]
    factor = 2.0 ** (semitones / 12.0)
    stretched = time_stretch(xb, max(1, round(n * factor)))
    y = fft_resample(stretched, n)
    return y[0] if unbatched else y


@dataclass(frozen=True)
class ClmrConfig:
    """Probabilities (per clip) and parameter ranges of the CLMR chain (uniform draws).

    Levels in dB, cut-offs in Hz, delays in ms (drawn on a 50 ms grid as in CLMR), pitch in whole
    semitones (0 excluded).
    """

    polarity_p: float = 0.8
    noise_p: float = 0.01
    noise_snr_db: tuple[float, float] = (10.0, 40.0)
    gain_p: float = 0.3
    gain_db: tuple[float, float] = (-20.0, -1.0)
    filter_p: float = 0.8
    lowpass_hz: tuple[float, float] = (2200.0, 4000.0)
    highpass_hz: tuple[float, float] = (200.0, 1200.0)
    filter_order: int = 4
    delay_p: float = 0.3
    delay_ms: tuple[float, float] = (200.0, 500.0)
    delay_volume: float = 0.5
    pitch_p: float = 0.6
    pitch_semitones: int = 5

    def __post_init__(self) -> None:
        for name in ("polarity_p", "noise_p", "gain_p", "filter_p", "delay_p", "pitch_p"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        for name in ("noise_snr_db", "gain_db", "lowpass_hz", "highpass_hz", "delay_ms"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name} must be (low, high) with low <= high, got {(lo, hi)}")
        if self.pitch_semitones < 0:
            raise ValueError("pitch_semitones must be >= 0")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClmrConfig:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown ClmrConfig keys: {', '.join(unknown)}")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


class ClmrAugment:
    """Draws and applies the CLMR chain per clip: waveform [B, n] at sample_rate → [B, n]."""

    def __init__(self, config: ClmrConfig, sample_rate: int) -> None:
        self.config = config
        self.sample_rate = sample_rate
        if config.lowpass_hz[1] >= sample_rate / 2:
            raise ValueError(f"lowpass cut-offs {config.lowpass_hz} Hz reach Nyquist at {sample_rate} Hz")

    def __call__(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        xb, unbatched = _batched(x)
        out = torch.stack([self.one(row, rng) for row in xb])
        return out[0] if unbatched else out

    def one(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """One clip [n]; parameters drawn from rng."""
        c = self.config
        if rng.random() < c.polarity_p:
            x = invert_polarity(x)
        if rng.random() < c.noise_p:
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            x = add_noise(x, float(rng.uniform(*c.noise_snr_db)), generator=gen)
        if rng.random() < c.gain_p:
            x = apply_gain(x, float(rng.uniform(*c.gain_db)))
        if rng.random() < c.filter_p:
            if rng.random() < 0.5:
                x = butterworth_filter(
                    x, self.sample_rate, float(rng.uniform(*c.lowpass_hz)), "low", c.filter_order
                )
            else:
                x = butterworth_filter(
                    x, self.sample_rate, float(rng.uniform(*c.highpass_hz)), "high", c.filter_order
                )
        if rng.random() < c.delay_p:
            lo, hi = c.delay_ms
            grid = np.arange(lo, hi + 1e-9, 50.0) if hi - lo >= 50.0 else np.array([lo])
            delay = round(float(rng.choice(grid)) * self.sample_rate / 1000.0)
            x = delay_mix(x, delay, c.delay_volume)
        if rng.random() < c.pitch_p and c.pitch_semitones > 0:
            choices = [s for s in range(-c.pitch_semitones, c.pitch_semitones + 1) if s != 0]
            x = pitch_shift(x, float(rng.choice(choices)))
        return x
