"""Frontend parameters: frozen, validated dataclasses that are part of the model config.

An exported model pins them (sample rate, hop, CQT range and resolution, compression): a mismatch in
these is the most common reason a published cover-song model fails to reproduce. Every config
round-trips through strict JSON with to_dict() / from_dict(); from_dict refuses unknown keys.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np

from csi_training.frontends.kernels import (
    C1_HZ,
    TAPERED_WINDOWS,
    WINDOW_COEFFS,
    cqt_top_cutoff,
    mel_filterbank,
)

LOG_MODES = ("log1p", "db", "none")
CQT_BANDWIDTHS = ("librosa", "brown")
MEL_SCALES = ("slaney", "htk")
MEL_NORMS = ("slaney", None)
PAD_MODES = ("constant", "reflect")
CHROMA_NORMS = (1.0, 2.0, math.inf, None)

_Config = TypeVar("_Config", bound="_ConfigBase")


class _ConfigBase:
    """to_dict / from_dict for the frozen config dataclasses below."""

    kind: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict, with "kind" first."""
        out: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, _ConfigBase):
                value = value.to_dict()
            elif isinstance(value, float) and math.isinf(value):
                value = "inf"  # strict JSON has no Infinity
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls: type[_Config], data: Mapping[str, Any]) -> _Config:
        """Build from a dict as written by to_dict (missing keys take their defaults)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__}.from_dict needs a mapping, got {type(data).__name__}")
        values = dict(data)
        kind = values.pop("kind", cls.kind)
        if kind != cls.kind:
            raise ValueError(f"{cls.__name__}.from_dict got kind={kind!r}, expected {cls.kind!r}")
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        return cls(**values)


def _set(obj: object, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


def _check_int(obj: object, name: str, minimum: int) -> None:
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    _set(obj, name, int(value))


def _check_float(obj: object, name: str, positive: bool = True, optional: bool = False) -> None:
    value = getattr(obj, name)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if not positive and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    _set(obj, name, value)


def _check_choice(obj: object, name: str, choices: tuple[Any, ...]) -> None:
    value = getattr(obj, name)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def _check_bool(obj: object, name: str) -> None:
    if not isinstance(getattr(obj, name), bool):
        raise ValueError(f"{name} must be true or false, got {getattr(obj, name)!r}")


def _check_compression(obj: object) -> None:
    _check_choice(obj, "log", LOG_MODES)
    _check_float(obj, "log_scale")
    _check_float(obj, "amin")
    _check_float(obj, "top_db", optional=True)


@dataclass(frozen=True)
class CQTConfig(_ConfigBase):
    """Constant-Q magnitude spectrogram (see csi_training.frontends.cqt.CQT).

    sample_rate: Hz of the input waveform. hop_length: samples between frames (640 at 16 kHz =
    25 frames/s). fmin: centre of bin 0 in Hz (C1 = 32.703 Hz). n_bins, bins_per_octave: range and
    resolution (84 / 12 = 7 octaves). filter_scale: filter length factor (Q = filter_scale / alpha).
    bandwidth: definition of alpha, "librosa" (librosa >= 0.10) or "brown" (2^(1/b) - 1: Brown 1991,
    nnAudio). window: "hann" or "blackman" (windows that vanish at their ends). center: frame t is
    centred on sample t * hop_length of the zero-padded input (librosa's convention); if False,
    nothing is padded and frame t is centred on sample context + t * hop_length (see CQT.context).
    pool: average this many
    frames of magnitude (drops a partial last group). log: "log1p" (log(1 + log_scale * |C|)), "db"
    (20 log10(max(|C|, amin)), optionally clipped at top_db below the per-example maximum) or "none".
    """

    kind: ClassVar[str] = "cqt"

    sample_rate: int = 16000
    hop_length: int = 640
    fmin: float = C1_HZ
    n_bins: int = 84
    bins_per_octave: int = 12
    filter_scale: float = 1.0
    bandwidth: str = "librosa"
    window: str = "hann"
    center: bool = True
    pool: int = 1
    log: str = "log1p"
    log_scale: float = 1.0
    amin: float = 1e-5
    top_db: float | None = None

    def __post_init__(self) -> None:
        _check_int(self, "sample_rate", 1)
        _check_int(self, "hop_length", 1)
        _check_float(self, "fmin")
        _check_int(self, "n_bins", 1)
        _check_int(self, "bins_per_octave", 1)
        _check_float(self, "filter_scale")
        _check_choice(self, "bandwidth", CQT_BANDWIDTHS)
        _check_choice(self, "window", TAPERED_WINDOWS)
        _check_bool(self, "center")
        _check_int(self, "pool", 1)
        _check_compression(self)
        nyquist = self.sample_rate / 2
        cutoff = cqt_top_cutoff(
            self.fmin, self.n_bins, self.bins_per_octave, self.filter_scale, self.bandwidth, self.window
        )
        if cutoff > nyquist:
            f_top = self.fmin * 2.0 ** ((self.n_bins - 1) / self.bins_per_octave)
            raise ValueError(
                f"CQT filters reach {cutoff:.1f} Hz (fmin={self.fmin:g} Hz, n_bins={self.n_bins}, "
                f"bins_per_octave={self.bins_per_octave}: top bin {f_top:.1f} Hz plus half its bandwidth), "
                f"above the Nyquist frequency {nyquist:g} Hz of sample_rate={self.sample_rate}; "
                "reduce n_bins or fmin, or raise sample_rate"
            )


@dataclass(frozen=True)
class MelConfig(_ConfigBase):
    """Log-mel spectrogram (see csi_training.frontends.mel.LogMel).

    n_fft: DFT size; win_length: window length (None: n_fft), centred in the frame. center: frame t
    is centred on sample t * hop_length, the input padded by n_fft // 2 on both sides with pad_mode
    ("constant" zeros, librosa's default, or "reflect"). mel_scale "slaney" | "htk", norm "slaney"
    (equal-area filters) | None, fmin/fmax (Hz, fmax None: Nyquist). power: 2 for a power
    spectrogram, 1 for magnitude. pool: average this many frames of the mel spectrogram. log: "db"
    ((20 / power) log10(max(S, amin)): 10 log10 of power), "log1p" (log(1 + log_scale * S)) or "none".
    """

    kind: ClassVar[str] = "logmel"

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 320
    win_length: int | None = None
    window: str = "hann"
    center: bool = True
    pad_mode: str = "constant"
    n_mels: int = 96
    fmin: float = 0.0
    fmax: float | None = None
    mel_scale: str = "slaney"
    norm: str | None = "slaney"
    power: float = 2.0
    pool: int = 1
    log: str = "db"
    log_scale: float = 1.0
    amin: float = 1e-10
    top_db: float | None = None

    def __post_init__(self) -> None:
        _check_int(self, "sample_rate", 1)
        _check_int(self, "n_fft", 2)
        _check_int(self, "hop_length", 1)
        if self.win_length is not None:
            _check_int(self, "win_length", 1)
            if self.win_length > self.n_fft:
                raise ValueError(f"win_length={self.win_length} must not exceed n_fft={self.n_fft}")
        _check_choice(self, "window", tuple(WINDOW_COEFFS))
        _check_bool(self, "center")
        _check_choice(self, "pad_mode", PAD_MODES)
        _check_int(self, "n_mels", 1)
        _check_float(self, "fmin", positive=False)
        _check_float(self, "fmax", optional=True)
        nyquist = self.sample_rate / 2
        fmax = nyquist if self.fmax is None else self.fmax
        if fmax > nyquist:
            raise ValueError(f"fmax={fmax:g} Hz is above the Nyquist frequency {nyquist:g} Hz")
        if self.fmin >= fmax:
            raise ValueError(f"fmin={self.fmin:g} Hz must be below fmax={fmax:g} Hz")
        _check_choice(self, "mel_scale", MEL_SCALES)
        _check_choice(self, "norm", MEL_NORMS)
        _check_float(self, "power")
        _check_int(self, "pool", 1)
        _check_compression(self)
        weights = mel_filterbank(
            self.sample_rate, self.n_fft, self.n_mels, self.fmin, fmax, self.mel_scale, self.norm
        )
        empty = np.flatnonzero(weights.max(axis=1) <= 0)
        if len(empty):
            raise ValueError(
                f"{len(empty)} of n_mels={self.n_mels} mel filters cover no FFT bin (first: filter "
                f"{empty[0]}); raise n_fft={self.n_fft} or lower n_mels"
            )

    @property
    def window_length(self) -> int:
        """win_length, or n_fft when None."""
        return self.n_fft if self.win_length is None else self.win_length

    @property
    def max_frequency(self) -> float:
        """fmax, or the Nyquist frequency when None."""
        return self.sample_rate / 2 if self.fmax is None else self.fmax


def _default_chroma_cqt() -> CQTConfig:
    return CQTConfig(n_bins=252, bins_per_octave=36, log="none")


@dataclass(frozen=True)
class ChromaConfig(_ConfigBase):
    """Chroma (pitch-class profile) folded from a CQT magnitude (see csi_training.frontends.chroma.Chroma).

    cqt: the CQT it is computed from (log must be "none"; default 7 octaves from C1 at 36 bins per
    octave). n_chroma: pitch classes (bins_per_octave must be a multiple). norm: per-frame norm
    the profile is divided by: math.inf (max, librosa's default; "inf" in JSON), 2, 1 or None.
    base_c: class 0 is C (else A).
    """

    kind: ClassVar[str] = "chroma"

    cqt: CQTConfig = field(default_factory=_default_chroma_cqt)
    n_chroma: int = 12
    norm: float | None = math.inf
    base_c: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.cqt, Mapping):
            _set(self, "cqt", CQTConfig.from_dict(self.cqt))
        if not isinstance(self.cqt, CQTConfig):
            raise ValueError(f"cqt must be a CQTConfig or a dict, got {type(self.cqt).__name__}")
        if self.cqt.log != "none":
            raise ValueError(f"cqt.log must be 'none' for chroma (it folds magnitudes), got {self.cqt.log!r}")
        _check_int(self, "n_chroma", 1)
        if self.cqt.bins_per_octave % self.n_chroma:
            raise ValueError(
                f"cqt.bins_per_octave={self.cqt.bins_per_octave} must be a multiple of "
                f"n_chroma={self.n_chroma}"
            )
        if isinstance(self.norm, str) and self.norm.lower() == "inf":
            _set(self, "norm", math.inf)
        if self.norm is not None and (isinstance(self.norm, bool) or not isinstance(self.norm, (int, float))):
            raise ValueError(f"norm must be 1, 2, 'inf' or None; got {self.norm!r}")
        if self.norm is not None:
            _set(self, "norm", float(self.norm))
        _check_choice(self, "norm", CHROMA_NORMS)
        _check_bool(self, "base_c")


FrontendConfig = CQTConfig | MelConfig | ChromaConfig
CONFIG_KINDS: dict[str, type[CQTConfig] | type[MelConfig] | type[ChromaConfig]] = {
    "cqt": CQTConfig,
    "logmel": MelConfig,
    "chroma": ChromaConfig,
}


def frontend_config_from_dict(data: Mapping[str, Any]) -> FrontendConfig:
    """{"kind": "cqt" | "logmel" | "chroma", **fields} → the matching config."""
    if not isinstance(data, Mapping) or "kind" not in data:
        raise ValueError('a frontend config needs a "kind" key ("cqt", "logmel" or "chroma")')
    kind = data["kind"]
    if kind not in CONFIG_KINDS:
        raise ValueError(f"unknown frontend kind {kind!r} (expected one of {', '.join(CONFIG_KINDS)})")
    return CONFIG_KINDS[kind].from_dict(data)
