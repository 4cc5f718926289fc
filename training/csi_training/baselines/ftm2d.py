"""2D Fourier-transform magnitude (2D-FTM) cover-song baseline.

Bertin-Mahieux & Ellis (ISMIR 2012), "Large-scale cover song recognition using the 2D Fourier
transform magnitude". One fixed-length vector per track, compared with Euclidean distance:

1. beat-synchronous chroma [B, 12], each beat scaled to max 1 (``chroma_features``);
2. per-beat power law with exponent 1.96, preserving each beat's L2 norm (the paper's "raise the
   chroma to a power", Ellis's ``chrompwr``), which sharpens the dominant pitch classes;
3. every 75-beat patch (hop 1 beat) → magnitude of its 2D DFT over (beat, pitch class), with the
   zero frequency moved to the centre (fftshift): 75 × 12 = 900 values. The magnitude ignores
   circular shifts along both axes, hence invariance to transposition (pitch-class rotation) and
   to where a repeated pattern starts within the patch;
4. the per-coefficient median over all patches, then L2 normalisation to unit length;
5. optionally PCA (centring + projection on the leading principal axes, no whitening), fitted on
   training tracks; the paper reports 50 dims (binary task) and 200 dims (SHS train MAP 9.5 %).

Layout: coefficient index = t * 12 + c for DFT row t (beat frequency, 0..74 after fftshift) and
column c (pitch-class frequency, 0..11 after fftshift); this is the order of the original code.

Tracks with fewer than 75 beats have no full patch: they are zero-padded at the end to 75 beats
(the original skipped them; Nieto's replication pads), so every track gets a vector.

``log_compression=C`` adds the variant of Humphrey, Nieto & Bello (ISMIR 2013) used by Da-TACOS's
``acoss`` (C = 5): each patch's magnitudes are scaled to unit L2 norm and mapped to log(1 + C x)
before the median. The default (None) is the 2012 method.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from csi_runtime.atomic import atomic_open
from csi_training.baselines.chroma_features import N_CHROMA

logger = logging.getLogger(__name__)

FTM2D_POWER = 1.96  # chroma exponent (Bertin-Mahieux & Ellis 2012)
FTM2D_WINDOW = 75  # beats per patch (ibid.)
_PATCH_CHUNK = 512  # patches per FFT batch, bounds memory on long tracks
_FORMAT_VERSION = 1


def _checked_chroma(chroma: np.ndarray, what: str = "chroma") -> np.ndarray:
    values = np.asarray(chroma)
    if values.ndim != 2 or values.shape[1] != N_CHROMA:
        raise ValueError(f"{what}: expected beat chroma of shape [B, {N_CHROMA}], got {values.shape}")
    if values.shape[0] == 0:
        raise ValueError(f"{what}: no beats")
    values = values.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{what}: chroma contains NaN or Inf")
    if np.any(values < 0):
        raise ValueError(f"{what}: chroma must be non-negative")
    return values


def chroma_power(chroma: np.ndarray, power: float = FTM2D_POWER) -> np.ndarray:
    """Raise each beat's chroma to ``power`` while keeping the beat's L2 norm.

    chroma: non-negative [B, 12]. Returns float64 [B, 12]; all-zero beats stay zero.
    """
    values = _checked_chroma(chroma)
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    safe_norms = np.where(norms > 0, norms, 1.0)
    powered = (values / safe_norms) ** power
    powered_norms = np.linalg.norm(powered, axis=1, keepdims=True)
    powered /= np.where(powered_norms > 0, powered_norms, 1.0)
    return powered * norms


def patch_magnitudes(chroma: np.ndarray, window: int = FTM2D_WINDOW) -> np.ndarray:
    """2D DFT magnitudes of every ``window``-beat patch (hop 1 beat), fftshifted and flattened.

    chroma: [B, 12] with B >= window. Returns float64 [B - window + 1, window * 12], index t * 12 + c.
    """
    values = np.asarray(chroma, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] < window:
        raise ValueError(f"chroma: need shape [B >= {window}, bins], got {values.shape}")
    patches = np.lib.stride_tricks.sliding_window_view(values, window, axis=0)  # [P, bins, window]
    out = np.empty((patches.shape[0], window * values.shape[1]), dtype=np.float64)
    for start in range(0, patches.shape[0], _PATCH_CHUNK):
        block = patches[start : start + _PATCH_CHUNK].transpose(0, 2, 1)  # [p, window, bins]
        magnitude = np.abs(np.fft.fftshift(np.fft.fft2(block, axes=(1, 2)), axes=(1, 2)))
        out[start : start + block.shape[0]] = magnitude.reshape(block.shape[0], -1)
    return out


def ftm2d_embed(
    chroma: np.ndarray,
    power: float = FTM2D_POWER,
    window: int = FTM2D_WINDOW,
    log_compression: float | None = None,
) -> np.ndarray:
    """2D-FTM vector of one track (steps 2-4 of the module doc; no PCA).

    chroma: beat-synchronous chroma [B, 12], non-negative, B >= 1 (B < window is zero-padded).
    Returns float32 [window * 12], unit L2 norm (all zeros only for an all-zero chroma).
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if log_compression is not None and log_compression <= 0:
        raise ValueError(f"log_compression must be positive or None, got {log_compression}")
    powered = chroma_power(chroma, power)
    if powered.shape[0] < window:
        powered = np.concatenate([powered, np.zeros((window - powered.shape[0], N_CHROMA))])
    magnitudes = patch_magnitudes(powered, window)
    if log_compression is not None:
        norms = np.linalg.norm(magnitudes, axis=1, keepdims=True)
        magnitudes = np.log1p(log_compression * magnitudes / np.where(norms > 0, norms, 1.0))
    summary = np.median(magnitudes, axis=0)
    norm = np.linalg.norm(summary)
    if norm > 0:
        summary /= norm
    return summary.astype(np.float32)


class FTM2D:
    """2D-FTM embedder with optional PCA fitted on training tracks.

    pca_dims: None keeps the window * 12 = 900 coefficients; an int projects on that many
        principal axes (centred, not whitened) learnt by ``fit``.
    power, window, log_compression: see ``ftm2d_embed``.
    Compare the vectors with Euclidean distance (``euclidean_distances``).
    """

    def __init__(
        self,
        pca_dims: int | None = None,
        power: float = FTM2D_POWER,
        window: int = FTM2D_WINDOW,
        log_compression: float | None = None,
    ) -> None:
        if pca_dims is not None and not 1 <= pca_dims <= window * N_CHROMA:
            raise ValueError(f"pca_dims must be in [1, {window * N_CHROMA}] or None, got {pca_dims}")
        self.pca_dims = pca_dims
        self.power = float(power)
        self.window = int(window)
        self.log_compression = None if log_compression is None else float(log_compression)
        self.mean: np.ndarray | None = None  # float64 [window * 12]
        self.components: np.ndarray | None = None  # float64 [pca_dims, window * 12], rows orthonormal

    @property
    def dim(self) -> int:
        """Length of the vectors ``transform`` returns."""
        return self.pca_dims if self.pca_dims is not None else self.window * N_CHROMA

    def _embed_all(self, chromas: Sequence[np.ndarray]) -> np.ndarray:
        if len(chromas) == 0:
            raise ValueError("no tracks given")
        embeddings = np.empty((len(chromas), self.window * N_CHROMA), dtype=np.float64)
        short = 0
        for k, chroma in enumerate(chromas):
            embeddings[k] = ftm2d_embed(chroma, self.power, self.window, self.log_compression)
            short += np.shape(chroma)[0] < self.window
        if short:
            logger.info("2D-FTM: %d of %d tracks < %d beats, padded", short, len(chromas), self.window)
        return embeddings

    def fit(self, chromas: Sequence[np.ndarray]) -> FTM2D:
        """Learn the PCA from training tracks' beat chroma (no-op without pca_dims)."""
        if self.pca_dims is None:
            return self
        embeddings = self._embed_all(chromas)
        if embeddings.shape[0] < self.pca_dims:
            raise ValueError(
                f"PCA to {self.pca_dims} dims needs at least {self.pca_dims} training tracks, got "
                f"{embeddings.shape[0]}"
            )
        mean = embeddings.mean(axis=0)
        _u, _s, vt = np.linalg.svd(embeddings - mean, full_matrices=False)
        self.mean = mean
        self.components = vt[: self.pca_dims]
        return self

    def transform(self, chromas: Sequence[np.ndarray]) -> np.ndarray:
        """Vectors of tracks' beat chroma: float32 [N, dim]."""
        embeddings = self._embed_all(chromas)
        if self.pca_dims is None:
            return embeddings.astype(np.float32)
        if self.mean is None or self.components is None:
            raise RuntimeError("FTM2D with pca_dims: call fit() on training tracks before transform()")
        return ((embeddings - self.mean) @ self.components.T).astype(np.float32)

    def fit_transform(self, chromas: Sequence[np.ndarray]) -> np.ndarray:
        return self.fit(chromas).transform(chromas)

    def config(self) -> dict[str, object]:
        return {
            "format_version": _FORMAT_VERSION,
            "pca_dims": self.pca_dims,
            "power": self.power,
            "window": self.window,
            "log_compression": self.log_compression,
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write parameters and PCA to an .npz file (no pickle), atomically."""
        if self.pca_dims is not None and (self.mean is None or self.components is None):
            raise RuntimeError("FTM2D: fit() before save() when pca_dims is set")
        target = Path(path)
        arrays: dict[str, np.ndarray] = {"config": np.array(json.dumps(self.config()))}
        if self.mean is not None and self.components is not None:
            arrays["mean"] = self.mean
            arrays["components"] = self.components
        with atomic_open(target, "wb") as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FTM2D:
        """Read a model written by ``save``."""
        try:
            with np.load(path, allow_pickle=False) as data:
                config = json.loads(str(data["config"]))
                mean = data.get("mean")
                components = data.get("components")
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"{path}: not a readable FTM2D model ({error})") from error
        if config.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported FTM2D model format {config.get('format_version')!r}")
        model = cls(config["pca_dims"], config["power"], config["window"], config["log_compression"])
        if model.pca_dims is not None:
            expected = (model.pca_dims, model.window * N_CHROMA)
            if mean is None or components is None or components.shape != expected:
                raise ValueError(f"{path}: PCA arrays missing or not of shape {expected}")
            model.mean, model.components = mean.astype(np.float64), components.astype(np.float64)
        return model


def euclidean_distances(queries: np.ndarray, references: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distances between rows: float64 [Q, R] (references=None: queries vs themselves)."""
    a = np.asarray(queries, dtype=np.float64)
    b = a if references is None else np.asarray(references, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected [Q, D] and [R, D] arrays, got {a.shape} and {b.shape}")
    squared = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(squared, 0.0))
