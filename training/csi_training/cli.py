"""``csi train``, ``csi eval``, ``csi whiten``, ``csi pooling`` and ``csi data …``: the training side
of ``csi``.

Registered through the ``csi.commands`` entry point; this module imports nothing heavy at import
time (torch and the data engine load only when a command runs), so ``csi info`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _setup_logging() -> None:
    from csi_runtime.cli import console_logging

    console_logging("csi_training")


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # a bare string such as --set loss.mining=hard
    return key.strip(), value


def _with_embedding_bar(manifest: str, work: Callable[[Callable[[int], None]], T]) -> T:
    """``work(progress)`` under a progress bar counting the files of ``manifest`` as they embed."""
    from csi_runtime.cli import Progress
    from csi_training.data import read_manifest

    bar = Progress(len(read_manifest(manifest)), "embedding")
    try:
        return work(bar.advance)
    finally:
        bar.close()


def cmd_train(args: argparse.Namespace) -> int:
    _setup_logging()
    from csi_training.config import ConfigError, config_from_dict, read_config_dict
    from csi_training.distributed import exit_worker, is_torchrun_worker
    from csi_training.trainer import train

    overrides = dict(args.set or [])
    if args.out:
        overrides["out_dir"] = args.out
    data = read_config_dict(args.config, overrides)
    if data.get("recipe") == "mart_pretrain":  # experiments.mart_pretrain.PRETRAIN_RECIPE
        return _mart_pretrain(data, args)
    try:
        config = config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"config {args.config}: {exc}") from exc
    result = train(config, resume=args.resume, progress=not args.no_progress and sys.stderr.isatty())
    if result.best:
        val = result.best.get("val", {})
        print(
            f"best epoch {result.best.get('epoch')}: "
            + ", ".join(f"{k} {val[k]:.4f}" for k in ("MAP", "P@10", "MR1", "MRR") if k in val)
        )
    print(f"checkpoints: {result.out_dir / 'best'} (best), {result.out_dir / 'last'} (last)")
    if is_torchrun_worker():  # past destroy_process_group: skip the teardown that can abort (exit_worker)
        exit_worker(0)
    return 0


def _mart_pretrain(data: dict[str, Any], args: argparse.Namespace) -> int:
    """``csi train`` on a ``recipe: mart_pretrain`` config: MART's self-supervised pre-training
    (``csi_training.experiments.mart_pretrain``), whose checkpoint a ``model.name: mart`` training
    config then takes as ``init_from``."""
    from csi_training.config import ConfigError
    from csi_training.experiments.mart_pretrain import pretrain, pretrain_config_from_dict

    data = dict(data)
    out_dir = data.pop("out_dir", None)
    if not out_dir:
        raise ConfigError(f"config {args.config}: MART pre-training needs out_dir (or --out)")
    try:
        config = pretrain_config_from_dict(data)
    except ValueError as exc:
        raise ConfigError(f"config {args.config}: {exc}") from exc
    result = pretrain(config, out_dir, resume=args.resume)
    last = result["history"][-1] if result["history"] else {}
    print(
        f"pre-trained on {result['train_files']} files ({result['val_files']} held out); last evaluation: "
        + json.dumps(last, default=float)
    )
    print(f"checkpoint: {Path(out_dir) / 'checkpoint'} (init_from of a model.name: mart config)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    _setup_logging()
    from csi_training.evaluation import evaluate_checkpoint

    report = _with_embedding_bar(
        args.manifest,
        lambda progress: evaluate_checkpoint(
            args.checkpoint,
            args.manifest,
            device=args.device,
            max_s=args.max_s,
            cache_dir=args.cache_dir,
            progress=progress,
        ),
    )
    m = report["metrics"]
    print(
        f"{report['used']} of {report['files']} files ({report['skipped_count']} skipped), "
        f"{m.get('n_queries')} queries"
    )
    for key in ("MAP", "P@10", "MR1", "MRR", "Top1", "Top10"):
        if key in m:
            print(f"  {key:<6} {m[key]:.4f}")
    out = (
        Path(args.out) if args.out else Path(args.checkpoint) / "eval" / (Path(args.manifest).stem + ".json")
    )
    from csi_runtime.atomic import atomic_write_text

    atomic_write_text(out, json.dumps(report, indent=2, default=float) + "\n")
    print(f"wrote {out}")
    return 0


def cmd_whiten(args: argparse.Namespace) -> int:
    _setup_logging()
    from csi_training.whiten import whiten_checkpoint

    report = _with_embedding_bar(
        args.manifest,
        lambda progress: whiten_checkpoint(
            args.checkpoint,
            args.manifest,
            args.out,
            regularization=args.regularization,
            val_works=args.val_works,
            device=args.device,
            max_s=args.max_s,
            cache_dir=args.cache_dir,
            force=args.force,
            progress=progress,
        ),
    )
    if report["validation"]:
        print("validation MAP by regularization (fitted on the other works):")
        for row in report["validation"]:
            eps = "none" if row["regularization"] is None else f"{row['regularization']:g}"
            print(f"  {eps:>8}  {row['MAP']:.4f}")
    print(
        f"whitening fitted on {report['embeddings']} embeddings of {report['works']} works "
        f"({report['pairs']} same-work pairs), regularization {report['regularization']:g}"
    )
    print(f"wrote {args.out} (evaluate it with csi eval, export it with export/build_engine.py)")
    return 0


def cmd_pooling(args: argparse.Namespace) -> int:
    _setup_logging()
    from csi_training.track_pooling import DEFAULT_WINDOWS_S, set_track_pooling

    if args.window_s is None and args.manifest is None:
        raise SystemExit(
            "csi pooling: give --manifest (to choose the window on validation works) or --window-s"
        )
    report = set_track_pooling(
        args.checkpoint,
        args.out,
        manifest=args.manifest,
        window_s=args.window_s,
        candidates=args.candidates or DEFAULT_WINDOWS_S,
        val_works=args.val_works,
        device=args.device,
        cache_dir=args.cache_dir,
        force=args.force,
    )
    if report["validation"]:
        print(f"validation MAP by track window ({report['validation_works']} works; 0 = whole track only):")
        for row in report["validation"]:
            print(f"  {row['window_s']:>5g} s  {row['MAP']:.4f}")
    window = report["window_s"]
    what = (
        f"windows of {window:g} s every {report['hop_s']:g} s" if window > 0 else "whole-track vectors only"
    )
    print(f"track vectors: {what}")
    print(f"wrote {args.out} (evaluate it with csi eval, export it with export/build_engine.py)")
    return 0


def register(sub: Any) -> None:
    """Add train / eval / data to the ``csi`` subcommand parser."""
    p = sub.add_parser("train", help="train an encoder from a YAML/TOML config (runs under torchrun too)")
    p.add_argument("--config", required=True, help="training config (.yaml, .yml, .toml or .json)")
    p.add_argument("--resume", action="store_true", help="continue the run in the config's out_dir")
    p.add_argument("--out", help="override out_dir")
    p.add_argument(
        "--set",
        action="append",
        type=_parse_override,
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.epochs=5 (repeatable)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="MAP / P@10 / MR1 / MRR of a checkpoint on a manifest (leave-one-out)")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (…/best or …/last)")
    p.add_argument("--manifest", required=True, help="CSV manifest: path,work_id[,version_id]")
    p.add_argument("--out", help="metrics JSON to write (default: CHECKPOINT/eval/<manifest>.json)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--max-s", type=float, default=None, help="seconds of each track to use")
    p.add_argument("--cache-dir", default=None, help="feature cache folder (default: none)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "whiten",
        help="fit a learned whitening to a checkpoint on a labelled manifest (a new checkpoint)",
    )
    p.add_argument("--checkpoint", required=True, help="trained checkpoint folder (…/best or …/last)")
    p.add_argument("--manifest", required=True, help="labelled CSV manifest to fit on (the training one)")
    p.add_argument("--out", required=True, help="folder of the whitened checkpoint")
    p.add_argument(
        "--regularization",
        type=float,
        default=None,
        help="ε as a fraction of the largest intra-work eigenvalue (default: chosen on validation works)",
    )
    p.add_argument(
        "--val-works", type=float, default=None, help="validation works for choosing ε (default: the run's)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--max-s", type=float, default=None, help="seconds of each track to use")
    p.add_argument("--cache-dir", default=None, help="feature cache folder (default: none)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_whiten)

    p = sub.add_parser(
        "pooling",
        help="multi-scale track vectors for a checkpoint: whole track + mean of windows (a new checkpoint)",
    )
    p.add_argument("--checkpoint", required=True, help="trained (or whitened) checkpoint folder")
    p.add_argument("--out", required=True, help="folder of the new checkpoint")
    p.add_argument("--manifest", help="labelled CSV manifest whose validation works choose the window")
    p.add_argument(
        "--window-s", type=float, default=None, help="use this window (seconds; 0 = off) instead of choosing"
    )
    p.add_argument(
        "--candidates",
        type=float,
        nargs="+",
        default=None,
        help="windows to choose from, seconds (hop: half a window; default 0 10 15 20)",
    )
    p.add_argument(
        "--val-works", type=float, default=None, help="validation works for choosing (default: the run's)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--cache-dir", default=None, help="feature cache folder (default: none)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_pooling)

    from csi_training import data_cli, demo

    data_cli.register(sub)
    demo.register(sub)
