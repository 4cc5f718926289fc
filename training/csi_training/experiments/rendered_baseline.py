"""The MOVE-style baseline on the rendered-versions corpus, against classical baselines.

One command, resumable step by step (each step skips what is already on disk)::

    python -m csi_training.experiments.rendered_baseline --work-dir runs/rendered \\
        --config configs/move_small.yaml --test-works 200 --versions 6

1. note events of music21's corpus (``--notes`` or extracted into the work dir);
2. ``--test-works`` works held out by a seeded hash of their ids, never seen in training;
3. every work rendered ``--versions`` times (key, tempo, structure, instrumentation, mix, room,
   noise, codec differ per version); test works use their first ``--test-versions`` versions;
4. the encoder trained on the other works with the given config (its own validation works are
   split off the training works);
5. leave-one-out retrieval on the test works: our encoder, the 2D Fourier-transform magnitude of
   beat-synchronous chroma (Bertin-Mahieux & Ellis 2012), and essentia's alignment-based Qmax
   (Serra et al. 2009) on a random subset of ``--qmax-works`` test works (it costs ~0.1 s a pair
   here) with our encoder re-evaluated on the same subset;
6. a table (Markdown + JSON) written to ``--report``.

With ``--extra-versions N1 [N2 …]`` fine-tuning stages follow step 4. Stage i renders N_i versions
of every non-test work of the note corpus (works beyond ``--max-works`` included; test works never)
with ``--extra-seed`` into ``corpus_b`` (a later stage extends it: version k depends only on the seed,
the work and k), and fine-tunes the previous stage's best checkpoint (``init_from``) on the stage-1
files plus the first N_i extra versions into ``model_b``, ``model_c``, …; step 5 evaluates the last
stage. More versions per work is what the stage-1 plateau asked for: its training fit and validation
MAP stopped improving together, and a clique batch draws K versions from all of a work's versions, so
each step sees more variety at no extra cost per step.

With ``--broadcast-copies N`` a last fine-tuning stage follows: N broadcast-degraded copies of each
training work (``csi_training.render.degraded_corpus``: a recording under a random chain of 1-3 of
speed, pitch shift, EQ, compression, talk over, noise, MP3) join the last stage's training files as
more versions, and the last stage's best checkpoint is fine-tuned on them into ``model_bc``
(``--broadcast-epochs``, ``--broadcast-lr``). A monitoring service hears versions through such a
chain; the robustness table (``csi_training.experiments.robustness``) measures the same
degradations on held-out works.

With ``--margin-epochs N`` one more fine-tuning stage follows on the same files: the
classification head (BNNeck + linear) is replaced by cosine logits with an additive margin
(CosFace: ``--margin-ce``, ``--margin-scale``), which act on the very embedding retrieval ranks by;
the new head starts from the works' mean embeddings (imprinting), since a random one undoes what
the backbone had learnt before it recovers.

With ``--whiten`` the last stage's best checkpoint gets a learned whitening (``csi whiten``:
``csi_training.whiten``), fitted on that stage's training manifest with the regularization chosen
on its validation works, into ``<last model>w``; step 5 then evaluates it, with the un-whitened
checkpoint as a row of its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from csi_runtime.atomic import atomic_write_text
from csi_training.batching import collection_of

logger = logging.getLogger("csi_training.experiments.rendered_baseline")

METRIC_KEYS = ("MAP", "P@10", "MR1", "MRR", "Top1")


def _split_manifests(
    corpus_manifest: Path, test_ids: set[str], test_versions: int, out: Path
) -> tuple[Path, Path]:
    from csi_training.data import read_manifest, write_manifest

    entries = read_manifest(corpus_manifest)
    by_work: dict[str, list[Any]] = {}
    for e in entries:
        by_work.setdefault(e.work_id, []).append(e)
    train, test = [], []
    for work, items in sorted(by_work.items()):
        items.sort(key=lambda e: e.version_id)
        if work in test_ids:
            test += items[:test_versions]
        else:
            train += items
    train_manifest, test_manifest = out / "train_manifest.csv", out / "test_manifest.csv"
    write_manifest(train_manifest, train)
    write_manifest(test_manifest, test)
    logger.info(
        "train manifest: %d files of %d works; test manifest: %d files of %d works",
        len(train),
        len(by_work) - len(test_ids & set(by_work)),
        len(test),
        len(test_ids & set(by_work)),
    )
    return train_manifest, test_manifest


def _metrics_row(name: str, metrics: dict[str, Any], items: int, note: str = "") -> dict[str, Any]:
    row = {"system": name, "items": items, "note": note}
    row.update({k: float(metrics[k]) for k in METRIC_KEYS if k in metrics})
    return row


def by_collection(per_query: dict[str, np.ndarray], work_ids: list[str]) -> dict[str, dict[str, float]]:
    """MAP and Top-1 of the queries of each collection (each query still ranks every track).

    ``per_query``: :func:`~csi_training.metrics.evaluate`'s per-query arrays over ``work_ids``.
    """
    groups: dict[str, list[int]] = {}
    for q in per_query["index"][per_query["n_relevant"] > 0]:
        groups.setdefault(collection_of(work_ids[int(q)]), []).append(int(q))
    row_of = {int(q): r for r, q in enumerate(per_query["index"])}
    out = {}
    for name, queries in sorted(groups.items()):
        rows = [row_of[q] for q in queries]
        out[name] = {
            "queries": len(rows),
            "works": len({work_ids[q] for q in queries}),
            "MAP": float(np.mean(per_query["AP"][rows])),
            "Top1": float(np.mean(per_query["rank1"][rows] <= 1)),
        }
    return out


def _render(
    args: argparse.Namespace,
    works: list[Any],
    corpus_dir: Path,
    versions: int,
    seed: int,
    original_first: bool = True,
) -> Path:
    from csi_training.render.corpus import render_corpus
    from csi_training.render.versions import VersionConfig

    manifest = corpus_dir / "manifest.csv"
    if manifest.exists() and (corpus_dir / "versions.json").exists() and not args.rerender:
        expected = len(works) * versions
        n_rows = sum(1 for _ in manifest.open()) - 1
        if n_rows >= expected * 0.98:
            return manifest
    from tqdm import tqdm

    bar = tqdm(total=len(works) * versions, desc="render", unit="file", dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.n = done
        bar.refresh()

    result = render_corpus(
        corpus_dir,
        works,
        versions,
        renderer=args.renderer,
        seed=seed,
        workers=args.workers,
        progress=progress,
        max_duration_s=args.max_duration_s,
        version_config=VersionConfig(original_first=original_first),
    )
    bar.close()
    return Path(result)


def _extra_manifest(
    train_manifest: Path, extra_manifest: Path, test_ids: set[str], n_versions: int, path: Path
) -> Path:
    """The stage-1 training files plus the first ``n_versions`` extra versions of each work (version
    ids ``bNN``), test works excluded, written to ``path``."""
    from csi_training.data import ManifestEntry, read_manifest, write_manifest

    extra = [
        ManifestEntry(path=e.path, work_id=e.work_id, version_id="b" + (e.version_id or "").removeprefix("v"))
        for e in read_manifest(extra_manifest)
        if e.work_id not in test_ids and int((e.version_id or "v0").removeprefix("v")) < n_versions
    ]
    write_manifest(path, read_manifest(train_manifest) + extra)
    return path


def _broadcast_stage(
    args: argparse.Namespace, work_dir: Path, train_manifest: Path, previous: Path
) -> tuple[Path, dict[str, Any]]:
    """Degraded copies of ``train_manifest``'s works, and the fine-tuning of ``previous``'s best
    checkpoint on both (module docstring); returns (model dir, stage record)."""
    from csi_training.data import read_manifest, write_manifest
    from csi_training.render.degraded_corpus import degrade_corpus

    t0 = time.monotonic()
    copies = degrade_corpus(
        train_manifest, work_dir / "corpus_bc", args.broadcast_copies, seed=args.seed, workers=args.workers
    )
    logger.info("broadcast copies in %s (%.0f s)", copies, time.monotonic() - t0)
    manifest = work_dir / "train_manifest_bc.csv"
    write_manifest(manifest, read_manifest(train_manifest) + read_manifest(copies))
    model_dir = work_dir / "model_bc"
    _train_stage(
        args, work_dir, manifest, model_dir, previous / "best", args.broadcast_epochs, args.broadcast_lr
    )
    return model_dir, {
        "model": model_dir.name,
        "broadcast_copies": args.broadcast_copies,
        "epochs": args.broadcast_epochs,
        "lr": args.broadcast_lr,
        "seed": args.seed,
    }


def _margin_stage(
    args: argparse.Namespace, work_dir: Path, manifest: Path, previous: Path
) -> tuple[Path, dict[str, Any]]:
    """Fine-tunes ``previous``'s best checkpoint on ``manifest`` with the classification head
    replaced by cosine logits with an additive margin (CosFace), imprinted with the works' mean
    embeddings; returns (model dir, stage record)."""
    model_dir = work_dir / (previous.name + "m")
    extra = {
        "loss.ce_head": "cosine",
        "loss.ce_margin": args.margin_ce,
        "loss.ce_scale": args.margin_scale,
        "optim.warmup_steps": 200,
    }
    _train_stage(
        args, work_dir, manifest, model_dir, previous / "best", args.margin_epochs, args.margin_lr, extra
    )
    return model_dir, {
        "model": model_dir.name,
        "ce_margin": args.margin_ce,
        "ce_scale": args.margin_scale,
        "epochs": args.margin_epochs,
        "lr": args.margin_lr,
    }


def _embed(
    checkpoint: Path, manifest: Path, work_dir: Path, device: str
) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    from csi_training.evaluation import embed_manifest

    emb, work_ids, _, info = embed_manifest(
        checkpoint, manifest, device=device, cache_dir=work_dir / "features"
    )
    return emb, work_ids, info


def _whiten_stage(
    args: argparse.Namespace, work_dir: Path, checkpoint: Path, manifest: Path, name: str
) -> tuple[Path, dict[str, Any]]:
    """A learned whitening of ``checkpoint`` fitted on ``manifest`` into ``work_dir / name`` (kept
    when already there); returns (whitened checkpoint, stage record)."""
    from csi_training.whiten import whiten_checkpoint

    out = work_dir / name
    if not (out / "config.json").exists():
        whiten_checkpoint(checkpoint, manifest, out, device=args.device, cache_dir=work_dir / "features")
    report = json.loads((out / "config.json").read_text())["whitening"]
    return out, {"model": name, "whitening": report["regularization"], "works": report["works"]}


def _pooling_stage(
    args: argparse.Namespace, work_dir: Path, checkpoint: Path, manifest: Path, name: str
) -> tuple[Path, dict[str, Any]]:
    """Multi-scale track vectors for ``checkpoint``, the window chosen on the validation works of
    ``manifest`` (``csi pooling``), into ``work_dir / name`` (kept when already there)."""
    from csi_training.track_pooling import set_track_pooling

    out = work_dir / name
    if not (out / "config.json").exists():
        set_track_pooling(
            checkpoint, out, manifest=manifest, device=args.device, cache_dir=work_dir / "features"
        )
    report = json.loads((out / "config.json").read_text())["track_pooling"]
    return out, {
        "model": name,
        "window_s": report["window_s"],
        "validation_works": report["validation_works"],
        "validation": report["validation"],
    }


def _describe_stage(st: dict[str, Any]) -> str:
    if "window_s" in st:
        scores = ", ".join(f"{r['window_s']:g} s: {r['MAP']:.3f}" for r in st["validation"])
        return (
            f" Track vectors {st['model']}: whole track plus the mean of windows of {st['window_s']:g} s "
            f"(hop half a window), the window chosen by MAP on {st['validation_works']} validation works "
            f"(0 = whole track only; {scores})."
        )
    if "whitening" in st:
        return (
            f" Learned whitening {st['model']}: fitted on the last stage's training manifest ({st['works']} "
            f"works, validation works included); regularization {st['whitening']:g}, chosen by validation "
            "MAP with the whitening fitted on the other works."
        )
    if "ce_margin" in st:
        return (
            f" Fine-tuning stage {st['model']}: the same files, the classification head replaced by cosine "
            f"logits with margin {st['ce_margin']:g} (scale {st['ce_scale']:g}), imprinted with the works' "
            f"mean embeddings; {st['epochs']} epochs at lr {st['lr']:g}."
        )
    if "broadcast_copies" in st:
        return (
            f" Fine-tuning stage {st['model']}: {st['broadcast_copies']} broadcast-degraded copies of each "
            f"training work (seed {st['seed']}), {st['epochs']} epochs at lr {st['lr']:g}."
        )
    return (
        f" Fine-tuning stage {st['model']}: {st['extra_versions']} more versions (seed {st['seed']}) of "
        f"{st['works']} works, {st['epochs']} epochs at lr {st['lr']:g}."
    )


def _per_stage(values: list[Any], stage: int) -> Any:
    """The value of a per-stage option for a stage: its own, or the last one given."""
    return values[min(stage, len(values) - 1)]


def _train_stage(
    args: argparse.Namespace,
    work_dir: Path,
    manifest: Path,
    model_dir: Path,
    init_from: Path | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    extra: dict[str, Any] | None = None,
) -> Any:
    """Trains ``args.config`` on ``manifest`` into ``model_dir`` (unless ``--no-train``), from
    scratch or fine-tuning ``init_from`` for ``epochs`` at ``lr``, with ``extra`` config overrides;
    returns the config."""
    from csi_training.config import load_config

    overrides: dict[str, Any] = {
        "data.manifest": str(manifest),
        "out_dir": str(model_dir),
        "data.cache_dir": str(work_dir / "features"),
    }
    if init_from is not None:
        overrides.update(
            {"init_from": str(init_from), "optim.epochs": epochs, "optim.lr": lr, "optim.warmup_steps": 100}
        )
    overrides.update(extra or {})
    config = load_config(args.config, overrides)
    if not args.no_train:
        _train_to_end(config, model_dir)
    return config


def _train_to_end(config: Any, model_dir: Path) -> None:
    from csi_training.trainer import train

    last = model_dir / "last" / "config.json"
    done = last.exists() and json.loads(last.read_text()).get("epoch") == config.optim.epochs
    if not done:
        train(config, resume=(model_dir / "last").exists(), progress=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from csi_training.batching import split_works
    from csi_training.metrics import evaluate, evaluate_distances
    from csi_training.render.notes import extract_works, load_note_corpus, save_note_corpus

    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()

    notes_path = Path(args.notes) if args.notes else work_dir / "notes.npz"
    if not notes_path.exists():
        logger.info("extracting note events from music21's corpus into %s", notes_path)
        save_note_corpus(notes_path, extract_works(limit=args.max_works, workers=args.workers))
    all_works = load_note_corpus(notes_path)
    works = all_works[: args.max_works] if args.max_works else all_works
    split = split_works([w.work_id for w in works], val=0, test=args.test_works, seed=args.seed)
    logger.info("%d works: %d held out for test", len(works), len(split.test))

    corpus_manifest = _render(args, works, work_dir / "corpus", args.versions, args.seed)
    train_manifest, test_manifest = _split_manifests(
        corpus_manifest, set(split.test), args.test_versions, work_dir
    )
    if args.stop_after == "render":
        return {"rows": []}

    # classical baselines on the same test tracks
    from csi_training.baselines.chroma_features import chroma_for_files
    from csi_training.baselines.ftm2d import FTM2D, euclidean_distances
    from csi_training.baselines.qmax import qmax_distance_matrix
    from csi_training.data import read_manifest

    test_entries = read_manifest(test_manifest)
    chroma_file = work_dir / "test_chroma.npz"
    if chroma_file.exists():
        with np.load(chroma_file, allow_pickle=False) as z:
            beat_chroma = [z[f"beat{i}"] for i in range(int(z["n"]))]
            hpcps = [z[f"hpcp{i}"] for i in range(int(z["n"]))]
            keep = list(z["keep"])
    else:
        t0 = time.monotonic()
        chroma = chroma_for_files([e.path for e in test_entries], workers=args.workers)
        keep = [i for i, t in enumerate(chroma.tracks) if t is not None]
        tracks = [t for t in chroma.tracks if t is not None]
        beat_chroma = [np.asarray(t.beat_chroma) for t in tracks]
        hpcps = [t.qmax_hpcp for t in tracks]
        np.savez(
            chroma_file,
            n=len(keep),
            keep=np.array(keep),
            **{f"beat{i}": c for i, c in enumerate(beat_chroma)},
            **{f"hpcp{i}": h for i, h in enumerate(hpcps)},
        )
        logger.info("HPCP chroma of %d test tracks in %.0f s", len(keep), time.monotonic() - t0)
    works_kept = [test_entries[i].work_id for i in keep]
    rng = np.random.default_rng(args.seed)
    subset_works = sorted(
        rng.choice(sorted(set(works_kept)), size=min(args.qmax_works, len(set(works_kept))), replace=False)
    )
    sub = [i for i, w in enumerate(works_kept) if w in set(subset_works)]
    qmax_file = work_dir / f"qmax_{len(sub)}.npy"
    if qmax_file.exists():
        dq = np.load(qmax_file, allow_pickle=False)
    else:
        t0 = time.monotonic()
        dq = qmax_distance_matrix([hpcps[i] for i in sub], workers=args.workers)
        np.save(qmax_file, dq)
        logger.info("Qmax on %d tracks (%d pairs) in %.0f s", len(sub), len(sub) ** 2, time.monotonic() - t0)
    if args.stop_after == "baselines":
        return {"rows": []}

    model_dir = work_dir / "model"
    config = _train_stage(args, work_dir, train_manifest, model_dir)
    stages: list[dict[str, Any]] = []
    extra_works = [w for w in all_works if w.work_id not in split.test]
    for i, n_versions in enumerate(args.extra_versions or []):
        letter = "bcdefgh"[i]
        extra_corpus = _render(args, extra_works, work_dir / "corpus_b", n_versions, args.extra_seed, False)
        train_i = _extra_manifest(
            train_manifest,
            extra_corpus,
            set(split.test),
            n_versions,
            work_dir / f"train_manifest_{letter}.csv",
        )
        previous_best = model_dir / "best"
        model_dir = work_dir / f"model_{letter}"
        epochs = _per_stage(args.finetune_epochs, i)
        lr = _per_stage(args.finetune_lr, i)
        _train_stage(args, work_dir, train_i, model_dir, previous_best, epochs, lr)
        stages.append(
            {"model": model_dir.name, "works": len(extra_works), "extra_versions": n_versions,
             "epochs": epochs, "lr": lr, "seed": args.extra_seed}
        )  # fmt: skip
    last_manifest = train_i if stages else train_manifest
    if args.broadcast_copies:
        model_dir, stage = _broadcast_stage(args, work_dir, last_manifest, model_dir)
        stages.append(stage)
        last_manifest = work_dir / "train_manifest_bc.csv"
    if args.margin_epochs:
        model_dir, stage = _margin_stage(args, work_dir, last_manifest, model_dir)
        stages.append(stage)
    final = model_dir / "best"
    training_info = json.loads((final / "config.json").read_text())
    note = f"{config.model.width}, {config.model.embedding_dim}-d"
    rows = []

    collections: dict[str, dict[str, dict[str, float]]] = {}

    def ours(checkpoint: Path, label: str) -> tuple[dict[str, Any], np.ndarray, list[str], dict[str, Any]]:
        """The test table's row of ``checkpoint`` (with the note so far), and its test embeddings."""
        emb, works, info = _embed(checkpoint, test_manifest, work_dir, args.device)
        metrics = evaluate(emb, works, return_per_query=True)
        collections[label] = by_collection(metrics["per_query"], works)
        return _metrics_row(label, metrics, len(works), note), emb, works, info

    if args.whiten:
        rows.append(ours(final, "csi MOVE-style CQTNet (ours), before whitening")[0])
        final, stage = _whiten_stage(args, work_dir, final, last_manifest, model_dir.name + "w")
        stages.append(stage)
        note += ", learned whitening"

    if args.track_pooling:
        rows.insert(0, ours(final, "csi MOVE-style CQTNet (ours), whole-track vectors")[0])
        final, stage = _pooling_stage(args, work_dir, final, last_manifest, final.name + "p")
        stages.append(stage)
        if stage["window_s"] > 0:
            note += f", multi-scale track vectors ({stage['window_s']:g} s windows)"

    row, emb, work_ids, info = ours(final, "csi MOVE-style CQTNet (ours)")
    rows.insert(0, row)

    ftm = FTM2D().fit(beat_chroma)
    vecs = ftm.transform(beat_chroma)
    ftm_name = "2D Fourier-transform magnitude (Bertin-Mahieux & Ellis 2012)"
    ftm_metrics = evaluate_distances(euclidean_distances(vecs), works_kept, return_per_query=True)
    collections[ftm_name] = by_collection(ftm_metrics["per_query"], list(works_kept))
    rows.append(
        _metrics_row(ftm_name, ftm_metrics, len(works_kept), "beat-synchronous HPCP, 75-beat patches, median")
    )

    sub_works = [works_kept[i] for i in sub]
    rows.append(
        _metrics_row(
            "essentia Qmax (Serra et al. 2009)",
            evaluate_distances(dq, sub_works),
            len(sub),
            f"subset: {len(subset_works)} test works",
        )
    )
    row_of_path = {p: n for n, p in enumerate(info["paths"])}
    ours_sub = [
        row_of_path[str(test_entries[keep[i]].path)]
        for i in sub
        if str(test_entries[keep[i]].path) in row_of_path
    ]
    rows.append(
        _metrics_row(
            "csi MOVE-style CQTNet (ours), same subset",
            evaluate(emb[ours_sub], [work_ids[i] for i in ours_sub]),
            len(ours_sub),
            f"subset: {len(subset_works)} test works",
        )
    )

    result = {
        "rows": rows,
        "test_works": len(set(work_ids)),
        "test_files": len(work_ids),
        "skipped_test_files": info["skipped"],
        "train": {
            k: training_info.get(k) for k in ("train_works", "train_files", "val_works", "epoch", "step")
        },
        # of the last training stage
        "epochs_planned": next(
            (st["epochs"] for st in reversed(stages) if "epochs" in st), config.optim.epochs
        ),
        "stages": stages,
        "by_collection": collections,
        "model": str(final),
        "config": str(args.config),
        "renderer": args.renderer,
        "versions": args.versions,
        "wall_s": time.monotonic() - t_start,
    }
    atomic_write_text(work_dir / "results.json", json.dumps(result, indent=2, default=float) + "\n")
    if args.report:
        _write_report(Path(args.report), result, args)
    return result


def _write_report(path: Path, result: dict[str, Any], args: argparse.Namespace) -> None:
    lines = [
        "<!-- written by python -m csi_training.experiments.rendered_baseline -->",
        f"Test: {result['test_works']} unseen works × {args.test_versions} versions "
        f"({result['test_files']} tracks), "
        f"leave-one-out. Training: {result['train']['train_works']} works, "
        f"{result['train']['train_files']} files (renderer: {args.renderer}), config `{args.config}`; "
        f"best checkpoint: epoch {result['train']['epoch']} of {result['epochs_planned']} planned"
        + "."
        + "".join(_describe_stage(st) for st in result.get("stages", [])),
        "",
        "| system | tracks | MAP | P@10 | MR1 | MRR | Top1 | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['system']} | {r['items']} | {r.get('MAP', 0):.3f} | {r.get('P@10', 0):.3f} | "
            f"{r.get('MR1', 0):.2f} | {r.get('MRR', 0):.3f} | {r.get('Top1', 0):.3f} | {r['note']} |"
        )
    lines += _collection_table(result.get("by_collection", {}), [r["system"] for r in result["rows"]])
    atomic_write_text(path, "\n".join(lines) + "\n")


def _collection_table(collections: dict[str, dict[str, dict[str, float]]], order: list[str]) -> list[str]:
    """Markdown lines: MAP / Top-1 of each system's queries by source collection, rows in `order`."""
    names = sorted({c for per in collections.values() for c in per})
    if not names:
        return []
    works = {c: max(int(per[c]["works"]) for per in collections.values() if c in per) for c in names}
    header = " | ".join(f"{c} ({works[c]} works)" for c in names)
    lines = [
        "",
        "By source collection (the queries of each collection; each still ranks all test tracks), "
        "MAP / Top1:",
        "",
        f"| system | {header} |",
        "|---|" + "---|" * len(names),
    ]
    for system in sorted(collections, key=lambda name: order.index(name) if name in order else len(order)):
        per = collections[system]
        cells = " | ".join(f"{per[c]['MAP']:.3f} / {per[c]['Top1']:.3f}" if c in per else "" for c in names)
        lines.append(f"| {system} | {cells} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", required=True)
    p.add_argument("--config", required=True, help="training config (data.manifest and out_dir are set here)")
    p.add_argument("--notes", help="note-event corpus (default: extract into the work dir)")
    p.add_argument("--max-works", type=int, default=None, help="use at most this many works")
    p.add_argument("--test-works", type=int, default=200)
    p.add_argument("--versions", type=int, default=6, help="versions rendered per work")
    p.add_argument("--test-versions", type=int, default=4)
    p.add_argument("--qmax-works", type=int, default=50)
    p.add_argument("--renderer", default="synth", choices=["synth", "fluidsynth"])
    p.add_argument(
        "--max-duration-s", type=float, default=None, help="cut each rendered version to this length"
    )
    p.add_argument("--rerender", action="store_true")
    p.add_argument(
        "--no-train",
        action="store_true",
        help="evaluate the model's best checkpoint as it is (e.g. a run stopped early)",
    )
    p.add_argument("--stop-after", choices=["render", "baselines"], default=None, help="stop after this step")
    p.add_argument(
        "--extra-versions",
        type=int,
        nargs="+",
        default=None,
        help="fine-tuning stages: per stage, the extra versions of every non-test work to train on",
    )
    p.add_argument("--extra-seed", type=int, default=1, help="seed of the extra versions")
    p.add_argument("--finetune-epochs", type=int, nargs="+", default=[30], help="per stage (or one for all)")
    p.add_argument("--finetune-lr", type=float, nargs="+", default=[5e-4], help="per stage (or one for all)")
    p.add_argument(
        "--broadcast-copies",
        type=int,
        default=0,
        help="a last fine-tuning stage on this many broadcast-degraded copies of each training work",
    )
    p.add_argument("--broadcast-epochs", type=int, default=15)
    p.add_argument("--broadcast-lr", type=float, default=3e-4)
    p.add_argument(
        "--margin-epochs",
        type=int,
        default=0,
        help="a fine-tuning stage after the others with a cosine-margin (CosFace) classification head",
    )
    p.add_argument("--margin-lr", type=float, default=3e-4)
    p.add_argument("--margin-ce", type=float, default=0.2, help="the cosine margin m of that stage")
    p.add_argument("--margin-scale", type=float, default=30.0, help="the cosine logits' scale s")
    p.add_argument(
        "--whiten", action="store_true", help="fit a learned whitening to the last stage (csi whiten)"
    )
    p.add_argument(
        "--track-pooling",
        action="store_true",
        help="multi-scale track vectors, the window chosen on validation works (csi pooling), last",
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", default=None, help="Markdown table to write")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    result = run(args)
    for r in result["rows"]:
        print(
            f"{r['system']:<60} MAP {r.get('MAP', 0):.3f}  "
            f"P@10 {r.get('P@10', 0):.3f}  MR1 {r.get('MR1', 0):.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
