"""Evaluate a checkpoint on the tracks of a manifest: every track queries all the others."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from csi_training.checkpoint import Checkpoint, load_checkpoint
from csi_training.datasets import embed_features, load_manifest_features
from csi_training.distributed import autocast, resolve_device

logger = logging.getLogger(__name__)

__all__ = ["embed_manifest", "evaluate_checkpoint"]


def embed_manifest(
    checkpoint: str | Path | Checkpoint,
    manifest: str | Path,
    device: str = "auto",
    max_s: float | None = None,
    cache_dir: str | Path | None = None,
    progress: Callable[[int], None] | None = None,
    multiscale: bool = True,
) -> tuple[np.ndarray, list[str], list[str], dict[str, Any]]:
    """(embeddings [N, D] float32, work ids, version ids, info) for the usable files of a manifest.

    ``checkpoint``: a checkpoint folder, or one already loaded (its encoder is moved to ``device``).
    Track vectors are multi-scale when the checkpoint's ``model.track_window_s`` says so
    (``csi_training.track_pooling``), unless ``multiscale`` is False (whole-track embeddings).
    """
    from csi_training.data import read_manifest
    from csi_training.feature_cache import FeatureCache
    from csi_training.track_pooling import track_window_frames

    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    dev = resolve_device(device)
    encoder = ckpt.encoder.to(dev)
    max_s = max_s or ckpt.config.data.eval_max_s
    entries = read_manifest(manifest)
    cache = None
    if cache_dir is not None:
        cache = FeatureCache.for_frontend(cache_dir, ckpt.info["frontend"], max_s)
    frontend = encoder.frontend.cpu()
    feats = load_manifest_features(entries, frontend, cache, max_s, progress)
    model = ckpt.config.model
    windows = track_window_frames(model.track_window_s, model.track_hop_s, frontend.frame_rate)
    with autocast(dev, ckpt.config.amp and dev.type == "cuda"):
        emb = embed_features(
            encoder.backbone, feats.features, dev, track_windows=windows if multiscale else None
        )
    info = {
        "files": len(entries),
        "used": len(feats),
        "paths": feats.paths,
        "skipped": feats.skipped,
        "checkpoint": str(ckpt.path),
        "epoch": ckpt.info.get("epoch"),
        "manifest": str(manifest),
        "track_window_s": model.track_window_s if multiscale else 0.0,
    }
    return emb.astype(np.float32), feats.work_ids, feats.version_ids, info


def evaluate_checkpoint(
    checkpoint: str | Path,
    manifest: str | Path,
    device: str = "auto",
    max_s: float | None = None,
    cache_dir: str | Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """MAP, P@10, MR1, MRR, … of a checkpoint on a manifest (leave-one-out), plus what was skipped."""
    from csi_training.metrics import evaluate

    torch.set_grad_enabled(False)
    try:
        emb, works, _, info = embed_manifest(checkpoint, manifest, device, max_s, cache_dir, progress)
    finally:
        torch.set_grad_enabled(True)
    if len(works) < 2:
        raise ValueError(f"{manifest}: fewer than two usable files; nothing to evaluate")
    metrics = {k: v for k, v in evaluate(emb, works).items() if not isinstance(v, np.ndarray)}
    info.pop("paths")
    return {"metrics": metrics, **info, "skipped_count": len(info["skipped"])}
