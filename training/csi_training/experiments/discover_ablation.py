"""DisCover ablation: backbone alone / +KDM / +GADM / +both on the same unseen works, and a few-shot split.

One command trains every variant with the same config, seed, data and number of steps (each run
resumable: a finished variant is skipped), evaluates them on the same held-out works, and writes a
Markdown table plus its JSON next to it::

    python -m csi_training.experiments.discover_ablation --out docs/results/discover.md \\
        --train-manifest runs/rendered/train_manifest.csv --test-manifest runs/rendered/test_manifest.csv \\
        --cache-dir runs/rendered/features --config configs/discover_small.yaml \\
        --init-from runs/rendered/model/best --train-works 150 --test-works 100 --epochs 3 \\
        --work-dir runs/discover_ablation

Variants: ``backbone`` (recipe move), ``kdm``, ``gadm``, ``both`` (recipe discover with the modules
on or off) and ``gadm_random`` (GADM masking as many random elements instead of the largest-gradient
ones: tests the gradient criterion). Rows report MAP, P@10 and MR1 (leave-one-out over the test
tracks), and held-out vCLUB estimates (nats) of the mutual information between the test embeddings
and the F0 / timbre factors of the test tracks, for every variant and for the starting checkpoint
(``--init-from``) — "before and after".

Few-shot split (``--few-shot``): the training works keep at most 2 versions each; on the test works
one version per work is the reference and every other version queries the references only.

``--whiten`` adds, under each trained variant, a row for the same checkpoint with a learned whitening
fitted afterwards (``csi whiten``: on the manifest that variant trained on, its ε chosen on that run's
validation works): the linear, post-hoc way of removing the directions in which versions differ, set
beside the trained disentanglement.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from csi_runtime.atomic import atomic_write_text

logger = logging.getLogger("csi_training.experiments.discover_ablation")

VARIANTS: dict[str, dict[str, Any]] = {
    "backbone": {"recipe": "move"},
    "kdm": {"recipe": "discover", "discover.kdm": True, "discover.gadm": False},
    "gadm": {"recipe": "discover", "discover.kdm": False, "discover.gadm": True},
    "both": {"recipe": "discover", "discover.kdm": True, "discover.gadm": True},
    "gadm_random": {
        "recipe": "discover",
        "discover.kdm": False,
        "discover.gadm": True,
        "discover.mask": "random",
    },
}
LABELS = {
    "start": "starting checkpoint (--init-from), not fine-tuned",
    "backbone": "backbone alone (recipe move)",
    "kdm": "+KDM",
    "gadm": "+GADM",
    "both": "+KDM +GADM (DisCover)",
    "gadm_random": "+GADM, random mask (ablation)",
}
METRICS = ("MAP", "P@10", "MR1", "MRR")


def _ranked_works(work_ids: list[str], seed: int) -> list[str]:
    return sorted(set(work_ids), key=lambda w: hashlib.sha256(f"{seed}:{w}".encode()).digest())


def _subset_manifest(
    source: Path, n_works: int | None, max_versions: int | None, seed: int, out: Path
) -> tuple[Path, int]:
    """A manifest of ``n_works`` works of ``source`` (seeded choice), at most ``max_versions`` each."""
    from csi_training.data import read_manifest, write_manifest

    entries = read_manifest(source)
    works = _ranked_works([e.work_id for e in entries], seed)
    chosen = set(works[:n_works] if n_works else works)
    by_work: dict[str, list[Any]] = {}
    for e in entries:
        if e.work_id in chosen:
            by_work.setdefault(e.work_id, []).append(e)
    kept = []
    for work in sorted(by_work):
        items = sorted(by_work[work], key=lambda e: e.version_id)
        kept += items[:max_versions] if max_versions else items
    write_manifest(out, kept)
    return out, len(chosen)


def _train_variant(
    args: argparse.Namespace, name: str, manifest: Path, run_dir: Path, init_from: str | None
) -> Path:
    import yaml

    from csi_training.config import load_config
    from csi_training.trainer import train

    overrides: dict[str, Any] = {
        **VARIANTS[name],
        "seed": args.seed,
        "out_dir": str(run_dir),
        "data.manifest": str(manifest),
        "data.cache_dir": str(args.cache_dir),
        "optim.epochs": args.epochs,
        "device": args.device,
    }
    if args.steps_per_epoch:
        overrides["optim.steps_per_epoch"] = args.steps_per_epoch
    if init_from:
        overrides["init_from"] = str(init_from)
    for item in args.set or []:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    config = load_config(args.config, overrides)
    header = run_dir / "last" / "config.json"
    done = header.exists() and json.loads(header.read_text()).get("epoch") == config.optim.epochs
    if not done:
        t0 = time.monotonic()
        train(config, resume=(run_dir / "last").exists(), progress=args.progress)
        logger.info("%s trained in %.0f s", name, time.monotonic() - t0)
    return run_dir / args.checkpoint


def _whitened(
    args: argparse.Namespace, checkpoint: Path, manifest: Path, run_dir: Path
) -> tuple[Path, float]:
    """``checkpoint`` with a learned whitening fitted on ``manifest`` (written once, under ``run_dir``):
    (whitened checkpoint folder, the regularization chosen)."""
    from csi_training.checkpoint import read_header
    from csi_training.whiten import whiten_checkpoint

    out = run_dir / "whitened"
    header = read_header(out) if (out / "config.json").exists() else {}
    if (
        header
        and header["whitening"]["source"] == str(checkpoint)
        and header["step"] == read_header(checkpoint)["step"]
    ):
        report = header["whitening"]
    else:
        report = whiten_checkpoint(
            checkpoint, manifest, out, device=args.device, cache_dir=args.cache_dir, force=True
        )
    return out, float(report["regularization"])


def _rows(
    args: argparse.Namespace,
    name: str,
    checkpoint: Path,
    manifest: Path,
    run_dir: Path,
    test: tuple[Any, dict[str, np.ndarray]],
    few_shot: bool,
) -> list[dict[str, Any]]:
    """The evaluated row of a trained variant, and with ``--whiten`` the row of its whitened copy."""
    rows = [{"variant": name, **_evaluate(args, checkpoint, *test, few_shot)}]
    if args.whiten:
        whitened, regularization = _whitened(args, checkpoint, manifest, run_dir)
        rows.append(
            {
                "variant": name,
                "whitened": True,
                "regularization": regularization,
                **_evaluate(args, whitened, *test, few_shot),
            }
        )
    for row in rows:
        logger.info("%s%s: %s", "few-shot " if few_shot else "", name, row)
    return rows


def _test_set(args: argparse.Namespace, manifest: Path) -> tuple[Any, dict[str, np.ndarray]]:
    """Test features (through the cache) and their F0 / timbre factors ([N, dim] float32 each)."""
    from csi_training.config import load_config
    from csi_training.data import read_manifest
    from csi_training.datasets import load_manifest_features
    from csi_training.discover.recipe import version_factors
    from csi_training.feature_cache import FeatureCache
    from csi_training.frontends import frontend_from_dict

    config = load_config(args.config, {"data.manifest": str(manifest)})
    frontend = frontend_from_dict(dict(config.frontend))
    cache = FeatureCache.for_frontend(args.cache_dir, frontend.config.to_dict(), config.data.eval_max_s)
    features = load_manifest_features(read_manifest(manifest), frontend, cache, config.data.eval_max_s)
    factors: dict[str, list[np.ndarray]] = {"f0": [], "timbre": []}
    for feats in features.features:
        x = torch.from_numpy(np.asarray(feats, np.float32))[None]
        for name, z in version_factors(
            x, ("f0", "timbre"), frontend.config.to_dict(), config.discover.n_timbre_coeffs
        ).items():
            factors[name].append(z[0].numpy())
    return features, {k: np.stack(v) for k, v in factors.items()}


def _evaluate(
    args: argparse.Namespace,
    checkpoint: Path,
    features: Any,
    factors: dict[str, np.ndarray],
    few_shot: bool,
) -> dict[str, Any]:
    from csi_training.checkpoint import load_checkpoint
    from csi_training.datasets import embed_features
    from csi_training.discover.club import estimate_mi
    from csi_training.metrics import evaluate

    ckpt = load_checkpoint(checkpoint)
    emb = embed_features(ckpt.encoder.backbone, features.features, torch.device("cpu"))
    works = list(features.work_ids)
    if few_shot:  # one reference per work (its first version), the other versions query
        first: dict[str, int] = {}
        for i in sorted(range(len(works)), key=lambda i: features.version_ids[i]):
            first.setdefault(works[i], i)
        refs = sorted(first.values())
        queries = [i for i in range(len(works)) if i not in set(refs)]
        metrics = evaluate(emb, works, queries=queries, refs=refs)
    else:
        metrics = evaluate(emb, works)
    row: dict[str, Any] = {k: float(metrics[k]) for k in METRICS}
    row["queries"] = int(metrics["n_queries"])
    row["epoch"] = ckpt.info.get("epoch")
    for name, z in factors.items():
        estimates = [
            estimate_mi(torch.from_numpy(emb), torch.from_numpy(z), steps=args.mi_steps, seed=args.seed + r)
            for r in range(args.mi_repeats)
        ]
        row[f"MI_{name}"] = float(np.mean(estimates))
        row[f"MI_{name}_sd"] = float(np.std(estimates))
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    train_manifest, n_train = _subset_manifest(
        Path(args.train_manifest), args.train_works, None, args.seed, work_dir / "train.csv"
    )
    test_manifest, n_test = _subset_manifest(
        Path(args.test_manifest), args.test_works, None, args.seed, work_dir / "test.csv"
    )
    test = _test_set(args, test_manifest)
    features, factors = test
    logger.info("%d training works; test: %d works, %d tracks", n_train, n_test, len(features))
    result: dict[str, Any] = {
        "command": args.command,
        "train_works": n_train,
        "test_works": n_test,
        "test_tracks": len(features),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": [],
        "few_shot_rows": [],
    }
    if args.init_from:
        result["rows"].append(
            {"variant": "start", **_evaluate(args, Path(args.init_from), features, factors, False)}
        )
    for name in args.variants:
        checkpoint = _train_variant(args, name, train_manifest, work_dir / name, args.init_from)
        result["rows"] += _rows(args, name, checkpoint, train_manifest, work_dir / name, test, False)
    if args.few_shot:
        few_manifest, _ = _subset_manifest(
            Path(args.train_manifest), args.train_works, 2, args.seed, work_dir / "train_fewshot.csv"
        )
        few_init = None if args.few_shot_from_scratch else args.init_from
        if few_init:
            result["few_shot_rows"].append(
                {"variant": "start", **_evaluate(args, Path(args.init_from), features, factors, True)}
            )
        for name in args.few_shot_variants:
            run_dir = work_dir / f"fewshot_{name}"
            checkpoint = _train_variant(args, name, few_manifest, run_dir, few_init)
            result["few_shot_rows"] += _rows(args, name, checkpoint, few_manifest, run_dir, test, True)
    result["wall_s"] = time.monotonic() - t_start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=2, default=float) + "\n")
    atomic_write_text(out, _report(result, args))
    return result


def _table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| variant | queries | MAP | P@10 | MR1 | MRR | MI(emb; F0) | MI(emb; timbre) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        label = LABELS.get(r["variant"], r["variant"])
        if r.get("whitened"):
            label += f", whitened (ε {r['regularization']:g})"
        lines.append(
            f"| {label} | {r['queries']} | {r['MAP']:.3f} | {r['P@10']:.3f} | "
            f"{r['MR1']:.2f} | {r['MRR']:.3f} | {r['MI_f0']:.3f} ± {r['MI_f0_sd']:.3f} | "
            f"{r['MI_timbre']:.3f} ± {r['MI_timbre_sd']:.3f} |"
        )
    return lines


def _command(argv: list[str]) -> str:
    """The command line that reproduces a run (report-only options left out)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--note":
            skip = True
        elif arg != "--report-only" and not arg.startswith("--note="):
            kept.append(arg)
    return "python -m csi_training.experiments.discover_ablation " + shlex.join(kept)


def _report(result: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "<!-- written by python -m csi_training.experiments.discover_ablation -->",
        *([args.note, ""] if args.note else []),
        f"Command: `{result['command']}`",
        "",
        f"Training: {result['train_works']} works of `{args.train_manifest}` (config `{args.config}`, "
        f"seed {args.seed}, {args.epochs} epochs"
        + (f" × {args.steps_per_epoch} steps" if args.steps_per_epoch else "")
        + (f", starting from `{args.init_from}`" if args.init_from else "")
        + f"; `{args.checkpoint}` checkpoints). Test: {result['test_works']} unseen works of "
        f"`{args.test_manifest}` ({result['test_tracks']} tracks), leave-one-out. MI: held-out vCLUB "
        f"estimate in nats between the test embeddings and the tracks' CQT-domain F0 / timbre factors "
        f"(mean ± sd of {args.mi_repeats} random halvings, {args.mi_steps} fitting steps each).",
        *(["", *_table(result["rows"])] if result["rows"] else []),
    ]
    if result["few_shot_rows"]:
        lines += [
            "",
            "Few-shot split: the same training works with at most 2 versions each; on the test works one "
            "version per work is the only reference, the others query it."
            + (
                f" The variants start from `{args.init_from}`, which saw every version of the training "
                "works: this split then tests the fine-tuning, not learning from few versions "
                "(`--few-shot-from-scratch` does)."
                if args.init_from and not args.few_shot_from_scratch
                else " The variants train from scratch."
            ),
            "",
            *_table(result["few_shot_rows"]),
        ]
    lines += [
        "",
        f"Wall time of the call that wrote this: {result['wall_s'] / 60:.1f} min "
        "(runs finished by an earlier call are re-used, not re-trained).",
    ]
    return "\n".join(lines) + "\n"


def _variant_list(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="Markdown table to write (the JSON goes next to it)")
    p.add_argument("--train-manifest", required=True)
    p.add_argument("--test-manifest", required=True, help="held-out works, never trained on")
    p.add_argument("--cache-dir", required=True, help="feature cache (shared with training)")
    p.add_argument("--config", default="configs/discover_small.yaml")
    p.add_argument("--work-dir", required=True, help="runs and subset manifests go here")
    p.add_argument("--init-from", default=None, help="checkpoint folder every variant starts from")
    p.add_argument("--train-works", type=int, default=None, help="use this many training works (all)")
    p.add_argument("--test-works", type=int, default=None, help="evaluate on this many test works (all)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps-per-epoch", type=int, default=None)
    p.add_argument(
        "--variants",
        type=_variant_list,
        default=["backbone", "kdm", "gadm", "both"],
        help="comma-separated; empty ('') runs only the few-shot split",
    )
    p.add_argument("--few-shot", action="store_true")
    p.add_argument(
        "--few-shot-from-scratch",
        action="store_true",
        help="few-shot variants ignore --init-from (whose model may have seen every version)",
    )
    p.add_argument("--few-shot-variants", type=_variant_list, default=["backbone", "both"])
    p.add_argument("--checkpoint", choices=["last", "best"], default="last")
    p.add_argument(
        "--whiten",
        action="store_true",
        help="also evaluate each trained variant with a learned whitening fitted on its training manifest",
    )
    p.add_argument("--set", action="append", help="config override KEY=VALUE for every variant")
    p.add_argument("--mi-steps", type=int, default=300)
    p.add_argument("--mi-repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--note", default="", help="a paragraph put at the top of the report")
    p.add_argument(
        "--report-only", action="store_true", help="re-write the Markdown from the JSON next to --out"
    )
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(raw_argv)
    args.command = _command(raw_argv)
    unknown = sorted(set(args.variants + args.few_shot_variants) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if not args.variants and not (args.few_shot and args.few_shot_variants):
        p.error("nothing to run: --variants is empty and no --few-shot variants were given")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    out = Path(args.out)
    if args.report_only:
        result = json.loads(out.with_suffix(".json").read_text())
        result.setdefault("command", args.command)
        atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=2, default=float) + "\n")
        atomic_write_text(out, _report(result, args))
    else:
        result = run(args)
    print(out.read_text())
    logger.info("done in %.0f s", result["wall_s"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
