"""Feature sets: decoded, frontend-processed tracks held in memory for training and evaluation.

``load_manifest_features`` turns manifest entries into features through the feature cache. A file
that cannot be decoded, is empty, silent or holds NaN/Inf is reported (one warning each, and in the
returned skip list) and left out — a long run never dies or trains on garbage because of one file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from csi_training.feature_cache import FeatureCache
from csi_training.frontends import Frontend

logger = logging.getLogger(__name__)

__all__ = ["FeatureSet", "add_window_scale", "embed_features", "load_manifest_features"]


@dataclass
class FeatureSet:
    """Tracks as features: ``features[i]`` float16 [F, T_i]; ``work_ids[i]`` / ``version_ids[i]`` strings."""

    features: list[np.ndarray] = field(default_factory=list)
    work_ids: list[str] = field(default_factory=list)
    version_ids: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def __len__(self) -> int:
        return len(self.features)

    def items_by_work(self, labels: dict[str, int]) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for i, work in enumerate(self.work_ids):
            out.setdefault(labels[work], []).append(i)
        return out


@torch.no_grad()
def _features_of(path: str, frontend: Frontend, sample_rate: int, max_s: float) -> np.ndarray:
    from csi_training.data import load_audio

    audio = load_audio(path, sample_rate, max_duration_s=max_s)
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).unsqueeze(0)
    feats = frontend(x)[0].float().numpy()
    if not np.isfinite(feats).all():
        raise ValueError("the frontend produced non-finite features")
    return feats


def load_manifest_features(
    entries: Sequence,  # Sequence[ManifestEntry]
    frontend: Frontend,
    cache: FeatureCache | None,
    max_s: float,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> FeatureSet:
    """Features of every usable entry (``entry.path``, ``entry.work_id``, ``entry.version_id``).

    ``workers``: files processed in parallel (default: the CPUs this process may use).
    """
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    from csi_training.data import AudioError

    sample_rate = int(frontend.sample_rate)
    out = FeatureSet()

    def one(entry: Any) -> tuple[Any, np.ndarray | None, str | None]:
        path = str(entry.path)
        try:
            if cache is None:
                return entry, _features_of(path, frontend, sample_rate, max_s), None
            return (
                entry,
                cache.get_or_compute(path, partial(_features_of, path, frontend, sample_rate, max_s)),
                None,
            )
        except (AudioError, OSError, ValueError) as exc:
            return entry, None, str(exc)

    # Files in parallel threads (decoding and the convolutions release the GIL), each frontend call
    # on one intra-op thread: small convolutions on several OpenMP threads thrash when the cores
    # are shared (measured 0.3-0.8 s instead of ~5 ms per 30 s track on a loaded 2-core machine).
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for entry, feats, error in pool.map(one, entries):
                if error is not None:
                    logger.warning("skipping %s: %s", entry.path, error)
                    out.skipped.append((str(entry.path), error))
                else:
                    assert feats is not None
                    out.features.append(np.asarray(feats, dtype=np.float16))
                    out.work_ids.append(str(entry.work_id))
                    out.version_ids.append(str(entry.version_id))
                    out.paths.append(str(entry.path))
                if progress is not None:
                    progress(1)
    finally:
        torch.set_num_threads(previous_threads)
    if out.skipped:
        logger.warning(
            "%d of %d files were skipped (unreadable, empty, silent or non-finite)",
            len(out.skipped),
            len(entries),
        )
    return out


@torch.no_grad()
def embed_features(
    backbone: nn.Module,
    features: Sequence[np.ndarray],
    device: torch.device,
    max_frames: int | None = None,
    track_windows: tuple[int, int] | None = None,
) -> np.ndarray:
    """Track-level embeddings float32 [N, D] of whole tracks (optionally cut to ``max_frames``).

    Tracks of equal length are batched together; the backbone pools over time, so lengths may differ.
    track_windows: (window, hop) in frames for multi-scale vectors (``csi_training.track_pooling``).
    """
    whole = _embed_tracks(backbone, features, device, max_frames)
    if track_windows is None:
        return whole
    return add_window_scale(backbone, features, device, whole, track_windows, max_frames)


def add_window_scale(
    backbone: nn.Module,
    features: Sequence[np.ndarray],
    device: torch.device,
    whole: np.ndarray,
    track_windows: tuple[int, int],
    max_frames: int | None = None,
) -> np.ndarray:
    """Multi-scale vectors float32 [N, D] from the whole-track embeddings ``whole`` [N, D] of
    ``features`` (as :func:`embed_features` gives them) and windows of (window, hop) frames."""
    from csi_training.track_pooling import combine_scales, window_crops

    if not len(features):
        return whole
    cut = [f[:, :max_frames] for f in features]
    crops, owner = window_crops(cut, *track_windows, int(getattr(backbone, "min_frames", 1)))
    windows = _embed_tracks(backbone, crops, device, None) if crops else np.zeros((0, whole.shape[1]))
    return combine_scales(whole, windows, owner)


def _embed_tracks(
    backbone: nn.Module, features: Sequence[np.ndarray], device: torch.device, max_frames: int | None
) -> np.ndarray:
    was_training = backbone.training
    backbone.eval()
    order = sorted(range(len(features)), key=lambda i: features[i].shape[1])
    out: dict[int, np.ndarray] = {}
    group: list[int] = []

    def flush() -> None:
        if not group:
            return
        batch = np.stack([np.asarray(features[i][:, :max_frames], dtype=np.float32) for i in group])
        emb = backbone(torch.from_numpy(batch).to(device)).float().cpu().numpy()
        out.update(zip(group, emb, strict=True))
        group.clear()

    for i in order:
        length = min(features[i].shape[1], max_frames or features[i].shape[1])
        if group and (len(group) >= 32 or min(features[group[0]].shape[1], max_frames or 10**9) != length):
            flush()
        group.append(i)
    flush()
    backbone.train(was_training)
    return np.stack([out[i] for i in range(len(features))]) if features else np.zeros((0, 0), np.float32)
