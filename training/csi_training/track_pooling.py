"""Multi-scale track vectors, and ``csi pooling``: choose them on held-out works for a checkpoint.

A track's vector is normally the backbone's embedding of the whole track (one pooling over all its
frames). A model trained on 20 s crops also knows shorter passages, so the track vector can add a
second scale: the mean of the unit embeddings of windows of ``window`` frames every ``hop`` frames
(a final window aligned to the end, as ``csi_runtime.embedder.window_starts`` places them)::

    v = n( n(whole) + n(mean_i n(window_i)) )        n(x) = x / |x|

``csi pooling`` scores candidate window lengths (hop = half a window) by leave-one-out MAP on the
validation works of a labelled manifest (split as the checkpoint's training run split them), picks
the best (off when no candidate beats the whole-track vector) and writes a checkpoint whose
``model.track_window_s`` / ``model.track_hop_s`` say so. Weights are unchanged; exported bundles
carry the setting, and ``csi_runtime.Embedder`` forms track vectors the same way.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_WINDOWS_S",
    "combine_scales",
    "select_track_windows",
    "set_track_pooling",
    "track_window_frames",
    "window_crops",
]

#: candidate window lengths in seconds, each with a hop of half its length (0: whole track only)
DEFAULT_WINDOWS_S: tuple[float, ...] = (0.0, 10.0, 15.0, 20.0)


def track_window_frames(window_s: float, hop_s: float, frame_rate: float) -> tuple[int, int] | None:
    """(window, hop) in encoder frames for a window of window_s every hop_s seconds at frame_rate Hz;
    None when window_s is 0 (whole-track vectors only)."""
    if window_s <= 0:
        return None
    return max(1, round(window_s * frame_rate)), max(1, round(hop_s * frame_rate))


def window_crops(
    features: Sequence[np.ndarray], window: int, hop: int, min_frames: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Windows of every track of features ([F, T_i] each): (crops [F, ≤ window] each, owner [S] int64,
    the index of each crop's track). A track shorter than min_frames has no crop."""
    from csi_runtime.embedder import window_starts

    crops: list[np.ndarray] = []
    owner: list[int] = []
    for i, f in enumerate(features):
        for s in window_starts(f.shape[1], window, hop, min_frames):
            crops.append(f[:, s : s + window])
            owner.append(i)
    return crops, np.asarray(owner, np.int64)


def combine_scales(whole: np.ndarray, windows: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Multi-scale vectors float32 [N, D] from whole-track embeddings [N, D] and window embeddings
    [S, D] of track ``owner[s]``; a track without windows keeps its whole-track direction."""
    whole = np.asarray(whole, np.float64)
    out = _unit(whole)
    if len(owner):
        sums = np.zeros_like(whole)
        np.add.at(sums, owner, _unit(np.asarray(windows, np.float64)))
        has = np.bincount(owner, minlength=len(whole)) > 0
        out[has] = _unit(out[has] + _unit(sums[has]))
    return out.astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _checked_frames(window_s: float, frame_rate: float, min_frames: int) -> tuple[int, int] | None:
    """track_window_frames for a window of window_s (hop half of it), refused when shorter than the
    encoder's min_frames."""
    frames = track_window_frames(window_s, window_s / 2, frame_rate)
    if frames is not None and frames[0] < min_frames:
        raise ValueError(
            f"a {window_s:g} s track window is {frames[0]} frames; the encoder needs ≥ {min_frames}"
        )
    return frames


def select_track_windows(
    backbone: torch.nn.Module,
    features: Sequence[np.ndarray],
    works: Sequence[str],
    frame_rate: float,
    device: torch.device,
    candidates: Sequence[float] = DEFAULT_WINDOWS_S,
    max_frames: int | None = None,
) -> tuple[float, list[dict[str, float]]]:
    """The candidate window (seconds; 0 = whole track only) with the best leave-one-out MAP on
    ``features`` of ``works`` (ties go to the earlier candidate), and every candidate's row."""
    from csi_training.datasets import add_window_scale, embed_features
    from csi_training.metrics import evaluate

    rows = []
    min_frames = int(getattr(backbone, "min_frames", 1))
    whole = embed_features(backbone, features, device, max_frames=max_frames)  # shared by every candidate
    for window_s in candidates:
        frames = _checked_frames(window_s, frame_rate, min_frames)
        emb = (
            whole
            if frames is None
            else add_window_scale(backbone, features, device, whole, frames, max_frames)
        )
        metrics = evaluate(emb, list(works))
        rows.append({"window_s": float(window_s), "hop_s": window_s / 2, "MAP": float(metrics["MAP"])})
        logger.info("track window %g s: validation MAP %.4f", window_s, rows[-1]["MAP"])
    best = max(range(len(rows)), key=lambda i: (rows[i]["MAP"], -i))
    return rows[best]["window_s"], rows


def set_track_pooling(
    checkpoint: str | Path,
    out_dir: str | Path,
    manifest: str | Path | None = None,
    window_s: float | None = None,
    candidates: Sequence[float] = DEFAULT_WINDOWS_S,
    val_works: float | None = None,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write ``checkpoint`` to ``out_dir`` with multi-scale track vectors; returns the report stored
    under ``track_pooling`` in its config.json.

    window_s: use this window (seconds, hop half of it; 0 turns multi-scale vectors off) instead of
    choosing one on the validation works of ``manifest``. val_works: the validation fraction (or
    number) of works (default: the checkpoint's ``data.val_works``).
    """
    from csi_training.batching import split_works
    from csi_training.checkpoint import WRITTEN_HEADER_KEYS, load_checkpoint, save_checkpoint
    from csi_training.data import read_manifest
    from csi_training.datasets import load_manifest_features
    from csi_training.distributed import resolve_device
    from csi_training.feature_cache import FeatureCache

    out = Path(out_dir)
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    if window_s is None and manifest is None:
        raise ValueError("give a manifest to choose the window on, or the window itself (window_s)")
    ckpt = load_checkpoint(checkpoint)
    frame_rate = float(ckpt.encoder.frontend.frame_rate)
    rows: list[dict[str, float]] = []
    n_works = 0
    if window_s is None:
        assert manifest is not None
        entries = read_manifest(manifest)
        data = ckpt.config.data
        fraction = data.val_works if val_works is None else val_works
        validation = split_works([e.work_id for e in entries], fraction, 0.0, data.split_seed).val
        val_entries = [e for e in entries if e.work_id in validation]
        n_works = len(validation)
        if n_works < 2:
            raise ValueError(
                f"{manifest}: {n_works} validation works (val_works={fraction}); choosing a track "
                "window needs at least two — or give the window (--window-s)"
            )
        max_s = data.eval_max_s
        cache = FeatureCache.for_frontend(cache_dir, ckpt.info["frontend"], max_s) if cache_dir else None
        feats = load_manifest_features(val_entries, ckpt.encoder.frontend.cpu(), cache, max_s, progress)
        dev = resolve_device(device)
        with torch.no_grad():
            window_s, rows = select_track_windows(
                ckpt.encoder.backbone.to(dev), feats.features, feats.work_ids, frame_rate, dev, candidates
            )
    # ModelConfig refuses a negative or non-finite window (ConfigError is a ValueError)
    model = dataclasses.replace(ckpt.config.model, track_window_s=float(window_s), track_hop_s=window_s / 2)
    _checked_frames(window_s, frame_rate, int(getattr(ckpt.encoder.backbone, "min_frames", 1)))
    config = dataclasses.replace(ckpt.config, model=model)
    report = {
        "source": str(Path(checkpoint).resolve()),
        "manifest": str(manifest) if manifest is not None else None,
        "window_s": float(window_s),
        "hop_s": window_s / 2,
        "chosen_on_validation": bool(rows),
        "validation_works": n_works,
        "validation": rows,
    }
    carried = {k: v for k, v in ckpt.info.items() if k not in WRITTEN_HEADER_KEYS}
    save_checkpoint(
        out,
        ckpt.encoder.cpu(),
        config,
        {**carried, "track_pooling": report},
        {**ckpt.metrics, "track_pooling": report},
    )
    logger.info("checkpoint with track window %g s written to %s", window_s, out)
    return report
