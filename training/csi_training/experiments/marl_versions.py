"""MARL on versions (smoke scale): the two views are two versions of one work; is the shared latent a
version-identification embedding?

    python -m csi_training.experiments.marl_versions --out docs/results/marl_versions.md

Data: the rendered-versions corpus (``--train-manifest``, ``--test-manifest``; test works are never
trained on), as the cached CQT features of the MOVE baseline's frontend (``--checkpoint``'s config:
84 bins, 5 frames/s; computed from the audio where the cache lacks them). Each recording becomes
one view: its first 30 s (150 frames, zero-padded if shorter), averaged over 5-frame blocks
([84, 30], 1 frame/s) and divided by its maximum (values in [0, 1]). A training item is two different
versions of one training work.

Model: csi_training.models.marl.MultiViewVAE (MLP 2520-512-128, 32-d shared latent (product of
experts), 16-d private latent per view), objective reconstruction + gamma * dimension-wise KL per
subspace by default (``--alpha/--beta/--gamma``).

Evaluation: leave-one-out retrieval (csi_training.metrics.evaluate, cosine) over the test
manifest's recordings, each embedded alone: its shared expert's mean (what a single recording tells
about the shared latent), its private latent's mean, and the raw pooled input as a reference
without learning. The MOVE-style CQTNet's MAP on the same 800 recordings is quoted from
docs/results/rendered_baseline.md (not recomputed here).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from csi_runtime.atomic import atomic_write_text
from csi_training.models.marl import MARLWeights, MultiViewVAE, fit_multiview_vae

logger = logging.getLogger("csi_training.experiments.marl_versions")

FRAMES = 150  # 30 s at the cached features' 5 frames per second
POOL = 5  # frames averaged into one input column
MOVE_BASELINE_MAP = 0.594  # docs/results/rendered_baseline.md, the same 800 test recordings


def view_of(features: np.ndarray) -> np.ndarray:
    """Cached features [F, T] (non-negative) → one view float32 [F, FRAMES // POOL] in [0, 1]."""
    x = np.zeros((features.shape[0], FRAMES), dtype=np.float32)
    t = min(FRAMES, features.shape[1])
    x[:, :t] = features[:, :t]
    x = x.reshape(features.shape[0], FRAMES // POOL, POOL).mean(axis=2)
    peak = float(x.max())
    if not np.isfinite(peak) or peak <= 0.0:
        raise ValueError("features are silent or non-finite: no view can be made of them")
    return np.clip(x / peak, 0.0, 1.0)


def load_views(manifest: Path, checkpoint: Path, cache_dir: Path | None) -> tuple[np.ndarray, list[str]]:
    """Views [N, F, FRAMES // POOL] and work ids of every usable recording of a manifest."""
    from csi_training.checkpoint import read_header
    from csi_training.data import read_manifest
    from csi_training.datasets import load_manifest_features
    from csi_training.feature_cache import FeatureCache
    from csi_training.frontends import frontend_from_dict

    header = read_header(checkpoint)
    frontend = frontend_from_dict(dict(header["frontend"]))
    max_s = float(header["config"]["data"]["eval_max_s"])
    cache = FeatureCache.for_frontend(cache_dir, frontend.config.to_dict(), max_s) if cache_dir else None
    features = load_manifest_features(read_manifest(manifest), frontend, cache, max_s, workers=1)
    if features.skipped:
        logger.warning(
            "%d recordings of %s skipped, e.g. %s", len(features.skipped), manifest, features.skipped[0]
        )
    views = np.stack([view_of(np.asarray(f, dtype=np.float32)) for f in features.features])
    return views, list(features.work_ids)


def _version_pairs(works: list[str]) -> tuple[list[np.ndarray], int]:
    by_work: dict[str, list[int]] = {}
    for i, w in enumerate(works):
        by_work.setdefault(w, []).append(i)
    groups = [np.array(v) for v in by_work.values() if len(v) >= 2]
    return groups, int(sum(len(g) * (len(g) - 1) for g in groups))


def train(
    views: np.ndarray, works: list[str], weights: MARLWeights, steps: int, batch: int, seed: int
) -> tuple[MultiViewVAE, dict[str, float]]:
    groups, n_pairs = _version_pairs(works)
    if len(groups) < batch:
        raise ValueError(f"{len(groups)} works with >= 2 versions; a batch needs {batch}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = MultiViewVAE(views.shape[1], views.shape[2], shared_dim=32, private_dim=16, hidden=(512, 128))
    data = torch.from_numpy(views)

    def next_views() -> torch.Tensor:
        chosen = rng.choice(len(groups), size=batch, replace=False)
        pairs = np.stack([rng.choice(groups[g], size=2, replace=False) for g in chosen])
        return data[torch.from_numpy(pairs)]

    return model, fit_multiview_vae(model, next_views, weights, steps, 1e-3, len(views), n_pairs)


def retrieval(model: MultiViewVAE, views: np.ndarray, works: list[str]) -> dict[str, dict[str, float]]:
    from csi_training.metrics import evaluate

    model.eval()
    with torch.no_grad():
        expert_mu, _, private_mu, _ = model.encode(torch.from_numpy(views)[:, None].expand(-1, 2, -1, -1))
    embeddings = {
        "MARL shared latent (single-view expert mean)": expert_mu[:, 0].numpy(),
        "MARL private latent": private_mu[:, 0].numpy(),
        "raw pooled CQT input (no learning)": views.reshape(len(views), -1),
    }
    keys = ("MAP", "P@10", "MR1", "MRR", "Top1")
    return {
        name: {k: float(v) for k, v in evaluate(e, works, metric="cosine").items() if k in keys}
        for name, e in embeddings.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    root = Path("/work/runs/rendered")
    parser.add_argument("--train-manifest", type=Path, default=root / "train_manifest.csv")
    parser.add_argument("--test-manifest", type=Path, default=root / "test_manifest.csv")
    parser.add_argument("--checkpoint", type=Path, default=root / "model" / "best", help="frontend source")
    parser.add_argument("--cache-dir", type=Path, default=root / "features")
    parser.add_argument("--out", type=Path, default=Path("docs/results/marl_versions.md"))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=64, help="works (pairs of versions) per batch")
    parser.add_argument("--alpha", type=float, default=0.0)
    parser.add_argument("--beta", type=float, default=0.0)
    parser.add_argument("--gamma", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    train_views, train_works = load_views(args.train_manifest, args.checkpoint, args.cache_dir)
    test_views, test_works = load_views(args.test_manifest, args.checkpoint, args.cache_dir)
    if set(train_works) & set(test_works):
        raise SystemExit("the test manifest shares works with the training manifest")
    logger.info(
        "%d training and %d test recordings (%.0f s)",
        len(train_views),
        len(test_views),
        time.monotonic() - t0,
    )
    weights = MARLWeights(args.alpha, args.beta, args.gamma)
    model, stats = train(train_views, train_works, weights, args.steps, args.batch, args.seed)
    results = retrieval(model, test_views, test_works)
    report = {
        "weights": {"alpha": args.alpha, "beta": args.beta, "gamma": args.gamma},
        "steps": args.steps,
        "batch_works": args.batch,
        "train_recordings": len(train_views),
        "train_works": len(set(train_works)),
        "test_recordings": len(test_views),
        "test_works": len(set(test_works)),
        "train": stats,
        "retrieval": results,
        "move_baseline_map": MOVE_BASELINE_MAP,
        "seconds": time.monotonic() - t0,
    }
    shown = argv if argv is not None else sys.argv[1:]
    command = "python -m csi_training.experiments.marl_versions " + " ".join(shlex.quote(a) for a in shown)
    lines = [
        "# MARL on versions (smoke scale): shared latent as a version-identification embedding",
        "",
        f"Generated by `{command.strip()}` (CPU, one thread); method in the module docstring of "
        "`csi_training.experiments.marl_versions`. Training: "
        f"{report['train_recordings']} recordings of {report['train_works']} works, {args.steps} steps of "
        f"{args.batch} version pairs, alpha {args.alpha:g}, beta {args.beta:g}, gamma {args.gamma:g}. "
        f"Test: {report['test_recordings']} recordings of {report['test_works']} unseen works, "
        "leave-one-out, cosine.",
        "",
        "| embedding | MAP | P@10 | MR1 | MRR | Top1 |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in results.items():
        figures = f"{m['MAP']:.3f} | {m['P@10']:.3f} | {m['MR1']:.2f} | {m['MRR']:.3f} | {m['Top1']:.3f}"
        lines.append(f"| {name} | {figures} |")
    lines += [
        f"| MOVE-style CQTNet (docs/results/rendered_baseline.md, not recomputed) | {MOVE_BASELINE_MAP:.3f} "
        "| | | | |",
        "",
    ]
    json_path = args.out.with_suffix(".json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json_path, json.dumps(report, indent=2, default=float) + "\n")
    atomic_write_text(args.out, "\n".join(lines))
    logger.info("wrote %s and %s", args.out, json_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
