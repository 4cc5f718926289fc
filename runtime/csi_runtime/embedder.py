"""``Embedder``: audio (arrays, files, URLs) → version-identification embeddings, with no torch.

    from csi_runtime import Embedder
    emb = Embedder()                       # the packaged default model, best backend available
    v = emb.embed(waveform, sample_rate)   # float32 [D], unit norm
    V = emb.embed_batch([w1, w2], 44100)   # [N, D]
    v = emb.embed_file("song.mp3")         # track-level vector
    segs = emb.embed_segments("show.flac") # windows of window_s every hop_s: starts, ends, vectors [S, D]

Framing follows training exactly: a file is padded with the frontend's context on both sides and
framed by the bundle's frontend graph, so frame t is centred on sample t * hop of the audio (see
csi_runtime.bundle). Segments are windows of ``window_frames`` frames of that one framing (the
frontend runs once per file, not once per window), which is also what the StreamingEmbedder
computes chunk by chunk — the two agree to float rounding.

Track-level vectors (``embed``/``embed_file``): the encoder pools over all frames of the track (GeM),
as in evaluation; a track longer than ``encoder.max_frames`` is cut into consecutive pieces of
max_frames whose unit embeddings are averaged and re-normalised. A bundle with multi-scale track
vectors (``encoder.track_window_frames`` > 0, set by ``csi pooling``) adds a second scale, as its
evaluation did: v = n(n(whole) + n(mean of the unit embeddings of windows of track_window_frames
every track_hop_frames)), n(x) = x / |x|.

Thread-safe: one Embedder may serve many threads; it holds no mutable state after construction.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from csi_runtime.backends import create_backend
from csi_runtime.bundle import ModelBundle, load_bundle

__all__ = ["DEFAULT_BUNDLE", "Embedder", "Segments", "default_bundle_path"]

logger = logging.getLogger(__name__)

#: folder of the packaged default model inside csi_runtime
DEFAULT_BUNDLE = "models/default"
#: windows encoded per encoder call
ENCODER_BATCH = 32


def default_bundle_path() -> Path:
    """The packaged default bundle (``csi_runtime/models/default``)."""
    return Path(str(resources.files("csi_runtime").joinpath(DEFAULT_BUNDLE)))


@dataclass(frozen=True)
class Segments:
    """Windows of a track: starts/ends in seconds of the audio [S], vectors float32 [S, D] (unit norm,
    or all zeros where ``silent``), silent bool [S]."""

    starts: np.ndarray
    ends: np.ndarray
    vectors: np.ndarray
    silent: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)


def window_starts(n_frames: int, window: int, hop: int, min_frames: int) -> list[int]:
    """First frame of each window over n_frames frames: every hop while a whole window fits, then one
    window aligned to the end if frames remain uncovered; a track shorter than a window is one window
    of all its frames (if it has at least min_frames)."""
    if n_frames < min_frames:
        return []
    if n_frames <= window:
        return [0]
    starts = list(range(0, n_frames - window + 1, hop))
    if starts[-1] + window < n_frames:
        starts.append(n_frames - window)
    return starts


class Embedder:
    """Embeddings from a model bundle.

    bundle: a bundle folder (or a loaded ModelBundle); None loads the packaged default model.
    backend: "auto" (TensorRT if an engine fits this GPU, else onnxruntime), "onnxruntime",
    "tensorrt" or "torch". device: "auto", "cpu" or "cuda". threads: intra-op threads per call
    (None: the backend's default).
    """

    def __init__(
        self,
        bundle: str | os.PathLike[str] | ModelBundle | None = None,
        backend: str = "auto",
        device: str = "auto",
        threads: int | None = None,
    ) -> None:
        if bundle is None:
            bundle = default_bundle_path()
        self.bundle = bundle if isinstance(bundle, ModelBundle) else load_bundle(bundle)
        self._backend = create_backend(self.bundle, backend, device, threads)
        m = self.bundle.manifest
        self.model_id: str = self.bundle.model_id
        self.dim: int = self.bundle.dim
        self.sample_rate: int = self.bundle.sample_rate
        self.frame_rate: float = float(m["frontend"]["frame_rate_hz"])
        self.hop_samples: int = self.bundle.hop_samples
        self.context_samples: int = self.bundle.context_samples
        self.window_s: float = float(m["encoder"]["window_s"])
        self.hop_s: float = float(m["encoder"]["hop_s"])
        self.min_frames: int = int(m["encoder"]["min_frames"])
        self.max_frames: int = int(m["encoder"]["max_frames"])
        #: multi-scale track vectors: window and hop in encoder frames (0: whole track only)
        self.track_window: int = int(m["encoder"].get("track_window_frames", 0))
        self.track_hop: int = int(m["encoder"].get("track_hop_frames", 0))
        self.min_samples: int = self.bundle.min_samples_file
        from csi_runtime.audio import SILENCE_PEAK_DBFS  # soundfile/soxr load on first use, not at import

        #: a window peaking below this (linear) level is silent: its vector is all zeros
        self.silence_peak = 10.0 ** (SILENCE_PEAK_DBFS / 20.0)
        logger.info(
            "Embedder %s: backend %s on %s, %d-d, %d Hz",
            self.model_id,
            self._backend.name,
            self._backend.device,
            self.dim,
            self.sample_rate,
        )

    @property
    def backend(self) -> str:
        return str(self._backend.name)

    @property
    def impostors(self) -> Any:
        """The bundle's :class:`csi_runtime.impostors.ImpostorSet` (read on first use), or None."""
        if not hasattr(self, "_impostors"):
            from csi_runtime.impostors import load_impostors

            self._impostors = load_impostors(self.bundle)
        return self._impostors

    @property
    def device(self) -> str:
        return str(self._backend.device)

    def __repr__(self) -> str:
        return (
            f"Embedder({self.model_id!r}, backend={self.backend!r}, device={self.device!r}, dim={self.dim})"
        )

    # ----------------------------------------------------------------------------- building blocks

    def frames_valid(self, padded: np.ndarray) -> np.ndarray:
        """Frontend graph on audio with valid framing: float32 [n] or [B, n] → features [F, T] / [B, F, T]."""
        x = np.ascontiguousarray(padded, dtype=np.float32)
        single = x.ndim == 1
        out = self._backend.frontend(x[None] if single else x)
        return out[0] if single else out

    def features(self, waveform: Any, sample_rate: int) -> np.ndarray:
        """Centred frames of a whole track, as in training: features float32 [F, T]."""
        audio = self._prepare(waveform, sample_rate)
        return self.frames_valid(self.bundle.pad_for_file(audio))

    def encode(self, features: np.ndarray) -> np.ndarray:
        """Encoder on features [F, T] or [B, F, T] (T ≥ min_frames) → unit-norm [D] or [B, D]."""
        x = np.ascontiguousarray(features, dtype=np.float32)
        single = x.ndim == 2
        if single:
            x = x[None]
        if x.ndim != 3 or x.shape[1] != self.bundle.manifest["frontend"]["n_features"]:
            raise ValueError(
                f"features must be [B, {self.bundle.manifest['frontend']['n_features']}, T], got {x.shape}"
            )
        if x.shape[2] < self.min_frames:
            raise ValueError(f"the encoder needs ≥ {self.min_frames} frames, got {x.shape[2]}")
        out = np.ascontiguousarray(self._backend.encode(x), dtype=np.float32)
        return out[0] if single else out

    # ----------------------------------------------------------------------------- public API

    def embed(self, waveform: Any, sample_rate: int) -> np.ndarray:
        """Track-level embedding of one waveform (any numeric dtype; [n] or [n, channels]) → float32 [D]."""
        audio = self._prepare(waveform, sample_rate)
        self._check_usable(audio, "waveform")
        return self._track_vector(audio)

    def embed_batch(self, waveforms: Sequence[Any], sample_rate: int) -> np.ndarray:
        """Track-level embeddings of several waveforms (lengths may differ) → float32 [N, D].

        Waveforms of equal length share one frontend and one encoder call (one by one, as ``embed``
        forms them, when the bundle has multi-scale track vectors or a waveform is longer than
        ``max_frames``).
        """
        prepared = []
        for i, w in enumerate(waveforms):
            audio = self._prepare(w, sample_rate, name=f"waveforms[{i}]")
            self._check_usable(audio, f"waveforms[{i}]")
            prepared.append(audio)
        out = np.empty((len(prepared), self.dim), np.float32)
        by_length: dict[int, list[int]] = {}
        for i, audio in enumerate(prepared):
            by_length.setdefault(len(audio), []).append(i)
        for length, items in by_length.items():
            if self.track_window or self.bundle.frames_for(length) > self.max_frames:
                for i in items:
                    out[i] = self._track_vector(prepared[i])
                continue
            for start in range(0, len(items), ENCODER_BATCH):
                group = items[start : start + ENCODER_BATCH]
                padded = self.bundle.pad_for_file(np.stack([prepared[i] for i in group]))
                out[group] = self.encode(self.frames_valid(padded))
        return out

    def embed_file(self, path: str | os.PathLike[str], max_duration_s: float | None = None) -> np.ndarray:
        """Track-level embedding of an audio file or URL (decoded with soundfile or ffmpeg) → float32 [D]."""
        audio = self._load(path, max_duration_s)
        self._check_usable(audio, str(path))
        return self._track_vector(audio)

    def embed_segments(
        self,
        audio: Any,
        sample_rate: int | None = None,
        window_s: float | None = None,
        hop_s: float | None = None,
    ) -> Segments:
        """Windows of ``window_s`` every ``hop_s`` (defaults: the bundle's) over a waveform or a file.

        audio: a waveform (then sample_rate is required) or a path/URL. The frontend runs once over
        the whole track; a final window aligned to the end covers a remainder. Silent windows (peak
        below csi_runtime.audio.SILENCE_PEAK_DBFS) get all-zero vectors and silent=True.
        """
        return self.embed_segments_multi(audio, sample_rate, [window_s], hop_s)[0]

    def embed_segments_multi(
        self,
        audio: Any,
        sample_rate: int | None,
        windows_s: Sequence[float | None],
        hop_s: float | None = None,
    ) -> list[Segments]:
        """:meth:`embed_segments` for several window lengths (None: the bundle's) from one decoding
        and one frontend pass: one ``Segments`` per length, in order."""
        if isinstance(audio, (str, os.PathLike)):
            samples = self._load(audio, None)
        else:
            if sample_rate is None:
                raise ValueError("embed_segments needs sample_rate for a waveform")
            samples = self._prepare(audio, sample_rate)
        if len(samples) < self.min_samples:
            self._check_usable(samples, "audio")
        windows, hop = [self.window_frames(w) for w in windows_s], self.hop_frames(hop_s)
        feats = self.frames_valid(self.bundle.pad_for_file(samples))
        peaks = frame_peaks(samples, self.hop_samples, feats.shape[1])
        return [
            self.encode_windows(feats, peaks, window_starts(feats.shape[1], w, hop, self.min_frames), w, 0)
            for w in windows
        ]

    # ----------------------------------------------------------------------------- shared helpers

    def window_frames(self, window_s: float | None = None) -> int:
        """Encoder frames of a window of window_s seconds (default: the bundle's window)."""
        seconds = self.window_s if window_s is None else float(window_s)
        frames = round(seconds * self.frame_rate)
        if not np.isfinite(seconds) or frames < self.min_frames:
            raise ValueError(
                f"window_s={seconds} gives {frames} frames; this model needs ≥ {self.min_frames} "
                f"({self.min_frames / self.frame_rate:.1f} s)"
            )
        return int(frames)

    def hop_frames(self, hop_s: float | None = None) -> int:
        seconds = self.hop_s if hop_s is None else float(hop_s)
        frames = round(seconds * self.frame_rate)
        if not np.isfinite(seconds) or frames < 1:
            raise ValueError(f"hop_s={seconds} is shorter than one frame ({1 / self.frame_rate:.2f} s)")
        return int(frames)

    def encode_windows(
        self, feats: np.ndarray, peaks: np.ndarray, starts: Sequence[int], window: int, offset_frames: int
    ) -> Segments:
        """Encode the windows [s, s + window) of feats [F, T] (silent ones → zeros). Times are
        (offset_frames + frame) / frame_rate seconds."""
        vectors = np.zeros((len(starts), self.dim), np.float32)
        silent = np.array([peaks[s : s + window].max(initial=0.0) < self.silence_peak for s in starts], bool)
        todo = [i for i in range(len(starts)) if not silent[i]]
        for chunk in range(0, len(todo), ENCODER_BATCH):
            rows = todo[chunk : chunk + ENCODER_BATCH]
            batch = np.stack([feats[:, starts[i] : starts[i] + window] for i in rows])
            vectors[rows] = self.encode(batch)
        first = np.asarray(starts, np.float64) + offset_frames
        lengths = np.array([min(window, feats.shape[1] - s) for s in starts], np.float64)
        return Segments(
            starts=first / self.frame_rate,
            ends=(first + lengths) / self.frame_rate,
            vectors=vectors,
            silent=silent,
        )

    def _prepare(self, waveform: Any, sample_rate: int, name: str = "waveform") -> np.ndarray:
        from csi_runtime.audio import prepare_waveform

        return prepare_waveform(waveform, sample_rate, self.sample_rate, name=name)

    def _load(self, path: str | os.PathLike[str], max_duration_s: float | None) -> np.ndarray:
        from csi_runtime.audio import load_audio

        return load_audio(path, self.sample_rate, max_duration_s=max_duration_s, silence_peak_dbfs=None)

    def _check_usable(self, audio: np.ndarray, name: str) -> None:
        from csi_runtime.audio import SILENCE_PEAK_DBFS, SilentAudioError, TooShortAudioError

        if len(audio) < self.min_samples:
            raise TooShortAudioError(
                f"{name} is {len(audio) / self.sample_rate:.2f} s long; this model needs at least "
                f"{self.min_samples / self.sample_rate:.2f} s"
            )
        peak = float(np.max(np.abs(audio)))
        if peak < self.silence_peak:
            raise SilentAudioError(
                f"{name} is silent (peak {20 * np.log10(max(peak, 1e-12)):.0f} dBFS, "
                f"below {SILENCE_PEAK_DBFS:.0f} dBFS): "
                "there is nothing to identify"
            )

    def _track_vector(self, audio: np.ndarray) -> np.ndarray:
        feats = self.frames_valid(self.bundle.pad_for_file(audio))
        whole = self._mean_direction(feats, self.max_frames, self.max_frames)
        if not self.track_window:
            return whole
        windows = self._mean_direction(feats, self.track_window, self.track_hop)
        return _unit(whole + windows)

    def _mean_direction(self, feats: np.ndarray, window: int, hop: int) -> np.ndarray:
        """Unit mean of the unit embeddings of windows of feats [F, T] (one window if T ≤ window)."""
        if feats.shape[1] <= window:
            return _unit(self.encode(feats))
        starts = window_starts(feats.shape[1], window, hop, self.min_frames)
        pieces = np.concatenate(
            [
                self.encode(np.stack([feats[:, s : s + window] for s in starts[i : i + ENCODER_BATCH]]))
                for i in range(0, len(starts), ENCODER_BATCH)
            ]
        )
        return _unit(_unit(pieces).mean(axis=0))


def _unit(x: np.ndarray) -> np.ndarray:
    """x [..., D] scaled to unit L2 norm along the last axis (zero rows stay zero), float32."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def frame_peaks(samples: np.ndarray, hop_samples: int, n_frames: int, offset: int = 0) -> np.ndarray:
    """Peak |sample| per frame [n_frames]: frame t covers samples [t * hop, (t + 1) * hop) of the audio
    (minus ``offset``, the index of the audio's first sample), the samples its centre lies among;
    samples outside the audio count as silence."""
    lo = -offset  # index in `samples` of frame 0's first sample
    span = np.zeros(n_frames * hop_samples, np.float32)
    src_lo, src_hi = max(lo, 0), min(lo + len(span), len(samples))
    if src_hi > src_lo:
        span[src_lo - lo : src_hi - lo] = np.abs(samples[src_lo:src_hi])
    return span.reshape(n_frames, hop_samples).max(axis=1, initial=0.0)
