"""``csi whiten``: fit a learned whitening (``csi_training.models.whitening``) to a trained checkpoint
and write a new checkpoint whose encoder ends with it.

The regularization ε is chosen on held-out works: the fitting manifest's works are split as the
checkpoint's training run split them (``data.val_works``, ``data.split_seed``), so that on the
training manifest the validation works are exactly the ones training never saw. Each candidate ε
is fitted on the other works and scored by leave-one-out MAP on the validation works; the chosen
one is then refitted on every work of the manifest.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from csi_training.models.whitening import WhiteningFit, fit_learned_whitening

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_REGULARIZATIONS", "WhitenError", "select_regularization", "whiten_checkpoint"]

#: candidate ε (fractions of the intra-work scatter's largest eigenvalue), tried in this order. The
#: smallest bounds the gain of the whitening at ε^(-1/2) ≈ 316× the largest intra-work spread, so
#: float16 encoders keep their precision (a smaller ε gained nothing on the rendered corpus).
DEFAULT_REGULARIZATIONS: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2)
#: ε used when the manifest has too few validation works to choose one
FALLBACK_REGULARIZATION = 1e-4


class WhitenError(ValueError):
    """The checkpoint or the manifest cannot give a whitening (already whitened, too few works, …)."""


def _map(embeddings: np.ndarray, work_ids: Sequence[str]) -> float:
    from csi_training.metrics import evaluate

    return float(evaluate(np.ascontiguousarray(embeddings, dtype=np.float32), list(work_ids))["MAP"])


def _has_pairs(work_ids: Sequence[str]) -> bool:
    """At least two works, one of them with two or more items (a leave-one-out MAP is defined)."""
    counts: dict[str, int] = {}
    for w in work_ids:
        counts[w] = counts.get(w, 0) + 1
    return len(counts) >= 2 and max(counts.values()) >= 2


def select_regularization(
    embeddings: np.ndarray,
    work_ids: Sequence[str],
    validation: frozenset[str] | set[str],
    candidates: Sequence[float] = DEFAULT_REGULARIZATIONS,
) -> tuple[float | None, list[dict[str, float | None]]]:
    """(best ε or None when it cannot be chosen, rows {regularization, MAP}) on the ``validation`` works.

    Each ε is fitted on the embeddings of the other works; the first row (regularization None) is the
    validation MAP without whitening. Ties go to the larger ε (the milder whitening).
    """
    works = np.asarray(work_ids)
    is_val = np.isin(works, list(validation))
    if not (_has_pairs(works[is_val].tolist()) and _has_pairs(works[~is_val].tolist())):
        return None, []
    val_x, val_w = embeddings[is_val], works[is_val].tolist()
    rows: list[dict[str, float | None]] = [{"regularization": None, "MAP": _map(val_x, val_w)}]
    for eps in candidates:
        fit = fit_learned_whitening(embeddings[~is_val], works[~is_val].tolist(), eps)
        rows.append({"regularization": float(eps), "MAP": _map(fit.apply(val_x), val_w)})
        logger.info("whitening ε=%g: validation MAP %.4f", eps, rows[-1]["MAP"])
    best = max(rows[1:], key=lambda r: (r["MAP"], r["regularization"]))
    return float(best["regularization"] or 0.0), rows


def whiten_checkpoint(
    checkpoint: str | Path,
    manifest: str | Path,
    out_dir: str | Path,
    regularization: float | None = None,
    candidates: Sequence[float] = DEFAULT_REGULARIZATIONS,
    val_works: float | None = None,
    device: str = "auto",
    max_s: float | None = None,
    cache_dir: str | Path | None = None,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Fit a whitening to ``checkpoint``'s embeddings of ``manifest`` and write the whitened checkpoint
    to ``out_dir``; returns the report also stored under ``whitening`` in its config.json.

    regularization: use this ε instead of choosing one. val_works: the validation fraction (or
    number) of works for choosing ε (default: the checkpoint's ``data.val_works``).
    """
    from csi_training.batching import split_works
    from csi_training.checkpoint import WRITTEN_HEADER_KEYS, load_checkpoint, save_checkpoint
    from csi_training.evaluation import embed_manifest
    from csi_training.models.encoder import build_encoder

    out = Path(out_dir)
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    ckpt = load_checkpoint(checkpoint)
    if ckpt.config.model.whitening:
        raise WhitenError(
            f"{checkpoint} is already whitened (fitted to {ckpt.info.get('whitening', {}).get('source')}); "
            "fit to the checkpoint it came from"
        )
    with torch.no_grad():
        embeddings, works, _, info = embed_manifest(
            ckpt, manifest, device, max_s, cache_dir, progress, multiscale=False
        )
    if not _has_pairs(works):
        raise WhitenError(
            f"{manifest}: {len(works)} usable files of {len(set(works))} works; learned whitening needs "
            "at least two works and a work with two or more versions"
        )
    x = embeddings.astype(np.float64)
    selection: list[dict[str, float | None]] = []
    if regularization is None:
        data = ckpt.config.data
        fraction = data.val_works if val_works is None else val_works
        validation = split_works(works, fraction, 0.0, data.split_seed).val
        regularization, selection = select_regularization(x, works, validation, candidates)
        if regularization is None:
            regularization = FALLBACK_REGULARIZATION
            logger.warning(
                "too few validation works in %s to choose the regularization; using %g",
                manifest,
                regularization,
            )
    fit: WhiteningFit = fit_learned_whitening(x, works, regularization)

    model = dataclasses.replace(ckpt.config.model, whitening=True)
    config = dataclasses.replace(ckpt.config, model=model)
    encoder = build_encoder(ckpt.info["frontend"], model)
    missing, unexpected = encoder.backbone.load_state_dict(ckpt.encoder.backbone.state_dict(), strict=False)
    if unexpected or any(not k.startswith("whitening.") for k in missing):
        raise WhitenError(
            f"cannot carry the weights of {checkpoint}: missing {missing}, unexpected {unexpected}"
        )
    assert encoder.backbone.whitening is not None
    encoder.backbone.whitening.set(fit.mean, fit.projection)

    report = {
        "source": str(Path(checkpoint).resolve()),
        "manifest": str(manifest),
        "regularization": fit.regularization,
        "chosen_on_validation": bool(selection),
        "validation": selection,
        "embeddings": fit.n_embeddings,
        "works": fit.n_works,
        "pairs": fit.n_pairs,
        "skipped_files": len(info["skipped"]),
    }
    carried = {k: v for k, v in ckpt.info.items() if k not in WRITTEN_HEADER_KEYS}
    save_checkpoint(
        out, encoder, config, {**carried, "whitening": report}, {**ckpt.metrics, "whitening": report}
    )
    logger.info("whitened checkpoint written to %s (ε=%g, %d works)", out, fit.regularization, fit.n_works)
    return report
